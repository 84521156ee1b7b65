#!/usr/bin/env python3
"""postling side by side with Postfix (SMTP) and Dovecot (POP3) on this machine, in one run.

A benchmark, not a test: it reports numbers into bench/RESULTS.md and never fails on them.
Each figure is measured for postling and its peer in alternation (A B A B ...), several
rounds, reported as median with min-max. Every process it starts is stopped at the end, also
on Ctrl-C or an error. Traffic goes to 127.0.0.1 only. Run it through bench/run, which
installs the peers and builds postling first.

Raw samples go to bench/results.json; `--only FIGURE` reruns some figures and keeps the
others' samples from the previous run, so RESULTS.md is always the full table.
"""
import argparse
import json
import multiprocessing
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import ssl
import threading
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import popclient  # noqa: E402
import procstat  # noqa: E402
from servers import (ALICE_PW, DOMAIN, Dovecot, EtcPostfixGuard, Postfix, Postling, free_port,  # noqa: E402
                     maildir_clear, maildir_count, sh, set_trash, discard, empty_trash)

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
RESULTS_JSON = ROOT / "bench" / "results.json"
RESULTS_MD = ROOT / "bench" / "RESULTS.md"
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
# bench/run builds it with scripts/build-release (static, as installed) and names it here.
BIN = Path(os.environ.get("POSTLING_BENCH_BIN", TARGET_DIR / "release" / "postling"))

# What `--disk-io both` measures again with the helper process (the rest does not touch the disk
# executor, or measures the peers' side: parsers, pop3 as a whole, footprint, tls, relay, deferred).
BACKEND_FIGURES = ["durability", "smtp1", "smtp20", "idle", "memory", "authflood", "bigbox"]
FIGURES = ["parsers", "durability", "smtp1", "smtp20", "pop3", "idle", "memory", "deferred", "footprint", "tls",
           "authflood", "relay", "bigbox"]
SIZE = 4096
SENDER = "bench@example.org"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Stop(Exception):
    """SIGTERM or SIGHUP: unwind through the finally blocks like Ctrl-C does."""


def on_signal(signum, _frame):
    raise Stop(f"signal {signum}")


# ---- SMTP load ------------------------------------------------------------------------------

