"""Torture suite, shared part: helpers the test_torture_*.py files use (an SMTP load generator,
the queue and Maildir checks, memory and CPU readings), and the security tests: no open relay
through any address trick, no path outside the Maildir root, VRFY/EXPN that tell nothing, and
POP3/POP2 password guessing throttled.

Every test prints the figures it measured (run pytest with -s to see them) and asserts generous
bounds; exact numbers belong in bench/. Tests that need root (mounts) skip cleanly without it.
"""
import base64
import collections
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import BIN, recv_line

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (mounts a small filesystem)")

# Who gets a copy of a message sent to each local recipient (conftest's users and aliases).
USERS_OF = {
    "alice@example.test": {"alice"},
    "bob@example.test": {"bob"},
    "carol@example.test": {"carol"},
    "team@example.test": {"alice", "bob"},
}
RECIPIENT_SETS = [
    ["alice@example.test"],
    ["bob@example.test"],
    ["team@example.test"],
    ["alice@example.test", "bob@example.test"],
    ["alice@example.test", "team@example.test"],
    ["carol@example.test", "team@example.test"],
]

QUEUED_RE = re.compile(rb"^250 2\.0\.0 Ok: queued as (\S+)\r\n$")
# The Received header postling writes: "by HOST (postling) with ESMTP id ID" then ";" or "for".
RECEIVED_ID_RE = re.compile(rb"\(postling\) with \S+ id ([0-9A-Z]+)")


# ---- process readings ------------------------------------------------------------------------

def rss_kib(server):
    """The server's anonymous resident memory in KiB (RssAnon: heap, buffers, stacks), what
    connections cost. Not VmRSS: that also counts the binary's code pages, which the server
    unmaps whenever it comes to rest and maps again as the next burst runs (`daemon::pages`),
    so an idle baseline would be smaller than the code alone that a burst brings back."""
    return int(server.status("RssAnon").split()[0])


def raise_nofile(wanted):
    """Raises this process's soft descriptor limit to at least `wanted` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class RssWatch:
    """Samples the server's RSS in a thread while a test runs; `peak` is the largest seen."""

    def __init__(self, server, every=0.05):
        self.server, self.every = server, every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_kib(self.server))
                self.samples += 1
            except (OSError, TypeError, AttributeError):
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---- SMTP by hand --------------------------------------------------------------------------

def read_reply(sock, timeout=5):
    """One whole SMTP reply (continuation lines joined); b"" when the connection ended."""
    lines = []
    while True:
        line = recv_line(sock, timeout)
        if not line.endswith(b"\n"):
            return b"".join(lines) + line
        lines.append(line)
        if line[3:4] != b"-":
            return b"".join(lines)


def command(sock, line, timeout=5):
    sock.sendall(line + b"\r\n")
    return read_reply(sock, timeout)


