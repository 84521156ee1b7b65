"""The peers of the outbound tests (outbound_fixtures.py) checked on their own, with Python's
smtplib and ssl as the client, so a failing outbound test points at postling, not at them."""
import smtplib
import socket
import ssl
import subprocess

import pytest

from conftest import recv_line
from outbound_fixtures import (  # noqa: F401 (fixtures)
    listening, outbound_ca, sink, smarthost, stall_server,
)
from test_smtp import wait_maildir


def send(port, sender, rcpts, subject):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        return c.sendmail(sender, rcpts, f"Subject: {subject}\r\n\r\n.leading dot\r\nbody\r\n".encode())


def test_sink_dumps_each_transaction(sink):
    s = sink()
    assert send(s.port, "a@example.test", ["x@remote.test", "y@remote.test"], "one") == {}
    [dump] = s.wait_messages(1)
    assert b"X-Mail-Args: <a@example.test>\n" in dump
    assert b"X-Rcpt-Args: <x@remote.test>\nX-Rcpt-Args: <y@remote.test>\n" in dump
    assert b"Subject: one\n\n.leading dot\nbody\n" in dump  # dot-unstuffed, LF line ends
    send(s.port, "a@example.test", ["x@remote.test"], "two")
    assert len(s.wait_messages(2)) == 2


def test_sink_soft_reject_at_rcpt_then_restart_accepts_on_the_same_port(sink):
    s = sink("-r", "rcpt")
    port = s.port
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        assert c.mail("a@example.test")[0] == 250
        code, text = c.rcpt("x@remote.test")
        assert (code, text) == (450, b"4.3.0 Error: command failed")
    s.restart()
    assert s.port == port
    assert send(port, "a@example.test", ["x@remote.test"], "later") == {}
    assert len(s.wait_messages(1)) == 1
    assert s.messages()[0].count(b"Subject: later") == 1


def test_sink_hard_reject_at_data_and_disconnect(sink):
    s = sink("-f", "data")
    with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        c.mail("a@example.test")
        assert c.rcpt("x@remote.test")[0] == 250
        assert c.docmd("DATA") == (500, b"5.3.0 Error: command failed")
    s.restart("-q", "mail")
    with smtplib.SMTP("127.0.0.1", s.port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.mail("a@example.test")
    assert s.messages() == []
    s.stop()
    assert not listening(s.port)


def test_stall_server_greets_then_never_answers(stall_server):
    st = stall_server()
    with socket.create_connection(("127.0.0.1", st.port), timeout=5) as c:
        assert recv_line(c) == b"220 stall.test ESMTP\r\n"
        c.sendall(b"EHLO client.test\r\n")
        c.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.recv(1)
    assert st.connections == 1
    st.closed.wait(5)
    assert st.closed.is_set()
    assert b"EHLO client.test" in b"".join(st.lines)


def test_stall_server_without_greeting(stall_server):
    st = stall_server(greet=False)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtplib.SMTP("127.0.0.1", st.port, local_hostname="client.test", timeout=0.5)
    assert st.connected.is_set() and st.connections == 1


def test_stall_server_takes_the_data_and_never_acknowledges_it(stall_server):
    st = stall_server(answer_until=".")
    c = smtplib.SMTP("127.0.0.1", st.port, local_hostname="client.test", timeout=1)
    c.ehlo("client.test")
    assert c.mail("a@example.test")[0] == 250
    assert c.rcpt("x@remote.test")[0] == 250
    assert c.docmd("DATA")[0] == 354
    c.send(b"Subject: s\r\n\r\nbody\r\n.\r\n")
    assert st.got_data.wait(5)
    with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
        c.getreply()
    c.close()
    assert st.data == b"Subject: s\r\n\r\nbody\r\n.\r\n"


def test_ca_signs_a_leaf_for_smarthost_test_and_127_0_0_1(outbound_ca):
    r = subprocess.run(["openssl", "verify", "-CAfile", str(outbound_ca.ca), str(outbound_ca.cert)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["openssl", "verify", "-CAfile", str(outbound_ca.other_ca), str(outbound_ca.cert)],
                       capture_output=True, text=True)
    assert r.returncode != 0


def ctx(cafile):
    c = ssl.create_default_context(cafile=str(cafile))
    return c


def test_smarthost_tls_verifies_with_the_test_ca_by_name_and_ip(server_factory, outbound_ca):
    b = smarthost(server_factory, outbound_ca)
    for hostname in ("smarthost.test", "127.0.0.1"):
        with smtplib.SMTP("127.0.0.1", b.smtp_port, local_hostname="client.test", timeout=10) as c:
            c._host = hostname  # the name smtplib checks the certificate against
            c.ehlo("client.test")
            c.starttls(context=ctx(outbound_ca.ca))
            c.ehlo("client.test")
            assert c.sendmail("carol@example.test", ["bob@remote.test"], b"Subject: tls\r\n\r\nx\r\n") == {}
    with smtplib.SMTP_SSL("127.0.0.1", b.smtps_port, local_hostname="client.test", timeout=10, context=ctx(outbound_ca.ca)) as c:
        c.ehlo("client.test")
    with smtplib.SMTP("127.0.0.1", b.smtp_port, local_hostname="client.test", timeout=10) as c:
        c._host = "smarthost.test"
        c.ehlo("client.test")
        with pytest.raises(ssl.SSLCertVerificationError):
            c.starttls(context=ctx(outbound_ca.other_ca))
    wait_maildir(b, "bob", 2)


def test_smarthost_submission_auth_enforces_the_users_own_address(server_factory, outbound_ca):
    b = smarthost(server_factory, outbound_ca)
    with smtplib.SMTP("127.0.0.1", b.sub_port, local_hostname="client.test", timeout=10) as c:
        c._host = "smarthost.test"
        c.ehlo("client.test")
        c.starttls(context=ctx(outbound_ca.ca))
        c.ehlo("client.test")
        c.login("bob", "bob-pw")
        with pytest.raises(smtplib.SMTPSenderRefused):
            c.sendmail("carol@example.test", ["alice@remote.test"], b"Subject: forged\r\n\r\nx\r\n")
        c.rset()
        assert c.sendmail("bob@remote.test", ["alice@remote.test"], b"Subject: own\r\n\r\nx\r\n") == {}
    assert b"Subject: own" in wait_maildir(b, "alice", 1)[0].read_bytes()
    with smtplib.SMTP("127.0.0.1", b.sub_port, local_hostname="client.test", timeout=10) as c:
        c._host = "smarthost.test"
        c.ehlo("client.test")
        c.starttls(context=ctx(outbound_ca.ca))
        c.ehlo("client.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("bob", "wrong-pw")


def test_smarthost_refuses_an_unknown_user_with_550(server_factory, outbound_ca):
    b = smarthost(server_factory, outbound_ca)
    with smtplib.SMTP("127.0.0.1", b.smtp_port, local_hostname="client.test", timeout=10) as c:
        c.ehlo("client.test")
        c.mail("carol@example.test")
        code, _ = c.rcpt("ghost@remote.test")
        assert code == 550


def test_a_sink_takes_over_a_stopped_stall_servers_port(stall_server, sink):
    # The kill -9 test swaps the peer on a port the server under test is configured with.
    st = stall_server(answer_until=".")
    c = smtplib.SMTP("127.0.0.1", st.port, local_hostname="client.test", timeout=5)
    c.ehlo("client.test")
    c.close()
    port = st.port
    st.stop()
    sk = sink(port=port)
    assert send(port, "a@example.test", ["x@remote.test"], "moved") == {}
    assert b"Subject: moved" in sk.wait_messages(1)[0]