def smtp_source(port, sessions, messages, rcpt, size=SIZE):
    # One message per connection (smtp-source's default, like inbound MX traffic); the
    # HELO name is given so smtp-source does not look the machine's name up.
    return subprocess.Popen(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                             "-M", "client.example.org", "-f", SENDER, "-t", rcpt, f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


class SideSession:
    """An open SMTP session that times NOOPs while the load runs."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reply()
        self.sock.sendall(b"EHLO side.example.org\r\n")
        self._reply()
        self.samples = []

    def _reply(self):
        buf = b""
        while True:
            buf += self.sock.recv(4096)
            lines = buf.split(b"\r\n")
            if len(lines) >= 2 and lines[-2][3:4] == b" ":
                return lines[-2]

    def noop(self):
        t = time.perf_counter()
        self.sock.sendall(b"NOOP\r\n")
        reply = self._reply()
        self.samples.append(time.perf_counter() - t)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"NOOP answered {reply!r}")

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


def percentile(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def smtp_load(server, sessions, messages, side=False, ledger=False):
    maildir_clear(server.mail, "alice")
    side_session = SideSession(server.smtp_port) if side else None
    acct = procstat.Ledger(server.root_pid) if ledger else None
    if acct:
        acct.__enter__()
    try:
        t0 = time.perf_counter()
        src = smtp_source(server.smtp_port, sessions, messages, "alice@example.test")
        while src.poll() is None:
            if side_session:
                side_session.noop()
                time.sleep(0.001)  # a small pause, so the side session is no load itself
            else:
                time.sleep(0.002)
        accepted = time.perf_counter() - t0
        err = src.stderr.read().decode(errors="replace").strip()
        deadline = time.time() + 600
        while maildir_count(server.mail, "alice") < messages and time.time() < deadline:
            time.sleep(0.01)
        delivered_after = time.perf_counter() - t0
        got = maildir_count(server.mail, "alice")
        if acct:
            time.sleep(1)  # the queue files' removal after the last delivery
    finally:
        if acct:
            acct.__exit__(None, None, None)
        if side_session:
            side_session.close()
    if got < messages or src.returncode != 0:
        log(f"  {server.name}: {got}/{messages} delivered; smtp-source exit {src.returncode}: {err[:300]}")
    r = {"rate": messages / accepted, "until": delivered_after, "delivered": got, "messages": messages,
         "source_status": src.returncode}
    if side_session:
        lat = side_session.samples
        r.update(noop_n=len(lat), noop_p50=percentile(lat, 50) * 1000 if lat else None,
                 noop_p99=percentile(lat, 99) * 1000 if lat else None)
    if acct:
        t = acct.totals
        r.update(write_bytes=t["write_bytes"], cancelled=t["cancelled_write_bytes"],
                 bytes_per_msg=t["write_bytes"] / messages, processes=acct.processes,
                 exits_lost=acct.exits_lost, load_ticks=t["ticks"])
    return r


# ---- idle connections -----------------------------------------------------------------------

def mem_available_kib():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def hold_idle(server, n, pending_max=256, stall=30, reserve_kib=6 << 20):
    """Opens `n` SMTP connections (at most `pending_max` waiting for their greeting at once),
    waits for the greetings, measures the server's memory while they all stay open, closes
    them with a reset. Stops early if the server stops greeting for `stall` seconds or the
    machine's available memory falls below `reserve_kib`."""
    sel = selectors.DefaultSelector()
    socks, pending = [], {}
    greeted = refused = 0
    stopped = None
    last_progress = last_memory_check = time.time()
    while len(socks) < n or pending:
        while len(socks) < n and len(pending) < pending_max:
            s = socket.socket()
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            try:
                s.connect(("127.0.0.1", server.smtp_port))
            except BlockingIOError:
                pass
            socks.append(s)
            pending[s.fileno()] = s
            sel.register(s, selectors.EVENT_READ)
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(512)
            except OSError:
                data = b""
            if data.startswith(b"220"):
                greeted += 1
            else:
                refused += 1
            sel.unregister(s)
            pending.pop(s.fileno(), None)
            last_progress = time.time()
        if time.time() - last_memory_check >= 1:
            last_memory_check = time.time()
            if mem_available_kib() < reserve_kib:
                stopped = f"stopped at {len(socks)} connections: less than {reserve_kib >> 20} GiB of memory left"
                break
        if time.time() - last_progress > stall:
            stopped = f"no greeting for {stall} s after {greeted} greetings ({len(pending)} waiting)"
            break
    time.sleep(2)
    pids = server.pids()
    rss, pss = procstat.memory_kib(pids)
    for s in socks:
        s.close()
    sel.close()
    return {"greeted": greeted, "refused": refused, "rss": rss, "pss": pss, "processes": len(pids),
            "stopped": stopped}


def comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def settle(server, quiet=10, timeout=400):
    """Waits until the server is at rest: its process set unchanged for `quiet` seconds and,
    for a server that names them (`rest_processes`), nothing but its permanent processes
    left. An idle Postfix smtpd, cleanup or virtual exits `max_idle` (100 s) after its last
    job; until then Postfix is not at rest."""
    deadline = time.time() + timeout
    last, since = None, time.time()
    while time.time() < deadline:
        pids = server.pids()
        # The process set and their CPU time: a single-process server still finishing work
        # (writing deferral records, say) is not at rest either.
        now = (frozenset(pids), sum((procstat.proc_counters(p) or (0, {"ticks": 0}))[1]["ticks"] for p in pids))
        rest = server.rest_processes is None or all(comm(p) in server.rest_processes for p in pids)
        if now != last or not rest:
            last, since = now, time.time()
        elif time.time() - since >= quiet:
            return True
        time.sleep(1)
    return False


def idle_window(server, seconds):
    settled = settle(server)
    with procstat.Ledger(server.root_pid) as acct:
        time.sleep(seconds)
    t = acct.totals
    return {"ticks": t["ticks"], "switches": t["switches"], "processes": acct.processes, "settled": settled}


# ---- deferred queue ------------------------------------------------------------------------

def make_deferred(server, count):
    """Queues `count` messages to carol, whose Maildir path is a plain file: each server
    tries once, fails with a temporary error (ENOTDIR) and keeps the message for a retry an
    hour later. Returns what the server's own queue listing says."""
    carol = Path(server.mail) / "carol"
    discard(carol)
    carol.write_text("not a directory: deliveries to carol fail temporarily\n")
    if server.name == "postfix":
        shutil.chown(carol, "postfix", "postfix")
    src = smtp_source(server.smtp_port, 10, count, "carol@example.test")
    src.wait()
    deadline = time.time() + 300
    queued = deferred = 0
    while time.time() < deadline:
        queued, deferred = server.queue()
        if deferred >= count:
            break
        time.sleep(1)
    return {"queued": queued, "deferred": deferred, "source_status": src.returncode}


# ---- POP3 -----------------------------------------------------------------------------------

def pop3_fill(server, count, size):
    d = Path(server.mail) / "bob"
    discard(d)
    for sub in ("tmp", "new", "cur"):
        (d / sub).mkdir(parents=True)
    line = b"x" * 75 + b"\n"
    body = b"From: <bench@example.org>\nTo: <bob@example.test>\nSubject: bench\n\n" + line * (size // len(line))
    for i in range(count):
        (d / "new" / f"{1700000000 + i}.M{i}P1Q{i}.bench").write_bytes(body)
    if server.name == "dovecot":
        sh(["chown", "-R", "mail:mail", str(d)])
    os.sync()  # the fill's writeback must not land inside the measurement


def pop3_session(port, expect, big=False):
    """One session: log in, RETR+DELE everything (or RETR the one big message), QUIT.
    Returns (messages, octets, seconds): the whole session for RETR+DELE, the RETR alone for
    the big message."""
    t0 = time.perf_counter()
    c = popclient.Client(port)
    c.login("bob", "bob-pw")
    n = c.stat()
    if n != expect:
        raise RuntimeError(f"STAT says {n} messages, {expect} expected")
    if big:
        t0 = time.perf_counter()
        octets = c.retr(1)
        took = time.perf_counter() - t0
        c.quit()
        return n, octets, took
    octets = c.retr_dele_all(n)
    c.quit()
    return n, octets, time.perf_counter() - t0


def pop3_run(server, count, big_size):
    pop3_fill(server, count, SIZE)
    n, octets, took = pop3_session(server.pop3_port, count)
    left = maildir_count(server.mail, "bob")
    pop3_fill(server, 1, big_size)
    _, big_octets, big_took = pop3_session(server.pop3_port, 1, big=True)
    return {"rate": n / took, "mbs": octets / took / 1e6, "big_mbs": big_octets / big_took / 1e6,
            "big_octets": big_octets, "left_after_quit": left}


def pop3_client_ceiling(count, big_size):
    """The same client against an in-memory dummy server (a ceiling for the client)."""
    out = {}
    for size, key in ((SIZE, "rate"), (big_size, "big")):
        port = free_port()
        dummy = subprocess.Popen([sys.executable, str(Path(popclient.__file__)), "dummy", str(port), str(size)],
                                 stdout=subprocess.PIPE, start_new_session=True)
        try:
            dummy.stdout.readline()
            if key == "rate":
                n, octets, took = pop3_session(port, 1000)
                out["rate"], out["mbs"] = n / took, octets / took / 1e6
            else:
                _, octets, took = pop3_session(port, 1000, big=True)
                out["big_mbs"] = octets / took / 1e6
        finally:
            dummy.kill()
            dummy.wait()
    return out


# ---- TLS ------------------------------------------------------------------------------------

def make_certs(d):
    """A self-signed ECDSA P-256 and an RSA-2048 certificate (openssl, as doc/tls.md shows)."""
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, newkey in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                         ("rsa", ["-newkey", "rsa:2048"])):
        cert, key = d / f"{kind}-cert.pem", d / f"{kind}-key.pem"
        sh(["openssl", "req", "-x509", *newkey, "-days", "30", "-nodes", "-subj", f"/CN=bench.{DOMAIN}",
            "-addext", f"subjectAltName=DNS:bench.{DOMAIN}", "-addext", "basicConstraints=critical,CA:FALSE",
            "-keyout", str(key), "-out", str(cert)])
        os.chmod(key, 0o600)
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
        out[kind] = (str(cert), str(key), der)
    return out


def tls_context():
    # A full handshake every time: a new context per process, no session passed in (Python
    # never resumes unless told), no certificate check (self-signed).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tls_connect(ctx, port, greeting, timeout=30):
    """Connects, completes the handshake, reads the greeting line; returns the TLS socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t = ctx.wrap_socket(s)
    buf = b""
    while b"\r\n" not in buf:
        data = t.recv(512)
        if not data:
            raise RuntimeError(f"closed before the greeting ({buf!r})")
        buf += data
    if not buf.startswith(greeting):
        raise RuntimeError(f"greeting {buf[:80]!r}")
    return t


def tls_probe(port, greeting):
    """(DER of the certificate the server presents, protocol, cipher)."""
    t = tls_connect(tls_context(), port, greeting)
    try:
        return t.getpeercert(binary_form=True), t.version(), t.cipher()[0]
    finally:
        t.close()


def _handshake_worker(port, greeting, seconds, conn):
    ctx = tls_context()
    n = errors = 0
    first_error = None
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            tls_connect(ctx, port, greeting).close()
            n += 1
        except Exception as e:  # counted and reported, the flood goes on
            errors += 1
            first_error = first_error or repr(e)[:200]
    conn.send((n, errors, time.perf_counter() - t0, first_error))
    conn.close()


def tls_flood(server, port, greeting, seconds, parallel, side_port=None):
    """`parallel` client processes each doing full handshakes back to back (connect,
    handshake, greeting, close) for `seconds`; meanwhile, with `side_port`, a plaintext SMTP
    side session times NOOPs as in smtp20. The server's CPU over the flood comes from its
    process tree's ledger."""
    ctx = multiprocessing.get_context("fork")
    side = SideSession(side_port) if side_port else None
    workers = []
    with procstat.Ledger(server.root_pid) as acct:
        for _ in range(parallel):
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_handshake_worker, args=(port, greeting, seconds, tx), daemon=True)
            p.start()
            tx.close()
            workers.append((p, rx))
        try:
            while any(p.is_alive() for p, _ in workers):
                if side:
                    side.noop()
                    time.sleep(0.001)
                else:
                    time.sleep(0.01)
            got = [rx.recv() for _, rx in workers]
        finally:
            for p, _ in workers:
                p.join(5)
                if p.is_alive():
                    p.kill()
                    p.join()
            if side:
                side.close()
    n = sum(g[0] for g in got)
    errors = sum(g[1] for g in got)
    elapsed = max(g[2] for g in got)
    r = {"rate": n / elapsed, "handshakes": n, "errors": errors, "first_error": next((g[3] for g in got if g[3]), None),
         "server_ticks": acct.totals["ticks"],
         "cpu_ms_per_handshake": acct.totals["ticks"] * 10 / n if n else None}
    if side:
        lat = side.samples
        r.update(noop_n=len(lat), noop_p50=percentile(lat, 50) * 1000 if lat else None,
                 noop_p99=percentile(lat, 99) * 1000 if lat else None)
    return r


