"""Message submission (RFC 6409) with AUTH (RFC 4954) on submission_listen (STARTTLS) and
smtps_listen (implicit TLS), against Python's smtplib, swaks and msmtp; relay rules on port 25
(relay_networks); the login throttle shared with POP."""
import base64
import shutil
import smtplib
import ssl
import subprocess

import pytest

from conftest import free_port, recv_line
from test_smtp import maildir_messages, wait_maildir
from test_tls import client_ctx, make_cert

# No Date, no Message-ID: the server adds them to submitted mail.
MSG = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: submitted\r\n\r\nhello\r\n"


@pytest.fixture
def sub(server_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    port, smtps = free_port(), free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key),
        submission_listen=f"127.0.0.1:{port}", smtps_listen=f"127.0.0.1:{smtps}",
        auth_failure_delay="1s",
    )
    s.sub_port, s.smtps_port, s.cert = port, smtps, cert
    return s.start()


def plain(user, pw):
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


def command(sock, line):
    """Sends one command line; returns the last line of its reply."""
    sock.sendall(line.encode() + b"\r\n")
    while True:
        reply = recv_line(sock, timeout=10)
        if len(reply) < 4 or reply[3:4] != b"-":
            return reply


def delivered(s, user):
    files = wait_maildir(s, user, 1)
    return files[0].read_bytes()


def test_smtplib_starttls_login_delivers_with_esmtpsa_and_added_headers(sub):
    s = sub
    with smtplib.SMTP("127.0.0.1", s.sub_port, timeout=10) as c:
        c.ehlo("client.example.test")
        c.starttls(context=client_ctx(s.cert))
        c.ehlo("client.example.test")
        assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
        c.login("bob", "bob-pw")
        c.sendmail("bob@example.test", ["alice@example.test"], MSG)
    text = delivered(s, "alice").decode()
    assert " with ESMTPSA (version=TLSv1.3" in text, text
    head = text.split("\r\n\r\n", 1)[0] if "\r\n\r\n" in text else text.split("\n\n", 1)[0]
    assert "\nDate: " in head, text
    assert "\nMessage-ID: <" in head and "@mail.example.test>" in head, text
    s.wait_log("auth=bob")
    assert "bob-pw" not in s.log()


def test_smtps_login_with_alice_sha512_password(sub):
    s = sub
    with smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, timeout=10,
                          context=client_ctx(s.cert)) as c:
        c.ehlo("client.example.test")
        c.login("alice", "alice-pw")
        c.sendmail("alice@example.test", ["bob@example.test"],
                   b"Subject: x\r\nDate: Fri, 04 Dec 2026 19:00:00 +0000\r\nMessage-ID: <keep@x>\r\n\r\nb\r\n")
    text = delivered(s, "bob").decode()
    assert " with ESMTPSA" in text, text
    assert text.count("Message-ID:") == 1 and "<keep@x>" in text, text
    assert text.count("Date:") == 1, text


def test_submission_needs_auth_sender_must_be_own_and_relay_is_queued(sub):
    s = sub
    c = s.connect(s.sub_port)
    assert recv_line(c).startswith(b"220")
    assert command(c, "EHLO c").startswith(b"250 ")
    assert command(c, "MAIL FROM:<bob@example.test>").startswith(b"530 5.7.0")
    assert command(c, "AUTH PLAIN " + plain("bob", "bob-pw")).startswith(b"235 2.7.0")
    assert command(c, "AUTH PLAIN " + plain("bob", "bob-pw")).startswith(b"503")
    r = command(c, "MAIL FROM:<alice@example.test>")
    assert r.startswith(b"553 5.7.1") and b"not owned by user bob" in r, r
    assert command(c, "MAIL FROM:<>").startswith(b"553 5.7.1")
    assert command(c, "MAIL FROM:<bob@example.test>").startswith(b"250")
    assert command(c, "AUTH LOGIN").startswith(b"503")
    # Authenticated: a recipient outside the local domains is accepted and queued for
    # delivery by MX (which waits here: nothing answers DNS in the tests).
    assert command(c, "RCPT TO:<someone@outside.example>").startswith(b"250")
    assert command(c, "DATA").startswith(b"354")
    assert command(c, "Subject: out\r\n\r\nbody\r\n.").startswith(b"250 2.0.0 Ok: queued as")
    assert command(c, "QUIT").startswith(b"221")
    c.close()
    s.wait_log("to=<someone@outside.example> relay=none", timeout=30)
    s.wait_log("DNS lookup of the MX of outside.example failed", timeout=30)