def message_body(token, size=300):
    filler = (b"line of the message body " * 4)[:98] + b"\r\n"
    lines = filler * max(1, size // 100)
    return (b"Subject: torture " + token.encode() + b"\r\nX-Torture: " + token.encode()
            + b"\r\n\r\n" + lines + b"end of " + token.encode() + b"\r\n")


def send_message(sock, sender, rcpts, body, timeout=10):
    """MAIL, RCPT..., DATA on an open session; returns (reply to the end of data, accepted
    recipients). A refusal before the data returns that reply and RSETs."""
    r = command(sock, b"MAIL FROM:<" + sender.encode() + b">", timeout)
    if not r.startswith(b"250"):
        return r, []
    accepted = []
    for rcpt in rcpts:
        r = command(sock, b"RCPT TO:<" + rcpt.encode() + b">", timeout)
        if r.startswith(b"250"):
            accepted.append(rcpt)
    if not accepted:
        command(sock, b"RSET", timeout)
        return r, []
    r = command(sock, b"DATA", timeout)
    if not r.startswith(b"354"):
        return r, []
    sock.sendall(body + b".\r\n")
    return read_reply(sock, timeout), accepted


def queued_id(reply):
    m = QUEUED_RE.match(reply)
    return m.group(1).decode() if m else None


def normal_client(server, timeout=1.0):
    """A well-behaved client: greeting, EHLO, one message to alice, QUIT. Returns the seconds it
    took and the queue id; raises if any step fails or the whole exceeds `timeout`."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=timeout) as c:
        assert recv_line(c, timeout).startswith(b"220"), "no greeting"
        assert command(c, b"EHLO normal.example.org", timeout).startswith(b"250")
        reply, _ = send_message(c, "normal@example.org", ["alice@example.test"],
                                message_body("normal"), timeout)
        qid = queued_id(reply)
        assert qid, reply
        assert command(c, b"QUIT", timeout).startswith(b"221")
    took = time.monotonic() - t0
    assert took < timeout, f"the normal client took {took:.2f}s"
    return took, qid


class SmtpLoad:
    """`sessions` threads, each sending messages over plain sockets to random local recipient
    sets, several messages per session. Records every `250 ... queued as ID` with the users
    that must get it, and counts what got no promise: refused (a 4xx/5xx reply or no
    connection) and cut (the connection died after the end of data, before any reply)."""

    def __init__(self, server, sessions=20, per_session=4, sizes=(200, 4000), seed=1,
                 recipient_sets=RECIPIENT_SETS):
        self.server = server
        self.recipient_sets = recipient_sets
        self.sessions, self.per_session, self.sizes = sessions, per_session, sizes
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.accepted = {}  # queue id -> (set of users, token)
        self.counts = collections.Counter()
        self.replies = collections.Counter()  # first three octets of every refusal
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(sessions)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.finish()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def _worker(self, n):
        rng = random.Random(n * 7919 + self.rng.random())
        k = 0
        while not self.stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", self.server.smtp_port), timeout=10)
            except OSError:
                self._count("no connection")
                self.stop.wait(0.02)
                continue
            try:
                greeting = recv_line(sock, 10)
                if not greeting.startswith(b"220"):
                    self._count("refused at greeting")
                    continue
                if not command(sock, b"EHLO load%d.example.org" % n).startswith(b"250"):
                    self._count("cut")
                    continue
                for _ in range(self.per_session):
                    if self.stop.is_set():
                        break
                    k += 1
                    token = f"w{n}-{k}"
                    rcpts = rng.choice(self.recipient_sets)
                    body = message_body(token, rng.randint(*self.sizes))
                    self._count("sent")
                    try:
                        reply, accepted = send_message(sock, f"load{n}@example.org", rcpts, body)
                    except OSError:
                        self._count("cut")
                        break
                    qid = queued_id(reply)
                    if qid:
                        users = set().union(*(USERS_OF[r] for r in accepted))
                        with self.lock:
                            assert qid not in self.accepted, f"queue id {qid} given twice"
                            self.accepted[qid] = (users, token)
                            self.counts["accepted"] += 1
                    elif reply == b"":
                        self._count("cut")
                        break
                    else:
                        with self.lock:
                            self.counts["refused"] += 1
                            self.replies[reply[:9]] += 1
                try:
                    command(sock, b"QUIT")
                except OSError:
                    pass
            except OSError:
                self._count("cut")
            finally:
                sock.close()


# ---- queue and Maildirs ----------------------------------------------------------------------

def queue_listing(server):
    r = subprocess.run([str(BIN), "-c", str(server.conf), "-q"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def wait_queue_empty(server, timeout=60, kick=True):
    """Waits until `postling -q` says the queue is empty (SIGUSR2 makes deferred mail due)."""
    deadline = time.time() + timeout
    listing = ""
    while time.time() < deadline:
        listing = queue_listing(server)
        if "empty" in listing.lower():
            return listing
        if kick and server.proc and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGUSR2)
        time.sleep(0.2)
    raise AssertionError(f"queue not empty after {timeout}s:\n{listing}\n{server.log()[-3000:]}")


def maildir_files(server, user):
    root = Path(server.settings["mailbox_dir"]) / user
    files = []
    for sub in ("new", "cur"):
        d = root / sub
        if d.is_dir():
            files += [p for p in d.iterdir() if not p.name.startswith(".")]
    return files


def maildir_copies(server, users=("alice", "bob", "carol")):
    """{user: {queue id: [paths]}} from the Received headers of every delivered message."""
    out = {}
    for u in users:
        copies = collections.defaultdict(list)
        for p in maildir_files(server, u):
            head = p.read_bytes()[:4096]
            m = RECEIVED_ID_RE.search(head)
            assert m, f"{p} has no postling Received header"
            copies[m.group(1).decode()].append(p)
        out[u] = copies
    return out


def check_accepted_delivered(server, accepted, copies):
    """Counts, for every promised (id, users): lost copies, duplicate copies, and copies whose
    body is not the one sent. Returns (lost list, duplicates {(user, id): paths}, damaged)."""
    lost, dups, damaged = [], {}, []
    for qid, (users, token) in accepted.items():
        for u in users:
            paths = copies[u].get(qid, [])
            if not paths:
                lost.append((u, qid))
            elif len(paths) > 1:
                dups[(u, qid)] = paths
            for p in paths:
                if not p.read_bytes().endswith(b"end of " + token.encode() + b"\n"):
                    damaged.append(str(p))
    return lost, dups, damaged


# ---- security: relaying ----------------------------------------------------------------------

RELAY_TRICKS = [
    "user@other.example",
    "user%other.example@example.test",
    "user%other.example@[127.0.0.1]",
    "other.example!user@example.test",
    "other.example!user",
    '"user@other.example"@example.test',
    '"user%other.example"@example.test',
    "@example.test:user@other.example",
    "@other.example:user@example.test",
    "@example.test,@mail.example.test:user@other.example",
    "user@other.example@example.test",
    "user@EXAMPLE.TEST.",
    "user@example.test.other.example",
    "user@other.example.",
    "user@[127.0.0.1]",
    "user@[192.0.2.1]",
    "user@[IPv6:::1]",
    "user@localhost",
    "user@mail.example.test",
    "alice@other.example",
    "alice%other.example@example.test",
    "other.example!alice@example.test",
    '"alice@other.example"@example.test',
    "@other.example:alice@example.test",
]


def relay_dialog(server, rcpts, sender="spammer@other.example"):
    """One session trying each recipient; returns {rcpt: reply} and the DATA outcome."""
    replies = {}
    with server.connect() as c:
        assert recv_line(c).startswith(b"220")
        assert command(c, b"EHLO relay.other.example").startswith(b"250")
        assert command(c, b"MAIL FROM:<" + sender.encode() + b">").startswith(b"250")
        for r in rcpts:
            replies[r] = command(c, b"RCPT TO:<" + r.encode() + b">")
            if replies[r].startswith(b"421"):
                break
        data = None
        if any(v.startswith(b"250") for v in replies.values()):
            data = command(c, b"DATA")
            if data.startswith(b"354"):
                c.sendall(message_body("relay") + b".\r\n")
                data = read_reply(c)
    return replies, data


def test_no_open_relay_through_address_tricks(server_factory):
    # A catch-all makes every local-looking address acceptable, so a trick that the parser
    # took for local would be accepted here: it must still be delivered only locally.
    s = server_factory(retry_min="1s", retry_max="1s")
    (s.dir / "aliases").write_text("postmaster: alice\nteam: alice, bob\n*: carol\n")
    s.start()
    accepted, refused = {}, {}
    # The rejected-recipient budget (20 a session) closes a session, so the tricks are tried
    # a few at a time.
    for i in range(0, len(RELAY_TRICKS), 6):
        replies, data = relay_dialog(s, RELAY_TRICKS[i:i + 6])
        for r, reply in replies.items():
            (accepted if reply.startswith(b"250") else refused)[r] = reply
            assert reply[:1] in (b"2", b"5"), f"{r}: {reply!r}"
        if data is not None:
            assert data.startswith(b"250"), data
    print(f"relay tricks: {len(RELAY_TRICKS)} tried, {len(refused)} refused, "
          f"{len(accepted)} accepted as local: {sorted(accepted)}")
    for r in accepted:
        # Only addresses whose domain (after any route) is ours may be accepted.
        assert re.search(r"@(example\.test|\[127\.0\.0\.1\])$", r, re.I) or r.endswith("@EXAMPLE.TEST."), r
    for r, reply in refused.items():
        assert reply.startswith(b"550") or reply.startswith(b"501") or reply.startswith(b"553"), f"{r}: {reply!r}"
    assert "user@other.example" in refused and "@example.test:user@other.example" in refused
    # Whatever was accepted went into local Maildirs, and nothing waits in the queue for a
    # remote host: postling never relays.
    wait_queue_empty(s, timeout=20)
    assert "not local" not in s.log()
    mail = Path(s.settings["mailbox_dir"])
    assert {p.name for p in mail.iterdir()} <= {"alice", "bob", "carol"}


def test_nmap_finds_no_open_relay(server_factory):
    assert shutil.which("nmap"), "nmap is not installed (scripts/test installs it as root: apt-get install -y nmap)"
    s = server_factory()
    s.start()
    # A services file naming only our ports makes nmap scan just them and run its smtp and
    # pop3 scripts there without slow version probes (--servicedb implies a fast scan).
    services = s.dir / "nmap-services"
    services.write_text(f"smtp\t{s.smtp_port}/tcp\t0.5\npop3\t{s.pop3_port}/tcp\t0.5\n")
    r = subprocess.run(
        ["nmap", "-n", "-Pn", "-vv", "--servicedb", str(services),
         "--script", "smtp-open-relay,smtp-commands,pop3-capabilities",
         "--script-args", "smtp-open-relay.domain=example.test,smtp-open-relay.ip=127.0.0.1,"
         "smtp.domain=scanner.example.org",
         "127.0.0.1"],
        capture_output=True, text=True, timeout=180,
    )
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{s.smtp_port}/tcp open  smtp" in r.stdout, r.stdout
    assert "smtp-open-relay: Server doesn't seem to be an open relay, all tests failed" in r.stdout, r.stdout
    assert "open relay (" not in r.stdout
    assert "PIPELINING" in r.stdout and "USER" in r.stdout
    # The scan was one session of 16 refused relay attempts, ended by QUIT.
    assert "session ended" in s.log()
    assert s.proc.poll() is None
    normal_client(s)


# ---- security: paths -------------------------------------------------------------------------

TRAVERSALS = [
    "../evil@example.test",
    "../../evil@example.test",
    "..@example.test",
    ".@example.test",
    "a/b@example.test",
    "/etc@example.test",
    "alice/../../evil@example.test",
    "alice/..@example.test",
    '"../evil"@example.test',
    '"..\\/evil"@example.test',
    '".\\.\\/evil"@example.test',
    '"a/b"@example.test',
    '"\\.\\."@example.test',
    "..%2fevil@example.test",
    "alice+../../evil@example.test",
    "alice+a/b@example.test",
    "team+../x@example.test",
    ".alice@example.test",
    "alice.@example.test",
    "tmp@example.test",
    "new@example.test",
    "cur@example.test",
]


def tree(root, skip=()):
    """Every path under root (relative), with its size and mtime, skipping the named subtrees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in skip]
        for name in dirnames + filenames:
            if os.path.normpath(os.path.join(rel, name)) in skip:
                continue
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.normpath(os.path.join(rel, name))] = (st.st_size, st.st_mtime_ns)
    return out


