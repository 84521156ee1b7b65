"""Queue control: `postling queue list|flush|hold|release|delete|bounce`, with the daemon
running (commands go over spool_dir/control.sock) and stopped (the command acts on the spool
under the spool lock), and the exit statuses."""
import fcntl
import os
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from conftest import BIN
from test_smtp import maildir_messages, wait_maildir, wait_queue_empty

EX_USAGE, EX_NOINPUT, EX_TEMPFAIL = 64, 66, 75


def send(server, rcpts, subject, sender="sender@example.test"):
    """Sends one message and returns its queue id (from `250 ... queued as ID`)."""
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody of {subject}\r\n".encode())
    assert code == 250, text
    m = re.search(rb"queued as (\w+)", text)
    assert m, text
    return m.group(1).decode()


def queue(server, *args):
    return subprocess.run([str(BIN), "-c", str(server.conf), "queue", *args],
                          capture_output=True, text=True, timeout=60)


def listing(server):
    r = queue(server, "list")
    assert r.returncode == 0, r.stderr
    q = subprocess.run([str(BIN), "-c", str(server.conf), "-q"], capture_output=True, text=True, timeout=30)
    assert q.returncode == 0 and q.stdout == r.stdout, (q.stdout, r.stdout)
    return r.stdout


def line_of(text, qid):
    return next((l for l in text.splitlines() if l.startswith(qid)), None)


def subjects(server, user):
    out = []
    for p in maildir_messages(server, user):
        m = re.search(rb"^Subject: (.*)$", p.read_bytes(), re.M)
        out.append(m.group(1).decode().strip() if m else None)
    return sorted(out)


def blocked(server_factory, **settings):
    """A server whose bob cannot take mail (his Maildir is a file) and that would not retry
    on its own for an hour."""
    settings.setdefault("retry_min", "1h")
    settings.setdefault("retry_max", "1h")
    s = server_factory(**settings)
    mail = Path(s.settings["mailbox_dir"])
    mail.mkdir(parents=True, exist_ok=True)
    (mail / "bob").write_text("blocks the maildir")
    return s, mail / "bob"


def wait_deferred(server, qid):
    server.wait_log(f"{qid}: deferred")


def test_hold_keeps_a_message_from_delivery_until_release(server_factory):
    s, block = blocked(server_factory)
    s.start()
    held = send(s, ["bob@example.test"], "held")
    wait_deferred(s, held)
    r = queue(s, "hold", held)
    assert r.returncode == 0, r.stderr
    assert f"{held}: held" in r.stdout
    line = line_of(listing(s), held)
    assert line and line.endswith(" HELD"), listing(s)
    assert "1 held" in listing(s)
    s.wait_log(f"{held}: held by postling queue hold")
    # Unblocked and the whole queue flushed: a later, unheld message is delivered, the held
    # one is not (it would have been due before the later one was even sent).
    block.unlink()
    assert queue(s, "flush").returncode == 0
    s.proc.send_signal(signal.SIGUSR2)
    s.wait_log("queue run requested: ")
    later = send(s, ["bob@example.test"], "later")
    wait_maildir(s, "bob", 1)
    s.wait_log(f"{later}: removed\n")
    assert subjects(s, "bob") == ["later"]
    assert line_of(listing(s), held).endswith(" HELD")
    # A flush of the held id leaves it held.
    r = queue(s, "flush", held)
    assert r.returncode == 0 and "stays held" in r.stdout, (r.stdout, r.stderr)
    r = queue(s, "release", held)
    assert r.returncode == 0 and f"{held}: released" in r.stdout, (r.stdout, r.stderr)
    wait_maildir(s, "bob", 2)
    assert subjects(s, "bob") == ["held", "later"]
    wait_queue_empty(s)


def test_delete_removes_without_a_bounce(server_factory):
    s, block = blocked(server_factory)
    s.start()
    gone = send(s, ["bob@example.test"], "gone", sender="carol@example.test")
    wait_deferred(s, gone)
    r = queue(s, "delete", gone)
    assert r.returncode == 0 and f"{gone}: deleted" in r.stdout, (r.stdout, r.stderr)
    s.wait_log(f"{gone}: removed by postling queue delete")
    assert "empty" in listing(s).lower()
    block.unlink()
    s.proc.send_signal(signal.SIGUSR2)
    after = send(s, ["bob@example.test"], "after")
    s.wait_log(f"{after}: removed\n")
    assert subjects(s, "bob") == ["after"]
    assert maildir_messages(s, "carol") == [], "no bounce for a deleted message"
    # delete all (alice is blocked the same way now)
    (block.parent / "alice").write_text("blocks the maildir")
    ids = [send(s, ["alice@example.test"], f"m{i}") for i in range(3)]
    for qid in ids:
        wait_deferred(s, qid)
    r = queue(s, "delete", "all")
    assert r.returncode == 0, r.stderr
    assert all(f"{qid}: deleted" in r.stdout for qid in ids), r.stdout
    assert "empty" in listing(s).lower()


