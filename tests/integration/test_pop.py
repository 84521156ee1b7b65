"""POP3 and POP2 over Maildir, with real clients (poplib, mpop, fetchmail) and raw sockets."""
import base64
import os
import poplib
import shutil
import smtplib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, recv_line
from test_smtp import maildir_messages, wait_maildir


def put(server, user, name, data, sub="new"):
    d = Path(server.settings["mailbox_dir"]) / user
    for s in ("tmp", "new", "cur"):
        (d / s).mkdir(parents=True, exist_ok=True)
    (d / sub / name).write_bytes(data)


def pop(server, user="bob", password="bob-pw"):
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    p.user(user)
    p.pass_(password)
    return p


def wait_maildir_empty(server, user, timeout=10):
    """Waits until the server has removed every message of `user` (after a QUIT that
    deleted them)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if maildir_messages(server, user) == []:
            return
        time.sleep(0.02)
    raise AssertionError(f"{user} still has {maildir_messages(server, user)} after {timeout}s")


def pop_when_unlocked(server, user="bob", password="bob-pw", timeout=10):
    """Logs in once the maildrop lock is free: a client that just left releases it when the
    server has handled its close."""
    deadline = time.time() + timeout
    while True:
        try:
            return pop(server, user, password)
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.time() > deadline:
                raise
        time.sleep(0.02)


def fast_auth(server_factory, **kw):
    return server_factory(auth_failure_delay="1s", **kw)


def test_poplib_full_session(server_factory):
    s = fast_auth(server_factory).start()
    put(s, "bob", "1000.M1P1Q1.h,S=30", b"Subject: one\n\nfirst body\n")
    put(s, "bob", "1001.M1P1Q2.h", b"Subject: two\n\nline\n.dotted\n..two dots\nlast")
    p = pop(s)
    caps = p.capa()
    for c in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"):
        assert c in caps, caps
    count, size = p.stat()
    assert count == 2
    one = b"Subject: one\r\n\r\nfirst body\r\n"
    two_wire = b"Subject: two\r\n\r\nline\r\n.dotted\r\n..two dots\r\nlast"
    assert size == len(one) + len(two_wire)
    resp, listing, _ = p.list()
    assert listing == [b"1 %d" % len(one), b"2 %d" % len(two_wire)]
    resp, uids, _ = p.uidl()
    assert uids == [b"1 1000.M1P1Q1.h,S=30", b"2 1001.M1P1Q2.h"]
    resp, lines, octets = p.retr(2)
    # poplib removes the dot-stuffing: the lines come back exactly as stored.
    assert lines == [b"Subject: two", b"", b"line", b".dotted", b"..two dots", b"last"]
    resp, lines, _ = p.top(1, 0)
    assert lines == [b"Subject: one", b""]
    p.dele(1)
    with pytest.raises(poplib.error_proto):
        p.retr(1)
    p.rset()
    p.dele(2)
    p.quit()
    left = maildir_messages(s, "bob")
    assert len(left) == 1 and left[0].read_bytes() == b"Subject: one\n\nfirst body\n"
    # UIDs are stable across sessions.
    p = pop(s)
    assert p.uidl()[1] == [b"1 1000.M1P1Q1.h,S=30"]
    p.quit()


def test_auth_plain_and_wrong_password_delay(server_factory):
    s = fast_auth(server_factory).start()
    c = s.connect(s.pop3_port)
    assert recv_line(c).startswith(b"+OK")
    token = base64.b64encode(b"\0carol\0carol-pw")
    c.sendall(b"AUTH PLAIN " + token + b"\r\n")
    assert recv_line(c).startswith(b"+OK")
    c.sendall(b"QUIT\r\n")
    assert recv_line(c).startswith(b"+OK")
    # Wrong password and unknown user: same reply, same delay (>= 1 s), connection kept.
    for user, pw in ((b"carol", b"wrong"), (b"nosuchuser", b"whatever")):
        c = s.connect(s.pop3_port)
        recv_line(c)
        c.sendall(b"USER " + user + b"\r\n")
        assert recv_line(c).startswith(b"+OK")
        t0 = time.time()
        c.sendall(b"PASS " + pw + b"\r\n")
        line = recv_line(c)
        took = time.time() - t0
        assert line.startswith(b"-ERR [AUTH]"), line
        assert took >= 0.95, took
        c.close()


def test_three_failures_close_and_throttle(server_factory):
    s = fast_auth(server_factory).start()
    c = s.connect(s.pop3_port)
    recv_line(c)
    for i in range(3):
        c.sendall(b"USER carol\r\nPASS bad\r\n")
        recv_line(c)
        assert recv_line(c, timeout=5).startswith(b"-ERR")
    assert c.recv(10) == b""  # closed after the third failure
    # Keep failing from this address until throttled (the server then answers [SYS/TEMP] and
    # closes, so a later send may meet a reset); then even the right password is refused.
    throttled = False
    for _ in range(3):
        c = s.connect(s.pop3_port)
        recv_line(c)
        try:
            for _ in range(3):
                c.sendall(b"USER carol\r\nPASS bad\r\n")
                recv_line(c)
                line = recv_line(c, timeout=5)
                assert line.startswith(b"-ERR"), line
                if b"[SYS/TEMP]" in line:
                    throttled = True
                    break
        except (ConnectionResetError, BrokenPipeError):
            pass
        c.close()
    assert throttled, "12 failures from one address must trip the throttle"
    c = s.connect(s.pop3_port)
    recv_line(c)
    c.sendall(b"USER carol\r\nPASS carol-pw\r\n")
    recv_line(c)
    line = recv_line(c, timeout=5)
    assert line.startswith(b"-ERR [SYS/TEMP]"), "throttled address must not log in: %r" % line



def test_logging_in_to_own_account_between_guesses_does_not_reset_the_throttle(server_factory):
    """Issue 10 item 4: a client holding one account (carol) guesses bob's password and logs
    in to carol between guesses. Successes used to clear the address's failures, so it was
    never throttled; now the 10th failure from 127.0.0.1 throttles it, and then carol's right
    password is refused too, over POP3 and POP2 (one throttle for every protocol)."""
    s = fast_auth(server_factory, max_connections_per_ip="64")
    s.pop2_port = free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start()

    def guess(i, replies):
        try:
            p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
            p.user("bob")
            p.pass_("guess-%d" % i)
            replies.append(b"+OK")
        except poplib.error_proto as e:
            replies.append(e.args[0])

    own_logins = []
    guesses = []
    for rnd in range(4):
        # Its own account, right password: accepted every time so far.
        p = pop(s, "carol", "carol-pw")
        own_logins.append(p.stat())
        p.quit()
        # Three guesses in parallel (each waits out the 1 s failure delay).
        replies = []
        threads = [threading.Thread(target=guess, args=(rnd * 3 + i, replies)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        guesses += replies
    assert len(own_logins) == 4
    assert b"+OK" not in guesses
    assert sum(r.startswith(b"-ERR [AUTH]") for r in guesses) == 10, guesses
    # 12 guesses: the 10th failure spent the budget, so two were refused unchecked.
    assert sum(r.startswith(b"-ERR [SYS/TEMP]") for r in guesses) == 2, guesses
    with pytest.raises(poplib.error_proto) as e:
        pop(s, "carol", "carol-pw")
    assert e.value.args[0] == b"-ERR [SYS/TEMP] Too many failed logins from your address, try again later"
    with s.connect(s.pop2_port) as c:
        assert recv_line(c).startswith(b"+")
        c.sendall(b"HELO carol carol-pw\r\n")
        assert recv_line(c) == b"- Too many failed logins from your address, try again later\r\n"
    assert s.log().count("127.0.0.1 had 10 failed logins;") == 1, s.log()


def test_concurrent_login_in_use_and_drop_deletes_nothing(server_factory):
    s = fast_auth(server_factory).start()
    put(s, "bob", "1.M1P1Q1.h", b"Subject: keep\n\nbody\n")
    p1 = pop(s)
    with pytest.raises(poplib.error_proto) as e:
        pop(s)
    assert b"[IN-USE]" in e.value.args[0]
    p1.dele(1)
    p1.close()  # dropped without QUIT (closes the socket and its file): nothing is deleted, the lock is released
    p2 = pop_when_unlocked(s)
    assert p2.stat()[0] == 1
    p2.quit()


def test_byte_exact_round_trip_of_odd_files(server_factory):
    s = fast_auth(server_factory).start()
    raw = b"Subject: odd\n\n.\n..\n.x\nbare lf\ncrlf line\r\nno final newline"
    put(s, "bob", "7.M1P1Q1.h", raw)
    c = s.connect(s.pop3_port)
    recv_line(c)
    c.sendall(b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\n")
    recv_line(c), recv_line(c)
    status = recv_line(c)
    assert status.startswith(b"+OK")
    wire = b""
    while not wire.endswith(b"\r\n.\r\n"):
        chunk = c.recv(65536)
        assert chunk
        wire += chunk
    expected = b"Subject: odd\r\n\r\n..\r\n...\r\n..x\r\nbare lf\r\ncrlf line\r\nno final newline\r\n.\r\n"
    assert wire == expected


def test_end_to_end_smtp_then_mpop_and_fetchmail(server_factory, tmp_path):
    for tool in ("mpop", "fetchmail"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/test installs it: apt-get install -y {tool})"
    s = fast_auth(server_factory).start()
    body = b"Subject: e2e\r\nFrom: a@example.org\r\n\r\n.leading dot\r\nplain\r\n"
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as m:
        m.sendmail("a@example.org", ["bob@example.test", "carol@example.test"], body)
    wait_maildir(s, "bob", 1)
    wait_maildir(s, "carol", 1)
    out = tmp_path / "bob.mbox"
    out.write_bytes(b"")
    r = subprocess.run(
        ["mpop", "--host=127.0.0.1", f"--port={s.pop3_port}", "--tls=off", "--auth=user", "--user=bob",
         "--passwordeval=echo bob-pw", f"--delivery=mbox,{out}", "--keep=off", "--uidls-file=" + str(tmp_path / "uidls")],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = out.read_bytes()
    assert b"Subject: e2e" in got and b".leading dot" in got
    wait_maildir_empty(s, "bob")
    rc = tmp_path / "fetchmailrc"
    sink = tmp_path / "carol.out"
    rc.write_text(
        f"poll 127.0.0.1 protocol POP3 port {s.pop3_port} auth password\n"
        f"  user carol password carol-pw sslproto '' no sslcertck\n"
        f"  mda 'cat >> {sink}'\n"
    )
    os.chmod(rc, 0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    got = sink.read_bytes()
    assert b"Subject: e2e" in got and b".leading dot" in got
    wait_maildir_empty(s, "carol")


def test_large_message_streams_with_flat_memory(server_factory):
    s = fast_auth(server_factory).start()
    line = b"x" * 99 + b"\n"
    big = b"Subject: big\n\n" + line * (300 * 1024 * 1024 // 100 // 3)  # ~100 MiB
    put(s, "bob", "9.M1P1Q1.h", big)
    c = s.connect(s.pop3_port)
    recv_line(c)
    c.sendall(b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\n")
    recv_line(c), recv_line(c), recv_line(c, timeout=10)
    received = 0
    peak = 0
    tail = b""
    while not tail.endswith(b"\r\n.\r\n"):
        chunk = c.recv(1 << 20)
        assert chunk
        received += len(chunk)
        tail = (tail + chunk)[-5:]
        if received % (16 << 20) < len(chunk):
            peak = max(peak, int(s.status("VmRSS").split()[0]))
    print(f"streamed {received} bytes; peak RSS {peak} kB")
    assert received > 100_000_000
    assert peak < 16 * 1024, "RSS must not grow with the message"


def test_pop2_raw_session(server_factory):
    s = fast_auth(server_factory)
    s.pop2_port = __import__("conftest").free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start()
    put(s, "bob", "5.M1P1Q1.h", b"Subject: pop2\n\nhello\n")
    c = s.connect(s.pop2_port)
    assert recv_line(c).startswith(b"+")
    c.sendall(b"HELO bob bob-pw\r\n")
    assert recv_line(c) == b"#1\r\n"
    c.sendall(b"READ 1\r\n")
    expected = b"Subject: pop2\r\n\r\nhello\r\n"
    assert recv_line(c) == b"=%d\r\n" % len(expected)
    c.sendall(b"RETR\r\n")
    got = b""
    while len(got) < len(expected):
        got += c.recv(4096)
    assert got == expected
    c.sendall(b"ACKD\r\n")
    assert recv_line(c) == b"=0\r\n"
    c.sendall(b"QUIT\r\n")
    assert recv_line(c).startswith(b"+")
    wait_maildir_empty(s, "bob")


def test_pop2_sizes_come_from_the_file_not_w(server_factory):
    """A Maildir name whose W= lies (smaller, then larger than the file): POP2 announces the
    real size and sends each text whole and exactly; ACKD removes only what was sent."""
    s = fast_auth(server_factory)
    s.pop2_port = __import__("conftest").free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start()
    longer = b"Subject: longer than W says\n\n" + b"line\n" * 200
    shorter = b"Subject: shorter than W says\n\nhi\n"
    put(s, "bob", "5.M1P1Q1.h,W=10", longer)
    put(s, "bob", "6.M1P1Q1.h,W=99999", shorter)
    c = s.connect(s.pop2_port)
    assert recv_line(c).startswith(b"+")
    c.sendall(b"HELO bob bob-pw\r\n")
    assert recv_line(c) == b"#2\r\n"
    c.sendall(b"READ 1\r\n")
    for raw in (longer, shorter):
        expected = raw.replace(b"\n", b"\r\n")
        assert recv_line(c) == b"=%d\r\n" % len(expected)
        c.sendall(b"RETR\r\n")
        got = b""
        while len(got) < len(expected):
            chunk = c.recv(65536)
            assert chunk, f"connection closed after {len(got)} of {len(expected)} octets"
            got += chunk
        assert got == expected
        c.sendall(b"ACKD\r\n")
    assert recv_line(c) == b"=0\r\n", "nothing was sent beyond the texts"
    c.sendall(b"QUIT\r\n")
    assert recv_line(c).startswith(b"+")
    assert recv_line(c) == b""
    wait_maildir_empty(s, "bob")
