"""TLS: implicit TLS on the smtps/pop3s ports, STARTTLS and STLS, handshake deadlines and
certificate reload, against Python's ssl clients and openssl s_client."""
import poplib
import select
import signal
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, recv_line
from test_smtp import maildir_messages, wait_maildir

MSG = b"From: a@example.test\r\nTo: bob@example.test\r\nSubject: tls\r\n\r\nover TLS\r\n"


def make_cert(d: Path, name="tls", days=30, cn="mail.example.test"):
    cert, key = d / f"{name}-cert.pem", d / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-days", str(days), "-nodes", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn}",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def client_ctx(cert):
    """Verifies the test certificate; the clients connect to 127.0.0.1, so its name is not
    compared (smtplib and poplib use the address as the server name)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    return ctx


@pytest.fixture
def tls_server(server_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    smtps, pop3s = free_port(), free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key),
        smtps_listen=f"127.0.0.1:{smtps}", pop3s_listen=f"127.0.0.1:{pop3s}",
        tls_handshake_timeout="2s",
    )
    s.smtps_port, s.pop3s_port, s.cert, s.key = smtps, pop3s, cert, key
    return s.start()


def wait_closed(sock, timeout):
    """Reads until the server closes; returns the seconds it took and what arrived."""
    start = time.time()
    got = b""
    sock.settimeout(timeout)
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return time.time() - start, got


def test_smtps_delivers_and_pop3s_retrieves(tls_server):
    s = tls_server
    with smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, timeout=10,
                          context=client_ctx(s.cert)) as c:
        c.ehlo("client.example.test")
        # Already in TLS: STARTTLS is neither offered nor accepted.
        assert not c.has_extn("starttls")
        assert c.docmd("STARTTLS")[0] == 503
        # smtps_listen is a submission port (RFC 8314): log in first.
        c.login("bob", "bob-pw")
        c.sendmail("bob@example.test", ["bob@example.test"], MSG)
    wait_maildir(s, "bob", 1)
    text = maildir_messages(s, "bob")[0].read_bytes()
    assert b"with ESMTPSA (version=TLSv1.3 cipher=TLS_" in text, text
    p = poplib.POP3_SSL("127.0.0.1", s.pop3s_port, timeout=10, context=client_ctx(s.cert))
    p.user("bob")
    p.pass_("bob-pw")
    lines = p.retr(1)[1]
    assert b"over TLS" in lines
    p.quit()
    s.wait_log("pop3 close 127.0.0.1")
    log = s.log()
    assert "(TLSv1.3 TLS_" in log, log


def test_openssl_s_client_implicit_ports(tls_server):
    s = tls_server
    for port, banner in ((s.smtps_port, b"220 "), (s.pop3s_port, b"+OK")):
        out = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
             "mail.example.test", "-CAfile", str(s.cert), "-verify_return_error", "-quiet"],
            input=b"QUIT\r\n", capture_output=True, timeout=20,
        )
        assert banner in out.stdout, (out.stdout, out.stderr)


def test_stalled_garbage_and_trickling_handshakes_closed_at_deadline(tls_server):
    s = tls_server
    stalled = s.connect(s.smtps_port)
    garbage = s.connect(s.pop3s_port)
    garbage.sendall(b"EHLO plaintext.example\r\n")
    # A real ClientHello, fed one byte at a time until the deadline passes.
    ctx = client_ctx(s.cert)
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inb, outb, server_hostname="mail.example.test")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outb.read()
    trickle = s.connect(s.smtps_port)
    trickle.sendall(hello[:1])
    # Meanwhile another client is served at once.
    t0 = time.time()
    with smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, timeout=10,
                          context=client_ctx(s.cert)) as c:
        assert c.noop()[0] == 250
    assert time.time() - t0 < 1.5
    # Garbage gets an alert (or nothing) and a close at once: never plaintext.
    took, got = wait_closed(garbage, 5)
    assert took < 1.5 and not got.startswith(b"-ERR") and b"+OK" not in got, got
    # Trickle the ClientHello: every byte arrives, the deadline still holds.
    sent = 1
    deadline = time.time() + 6
    closed = False
    while time.time() < deadline and not closed:
        r, _, _ = select.select([trickle], [], [], 0.3)
        if r:
            closed = trickle.recv(4096) == b""
            break
        if sent < len(hello):
            try:
                trickle.sendall(hello[sent:sent + 1])
            except OSError:
                closed = True
            sent += 1
    if not closed:
        took, _ = wait_closed(trickle, 5)
    took, got = wait_closed(stalled, 5)
    assert got == b"", got
    s.wait_log("TLS handshake timeout")
    assert s.log().count("TLS handshake timeout") >= 2, s.log()


def test_stall_after_starttls_is_closed_at_the_handshake_deadline(tls_server):
    s = tls_server
    raw = s.connect(s.smtp_port)
    f = raw.makefile("rb")
    read_reply(f)
    raw.sendall(b"STARTTLS\r\n")
    assert read_reply(f) == [b"220 2.0.0 Ready to start TLS\r\n"]
    took, got = wait_closed(raw, 6)
    assert got == b"" and took < 5, (took, got)
    s.wait_log("TLS handshake timeout")


def test_2000_stalled_implicit_tls_connections(server_factory, tmp_path):
    """A crowd that opens the SMTPS port and stalls: plaintext clients are served in under a
    second, and the server's memory stays bounded by max_tls_handshakes."""
    cert, key = make_cert(tmp_path)
    smtps = free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key), smtps_listen=f"127.0.0.1:{smtps}",
        max_connections="4000", max_connections_per_ip="4000",
    ).start()
    rss_before = int(s.status("RssAnon").split()[0])
    crowd = []
    for _ in range(2000):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", smtps))
        crowd.append(c)
    s.wait_log("smtp connect from")
    start = time.time()
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        assert c.noop()[0] == 250
    served = time.time() - start
    rss_after = int(s.status("RssAnon").split()[0])
    print(f"plaintext NOOP served in {served:.3f}s beside 2000 stalled TLS connections; "
          f"RssAnon {rss_before} -> {rss_after} KiB")
    assert served < 1.0, served
    assert rss_after - rss_before < 4096, (rss_before, rss_after)
    for c in crowd:
        c.close()


