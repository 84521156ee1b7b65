#!/usr/bin/env python3
"""postling side by side with Postfix (SMTP) and Dovecot (POP3) on this machine, in one run.

A benchmark, not a test: it reports numbers into bench/RESULTS.md and never fails on them.
Every figure is measured for postling and the peer in alternation (A B A B ...), several
rounds, and reported as median with min-max. Every process it starts is stopped at the end.
Traffic goes to 127.0.0.1 only.
"""
import argparse
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "work"
BIN = ROOT / "target" / "release" / "postling"

PL_SMTP, PL_POP3 = 22525, 21110
PF_SMTP = 32525
DC_POP3 = 31110
USERS = ["alice", "bob"]


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True, **kw)


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def pids_of(names):
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            comm = (p / "comm").read_text().strip()
        except OSError:
            continue
        if comm in names:
            out.append(int(p.name))
    return out


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_and_switches(pids):
    ticks = switches = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
            for line in open(f"/proc/{pid}/status"):
                if "ctxt_switches" in line:
                    switches += int(line.split()[1])
        except OSError:
            pass
    return ticks, switches


def count_maildir(root, users):
    n = 0
    for u in users:
        for sub in ("new", "cur"):
            d = Path(root) / u / sub
            if d.is_dir():
                n += sum(1 for _ in d.iterdir())
    return n


# ---- servers -------------------------------------------------------------------------------

