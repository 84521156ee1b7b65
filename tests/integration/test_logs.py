"""The log lines an administrator follows a message or a client by (doc/operations.md, "Logs"):
one Postfix-like line per event with the queue id, rejections, failed logins without the
password, and a storm summarised instead of written line by line. The server logs to a
`log_file` (the destination that fills a disk), the file the harness reads."""
import poplib
import re
import smtplib
import socket
import time

import pytest

PASSWORD = "Wr0ng-s3cret-never-logged"


def start(server_factory, aliases=None):
    s = server_factory()
    s.settings["log_file"] = str(s.log_path)
    s.settings["log_level"] = "info"
    s.write_config()
    if aliases is not None:
        (s.dir / "aliases").write_text(aliases)
    return s.start()


def send(s, sender, rcpts, body=b"Subject: t\r\n\r\nbody\r\n"):
    """One message; returns (queue id, the client's port)."""
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        port = c.sock.getsockname()[1]
        c.ehlo("client.example")
        assert c.mail(sender)[0] == 250
        for r in rcpts:
            assert c.rcpt(r)[0] == 250
        code, text = c.data(body)
        assert code == 250, (code, text)
        m = re.search(rb"queued as (\S+)", text)
        assert m, text
        return m.group(1).decode(), port


def lines_of(s, qid):
    return [l.split("] ", 1)[1] for l in s.log().splitlines() if f"] {qid}: " in l]


