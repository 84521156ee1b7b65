"""The spool file becomes the Maildir file ("link-1", doc/spool.md): a message for one local
recipient is queued already in its Maildir form and delivery links that very file into the
Maildir instead of writing a copy. What a reader sees is the same as a copy; a crash between
the link and the queue entry's removal still delivers exactly once."""
import poplib
import smtplib
import socket
import threading
import time

from conftest import BIN  # noqa: F401  (the binary under test)
from outbound_fixtures import dns_server  # noqa: F401 (fixtures)
from test_queue import blocked, queue, send, wait_deferred
from test_smtp import maildir_messages, wait_maildir, wait_queue_empty

BODY = b"Subject: linked\r\n\r\nfirst line\r\nsecond line\r\n"


def queued_file(server, qid):
    return server.dir / "spool" / "queue" / qid


def test_the_queued_file_is_linked_into_the_maildir_and_reads_as_a_copy(server_factory):
    s, block = blocked(server_factory)
    s.start()
    qid = send(s, ["bob@example.test"], "linked")
    wait_deferred(s, qid)
    # Deferred (bob's Maildir is blocked): the queued file is already bob's Maildir copy.
    spooled = queued_file(s, qid)
    text = spooled.read_bytes()
    assert text.startswith(b"Return-Path: <sender@example.test>\nDelivered-To: bob@example.test\n"), text
    assert b"\r\n" not in text, "LF line ends, as in a Maildir"
    assert b"Subject: linked\n\nbody of linked\n" in text
    inode = spooled.stat().st_ino
    assert spooled.stat().st_nlink == 1
    # `postling -q` still reads it.
    listed = queue(s, "list").stdout
    assert qid in listed and "sender@example.test" in listed and "bob@example.test" in listed, listed

    block.unlink()
    assert queue(s, "flush", qid).returncode == 0
    files = wait_maildir(s, "bob", 1)
    wait_queue_empty(s)
    assert len(files) == 1
    st = files[0].stat()
    assert st.st_ino == inode, "the same file, linked: no second copy written"
    assert st.st_nlink == 1, "the queue's name is gone"
    assert files[0].read_bytes() == text
    size = int(files[0].name.split(",S=")[1].split(",")[0])
    assert size == len(text)
    assert not list((s.dir / "mail" / "bob" / "tmp").iterdir()), "nothing written in tmp/"
    # And a POP3 client gets it with CRLF, the size the name promised.
    wire = int(files[0].name.split(",W=")[1].split(":")[0])
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    try:
        p.user("bob")
        p.pass_("bob-pw")
        _, listing, _ = p.list()
        assert listing == [f"1 {wire}".encode()], listing
        _, lines, _ = p.retr(1)
        assert lines[:2] == [b"Return-Path: <sender@example.test>", b"Delivered-To: bob@example.test"]
        assert b"body of linked" in lines
    finally:
        p.quit()
    # The removed entry's inode is bob's now: new mail never reuses (and overwrites) it.
    send(s, ["alice@example.test"], "next")
    wait_maildir(s, "alice", 1)
    (bobs,) = maildir_messages(s, "bob")  # (moved to cur/ by the POP3 QUIT)
    assert bobs.stat().st_ino == inode and bobs.read_bytes() == text


def test_a_crash_between_the_link_and_the_removal_delivers_exactly_once(server_factory):
    s = server_factory(retry_min="1s", retry_max="2s")
    s.start()
    qid = send(s, ["alice@example.test"], "once")
    files = wait_maildir(s, "alice", 1)
    wait_queue_empty(s)
    s.kill9()
    # The state a kill between the link into new/ and the queue entry's removal leaves (or a
    # power cut that undid the removal, which is not synced): one inode, both names.
    spooled = queued_file(s, qid)
    spooled.hardlink_to(files[0])
    assert files[0].stat().st_nlink == 2
    s.start()
    wait_queue_empty(s)
    s.wait_log(f"{qid}: alice already has its copy, from before the restart")
    now = maildir_messages(s, "alice")
    assert now == files, "exactly one copy"
    assert now[0].stat().st_nlink == 1
    assert b"Subject: once" in now[0].read_bytes()