def test_port_25_offers_no_auth_and_refuses_relay_outside_relay_networks(server_factory):
    s = server_factory(relay_networks="10.0.0.0/8").start()
    c = s.connect()
    recv_line(c)
    c.sendall(b"EHLO c\r\n")
    ehlo = b""
    while not ehlo.endswith(b"\r\n") or b"250 " not in ehlo:
        ehlo += c.recv(4096)
    assert b"AUTH" not in ehlo, ehlo
    assert command(c, "AUTH PLAIN " + plain("bob", "bob-pw")).startswith(b"502")
    assert command(c, "MAIL FROM:<bob@example.test>").startswith(b"250")
    r = command(c, "RCPT TO:<victim@outside.example>")
    assert r.startswith(b"550 5.7.1") and b"Relay access denied" in r, r
    assert command(c, "RCPT TO:<alice@example.test>").startswith(b"250")
    c.close()


def test_port_25_relays_for_relay_networks_loopback_by_default(server_factory):
    s = server_factory(relay_networks="127.0.0.0/8, ::1/128").start()
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        c.ehlo("c")
        assert c.docmd("MAIL", "FROM:<x@y.example>")[0] == 250
        assert c.docmd("RCPT", "TO:<far@outside.example>")[0] == 250


def test_swaks_plain_with_starttls_and_login(sub):
    s = sub
    if not shutil.which("swaks"):
        pytest.fail("swaks is not installed (scripts/test installs it)")
    for mech, user, to in (("PLAIN", "bob", "alice"), ("LOGIN", "carol", "bob")):
        r = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{s.sub_port}", "--tls", "--auth", mech,
             "--auth-user", user, "--auth-password", f"{user}-pw",
             "--from", f"{user}@example.test", "--to", f"{to}@example.test",
             "--header", "Subject: swaks"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "235 2.7.0 Authentication successful" in r.stdout, r.stdout
    assert " with ESMTPSA" in delivered(s, "alice").decode()
    assert " with ESMTPSA" in delivered(s, "bob").decode()


def test_msmtp_submits_over_starttls(sub):
    s = sub
    if not shutil.which("msmtp"):
        pytest.fail("msmtp is not installed (scripts/test installs it)")
    r = subprocess.run(
        ["msmtp", "--host=127.0.0.1", f"--port={s.sub_port}", "--tls=on", "--tls-starttls=on",
         f"--tls-trust-file={s.cert}", "--tls-host-override=mail.example.test",
         "--auth=plain", "--user=bob", "--passwordeval=echo bob-pw",
         "--from=bob@example.test", "alice@example.test"],
        input=MSG.replace(b"\r\n", b"\n"), capture_output=True, timeout=30,
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    text = delivered(s, "alice").decode()
    assert " with ESMTPSA" in text and "Message-ID: <" in text, text


def test_wrong_password_is_535_and_counts_toward_the_throttle_shared_with_pop(sub):
    s = sub
    c = s.connect(s.sub_port)
    recv_line(c)
    command(c, "EHLO c")
    assert command(c, "AUTH PLAIN " + plain("bob", "Zx9guess")).startswith(b"535 5.7.8")
    assert command(c, "AUTH LOGIN").startswith(b"334 VXNlcm5hbWU6")
    assert command(c, base64.b64encode(b"bob").decode()).startswith(b"334 UGFzc3dvcmQ6")
    assert command(c, base64.b64encode(b"Qv4guess").decode()).startswith(b"535 5.7.8")
    s.wait_log("auth failed: smtp LOGIN from [127.0.0.1] user=<bob>")
    assert "auth failed: smtp PLAIN from [127.0.0.1] user=<bob>" in s.log()
    assert "Zx9guess" not in s.log() and "Qv4guess" not in s.log()
    # Fail on until the address is throttled (10 failures): the server then answers 421 and
    # closes. A session is closed after its third failure.
    throttled = False
    fails_here = 2
    for _ in range(12):
        if fails_here == 3:
            assert c.recv(10) == b"", "closed after the third failure"
            c.close()
            c = s.connect(s.sub_port)
            recv_line(c)
            command(c, "EHLO c")
            fails_here = 0
        r = command(c, "AUTH PLAIN " + plain("bob", "Zx9guess"))
        if r.startswith(b"421 4.7.0") and b"too many failed logins" in r:
            throttled = True
            break
        assert r.startswith(b"535 5.7.8"), r
        fails_here += 1
    assert throttled, s.log()
    c.close()
    # Now even the right password is refused, on SMTP and on POP3.
    c = s.connect(s.sub_port)
    recv_line(c)
    command(c, "EHLO c")
    assert command(c, "AUTH PLAIN " + plain("bob", "bob-pw")).startswith(b"421 4.7.0")
    c.close()
    p = s.connect(s.pop3_port)
    recv_line(p)
    p.sendall(b"USER bob\r\nPASS bob-pw\r\n")
    recv_line(p)
    assert recv_line(p, timeout=10).startswith(b"-ERR [SYS/TEMP]")
