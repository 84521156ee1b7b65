"""Connection limits across protocols: eviction of idle sessions at max_connections, and the POP
login deadline. Clients bind to 127.0.0.x source addresses (loopback is all of 127/8) to get
past max_connections_per_ip, as a crowd from many addresses would."""
import poplib
import selectors
import smtplib
import socket
import time

from conftest import recv_line


def connect_from(port, source, timeout=5):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def closed_with(socks, timeout=10, count=1):
    """Waits until `count` of `socks` are closed by the server (or `timeout` passes); returns
    {sock: bytes before EOF} for every one that closed (waiting for events, never a fixed
    sleep)."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    got = {s: b"" for s in socks}
    done = {}
    deadline = time.time() + timeout
    while time.time() < deadline and len(done) < count:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.time())):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionError:
                data = b""
            if data:
                got[s] += data
            else:
                done[s] = got[s]
                sel.unregister(s)
    sel.close()
    for s in socks:
        s.setblocking(True)
    return done


def test_idle_pop3_crowd_does_not_lock_out_smtp(server_factory):
    """20 idle POP3 connections fill max_connections = 20; an SMTP client still gets 220 and
    sends a mail (one idle POP3 session is evicted with -ERR [SYS/TEMP]). When the crowd comes
    back it evicts its own members, not the idle SMTP session."""
    s = server_factory(max_connections="20", max_connections_per_ip="16", auth_failure_delay="1s")
    s.start()
    crowd = []
    for i in range(20):
        c = connect_from(s.pop3_port, f"127.0.0.{2 + i // 10}")
        assert recv_line(c).startswith(b"+OK")
        crowd.append(c)

    smtp = smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10)
    assert smtp.ehlo()[0] == 250
    refused = smtp.sendmail("a@example.org", ["bob@example.test"], b"Subject: in\r\n\r\nserved\r\n")
    assert refused == {}  # every recipient accepted, the message committed (250)
    evicted = closed_with(crowd, timeout=5)
    assert len(evicted) == 1, evicted
    assert list(evicted.values())[0] == b"-ERR [SYS/TEMP] Server busy, closing idle connection\r\n"
    assert "admits 127.0.0.1" in s.log()

    # The crowd comes back: it evicts one of its own, the idle SMTP session stays.
    crowd = [c for c in crowd if c not in evicted]
    back = connect_from(s.pop3_port, "127.0.0.4")
    assert recv_line(back).startswith(b"+OK")
    assert len(closed_with(crowd, timeout=5)) == 1
    assert smtp.noop()[0] == 250

    for c in crowd + [back]:
        c.close()
    smtp.quit()


def test_total_limit_refuses_when_nothing_is_evictable(server_factory):
    """A logged-in POP3 session and an SMTP session inside a transaction are never evicted:
    with only those open, a newcomer is refused as before."""
    t = server_factory(max_connections="2", max_connections_per_ip="10")
    t.start()
    a = t.connect()
    assert recv_line(a).startswith(b"220")
    a.sendall(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\n")
    lines = b""
    while not lines.endswith(b"250 2.1.0 Ok\r\n"):
        lines += a.recv(4096)
    b = poplib.POP3("127.0.0.1", t.pop3_port, timeout=10)
    b.user("bob")
    b.pass_("bob-pw")
    p = t.connect(t.pop3_port)
    assert recv_line(p) == b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
    assert "max_connections" in t.log()
    assert b.noop().startswith(b"+OK")
    a.sendall(b"NOOP\r\n")
    assert recv_line(a).startswith(b"250")


def test_login_timeout_closes_only_unauthenticated_pop_sessions(server_factory):
    s = server_factory(pop3_login_timeout="2s", auth_failure_delay="1s")
    s.pop2_port = __import__("conftest").free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start()
    authed = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    authed.user("bob")
    authed.pass_("bob-pw")
    t0 = time.time()
    idle = s.connect(s.pop3_port)
    assert recv_line(idle).startswith(b"+OK")
    chatty = s.connect(s.pop3_port)  # keeps talking but never logs in
    assert recv_line(chatty).startswith(b"+OK")
    chatty.sendall(b"USER bob\r\n")
    assert recv_line(chatty).startswith(b"+OK")
    pop2 = s.connect(s.pop2_port)
    assert recv_line(pop2).startswith(b"+")

    closed = closed_with([idle, chatty, pop2], timeout=10, count=3)
    took = time.time() - t0
    assert closed.get(idle) == b"-ERR [SYS/TEMP] timeout, closing connection\r\n", closed
    assert closed.get(chatty) == b"-ERR [SYS/TEMP] timeout, closing connection\r\n", closed
    assert closed.get(pop2) == b"- timeout, closing connection\r\n", closed
    assert 1.5 <= took < 8, took
    assert s.log().count("login timeout") == 3
    # The logged-in session, open longer than the login deadline, is still served.
    assert authed.noop().startswith(b"+OK")
    assert authed.stat()[0] == 0
    authed.quit()
