"""Renders bench/results.json as bench/RESULTS.md."""
import statistics


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def num(v, digits=0):
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}"


def cell(values, digits=0, scale=1.0):
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "n/a"
    m = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return num(m, digits)
    return f"{num(m, digits)} ({num(min(vals), digits)}–{num(max(vals), digits)})"


class Table:
    def __init__(self, figures, skip_missing=False):
        self.figures = figures
        self.rows = []
        # For a partial table (another backend's figures): rows of figures not measured are left out.
        self.skip_missing = skip_missing

    def samples(self, fig, server, key):
        f = self.figures.get(fig, {})
        data = f.get("data", {})
        rounds = [r for r in data.get(server, []) if not (isinstance(r, dict) and r.get("error"))]
        if callable(key):
            return [key(r) for r in rounds]
        return [r.get(key) for r in rounds]

    def row(self, label, fig, key, peer, digits=0, scale=1.0, target=None, peer_label=None):
        """`target`: ("ratio>=", x) on postling ÷ peer, ("<=", x) or ("==", x) on postling."""
        if self.skip_missing and fig not in self.figures:
            return
        if "error" in self.figures.get(fig, {}):
            self.rows.append(f"| {label} | failed: {self.figures[fig]['error'][:80]} | | | | |")
            return
        pl = self.samples(fig, "postling", key)
        pe = self.samples(fig, peer, key) if peer else []
        m_pl, m_pe = med(pl), med(pe)
        ratio = m_pl / m_pe if m_pl is not None and m_pe not in (None, 0) else None
        met, want = "", "–"
        if target and m_pl is not None:
            kind, x = target
            if kind == "ratio>=":
                want = f"≥ {x}× {peer_label or peer.capitalize()}"
                met = "✓" if ratio is not None and ratio >= x else "✗"
            elif kind == "<=":
                want = f"≤ {num(x, digits)}"
                met = "✓" if m_pl * scale <= x else "✗"
            elif kind == "==":
                want = f"{num(x, digits)}"
                met = "✓" if m_pl * scale == x else "✗"
        peer_cell = f"{peer_label or peer.capitalize()}: {self.cell(fig, peer, pe, digits, scale)}" if peer else "–"
        ratio_cell = f"{ratio:.2f}" if ratio is not None else "–"
        self.rows.append(f"| {label} | {self.cell(fig, 'postling', pl, digits, scale)} | {peer_cell} | "
                         f"{ratio_cell} | {want} | {met} |")

    def cell(self, fig, server, values, digits, scale):
        """The median cell, or the error of a server whose rounds all failed (a figure may
        record one server's failure and still measure the other)."""
        rounds = self.figures.get(fig, {}).get("data", {}).get(server, [])
        errors = [r["error"] for r in rounds if isinstance(r, dict) and r.get("error")]
        if errors and all(v is None for v in values):
            return "failed: " + errors[0][:110].replace("|", "/").replace("\n", " ") + "…"
        return cell(values, digits, scale)


def sizes(runs):
    """The run parameters the rows name: messages, idle seconds, held connections, POP counts."""
    any_run = next(iter(runs.values()), {})
    return (runs.get("smtp20", any_run).get("messages", "?"),
            runs.get("idle", any_run).get("idle_seconds", "?"),
            runs.get("memory", any_run).get("connections", [1000, 10000]),
            runs.get("pop3", any_run).get("pop_count", 1000),
            runs.get("pop3", any_run).get("big_size", 50 << 20) >> 20,
            runs.get("deferred", any_run).get("deferred_count", 1000))


def variants(figures):
    """Figures measured with another `disk_io` (`bench/run --disk-io helper`) are kept as
    `name@helper`; returns {variant: {name: figure}}."""
    out = {}
    for key, fig in figures.items():
        if "@" in key:
            name, variant = key.split("@", 1)
            out.setdefault(variant, {})[name] = fig
    return out


