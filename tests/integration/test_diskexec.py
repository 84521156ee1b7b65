"""The disk executor takes the waits for the disk off the reactor (issue 11): with
`fsync = filesystem` every syncfs, of the spool's group commit and of the Maildir commit, is
made by the helper process (io_uring has no syncfs), never by the daemon itself."""
import os
import re
import signal
import smtplib
import time

from test_smtp import maildir_messages, wait_maildir, wait_queue_empty

STRACE_SYNCFS = ("strace", "-f", "-qq", "-o", None, "-e", "trace=syncfs")


def daemon_pid(s):
    """The daemon under strace: strace's child (the test started strace)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        kids = open(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read().split()
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    raise AssertionError("no daemon under strace")


def children(pid):
    return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]


def test_with_fsync_filesystem_every_syncfs_is_made_by_the_helper(server_factory, tmp_path):
    trace = tmp_path / "syncfs.trace"
    prefix = tuple(str(trace) if a is None else a for a in STRACE_SYNCFS)
    s = server_factory(fsync="filesystem").start(prefix=prefix)
    daemon = daemon_pid(s)
    helper = children(daemon)
    assert len(helper) == 1, helper
    with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
        for n in range(5):
            # One recipient: queued in its Maildir form and linked.
            c.sendmail("a@example.test", ["alice@example.test"], f"Subject: {n}\r\n\r\nbody {n}\r\n")
        # Two: the envelope form, copied into each Maildir.
        c.sendmail("a@example.test", ["alice@example.test", "bob@example.test"],
                   "Subject: both\r\n\r\nto both\r\n")
    wait_maildir(s, "alice", 6)
    wait_maildir(s, "bob", 1)
    wait_queue_empty(s)
    os.kill(daemon, signal.SIGTERM)
    assert s.proc.wait(20) == 0
    calls = [l for l in trace.read_text().splitlines() if "syncfs(" in l]
    by_pid = {}
    for line in calls:
        m = re.match(r"(\d+) +syncfs\(", line)
        assert m, line
        by_pid[int(m.group(1))] = by_pid.get(int(m.group(1)), 0) + 1
    assert daemon not in by_pid, f"the daemon made syncfs itself: {calls}"
    # At least the spool's two stages and the Maildir commit's two, in the helper.
    assert by_pid.get(helper[0], 0) >= 4, calls
    assert len(maildir_messages(s, "alice")) == 6


def test_code_is_unmapped_after_the_last_log_summary_of_a_burst(server_factory, tmp_path):
    """At rest (no connection, no disk work) the daemon hands back memory and unmaps the code
    the burst ran (`daemon::pages`: madvise MADV_DONTNEED). A storm's log summary is written
    when its window ends, after the last connection closed; the rest must come after that
    line, or the code that wrote it stays mapped until the next burst (seen in the bench: the
    idle daemon kept 1 MiB more)."""
    log_file = tmp_path / "file.log"  # a log file, where storms are summarised (not stderr)
    trace = tmp_path / "trace"
    s = server_factory(log_level="info", log_file=str(log_file))
    s.start(prefix=("strace", "-f", "-qq", "-s", "200", "-o", str(trace),
                    "-e", "trace=madvise,write"), wait=False)
    log = lambda: log_file.read_text() if log_file.exists() else ""  # noqa: E731

    def wait_for(cond, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{log()[-3000:]}")

    wait_for(lambda: "] ready" in log(), 20, "the start")
    daemon = daemon_pid(s)
    for _ in range(8):
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=10) as c:
            c.noop()
    # Five close lines are written, the other three counted: their summary comes when the
    # storm's window (10 s) ends.
    summary = "more like this in the last"
    wait_for(lambda: summary in log(), 30, "the close storm's summary")

    def unmapped_after_summary():
        mine = [l for l in trace.read_text().splitlines() if l.startswith(f"{daemon} ")]
        wrote = [i for i, l in enumerate(mine) if "write(" in l and summary in l]
        return bool(wrote) and any("MADV_DONTNEED" in l for l in mine[wrote[-1]:])

    wait_for(unmapped_after_summary, 10, "the daemon's madvise after the summary")
    os.kill(daemon, signal.SIGTERM)
    assert s.proc.wait(20) == 0


def test_a_message_not_in_memory_is_read_in_by_the_helper(server_factory, tmp_path):
    """RETR of a message that is not in the page cache (delivered long ago): the daemon reads
    without waiting (preadv2 with RWF_NOWAIT, which says EAGAIN), the helper process reads the
    part in, and the client gets the message byte for byte."""
    import poplib
    from pathlib import Path

    trace = tmp_path / "reads.trace"
    s = server_factory(auth_failure_delay="1s").start(
        prefix=("strace", "-f", "-qq", "-o", str(trace), "-e", "trace=pread64,preadv2"))
    daemon = daemon_pid(s)
    helper = children(daemon)
    assert len(helper) == 1, helper
    body = b"".join(b"line %07d of a message read from the disk\n" % i for i in range(40_000))
    data = b"Subject: cold\n\n" + body
    cur = Path(s.settings["mailbox_dir"]) / "bob" / "cur"
    for sub in ("tmp", "new", "cur"):
        (cur.parent / sub).mkdir(parents=True, exist_ok=True)
    # A W= in the name: the login does not read the file to size it.
    wire = len(data) + data.count(b"\n")
    path = cur / f"1.M1P1Q1.h,S={len(data)},W={wire}:2,"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    p = poplib.POP3("127.0.0.1", s.pop3_port, timeout=10)
    p.user("bob")
    p.pass_("bob-pw")
    _, lines, _ = p.retr(1)
    p.quit()
    assert b"\n".join(lines) + b"\n" == data
    os.kill(daemon, signal.SIGTERM)
    assert s.proc.wait(20) == 0
    calls = trace.read_text().splitlines()
    nowait_refused = [l for l in calls if l.startswith(f"{daemon} ")
                      and "preadv2(" in l and "RWF_NOWAIT" in l and "EAGAIN" in l]
    assert nowait_refused, "the daemon never found the message out of memory"
    helper_reads = [l for l in calls if l.startswith(f"{helper[0]} ") and "pread64(" in l]
    assert helper_reads, "the helper read nothing in"


def test_pop2_counts_a_message_in_the_helper(server_factory, tmp_path):
    """POP2's READ announces the exact size of a message, which means reading all of it: the
    helper process opens and counts the file (its W= lies here) before the daemon opens it to
    send it, and the client gets that many octets."""
    import socket
    from conftest import free_port
    from pathlib import Path

    trace = tmp_path / "opens.trace"
    s = server_factory(auth_failure_delay="1s")
    s.pop2_port = free_port()
    s.settings["pop2_listen"] = f"127.0.0.1:{s.pop2_port}"
    s.write_config()
    s.start(prefix=("strace", "-f", "-qq", "-o", str(trace), "-e", "trace=openat"))
    daemon = daemon_pid(s)
    helper = children(daemon)
    assert len(helper) == 1, helper
    data = b"Subject: counted\n\n" + b"a line of the message\n" * 5_000
    new = Path(s.settings["mailbox_dir"]) / "bob" / "new"
    for sub in ("tmp", "new", "cur"):
        (new.parent / sub).mkdir(parents=True, exist_ok=True)
    name = "1.M1P1Q1.h,W=7"
    (new / name).write_bytes(data)
    expected = data.replace(b"\n", b"\r\n")
    with socket.create_connection(("127.0.0.1", s.pop2_port), timeout=10) as c:
        f = c.makefile("rb")
        assert f.readline().startswith(b"+")
        c.sendall(b"HELO bob bob-pw\r\n")
        assert f.readline() == b"#1\r\n"
        c.sendall(b"READ 1\r\n")
        assert f.readline() == b"=%d\r\n" % len(expected)
        c.sendall(b"RETR\r\n")
        assert f.read(len(expected)) == expected
        c.sendall(b"ACKS\r\nQUIT\r\n")
        assert f.readline() == b"=0\r\n"
        assert f.readline().startswith(b"+")
    os.kill(daemon, signal.SIGTERM)
    assert s.proc.wait(20) == 0
    opens = [l for l in trace.read_text().splitlines() if f'"{name}"' in l]
    assert opens and opens[0].startswith(f"{helper[0]} "), opens
    assert any(l.startswith(f"{daemon} ") for l in opens), "RETR reads on the daemon"
