"""The delay warning DSN (`delay_warning_time`): one `Action: delayed` report to the sender of
a message still queued, never a second one (not after more retries, not after a restart),
and `postling -q` showing each waiting recipient's last reason under it.

The message goes to an alias that forwards outside, to a domain whose DNS server (run by the
test on loopback) answers SERVFAIL: it is deferred on every attempt and never leaves the
machine."""
import re
import subprocess
import time

from conftest import ALIASES, BIN
from dnsserver import SERVFAIL
from outbound_fixtures import dns_server  # noqa: F401 (fixture)
from test_smtp import maildir_messages, wait_maildir


def send(server, sender, rcpts):
    import smtplib
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(b"Subject: stuck\r\nFrom: bob@example.test\r\n\r\nbody\r\n")
    assert code == 250, text
    return re.search(rb"queued as (\w+)", text).group(1).decode()


def wait_count(server, needle, n, timeout=20):
    """Waits until `needle` appears at least `n` times in the log; returns the count."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        c = server.log().count(needle)
        if c >= n:
            return c
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not {n} times in the log after {timeout}s:\n{server.log()}")


def listing(server):
    r = subprocess.run([str(BIN), "-c", str(server.conf), "-q"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def warnings(server):
    return [p for p in maildir_messages(server, "bob") if b"Action: delayed" in p.read_bytes()]


def test_one_delay_warning_reaches_the_sender_and_never_a_second(server_factory, dns_server):
    dns = dns_server({"elsewhere.test": SERVFAIL})
    s = server_factory(delay_warning_time="1s", retry_min="1s", retry_max="1s", dns_servers=dns.address)
    (s.dir / "aliases").write_text(ALIASES + "fwd: far@elsewhere.test\n")
    s.start()
    qid = send(s, "bob@example.test", ["fwd@example.test", "alice@example.test"])
    s.wait_log(f"{qid}: sender delay notification: ", timeout=20)
    wait_maildir(s, "bob", 1)
    report = warnings(s)[0].read_bytes()
    assert b"Subject: Delayed Mail (still being retried)" in report
    assert b"Final-Recipient: rfc822; fwd@example.test\nAction: delayed\nStatus: 4." in report
    assert b"DNS lookup of the MX of elsewhere.test failed" in report and b"keep trying until " in report
    assert b"alice@example.test" not in report.split(b"Delayed Message Headers")[0], "delivered"
    # More retries send no second warning.
    seen = s.log().count(f"{qid}: deferred")
    wait_count(s, f"{qid}: deferred", seen + 3)
    assert s.log().count(f"{qid}: sender delay notification: ") == 1
    # `postling -q`: the waiting recipient with its last reason under it.
    text = listing(s)
    assert re.search(r"\n  fwd@example\.test\n      \(4\.4\.3 DNS lookup of the MX of elsewhere\.test failed[^\n]*\)\n", text), text
    assert "alice@example.test" not in text
    # Nor after a restart: the state file says the warning went.
    s.stop()
    s.start()
    seen = s.log().count(f"{qid}: deferred")
    wait_count(s, f"{qid}: deferred", seen + 3)
    assert s.log().count(f"{qid}: sender delay notification: ") == 1
    assert len(warnings(s)) == 1, [p.read_bytes()[:200] for p in warnings(s)]
    assert len(maildir_messages(s, "bob")) == 1


def test_no_delay_warning_when_turned_off(server_factory, dns_server):
    dns = dns_server({"elsewhere.test": SERVFAIL})
    s = server_factory(delay_warning_time="0", retry_min="1s", retry_max="1s", dns_servers=dns.address)
    (s.dir / "aliases").write_text(ALIASES + "fwd: far@elsewhere.test\n")
    s.start()
    qid = send(s, "bob@example.test", ["fwd@example.test"])
    wait_count(s, f"{qid}: deferred", 4)
    assert "delay notification" not in s.log()
    assert maildir_messages(s, "bob") == []