def test_local_parts_never_leave_the_maildir_root(server_factory):
    s = server_factory(retry_min="1s", retry_max="1s")
    (s.dir / "aliases").write_text("postmaster: alice\nteam: alice, bob\n*: carol\n")
    # Bait outside the Maildir root: a traversal that worked would create or touch these.
    bait = s.dir / "evil"
    bait.mkdir()
    (bait / "new").mkdir()
    s.start()
    before = tree(s.dir, skip={"mail", "spool", "postling.log"})
    results = {}
    for i in range(0, len(TRAVERSALS), 8):
        replies, data = relay_dialog(s, TRAVERSALS[i:i + 8], sender="x@example.org")
        results.update(replies)
        if data is not None:
            assert data.startswith(b"250"), data
    wait_queue_empty(s, timeout=20)
    after = tree(s.dir, skip={"mail", "spool", "postling.log"})
    assert after == before, f"paths outside the Maildir root changed: {set(after) ^ set(before)}"
    mail = Path(s.settings["mailbox_dir"])
    made = sorted(str(p.relative_to(mail)) for p in mail.rglob("*") if p.is_dir())
    assert set(p.split("/")[0] for p in made) <= {"alice", "bob", "carol"}, made
    for p in mail.rglob("*"):
        assert p.resolve().is_relative_to(mail.resolve()), p
        assert not p.is_symlink(), p
    refused = {r for r, reply in results.items() if not reply.startswith(b"250")}
    print(f"traversal local parts: {len(results)} tried, {len(refused)} refused, "
          f"accepted (delivered to the catch-all): {sorted(set(results) - refused)}")
    for r, reply in results.items():
        if "/" in r or ".." in r.replace("\\", ""):
            assert reply.startswith(b"550 5.1.3") or reply.startswith(b"501"), f"{r}: {reply!r}"
    # Nothing that was accepted landed anywhere but an existing user's Maildir.
    for p in mail.rglob("*"):
        if p.is_file():
            assert p.parent.name in ("new", "cur", "tmp") and p.parent.parent.parent == mail, p