def test_implicit_tls_refusal_is_a_close_not_plaintext(server_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    smtps = free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key), smtps_listen=f"127.0.0.1:{smtps}",
        max_connections_per_ip="1",
    ).start()
    first = s.connect(smtps)
    s.wait_log(f"smtp connect from")
    second = s.connect(smtps)
    took, got = wait_closed(second, 5)
    assert got == b"", got
    first.close()


def test_mismatched_key_fails_check_naming_the_file(server_factory, tmp_path):
    cert, _ = make_cert(tmp_path, "one")
    _, key2 = make_cert(tmp_path, "two")
    s = server_factory(tls_cert=str(cert), tls_key=str(key2))
    out = subprocess.run([str(Path(__import__("conftest").BIN)), "-c", str(s.conf), "-t"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert str(key2) in text and "does not match" in text and f"{s.conf}:" in text, text
    assert "tls_key" in text, text


def test_cert_without_key_is_a_config_error(server_factory, tmp_path):
    cert, _ = make_cert(tmp_path)
    s = server_factory(tls_cert=str(cert))
    out = subprocess.run([str(Path(__import__("conftest").BIN)), "-c", str(s.conf), "-t"],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "tls_key" in out.stdout + out.stderr


def peer_cert_serial(port, cafile):
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.example.test") as t:
            return ssl.DER_cert_to_PEM_cert(t.getpeercert(binary_form=True))


def test_sighup_reloads_certificate_and_keeps_old_on_error(tls_server, tmp_path):
    s = tls_server
    first = peer_cert_serial(s.smtps_port, s.cert)
    assert first == s.cert.read_text()
    # A session open across the reload keeps its certificate and goes on working.
    old = smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, timeout=10, context=client_ctx(s.cert))
    old_cert = ssl.DER_cert_to_PEM_cert(old.sock.getpeercert(binary_form=True))
    # The new certificate expires within 14 days: the reload warns.
    new_cert, new_key = make_cert(tmp_path, "new", days=5)
    s.cert.write_bytes(new_cert.read_bytes())
    s.key.write_bytes(new_key.read_bytes())
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("TLS certificate loaded from")
    assert "expires in" in s.log()
    assert peer_cert_serial(s.smtps_port, new_cert) == new_cert.read_text()
    assert old.noop()[0] == 250 and old_cert == first
    old.quit()
    # A broken certificate keeps the current one, and the log says why.
    s.cert.write_text("not a certificate\n")
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("keeping the previous TLS certificate")
    assert peer_cert_serial(s.smtps_port, new_cert) == new_cert.read_text()


def test_expiring_certificate_warns_at_start(server_factory, tmp_path):
    cert, key = make_cert(tmp_path, days=3)
    s = server_factory(tls_cert=str(cert), tls_key=str(key)).start()
    s.wait_log("expires in")


def read_reply(f):
    """One SMTP reply (all its lines) from a file object."""
    lines = []
    while True:
        line = f.readline()
        assert line, f"connection closed after {lines}"
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def test_starttls_delivers_with_esmtps_received_header(tls_server):
    s = tls_server
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        c.ehlo("client.example.test")
        assert c.has_extn("starttls")
        c.starttls(context=client_ctx(s.cert))
        c.ehlo("client.example.test")
        assert not c.has_extn("starttls")
        code, _ = c.docmd("STARTTLS")
        assert code == 503
        c.sendmail("a@example.test", ["bob@example.test"], MSG)
    wait_maildir(s, "bob", 1)
    text = maildir_messages(s, "bob")[0].read_bytes()
    assert b"with ESMTPS (version=TLSv1.3 cipher=TLS_" in text, text
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    caps = p.capa()
    assert "STLS" in caps
    p.stls(context=client_ctx(s.cert))
    assert "STLS" not in p.capa()
    p.user("bob")
    p.pass_("bob-pw")
    assert b"over TLS" in b"\n".join(p.retr(1)[1])
    p.quit()


def test_openssl_s_client_starttls(tls_server):
    s = tls_server
    for proto, port, want in (("smtp", s.smtp_port, b"250 "), ("pop3", s.pop3_port, b"+OK")):
        out = subprocess.run(
            ["openssl", "s_client", "-starttls", proto, "-connect", f"127.0.0.1:{port}",
             "-CAfile", str(s.cert), "-verify_return_error", "-quiet"],
            input=b"NOOP\r\nQUIT\r\n", capture_output=True, timeout=20,
        )
        assert want in out.stdout, (proto, out.stdout, out.stderr)


def test_starttls_injection_is_not_executed(tls_server):
    s = tls_server
    raw = s.connect(s.smtp_port)
    f = raw.makefile("rb")
    assert read_reply(f)[0].startswith(b"220 ")
    raw.sendall(b"EHLO client.example.test\r\n")
    assert b"250-STARTTLS\r\n" in read_reply(f)
    raw.sendall(b"STARTTLS\r\nRSET\r\n")
    assert read_reply(f) == [b"220 2.0.0 Ready to start TLS\r\n"]
    t = client_ctx(s.cert).wrap_socket(raw, server_hostname="mail.example.test")
    tf = t.makefile("rb")
    t.sendall(b"EHLO client.example.test\r\n")
    # The first reply over TLS answers the EHLO: the RSET sent in plaintext was dropped.
    first = read_reply(tf)
    assert first[0] == b"250-mail.example.test\r\n", first
    assert b"250-STARTTLS\r\n" not in first
    t.close()


def test_stls_injection_is_not_executed(tls_server):
    s = tls_server
    raw = s.connect(s.pop3_port)
    f = raw.makefile("rb")
    assert f.readline().startswith(b"+OK")
    raw.sendall(b"STLS\r\nCAPA\r\n")
    assert f.readline() == b"+OK Begin TLS negotiation\r\n"
    t = client_ctx(s.cert).wrap_socket(raw, server_hostname="mail.example.test")
    tf = t.makefile("rb")
    t.sendall(b"NOOP\r\n")
    first = tf.readline()
    assert first.startswith(b"-ERR"), first
    t.sendall(b"STLS\r\n")
    assert tf.readline() == b"-ERR command not permitted when TLS active\r\n"
    t.close()


def test_no_certificate_means_502_and_no_stls(server):
    raw = server.connect(server.smtp_port)
    f = raw.makefile("rb")
    read_reply(f)
    raw.sendall(b"EHLO c.example.test\r\n")
    assert b"STARTTLS" not in b"".join(read_reply(f))
    raw.sendall(b"STARTTLS\r\n")
    assert read_reply(f)[0].startswith(b"502 5.5.1")
    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=10)
    assert "STLS" not in p.capa()
    with pytest.raises(poplib.error_proto):
        p._shortcmd("STLS")
    p.quit()


def test_memory_per_idle_tls_connection(server_factory, tmp_path):
    """RSS growth per idle TLS connection after the handshake and greeting (issue #12 budget:
    6 KiB). Prints the figure; asserts a generous bound (the allocator rounds)."""
    cert, key = make_cert(tmp_path)
    smtps = free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key), smtps_listen=f"127.0.0.1:{smtps}",
        max_connections="1000", max_connections_per_ip="1000",
    ).start()
    ctx = client_ctx(cert)

    def open_one():
        t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", smtps), timeout=10),
                            server_hostname="mail.example.test")
        assert recv_line(t).startswith(b"220 ")
        return t

    def rss_kib():
        return int(s.status("RssAnon").split()[0])

    warm = [open_one() for _ in range(50)]
    before = rss_kib()
    n = 400
    conns = [open_one() for _ in range(n)]
    # Every connection's greeting arrived, so the server is idle with all of them open.
    after = rss_kib()
    per_conn = (after - before) * 1024 / n
    print(f"RssAnon {before} KiB -> {after} KiB with {n} more idle TLS connections: "
          f"{per_conn:.0f} bytes each")
    assert per_conn < 12 * 1024, per_conn
    for t in conns + warm:
        t.close()