def test_a_long_command_is_carried_out_in_slices_while_mail_flows(server_factory):
    """`queue hold` of 300 deferred entries, each named ten times (a marker created and
    queue/ synced, or found held already): the daemon carries it out a slice per turn and
    writes the reply lines as they come. The reply is whole and in order, every entry is held,
    and a message sent while the command runs is accepted, and delivered only once the command
    is done."""
    import socket
    s, _block = blocked(server_factory)
    s.start()
    ids = [send(s, ["bob@example.test"], f"m{i}") for i in range(300)]
    s.wait_log(f"{ids[-1]}: deferred")
    spool = Path(s.settings["spool_dir"])
    # The daemon's own way to a socket whose path may be too long for an address.
    dir_fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY)
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(30)
    c.connect(f"/proc/self/fd/{dir_fd}/control.sock")
    os.close(dir_fd)
    # Many more than a slice's worth: the same ids over and over (each a hold attempt).
    c.sendall(("hold " + " ".join(ids * 10) + "\n").encode())
    first = c.recv(65536)
    assert first.startswith(b"ok "), first
    meanwhile = send(s, ["alice@example.test"], "meanwhile")
    with c, c.makefile("rb") as f:
        rest = f.read()  # to the daemon's close
    reply = (first + rest).decode().splitlines()
    assert len(reply) == 3000, len(reply)
    assert all(l.startswith("ok ") for l in reply), [l for l in reply if not l.startswith("ok ")][:3]
    assert [l.split(":")[0][3:] for l in reply] == ids * 10
    assert sum(l.endswith(": held") for l in reply) == 300
    assert "held already" in reply[-1]
    held = {p.name.split(".")[0] for p in spool.rglob("*.hold")}
    assert held == set(ids)
    wait_maildir(s, "alice", 1)
    s.wait_log(f"{meanwhile}: removed")
    # Accepted while the command ran (perhaps), but delivered only after its last entry.
    log = s.log().splitlines()
    holds = [i for i, l in enumerate(log) if "held by postling queue hold" in l]
    delivered = [i for i, l in enumerate(log) if f"{meanwhile}:" in l and "status=sent" in l]
    assert len(holds) == 300 and len(delivered) == 1, (len(holds), delivered)
    assert delivered[0] > holds[-1], "\n".join(log[delivered[0] - 3:delivered[0] + 3])


def test_bounce_returns_the_message_to_its_sender(server_factory):
    s, _ = blocked(server_factory)
    s.start()
    qid = send(s, ["bob@example.test"], "returned", sender="carol@example.test")
    wait_deferred(s, qid)
    r = queue(s, "bounce", qid)
    assert r.returncode == 0 and f"{qid}: returned to the sender" in r.stdout, (r.stdout, r.stderr)
    dsn = wait_maildir(s, "carol", 1)[0].read_bytes()
    assert b"Content-Type: multipart/report; report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn
    assert b"Status: 5.0.0" in dsn
    assert b"returned by the administrator" in dsn
    assert b"Subject: returned" in dsn
    s.wait_log(f"{qid}: returned to sender by postling queue bounce")
    wait_queue_empty(s)


def test_flush_of_one_id_delivers_at_once_despite_the_retry_time(server_factory):
    s, block = blocked(server_factory)
    s.start()
    qid = send(s, ["bob@example.test"], "flushed")
    wait_deferred(s, qid)
    assert re.search(r"\d{4}-\d\d-\d\dT", line_of(listing(s), qid)), "next attempt in an hour"
    block.unlink()
    r = queue(s, "flush", qid)
    assert r.returncode == 0 and f"{qid}: due now" in r.stdout, (r.stdout, r.stderr)
    wait_maildir(s, "bob", 1)
    wait_queue_empty(s)


def test_unknown_ids_and_bad_usage(server_factory):
    s, _ = blocked(server_factory)
    s.start()
    qid = send(s, ["bob@example.test"], "known")
    wait_deferred(s, qid)
    r = queue(s, "hold", "01K0VS027V6M", qid, "nonsense")
    assert r.returncode == EX_NOINPUT, (r.returncode, r.stdout, r.stderr)
    assert "01K0VS027V6M: no such message in the queue" in r.stderr
    assert "not a queue id" in r.stderr
    assert f"{qid}: held" in r.stdout, "the known id is still processed"
    assert line_of(listing(s), qid).endswith(" HELD")
    for args in (["hold"], ["frobnicate", qid], ["delete"], ["delete", "all", qid], [], ["list", "x"]):
        r = queue(s, *args)
        assert r.returncode == EX_USAGE, (args, r.returncode, r.stderr)
        assert "Usage" in r.stderr
    s.stop()
    r = queue(s, "release", "01K0VS027V6N")
    assert r.returncode == EX_NOINPUT and "no such message" in r.stderr, r.stderr