def hold_tls(server, port, greeting, n):
    """Memory per idle TLS connection: RSS of the server's processes now, then while holding
    `n` TLS connections idle after handshake and greeting (opened one after the other)."""
    time.sleep(2)
    rss0, pss0 = procstat.memory_kib(server.pids())
    procs0 = len(server.pids())
    ctx = tls_context()
    socks, failed, first_error = [], 0, None
    t0 = time.time()
    try:
        for _ in range(n):
            try:
                socks.append(tls_connect(ctx, port, greeting))
            except Exception as e:
                failed += 1
                first_error = first_error or repr(e)[:200]
                if failed > 20:
                    break
        opened = time.time() - t0
        time.sleep(2)
        pids = server.pids()
        rss, pss = procstat.memory_kib(pids)
    finally:
        for s in socks:
            try:
                s.close()
            except OSError:
                pass
    held = len(socks)
    return {"held": held, "failed": failed, "first_error": first_error, "rss_before": rss0, "pss_before": pss0,
            "rss_held": rss, "pss_held": pss, "processes_before": procs0, "processes_held": len(pids),
            "open_seconds": opened,
            "kib_per_conn": (rss - rss0) / held if held else None,
            "pss_kib_per_conn": (pss - pss0) / held if held else None}


# ---- password-hash flood (issue 11) ---------------------------------------------------------

def _pop_flood_worker(port, user, password, conns, seconds, conn):
    """`conns` POP3 connections, each looping USER/PASS as fast as the server answers. A
    connection whose PASS is refused as a wrong password reconnects from the next source
    address of 127.1.0.0/16 (so the per-address failed-login throttle, 10, is never reached);
    one whose login succeeds (Dovecot: no [IN-USE]) sends QUIT and reconnects; one told
    [IN-USE] sends USER again on the same connection."""
    sel = selectors.DefaultSelector()
    counts = {"in_use": 0, "ok": 0, "wrong": 0, "throttled": 0, "other": 0, "connects": 0, "errors": 0}
    state = {}
    src = [0]

    def open_one():
        src[0] += 1
        s = socket.socket()
        s.bind((f"127.1.{(src[0] >> 8) & 255}.{src[0] & 255 or 1}", 0))
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        counts["connects"] += 1
        state[s] = ["greet", b""]
        sel.register(s, selectors.EVENT_READ)

    def close(s):
        sel.unregister(s)
        state.pop(s, None)
        s.close()

    for _ in range(conns):
        open_one()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            st = state.get(s)
            if st is None:
                continue
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                counts["errors"] += st[0] != "quit"
                close(s)
                open_one()
                continue
            st[1] += data
            while b"\r\n" in st[1]:
                line, st[1] = st[1].split(b"\r\n", 1)
                phase = st[0]
                try:
                    if phase in ("greet", "user"):
                        st[0] = "pass" if phase == "user" else "user"
                        s.send(b"USER " + user.encode() + b"\r\n" if phase == "greet"
                               else b"PASS " + password.encode() + b"\r\n")
                    elif phase == "pass":
                        if line.startswith(b"+OK"):
                            counts["ok"] += 1
                            st[0] = "quit"
                            s.send(b"QUIT\r\n")
                        elif b"IN-USE" in line:
                            counts["in_use"] += 1
                            st[0] = "user"
                            s.send(b"USER " + user.encode() + b"\r\n")
                        else:
                            counts["throttled" if b"Too many" in line else "wrong" if b"AUTH" in line or b"nvalid" in line
                                   or b"failed" in line else "other"] += 1
                            raise ConnectionResetError
                    elif phase == "quit":
                        raise ConnectionResetError
                except OSError:
                    close(s)
                    open_one()
                    break
    elapsed = time.perf_counter() - t0
    for s in list(state):
        close(s)
    conn.send((counts, elapsed))
    conn.close()


