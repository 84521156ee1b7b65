"""Foundation: start-up, listeners, greetings, deadlines, limits, descriptor exhaustion, stop."""
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import BIN, Server, free_port, have_ipv6, recv_line


def run(args, **kw):
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=30, **kw)


def test_help_version_and_bad_usage():
    r = run(["-h"])
    assert r.returncode == 0
    assert "Usage: postling" in r.stdout and "-t" in r.stdout
    r = run(["-V"])
    assert r.returncode == 0 and r.stdout.startswith("postling ")
    r = run(["-x"])
    assert r.returncode == 64
    assert "Unrecognized option" in r.stderr
    r = run(["extra-arg"])
    assert r.returncode == 64


def test_config_check_good_and_broken(server_factory):
    s = server_factory()
    r = run(["-t", "-c", str(s.conf)])
    # The test users have {PLAIN} passwords: two warnings, counted in the summary.
    assert (r.returncode, r.stdout) == (0, "postling: config OK (2 warnings)\n"), r.stderr
    bad = s.dir / "bad.conf"
    bad.write_text(
        "hostname = mail.example.test\n"
        "smtp_listn = 127.0.0.1:2525\n"
        "max_message_size = 10Q\n"
        "smtp_timeout = forever\n"
        "smtp_listen = localhost:25\n"
    )
    r = run(["-t", "-c", str(bad)])
    assert r.returncode == 78
    errors = [l for l in r.stderr.splitlines() if l.startswith(str(bad))]
    # Every error at once, each naming file, line and key and saying what was expected.
    assert errors == [
        f"{bad}:2: smtp_listn: unknown key; did you mean smtp_listen? (expected one of the keys listed in postling.conf(5) and postling.conf.example)",
        f"{bad}:3: max_message_size: `10Q` has an unknown suffix `Q` (expected a size from 1 to 1G: a whole number of bytes, or with a K, M or G suffix (1K = 1024))",
        f"{bad}:4: smtp_timeout: `forever` is not a duration (expected a duration: a whole number with s, m, h or d (a plain number is seconds), 1s to 3650d)",
        f"{bad}:5: smtp_listen: `localhost:25` names the host `localhost`; an IP literal is required, since start-up never uses DNS (expected a comma-separated list of IP:PORT or [IPv6]:PORT (port 1-65535), or empty for off)",
    ], r.stderr
    # One summary line, last; a check does not talk of starting.
    assert r.stderr.splitlines()[-1] == f"postling: 4 errors in {bad}", r.stderr
    assert "not started" not in r.stderr
    # -t needs neither the spool nor the mailbox directories.
    assert not (s.dir / "spool").exists() and not (s.dir / "mail").exists()
    # The server refuses to start on it, with the same exit status.
    r = run(["-f", "-c", str(bad)])
    assert r.returncode == 78
    assert r.stderr.splitlines()[-1] == f"postling: 4 errors in {bad}; not started", r.stderr


def test_config_check_names_bad_relay_settings(server_factory):
    """`-t` reports a bad relay_host and a relay_auth_file others can read with file, line and
    key; the queue listing (any user, no relay) does not read the credentials."""
    s = server_factory()
    sink = free_port()  # never connected to: nothing delivers outbound yet
    bad = s.dir / "relay.conf"
    base = s.conf.read_text()
    bad.write_text(base + "relay_host = smtp..example.net:587\n")
    n = len(base.splitlines()) + 1
    r = run(["-t", "-c", str(bad)])
    assert r.returncode == 78, r.stderr
    form = ("HOST or HOST:PORT, HOST a host name, an IPv4 address or an [IPv6] address "
            "(brackets optional around the others), or empty")
    assert f"{bad}:{n}: relay_host: `smtp..example.net:587`: `smtp..example.net` has an empty " \
        f"label (two dots, or a dot at an end) (expected {form})" in r.stderr.splitlines(), r.stderr
    assert r.stderr.splitlines()[-1] == f"postling: 1 error in {bad}", r.stderr

    auth = s.dir / "relay_auth"
    auth.write_text("# the provider's login\nalice@example.net s3cret\n")
    auth.chmod(0o644)
    bad.write_text(base + f"relay_host = 127.0.0.1:{sink}\nrelay_auth_file = relay_auth\n")
    r = run(["-t", "-c", str(bad)])
    assert r.returncode == 78, r.stderr
    assert f"{bad}:{n + 1}: relay_auth_file: {auth} holds a password but its mode 0644 lets " \
        f"other users read or change it; run `chmod 600 {auth}` (expected a file only its " \
        "owner can read (chmod 600) holding one line `user password`)" in r.stderr.splitlines(), \
        r.stderr
    assert "s3cret" not in r.stderr
    r = run(["-f", "-c", str(bad)])
    assert r.returncode == 78 and r.stderr.endswith("; not started\n"), r.stderr
    # The queue listing runs as any user and never reads the credentials.
    r = run(["-q", "-c", str(bad)])
    assert r.returncode == 0, r.stderr
    r = run(["-c", str(bad), "sendmail", "-bp"])
    assert r.returncode == 0, r.stderr
    auth.chmod(0o600)
    r = run(["-t", "-c", str(bad)])
    assert (r.returncode, r.stdout) == (0, "postling: config OK (2 warnings)\n"), r.stderr


