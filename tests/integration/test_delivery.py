"""Local delivery into Maildirs, retries, bounces, the queue listing, and idleness."""
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from conftest import BIN
from test_smtp import maildir_messages, wait_maildir, wait_queue_empty

ALIASES = """\
postmaster: alice
team: alice, bob
ghost: nosuchuser
loop1: loop2
loop2: loop1
"""


def send(server, rcpts, body=b"Subject: t\r\n\r\nbody\r\n", sender="sender@example.test"):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        return s.sendmail(sender, rcpts, body)


def with_aliases(server_factory, aliases=ALIASES, **settings):
    s = server_factory(**settings)
    (s.dir / "aliases").write_text(aliases)
    return s


def queue_listing(server):
    r = subprocess.run([str(BIN), "-c", str(server.conf), "-q"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_users_aliases_and_multiple_recipients(server_factory):
    s = with_aliases(server_factory).start()
    assert send(s, ["alice@example.test", "team@example.test", "bob+tag@example.test", "Carol@Example.Test"]) == {}
    # alice directly and through team, bob through team and a subaddress: one copy each.
    wait_maildir(s, "carol", 1)
    alice = wait_maildir(s, "alice", 1)
    bob = wait_maildir(s, "bob", 1)
    wait_queue_empty(s)
    assert len(maildir_messages(s, "alice")) == 1 and len(maildir_messages(s, "bob")) == 1
    assert b"Subject: t" in alice[0].read_bytes() and b"Subject: t" in bob[0].read_bytes()


def test_catch_all(server_factory):
    s = with_aliases(server_factory, aliases="postmaster: alice\n*: carol\n").start()
    assert send(s, ["whoever@example.test"]) == {}
    body = wait_maildir(s, "carol", 1)[0].read_bytes()
    assert b"Delivered-To: whoever@example.test" in body


def bounces_for(server, user, count=1):
    files = wait_maildir(server, user, count)
    return [p.read_bytes() for p in files]


def test_unknown_alias_target_and_loop_bounce_with_dsn(server_factory):
    s = with_aliases(server_factory).start()
    # The sender is a local user, so the bounce lands in a Maildir we can read.
    assert send(s, ["ghost@example.test"], sender="bob@example.test") == {}
    dsn = bounces_for(s, "bob")[0]
    assert b"From: Mail Delivery System <MAILER-DAEMON@mail.example.test>" in dsn
    assert b"Return-Path: <>" in dsn
    assert b"Content-Type: multipart/report; report-type=delivery-status" in dsn
    assert b"Final-Recipient: rfc822; ghost@example.test" in dsn
    assert b"Status: 5.1.1" in dsn
    assert b"Subject: t" in dsn  # the original headers are attached
    assert send(s, ["loop1@example.test"], sender="carol@example.test") == {}
    dsn = bounces_for(s, "carol")[0]
    assert b"Final-Recipient: rfc822; loop1@example.test" in dsn
    assert b"loop" in dsn.lower()


def test_no_bounce_to_null_sender(server_factory):
    s = with_aliases(server_factory).start()
    assert send(s, ["ghost@example.test"], sender="") == {}
    s.wait_log("no bounce")
    wait_queue_empty(s)
    for u in ("alice", "bob", "carol"):
        assert maildir_messages(s, u) == []


def test_unwritable_maildir_is_deferred_then_delivered(server_factory):
    s = server_factory().start()
    mail = Path(s.settings["mailbox_dir"])
    mail.mkdir(parents=True, exist_ok=True)
    (mail / "bob").write_text("blocks the maildir")
    assert send(s, ["bob@example.test"]) == {}
    s.wait_log("deferred")
    listing = queue_listing(s)
    assert "bob@example.test" in listing and "sender@example.test" in listing, listing
    assert "1 message" in listing
    (mail / "bob").unlink()
    s.proc.send_signal(signal.SIGUSR2)  # every queued message due now
    wait_maildir(s, "bob", 1)
    deadline = time.time() + 5
    while "empty" not in queue_listing(s).lower() and time.time() < deadline:
        time.sleep(0.05)
    assert "empty" in queue_listing(s).lower()


def test_queue_lifetime_expiry_bounces(server_factory):
    s = server_factory(queue_lifetime="1s", retry_min="1s", retry_max="1s").start()
    mail = Path(s.settings["mailbox_dir"])
    mail.mkdir(parents=True, exist_ok=True)
    (mail / "bob").write_text("blocks the maildir")
    assert send(s, ["bob@example.test"], sender="carol@example.test") == {}
    dsn = bounces_for(s, "carol")[0]
    assert b"Final-Recipient: rfc822; bob@example.test" in dsn
    assert b"Status: 4.4.7" in dsn


def test_restart_with_mail_in_queue_and_no_duplicates(server_factory):
    s = with_aliases(server_factory).start()
    mail = Path(s.settings["mailbox_dir"])
    mail.mkdir(parents=True, exist_ok=True)
    (mail / "bob").write_text("blocks the maildir")
    assert send(s, ["alice@example.test", "bob@example.test"]) == {}
    wait_maildir(s, "alice", 1)
    s.wait_log("deferred")
    s.kill9()  # alice is done, bob pending: a crash must not deliver to alice again
    (mail / "bob").unlink()
    s.start()
    wait_maildir(s, "bob", 1)
    wait_queue_empty(s)
    assert len(maildir_messages(s, "alice")) == 1
    assert len(maildir_messages(s, "bob")) == 1


def test_idle_with_empty_queue_costs_nothing(server_factory):
    s = server_factory().start()
    assert send(s, ["alice@example.test"]) == {}
    wait_maildir(s, "alice", 1)
    time.sleep(0.5)
    t0, w0 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
    time.sleep(3)
    t1, w1 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
    print(f"idle after delivery, 3s: cpu ticks {t1 - t0}, voluntary switches {w1 - w0}")
    assert t1 - t0 == 0
    assert w1 - w0 == 0
