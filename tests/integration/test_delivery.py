"""Local delivery into Maildirs, retries, bounces, the queue listing, and idleness."""
import poplib
import shutil
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


def test_a_crash_after_the_maildir_renames_before_the_queue_update_delivers_nothing_twice(server_factory):
    """Issue 10: a kill -9 after a batch's Maildir renames but before the queue recorded them
    delivered the whole message again (21 of 30 recipients got two copies). Here the crash
    point is made exact: the queue entry cannot be removed (spool/free/ is not a directory),
    so every copy is in the Maildirs while the entry still says nothing was delivered; then
    kill -9. Some copies are moved into cur/ as a POP session does, one flagged as a mail reader
    would. After the restart every user still has exactly one copy."""
    users = [f"u{n:02}" for n in range(1, 31)]
    s = server_factory(log_level="info")
    (s.dir / "users").write_text("".join(f"{u}:{{PLAIN}}{u}-pw\n" for u in users))
    s.start()
    free = s.dir / "spool" / "free"
    shutil.rmtree(free)
    free.write_text("the queue entry cannot be removed")
    assert send(s, [f"{u}@example.test" for u in users]) == {}
    s.wait_log("delivered but cannot remove the queue entry")
    for u in users:
        assert len(maildir_messages(s, u)) == 1, u
    # u01..u05 logged in over POP (QUIT moved new/ into cur/ with ":2,"); u06 read it with a client
    # that flagged it seen.
    for u in users[:5]:
        p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
        p.user(u)
        p.pass_(f"{u}-pw")
        assert p.stat()[0] == 1
        p.quit()
        assert [f.parent.name for f in maildir_messages(s, u)] == ["cur"], u
    (new,) = maildir_messages(s, users[5])
    new.rename(new.parent.parent / "cur" / (new.name + ":2,S"))
    s.kill9()
    free.unlink()
    free.mkdir(mode=0o700)
    mark = len(s.log())
    s.start()
    deadline = time.time() + 10
    while "empty" not in queue_listing(s).lower() and time.time() < deadline:
        time.sleep(0.05)
    assert "empty" in queue_listing(s).lower(), s.log()[mark:]
    after = s.log()[mark:]
    twice = [u for u in users if len(maildir_messages(s, u)) != 1]
    print(f"\nafter the restart: {len(twice)} of {len(users)} users with other than one copy, "
          f"{after.count('already has its copy')} copies found instead of written again")
    assert not twice, f"{len(twice)} of {len(users)} users got another copy: {twice}"
    assert after.count("already has its copy") == len(users)


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


def test_symlinked_maildir_directories_are_refused_not_followed(server_factory):
    """Issue 10 item 6: a Maildir's new/ or cur/ replaced by a symlink is neither written,
    read nor deleted through; the mail waits in the queue with the reason, POP says SYS/TEMP."""
    import poplib
    import pytest
    s = server_factory().start()
    mail = Path(s.settings["mailbox_dir"])
    elsewhere = s.dir / "elsewhere"
    (elsewhere / "new").mkdir(parents=True)
    (elsewhere / "cur").mkdir()
    precious = elsewhere / "cur" / "1.M1.other:2,"
    precious.write_bytes(b"Subject: not bob's\n\nkeep me\n")
    for sub in ("tmp", "cur"):
        (mail / "bob" / sub).mkdir(parents=True)
    (mail / "bob" / "new").symlink_to(elsewhere / "new")

    assert send(s, ["bob@example.test"]) == {}
    s.wait_log("deferred")
    link = mail / "bob" / "new"
    assert f"mailbox bob: refusing {link}: is a symbolic link" in s.log()
    listing = queue_listing(s)
    assert "1 message" in listing, listing
    assert f"refusing {link}: is a symbolic link" in listing, listing
    assert list((elsewhere / "new").iterdir()) == []
    assert list((mail / "bob" / "tmp").iterdir()) == []

    # carol's cur/ points at the other Maildir's cur/: the login fails, nothing is deleted.
    for sub in ("tmp", "new"):
        (mail / "carol" / sub).mkdir(parents=True)
    (mail / "carol" / "cur").symlink_to(elsewhere / "cur")
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    p.user("carol")
    with pytest.raises(poplib.error_proto) as e:
        p.pass_("carol-pw")
    assert e.value.args[0].startswith(b"-ERR [SYS/TEMP]"), e.value
    p.quit()
    s.wait_log(f"mailbox carol: refusing {mail / 'carol' / 'cur'}: is a symbolic link")
    assert precious.read_bytes() == b"Subject: not bob's\n\nkeep me\n"
    assert [f.name for f in (elsewhere / "cur").iterdir()] == ["1.M1.other:2,"]
    assert not (elsewhere / ".postling-pop.lock").exists()

    # The administrator replaces the link with a directory: the queued mail is delivered.
    link.unlink()
    link.mkdir()
    s.proc.send_signal(signal.SIGUSR2)
    wait_maildir(s, "bob", 1)
    assert list((elsewhere / "new").iterdir()) == []


def test_only_ascii_case_folds_in_local_parts(server_factory):
    """Issue 10 item 9: U+212A KELVIN SIGN is not `k`: \u212Aate@ is not kate, KATE@ is."""
    s = server_factory()
    with open(s.dir / "users", "a") as f:
        f.write("kate:{PLAIN}kate-pw\n")
    s.start()
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        c.ehlo()
        assert c.mail("sender@example.test", ["SMTPUTF8"])[0] == 250
        code, text = c.rcpt("\u212aate@example.test")
        assert code == 550 and b"5.1.1" in text, (code, text)
        assert c.rcpt("KATE@example.test")[0] == 250
        c.data(b"Subject: kelvin\r\n\r\nbody\r\n")
    body = wait_maildir(s, "kate", 1)[0].read_bytes()
    assert b"Delivered-To: KATE@example.test" in body
    s.wait_log(": removed\n")
    assert len(maildir_messages(s, "kate")) == 1
    assert not (Path(s.settings["mailbox_dir"]) / "\u212aate").exists()