class SmtpLoop:
    """One SMTP session looping whole transactions (MAIL, RCPT, DATA, a 1 KiB message, the
    final 250) and timing each from MAIL to the 250 after the dot."""

    def __init__(self, port, rcpt="bob@example.test"):
        self.side = SideSession(port)
        self.samples = []
        self.rcpt = f"RCPT TO:<{rcpt}>\r\n".encode()
        self.body = (f"From: <bench@example.org>\r\nTo: <{rcpt}>\r\nSubject: loop\r\n\r\n".encode()
                     + (b"x" * 70 + b"\r\n") * 14 + b".\r\n")

    def transaction(self):
        s = self.side
        t = time.perf_counter()
        for cmd, want in ((b"MAIL FROM:<bench@example.org>\r\n", b"250"), (self.rcpt, b"250"),
                          (b"DATA\r\n", b"354"), (self.body, b"250")):
            s.sock.sendall(cmd)
            reply = s._reply()
            if not reply.startswith(want):
                raise RuntimeError(f"{cmd[:20]!r} answered {reply!r}")
        self.samples.append(time.perf_counter() - t)

    def close(self):
        self.side.close()


def smtp_loop(port, seconds):
    loop = SmtpLoop(port)
    try:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            loop.transaction()
            time.sleep(0.001)  # as the NOOP side session: not a load of its own
    finally:
        loop.close()
    lat = loop.samples
    return {"n": len(lat), "p50": percentile(lat, 50) * 1000, "p99": percentile(lat, 99) * 1000,
            "max": max(lat) * 1000}


class PopHolder:
    """A POP3 session logged in to alice and kept open: her mailbox is in use."""

    def __init__(self, port):
        self.c = popclient.Client(port)
        self.c.login("alice", ALICE_PW)

    def close(self):
        try:
            self.c.quit()
        except Exception:
            pass


def authflood(pop_server, smtp_server, seconds, conns):
    """The transaction loop's latency alone, then beside `conns` connections looping a right
    and then a wrong password for alice, whose mailbox a holder keeps logged in."""
    maildir_clear(smtp_server.mail, "bob")
    out = {}
    quiet = smtp_loop(smtp_server.smtp_port, min(seconds, 3))
    out.update({f"quiet_{k}": v for k, v in quiet.items()})
    holder = PopHolder(pop_server.pop3_port)
    try:
        for kind, pw in (("right", ALICE_PW), ("wrong", "not-" + ALICE_PW)):
            ctx = multiprocessing.get_context("fork")
            rx, tx = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_pop_flood_worker, args=(pop_server.pop3_port, "alice", pw, conns, seconds + 1, tx),
                            daemon=True)
            with procstat.Ledger(pop_server.root_pid) as acct:
                p.start()
                tx.close()
                try:
                    time.sleep(0.5)  # the flood's connections are open and looping
                    r = smtp_loop(smtp_server.smtp_port, seconds)
                    counts, elapsed = rx.recv()
                finally:
                    p.join(10)
                    if p.is_alive():
                        p.kill()
                        p.join()
            out.update({f"{kind}_{k}": v for k, v in r.items()})
            out.update({f"{kind}_{k}": v for k, v in counts.items()})
            out[f"{kind}_answers_per_s"] = sum(counts[k] for k in ("in_use", "ok", "wrong", "throttled", "other")) / elapsed
            out[f"{kind}_pop_ticks"] = acct.totals["ticks"]
            out[f"{kind}_pop_processes"] = acct.processes
    finally:
        holder.close()
    maildir_clear(smtp_server.mail, "bob")
    return out


# ---- relaying (issue 13) --------------------------------------------------------------------

# The recipients' domain: local to neither server, so both relay it to the sink.
RELAY_DOMAIN = "relay.example.net"


class Sink:
    """Postfix's smtp-sink on a loopback port: one event-driven process that accepts every
    message and throws it away, with a running counter (`-c`, which it updates whenever "."
    is received) written to a file. `-u nobody`: smtp-sink refuses to run as root without it.
    A listen backlog of 1,024 so no connection waits for the accept queue."""

    def __init__(self, work):
        self.port = free_port()
        self.out_path = work / f"smtp-sink-{self.port}.out"
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(["smtp-sink", "-c", "-u", "nobody", "-h", "sink.example.net",
                                      f"127.0.0.1:{self.port}", "1024"],
                                     stdin=subprocess.DEVNULL, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"smtp-sink did not start: {self.out_path.read_text(errors='replace')[-300:]}")

    def counters(self):
        """(sessions, messages) received so far, from the last record of the counter."""
        with open(self.out_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200))
            tail = f.read()
        # Records are `sess=S quit=Q mesg=M\r`; the last one may still be half written.
        done = re.findall(rb"sess=(\d+) quit=\d+ mesg=(\d+)\r", tail)
        return (int(done[-1][0]), int(done[-1][1])) if done else (0, 0)

    def count(self):
        return self.counters()[1]

    def ticks(self):
        """The sink's CPU time (utime + stime, 1/100 s): is it near a whole CPU (a bottleneck)?"""
        c = procstat.proc_counters(self.proc.pid)
        return c[1]["ticks"] if c else 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


class StallSink:
    """A loopback listener that accepts connections and never says anything (no greeting):
    each relay's outbound connections stay open, waiting, while their memory is measured."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.held = []

    def accept_all(self):
        """Accepts what is waiting (without blocking); returns the connections held."""
        self.sock.setblocking(False)
        while True:
            try:
                c, _ = self.sock.accept()
            except BlockingIOError:
                return len(self.held)
            self.held.append(c)

    def drop(self):
        for c in self.held:
            c.close()
        self.held = []

    def close(self):
        self.drop()
        self.sock.close()


def relay_conf(server, port, hold=None):
    """The relay settings, for relaying to 127.0.0.1:port; `hold`: the connections per
    destination wanted at once (the memory step), else each server's defaults."""
    if server.name == "postling":
        conf = {"relay_host": f"127.0.0.1:{port}", "relay_tls": "none"}
        if hold:
            conf.update(outbound_concurrency=hold, outbound_max_connections=hold)
        return conf
    # Postfix: everything not local goes to the sink (`[...]`: no MX lookup); no TLS to it
    # (smtp_tls_security_level is empty by default). Loopback clients may relay (mynetworks).
    conf = {"relayhost": f"[127.0.0.1]:{port}"}
    if hold:
        # Postfix starts a destination at 5 connections and adds one per successful delivery;
        # a sink that never answers would keep it at 5.
        conf.update(initial_destination_concurrency=hold, default_destination_concurrency_limit=hold)
    return conf


def reconfigure(server, conf):
    """Stops `server`, sets it up again with the relay settings `conf` and starts it. Raises
    with the server's own words if it refuses the config (postling -t) or does not start."""
    server.stop()
    server.relay_conf = conf
    server.setup()
    server.start()