def result_rows(t, f, runs):
    msgs, idle_s, (n1, n2), pop_n, big, deferred_n = sizes(runs)
    MiB = 1 / 1024
    t.row(f"SMTP acceptance, 1 session, {msgs} × 4 KiB (msg/s)", "smtp1", "rate", "postfix", target=("ratio>=", 2.5))
    t.row("  all in the Maildirs after (s)", "smtp1", "until", "postfix", digits=1)
    t.row(f"SMTP acceptance, 20 sessions, {msgs} × 4 KiB (msg/s)", "smtp20", "rate", "postfix", target=("ratio>=", 3))
    t.row("  all in the Maildirs after (s)", "smtp20", "until", "postfix", digits=1)
    t.row("  NOOP on a side session during that load, p50 (ms)", "smtp20", "noop_p50", "postfix", digits=2)
    t.row("  same, p99 (ms)", "smtp20", "noop_p99", "postfix", digits=2, target=("<=", 1))
    t.row("  NOOP samples per run", "smtp20", "noop_n", "postfix")
    t.row("  disk bytes written per message (write_bytes ÷ messages)", "smtp20", "bytes_per_msg", "postfix",
          target=("<=", 2.5 * 4096))
    t.row("RSS idle, all processes (MiB)", "memory", "rss_idle", "postfix", digits=2, scale=MiB, target=("<=", 2.5))
    t.row(f"RSS holding {n1:,} idle SMTP connections (MiB)", "memory", f"rss_{n1}", "postfix", digits=1, scale=MiB)
    t.row(f"RSS holding {n2:,} idle SMTP connections (MiB)", "memory", f"rss_{n2}", "postfix", digits=1, scale=MiB,
          target=("<=", 16))
    t.row(f"  connections greeted (of {n2:,})", "memory", f"greeted_{n2}", "postfix", target=("==", n2))
    t.row(f"  cost per connection, (RSS_{n2} − RSS_idle) ÷ {n2:,} (KiB)", "memory",
          lambda r: (r[f"rss_{n2}"] - r["rss_idle"]) / n2 if r.get(f"greeted_{n2}") else None, "postfix",
          digits=2, target=("<=", 1))
    t.row(f"  PSS holding {n2:,} (MiB; shared pages counted once)", "memory", f"pss_{n2}", "postfix", digits=1,
          scale=MiB)
    # The binary's code pages are unmapped at rest (daemon::pages) and come back with the first
    # connections, so the difference to idle also carries that fixed amount; between the two
    # crowds it is the connections alone.
    t.row(f"  marginal cost per connection, (RSS_{n2} − RSS_{n1}) ÷ {n2 - n1:,} (KiB)", "memory",
          lambda r: (r[f"rss_{n2}"] - r[f"rss_{n1}"]) / (n2 - n1)
          if r.get(f"greeted_{n2}") and r.get(f"rss_{n1}") is not None else None, "postfix",
          digits=2, target=("<=", 0.5))
    t.row("  cost per connection by PSS (KiB)", "memory",
          lambda r: (r[f"pss_{n2}"] - r["pss_idle"]) / n2 if r.get(f"greeted_{n2}") else None, "postfix", digits=2)
    t.row(f"CPU ticks (1/100 s) over {idle_s} s idle, empty queue", "idle", "ticks", "postfix", digits=1,
          target=("==", 0))
    t.row(f"  context switches (wake-ups) over {idle_s} s", "idle", "switches", "postfix", target=("==", 0))
    t.row(f"CPU ticks over {idle_s} s idle, {deferred_n:,} deferred messages queued", "deferred", "ticks", "postfix",
          digits=1, target=("==", 0))
    t.row(f"  context switches over {idle_s} s", "deferred", "switches", "postfix", target=("==", 0))
    t.row(f"POP3 log in, RETR+DELE {pop_n:,} × 4 KiB, QUIT (msg/s)", "pop3", "rate", "dovecot", target=("ratio>=", 1.5))
    t.row("  same (MB/s)", "pop3", "mbs", "dovecot", digits=1)
    t.row(f"POP3 RETR of one {big} MiB message (MB/s)", "pop3", "big_mbs", "dovecot", target=("ratio>=", 1.5))
    tls_rows(t, f, runs)
    flood_rows(t, f, runs)
    relay_rows(t, f, runs)
    bigbox_rows(t, f, runs)


HEADER = ["| figure | postling | peer | ratio | target | met |", "| --- | --- | --- | --- | --- | --- |"]


def render(results):
    m = results["machine"]
    every = results["figures"]
    f = {k: v for k, v in every.items() if "@" not in k}
    runs = {name: fig.get("run", {}) for name, fig in f.items()}
    msgs, idle_s, (n1, n2), pop_n, big, deferred_n = sizes(runs)
    t = Table(f)
    result_rows(t, f, runs)

    lines = [
        "# postling benchmark results", "",
        "Generated by `bench/run` (see the README, section Benchmarks). Every figure is measured for postling "
        "and its peer in alternation (A B A B …); cells are the median over the rounds with min–max in "
        "brackets; the ratio is postling ÷ peer of the medians; ✓/✗ compares postling's median with the "
        "product target.", "",
        "## Machine", "",
        f"- {m['cpu']}, {m['cpus']} vCPUs, {m['mem_mib']:,} MiB RAM; {m['os']}, kernel {m['kernel']}",
        f"- work directory on {m['fs']}",
        f"- postling {m['postling']} ({m['rustc']}), Postfix {m['postfix']}, Dovecot {m['dovecot']}, "
        f"Python {m['python']}",
        f"- load average at start {' '.join(m['loadavg'])}, at end {' '.join(m.get('loadavg_end', ['?']))} "
        "(a shared machine: other work may have run meanwhile, which the alternation spreads over both servers)",
    ]
    def rounds_of(name, r):
        return r.get("memory_rounds", 1) if name == "memory" else r.get("rounds")
    when = {}
    for name, r in ((k, v.get("run", {})) for k, v in every.items()):
        when.setdefault((r.get("started"), rounds_of(name, r), r.get("quick")), []).append(name)
    for (started, rounds, quick), names in sorted(when.items(), key=lambda kv: str(kv[0])):
        lines.append(f"- measured {started}, {rounds} round(s){' (--quick)' if quick else ''}: {', '.join(names)}")
    lines += ["", "## Results", ""] + HEADER
    lines += t.rows
    fp = f.get("footprint", {}).get("data")
    if fp:
        size = fp["postling"]
        lines.append(f"| binary size{'' if fp['stripped'] else ' (NOT stripped)'} (bytes) | {size:,} | "
                     f"Postfix package: {fp['postfix']:,}; Dovecot core + pop3d packages: {fp['dovecot']:,} | "
                     f"{size / fp['postfix']:.3f} | ≤ 3 MiB | {'✓' if size <= 3 << 20 else '✗'} |")
    for variant, fv in sorted(variants(every).items()):
        tv = Table(fv, skip_missing=True)
        result_rows(tv, fv, {name: fig.get("run", {}) for name, fig in fv.items()})
        lines += ["", f"## Results with `disk_io = {variant}`", "",
                  f"The same figures with postling's executor on its `{variant}` backend "
                  f"(`bench/run --disk-io {variant}`); the peers were measured again in the same run.", ""]
        lines += HEADER + tv.rows
    lines += details(f, n1, n2, every)
    lines += notes(f, idle_s, deferred_n)
    par = f.get("parsers", {}).get("data")
    lines += ["", "## Parser micro-benchmark (`cargo bench --bench parsers`)", "",
              "The SMTP and POP3 sessions alone, driven like the reactor drives them (input windows of at most "
              "8 KiB, output drained when the session asks) against in-memory hosts that do no I/O and allocate "
              "nothing per call (`bench/parsers.rs`). Allocations are counted by a `#[global_allocator]` over the "
              "commands only (not the greeting or the login).", ""]
    lines += par["table"] if par else ["(not run)"]
    return "\n".join(lines) + "\n"