def test_sighup_reads_the_relay_auth_file_again(server_factory):
    s = server_factory()
    auth = s.dir / "relay_auth"
    auth.write_text("alice@example.net s3cret\n")
    auth.chmod(0o600)
    s.settings.update(relay_host=f"127.0.0.1:{free_port()}", relay_auth_file="relay_auth")
    s.write_config()
    s.start()
    auth.chmod(0o640)
    s.proc.send_signal(signal.SIGHUP)
    s.wait_log("still running on the previous config")
    s.wait_log("relay_auth_file: " + str(auth) + " holds a password but its mode 0640")
    # Still serving on the old config.
    with s.connect() as c:
        assert recv_line(c).startswith(b"220 ")
    auth.chmod(0o600)
    mark = s.log().count("reloaded ")
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while s.log().count("reloaded ") == mark and time.time() < deadline:
        time.sleep(0.02)
    assert s.log().count("reloaded ") == mark + 1, s.log()


def test_greets_on_every_configured_address(server_factory):
    v6 = have_ipv6()
    s = server_factory(pop2_listen=None)
    s.pop2_port = free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    if v6:
        s.smtp6_port = free_port(socket.AF_INET6, "::1")
        s.settings["smtp_listen"] += f", [::1]:{s.smtp6_port}"
    s.write_config()
    s.start()
    with s.connect(s.smtp_port) as c:
        assert recv_line(c) == b"220 mail.example.test ESMTP postling\r\n"
    with s.connect(s.pop3_port) as c:
        assert recv_line(c).startswith(b"+OK ")
    with s.connect(s.pop2_port) as c:
        assert recv_line(c).startswith(b"+ POP2 ")
    if v6:
        with socket.create_connection(("::1", s.smtp6_port), timeout=5) as c:
            assert recv_line(c) == b"220 mail.example.test ESMTP postling\r\n"
    log = s.log()
    assert f"listening for smtp on 127.0.0.1:{s.smtp_port}" in log
    assert f"listening for pop2 on 127.0.0.1:{s.pop2_port}" in log


def test_busy_port_exits_71_naming_the_address(server_factory):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    s = server_factory(smtp_listen=f"127.0.0.1:{port}")
    s.start(wait=False)
    assert s.proc.wait(10) == 71
    log = s.log()
    assert f"cannot listen for SMTP on 127.0.0.1:{port}" in log
    assert "Address already in use" in log
    assert "smtp_listen" in log
    assert log.count("cannot listen") == 1, "one clear line, not a cascade"
    # Never half-started: the POP3 port was not left listening.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.pop3_port), timeout=1)
    blocker.close()


def test_restart_while_old_connection_lingers(server_factory):
    s = server_factory()
    s.start()
    c = s.connect()
    assert recv_line(c).startswith(b"220")
    assert s.stop() == 0
    # The server closed first, so its side of the connection sits in TIME_WAIT / FIN_WAIT.
    s.start()
    with s.connect() as c2:
        assert recv_line(c2).startswith(b"220")
    c.close()