def one_line(e):
    """An error as one line, config paths shortened (it goes into a Markdown table)."""
    text = re.sub(r"/\S*/(postling\.conf|main\.cf)", r"\1", str(e))
    return " / ".join(l.strip() for l in text.splitlines() if l.strip())


def queue_summary(server):
    if server.name == "postling":
        out = sh([str(server.binary), "-q", "-c", str(server.conf)], check=False)
        text = (out.stdout + out.stderr).strip().splitlines()
    else:
        text = server.postfix("postqueue", "-p", check=False).strip().splitlines()
    return " / ".join(text[:4])[:400]


def relay_round(server, sink, sessions, messages, stall):
    """20 sessions send `messages` × 4 KiB to a remote domain; the server relays them to the
    sink. A side session sends NOOPs from the start until the sink has them all. Fails
    (instead of waiting forever) when smtp-source fails or the sink has received nothing new
    for `stall` seconds."""
    base_sessions, base = sink.counters()
    base_ticks = sink.ticks()
    side = SideSession(server.smtp_port)
    src = None
    try:
        t0 = time.perf_counter()
        src = smtp_source(server.smtp_port, sessions, messages, f"user@{RELAY_DOMAIN}")
        accepted = None
        got, progress = 0, time.time()
        while True:
            if accepted is None and src.poll() is not None:
                accepted = time.perf_counter() - t0
                if src.returncode != 0:
                    err = src.stderr.read().decode(errors="replace").strip()
                    raise RuntimeError(f"smtp-source exit {src.returncode}: {err[:300]}")
            n = sink.count() - base
            if n != got:
                got, progress = n, time.time()
            if got >= messages and accepted is not None:
                break
            if time.time() - progress > stall:
                raise RuntimeError(f"the sink has {got}/{messages} messages and received none for {stall} s "
                                   f"(smtp-source {'done' if accepted else 'still running'}); "
                                   f"queue: {queue_summary(server)}")
            side.noop()
            time.sleep(0.001)
        until = time.perf_counter() - t0
    finally:
        if src and src.poll() is None:
            os.killpg(src.pid, signal.SIGKILL)
            src.wait()
        side.close()
    lat = side.samples
    sink_ticks = sink.ticks() - base_ticks
    return {"rate": messages / accepted, "until": until, "sunk": got, "messages": messages,
            "sink_sessions": sink.counters()[0] - base_sessions, "sink_ticks": sink_ticks,
            "sink_cpu": sink_ticks / 100 / until,
            "noop_n": len(lat), "noop_p50": percentile(lat, 50) * 1000 if lat else None,
            "noop_p99": percentile(lat, 99) * 1000 if lat else None}


def relay_hold(server, hold, timeout=60):
    """RSS per outbound connection: the server relays to a listener that never answers; with
    `hold` connections open to it, the memory of those connections. postling: (RSS of the
    process tree with them − RSS just before the messages were sent) ÷ connections. Postfix
    holds each in an `smtp` process: those processes' RSS (and PSS) ÷ connections."""
    stall = StallSink()
    try:
        reconfigure(server, relay_conf(server, stall.port, hold))
        time.sleep(2)
        before_rss, before_pss = procstat.memory_kib(server.pids())
        src = smtp_source(server.smtp_port, 10, 2 * hold, f"user@{RELAY_DOMAIN}")
        deadline = time.time() + timeout
        while stall.accept_all() < hold and time.time() < deadline:
            time.sleep(0.1)
        src.wait(60)
        time.sleep(2)
        held = stall.accept_all()
        pids = server.pids()
        rss, pss = procstat.memory_kib(pids)
        out = {"held": held, "wanted": hold, "rss_before": before_rss, "rss": rss, "pss_before": before_pss,
               "pss": pss, "processes": len(pids), "source_status": src.returncode}
        if server.name == "postfix":
            smtp = [p for p in pids if comm(p) == "smtp"]
            out["smtp_processes"] = len(smtp)
            out["smtp_rss"], out["smtp_pss"] = procstat.memory_kib(smtp)
            per = (out["smtp_rss"], out["smtp_pss"])
        else:
            per = (rss - before_rss, pss - before_pss)
        if not held:
            raise RuntimeError(f"no outbound connection reached the stalling listener in {timeout} s "
                               f"(smtp-source exit {src.returncode}); queue: {queue_summary(server)}")
        out["kib_per_conn"], out["pss_kib_per_conn"] = per[0] / held, per[1] / held
        return out
    finally:
        server.stop()  # its connections close with it
        if server.name == "postfix":
            server.purge_queue()
        stall.close()


def relay_figure(servers, rounds, sessions, messages, hold, stall):
    """Each server relays to its own smtp-sink. A server that fails (postling before
    forwarding exists: an unknown config key, or mail that never reaches the sink) gets its
    error recorded in its rounds, and the other is still measured."""
    data = {s.name: [] for s in servers}
    data["hold"] = {s.name: [] for s in servers}
    sinks = {}
    failed = {}
    try:
        for s in servers:
            sinks[s] = Sink(WORK)
            s.tls, s.smtps_port = None, None  # as in the SMTP figures: no TLS
            try:
                reconfigure(s, relay_conf(s, sinks[s].port))
                relay_round(s, sinks[s], 5, 100, stall)  # a warm-up, not measured
            except Exception as e:
                failed[s] = f"{s.name} as a relay: {one_line(e)}"
                log(f"  relay: {failed[s]}")
        for r in range(rounds):
            for s in servers:
                if s in failed:
                    data[s.name].append({"error": failed[s]})
                    continue
                try:
                    v = relay_round(s, sinks[s], sessions, messages, stall)
                except Exception as e:
                    failed[s] = f"{s.name} round {r + 1}: {one_line(e)}"
                    log(f"  relay: {failed[s]}")
                    v = {"error": failed[s]}
                else:
                    log(f"  relay round {r + 1}/{rounds} {s.name}: {brief(v)}")
                data[s.name].append(v)
        for s in servers:
            s.stop()
        for s in servers:
            try:
                v = relay_hold(s, hold)
                log(f"  relay hold {s.name}: {brief(v)}")
            except Exception as e:
                v = {"error": f"{s.name}: {one_line(e)}"}
                log(f"  relay hold: {v['error']}")
            data["hold"][s.name].append(v)
    finally:
        for sink in sinks.values():
            sink.stop()
        for s in servers:
            s.relay_conf = {}
    return data