def tls_rows(t, f, runs):
    """The tls figure keeps its parts under one key; the table reads them as figures of their own."""
    fig = f.get("tls")
    if not fig:
        return
    r = runs.get("tls", {})
    secs, par, hold = r.get("tls_seconds", "?"), r.get("tls_parallel", "?"), r.get("tls_hold", 1000)
    for part in ("ecdsa", "rsa", "hold"):
        t.figures[f"tls_{part}"] = {"error": fig["error"]} if "error" in fig else {"data": fig["data"].get(part, {})}
    for kind, name in (("ecdsa", "ECDSA P-256"), ("rsa", "RSA-2048")):
        fk = f"tls_{kind}"
        t.row(f"TLS full handshakes/s, implicit-TLS SMTP, {name} ({par} clients back to back, {secs} s)", fk, "rate",
              "postfix", digits=0)
        t.row("  same against Dovecot's pop3s (POP3 greeting)", fk, "rate", "dovecot", digits=0)
        t.row("  server CPU per handshake (ms, whole process tree)", fk, "cpu_ms_per_handshake", "postfix", digits=2)
        t.row("  same, Dovecot pop3s", fk, "cpu_ms_per_handshake", "dovecot", digits=2)
        t.row("  NOOP on a plaintext side session during the flood, p50 (ms)", fk, "noop_p50", "postfix", digits=2)
        t.row("  same, p99 (ms)", fk, "noop_p99", "postfix", digits=2)
    t.row(f"RSS per idle TLS connection after the handshake, {hold:,} held (KiB; ECDSA)", "tls_hold",
          "kib_per_conn", "postfix", digits=2, target=("<=", 6))
    t.row("  same, Dovecot pop3s", "tls_hold", "kib_per_conn", "dovecot", digits=2)
    t.row("  by PSS (KiB; shared pages counted once)", "tls_hold", "pss_kib_per_conn", "postfix", digits=2)
    t.row("  by PSS, Dovecot pop3s", "tls_hold", "pss_kib_per_conn", "dovecot", digits=2)


def relay_rows(t, f, runs):
    fig = f.get("relay")
    if not fig:
        return
    r = runs.get("relay", {})
    msgs, sessions, hold = r.get("messages", "?"), r.get("relay_sessions", 20), r.get("relay_hold", 50)
    t.figures["relay_hold"] = {"error": fig["error"]} if "error" in fig else {"data": fig["data"].get("hold", {})}
    t.row(f"Relaying {msgs:,} × 4 KiB from {sessions} sessions to smtp-sink on loopback: accepted (msg/s)",
          "relay", "rate", "postfix")
    t.row("  the sink has them all after (s)", "relay", "until", "postfix", digits=1)
    t.row("  NOOP on a side session until then, p50 (ms)", "relay", "noop_p50", "postfix", digits=2)
    t.row("  same, p99 (ms)", "relay", "noop_p99", "postfix", digits=2)
    t.row(f"RSS per outbound connection, {hold} held open to a listener that never answers (KiB)", "relay_hold",
          "kib_per_conn", "postfix", digits=1)
    t.row("  by PSS (KiB; shared pages counted once)", "relay_hold", "pss_kib_per_conn", "postfix", digits=1)