def test_vrfy_and_expn_reveal_nothing(server):
    with server.connect() as c:
        assert recv_line(c).startswith(b"220")
        assert command(c, b"EHLO probe.example.org").startswith(b"250")
        vrfy = {u: command(c, b"VRFY " + u) for u in (b"alice", b"nobody", b"team", b"postmaster",
                                                     b"alice@example.test", b"nobody@example.test", b"<bob>")}
        expn = {u: command(c, b"EXPN " + u) for u in (b"team", b"nosuchlist", b"alice", b"postmaster")}
        help_ = command(c, b"HELP")
    print(f"VRFY replies: {set(vrfy.values())}; EXPN replies: {set(expn.values())}")
    assert len(set(vrfy.values())) == 1, vrfy
    assert len(set(expn.values())) == 1, expn
    for reply in list(vrfy.values()) + list(expn.values()):
        for name in (b"alice", b"bob", b"carol", b"team"):
            assert name not in reply.lower(), reply
    assert help_[:1] == b"2" or help_[:3] == b"502"


def pop3_try(server, user, password, timeout=10):
    """One POP3 USER/PASS attempt; the PASS reply (b"" if the server closed first)."""
    try:
        with server.connect(server.pop3_port, timeout=timeout) as c:
            if not recv_line(c, timeout).startswith(b"+OK"):
                return b"-ERR at greeting"
            c.sendall(b"USER " + user + b"\r\n")
            recv_line(c, timeout)
            c.sendall(b"PASS " + password + b"\r\n")
            return recv_line(c, timeout)
    except (ConnectionResetError, BrokenPipeError):
        return b""