def bigbox_fill(server, count):
    """`count` one-line messages in bob's new/, named as postling delivers (with S= and W=)."""
    d = Path(server.mail) / "bob"
    discard(d)
    for sub in ("tmp", "new", "cur"):
        (d / sub).mkdir(parents=True)
    body = b"From: <bench@example.org>\nTo: <bob@example.test>\nSubject: bigbox\n\nx\n"
    wire = len(body) + body.count(b"\n")
    for i in range(count):
        fd = os.open(d / "new" / f"{1700000000 + i}.M{i}P1Q{i}.bench,S={len(body)},W={wire}",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, body)
        os.close(fd)
    if server.name == "dovecot":
        sh(["chown", "-R", "mail:mail", str(d)])
    os.sync()  # the fill's writeback must not land inside the measurement


def _bigbox_pop_side(port, count, tx):
    """The POP3 client of `bigbox`, in a process of its own: as a thread it shared the GIL
    with the SMTP loop, whose transactions then waited up to the interpreter's 5 ms switch
    interval (and more) while this one parsed 60,000 DELE replies, with either server."""
    marks = {}
    try:
        c = popclient.Client(port, timeout=600)
        c.command("USER bob")
        marks["t0"] = time.perf_counter()  # CLOCK_MONOTONIC: the same clock in both processes
        c.command("PASS bob-pw")
        marks["t_open"] = time.perf_counter()
        marks["open"] = marks["t_open"] - marks["t0"]
        n = c.stat()
        if n != count:
            raise RuntimeError(f"STAT says {n} messages, {count} expected")
        c.dele_all(n)
        t = marks["t_quit"] = time.perf_counter()
        c.quit()
        marks["quit"] = time.perf_counter() - t
        marks["t1"] = time.perf_counter()
        tx.send(("ok", marks))
    except Exception as e:  # reported by the parent
        tx.send(("error", repr(e)))


def bigbox(pop_server, smtp_server, count):
    """One POP3 client logs in to bob's mailbox of `count` messages, DELEs them all (pipelined)
    and QUITs, while one SMTP session (to alice) loops whole transactions; the transactions that
    completed between the PASS and the QUIT's reply are the figure."""
    bigbox_fill(pop_server, count)
    maildir_clear(smtp_server.mail, "alice")
    loop = SmtpLoop(smtp_server.smtp_port, rcpt="alice@example.test")
    ctx = multiprocessing.get_context("fork")
    rx, tx = ctx.Pipe(duplex=False)
    pop = ctx.Process(target=_bigbox_pop_side, args=(pop_server.pop3_port, count, tx))
    stamps = []
    errors = []
    marks = {}
    try:
        pop.start()
        tx.close()
        while not rx.poll(0):
            loop.transaction()
            stamps.append(time.perf_counter())
            time.sleep(0.001)  # as the side sessions elsewhere: not a load of its own
        status, payload = rx.recv()
        if status == "ok":
            marks = payload
        else:
            errors.append(RuntimeError(f"bigbox POP3 client: {payload}"))
    except EOFError:
        errors.append(RuntimeError("bigbox POP3 client ended without a result"))
    finally:
        pop.join(600)
        loop.close()
    if errors:
        raise errors[0]
    # Transactions that ended inside the POP session (login to QUIT's reply).
    lat = [d for d, end in zip(loop.samples, stamps) if marks["t0"] <= end - d and end <= marks["t1"]]
    # None completed at all: the whole session is how long the one in progress waited.
    lat = lat or [marks["t1"] - marks["t0"]]
    left = maildir_count(pop_server.mail, "bob")
    maildir_clear(smtp_server.mail, "alice")
    phases = {}
    for name, a, b in (("open", "t0", "t_open"), ("dele", "t_open", "t_quit"), ("quit", "t_quit", "t1")):
        during = [d for d, end in zip(loop.samples, stamps) if marks[a] <= end - d and end <= marks[b]]
        if during:
            phases.update({f"{name}_n": len(during), f"{name}_p50": percentile(during, 50) * 1000,
                           f"{name}_p99": percentile(during, 99) * 1000,
                           f"{name}_max": max(during) * 1000})
    return {**phases, "n": len(lat), "p50": percentile(lat, 50) * 1000, "p99": percentile(lat, 99) * 1000,
            "max": max(lat) * 1000, "open_s": marks["open"], "quit_s": marks["quit"],
            "session_s": marks["t1"] - marks["t0"], "left_after_quit": left}


# ---- one-off figures ------------------------------------------------------------------------

def durability(server, messages=100):
    """fsync-family and rename calls per accepted message (strace -f over the server's whole
    process tree, on a short run outside the timed figures), and whether all landed."""
    maildir_clear(server.mail, "alice")
    out = WORK / f"strace-{server.name}.txt"
    args = ["strace", "-f", "-c", "-o", str(out),
            "-e", "trace=fsync,fdatasync,sync_file_range,rename,renameat,renameat2,link,linkat"]
    for pid in server.pids():
        args += ["-p", str(pid)]
    tracer = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    time.sleep(1.5)
    src = smtp_source(server.smtp_port, 5, messages, "alice@example.test")
    src.wait()
    deadline = time.time() + 120
    while maildir_count(server.mail, "alice") < messages and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    calls = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[0][0].isdigit():
            calls[parts[-1]] = int(parts[3])
    syncs = sum(v for k, v in calls.items() if k in ("fsync", "fdatasync", "sync_file_range"))
    renames = sum(v for k, v in calls.items() if k.startswith(("rename", "link")))
    return {"syncs_per_msg": syncs / messages, "renames_per_msg": renames / messages, "calls": calls,
            "delivered": maildir_count(server.mail, "alice"), "messages": messages}


def footprint():
    def installed(pkgs):
        total = 0
        for p in pkgs:
            v = sh(["dpkg-query", "-W", "-f=${Installed-Size}", p], check=False).stdout.strip()
            total += int(v or 0) * 1024
        return total
    stripped = "not stripped" not in sh(["file", "-L", str(BIN)], check=False).stdout
    return {"postling": BIN.stat().st_size, "stripped": stripped,
            "postfix": installed(["postfix"]), "dovecot": installed(["dovecot-core", "dovecot-pop3d"])}