def flood_rows(t, f, runs):
    if "authflood" not in f:
        return
    r = runs.get("authflood", {})
    n, secs = r.get("flood_connections", 200), r.get("flood_seconds", "?")
    peer = "Dovecot+Postfix"
    t.row("SMTP transaction (MAIL to the 250 after DATA) on an otherwise quiet server, p50 (ms)", "authflood",
          "quiet_p50", "dovecot", digits=2, peer_label=peer)
    t.row("  same, p99 (ms)", "authflood", "quiet_p99", "dovecot", digits=2, peer_label=peer)
    t.row(f"SMTP transaction while {n} POP3 connections loop USER/PASS (right password) on alice's in-use "
          f"mailbox, p50 (ms)", "authflood", "right_p50", "dovecot", digits=2, peer_label=peer)
    t.row("  same, p99 (ms)", "authflood", "right_p99", "dovecot", digits=2, peer_label=peer, target=("<=", 5))
    t.row("  the flood's PASS answers per second", "authflood", "right_answers_per_s", "dovecot", peer_label=peer)
    t.row("  POP server CPU ticks during the flood", "authflood", "right_pop_ticks", "dovecot", peer_label=peer)
    t.row(f"SMTP transaction while {n} POP3 connections loop a WRONG password (each a real hash), p50 (ms)",
          "authflood", "wrong_p50", "dovecot", digits=2, peer_label=peer)
    t.row("  same, p99 (ms)", "authflood", "wrong_p99", "dovecot", digits=2, peer_label=peer, target=("<=", 5))
    t.row("  the flood's PASS answers per second", "authflood", "wrong_answers_per_s", "dovecot", digits=1,
          peer_label=peer)
    t.row("  POP server CPU ticks during the flood", "authflood", "wrong_pop_ticks", "dovecot", peer_label=peer)