def test_pop_brute_force_from_many_connections_is_throttled(server_factory):
    """Guessing in parallel (one guess per connection, ten connections at a time) from one
    address trips the per-address throttle: then even the right password is refused, over
    POP3 (USER/PASS and AUTH PLAIN) and POP2, while another address is still served."""
    s = server_factory(auth_failure_delay="1s", max_connections_per_ip="64")
    s.pop2_port = __import__("conftest").free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start()
    verdicts = collections.Counter()
    lock = threading.Lock()

    def guess(i):
        reply = pop3_try(s, b"carol", b"guess-%d" % i)
        with lock:
            verdicts[reply[:15]] += 1

    t0 = time.monotonic()
    rounds = 0
    while verdicts[b"-ERR [SYS/TEMP]"] == 0 and rounds < 5:
        threads = [threading.Thread(target=guess, args=(rounds * 10 + i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rounds += 1
    took = time.monotonic() - t0
    guesses = sum(verdicts.values())
    print(f"brute force: {guesses} guesses in {took:.1f}s over {rounds} rounds of 10 parallel "
          f"connections: {dict(verdicts)}")
    assert verdicts[b"-ERR [SYS/TEMP]"] > 0, "the throttle never tripped"
    assert verdicts[b"+OK"] == 0
    # Every refusal waited for the failure delay, so ten parallel guesses took at least 1 s.
    assert took >= rounds * 0.95
    # Throttled: the right password is refused too, by every way of logging in.
    assert pop3_try(s, b"carol", b"carol-pw").startswith(b"-ERR [SYS/TEMP]")
    with s.connect(s.pop3_port) as c:
        recv_line(c)
        c.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0carol\0carol-pw") + b"\r\n")
        assert recv_line(c).startswith(b"-ERR"), "AUTH PLAIN must be throttled too"
    with s.connect(s.pop2_port) as c:
        assert recv_line(c).startswith(b"+")
        c.sendall(b"HELO carol carol-pw\r\n")
        assert recv_line(c).startswith(b"-"), "POP2 HELO must be throttled too"
    # Another address (127.0.0.2 is loopback too) logs in normally: the throttle is per address.
    try:
        c = socket.create_connection(("127.0.0.1", s.pop3_port), timeout=5, source_address=("127.0.0.2", 0))
    except OSError as e:
        pytest.skip(f"cannot bind 127.0.0.2 here: {e}")
    with c:
        recv_line(c)
        c.sendall(b"USER carol\r\nPASS carol-pw\r\n")
        recv_line(c)
        assert recv_line(c).startswith(b"+OK"), "a different address must not be throttled"