def parsers(quick):
    cmd = ["cargo", "bench", "--quiet", "--bench", "parsers"] + (["--", "--quick"] if quick else [])
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cargo bench failed: {out.stderr[-2000:]}")
    return {"table": [l for l in out.stdout.splitlines() if l.startswith("|")]}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    fs = sh(["findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "-T", str(WORK)], check=False).stdout.strip()
    osr = dict(l.split("=", 1) for l in Path("/etc/os-release").read_text().splitlines() if "=" in l)
    commit = sh(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], check=False).stdout.strip()
    pf = sh("dpkg-query -W -f='${Version}' postfix", check=False).stdout
    dc = sh("dpkg-query -W -f='${Version}' dovecot-pop3d", check=False).stdout
    rustc = sh(["rustc", "--version"], check=False).stdout.strip()
    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "mem_mib": mem,
            "kernel": platform.release(), "os": osr.get("PRETTY_NAME", "?").strip('"'), "fs": fs,
            "postling": commit, "rustc": rustc, "postfix": pf, "dovecot": dc,
            "python": platform.python_version(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]}


# ---- the run --------------------------------------------------------------------------------

def alternate(rounds, servers, measure, label):
    """Runs `measure(server)` for each server in turn, `rounds` times: A B A B ..."""
    samples = {s.name: [] for s in servers}
    for r in range(rounds):
        for s in servers:
            v = measure(s)
            samples[s.name].append(v)
            log(f"  {label} round {r + 1}/{rounds} {s.name}: {brief(v)}")
    return samples