def details(f, n1, n2, every=None):
    out = ["", "## Checks behind the numbers", ""]
    for key in ("durability", "durability@helper"):
        d = (every or f).get(key, {}).get("data")
        if not d:
            continue
        backend = (every or f)[key].get("run", {}).get("disk_io", "auto")
        for name, r in d.items():
            calls = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items()))
            unseen = ""
            if name == "postling" and backend != "helper":
                unseen = (" With io_uring (disk_io = " + backend + ") the syncs and renames are ring operations, "
                          "not system calls, so strace does not see them; the helper backend's line shows them.")
            label = f"{name} (disk_io = {backend})" if name == "postling" else name
            out.append(f"- durability, {label}: {r['syncs_per_msg']:.2f} fsync-family and "
                       f"{r['renames_per_msg']:.2f} rename/link calls per message (strace -f -c over the whole process "
                       f"tree, {r['messages']} messages, 5 sessions: {calls}); {r['delivered']}/{r['messages']} in the "
                       f"Maildir.{unseen}")
    for fig in ("smtp1", "smtp20"):
        data = f.get(fig, {}).get("data", {})
        for name in ("postling", "postfix"):
            rounds = data.get(name, [])
            if rounds:
                lost = sum(r["messages"] - r["delivered"] for r in rounds)
                bad = sum(1 for r in rounds if r.get("source_status"))
                out.append(f"- {fig}, {name}: {sum(r['delivered'] for r in rounds):,} of "
                           f"{sum(r['messages'] for r in rounds):,} messages landed in the Maildir"
                           f"{f' ({lost} missing)' if lost else ''}; smtp-source reported "
                           f"{'an error in ' + str(bad) + ' run(s)' if bad else 'no error'}.")
    data = f.get("smtp20", {}).get("data", {})
    for name in ("postling", "postfix"):
        rounds = data.get(name, [])
        if rounds and "write_bytes" in rounds[0]:
            out.append(f"- disk, {name}: write_bytes {cell([r['write_bytes'] for r in rounds])} over "
                       f"{cell([r['processes'] for r in rounds])} processes (cancelled_write_bytes "
                       f"{cell([r['cancelled'] for r in rounds])}); CPU during the load "
                       f"{cell([r['load_ticks'] for r in rounds], 1)} ticks"
                       f"{'; some exit records were lost' if any(r['exits_lost'] for r in rounds) else ''}.")
    mem = f.get("memory", {}).get("data", {})
    for name in ("postling", "postfix"):
        for r in mem.get(name, [])[:1]:
            extra = f"; with Dovecot's processes too {r['rss_idle_with_dovecot'] / 1024:.1f} MiB" if "rss_idle_with_dovecot" in r else ""
            out.append(f"- memory, {name}: {r['processes_idle']} process(es) idle{extra}; "
                       f"{r[f'greeted_{n1}']:,}/{n1:,} and {r[f'greeted_{n2}']:,}/{n2:,} greeted "
                       f"({r[f'refused_{n2}']} refused) in {r[f'processes_{n2}']} process(es)"
                       f"{'; ' + r[f'stopped_{n2}'] if r.get(f'stopped_{n2}') else ''}.")
    dfr = f.get("deferred", {}).get("data", {})
    for name, s in dfr.get("setup", {}).items():
        after = dfr.get("after", {}).get(name, {})
        tool = "`postling -q`" if name == "postling" else "`postqueue -j`"
        out.append(f"- deferred queue, {name}: {tool} listed {s['queued']:,} messages, {s['deferred']:,} of them "
                   f"with a delivery error, before the idle windows; {after.get('queued', '?')} / "
                   f"{after.get('deferred', '?')} after them.")
    pop = f.get("pop3", {}).get("data", {})
    for name in ("postling", "dovecot"):
        left = [r["left_after_quit"] for r in pop.get(name, [])]
        if left:
            out.append(f"- POP3, {name}: messages left in the Maildir after RETR+DELE and QUIT: {max(left)}.")
    cc = pop.get("client_ceiling")
    if cc:
        out.append(f"- POP3 client ceiling (the same client against an in-memory dummy server written in Python, "
                   f"so a lower bound): {cc['rate']:,.0f} RETR+DELE/s ({cc['mbs']:.0f} MB/s) and {cc['big_mbs']:,.0f} "
                   f"MB/s for the big message.")
    tls = f.get("tls", {}).get("data", {})
    for key, (proto, cipher) in sorted(tls.get("probe", {}).items()):
        out.append(f"- TLS, {key.replace('_', ' ')}: the client saw the expected certificate, {proto}, {cipher}.")
    for name, rounds in tls.get("hold", {}).items():
        for h in rounds[:1]:
            out.append(f"- TLS idle, {name}: {h['held']:,} connections held ({h['failed']} failed"
                       f"{': ' + h['first_error'] if h.get('first_error') else ''}), opened in {h['open_seconds']:.1f} s; "
                       f"RSS {h['rss_before'] / 1024:.1f} → {h['rss_held'] / 1024:.1f} MiB, processes "
                       f"{h['processes_before']} → {h['processes_held']}.")
    for kind in ("ecdsa", "rsa"):
        for name, rounds in tls.get(kind, {}).items():
            errs = sum(x["errors"] for x in rounds)
            out.append(f"- TLS flood {kind}, {name}: {sum(x['handshakes'] for x in rounds):,} handshakes, {errs} failed"
                       f"{' (' + next(x['first_error'] for x in rounds if x.get('first_error')) + ')' if errs else ''}.")
    fl = f.get("authflood", {}).get("data", {})
    for name, rounds in fl.items():
        for kind in ("right", "wrong"):
            tot = {k: sum(x[f"{kind}_{k}"] for x in rounds) for k in
                   ("in_use", "ok", "wrong", "throttled", "other", "connects", "errors", "n")}
            out.append(f"- authflood {kind} password, {name}: PASS answered [IN-USE] {tot['in_use']:,}, +OK "
                       f"{tot['ok']:,}, wrong password {tot['wrong']:,}, throttled {tot['throttled']:,}, other "
                       f"{tot['other']:,}; {tot['connects']:,} connections, {tot['errors']} closed unexpectedly; "
                       f"{tot['n']:,} SMTP transactions timed.")
    for name, fig in f.items():
        if "error" in fig:
            out.append(f"- figure {name} failed: {fig['error']}")
    relay = f.get("relay", {}).get("data", {})
    for name in ("postling", "postfix"):
        rounds = relay.get(name, [])
        ok = [r for r in rounds if not r.get("error")]
        errors = sorted({r["error"] for r in rounds if r.get("error")})
        if ok:
            out.append(f"- relay, {name}: the sink received {sum(r['sunk'] for r in ok):,} of "
                       f"{sum(r['messages'] for r in ok):,} messages in {len(ok)} round(s), over "
                       f"{cell([r.get('sink_sessions') for r in ok])} SMTP sessions per round; the sink used "
                       f"{cell([r.get('sink_cpu') for r in ok], 2, 100)} % of one CPU meanwhile (not a bottleneck "
                       f"unless near 100); {cell([r['noop_n'] for r in ok])} NOOPs timed per round.")
        for e in errors:
            out.append(f"- relay, {name}: FAILED: {e}")
        for h in relay.get("hold", {}).get(name, []):
            if h.get("error"):
                out.append(f"- relay memory, {name}: FAILED: {h['error']}")
                continue
            smtp = (f"; {h['smtp_processes']} `smtp` processes with RSS {h['smtp_rss'] / 1024:.1f} MiB, PSS "
                    f"{h['smtp_pss'] / 1024:.1f} MiB" if "smtp_processes" in h else "")
            out.append(f"- relay memory, {name}: {h['held']} of {h['wanted']} outbound connections open at the "
                       f"stalling listener; RSS of the whole tree {h['rss_before'] / 1024:.1f} → "
                       f"{h['rss'] / 1024:.1f} MiB ({h['processes']} processes){smtp}.")
    return out


def bigbox_rows(t, f, runs):
    if "bigbox" not in f:
        return
    n = runs.get("bigbox", {}).get("bigbox_messages", 60000)
    peer = "Dovecot+Postfix"
    t.row(f"SMTP transaction while a {n:,}-message mailbox is opened and emptied over POP3 (login, DELE all, "
          f"QUIT), p50 (ms)", "bigbox", "p50", "dovecot", digits=2, peer_label=peer)
    t.row("  same, p99 (ms)", "bigbox", "p99", "dovecot", digits=2, peer_label=peer, target=("<=", 5))
    t.row("  same, worst (ms)", "bigbox", "max", "dovecot", digits=1, peer_label=peer)
    for phase, what in (("open", "PASS to its +OK"), ("dele", "the pipelined DELEs"), ("quit", "QUIT to its +OK")):
        t.row(f"  p50 of those ending during {what} (ms; n/a: none did)", "bigbox", f"{phase}_p50", "dovecot",
              digits=2, peer_label=peer)
        t.row("    p99 (ms)", "bigbox", f"{phase}_p99", "dovecot", digits=2, peer_label=peer)
    t.row("  SMTP transactions timed during the POP3 session", "bigbox", "n", "dovecot", peer_label=peer)
    t.row("  POP3 PASS to its +OK (the opening, s)", "bigbox", "open_s", "dovecot", digits=2, peer_label=peer)
    t.row("  POP3 QUIT to its +OK (the deletions, s)", "bigbox", "quit_s", "dovecot", digits=2, peer_label=peer)
    t.row("  messages left after QUIT", "bigbox", "left_after_quit", "dovecot", peer_label=peer, target=("==", 0))


