"""Torture: hostile clients. Slowloris by the thousand, resets mid-command and mid-DATA,
half-closes, NUL bytes, 1 MiB lines, an endless pipeline that never reads, a POP3 client that
never reads a large RETR, and descriptor exhaustion at run time. For each: a normal client is
served within a second while it happens, the server's memory stays within its fixed-buffer
bound, and the server is healthy afterwards."""
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import recv_line
from test_torture import (
    RssWatch, command, maildir_files, message_body, normal_client, queued_id, raise_nofile,
    read_reply, rss_kib, send_message, wait_queue_empty,
)

OUT_BUF = 16 * 1024  # limits::OUT_BUF, lent while it has undrained output
# Fixed bound for one hostile client at a time: a debug build's heap, the pool's buffers and a
# few connections come to ~5 MiB; anything near this means memory grows with input.
RSS_BOUND_KIB = 20 * 1024


def reset(sock):
    """Close with an RST instead of a FIN (SO_LINGER on, timeout 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def served_meanwhile(server, times=3, pause=0.2):
    """Runs the normal client a few times; returns the slowest time. Each must be under 1 s."""
    worst = 0.0
    for _ in range(times):
        took, _ = normal_client(server, timeout=1.0)
        worst = max(worst, took)
        time.sleep(pause)
    return worst


def pop3_login_ok(server, user=b"bob", password=b"bob-pw", timeout=2):
    with server.connect(server.pop3_port, timeout=timeout) as c:
        assert recv_line(c, timeout).startswith(b"+OK")
        c.sendall(b"USER " + user + b"\r\nPASS " + password + b"\r\nSTAT\r\nQUIT\r\n")
        replies = [recv_line(c, timeout) for _ in range(4)]
    assert all(r.startswith(b"+OK") for r in replies), replies
    return replies[2]


def greeted(socks, wait):
    """Splits `socks` into those that got a greeting within `wait` seconds (all waited on at
    once) and those still waiting."""
    sel = selectors.DefaultSelector()
    for c in socks:
        sel.register(c, selectors.EVENT_READ)
    ok, deadline = [], time.monotonic() + wait
    while len(ok) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
            sel.unregister(key.fileobj)
            try:
                line = recv_line(key.fileobj, timeout=1)
            except OSError:
                line = b""
            if line[:1] in (b"2", b"+"):
                ok.append(key.fileobj)
    sel.close()
    return ok, [c for c in socks if c not in ok]


def hostile_server(server_factory, **settings):
    s = server_factory(auth_failure_delay="1s", log_level="info", **settings)
    s.start()
    time.sleep(0.2)
    s.idle_rss = rss_kib(s)
    return s


def test_slowloris_2000_connections(server_factory):
    n_smtp, n_pop = 1500, 500
    n = n_smtp + n_pop
    limit = raise_nofile(n + 200)
    if limit < n + 100:
        pytest.skip(f"descriptor limit {limit} too low for {n} connections")
    s = hostile_server(server_factory, max_connections=str(n + 50), max_connections_per_ip=str(n + 50))
    socks = []
    t0 = time.monotonic()
    for i in range(n):
        port = s.smtp_port if i < n_smtp else s.pop3_port
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.setblocking(False)
        socks.append(c)
    connected = time.monotonic() - t0
    stop = threading.Event()
    sent = [0]
    line = b"NOOP " + b"x" * 4000  # never ends: no complete command, so no progress

    def trickle():
        # One byte per connection every ~2.5 s, spread over the interval.
        k = 0
        while not stop.is_set():
            start = time.monotonic()
            for c in socks:
                try:
                    c.send(line[k % len(line):k % len(line) + 1])
                    sent[0] += 1
                except (BlockingIOError, OSError):
                    pass
            k += 1
            stop.wait(max(0.0, 2.5 - (time.monotonic() - start)))

    thread = threading.Thread(target=trickle, daemon=True)
    with RssWatch(s) as watch:
        thread.start()
        time.sleep(3)  # every connection has sent its first bytes
        worst = served_meanwhile(s, times=5, pause=0.5)
        pop3_login_ok(s)
        open_now = s.log().count("connect from")
        stop.set()
        thread.join()
    per_conn = (watch.peak - s.idle_rss) * 1024 / n
    print(f"\nslowloris: {n} connections ({n_smtp} SMTP, {n_pop} POP3) opened in {connected:.2f}s, "
          f"{sent[0]} single bytes trickled; normal client worst {worst * 1000:.0f} ms; RSS idle "
          f"{s.idle_rss} KiB, peak {watch.peak} KiB ({per_conn:.0f} octets a trickling connection; "
          f"a partial line up to INPUT_STASH octets is kept inside the connection)")
    assert worst < 1.0
    # A trickled partial line stays inside the connection's own state (INPUT_STASH), so a
    # trickling connection holds no input buffer: about as cheap as an idle one (1 KiB budget).
    assert watch.peak - s.idle_rss < n * 1024 / 1024, "a trickling connection holds a buffer"
    for c in socks:
        c.close()
    time.sleep(0.5)
    assert s.proc.poll() is None
    served_meanwhile(s, times=1)
    after_first = rss_kib(s)
    # A second wave reuses what the first one left: memory is a high-water mark, not a leak.
    socks = [socket.create_connection(("127.0.0.1", s.smtp_port), timeout=10) for _ in range(n)]
    for c in socks:
        c.send(b"NOOP xx")
    time.sleep(1.0)
    second = rss_kib(s)
    served_meanwhile(s, times=1)
    for c in socks:
        c.close()
    print(f"  after they left: RSS {after_first} KiB; a second wave of {n}: {second} KiB")
    assert second < watch.peak + 2048, "a second wave grew memory again: a leak"


def test_resets_mid_command_and_mid_data(server_factory):
    s = hostile_server(server_factory, max_connections_per_ip="200")
    counts = {"before greeting": 0, "mid command": 0, "mid data": 0, "after dot": 0}
    cut_tokens = []
    lock = threading.Lock()

    def attacker(k):
        for i in range(25):
            kind = ("before greeting", "mid command", "mid data", "after dot")[(k + i) % 4]
            try:
                c = socket.create_connection(("127.0.0.1", s.smtp_port), timeout=5)
                if kind != "before greeting":
                    recv_line(c)
                    c.sendall(b"EHLO rst.example.org\r\nMAIL FROM:<r@example.org>\r\nRCPT TO:<alice@example.test>\r\n")
                    for _ in range(3):
                        read_reply(c)
                    if kind == "mid command":
                        c.sendall(b"RCPT TO:<bob@exa")
                    else:
                        assert command(c, b"DATA").startswith(b"354")
                        c.sendall(message_body(f"rst{k}-{i}", 20000)[:15000])
                        if kind == "after dot":
                            c.sendall(message_body(f"rst{k}-{i}", 20000)[15000:] + b".\r\n")
                        else:
                            with lock:
                                cut_tokens.append(f"X-Torture: rst{k}-{i}\n".encode())
                with lock:
                    counts[kind] += 1
                reset(c)
            except OSError:
                pass

    threads = [threading.Thread(target=attacker, args=(k,)) for k in range(8)]
    with RssWatch(s) as watch:
        for t in threads:
            t.start()
        worst = served_meanwhile(s, times=3)
        for t in threads:
            t.join()
    time.sleep(0.5)
    print(f"\nresets: {counts} connections reset (RST); normal client worst {worst * 1000:.0f} ms; "
          f"RSS idle {s.idle_rss} KiB, peak {watch.peak} KiB")
    assert worst < 1.0
    assert watch.peak < RSS_BOUND_KIB
    assert s.proc.poll() is None
    # A message cut mid-DATA leaves nothing behind: no file in the spool's tmp/, nothing queued
    # or delivered with its token. (Reset after the dot: it may have been accepted.)
    wait_queue_empty(s, timeout=20)
    assert list((Path(s.settings["spool_dir"]) / "tmp").iterdir()) == []
    bodies = [p.read_bytes() for p in maildir_files(s, "alice")]
    delivered_cut = [t for t in cut_tokens if any(t in b for b in bodies)]
    assert delivered_cut == [], "a message cut by a reset was delivered"
    print(f"  delivered: {sum(b'X-Torture: rst' in b for b in bodies)} of the {counts['after dot']} reset after the dot")
    normal_client(s)


def test_half_close_right_after_the_final_dot(server_factory):
    s = hostile_server(server_factory)
    ids = []
    # 1: the dot, then SHUT_WR; the 250 must still come.
    for variant in ("dot", "dot+quit", "whole dialog in one write"):
        c = s.connect()
        assert recv_line(c).startswith(b"220")
        token = variant.replace(" ", "-")
        if variant == "whole dialog in one write":
            c.sendall(b"EHLO half.example.org\r\nMAIL FROM:<h@example.org>\r\nRCPT TO:<bob@example.test>\r\n"
                      b"DATA\r\n" + message_body(token) + b".\r\nQUIT\r\n")
            c.shutdown(socket.SHUT_WR)
            replies = [read_reply(c) for _ in range(6)]
            assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354", b"250", b"221"], replies
            qid = queued_id(replies[4])
        else:
            assert command(c, b"EHLO half.example.org").startswith(b"250")
            assert command(c, b"MAIL FROM:<h@example.org>").startswith(b"250")
            assert command(c, b"RCPT TO:<bob@example.test>").startswith(b"250")
            assert command(c, b"DATA").startswith(b"354")
            c.sendall(message_body(token) + b".\r\n" + (b"QUIT\r\n" if variant == "dot+quit" else b""))
            c.shutdown(socket.SHUT_WR)
            reply = read_reply(c)
            qid = queued_id(reply)
            assert qid, f"{variant}: {reply!r}"
            if variant == "dot+quit":
                assert read_reply(c).startswith(b"221")
        # The server closes its side after the peer's EOF.
        c.settimeout(5)
        assert c.recv(100) == b"", variant
        c.close()
        ids.append(qid)
    # POP3: a pipelined RETR and QUIT, then SHUT_WR: the whole message and +OK arrive.
    wait_queue_empty(s, timeout=10)
    files = maildir_files(s, "bob")
    assert len(files) == 3
    c = s.connect(s.pop3_port)
    recv_line(c)
    c.sendall(b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\nQUIT\r\n")
    c.shutdown(socket.SHUT_WR)
    got = b""
    c.settimeout(5)
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    c.close()
    assert got.count(b"+OK") >= 4 and b"\r\n.\r\n" in got and got.endswith(b"\r\n"), got[-200:]
    print(f"\nhalf-close: 3 SMTP variants answered and delivered ({ids}); POP3 RETR+QUIT after "
          f"SHUT_WR got {len(got)} octets")


def test_nul_bytes_in_commands_and_data(server_factory):
    s = hostile_server(server_factory)
    c = s.connect()
    assert recv_line(c).startswith(b"220")
    r_noop = command(c, b"NO\0OP")
    r_ehlo = command(c, b"EHLO nul\0host.example.org")
    assert command(c, b"EHLO nul.example.org").startswith(b"250")
    r_mail = command(c, b"MAIL FROM:<n\0ul@example.org>")
    assert command(c, b"MAIL FROM:<nul@example.org>").startswith(b"250")
    r_rcpt = command(c, b"RCPT TO:<ali\0ce@example.test>")
    assert command(c, b"RCPT TO:<alice@example.test>").startswith(b"250")
    assert command(c, b"DATA").startswith(b"354")
    body = b"Subject: nul\r\n\r\nbefore\0after\r\n\0\r\n\0.\r\n.\0\r\nend of nul\r\n"
    c.sendall(body + b".\r\n")
    r_data = read_reply(c)
    assert command(c, b"NOOP").startswith(b"250"), "out of sync after NUL bytes"
    command(c, b"QUIT")
    c.close()
    print(f"\nNUL bytes: NO<NUL>OP -> {r_noop.strip()!r}, EHLO -> {r_ehlo.strip()!r}, MAIL -> "
          f"{r_mail.strip()!r}, RCPT -> {r_rcpt.strip()!r}, data -> {r_data.strip()!r}")
    for r in (r_noop, r_ehlo, r_mail, r_rcpt):
        assert r[:1] == b"5", r
    assert r_data[:1] in (b"2", b"5"), r_data
    if r_data.startswith(b"250"):
        # Accepted: delivered byte for byte (no C-string cut at the NUL); `.<NUL>` is an
        # ordinary dot-stuffed line, so its first dot goes (RFC 5321 section 4.5.2).
        wait_queue_empty(s, timeout=10)
        got = [p.read_bytes() for p in maildir_files(s, "alice")]
        assert any(b"before\0after\n\0\n\0.\n\0\nend of nul\n" in g for g in got), got
    # POP3 too.
    with s.connect(s.pop3_port) as p:
        recv_line(p)
        p.sendall(b"US\0ER bob\r\nUSER bob\r\nPASS bob-pw\r\nST\0AT\r\nSTAT\r\n")
        replies = [recv_line(p) for _ in range(5)]
    assert [r[:1] for r in replies] == [b"-", b"+", b"+", b"-", b"+"], replies
    normal_client(s)


def test_one_mib_lines_in_commands_and_data(server_factory):
    s = hostile_server(server_factory)
    mib = b"x" * (1024 * 1024)
    with RssWatch(s) as watch:
        c = s.connect()
        assert recv_line(c).startswith(b"220")
        t0 = time.monotonic()
        r_long = command(c, b"NOOP " + mib, timeout=10)
        r_after = command(c, b"NOOP")
        r_ehlo = command(c, b"EHLO " + mib, timeout=10)
        assert command(c, b"EHLO long.example.org").startswith(b"250")
        r_mail = command(c, b"MAIL FROM:<" + mib + b"@example.org>", timeout=10)
        assert command(c, b"MAIL FROM:<l@example.org>").startswith(b"250")
        assert command(c, b"RCPT TO:<alice@example.test>").startswith(b"250")
        assert command(c, b"DATA").startswith(b"354")
        c.sendall(b"Subject: long\r\n\r\n" + mib + b"\r\nend of long\r\n.\r\n")
        r_data = read_reply(c, timeout=10)
        took = time.monotonic() - t0
        worst = served_meanwhile(s, times=1)
        command(c, b"QUIT")
        c.close()
        # POP3: a 1 MiB command line, then a normal session on the same connection.
        with s.connect(s.pop3_port) as p:
            recv_line(p)
            p.sendall(b"USER " + mib + b"\r\nUSER bob\r\nPASS bob-pw\r\nSTAT\r\n")
            pop = [recv_line(p, 10) for _ in range(4)]
    print(f"\n1 MiB lines: NOOP -> {r_long.strip()[:40]!r} then NOOP {r_after[:3]!r}; EHLO -> "
          f"{r_ehlo.strip()[:40]!r}; MAIL -> {r_mail.strip()[:40]!r}; data line -> "
          f"{r_data.strip()[:40]!r}; {took:.2f}s; POP3 {[r[:4] for r in pop]}; RSS idle "
          f"{s.idle_rss} KiB, peak {watch.peak} KiB")
    assert r_long.startswith(b"500 5.5.2") and r_after.startswith(b"250")
    assert r_ehlo.startswith(b"500") and r_mail.startswith(b"500")
    assert r_data.startswith(b"250"), r_data
    assert [r[:1] for r in pop] == [b"-", b"+", b"+", b"+"], pop
    assert watch.peak < RSS_BOUND_KIB
    assert worst < 1.0
    wait_queue_empty(s, timeout=10)
    got = [p.read_bytes() for p in maildir_files(s, "alice")]
    assert any(b"\n" + mib + b"\nend of long\n" in g for g in got), "the long data line was not kept whole"


def test_endless_pipeline_without_reading_replies(server_factory):
    s = hostile_server(server_factory)
    c = s.connect()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    assert recv_line(c).startswith(b"220")
    total = 50 * 1024 * 1024
    block = b"NOOP\r\n" * (64 * 1024 // 6)
    pushed = [0]
    stuck = threading.Event()

    def flood():
        c.settimeout(3)
        try:
            while pushed[0] < total:
                pushed[0] += c.send(block)
        except (socket.timeout, OSError):
            stuck.set()  # the server stopped reading: back-pressure

    thread = threading.Thread(target=flood, daemon=True)
    with RssWatch(s) as watch:
        thread.start()
        time.sleep(1.0)
        worst = served_meanwhile(s, times=3)
        thread.join(20)
        cpu0 = s.cpu_ticks()
        time.sleep(1.0)
        cpu_stuck = s.cpu_ticks() - cpu0
    print(f"\nendless pipeline: {pushed[0]} of {total} octets of NOOP taken before back-pressure "
          f"(blocked: {stuck.is_set()}); normal client worst {worst * 1000:.0f} ms; CPU while "
          f"blocked {cpu_stuck} ticks/s; RSS idle {s.idle_rss} KiB, peak {watch.peak} KiB")
    assert stuck.is_set() or pushed[0] >= total
    assert watch.peak < RSS_BOUND_KIB
    assert worst < 1.0
    assert cpu_stuck <= 5, "a blocked writer must not cost CPU"
    reset(c)
    time.sleep(0.3)
    assert s.proc.poll() is None
    normal_client(s)


def big_mailbox(server, user="bob", size=50 * 1024 * 1024):
    d = Path(server.settings["mailbox_dir"]) / user
    for sub in ("tmp", "new", "cur"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    line = b"y" * 99 + b"\n"
    (d / "new" / "1.M1P1Q1.h").write_bytes(b"Subject: big\n\n" + line * (size // 100))


def stuck_retr(server):
    """A POP3 client that logs in, asks for the 50 MiB message and never reads a byte."""
    c = server.connect(server.pop3_port)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    recv_line(c)
    c.sendall(b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\n")
    return c


def test_pop3_client_that_never_reads_a_large_retr(server_factory):
    s = hostile_server(server_factory)
    big_mailbox(s)
    with RssWatch(s) as watch:
        c = stuck_retr(s)
        time.sleep(0.5)
        worst = served_meanwhile(s, times=3)
        cpu0 = s.cpu_ticks()
        time.sleep(1.0)
        cpu_stuck = s.cpu_ticks() - cpu0
    print(f"\nPOP3 reader that never reads a 50 MiB RETR: normal client worst {worst * 1000:.0f} ms, "
          f"CPU while it is stuck {cpu_stuck} ticks/s; RSS idle {s.idle_rss} KiB, peak {watch.peak} KiB")
    assert watch.peak < RSS_BOUND_KIB
    assert worst < 1.0
    assert cpu_stuck <= 5
    reset(c)
    # The lock is released (a login works once the server has handled the reset) and nothing
    # was deleted.
    deadline = time.monotonic() + 10
    while True:
        try:
            stat = pop3_login_ok(s)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert stat.startswith(b"+OK 1 ")



def after_stuck_deadline(s, c, timeout_s, proto):
    """Past the idle deadline of the stuck reader `c`: the server must still serve others at
    once and cost no CPU, and close `c` once its linger (5 s) is over."""
    time.sleep(timeout_s + 1.0)
    cpu0 = s.cpu_ticks()
    time.sleep(1.0)
    cpu = s.cpu_ticks() - cpu0
    print(f"\n{proto} reader stuck past its {timeout_s}s deadline: CPU {cpu} ticks/s")
    assert cpu <= 5, f"the server spins after the stuck reader's deadline ({cpu} ticks/s)"
    took, _ = normal_client(s, timeout=1.0)
    # Closed once its linger is over (the normal client's own close line does not count).
    s.wait_log("peer did not read its last reply", timeout=10)
    c.close()
    assert s.stop() == 0


def test_pop3_stuck_reader_is_closed_by_its_deadline(server_factory):
    s = hostile_server(server_factory, pop3_timeout="2s")
    big_mailbox(s)
    c = stuck_retr(s)
    after_stuck_deadline(s, c, 2, "pop3")


def test_smtp_pipeline_that_never_reads_is_closed_by_its_deadline(server_factory):
    s = hostile_server(server_factory, smtp_timeout="2s")
    c = s.connect()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    recv_line(c)
    c.setblocking(False)
    try:
        while True:
            c.send(b"NOOP\r\n" * 10000)
    except BlockingIOError:
        pass  # the server's output is full and it stopped reading
    after_stuck_deadline(s, c, 2, "smtp")


def test_descriptor_exhaustion_at_run_time(server_factory):
    """The descriptor limit drops under a running server (prlimit on its pid), so accept() meets
    EMFILE with a backlog waiting: the server pauses accepting instead of spinning, keeps
    serving the connections it has, says so once in the log, and recovers when clients leave.
    (test_foundation covers a low limit at start-up, where polite refusals come first.)"""
    raise_nofile(1000)
    s = hostile_server(server_factory, max_connections="512", max_connections_per_ip="1000")
    fds_open = len(os.listdir(f"/proc/{s.proc.pid}/fd"))
    limit = fds_open + 40
    r = subprocess.run(["prlimit", f"--pid={s.proc.pid}", f"--nofile={limit}:{limit}"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"prlimit --pid failed: {r.stderr.strip()}")
    # The crowd arrives while the server is stopped, so both backlogs are full when it wakes:
    # the POP3 backlog must not take every descriptor left (it filled first).
    clients = []
    s.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(300):
            port = s.smtp_port if i % 3 else s.pop3_port
            try:
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass
    finally:
        s.proc.send_signal(signal.SIGCONT)
    served, waiting = greeted(clients, wait=3)
    time.sleep(1.5)  # at least one back-off period passes with the backlog still waiting
    t0 = s.cpu_ticks()
    time.sleep(2)
    saturated_cpu = s.cpu_ticks() - t0
    # A served client still gets work done (the spool needs a descriptor: 250 or a 4xx, no crash).
    smtp_served = [c for c in served if c.getpeername()[1] == s.smtp_port]
    pop3_served = [c for c in served if c.getpeername()[1] == s.pop3_port]
    assert smtp_served and pop3_served, \
        f"one port took every descriptor: {len(smtp_served)} SMTP, {len(pop3_served)} POP3 served"
    c = smtp_served[0]
    assert command(c, b"EHLO fd.example.org").startswith(b"250")
    reply, _ = send_message(c, "fd@example.org", ["alice@example.test"], message_body("fd"))
    warnings = s.log().count("cannot accept connections")
    print(f"\ndescriptor exhaustion: limit {limit} set at run time ({fds_open} in use at start); "
          f"{len(clients)} clients connected, {len(served)} served ({len(smtp_served)} SMTP, "
          f"{len(pop3_served)} POP3), {len(waiting)} waiting in the "
          f"backlog; CPU over 2s saturated {saturated_cpu} ticks; 'cannot accept' logged "
          f"{warnings}x; a message while saturated -> {reply.strip()!r}")
    assert saturated_cpu <= 5, "the server spins while out of descriptors"
    assert warnings == 1, "the exhaustion is logged once, not per attempt"
    assert reply[:1] in (b"2", b"4"), reply
    assert s.proc.poll() is None
    # Clients leave: waiting ones are taken from the backlog, then new ones are served at once.
    for c in served:
        c.close()
    late, _ = greeted(waiting, wait=3)
    for c in waiting:
        c.close()
    time.sleep(0.3)
    took, _ = normal_client(s)
    pop3_login_ok(s)
    print(f"  after the served clients left: {len(late)} of {len(waiting)} waiting clients "
          f"greeted from the backlog; a new client served in {took * 1000:.0f} ms")
    assert len(late) >= min(len(waiting), len(served)) // 2, "the backlog was not served"
    assert "accepting connections again" in s.log()
