"""The `sendmail` command and the daemon's maildrop pickup, with the real binary.

Submissions run as an unprivileged user (`setpriv --reuid=65534 ...`, i.e. nobody) through a
`sendmail` symlink to the binary, the way /usr/sbin/sendmail is installed. Every test waits for
an event (a Maildir file, a log line, a process exit), never for a fixed time.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, Server

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (setpriv to another user)")
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")

EX_USAGE, EX_DATAERR, EX_NOUSER = 64, 65, 67
EX_TEMPFAIL, EX_NOPERM, EX_CONFIG = 75, 77, 78


def wait_for(cond, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not met after {timeout}s")


@pytest.fixture
def box():
    """A Server in a directory every user may traverse (nobody must reach spool/maildrop),
    with `sendmail` and `mailq` symlinks to the binary beside it."""
    assert shutil.which("setpriv"), "setpriv is not installed (scripts/test installs util-linux)"
    base = Path(tempfile.mkdtemp(prefix="postling-sendmail-"))
    os.chmod(base, 0o711)
    servers = []

    def make(**settings):
        sub = base / f"s{len(servers)}"
        sub.mkdir()
        os.chmod(sub, 0o711)
        settings.setdefault("pid_file", str(sub / "postling.pid"))
        s = Server(sub, **settings)
        for name in ("sendmail", "mailq"):
            (sub / name).symlink_to(BIN)
        for f in (s.conf, sub / "users", sub / "aliases"):
            os.chmod(f, 0o644)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop(signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def sendmail(s, *args, data=b"", as_nobody=True, name="sendmail", env=None):
    prefix = AS_NOBODY if as_nobody else ()
    return subprocess.run(
        [*prefix, str(s.dir / name), "-C", str(s.conf), *args],
        input=data, capture_output=True, timeout=30, env=env,
    )


def mail_files(s, user):
    d = s.dir / "mail" / user / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def drop_files(s):
    d = s.dir / "spool" / "maildrop"
    return sorted(p.name for p in d.iterdir() if p.name != "bad")


def queue_files(s):
    return sorted((s.dir / "spool" / "queue").iterdir())


def wait_mail(s, user, n=1, timeout=10):
    wait_for(lambda: len(mail_files(s, user)) >= n, timeout, what=f"{n} message(s) for {user}")
    return [p.read_bytes() for p in mail_files(s, user)]


MESSAGE = (b"To: alice, Bob <bob@example.test>\n"
           b"Cc: undisclosed-recipients:;\n"
           b"Bcc: carol@example.test\n"
           b"Subject: from cron\n"
           b"\n"
           b"line one\n")


@needs_root
def test_sendmail_t_from_nobody_is_delivered_at_once_without_its_bcc(box):
    s = box().start()
    r = sendmail(s, "-t", "-oi", "-FCron Daemon", "-odi", data=MESSAGE)
    assert r.returncode == 0, r.stderr
    assert b"note: -odi ignored" in r.stderr
    for user in ("alice", "bob", "carol"):
        [msg] = wait_mail(s, user)
        # Maildir copies have LF line endings (see doc/delivery.md).
        head, _, body = msg.partition(b"\n\n")
        assert body == b"line one\n"
        stored = head.split(b"\nReceived: ", 1)[1]  # after Return-Path and Delivered-To
        assert b"Bcc" not in stored and b"carol@" not in stored, head
        assert b"Received: from local user nobody (uid 65534)\n\tby mail.example.test (postling) with local id " in head
        assert b"From: Cron Daemon <nobody@example.test>\n" in head
        assert b"\nDate: " in head and b"\nMessage-ID: <" in head
        assert b"Return-Path: <nobody@example.test>" in head
    wait_for(lambda: drop_files(s) == [] and queue_files(s) == [], what="drop file and queue empty")
    assert "from=<nobody@example.test>" in s.log() and "nrcpt=3" in s.log()
    st = (s.dir / "spool" / "maildrop").stat()
    assert st.st_mode & 0o7777 == 0o1733
    # nobody may write into maildrop/ but not list it.
    r = subprocess.run([*AS_NOBODY, "ls", str(s.dir / "spool" / "maildrop")], capture_output=True)
    assert r.returncode != 0


@needs_root
def test_with_the_daemon_stopped_the_drop_file_waits_and_is_sent_at_start(box):
    s = box().start()  # creates spool/maildrop
    s.stop()
    r = sendmail(s, "alice", data=b"Subject: while stopped\n\nwaiting\n")
    assert r.returncode == 0, r.stderr
    assert len(drop_files(s)) == 1
    assert mail_files(s, "alice") == []
    s.start()
    [msg] = wait_mail(s, "alice")
    assert b"Subject: while stopped\n" in msg and msg.endswith(b"\n\nwaiting\n")
    wait_for(lambda: drop_files(s) == [], what="drop file removed")


@needs_root
def test_mailq_and_bp_list_the_queue(box):
    s = box().start()
    r = sendmail(s, "someone@elsewhere.test", data=b"Subject: away\n\nx\n")
    assert r.returncode == 0, r.stderr
    # Waits in the queue: its domain cannot be looked up (nothing answers DNS in the tests).
    s.wait_log("status=deferred (4.4.3 DNS lookup of the MX of elsewhere.test failed", timeout=30)
    outs = [
        sendmail(s, as_nobody=False, name="mailq"),
        sendmail(s, "-bp", as_nobody=False),
        subprocess.run([str(BIN), "-c", str(s.conf), "sendmail", "-bp"], capture_output=True),
        subprocess.run([str(BIN), "sendmail", "-C", str(s.conf), "-bp"], capture_output=True),
    ]
    for r in outs:
        assert r.returncode == 0, r.stderr
        text = r.stdout.decode()
        assert "nobody@example.test someone@elsewhere.test" in text, text
        assert text.rstrip().endswith("1 message in queue"), text
    # -q asks the running daemon for a queue run (SIGUSR2 via its pid file).
    r = sendmail(s, "-q", as_nobody=False)
    assert r.returncode == 0, r.stderr
    s.wait_log("queue run requested")
    # nobody may not signal a daemon running as root.
    assert sendmail(s, "-q").returncode == EX_NOPERM
    s.stop()
    r = sendmail(s, "-q", as_nobody=False)
    assert r.returncode == EX_TEMPFAIL and b"not running" in r.stderr


@needs_root
def test_bad_input_exits_with_sysexits_and_queues_nothing(box):
    s = box().start()
    cases = [
        (("-t",), b"To: not an address@@x\n\nx\n", EX_NOUSER),
        (("a b@example.test",), b"x\n", EX_NOUSER),
        ((), b"Subject: no recipients\n\nx\n", EX_USAGE),
        (("-t",), b"Subject: none in the header either\n\nx\n", EX_USAGE),
        (("-Z", "alice"), b"x\n", EX_USAGE),
        (("-f",), b"", EX_USAGE),
        (("alice",), b"Subject: a NUL\0 in the header\n\nx\n", EX_DATAERR),
    ]
    for args, data, status in cases:
        r = sendmail(s, *args, data=data)
        assert r.returncode == status, (args, r.returncode, r.stderr)
        assert r.stderr.startswith(b"postling sendmail: "), r.stderr
    bad_conf = s.dir / "bad.conf"
    bad_conf.write_text("no_such_key = 1\n")
    os.chmod(bad_conf, 0o644)
    r = subprocess.run([*AS_NOBODY, str(s.dir / "sendmail"), "-C", str(bad_conf), "alice"],
                       input=b"x\n", capture_output=True)
    assert r.returncode == EX_CONFIG, r.stderr
    # A maildrop nobody may not write into: EX_NOPERM, and no file left behind.
    md = s.dir / "spool" / "maildrop"
    os.chmod(md, 0o1700)
    try:
        r = sendmail(s, "alice", data=b"x\n")
        assert r.returncode == EX_NOPERM, r.stderr
        assert b"cannot write into" in r.stderr
    finally:
        os.chmod(md, 0o1733)
    assert drop_files(s) == [] and queue_files(s) == []
    assert not (s.dir / "mail" / "alice").exists()


@needs_root
def test_a_dot_line_ends_input_unless_oi(box):
    s = box().start()
    data = b"Subject: dots\n\nbefore\n.\nafter\n"
    assert sendmail(s, "alice", data=data).returncode == 0
    [msg] = wait_mail(s, "alice")
    assert msg.endswith(b"\n\nbefore\n"), msg
    assert sendmail(s, "-oi", "alice", data=data).returncode == 0
    assert sendmail(s, "-i", "alice", data=data).returncode == 0
    msgs = wait_mail(s, "alice", 3)
    assert sum(m.endswith(b"\n\nbefore\n.\nafter\n") for m in msgs) == 2


@needs_root
def test_a_message_over_max_message_size_is_refused_with_ex_dataerr(box):
    s = box(max_message_size="10000").start()
    r = sendmail(s, "alice", data=b"Subject: big\n\n" + b"x" * 80 + b"\n" * 200 + b"y\n" * 5000)
    assert r.returncode == EX_DATAERR, r.stderr
    assert b"too large" in r.stderr
    # Just under the bound, with the added header fields, still passes.
    r = sendmail(s, "alice", data=b"Subject: ok\n\n" + b"z" * 9000 + b"\n")
    assert r.returncode == 0, r.stderr
    [msg] = wait_mail(s, "alice")
    assert b"Subject: ok" in msg
    assert drop_files(s) == []


@needs_root
def test_kill9_between_commit_and_unlink_delivers_exactly_once(box):
    s = box()
    # The hook makes the daemon SIGKILL itself right after the pickup's commit, before the drop
    # file's unlink.
    s.start(prefix=("env", "POSTLING_TEST_ABORT_AFTER_PICKUP_COMMIT=1"))
    r = sendmail(s, "alice", data=b"Subject: once\n\nexactly once\n")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: s.proc.poll() is not None, what="the daemon's kill -9")
    assert s.proc.returncode == -signal.SIGKILL
    assert len(drop_files(s)) == 1, "the drop file is still there"
    assert len(queue_files(s)) == 1, "and its queue entry too"
    assert mail_files(s, "alice") == []
    s.start()
    msgs = wait_mail(s, "alice")
    assert len(msgs) == 1, f"delivered {len(msgs)} times"
    assert msgs[0].endswith(b"\n\nexactly once\n")
    wait_for(lambda: queue_files(s) == [] and drop_files(s) == [], what="queue and maildrop empty")
    assert "was already queued" in s.log()
    # The restart's own queue run is done; a second copy would have been written by now.
    s.wait_log(": removed\n")
    assert len(mail_files(s, "alice")) == 1


@needs_root
def test_envelope_sender_rules(box):
    s = box().start()
    r = sendmail(s, "-f", "root@example.test", "alice", data=b"Subject: forged\n\nx\n")
    assert r.returncode == 0
    assert b"note: only root and the daemon's user may set the envelope sender" in r.stderr
    [msg] = wait_mail(s, "alice")
    assert msg.startswith(b"Return-Path: <nobody@example.test>")
    r = sendmail(s, "-f", "boss@elsewhere.test", "alice", data=b"Subject: root may\n\nx\n",
                 as_nobody=False)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    msgs = wait_mail(s, "alice", 2)
    assert any(m.startswith(b"Return-Path: <boss@elsewhere.test>") for m in msgs)


@needs_root
def test_an_invalid_drop_file_is_moved_to_bad_with_a_log_line(box):
    s = box().start()
    md = s.dir / "spool" / "maildrop"
    name = "0123456789abcdef0123456789abcdef"
    # nobody hand-writes a drop file claiming root's uid and another sender.
    text = (b"postling-drop 1\nuid 0\narrival 1.000000000\nsender boss@example.test\n"
            b"rcpt alice@example.test\n\nFrom: boss\r\n\r\nx\r\n")
    subprocess.run([*AS_NOBODY, "sh", "-c", f"cat > {md}/{name}.tmp && mv {md}/{name}.tmp {md}/{name}"],
                   input=text, check=True)
    s.wait_log(f"maildrop/{name} refused: the envelope says uid 0 but the file belongs to uid 65534")
    assert (md / "bad" / name).exists()
    assert drop_files(s) == [] and queue_files(s) == []


@needs_root
def test_daemon_running_as_nobody_picks_up_mail_from_root(box):
    s = box(user="nobody")
    for d in ("spool", "mail"):
        (s.dir / d).mkdir(mode=0o700)
        os.chown(s.dir / d, 65534, 65534)
    s.start()
    r = sendmail(s, "-t", data=MESSAGE, as_nobody=False)
    assert r.returncode == 0, r.stderr
    [msg] = wait_mail(s, "carol")
    assert b"Received: from local user root (uid 0)" in msg
    r = sendmail(s, "alice", data=b"Subject: from nobody\n\nx\n")
    assert r.returncode == 0, r.stderr
    wait_mail(s, "alice", 2)


@needs_root
def test_after_a_pickup_the_daemon_is_idle_again(box):
    """The inotify descriptor is drained, never polled: no wake-ups once the mail is out."""
    s = box().start()
    assert sendmail(s, "alice", data=b"Subject: idle\n\nx\n").returncode == 0
    wait_mail(s, "alice")
    s.wait_log(": removed\n")
    # Settled: the turn that finished the delivery is over once the count stops moving.
    last = [None]

    def settled():
        now = int(s.status("voluntary_ctxt_switches"))
        same, last[0] = now == last[0], now
        return same
    wait_for(lambda: settled() or time.sleep(0.2), what="no more wake-ups")
    t0, w0 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
    time.sleep(2)  # a measurement window, not a wait for an event
    t1, w1 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
    print(f"idle 2s after a pickup: cpu ticks {t1 - t0}, voluntary context switches {w1 - w0}")
    assert (t1 - t0, w1 - w0) == (0, 0)


@needs_root
def test_a_drop_file_the_daemon_cannot_read_is_refused_not_retried_forever(box):
    s = box(user="nobody")
    for d in ("spool", "mail"):
        (s.dir / d).mkdir(mode=0o700)
        os.chown(s.dir / d, 65534, 65534)
    s.start()
    md = s.dir / "spool" / "maildrop"
    name = "fedcba9876543210fedcba9876543210"
    (md / f"{name}.tmp").write_bytes(b"postling-drop 1\n")  # root's file
    os.chmod(md / f"{name}.tmp", 0o600)
    os.rename(md / f"{name}.tmp", md / name)
    s.wait_log(f"maildrop/{name} refused: not readable by the daemon")
    assert (md / "bad" / name).exists() and drop_files(s) == []


@needs_root
def test_an_unreadable_config_says_how_to_fix_it(box):
    s = box()
    os.chmod(s.conf, 0o640)
    r = sendmail(s, "alice", data=b"x\n")
    assert r.returncode == EX_CONFIG
    assert b"sendmail runs as the calling user, so the config and its directory must be readable by everyone" in r.stderr


@needs_root
def test_bs_speaks_smtp_on_stdin_and_drops_each_message(box):
    s = box().start()
    script = (b"EHLO me\r\nMAIL FROM:<nobody@example.test>\r\nRCPT TO:<alice@example.test>\r\n"
              b"DATA\r\nSubject: via -bs\r\n\r\n..stuffed\r\n.\r\n"
              b"MAIL FROM:<root@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
              b"DATA\r\nSubject: second\r\n\r\nx\r\n.\r\nQUIT\r\n")
    r = sendmail(s, "-bs", data=script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\r\n")
    assert lines[0].startswith("220 mail.example.test")
    queued = [l for l in lines if l.startswith("250 2.0.0 queued as maildrop/")]
    assert len(queued) == 2, lines
    # nobody may not claim root's address: the second message goes out as nobody's.
    assert queued[1].endswith("from <nobody@example.test>"), queued
    assert lines[-2].startswith("221 ")
    [msg] = wait_mail(s, "alice")
    assert b"Subject: via -bs\n" in msg and msg.endswith(b"\n\n.stuffed\n")
    [msg] = wait_mail(s, "bob")
    assert msg.startswith(b"Return-Path: <nobody@example.test>")