def wait_for(cond, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen after {timeout}s")


def test_local_delivery_lines_follow_the_message_by_its_queue_id(server_factory):
    s = start(server_factory)
    body = b"Subject: t\r\n\r\n" + b"x" * 1000 + b"\r\n"
    qid, port = send(s, "sender@example.org", ["bob@example.test"], body)
    s.wait_log(f"{qid}: removed\n")
    lines = lines_of(s, qid)
    assert len(lines) == 4, lines
    client, queued, to, removed = lines
    assert client == (
        f"{qid}: client=unknown[127.0.0.1]:{port} helo=<client.example> tls=none auth=none"
    ), client
    m = re.fullmatch(rf"{qid}: from=<sender@example.org> size=(\d+) nrcpt=1", queued)
    assert m, queued
    # The size counts what is queued: the body and the Received header added to it.
    assert len(body) < int(m.group(1)) < len(body) + 1000, queued
    assert re.fullmatch(
        rf"{qid}: to=<bob@example.test> relay=local delay=\d+\.\d status=sent \(delivered to maildir\)",
        to,
    ), to
    assert removed == f"{qid}: removed"


def test_alias_delivery_names_the_original_recipient(server_factory):
    s = start(server_factory)
    qid, _ = send(s, "sender@example.org", ["postmaster@example.test"])
    s.wait_log(f"{qid}: removed\n")
    to = [l for l in lines_of(s, qid) if " to=<" in l]
    assert len(to) == 1 and " to=<alice> orig_to=<postmaster@example.test> relay=local " in to[0], to


def test_a_bounce_says_bounced_and_names_the_notification(server_factory):
    s = start(server_factory, aliases="postmaster: alice\nghost: nosuchuser\n")
    qid, _ = send(s, "bob@example.test", ["ghost@example.test"])
    s.wait_log(f"{qid}: removed\n")
    lines = lines_of(s, qid)
    to = [l for l in lines if " to=<" in l]
    assert len(to) == 1, lines
    assert re.fullmatch(
        rf"{qid}: to=<ghost@example.test> relay=local delay=\d+\.\d status=bounced \(5\.1\.1 .*\)", to[0]
    ), to
    notes = [l for l in lines if "sender non-delivery notification" in l]
    assert len(notes) == 1, lines
    new_id = notes[0].rsplit(": ", 1)[1]
    # The notification is a message of its own, from the null sender, delivered to the sender.
    s.wait_log(f"{new_id}: removed\n")
    assert re.fullmatch(rf"{new_id}: from=<> size=\d+ nrcpt=1", lines_of(s, new_id)[0]), lines_of(s, new_id)
    assert any(
        l.startswith(f"{new_id}: to=<bob@example.test> relay=local ") and "status=sent" in l
        for l in lines_of(s, new_id)
    ), lines_of(s, new_id)


def test_a_refused_recipient_is_logged_with_the_reply(server_factory):
    s = start(server_factory)
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        c.ehlo("x")
        c.mail("a@example.org")
        code, _ = c.rcpt("nosuchuser@example.test")
        assert code == 550
        code, _ = c.rcpt("someone@elsewhere.example")
        assert code == 550
    s.wait_log(
        "reject: RCPT from [127.0.0.1]: 550 5.1.1 <nosuchuser@example.test>: "
        "Recipient address rejected: User unknown\n"
    )
    s.wait_log("reject: RCPT from [127.0.0.1]: 550 5.7.1 <someone@elsewhere.example>: Relay access denied\n")


def test_a_failed_pop_login_names_user_and_mechanism_never_the_password(server_factory):
    s = start(server_factory)
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    p.user("bob")
    with pytest.raises(poplib.error_proto):
        p.pass_(PASSWORD)
    p.quit()
    s.wait_log("auth failed: pop3 USER from [127.0.0.1] user=<bob>\n")
    s.wait_log("pop3 close")
    assert PASSWORD not in s.log()
    assert PASSWORD.encode() not in s.log_path.read_bytes()


def smtp_dialog(port, commands):
    """Lock-step SMTP: the replies' first lines, until the server closes or the list ends."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        f = c.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    return None
                if line[3:4] != b"-":
                    return line.decode()

        r = reply()
        if r is None:
            return replies
        replies.append(r)
        if r.startswith("421"):
            return replies
        for cmd in commands:
            c.sendall(cmd.encode() + b"\r\n")
            r = reply()
            if r is None:
                break
            replies.append(r)
            if r.startswith("421"):
                break
    return replies


def test_a_rejection_storm_is_summarised(server_factory):
    s = start(server_factory)
    before = len(s.log().splitlines())
    refused = 0
    connections = 0
    # A harvester: unknown recipients until its sessions are cut, then until its address
    # is refused at the greeting; then a connection storm that only gets 421.
    rcpts = [f"RCPT TO:<nobody{i}@example.test>" for i in range(30)]
    t0 = time.time()
    while connections < 500:
        replies = smtp_dialog(s.smtp_port, ["EHLO storm", "MAIL FROM:<h@example.org>", *rcpts])
        connections += 1
        refused += sum(1 for r in replies if r.startswith(("550", "421")))
    assert refused >= 500, refused
    # Windows of limits::LOG_FLOOD_WINDOW (10 s) the storm spanned: each writes its first lines.
    windows = int((time.time() - t0) / 10) + 1
    # Any different line that is written says the counts first: a POP session's close.
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    p.quit()
    s.wait_log("pop3 close")
    wait_for(lambda: "reject: CONNECT from [127.0.0.1]: " in s.log() and "more like this" in s.log(),
             "the summary lines")
    lines = [l.split("] ", 1)[1] for l in s.log().splitlines()[before:] if "] " in l]
    rejects = [l for l in lines if l.startswith("reject: ") and "more like this" not in l]
    summaries = [l for l in lines if "more like this in the last" in l]
    counted = 0
    for l in summaries:
        m = re.fullmatch(r"(.*): (\d+) more like this in the last \d+\.\d s", l)
        assert m, l
        if m.group(1).startswith("reject: "):
            counted += int(m.group(2))
    # Nothing lost: every refusal is either written or counted.
    assert len(rejects) + counted == refused, (len(rejects), counted, refused)
    # Far fewer lines than events: a few of each kind, then the summaries.
    assert len(lines) < 40 * windows, "\n".join(lines)
    assert 5 <= len([l for l in rejects if l.startswith("reject: RCPT ")]) <= 5 * windows, rejects
    assert 5 <= len([l for l in rejects if l.startswith("reject: CONNECT ")]) <= 5 * windows, rejects
    assert any(l.startswith("smtp close from [127.0.0.1]: ") for l in summaries), summaries


def test_a_pending_summary_is_written_when_its_window_ends(server_factory):
    """No other line comes: the reactor wakes for the summary (limits::LOG_FLOOD_WINDOW, 10 s)
    and only then; afterwards nothing is pending and the server is idle again."""
    s = start(server_factory)
    with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"220")
        for cmd in ("HELO x", "MAIL FROM:<a@example.org>"):
            c.sendall(cmd.encode() + b"\r\n")
            assert f.readline().startswith(b"250")
        for i in range(8):
            c.sendall(f"RCPT TO:<nobody{i}@example.test>\r\n".encode())
            assert f.readline().startswith(b"550")
        # The session stays open, so no close line flushes the count.
        s.wait_log("reject: RCPT from [127.0.0.1]: 550 5.1.1 <nobody4@example.test>")
        assert "nobody5" not in s.log()
        s.wait_log("reject: RCPT from [127.0.0.1]: 3 more like this in the last ", timeout=20)
        assert "nobody5" not in s.log() and "nobody7" not in s.log()