def test_commands_with_the_daemon_stopped_take_effect_at_its_start(server_factory):
    s, block = blocked(server_factory)
    s.start()
    held = send(s, ["bob@example.test"], "held")
    deleted = send(s, ["bob@example.test"], "deleted", sender="alice@example.test")
    bounced = send(s, ["bob@example.test"], "bounced", sender="carol@example.test")
    flushed = send(s, ["bob@example.test"], "flushed")
    for qid in (held, deleted, bounced, flushed):
        wait_deferred(s, qid)
    assert s.stop() == 0
    assert not (Path(s.settings["spool_dir"]) / "control.sock").exists()

    r = queue(s, "hold", held)
    assert r.returncode == 0 and f"{held}: held" in r.stdout, (r.stdout, r.stderr)
    r = queue(s, "delete", deleted)
    assert r.returncode == 0 and f"{deleted}: deleted" in r.stdout, (r.stdout, r.stderr)
    r = queue(s, "bounce", bounced)
    assert r.returncode == 0 and "returned to the sender" in r.stdout, (r.stdout, r.stderr)
    r = queue(s, "flush", flushed)
    assert r.returncode == 0 and "when the daemon starts" in r.stdout, (r.stdout, r.stderr)
    r = queue(s, "delete", "01K0VS027V6M")
    assert r.returncode == EX_NOINPUT and "no such message" in r.stderr
    text = listing(s)
    assert line_of(text, held).endswith(" HELD"), text
    assert line_of(text, deleted) is None and line_of(text, bounced) is None, text
    assert "carol@example.test" in text, "the bounce waits in the queue for the daemon"
    # Nothing the command wrote is left half done, and the daemon accepts it all at start.
    assert os.listdir(Path(s.settings["spool_dir"]) / "tmp") == []

    block.unlink()
    s.start()
    s.wait_log(f"{flushed}: removed\n")
    dsn = wait_maildir(s, "carol", 1)[0].read_bytes()
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn and b"Status: 5.0.0" in dsn
    # The held one was found at start beside the others and not attempted.
    s.wait_log("1 of them held")
    assert subjects(s, "bob") == ["flushed"]
    assert maildir_messages(s, "alice") == []
    assert line_of(listing(s), held).endswith(" HELD")
    r = queue(s, "release", held)
    assert r.returncode == 0 and "due now" in r.stdout, (r.stdout, r.stderr)
    wait_maildir(s, "bob", 2)
    assert subjects(s, "bob") == ["flushed", "held"]
    wait_queue_empty(s)


def test_a_daemon_that_holds_the_spool_but_does_not_answer_is_a_temporary_failure(server_factory):
    s, _ = blocked(server_factory)
    s.start()
    qid = send(s, ["bob@example.test"], "x")
    wait_deferred(s, qid)
    s.stop()
    # Something holds the spool lock (as a daemon would) but serves no control socket.
    fd = os.open(s.settings["spool_dir"], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.time()
        r = queue(s, "hold", qid)
        assert r.returncode == EX_TEMPFAIL, (r.returncode, r.stderr)
        assert "does not answer" in r.stderr
        assert time.time() - t0 < 30
    finally:
        os.close(fd)
    assert not line_of(listing(s), qid).endswith(" HELD"), "nothing changed"


def test_root_acts_as_the_spool_owner_so_the_daemon_can_read_what_it_wrote():
    """The daemon runs as nobody; root's commands reach it over the socket, and with it
    stopped root writes the spool as nobody (a root-owned 0600 bounce would be unreadable)."""
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to start the daemon as nobody")
    import shutil
    import tempfile
    from conftest import Server
    root = Path(tempfile.mkdtemp(prefix="postling-queue-", dir="/tmp"))
    root.chmod(0o755)
    s = Server(root, user="nobody", retry_min="1h", retry_max="1h")
    try:
        s.start()
        mail = Path(s.settings["mailbox_dir"])
        (mail / "bob").write_text("blocks the maildir")
        held = send(s, ["bob@example.test"], "held")
        bounced = send(s, ["bob@example.test"], "bounced", sender="carol@example.test")
        wait_deferred(s, held)
        wait_deferred(s, bounced)
        r = queue(s, "hold", held)
        assert r.returncode == 0 and f"{held}: held" in r.stdout, (r.stdout, r.stderr)
        assert s.stop() == 0
        r = queue(s, "bounce", bounced)
        assert r.returncode == 0 and "returned to the sender" in r.stdout, (r.stdout, r.stderr)
        spool = Path(s.settings["spool_dir"])
        owners = {p.name: p.stat().st_uid for d in ("queue", "free", "tmp") for p in (spool / d).iterdir()}
        assert f"{held}.hold" in owners
        assert set(owners.values()) == {65534}, owners
        (mail / "bob").unlink()
        s.start()
        dsn = wait_maildir(s, "carol", 1)[0].read_bytes()
        assert b"Status: 5.0.0" in dsn
        assert line_of(listing(s), held).endswith(" HELD")
        assert maildir_messages(s, "bob") == []
    finally:
        s.stop(signal.SIGKILL)
        shutil.rmtree(root, ignore_errors=True)
