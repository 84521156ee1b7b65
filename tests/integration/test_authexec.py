"""Password checks run in the disk executor's helper process, never on the reactor (issue 11,
first wiring step): every `disk_io` backend logs in, the hashing CPU shows up in the helper,
a login flood does not hold up SMTP, a dead helper means [SYS/TEMP] logins and nothing worse,
and the helper never outlives the server."""
import base64
import os
import signal
import smtplib
import socket
import threading
import time

import pytest

from conftest import TEST_DISK_IO, recv_line


def wait_for(cond, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid):
    """Pids whose parent is `pid` (scanning /proc/*/stat)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


def helper_pid(s):
    kids = wait_for(lambda: children(s.proc.pid), what="the helper process")
    assert len(kids) == 1, kids
    return kids[0]


def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_state(pid):
    """The process state letter, or None when the pid is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def pop_connect(s, source="127.0.0.1"):
    c = socket.create_connection(("127.0.0.1", s.pop3_port), timeout=10,
                                 source_address=(source, 0))
    assert recv_line(c).startswith(b"+OK")
    return c


def say(c, line, timeout=10):
    c.sendall(line.encode() + b"\r\n")
    return recv_line(c, timeout).decode()


def login(s, user="alice", pw="alice-pw", source="127.0.0.1"):
    c = pop_connect(s, source)
    assert say(c, f"USER {user}").startswith("+OK")
    return c, say(c, f"PASS {pw}")


def test_the_suite_runs_on_the_backend_it_asked_for(server):
    """scripts/test runs the suite twice, the second time with POSTLING_TEST_DISK_IO=helper.
    The start-up line names the backend that really runs, so that run cannot quietly test the
    default (a conftest that dropped the setting, a server that ignored it)."""
    start = [l for l in server.log().splitlines() if "disk_io: " in l and "pid" not in l]
    assert len(start) == 1, server.log()
    if TEST_DISK_IO == "helper":
        assert start[0].endswith("] disk_io: helper process (disk_io = helper)"), start
    elif TEST_DISK_IO == "uring":
        assert start[0].endswith("] disk_io: uring (disk_io = uring)"), start
    else:
        # The default (auto): io_uring where the kernel allows it, else the helper, said so.
        assert (start[0].endswith("] disk_io: uring (io_uring supports every operation used)")
                or "; using the helper process" in start[0]), start


@pytest.mark.parametrize("mode", ["auto", "uring", "helper"])
def test_logins_work_with_every_backend_and_the_helper_ends_with_the_server(server_factory, mode):
    s = server_factory(disk_io=mode).start()
    expect = {"auto": "disk_io: uring (io_uring supports", "uring": "disk_io: uring (disk_io = uring)",
              "helper": "disk_io: helper process (disk_io = helper)"}[mode]
    assert expect in s.log()
    helper = helper_pid(s)
    assert f"disk_io: helper process pid {helper}" in s.log()
    # USER/PASS with a SHA512-CRYPT user, AUTH PLAIN, and a wrong password.
    c, r = login(s)
    assert r.startswith("+OK maildrop has"), r
    assert say(c, "QUIT").startswith("+OK")
    c.close()
    c = pop_connect(s)
    token = base64.b64encode(b"\0bob\0bob-pw").decode()
    assert say(c, f"AUTH PLAIN {token}").startswith("+OK maildrop has")
    c.close()
    c, r = login(s, pw="wrong")
    assert r.startswith("-ERR [AUTH]"), r
    c.close()
    assert s.stop(signal.SIGTERM) == 0
    # The server reaped its helper before exiting: no process, no zombie left.
    assert proc_state(helper) is None, proc_state(helper)


def test_pop2_login_goes_through_the_helper(server_factory):
    from conftest import free_port
    port = free_port()
    s = server_factory(pop2_listen=f"127.0.0.1:{port}").start()
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert recv_line(c).startswith(b"+ POP2")
    assert say(c, "HELO alice alice-pw") == "#0\r\n"
    c.close()
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    recv_line(c)
    assert say(c, "HELO alice nope").startswith("- Invalid")
    c.close()