class Postling:
    name = "postling"

    def __init__(self):
        self.dir = WORK / "postling"
        self.mail = self.dir / "mail"
        self.proc = None

    def setup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        (self.dir / "users").write_text("".join(f"{u}:{{PLAIN}}{u}-pw\n" for u in USERS))
        (self.dir / "aliases").write_text("postmaster: alice\n")
        (self.dir / "postling.conf").write_text(
            f"hostname = bench.example.test\ndomains = example.test\n"
            f"smtp_listen = 127.0.0.1:{PL_SMTP}\npop3_listen = 127.0.0.1:{PL_POP3}\n"
            f"spool_dir = spool\nmailbox_dir = mail\nusers_file = users\naliases_file = aliases\n"
            f"max_connections = 20000\nmax_connections_per_ip = 20000\nlog_file = postling.log\nlog_level = warn\n"
            f"auth_failure_delay = 1s\n"
        )

    def start(self):
        self.proc = subprocess.Popen([str(BIN), "-f", "-c", str(self.dir / "postling.conf")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=lambda: os.setpgrp())
        wait_port(PL_SMTP)

    def pids(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def clear_mail(self):
        shutil.rmtree(self.mail, ignore_errors=True)

    smtp_port = PL_SMTP
    pop3_port = PL_POP3


class Postfix:
    """The system Postfix reconfigured for loopback, virtual Maildir delivery; restored after."""
    name = "postfix"
    smtp_port = PF_SMTP

    def __init__(self):
        self.dir = WORK / "postfix"
        self.mail = self.dir / "mail"
        self.saved = WORK / "postfix-etc-saved"

    def setup(self):
        if not shutil.which("postfix"):
            raise RuntimeError("postfix not installed")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.mail.mkdir(parents=True)
        if not self.saved.exists():
            shutil.copytree("/etc/postfix", self.saved)
        vmaps = self.dir / "vmailbox"
        vmaps.write_text("".join(f"{u}@example.test {u}/\n" for u in USERS))
        sh(["postmap", str(vmaps)])
        shutil.chown(self.mail, "postfix", "postfix")
        settings = {
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4", "mydestination": "",
            "myhostname": "bench.example.test", "virtual_mailbox_domains": "example.test",
            "virtual_mailbox_base": str(self.mail), "virtual_mailbox_maps": f"hash:{vmaps}",
            "virtual_uid_maps": "static:" + str(_uid("postfix")), "virtual_gid_maps": "static:" + str(_gid("postfix")),
            "smtpd_recipient_restrictions": "permit_mynetworks,reject_unauth_destination",
            "mynetworks": "127.0.0.0/8", "default_process_limit": "100", "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0", "maillog_file": str(self.dir / "maillog"),
            "compatibility_level": "3.6", "smtputf8_enable": "no",
        }
        sh(["postconf", "-e"] + [f"{k}={v}" for k, v in settings.items()])
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        master = [l for l in master if not l.startswith("smtp      inet")]
        master.insert(0, f"127.0.0.1:{PF_SMTP} inet n - y - - smtpd")
        Path("/etc/postfix/master.cf").write_text("\n".join(master) + "\n")
        sh("postfix check", check=False)

    def start(self):
        sh("postfix start", check=False)
        wait_port(PF_SMTP)

    def pids(self):
        return pids_of({"master", "qmgr", "pickup", "smtpd", "cleanup", "trivial-rewrite", "virtual", "anvil", "tlsmgr", "postlogd", "proxymap", "scache", "bounce"})

    def stop(self):
        sh("postfix stop", check=False)
        time.sleep(1)

    def restore(self):
        if self.saved.exists():
            shutil.rmtree("/etc/postfix")
            shutil.copytree(self.saved, "/etc/postfix")
            shutil.rmtree(self.saved)

    def clear_mail(self):
        for u in USERS:
            shutil.rmtree(self.mail / u, ignore_errors=True)


class Dovecot:
    name = "dovecot"
    pop3_port = DC_POP3

    def __init__(self):
        self.dir = WORK / "dovecot"
        self.mail = self.dir / "mail"
        self.proc = None

    def setup(self):
        if not shutil.which("dovecot"):
            raise RuntimeError("dovecot not installed")
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "run").mkdir(parents=True)
        self.mail.mkdir()
        (self.dir / "passwd").write_text("".join(f"{u}:{{PLAIN}}{u}-pw\n" for u in USERS))
        (self.dir / "dovecot.conf").write_text(f"""
base_dir = {self.dir}/run
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {self.dir}/dovecot.log
passdb {{
  driver = passwd-file
  args = {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={self.mail}/%u
}}
mail_location = maildir:{self.mail}/%u
service pop3-login {{
  inet_listener pop3 {{
    port = {DC_POP3}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
}}
first_valid_uid = 1
""")

    def start(self):
        sh(["dovecot", "-c", str(self.dir / "dovecot.conf")])
        wait_port(DC_POP3)

    def pids(self):
        return pids_of({"dovecot", "pop3-login", "pop3", "auth", "config", "log", "anvil"})

    def stop(self):
        sh(["doveadm", "-c", str(self.dir / "dovecot.conf"), "stop"], check=False)
        time.sleep(0.5)

    def clear_mail(self):
        shutil.rmtree(self.mail, ignore_errors=True)
        self.mail.mkdir()
        shutil.chown(self.mail, "mail", "mail")


def _uid(user):
    import pwd
    return pwd.getpwnam(user).pw_uid


def _gid(group):
    import grp
    return grp.getgrnam(group).gr_gid


# ---- figures -------------------------------------------------------------------------------

def smtp_load(server, sessions, messages, size=4096, side_latency=False):
    """smtp-source load; returns (msg/s, seconds until all are in the Maildirs, NOOP p50, p99)."""
    server.clear_mail()
    lat = []
    side = None
    if side_latency:
        side = socket.create_connection(("127.0.0.1", server.smtp_port))
        side.recv(1000)
        side.sendall(b"EHLO side\r\n")
        time.sleep(0.1)
        side.recv(1000)
    t0 = time.time()
    src = subprocess.Popen(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                            "-f", "bench@example.org", "-t", "alice@example.test", f"127.0.0.1:{server.smtp_port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while src.poll() is None:
        if side:
            a = time.perf_counter()
            side.sendall(b"NOOP\r\n")
            buf = b""
            while not buf.endswith(b"\n"):
                buf += side.recv(100)
            lat.append(time.perf_counter() - a)
            time.sleep(0.005)
        else:
            time.sleep(0.01)
    accepted = time.time() - t0
    err = src.stderr.read().decode(errors="replace")
    deadline = time.time() + 300
    while count_maildir(server.mail, ["alice"]) < messages and time.time() < deadline:
        time.sleep(0.05)
    delivered = time.time() - t0
    got = count_maildir(server.mail, ["alice"])
    if side:
        side.close()
    if got < messages:
        print(f"  {server.name}: only {got}/{messages} delivered; smtp-source said: {err[:300]}", file=sys.stderr)
    p50 = statistics.median(lat) * 1000 if lat else None
    p99 = sorted(lat)[int(len(lat) * 0.99) - 1] * 1000 if len(lat) >= 100 else None
    return messages / accepted, delivered, p50, p99


def idle_connections(server, n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", server.smtp_port))
        except BlockingIOError:
            pass
        socks.append(s)
    greeted = 0
    deadline = time.time() + 60
    pending = set(range(n))
    import select
    while pending and time.time() < deadline:
        fds = {socks[i].fileno(): i for i in list(pending)[:1000]}
        r, _, _ = select.select(list(fds), [], [], 0.5)
        for fd in r:
            i = fds[fd]
            try:
                if socks[i].recv(1000).startswith(b"220"):
                    greeted += 1
            except OSError:
                pass
            pending.discard(i)
    time.sleep(1)
    rss = rss_kib(server.pids())
    for s in socks:
        s.close()
    return greeted, rss


def idle_cost(server, seconds):
    pids = server.pids()
    c0, s0 = cpu_and_switches(pids)
    time.sleep(seconds)
    c1, s1 = cpu_and_switches(pids)
    return c1 - c0, s1 - s0


def pop3_fill(server, count, size):
    server.clear_mail()
    d = Path(server.mail) / "bob"
    for sub in ("tmp", "new", "cur"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    line = b"x" * 75 + b"\n"
    body = b"Subject: bench\n\n" + line * (size // len(line))
    for i in range(count):
        (d / "new" / f"{1700000000 + i}.M{i}P1Q{i}.bench").write_bytes(body)
    if server.name == "dovecot":
        sh(["chown", "-R", "mail:mail", str(server.mail)])


def pop3_retr_dele(server, count):
    import poplib
    t0 = time.time()
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=60)
    p.user("bob")
    p.pass_("bob-pw")
    n, _ = p.stat()
    total = 0
    for i in range(1, n + 1):
        _, lines, octets = p.retr(i)
        total += octets
        p.dele(i)
    p.quit()
    took = time.time() - t0
    return n / took, total / took / 1e6


def fmt(values, unit="", digits=0):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    return f"{med:.{digits}f}{unit} ({min(vals):.{digits}f}–{max(vals):.{digits}f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="small numbers, for trying the harness")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.messages, args.idle_seconds = 1, 500, 5
    WORK.mkdir(parents=True, exist_ok=True)
    pl, pf, dc = Postling(), Postfix(), Dovecot()
    rows = []
    started = []
    try:
        for s in (pl, pf, dc):
            s.setup()
        for s in (pl, pf, dc):
            s.start()
            started.append(s)
        res = {}
        def add(key, server, value):
            res.setdefault((key, server.name), []).append(value)

        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for server in (pl, pf):
                for sessions in (1, 20):
                    rate, until, p50, p99 = smtp_load(server, sessions, args.messages, side_latency=(sessions == 20))
                    add(f"smtp{sessions}_rate", server, rate)
                    add(f"smtp{sessions}_until", server, until)
                    if sessions == 20:
                        add("noop_p50", server, p50)
                        add("noop_p99", server, p99)
                    print(f"  {server.name} {sessions} sessions: {rate:.0f} msg/s, all delivered after {until:.1f}s, "
                          f"NOOP p50/p99 {p50 and round(p50, 2)}/{p99 and round(p99, 2)} ms", file=sys.stderr)
            for server in (pl, dc):
                pop3_fill(server, 1000, 4096)
                rate, mbs = pop3_retr_dele(server, 1000)
                add("pop3_rate", server, rate)
                pop3_fill(server, 1, 50 * 1024 * 1024)
                _, mbs = pop3_retr_dele(server, 1)
                add("pop3_big", server, mbs)
                print(f"  {server.name} POP3: {rate:.0f} RETR+DELE/s; 50 MiB at {mbs:.0f} MB/s", file=sys.stderr)
        for server in (pl, pf):
            server.clear_mail()
            time.sleep(2)
            add("rss_idle", server, rss_kib(server.pids()))
            for n in (1000, 10000):
                greeted, rss = idle_connections(server, n)
                add(f"rss_{n}", server, rss)
                add(f"greeted_{n}", server, greeted)
                print(f"  {server.name}: {greeted}/{n} idle connections greeted, RSS {rss} KiB", file=sys.stderr)
            time.sleep(2)
            ticks, switches = idle_cost(server, args.idle_seconds)
            add("idle_ticks", server, ticks)
            add("idle_switches", server, switches)
        pl_size = BIN.stat().st_size
        pf_size = int(sh("dpkg-query -W -f='${Installed-Size}' postfix").stdout or 0) * 1024
        dc_size = sum(int(sh(f"dpkg-query -W -f='${{Installed-Size}}' {p}").stdout or 0) for p in ("dovecot-core", "dovecot-pop3d")) * 1024
    finally:
        for s in started:
            s.stop()
        pf.restore()

    def cell(key, name, unit="", digits=0):
        return fmt(res.get((key, name), []), unit, digits)

    machine = f"{platform.node()}: {os.cpu_count()} CPUs, {platform.machine()}, kernel {platform.release()}"
    lines = [
        "# postling benchmark results", "",
        f"Machine: {machine}. Rounds: {args.rounds} (median, min–max). Messages per run: {args.messages} × 4 KiB.",
        f"Generated by `bench/run` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
        "| figure | postling | peer |", "| --- | --- | --- |",
        f"| SMTP accept, 1 session (msg/s) | {cell('smtp1_rate', 'postling')} | Postfix {cell('smtp1_rate', 'postfix')} |",
        f"| SMTP accept, 20 sessions (msg/s) | {cell('smtp20_rate', 'postling')} | Postfix {cell('smtp20_rate', 'postfix')} |",
        f"| all in Maildirs after, 20 sessions (s) | {cell('smtp20_until', 'postling', '', 1)} | Postfix {cell('smtp20_until', 'postfix', '', 1)} |",
        f"| NOOP on a side session during the 20-session load, p50 (ms) | {cell('noop_p50', 'postling', '', 2)} | Postfix {cell('noop_p50', 'postfix', '', 2)} |",
        f"| same, p99 (ms) | {cell('noop_p99', 'postling', '', 2)} | Postfix {cell('noop_p99', 'postfix', '', 2)} |",
        f"| RSS idle (KiB, all processes) | {cell('rss_idle', 'postling')} | Postfix {cell('rss_idle', 'postfix')} |",
        f"| RSS with 1,000 idle SMTP connections (KiB) | {cell('rss_1000', 'postling')} | Postfix {cell('rss_1000', 'postfix')} |",
        f"| RSS with 10,000 idle SMTP connections (KiB) | {cell('rss_10000', 'postling')} (greeted {cell('greeted_10000', 'postling')}) | Postfix {cell('rss_10000', 'postfix')} (greeted {cell('greeted_10000', 'postfix')}) |",
        f"| CPU ticks over {args.idle_seconds}s idle | {cell('idle_ticks', 'postling')} | Postfix {cell('idle_ticks', 'postfix')} |",
        f"| context switches over {args.idle_seconds}s idle | {cell('idle_switches', 'postling')} | Postfix {cell('idle_switches', 'postfix')} |",
        f"| POP3 RETR+DELE of 1,000 × 4 KiB (msg/s) | {cell('pop3_rate', 'postling')} | Dovecot {cell('pop3_rate', 'dovecot')} |",
        f"| POP3 RETR of one 50 MiB message (MB/s) | {cell('pop3_big', 'postling')} | Dovecot {cell('pop3_big', 'dovecot')} |",
        f"| footprint (bytes) | binary {pl_size:,} | Postfix package {pf_size:,}; Dovecot packages {dc_size:,} |",
        "",
    ]
    out = ROOT / "bench" / "RESULTS.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