def test_mail_for_several_recipients_or_not_one_maildir_keeps_the_envelope_form(server_factory):
    s, block = blocked(server_factory)
    s.start()
    # Two recipients: the envelope form (bob blocked keeps it queued); alice gets a copy.
    qid = send(s, ["alice@example.test", "bob@example.test"], "two")
    wait_deferred(s, qid)
    assert queued_file(s, qid).read_bytes().startswith(b"postling-message 1\n")
    # An alias to two users (team: alice, bob) is not one Maildir either.
    qid2 = send(s, ["team@example.test"], "team")
    wait_deferred(s, qid2)
    assert queued_file(s, qid2).read_bytes().startswith(b"postling-message 1\n")
    block.unlink()
    queue(s, "flush")
    wait_queue_empty(s)
    assert len(maildir_messages(s, "bob")) == 2


class RawSink:
    """A minimal SMTP server on 127.0.0.1 that keeps the raw bytes of each DATA (up to the
    final dot), so a test sees the line ends exactly as sent."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.data = []
        self.mail_args = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                f = c.makefile("rb")
                c.sendall(b"220 raw.test\r\n")
                while True:
                    line = f.readline()
                    if not line:
                        break
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        c.sendall(b"250-raw.test\r\n250-SIZE 100000\r\n250 8BITMIME\r\n")
                    elif verb == b"MAIL":
                        self.mail_args.append(line)
                        c.sendall(b"250 ok\r\n")
                    elif verb == b"RCPT":
                        c.sendall(b"250 ok\r\n")
                    elif verb == b"DATA":
                        c.sendall(b"354 go\r\n")
                        raw = b""
                        while not raw.endswith(b"\r\n.\r\n"):
                            more = f.readline()
                            if not more:
                                break
                            raw += more
                        self.data.append(raw)
                        c.sendall(b"250 kept\r\n")
                    elif verb == b"QUIT":
                        c.sendall(b"221 bye\r\n")
                        break
                    else:
                        c.sendall(b"250 ok\r\n")

    def close(self):
        self.sock.close()


def test_an_entry_whose_recipient_now_resolves_to_a_remote_address_is_relayed_with_crlf(
        server_factory, dns_server):
    from test_outbound import sender_server
    b = RawSink()
    a = sender_server(server_factory, dns_server({}), start=False,
                      relay_host=f"127.0.0.1:{b.port}", relay_tls="none")
    (a.dir / "aliases").write_text("fwd: bob\n")
    mail = a.dir / "mail"
    mail.mkdir()
    (mail / "bob").write_text("blocks the maildir")
    a.start()
    with smtplib.SMTP("127.0.0.1", a.smtp_port, timeout=10) as c:
        c.ehlo()
        # Declared 8BITMIME and 8-bit: the Maildir form keeps no BODY=, the relay finds it.
        assert c.mail("sender@example.test", ["BODY=8BITMIME"])[0] == 250
        assert c.rcpt("fwd@example.test")[0] == 250
        code, text = c.data("Subject: forwarded later\r\n\r\nbody of forwarded later, grüße\r\n".encode())
    assert code == 250, text
    qid = text.split()[-1].decode()
    wait_deferred(a, qid)
    assert queued_file(a, qid).read_bytes().startswith(b"Return-Path: <sender@example.test>\n")
    # The alias now leads off the machine: the Maildir form is read back with CRLF and relayed.
    (a.dir / "aliases").write_text("fwd: bob@remote.test\n")
    a.proc.send_signal(__import__("signal").SIGHUP)
    a.wait_log("reloaded ")
    assert queue(a, "flush", qid).returncode == 0
    deadline = time.time() + 20
    while not b.data and time.time() < deadline:
        time.sleep(0.02)
    b.close()
    (raw,) = b.data
    assert raw.endswith("Subject: forwarded later\r\n\r\nbody of forwarded later, grüße\r\n.\r\n".encode()), raw
    assert raw.count(b"\n") == raw.count(b"\r\n"), f"a bare LF went out: {raw!r}"
    assert b"Return-Path" not in raw and b"Delivered-To" not in raw, "no first-hop trace lines"
    assert b"BODY=8BITMIME" in b.mail_args[0], b.mail_args
    size = int(b.mail_args[0].split(b"SIZE=")[1].split()[0])
    assert size == len(raw) - len(b".\r\n"), (size, len(raw), "SIZE= is the size as sent")
    wait_queue_empty(a)