def test_hashing_runs_in_the_helper_not_the_reactor(server_factory):
    n = 40
    s = server_factory(max_connections_per_ip="4").start()
    helper = helper_pid(s)
    main0, help0 = ticks(s.proc.pid), ticks(helper)
    results = []

    def guess(i):
        # One wrong password per client address: the throttle (per address) never engages.
        c, r = login(s, pw=f"wrong-{i}", source=f"127.0.0.{10 + i}")
        results.append(r)
        c.close()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    # While the helper hashes, the reactor serves SMTP.
    s.wait_log("pop3: checking the password of")
    t0 = time.time()
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as smtp:
        smtp.sendmail("a@example.org", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")
    latency = time.time() - t0
    checked = s.log().count("auth failed: pop3 USER from")
    for t in threads:
        t.join(60)
    assert len(results) == n and all(r.startswith("-ERR [AUTH]") for r in results), results
    main1, help1 = ticks(s.proc.pid), ticks(helper)
    dm, dh = main1 - main0, help1 - help0
    print(f"{n} wrong-password logins: helper cpu {dh} ticks, main cpu {dm} ticks")
    print(f"SMTP transaction while the helper hashed: {latency * 1000:.1f} ms "
          f"({checked} of {n} checks done when it ended)")
    assert latency < 5
    assert dh >= 5, "the helper did the hashing"
    assert dm * 3 <= dh, f"the reactor did much less than the helper ({dm} vs {dh} ticks)"


def test_smtp_completes_during_a_login_flood_on_an_in_use_mailbox(server_factory):
    s = server_factory().start()
    holder, r = login(s)  # alice's mailbox is now locked: every other login is [IN-USE]
    assert r.startswith("+OK"), r
    stop = threading.Event()
    counts = [0] * 30
    errors = []

    def flood(i):
        try:
            c = pop_connect(s, source=f"127.0.1.{i + 1}")
            while not stop.is_set():
                assert say(c, "USER alice").startswith("+OK")
                r = say(c, "PASS alice-pw")
                assert r.startswith("-ERR [IN-USE]"), r
                counts[i] += 1
            c.close()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(counts), what="every flooding connection logging in")
        t0 = time.time()
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as smtp:
            smtp.sendmail("a@example.org", ["bob@example.test"], b"Subject: flood\r\n\r\nhi\r\n")
        latency = time.time() - t0
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    holder.close()
    assert not errors, errors
    cached = s.log().count("(a check made in the last")
    print(f"SMTP transaction during the flood: {latency * 1000:.1f} ms; "
          f"{sum(counts)} flood logins, {cached} answered from the login cache")
    assert latency < 5
    assert cached > 0, "repeated right passwords were not rehashed"