def test_hostname_without_dot_starts_with_a_warning(server_factory):
    s = server_factory(hostname="box")
    s.start()
    with s.connect() as c:
        assert recv_line(c) == b"220 box ESMTP postling\r\n"
    assert "not fully qualified" in s.log()


def test_silent_connection_gets_timeout_reply(server_factory):
    s = server_factory(smtp_timeout="1s", pop3_timeout="1s")
    s.start()
    c = s.connect()
    assert recv_line(c).startswith(b"220")
    t0 = time.time()
    assert recv_line(c, timeout=10).startswith(b"421 4.4.2 ")
    assert c.recv(10) == b""  # closed after the reply
    assert 0.8 < time.time() - t0 < 5
    p = s.connect(s.pop3_port)
    assert recv_line(p).startswith(b"+OK")
    assert recv_line(p, timeout=10).startswith(b"-ERR")


def test_byte_trickle_does_not_extend_the_deadline(server_factory):
    s = server_factory(smtp_timeout="2s")
    s.start()
    c = s.connect()
    assert recv_line(c).startswith(b"220")
    t0 = time.time()
    c.settimeout(0.4)
    got = b""
    for b in b"NOOPNOOPNOOPNOOPNOOPNOOP":  # never a complete line
        try:
            c.send(bytes([b]))
        except OSError:
            break
        try:
            got += c.recv(100)
        except socket.timeout:
            pass
        if got:
            break
    assert got.startswith(b"421 4.4.2"), got
    assert time.time() - t0 < 4


def test_per_ip_and_total_limits(server_factory):
    s = server_factory(max_connections_per_ip="3")
    s.start()
    held = [s.connect() for _ in range(3)]
    for c in held:
        assert recv_line(c).startswith(b"220")
    extra = s.connect()
    assert recv_line(extra) == b"421 4.3.2 Too many connections, try again later\r\n"
    assert extra.recv(10) == b""
    held.pop().close()
    s.wait_log("smtp close")
    with s.connect() as again:
        assert recv_line(again).startswith(b"220")
    for c in held:
        c.close()
    # max_connections (and which idle sessions make room for newcomers): test_conn_limits.py


def test_low_descriptor_limit_no_spin_and_recovery(server_factory):
    s = server_factory(max_connections="512", max_connections_per_ip="1000")
    s.start(prefix=("prlimit", "--nofile=48:48", "--"))
    s.wait_log("descriptor limit")
    clients = []
    for _ in range(80):  # more clients than descriptors
        try:
            clients.append(s.connect(timeout=2))
        except OSError:
            pass
    served = refused = 0
    for c in clients:
        try:
            line = recv_line(c, timeout=2)
        except socket.timeout:
            line = b""
        if line.startswith(b"220"):
            served += 1
        elif line.startswith(b"421"):
            refused += 1
    assert served >= 1 and served + refused >= 1
    # Saturated: the server must sit idle, not spin.
    t0 = s.cpu_ticks()
    time.sleep(2)
    used = s.cpu_ticks() - t0
    print(f"cpu ticks while saturated for 2s: {used}")
    assert used <= 5
    for c in clients:
        c.close()
    time.sleep(0.3)
    with s.connect() as c:
        assert recv_line(c).startswith(b"220")


def test_sigterm_exits_zero_promptly_with_goodbye(server_factory):
    s = server_factory()
    s.start()
    c = s.connect()
    p = s.connect(s.pop3_port)
    assert recv_line(c).startswith(b"220") and recv_line(p).startswith(b"+OK")
    t0 = time.time()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(5) == 0
    assert time.time() - t0 < 3
    assert recv_line(c).startswith(b"421 4.3.2")
    assert recv_line(p).startswith(b"-ERR")


def test_idle_server_uses_no_cpu_and_makes_no_wakeups(server_factory):
    s = server_factory()
    s.start()
    with s.connect() as c:  # one idle client holds a deadline 5 minutes away
        assert recv_line(c).startswith(b"220")
        time.sleep(0.3)
        t0, w0 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
        time.sleep(3)
        t1, w1 = s.cpu_ticks(), int(s.status("voluntary_ctxt_switches"))
    print(f"idle 3s: cpu ticks {t1 - t0}, voluntary context switches {w1 - w0}")
    assert t1 - t0 == 0
    assert w1 - w0 == 0