def test_swaks_tls_and_tlsc(tls_server):
    s = tls_server
    # smtps_listen is a submission port (RFC 8314): swaks logs in there.
    login = ["--auth", "PLAIN", "--auth-user", "bob", "--auth-password", "bob-pw",
             "--from", "bob@example.test"]
    for i, (flag, port, auth) in enumerate((("--tls", s.smtp_port, ["--from", "a@example.test"]),
                                            ("--tlsc", s.smtps_port, login))):
        r = subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(port), flag,
             "--tls-verify", "--tls-ca-path", str(s.cert), *auth,
             "--to", "bob@example.test",
             "--header", f"Subject: swaks {flag}"],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "TLS started" in r.stdout or "TLS started" in r.stderr, r.stdout
        wait_maildir(s, "bob", i + 1)


def test_mpop_and_fetchmail_default_tls(tls_server, tmp_path):
    import os
    s = tls_server
    for n in range(3):
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
            c.sendmail("a@example.test", ["bob@example.test"], MSG)
    wait_maildir(s, "bob", 3)
    # mpop: STARTTLS-style STLS is its default; then implicit TLS on the POP3S port.
    for i, (port, starttls) in enumerate(((s.pop3_port, "on"), (s.pop3s_port, "off"))):
        out = tmp_path / f"mpop{i}.mbox"
        out.write_bytes(b"")
        r = subprocess.run(
            ["mpop", "--host=127.0.0.1", f"--port={port}", "--tls=on",
             f"--tls-starttls={starttls}", f"--tls-trust-file={s.cert}",
             "--tls-host-override=mail.example.test", "--auth=user", "--user=bob",
             "--passwordeval=echo bob-pw", f"--delivery=mbox,{out}", "--keep=on",
             "--only-new=off", "--uidls-file=" + str(tmp_path / f"uidls{i}")],
            capture_output=True, text=True, timeout=30,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert out.read_bytes().count(b"over TLS") == 3
    # fetchmail in its default configuration: no sslproto, so it upgrades with STLS.
    rc = tmp_path / "fetchmailrc"
    sink = tmp_path / "fetchmail.out"
    rc.write_text(
        f"poll 127.0.0.1 protocol POP3 port {s.pop3_port} auth password\n"
        f"  user bob password bob-pw sslcertfile {s.cert} sslcommonname mail.example.test\n"
        f"  mda 'cat >> {sink}'\n"
    )
    os.chmod(rc, 0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    r = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sink.read_bytes().count(b"over TLS") == 3
    # It really upgraded: its session's close line names TLS, and no USER went in the clear.
    assert "STLS" in r.stdout + r.stderr, r.stdout + r.stderr
    closes = [l for l in s.log().splitlines() if "pop3 close" in l]
    assert closes and all("TLSv1." in l for l in closes), closes


def test_max_tls_handshakes_holds_the_rest_in_the_backlog(server_factory, tmp_path):
    cert, key = make_cert(tmp_path)
    smtps = free_port()
    s = server_factory(
        tls_cert=str(cert), tls_key=str(key), smtps_listen=f"127.0.0.1:{smtps}",
        max_tls_handshakes="2", tls_handshake_timeout="2s",
    ).start()
    stalled = [s.connect(smtps) for _ in range(2)]
    s.wait_log("smtp connect from")
    deadline = time.time() + 5
    while s.log().count("smtp connect from") < 2 and time.time() < deadline:
        time.sleep(0.02)
    start = time.time()
    # Plaintext is served at once meanwhile.
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        assert c.noop()[0] == 250
    assert time.time() - start < 1.5
    # A third TLS client waits in the backlog until a stalled handshake reaches its deadline.
    with smtplib.SMTP_SSL("127.0.0.1", smtps, timeout=10, context=client_ctx(cert)) as c:
        assert c.noop()[0] == 250
    waited = time.time() - start
    print(f"third TLS client served after {waited:.2f}s")
    assert waited >= 1.5, waited
    assert "TLS handshake timeout" in s.log()
    for t in stalled:
        t.close()


def test_large_message_both_ways_over_tls(tls_server):
    """5 MB through DATA over SMTPS (the session's input buffer fills, TLS holds records back)
    and back out through RETR over POP3S (output in many records), byte for byte."""
    s = tls_server
    line = b"0123456789" * 9 + b"abcdefg\r\n"
    # Date and Message-ID present: the submission port adds nothing to the header.
    body = (b"Subject: big\r\nDate: Fri, 04 Dec 2026 19:00:00 +0000\r\nMessage-ID: <big@x>\r\n\r\n"
            + line * (5 * 1024 * 1024 // len(line)))
    with smtplib.SMTP_SSL("127.0.0.1", s.smtps_port, timeout=30, context=client_ctx(s.cert)) as c:
        c.login("bob", "bob-pw")
        c.sendmail("bob@example.test", ["bob@example.test"], body)
    wait_maildir(s, "bob", 1)
    p = poplib.POP3_SSL("127.0.0.1", s.pop3s_port, timeout=30, context=client_ctx(s.cert))
    p.user("bob")
    p.pass_("bob-pw")
    lines = p.retr(1)[1]
    got = b"\r\n".join(lines) + b"\r\n"
    assert got.endswith(body), (len(got), len(body))
    p.quit()