def test_a_dead_helper_means_temporary_login_failures_not_a_crash(server_factory):
    s = server_factory().start()
    helper = helper_pid(s)
    os.kill(helper, signal.SIGKILL)
    s.wait_log("disk_io: the helper process exited")
    for i in range(2):
        c, r = login(s, source=f"127.0.2.{i + 1}")
        assert r == "-ERR [SYS/TEMP] cannot check passwords now, try again later\r\n", r
        c.close()
    assert s.log().count("passwords cannot be checked") == 1, "logged once"
    # The dead helper is reaped (no zombie) while the server goes on serving SMTP.
    wait_for(lambda: proc_state(helper) is None, what="the dead helper reaped")
    # Mail is still taken and delivered: with `disk_io = helper` the spool's and the Maildirs'
    # commits then run with blocking calls instead of in the dead helper.
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as smtp:
        smtp.sendmail("a@example.org", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")
    wait_for(lambda: list((s.dir / "mail" / "bob" / "new").glob("*")), what="delivered to bob")
    assert s.proc.poll() is None
    assert s.stop(signal.SIGTERM) == 0


def test_idle_costs_nothing_in_either_process(server_factory):
    s = server_factory().start()
    helper = helper_pid(s)
    c, r = login(s)
    assert r.startswith("+OK")
    say(c, "QUIT")
    c.close()
    s.wait_log("pop3 close")

    def switches(pid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches:"):
                    return int(line.split()[1])

    time.sleep(0.5)
    before = [(ticks(p), switches(p)) for p in (s.proc.pid, helper)]
    time.sleep(3)
    after = [(ticks(p), switches(p)) for p in (s.proc.pid, helper)]
    print(f"idle 3s after a login: main {before[0]}->{after[0]}, helper {before[1]}->{after[1]} "
          "(cpu ticks, voluntary switches)")
    rss = []
    for p in (s.proc.pid, helper):
        with open(f"/proc/{p}/status") as f:
            rss += [l.split()[1] for l in f if l.startswith("VmRSS:")]
    print(f"idle RSS (debug build): main {rss[0]} KiB, helper {rss[1]} KiB")
    assert before == after


def test_disk_io_bogus_is_a_config_error_naming_file_and_line(server_factory):
    # No disk_io line from POSTLING_TEST_DISK_IO: the bogus one must be the only one.
    s = server_factory(disk_io=None)
    s.write_config("disk_io = bogus\n")
    s.start(wait=False)
    assert s.proc.wait(10) == 78
    line = len(s.conf.read_text().splitlines())
    assert f"{s.conf}:{line}: disk_io: `bogus` is not a disk_io mode" in s.log(), s.log()


def test_a_late_verdict_never_reaches_the_next_connection_in_the_same_slot(server_factory):
    """A's check is held up (the helper stopped) until A's login deadline closes it; B gets
    A's slot and asks for its own check. When the helper goes on, A's verdict (alice) arrives
    first: it is recorded but must not resume B, which waits for its own (bob)."""
    # [IN-USE] waits auth_failure_delay: within the login deadline, which starts at connect.
    s = server_factory(pop3_login_timeout="2s", auth_failure_delay="1s").start()
    helper = helper_pid(s)
    os.kill(helper, signal.SIGSTOP)
    try:
        a = pop_connect(s)
        assert say(a, "USER alice").startswith("+OK")
        a.sendall(b"PASS alice-pw\r\n")
        assert recv_line(a, 10) == b"-ERR [SYS/TEMP] timeout, closing connection\r\n"
        a.close()
        s.wait_log("pop3 close")
        b = pop_connect(s)
        assert say(b, "USER bob") == "+OK send PASS\r\n"
        b.sendall(b"PASS bob-pw\r\n")
        s.wait_log('pop3: checking the password of "bob"')
    finally:
        os.kill(helper, signal.SIGCONT)
    assert recv_line(b, 10).startswith(b"+OK maildrop has")
    s.wait_log("pop3: password accepted for bob from 127.0.0.1")
    assert "pop3: password accepted for alice from 127.0.0.1" in s.log(), "A's verdict was recorded"
    # B holds bob's mailbox, not alice's: alice can log in (not [IN-USE]), bob cannot.
    c, r = login(s)
    assert r.startswith("+OK maildrop has"), r
    c.close()
    c, r = login(s, "bob", "bob-pw")
    assert r.startswith("-ERR [IN-USE]"), r
    c.close()
    b.close()


STRACE_NO_URING = ("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=io_uring_setup",
                   "-e", "inject=io_uring_setup:error=EPERM")


def test_without_io_uring_uring_is_a_start_error_and_auto_uses_the_helper(server_factory):
    # strace makes io_uring_setup fail with EPERM, as kernel.io_uring_disabled or a seccomp
    # profile would.
    s = server_factory(disk_io="uring")
    s.start(prefix=STRACE_NO_URING, wait=False)
    assert s.proc.wait(20) == 71
    errors = [l for l in s.log().splitlines() if l.startswith("postling:")]
    assert errors == ["postling: disk_io = uring, but io_uring is unavailable "
                      "(io_uring_setup: Operation not permitted)"], s.log()
    s = server_factory(disk_io="auto").start(prefix=STRACE_NO_URING)
    assert ("disk_io: uring unavailable (io_uring_setup: Operation not permitted); "
            "using the helper process") in s.log()
    c, r = login(s)
    assert r.startswith("+OK maildrop has"), r
    c.close()
    # Stopping strace would leave its tracee serving (reparented to init): stop postling
    # itself, and wait until strace has seen it go.
    daemon = int(open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read().split()[0])
    os.kill(daemon, signal.SIGTERM)
    assert s.proc.wait(20) == 0


def test_the_login_cache_forgets_on_a_failure_and_on_a_users_file_reload(server_factory):
    s = server_factory().start()
    hits = lambda: s.log().count("(a check made in the last")  # noqa: E731

    def ok(source="127.0.0.1"):
        c, r = login(s, source=source)
        assert r.startswith("+OK maildrop has"), r
        say(c, "QUIT")
        c.close()

    ok()
    assert hits() == 0, "the first login is checked"
    ok()
    assert hits() == 1, "the second is remembered"
    # A failed login for alice forgets her: the next right password is checked again.
    c, r = login(s, pw="wrong", source="127.0.3.1")
    assert r.startswith("-ERR [AUTH]"), r
    c.close()
    ok()
    assert hits() == 1
    ok()
    assert hits() == 2
    # The users file re-read (same content, a new version of the file): everything is forgotten.
    users = s.dir / "users"
    text = users.read_text()
    users.unlink()
    users.write_text(text)
    ok()
    assert "re-read" in s.log()
    assert hits() == 2
    ok()
    assert hits() == 3


# login_attempts_per_client for the test below (the default, 30, is in limits.rs).
ATTEMPT_BUDGET = 5


def test_in_use_is_answered_after_the_failure_delay(server_factory):
    """A right password on a mailbox in use is refused like a failure, after
    auth_failure_delay: answered at once, one connection could loop logins as fast as the
    reactor answers (about 20,000 a second before)."""
    s = server_factory(auth_failure_delay="1s").start()
    holder, r = login(s, user="bob", pw="bob-pw")
    assert r.startswith("+OK"), r
    c = pop_connect(s, source="127.0.3.1")
    assert say(c, "USER bob").startswith("+OK")
    t0 = time.monotonic()
    r = say(c, "PASS bob-pw")
    waited = time.monotonic() - t0
    assert r.startswith("-ERR [IN-USE]"), r
    assert waited >= 0.9, f"answered after {waited:.3f}s"
    # Still in AUTHORIZATION: once the holder is gone, the same connection logs in.
    assert say(holder, "QUIT").startswith("+OK")
    holder.close()
    assert say(c, "USER bob").startswith("+OK")
    assert say(c, "PASS bob-pw").startswith("+OK maildrop has")
    c.close()


def test_logins_over_the_attempt_budget_are_refused_slowly_without_a_check(server_factory):
    """Every login attempt counts against its address, successes too: past the budget the
    next one, right or wrong, gets its own [SYS/TEMP] after the delay, without a password
    check, and is closed; another address is not affected."""
    s = server_factory(auth_failure_delay="1s", log_level="info",
                       login_attempts_per_client=str(ATTEMPT_BUDGET)).start()
    src = "127.0.4.1"
    for i in range(ATTEMPT_BUDGET):
        c, r = login(s, user="bob", pw="bob-pw", source=src)
        assert r.startswith("+OK maildrop has"), (i, r)
        assert say(c, "QUIT").startswith("+OK")
        c.close()
    wait_for(lambda: f"throttle: pop3: {src} made {ATTEMPT_BUDGET} logins" in s.log(),
             what="the attempt budget's warning")
    for pw in ("bob-pw", "wrong"):
        c = pop_connect(s, source=src)
        assert say(c, "USER bob").startswith("+OK")
        t0 = time.monotonic()
        r = say(c, f"PASS {pw}")
        waited = time.monotonic() - t0
        assert r == "-ERR [SYS/TEMP] Too many logins from your address, try again later\r\n", r
        assert waited >= 0.9, f"answered after {waited:.3f}s"
        assert c.recv(1) == b"", "closed after the reply"
        c.close()
    refused = [l for l in s.log().splitlines() if f"from [{src}]" in l and "too many recent logins" in l]
    assert len(refused) == 2, refused
    # Refused before any check: no failure was counted for the wrong password.
    assert f"auth failed: pop3 USER from [{src}]" not in s.log()
    c, r = login(s, user="bob", pw="bob-pw", source="127.0.4.2")
    assert r.startswith("+OK maildrop has"), r
    c.close()


def test_login_attempts_per_client_0_turns_the_attempt_budget_off(server_factory):
    s = server_factory(login_attempts_per_client="0").start()
    for i in range(40):  # above the default of 30
        c, r = login(s, user="bob", pw="bob-pw", source="127.0.5.1")
        assert r.startswith("+OK maildrop has"), (i, r)
        assert say(c, "QUIT").startswith("+OK")
        c.close()


def test_a_fast_reader_of_a_long_retr_waits_its_turn_between_budgets(server_factory):
    """One connection's socket reads and writes per turn are bounded (limits::IO_PER_DRIVE):
    a client reading a 20 MiB RETR as fast as loopback allows is moved on in pieces, each
    turn after the other connections' events, and gets every byte."""
    from pathlib import Path
    s = server_factory().start()  # log_level debug: the deferrals are logged
    d = Path(s.settings["mailbox_dir"]) / "bob"
    for sub in ("tmp", "new", "cur"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    line = b"x" * 1022 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * (20 * 1024)
    (d / "new" / "1700000000.M1P1.big").write_bytes(body)
    c, r = login(s, user="bob", pw="bob-pw")
    assert r.startswith("+OK maildrop has 1 messages"), r
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    c.sendall(b"RETR 1\r\n")
    got = bytearray()
    while not got.endswith(b"\r\n.\r\n"):
        chunk = c.recv(1024 * 1024)
        assert chunk, "closed mid-message"
        got += chunk
    assert got.startswith(b"+OK"), bytes(got[:80])
    assert got[got.index(b"\r\n") + 2:-3] == body
    assert say(c, "QUIT").startswith("+OK")
    c.close()
    assert "the turn's I/O budget is spent; going on next turn" in s.log()