def brief(v):
    return ", ".join(f"{k}={round(x, 3) if isinstance(x, float) else x}" for k, x in v.items()
                     if not isinstance(x, (dict, list)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small numbers and one round, for trying the harness")
    ap.add_argument("--rounds", type=int, help="rounds per figure (default 3, --quick 1)")
    ap.add_argument("--memory-rounds", type=int, default=1,
                    help="rounds of the memory figure (default 1: it is deterministic to about 1%%, and Postfix "
                         "takes minutes to fork 10,000 smtpd processes)")
    ap.add_argument("--messages", type=int, help="messages per SMTP run (default 5000, --quick 500)")
    ap.add_argument("--idle-seconds", type=int, help="idle window (default 60, --quick 10)")
    ap.add_argument("--connections", type=int, nargs=2, metavar=("N1", "N2"),
                    help="idle connection counts (default 1000 10000, --quick 100 1000)")
    ap.add_argument("--tls-seconds", type=int, help="seconds of each handshake flood (default 5, --quick 2)")
    ap.add_argument("--tls-parallel", type=int, default=2, help="client processes in a handshake flood (default 2)")
    ap.add_argument("--tls-hold", type=int, help="idle TLS connections held (default 1000, --quick 100)")
    ap.add_argument("--flood-seconds", type=int, help="seconds of each password flood (default 8, --quick 3)")
    ap.add_argument("--flood-connections", type=int, help="connections of the password flood (default 200, --quick 50)")
    ap.add_argument("--relay-hold", type=int,
                    help="outbound connections held open for the relay figure's memory step (default 50, --quick 10)")
    ap.add_argument("--relay-stall", type=int, default=30,
                    help="seconds without a new message at the sink before a relay round fails (default 30)")
    ap.add_argument("--bigbox-messages", type=int, help="messages in the bigbox mailbox (default 60000, --quick 10000)")
    ap.add_argument("--disk-io", choices=("auto", "uring", "helper", "both"), default="auto",
                    help="postling's disk_io backend (default auto); figures measured with another are "
                         "kept as FIGURE@BACKEND and shown in a table of their own; both: every figure "
                         "with auto, then the backend's own figures again with the helper, in one run")
    ap.add_argument("--only", nargs="+", choices=FIGURES, metavar="FIGURE",
                    help=f"run only these figures ({', '.join(FIGURES)}); the others keep their last results")
    args = ap.parse_args()
    q = args.quick
    args.rounds = args.rounds or (1 if q else 3)
    args.messages = args.messages or (500 if q else 5000)
    args.idle_seconds = args.idle_seconds or (10 if q else 60)
    args.connections = args.connections or ([100, 1000] if q else [1000, 10000])
    args.tls_seconds = args.tls_seconds or (2 if q else 5)
    args.tls_hold = args.tls_hold or (100 if q else 1000)
    args.flood_seconds = args.flood_seconds or (3 if q else 8)
    args.flood_connections = args.flood_connections or (50 if q else 200)
    args.relay_hold = args.relay_hold or (10 if q else 50)
    args.bigbox_messages = args.bigbox_messages or (10000 if q else 60000)
    pop_count, big_size, deferred_count = (200, 8 << 20, 100) if q else (1000, 50 << 20, 1000)
    figures = args.only or FIGURES
    if os.geteuid() != 0:
        sys.exit("bench.py needs root: it runs Postfix and Dovecot (use bench/run)")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    previous = json.loads(RESULTS_JSON.read_text()) if args.only and RESULTS_JSON.exists() else {}
    results = previous.get("figures", {})
    WORK.mkdir(parents=True, exist_ok=True)
    # A trash left by an interrupted run is deleted now, before anything is measured.
    shutil.rmtree(WORK / "trash", ignore_errors=True)
    set_trash(WORK / "trash")
    info = machine()

    def measure(backend, figures):
        """One pass over `figures` with postling on `backend`."""
        run = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rounds": args.rounds,
               "memory_rounds": args.memory_rounds,
               "messages": args.messages, "idle_seconds": args.idle_seconds, "connections": args.connections,
               "pop_count": pop_count, "big_size": big_size, "deferred_count": deferred_count, "quick": q,
               "tls_seconds": args.tls_seconds, "tls_parallel": args.tls_parallel, "tls_hold": args.tls_hold,
               "flood_seconds": args.flood_seconds, "flood_connections": args.flood_connections,
               "relay_sessions": 20, "relay_hold": args.relay_hold, "relay_stall": args.relay_stall,
               "bigbox_messages": args.bigbox_messages, "disk_io": backend}

        def record(name, measure):
            """Runs one figure; an error is logged and recorded, and the run goes on."""
            if name not in figures:
                return
            key = name if backend == "auto" else f"{name}@{backend}"
            log(f"{key}:")
            try:
                results[key] = {"run": run, "data": measure()}
            except (KeyboardInterrupt, Stop):
                raise
            except Exception as e:
                log(f"{key} failed: {e!r}")
                results[key] = {"run": run, "error": repr(e)[:500]}

        record("parsers", lambda: parsers(q))

        guard = EtcPostfixGuard(WORK)
        guard.save()
        pl = Postling(WORK, BIN, (free_port(), free_port()), disk_io=backend)
        pf = Postfix(WORK, free_port(), maxproc=args.connections[1] + 100)
        dc = Dovecot(WORK, free_port())
        started = []
        try:
            needs = set(figures) - {"parsers", "footprint"}
            if needs:
                for s in (pl, pf, dc):
                    s.setup()
                for s in (pl, pf, dc):
                    started.append(s)  # before start(): a half-started server is still stopped
                    s.start()
                for s in (pl, pf):  # warm-up, not measured
                    smtp_load(s, 5, 200)
            smtp = (pl, pf)
            record("durability", lambda: {s.name: durability(s) for s in smtp})
            record("smtp1", lambda: alternate(args.rounds, smtp, lambda s: smtp_load(s, 1, args.messages), "smtp1"))
            record("smtp20", lambda: alternate(args.rounds, smtp,
                                               lambda s: smtp_load(s, 20, args.messages, side=True, ledger=True), "smtp20"))

            def pop3():
                data = alternate(args.rounds, (pl, dc), lambda s: pop3_run(s, pop_count, big_size), "pop3")
                data["client_ceiling"] = pop3_client_ceiling(pop_count, big_size)
                return data
            record("pop3", pop3)
            record("idle", lambda: alternate(args.rounds, smtp, lambda s: idle_window(s, args.idle_seconds), "idle"))

            def memory(s):
                settle(s)
                rss, pss = procstat.memory_kib(s.pids())
                out = {"rss_idle": rss, "pss_idle": pss, "processes_idle": len(s.pids())}
                if s is pf:
                    out["rss_idle_with_dovecot"] = rss + procstat.memory_kib(dc.pids())[0]
                for n in args.connections:
                    h = hold_idle(s, n)
                    out.update({f"{k}_{n}": v for k, v in h.items()})
                return out

            def memory_figure():
                data = alternate(args.memory_rounds, smtp, memory, "memory")
                # Postfix's thousands of smtpd processes from the hold linger (max_idle) and
                # disturbed the figure after this one (with --disk-io both, the helper's
                # password flood: a quiet server's own p99 at 5-23 ms); a restart ends them.
                pf.stop()
                pf.start()
                return data
            record("memory", memory_figure)

            def deferred():
                setup = {s.name: make_deferred(s, deferred_count) for s in smtp}
                log(f"  deferred queues: {setup}")
                data = alternate(args.rounds, smtp, lambda s: idle_window(s, args.idle_seconds), "deferred")
                data["setup"] = setup
                data["after"] = {s.name: dict(zip(("queued", "deferred"), s.queue())) for s in smtp}
                return data
            record("deferred", deferred)
            record("footprint", footprint)

            def flood():
                both = (types.SimpleNamespace(name="postling", pop=pl, smtp=pl),
                        types.SimpleNamespace(name="dovecot", pop=dc, smtp=pf))
                return alternate(args.rounds, both, lambda s: authflood(s.pop, s.smtp, args.flood_seconds,
                                                                         args.flood_connections), "authflood")
            record("authflood", flood)

            def big():
                both = (types.SimpleNamespace(name="postling", pop=pl, smtp=pl),
                        types.SimpleNamespace(name="dovecot", pop=dc, smtp=pf))
                return alternate(args.rounds, both, lambda s: bigbox(s.pop, s.smtp, args.bigbox_messages), "bigbox")
            record("bigbox", big)

            def tls():
                # The servers are set up again with TLS (an ECDSA certificate first), so that the
                # other figures measure them without it.
                certs = make_certs(WORK / "tls")
                for s in (pl, pf, dc):
                    s.stop()
                pl.smtps_port, pf.smtps_port, dc.pop3s_port = free_port(), free_port(), free_port()
                for s in (pl, pf, dc):
                    s.tls = certs["ecdsa"][:2]
                    s.setup()
                    s.start()
                ports = {pl: (pl.smtps_port, b"220", pl.smtp_port), pf: (pf.smtps_port, b"220", pf.smtp_port),
                         dc: (dc.pop3s_port, b"+OK", None)}
                data = {"probe": {}}
                # Memory first, while Postfix has no smtpd process of its smtps service yet.
                data["hold"] = {s.name: [hold_tls(s, port, greet, args.tls_hold)] for s, (port, greet, _) in ports.items()}
                for s in ports:
                    log(f"  tls hold {s.name}: {brief(data['hold'][s.name][0])}")
                for kind in ("ecdsa", "rsa"):
                    cert, key, der = certs[kind]
                    for s, (port, greet, _) in ports.items():
                        if s.tls[0] != cert:
                            s.use_cert(cert, key)
                        deadline = time.time() + 30
                        while True:
                            probe = tls_probe(port, greet)
                            if probe[0] == der:
                                break
                            if time.time() > deadline:
                                raise RuntimeError(f"{s.name} still presents the old certificate")
                            time.sleep(0.2)
                        data["probe"][f"{s.name}_{kind}"] = list(probe[1:])
                    data[kind] = alternate(args.rounds, list(ports), lambda s: tls_flood(
                        s, ports[s][0], ports[s][1], args.tls_seconds, args.tls_parallel, ports[s][2]), f"tls {kind}")
                return data
            record("tls", tls)
            # Last: it sets postling and Postfix up again as relays (and leaves them stopped).
            record("relay", lambda: relay_figure(smtp, args.rounds, 20, args.messages, args.relay_hold,
                                                 args.relay_stall))
        except KeyboardInterrupt:
            log("interrupted: stopping the servers")
            raise
        finally:
            # A second Ctrl-C must not cut the cleanup short.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
            for s in reversed(started):
                try:
                    if s is pf:
                        pf.purge_queue()
                    s.stop()
                except Exception as e:  # keep stopping the others
                    log(f"stopping {s.name}: {e}")
            if guard.restore():
                log("/etc/postfix had changed during the run and was restored")
            # Into the trash, deleted after the last pass: a mass deletion now would slow the
            # next pass's file creations (see the note on the harness's deletions).
            for s in (pl, pf, dc):
                for sub in ("mail", "spool", "queue"):
                    discard(Path(s.dir) / sub)

    try:
        if args.disk_io == "both":
            measure("auto", figures)
            # The figures that depend on the backend, again with the helper process.
            again = [f for f in figures if f in BACKEND_FIGURES]
            if again:
                log(f"again with disk_io = helper: {' '.join(again)}")
                measure("helper", again)
        else:
            measure(args.disk_io, figures)
    finally:
        empty_trash()
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    out = {"machine": info, "figures": results}
    RESULTS_JSON.write_text(json.dumps(out, indent=1, default=str) + "\n")
    import report
    RESULTS_MD.write_text(report.render(out))
    print(RESULTS_MD.read_text())


if __name__ == "__main__":
    try:
        main()
    except (KeyboardInterrupt, Stop) as e:
        sys.exit(f"bench: stopped ({e or 'Ctrl-C'}); every server it started was stopped")