def notes(f, idle_s, deferred_n):
    return ["", "## How each figure is measured, and what is not equal", "",
            "- **Setup.** Each server runs from its own directory under `bench/work/` on loopback ports picked at "
            "start: postling with its production defaults (`log_level = info`), Postfix from a private config "
            "directory (`postfix -c`, its own queue directory, `/etc/postfix` untouched and checked), Dovecot from "
            "its own config file. Both SMTP servers deliver into Maildirs on the same filesystem for the same users; "
            "Postfix through `virtual(8)` with Debian's defaults. Changes to Postfix's defaults: no client "
            "hostname lookup (`smtpd_peername_lookup = no`: a benchmark sends no DNS queries), no per-client "
            "limits (every client is 127.0.0.1), `smtpd_junk_command_limit` raised so the side session's NOOPs "
            "are not slowed as junk, the smtpd process limit raised to the connection count, services not "
            "chrooted (no performance effect), and the retry interval (below). Both log each message "
            "(postling to its log file, Postfix through `postlogd` to its `maillog_file`).",
            "- **The harness's own deletions.** What the harness removes between rounds (a Maildir emptied before a "
            "run, a server's directory from an earlier setup) is renamed into `bench/work/trash/` and deleted only "
            "after the run. On this machine's ext4, which has no journal, every file creation skips the inodes of its "
            "block group freed in the last 60-300 s (`recently_deleted()` in `fs/ext4/ialloc.c`), one buffer lookup "
            "each: after the harness had deleted 5,000 Maildir files, a creation cost about 0.5 ms of kernel CPU "
            "(perf: 47% of postling's CPU in `ext4_create`, 41% in `recently_deleted`), and that cost fell on "
            "whichever server ran next. Figures measured before 2026-12-05 22:00 UTC include it (postling's smtp20 "
            "rose from about 2,000 to 3,200 msg/s with the change, the quiet SMTP transaction p99 fell from about 6.6 "
            "to 2 ms). What a server deletes itself (Postfix its queue files) still counts against it. A run "
            "started within 5 minutes of another run's end still sees that run's final cleanup.",
            "- **SMTP acceptance.** `smtp-source -s S -m N -l 4096`, one message per connection (its default, "
            "like inbound MX traffic); msg/s is N over the time smtp-source ran; \"all in the Maildirs\" is from "
            "the start until N files are in the recipient's `new/`. A warm-up of 200 messages per server precedes "
            "the figures. Both servers fsync before `250` (see the durability check: postling also fsyncs the "
            "directories it renames into, Postfix does not, which costs postling extra syncs).",
            "- **Latency.** A separate session, opened before the 20-session load, sends NOOP and waits for the "
            "reply, then pauses 1 ms, for as long as smtp-source runs; nearest-rank p50/p99.",
            "- **Disk bytes.** `write_bytes` (bytes the processes caused to be written to storage) summed over "
            "the server's whole process tree during the 20-session run until all messages were delivered, divided "
            "by the messages. Processes that exit meanwhile (a Postfix smtpd after 100 connections, a cleanup "
            "after 100 messages) are counted from their taskstats exit records. The ext4 journal (jbd2) and "
            "metadata writeback are done by kernel threads and are attributed to no process, so neither server's "
            "figure includes them. The kernel counts a whole 4 KiB page each time a clean page of a file is "
            "dirtied. `bench/diskbytes.py` breaks postling's figure down (spool file, Maildir file, log) and, "
            "on an ext4 in a loop device, adds what the device wrote with the journal (doc/spool.md).",
            "- **Memory.** VmRSS summed over all the server's processes, at rest (no process started or ended "
            "and no CPU tick used for 10 s and, for Postfix, only master, qmgr, pickup and postlogd left: the others exit after "
            "`max_idle`, 100 s); then while holding idle SMTP connections (opened with at most 256 awaiting their greeting, "
            "2 s settle). RSS counts shared pages (libraries) once per process, which makes a multi-process server "
            "look bigger than it is; PSS (shared pages divided among their users) is shown beside it. A peer that "
            "stops greeting for 30 s, or a machine with less than 6 GiB left, ends the step; the checks say so.",
            f"- **Idle cost.** CPU ticks (utime+stime) and context switches (voluntary + involuntary: each "
            f"wake-up is at least one) of the whole process tree over {idle_s} s, at rest as above (pickup and qmgr "
            f"still wake up on timers).",
            f"- **Deferred queue.** {deferred_n:,} messages to a user whose Maildir path is a plain file: each "
            "server tries once, gets ENOTDIR and defers the message (postling: temporary failure; Postfix "
            "virtual: `dsn=4.2.0, status=deferred`), the same realistic fault for both (a broken mailbox). Both "
            "are configured to retry after 1 h (postling `retry_min = retry_max = 1h`, Postfix "
            "`minimal_backoff_time = maximal_backoff_time = 1h`; their defaults are 1 min and 5 min) so the "
            "windows measure what holding the queue costs, not the retries; Postfix keeps its default "
            "`queue_run_delay` (300 s) scan of the deferred queue.",
            "- **POP3.** The mailbox is written straight into the Maildir (LF line ends, as delivered) and synced "
            "before each run. RETR+DELE: one session, login to QUIT (the deletions happen at QUIT), commands "
            "pipelined 64 pairs deep. Big message: the RETR alone. The client is a raw-socket pipelining client "
            "(`bench/popclient.py`; poplib parses every line in Python and would be the bottleneck); its "
            "ceiling against a dummy server is in the checks. Dovecot builds its index files on the first login "
            "of each run, postling scans the directory: both start from a fresh Maildir.",
            "- **Footprint.** postling's stripped release binary against the Installed-Size of the peers' Debian "
            "packages (without the libraries they depend on).",
            "- **TLS.** For this figure the three servers are set up again with a self-signed certificate made by "
            "`openssl req` in `bench/work/tls/` (ECDSA P-256 first, then RSA-2048: postling rewrites its config and "
            "gets SIGHUP, Postfix `postconf -e` + `postfix reload`, Dovecot `doveadm reload`; a probe checks that each "
            "presents the new certificate before the rounds). postling: `tls_cert`, `tls_key`, `smtps_listen` on a "
            "loopback port. Postfix: an `smtpd` service on its own loopback port with `smtpd_tls_wrappermode=yes` "
            "and `smtpd_tls_security_level=encrypt` (as `master.cf.proto` has it for 465), `tlsmgr` in master.cf, "
            "otherwise Debian's TLS defaults (session tickets on). Dovecot: `ssl = yes` and its `pop3s` listener: "
            "POP3, not SMTP, so it is beside, not against, the SMTP figures, and it has no SMTP session for the "
            "NOOP check. The client: Python `ssl` in separate processes (2 by default), each connecting, doing a "
            "full handshake (no session resumption: a session is never passed in; no certificate check), reading "
            "the greeting and closing, back to back for the flood's seconds; handshakes/s is all processes' count "
            "over the time. The client shares the 2 vCPUs with the server, so the rate is a joint figure; the server's "
            "CPU per handshake (utime+stime of its whole process tree over the flood, exited processes included, "
            "÷ handshakes) is the server's own cost. Postfix answered about 22 handshakes a second per client "
            "process while using about 2–5 ms of CPU per handshake (few ticks per round at 1/100 s, so that figure is coarse): its rate is bound by the wait per connection, "
            "not by its CPU: checked by hand, its `220` came about 42 ms after the handshake completed, the same "
            "with TLS 1.2 and with `smtpd_tls_session_cache_timeout = 0` (no tickets); the cause was not "
            "investigated. So compare CPU per handshake for capacity. Dovecot's `pop3-login` (Debian default "
            "`service_count = 1`) forks a login process per connection, which its CPU figure includes. The NOOP "
            "side session is plaintext on the same server's `smtp_listen` (Postfix: its plaintext smtpd service), "
            "timed as in the smtp20 figure. Memory per idle TLS connection: RSS of the whole process tree just "
            "before, and 2 s after, opening the connections one after another (handshake and greeting each) and "
            "holding them, ÷ connections; measured first, before the floods, so Postfix has no smtps smtpd left "
            "over to reuse. Postfix and Dovecot hold each connection in a process of its own (Dovecot: "
            "`default_process_limit` raised to 1,500 so 1,000 fit).",
            "- **Relaying (issue 13).** `bench/run --only relay`. Each server relays to its own Postfix "
            "`smtp-sink` (`-c`: a running count of messages; one event-driven process, which is not the bottleneck at "
            "these rates) on a loopback port: postling with `relay_host = 127.0.0.1:PORT` and `relay_tls = none`, "
            "Postfix with `relayhost = [127.0.0.1]:PORT` (no MX lookup, no TLS: its default), both otherwise as in "
            "the SMTP figures and with their own outbound concurrency defaults (postling `outbound_concurrency` 4 "
            "per destination; Postfix starts at 5 and grows to 20). The recipients are in `relay.example.net`, "
            "local to neither. 20 smtp-source sessions, one message per connection; accepted msg/s is the messages "
            "over the time smtp-source ran; \"the sink has them all\" is from the start until the sink's count "
            "grew by that many; the side session's NOOPs (as in smtp20) run from the start until then, so they "
            "cover acceptance and forwarding. A server whose mail stops reaching the sink for `--relay-stall` "
            "seconds (30) fails its round with its queue listing, and the other server is still measured. After "
            "a 100-message warm-up per server. Memory: each server is set up again to relay to a listener that "
            "accepts and never answers, with room for the held connections (postling `outbound_concurrency` and "
            "`outbound_max_connections`, Postfix `initial_destination_concurrency` and "
            "`default_destination_concurrency_limit`, all = the connections wanted); twice that many messages are "
            "sent; 2 s after the connections are open, postling's cost is (RSS of its process tree − RSS just "
            "before the messages) ÷ connections; Postfix holds each in an `smtp` process, whose RSS (and PSS) ÷ "
            "connections is its cost.",
            "- **Big mailbox (issue 11).** bob's Maildir is filled with N one-line messages directly (in `new/`, "
            "names with `S=` and `W=` as postling delivers them; chowned to `mail` for Dovecot) and synced; then one "
            "POP3 client sends USER/PASS, STAT, `DELE 1..N` pipelined (64 unanswered at most) and QUIT, while one "
            "SMTP session loops whole transactions to alice (as in the password-hash flood: MAIL, RCPT, DATA, a 1 KiB "
            "message, the 250 after the dot, 1 ms pause between). The POP3 client runs in a process of its own "
            "(before 2026-12-06 it was a thread of the harness, and while it parsed 60,000 DELE replies the SMTP "
            "loop waited for Python's lock: up to its 5 ms switch interval and more, with either server). The "
            "figure is the transactions that began and ended between the PASS and the QUIT's reply; the worst "
            "of each phase (open, DELE, QUIT) is in results.json. postling serves both protocols in one process: before "
            "issue 11 item 3 the opening (readdir, new/ → cur/, sizes) and QUIT's unlinks ran on its one reactor; "
            "now they are requests to the disk executor: a mailbox job keeps at most 2 operations in flight (1 while "
            "another client's disk work waits), submitted once a turn. For the peer, the POP3 side is "
            "Dovecot (a pop3 process of its own) and the SMTP side Postfix: separate processes that share only the "
            "CPUs and the disk. For comparison, the same harness on the code before this change (commit 9818b12, "
            "one round, 2026-12-04 21:10 UTC, checked by hand, not in results.json): postling p50 1.03 ms, p99 "
            "6.43 ms, worst 1,459 ms (the opening, 1.46 s, in which no transaction ended), and no transaction ended "
            "during the 4.66 s of QUIT either (the one waiting then ended after the POP3 session, so it is not in "
            "the sample). With the first executor version (64 operations a turn, spool files still created on the "
            "reactor, io_uring's default 8 kernel workers) single rounds gave postling p50/p99/worst 7.41/27.81/71.0, "
            "10.14/34.04/71.1 and 4.29/15.60/32.2 ms (Dovecot+Postfix 2.91/13.05/146.4, 3.30/35.64/203.8 and "
            "2.69/8.31/13.9 ms). Since then the spool's syncs, renames, file creation and removals wait in the "
            "executor too, io_uring keeps at most 2 workers, and the mailbox job yields to other disk work; and "
            "since 2026-12-06 the login renames nothing (messages are served from `new/`; QUIT moves to `cur/` "
            "only those kept), so the opening is a listing and the snapshot's sort (before: 2.5-2.7 s for the "
            "opening, worst wait 30-50 ms); and the work the reactor does that grows with the mailbox (ordering, "
            "building and freeing the snapshot) runs in steps of a few hundred µs, one per turn. The table shows "
            "this code. The machine is shared, so single rounds vary.",
            "- **Password-hash flood (issue 11).** alice's password is stored as SHA512-CRYPT (5,000 rounds) in "
            "postling's and Dovecot's password files (the same string; the other users stay `{PLAIN}`). One POP3 "
            "session logs in to alice and stays, so her mailbox is in use; then a separate client process opens the "
            "flood's connections, each looping `USER alice` / `PASS …` as fast as answers come, while one SMTP "
            "session loops whole transactions (MAIL, RCPT, DATA, a 1 KiB message, the 250 after the dot; 1 ms pause "
            "between) and times each. postling answers a right password `-ERR [IN-USE]` and the loop sends USER "
            "again; its login cache makes the repeated right password cost one hash per 30 s, so that flood measures "
            "the reactor's work per login attempt (checked by hand in a separate 4 s run with 200 connections: postling "
            "wrote one INFO line per attempt, `pop3: alice logged in from 127.1.0.N (a check made in the last 30s)`, "
            "87,670 lines for 87,315 [IN-USE] answers; these are not summarised as a storm). That was before "
            "`[IN-USE]` was answered after `auth_failure_delay` like a wrong password, and before every login attempt "
            "counted against its address (`login_attempts_per_client`, 30 at once, then 30 a minute); each flood "
            "connection has an address of its own, so now about one answer per connection and second. A wrong password costs a real hash in the helper process each and "
            "is answered after `auth_failure_delay` (1 s in the bench config), so the flood is bounded by connections "
            "÷ 1 s; the connection is then closed and reopened from the next source address in 127.1.0.0/16, so no "
            "address reaches the failed-login throttle (10 per address; throttled logins are refused without a hash, "
            "which would hide the cost). Dovecot+Postfix is not like for like: Dovecot has no `[IN-USE]` for Maildir "
            "(`pop3_lock_session = no`, its default), so each right-password attempt is a whole login (a hash: "
            "`auth_cache_size = 0` by default, a pop3 process opening the mailbox) followed by QUIT and a new "
            "connection; and the SMTP transactions go to Postfix, separate processes that feel the flood only "
            "through the shared CPUs. Dovecot's `auth_failure_delay` is set to 1 s like postling's. The peer "
            "column is a reference for the same load on the two established servers, not the same work.",
            ]
