"""Operations: the init script against a staged install, daemon mode and its start-up report,
the pid file lock, the privilege drop, reload, log reopen, syslog, install/uninstall.

Daemons here detach (no -f): the init script starts them the way init would. They end up
children of PID 1, which in a container may never reap them, so "gone" means "no process or
a zombie". Tests that need root (privilege drop, chown, a real install in a private
namespace) skip without it.
"""
import hashlib
import os
import shutil
import signal
import socket
import threading
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BIN, ROOT, TEST_DISK_IO, disk_io_settings, free_port, recv_line

SCRIPTS = ROOT / "scripts"
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (privilege drop, chown)")


def alive(pid):
    """True when pid runs and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def proc_status(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].split()
    return None


def greeting(port, timeout=3):
    """The first line from port, connecting once: no retries, the server must be up."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        return recv_line(c, timeout)


def listening(port):
    """True if some socket listens on TCP `port` (IPv4 or IPv6), read from /proc/net: unlike
    a test connect, this cannot be fooled by a TCP self-connect (a client whose ephemeral
    source port happens to equal the free port it dials, which then "connects" to itself)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state = fields[1], fields[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


def refused(port):
    return not listening(port)


def wait_for(cond, timeout=5, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not met after {timeout}s")


def answers(port):
    try:
        return greeting(port, timeout=1).startswith(b"220")
    except OSError:
        return False


class Box:
    """A temp directory (0755, so an unprivileged daemon can reach it) with a config for a
    detached postling on free loopback ports."""

    def __init__(self, root: Path, **settings):
        self.dir = root
        self.smtp_port = free_port()
        self.pop3_port = free_port()
        self.conf = root / "postling.conf"
        self.pid_file = root / "postling.pid"
        self.log_path = root / "postling.log"
        (root / "users").write_text("bob:{PLAIN}bob-pw\n")
        (root / "aliases").write_text("postmaster: bob\n")
        self.settings = {
            "hostname": "mail.example.test",
            "smtp_listen": f"127.0.0.1:{self.smtp_port}",
            "pop3_listen": f"127.0.0.1:{self.pop3_port}",
            "pop2_listen": "",
            "spool_dir": str(root / "spool"),
            "mailbox_dir": str(root / "mail"),
            "pid_file": str(self.pid_file),
            "log_file": str(self.log_path),
            "users_file": str(root / "users"),
            "aliases_file": str(root / "aliases"),
            # Never the machine's resolver (see conftest.Server).
            "dns_servers": f"127.0.0.1:{free_port()}",
            **disk_io_settings(),
        }
        self.settings.update(settings)
        self.write()

    def write(self, extra=""):
        lines = [f"{k} = {v}" for k, v in self.settings.items() if v is not None]
        if self.conf.is_dir():
            self.conf.rmdir()
        self.conf.write_text("\n".join(lines) + "\n" + extra)

    def pid(self):
        text = self.pid_file.read_text().strip()
        return int(text) if text else None

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def run(self, *args, env=None, prefix=()):
        return subprocess.run(
            [*prefix, str(BIN), "-c", str(self.conf), *args],
            capture_output=True, text=True, timeout=30, env=env,
        )

    def break_config(self):
        """A config the loader rejects: duplicate key, unknown key, bad address. Until the
        real parser is merged the loader accepts anything it can read, so then the config
        path becomes a directory, which no loader can read."""
        p = free_port()
        self.conf.write_text(
            f"smtp_listen = 127.0.0.1:{p}\nsmtp_listen = nonsense\nno_such_key = 1\n"
        )
        if self.run("-t").returncode == 0:
            self.conf.unlink()
            self.conf.mkdir()
        return p


@pytest.fixture
def box_factory():
    made = []

    def make(**settings):
        root = Path(tempfile.mkdtemp(prefix="postling-ops-", dir="/tmp"))
        root.chmod(0o755)
        b = Box(root, **settings)
        made.append(b)
        return b

    yield make
    for b in made:
        try:
            pid = b.pid()
        except (FileNotFoundError, ValueError):
            pid = None
        if pid and alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(b.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """scripts/install.sh staged into a temp DESTDIR with the test binary."""
    dest = tmp_path_factory.mktemp("destdir")
    r = install(dest)
    assert r.returncode == 0, r.stderr + r.stdout
    return dest


def install(dest, *args, script="install.sh"):
    env = dict(os.environ, DESTDIR=str(dest), POSTLING_BIN=str(BIN))
    return subprocess.run(
        ["sh", str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=60, env=env
    )


def init(staged, box, action, shell=("dash",), path=None):
    """Runs the staged init script with DAEMON/CONF/PIDFILE overridden from the environment
    (the staged /etc/default/postling names the real paths; the environment must win)."""
    env = dict(
        os.environ,
        DEFAULTS=str(staged / "etc/default/postling"),
        DAEMON=str(staged / "usr/sbin/postling"),
        CONF=str(box.conf),
        PIDFILE=str(box.pid_file),
    )
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [*shell, str(staged / "etc/init.d/postling"), action],
        capture_output=True, text=True, timeout=30, env=env,
    )


# ---- the init script -----------------------------------------------------------------------


def test_init_script_lifecycle_with_start_stop_daemon(staged, box_factory):
    assert shutil.which("start-stop-daemon"), "Debian's start-stop-daemon is part of dpkg"
    b = box_factory()
    r = init(staged, b, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    # `start` returns only once the daemon serves: one connection attempt, no retry.
    assert greeting(b.smtp_port) == b"220 mail.example.test ESMTP postling\r\n"
    assert greeting(b.pop3_port).startswith(b"+OK")
    pid = b.pid()
    assert alive(pid)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "postling"
    assert Path(f"/proc/{pid}/exe").resolve() == (staged / "usr/sbin/postling").resolve()
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[3]) == pid, "detached into its own session (setsid)"
    assert Path(f"/proc/{pid}/fd/0").resolve() == Path("/dev/null")

    r = init(staged, b, "status")
    assert (r.returncode, r.stdout.strip()) == (0, f"postling is running (pid {pid})")
    r = init(staged, b, "start")
    assert r.returncode == 0 and "already running" in r.stdout
    assert b.pid() == pid

    # A second instance with the same pid file (other ports) is refused, naming the holder,
    # before it binds anything.
    other = box_factory(pid_file=str(b.pid_file))
    r = other.run()
    assert r.returncode == 71
    assert r.stderr.strip() == (
        f"postling: another postling (pid {pid}) holds {b.pid_file}; not started"
    )
    assert refused(other.smtp_port)
    assert b.pid() == pid, "the refused start leaves the pid file alone"

    # Reload with a changed config: a new listen address answers, the old ones keep going.
    new_port = free_port()
    b.settings["smtp_listen"] += f", 127.0.0.1:{new_port}"
    b.write()
    r = init(staged, b, "reload")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: answers(new_port), what="the new listen address")
    assert answers(b.smtp_port)

    # Reload with a broken config: refused with the errors; the daemon keeps the old one.
    bad_port = b.break_config()
    r = init(staged, b, "reload")
    assert r.returncode == 6
    assert "has errors; not reloading" in r.stderr
    assert str(b.conf) in r.stderr, "the loader's errors are shown"
    r = init(staged, b, "restart")
    assert r.returncode == 6 and "not restarting" in r.stderr
    r = init(staged, b, "configtest")
    assert r.returncode == 78
    assert b.pid() == pid and alive(pid)
    # SIGHUP sent anyway: the daemon logs the failure and runs on.
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: "still running on the previous config" in b.log(), what="reload failure logged")
    assert answers(b.smtp_port) and answers(new_port) and refused(bad_port)

    b.write()
    r = init(staged, b, "configtest")
    assert r.returncode == 0 and "config OK" in r.stdout
    r = init(staged, b, "stop")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(pid), "stop returns once the process is gone"
    assert not b.pid_file.exists()
    assert refused(b.smtp_port) and refused(new_port)
    r = init(staged, b, "status")
    assert (r.returncode, r.stdout.strip()) == (3, "postling is not running")
    r = init(staged, b, "stop")
    assert r.returncode == 0 and "not running" in r.stdout
    assert "stopped (0 connections cut at shutdown)" in b.log()


def test_init_script_under_busybox_without_start_stop_daemon(staged, box_factory):
    assert shutil.which("busybox"), "busybox is not installed (scripts/test installs it: apt-get install -y busybox)"
    path = "/usr/bin:/bin"
    assert shutil.which("start-stop-daemon", path=path) is None
    b = box_factory()

    def run(action):
        return init(staged, b, action, shell=("busybox", "sh"), path=path)

    r = run("start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert greeting(b.smtp_port).startswith(b"220")
    pid = b.pid()
    r = run("status")
    assert (r.returncode, r.stdout.strip()) == (0, f"postling is running (pid {pid})")
    new_port = free_port()
    b.settings["pop3_listen"] += f", 127.0.0.1:{new_port}"
    b.write()
    assert run("reload").returncode == 0
    wait_for(lambda: refused(new_port) is False, what="the new POP3 address")
    b.break_config()
    r = run("reload")
    assert r.returncode == 6 and "not reloading" in r.stderr
    b.write()
    r = run("restart")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not alive(pid)
    pid2 = b.pid()
    assert pid2 != pid and alive(pid2)
    assert greeting(b.smtp_port).startswith(b"220")
    r = run("stop")
    assert r.returncode == 0
    assert not alive(pid2) and not b.pid_file.exists()
    assert run("status").returncode == 3


def test_status_codes_and_stale_pid_files(staged, box_factory):
    b = box_factory()
    dead = subprocess.Popen(["true"])
    dead.wait()
    b.pid_file.write_text(f"{dead.pid}\n")
    r = init(staged, b, "status")
    assert (r.returncode, r.stdout.strip()) == (1, f"postling is not running, but {b.pid_file} exists")
    # A stale file (nobody holds its lock) never blocks a start.
    r = init(staged, b, "start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert b.pid() != dead.pid and alive(b.pid())
    assert init(staged, b, "stop").returncode == 0
    # The empty file a dropped daemon leaves behind means "not running".
    b.pid_file.write_text("")
    assert init(staged, b, "status").returncode == 3
    b.pid_file.write_text(f"{dead.pid}\n")
    r = init(staged, b, "stop")
    assert r.returncode == 0 and not b.pid_file.exists()
    r = init(staged, b, "bogus")
    assert r.returncode == 2 and "Usage:" in r.stderr
    r = init(staged, b, "reload")
    assert r.returncode == 7 and "not running" in r.stderr


def test_init_scripts_are_posix_sh():
    for tool in ("dash", "busybox", "shellcheck"):
        assert shutil.which(tool), f"{tool} is not installed (scripts/test installs it: apt-get install -y {tool})"
    for name in ("postling.init", "install.sh", "uninstall.sh", "default.postling"):
        p = SCRIPTS / name
        for shell in (["dash", "-n"], ["busybox", "sh", "-n"]):
            r = subprocess.run([*shell, str(p)], capture_output=True, text=True)
            assert r.returncode == 0, f"{shell} {name}: {r.stderr}"
    head = (SCRIPTS / "postling.init").read_text().splitlines()
    assert head[0] == "#!/bin/sh"
    assert "### BEGIN INIT INFO" in head and "### END INIT INFO" in head
    r = subprocess.run(
        ["shellcheck", "-s", "sh", *(str(SCRIPTS / n) for n in ("postling.init", "install.sh", "uninstall.sh"))],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout


def test_systemd_unit_verifies(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (scripts/test installs systemd)"
    unit = (SCRIPTS / "postling.service").read_text().replace("/usr/sbin/postling", str(BIN))
    (tmp_path / "postling.service").write_text(unit)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "postling.service")],
        capture_output=True, text=True, timeout=60,
    )
    # The man page is another package's file until installed; anything else is a unit error.
    problems = [l for l in (r.stdout + r.stderr).splitlines() if l.strip() and "man postling(8)" not in l]
    assert problems == [], problems
    for needed in ("Type=forking", "PIDFile=/run/postling.pid", "ExecStartPre=/usr/sbin/postling -t",
                   "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert needed in (SCRIPTS / "postling.service").read_text()


# ---- daemon mode ----------------------------------------------------------------------------


def test_detached_start_failure_is_reported_once_with_no_process_left(box_factory):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    b = box_factory(smtp_listen=f"127.0.0.1:{port}")
    r = b.run()
    assert r.returncode == 71
    assert r.stderr.count("cannot listen for SMTP on") == 1
    assert "cannot listen for SMTP on" in b.log(), "the log file gets the line too"
    assert not b.pid_file.exists(), "a failed start removes the pid file it created"
    assert refused(b.pop3_port)
    blocker.close()


def test_syslog_when_detached_without_log_file(box_factory):
    b = box_factory(log_file="")
    sock_path = b.dir / "log.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.settimeout(5)
    # A datagram socket queues only net.unix.max_dgram_qlen (10) packets, and the start-up
    # writes more than that before `b.run` returns: read them while it runs, as syslogd would.
    packets = []
    reading = threading.Event()

    def read_until_ready():
        reading.set()
        while not any(p.endswith(": ready") for p in packets):
            packets.append(receiver.recv(2048).decode())

    reader = threading.Thread(target=read_until_ready, daemon=True)
    reader.start()
    reading.wait(5)
    try:
        env = dict(os.environ, POSTLING_SYSLOG_SOCKET=str(sock_path))
        r = b.run(env=env)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", "nothing on the terminal: lines go to syslog"
        pid = b.pid()
        reader.join(10)
        assert any(p.endswith(": ready") for p in packets), packets
        for p in packets:
            # The mail facility (2 * 8) plus a severity: warnings (4) may precede the info (6) lines.
            assert p.startswith(("<20>postling[", "<22>postling[")), p
        assert f"<22>postling[{pid}]: ready" in packets
        with socket.create_connection(("127.0.0.1", b.smtp_port), timeout=3) as c:
            recv_line(c)
        os.kill(pid, signal.SIGTERM)
        while True:
            p = receiver.recv(2048).decode()
            if "stopped" in p:
                break
        assert p == f"<22>postling[{pid}]: stopped (0 connections cut at shutdown)"
        assert wait_gone(pid)
    finally:
        receiver.close()

    # No syslog socket: a warning where the administrator sees it, and the start goes on.
    env = dict(os.environ, POSTLING_SYSLOG_SOCKET=str(b.dir / "no-such.sock"))
    r = b.run(env=env)
    assert r.returncode == 0
    assert f"[WARN] no syslog socket at {b.dir / 'no-such.sock'}" in r.stderr
    assert "/dev/null once postling detaches; set log_file" in r.stderr
    os.kill(b.pid(), signal.SIGTERM)


def test_sigusr1_reopens_the_log_file_after_a_rename(box_factory):
    b = box_factory()
    assert b.run().returncode == 0
    pid = b.pid()
    rotated = b.dir / "postling.log.1"
    b.log_path.rename(rotated)
    with socket.create_connection(("127.0.0.1", b.smtp_port), timeout=3) as c:
        recv_line(c)
    wait_for(lambda: "smtp close" in rotated.read_text(), what="close line in the renamed file")
    os.kill(pid, signal.SIGUSR1)
    wait_for(lambda: b.log_path.exists() and "reopened the log file" in b.log(), what="reopen")
    with socket.create_connection(("127.0.0.1", b.pop3_port), timeout=3) as c:
        recv_line(c)
    wait_for(lambda: "pop3 close" in b.log(), what="close line in the new file")
    old = rotated.read_text()
    assert "] ready" in old and "pop3 close" not in old
    assert "] ready" not in b.log()
    for line in b.log().splitlines():
        assert line[:4].isdigit() and "Z [" in line, line
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)


@needs_root
def test_privilege_drop_to_nobody(box_factory):
    b = box_factory(user="nobody")
    r = b.run()
    assert r.returncode == 0, r.stderr
    pid = b.pid()
    assert proc_status(pid, "Uid") == ["65534"] * 4
    assert proc_status(pid, "Gid") == ["65534"] * 4
    assert proc_status(pid, "Groups") == ["65534"], "supplementary groups are nobody's, not root's"
    assert proc_status(pid, "CapEff") == ["0000000000000000"]
    # spool_dir is made searchable (0711) so that `sendmail` can reach spool/maildrop/.
    for d, mode in (("spool", 0o711), ("mail", 0o700), ("spool/maildrop", 0o1733)):
        st = (b.dir / d).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (65534, 65534, mode), d
    assert greeting(b.smtp_port).startswith(b"220")
    assert "running as user nobody (uid 65534, gid 65534)" in b.log()
    st = b.pid_file.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644), "created by root before the drop"
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    # nobody cannot unlink in a root-owned directory: the file is emptied instead.
    wait_for(lambda: b.pid_file.read_text() == "", what="pid file emptied")
    assert "emptied the pid file" in b.log()


@needs_root
def test_unwritable_spool_dir_refuses_to_start_naming_it(box_factory):
    b = box_factory(user="nobody")
    spool = b.dir / "spool"
    spool.mkdir(mode=0o700)
    r = b.run()
    assert r.returncode == 71
    msg = r.stderr.strip()
    assert msg.startswith(
        f"postling: spool_dir {spool} is not writable by user nobody (uid 65534): "
        "it is owned by root (uid 0, gid 0) with mode 0700"
    ), msg
    assert msg.endswith(f"fix: chown -R nobody {spool} (or change spool_dir)"), msg
    assert msg.count("\n") == 0
    assert "not writable by user nobody" in b.log()
    assert refused(b.smtp_port)
    assert not b.pid_file.exists() or b.pid_file.read_text() == ""


@needs_root
def test_user_setting_when_not_started_as_root(box_factory):
    assert shutil.which("setpriv"), "setpriv is not installed (scripts/test installs util-linux)"
    as_nobody = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    b = box_factory(user="daemon", pid_file="", log_file="")
    r = b.run("-f", prefix=as_nobody)
    assert r.returncode == 71
    assert "user = daemon (uid" in r.stderr and "cannot switch users" in r.stderr
    # Started by the configured user itself: fine.
    b = box_factory(user="nobody", pid_file="", log_file="")
    for d in ("spool", "mail"):
        (b.dir / d).mkdir(mode=0o700)
        os.chown(b.dir / d, 65534, 65534)
    p = subprocess.Popen([*as_nobody, str(BIN), "-f", "-c", str(b.conf)],
                         stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: answers(b.smtp_port), what="the server started as nobody")
        assert proc_status(p.pid, "Uid") == ["65534"] * 4
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(10) == 0


# ---- install.sh / uninstall.sh --------------------------------------------------------------


def tree(root):
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        out[str(p.relative_to(root))] = (st.st_mode, digest)
    return out


def test_install_is_idempotent_and_never_overwrites_an_edited_config(tmp_path):
    dest = tmp_path / "image"
    r = install(dest)
    assert r.returncode == 0, r.stderr
    first = tree(dest)
    for f in ("usr/sbin/postling", "etc/postling/postling.conf", "etc/postling/users",
              "etc/postling/aliases", "etc/default/postling", "etc/init.d/postling",
              "lib/systemd/system/postling.service"):
        assert f in first, f
    # sendmail runs as any user and reads the config; the users file stays private.
    assert oct(first["etc/postling"][0] & 0o777) == "0o755"
    assert oct(first["etc/postling/postling.conf"][0] & 0o777) == "0o644"
    assert oct(first["etc/postling/users"][0] & 0o777) == "0o640"
    assert oct(first["var/spool/postling"][0] & 0o777) == "0o711"
    assert oct(first["var/spool/postling/maildrop"][0] & 0o7777) == "0o1733"
    for name in ("sendmail", "mailq"):
        assert os.readlink(dest / "usr/sbin" / name) == "postling"
    assert "linked /usr/sbin/sendmail -> postling" in r.stdout
    assert oct(first["var/mail/postling"][0] & 0o777) == "0o700"
    assert oct(first["usr/sbin/postling"][0] & 0o777) == "0o755"
    assert "system user and group 'postling'" in r.stdout
    assert "chown postling:postling /var/spool/postling /var/spool/postling/maildrop" in r.stdout
    conf = (dest / "etc/postling/postling.conf").read_text()
    for line in ("smtp_listen = 0.0.0.0:25", "pop3_listen = 0.0.0.0:110", "user = postling",
                 "pid_file = /run/postling.pid", "log_file =\n"):
        assert line in conf, line
    assert "alice" not in (dest / "etc/postling/users").read_text().replace("#alice", "")

    # The production config passes -t (its paths pointed into the image; the image's system
    # user does not exist on this build machine, so an account that does stands in for it).
    check = tmp_path / "check.conf"
    check.write_text(conf.replace("/etc/postling/", f"{dest}/etc/postling/").replace("user = postling", "user = nobody"))
    r = subprocess.run([str(BIN), "-t", "-c", str(check)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

    r = install(dest)
    assert r.returncode == 0
    assert "installed" not in r.stdout, "a re-run changes nothing"
    assert tree(dest) == first

    edited = conf.replace("#hostname = mail.example.org", "hostname = mx.example.net")
    (dest / "etc/postling/postling.conf").write_text(edited)
    r = install(dest)
    assert r.returncode == 0
    assert f"kept your edited {dest}/etc/postling/postling.conf" in r.stdout
    assert f"{dest}/etc/postling/postling.conf.new" in r.stdout
    assert (dest / "etc/postling/postling.conf").read_text() == edited
    assert (dest / "etc/postling/postling.conf.new").read_text() == conf
    again = tree(dest)
    r = install(dest)
    assert tree(dest) == again, "the .new file is rewritten identically"

    r = install(dest, script="uninstall.sh")
    assert r.returncode == 0
    assert not (dest / "usr/sbin/postling").exists() and not (dest / "etc/init.d/postling").exists()
    assert not os.path.lexists(dest / "usr/sbin/sendmail") and not os.path.lexists(dest / "usr/sbin/mailq")
    assert (dest / "etc/postling/postling.conf").read_text() == edited
    assert (dest / "var/mail/postling").is_dir()
    r = install(dest, "--purge", script="uninstall.sh")
    assert r.returncode == 0
    assert not (dest / "etc/postling").exists() and not (dest / "var/mail/postling").exists()


def test_install_keeps_another_mail_systems_sendmail(tmp_path):
    dest = tmp_path / "image"
    (dest / "usr/sbin").mkdir(parents=True)
    (dest / "usr/sbin/sendmail").write_text("#!/bin/sh\n# another MTA\n")
    (dest / "usr/bin").mkdir(parents=True)
    (dest / "usr/bin/mailq").symlink_to("../sbin/sendmail")
    r = install(dest)
    assert r.returncode == 0, r.stderr
    assert f"kept the existing {dest}/usr/sbin/sendmail (another mail system's)" in r.stdout
    assert f"kept the existing {dest}/usr/bin/mailq (another mail system's)" in r.stdout
    assert (dest / "usr/sbin/sendmail").read_text() == "#!/bin/sh\n# another MTA\n"
    assert not os.path.lexists(dest / "usr/sbin/mailq")
    r = install(dest, script="uninstall.sh")
    assert r.returncode == 0
    assert (dest / "usr/sbin/sendmail").read_text() == "#!/bin/sh\n# another MTA\n"
    assert f"kept {dest}/usr/sbin/sendmail (not postling's)" in r.stdout


NAMESPACE_SCRIPT = r"""
set -u
root=$1 repo=$2 bin=$3
step() { echo "STEP $*"; }
cp -a /etc "$root/etc" && mount --bind "$root/etc" /etc
cp -a /usr/sbin "$root/sbin" && mount --bind "$root/sbin" /usr/sbin
# Another mail system's sendmail (this machine may carry Postfix for the bench) must never run
# here: the private /usr/sbin loses it.
rm -f /usr/sbin/sendmail /usr/sbin/mailq
for d in /var/spool /var/mail /run /usr/lib/systemd/system /usr/share/man/man8 /usr/share/man/man5; do
    mkdir -p "$d" && mount -t tmpfs tmpfs "$d"
done
ip link set lo up 2>/dev/null || python3 -c 'import fcntl, socket, struct
s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))'
POSTLING_BIN=$bin sh "$repo/scripts/install.sh"; step install $?
POSTLING_BIN=$bin sh "$repo/scripts/install.sh" >/dev/null; step install-again $?
# The backend the suite runs on (POSTLING_TEST_DISK_IO), added to the installed config.
[ -z "${POSTLING_TEST_DISK_IO:-}" ] || echo "disk_io = $POSTLING_TEST_DISK_IO" >>/etc/postling/postling.conf
/usr/sbin/postling -t; step configtest $?
/etc/init.d/postling start; step start $?
pid=$(cat /run/postling.pid)
echo "UID $(grep ^Uid: /proc/$pid/status)"
echo "POSTLING $(id -u postling)"
echo "OWNER $(stat -c %U:%G:%a /var/spool/postling /var/mail/postling | tr '\n' ' ')"
python3 -c 'import socket
for port in (25, 110):
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    print("GREETING", port, s.recv(100))'
# The installer links /usr/sbin/sendmail only where no other mail system has one (this machine
# may carry Postfix, whose /usr/lib/sendmail stays visible here): then postling's own command.
sendmail=/usr/sbin/sendmail
[ -L /usr/sbin/sendmail ] || sendmail="/usr/sbin/postling sendmail"
printf 'Subject: cron\n\nhi\n' | setpriv --reuid=65534 --regid=65534 --clear-groups $sendmail root; step sendmail $?
/etc/init.d/postling reload; step reload $?
/etc/init.d/postling stop; step stop $?
/etc/init.d/postling status; step status $?
sh "$repo/scripts/uninstall.sh" --purge; step purge $?
id postling >/dev/null 2>&1; step user-gone $?
kill -9 "$pid" 2>/dev/null
"""


@needs_root
def test_real_install_in_a_private_namespace(tmp_path):
    """What a fresh Debian machine sees: install.sh, then /etc/init.d/postling start gives an
    unprivileged postling on ports 25 and 110. Run in private mount and network namespaces
    (copies of /etc and /usr/sbin, empty /var/spool, /var/mail and /run) so the host is
    untouched."""
    if not shutil.which("unshare") or subprocess.run(
        ["unshare", "-mn", "true"], capture_output=True
    ).returncode != 0:
        pytest.skip("cannot create mount and network namespaces here")
    script = tmp_path / "ns.sh"
    script.write_text(NAMESPACE_SCRIPT)
    r = subprocess.run(
        ["unshare", "-mn", "sh", str(script), str(tmp_path), str(ROOT), str(BIN)],
        capture_output=True, text=True, timeout=60,
    )
    out = r.stdout
    steps = dict(l.split()[1:3] for l in out.splitlines() if l.startswith("STEP "))
    assert steps == {
        "install": "0", "install-again": "0", "configtest": "0", "start": "0", "sendmail": "0",
        "reload": "0", "stop": "0", "status": "3", "purge": "0", "user-gone": "1",
    }, out + r.stderr
    uid = next(l for l in out.splitlines() if l.startswith("POSTLING ")).split()[1]
    assert f"UID Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in out
    assert "OWNER postling:postling:711 postling:postling:700" in out
    assert "GREETING 25 b'220 " in out and "GREETING 110 b'+OK" in out
    assert "created the system user and group postling" in out


# ---- the released (static) binary and NSS ---------------------------------------------------

# A user that exists only in the namespace's private /etc/passwd and /etc/group; its uid and
# gids are far from anything a host allocates.
NSS_UID, NSS_GID, NSS_EXTRA_GID = 64123, 64123, 64124

NSS_SCRIPT = r"""
set -u
dir=$1 dest=$2 smtp=$3
step() { echo "STEP $*"; }
# Private copies of the user database and an nsswitch.conf that names systemd, the way a
# stock Debian 12 has it: glibc's NSS would load libnss_systemd.so.2 for these lookups.
mount --bind "$dir/passwd" /etc/passwd && mount --bind "$dir/group" /etc/group &&
    mount --bind "$dir/nsswitch.conf" /etc/nsswitch.conf; step mounts $?
export DEFAULTS=$dest/etc/default/postling DAEMON=$dest/usr/sbin/postling
export CONF=$dir/postling.conf PIDFILE=$dest/run/postling.pid
sh "$dest/etc/init.d/postling" start; step start $?
pid=$(cat "$PIDFILE")
echo "PID $pid"
for key in Uid Gid Groups VmRSS; do echo "$key $(grep "^$key:" "/proc/$pid/status" | cut -f2-)"; done
python3 -c 'import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
print("GREETING", s.recv(100))' "$smtp"
sh "$dest/etc/init.d/postling" stop; step stop $?
if [ -d "/proc/$pid" ] && ! grep -q "^State:.*Z" "/proc/$pid/status"; then step gone 1; else step gone 0; fi
sh "$dest/etc/init.d/postling" status; step status $?
kill -9 "$pid" 2>/dev/null
"""


def nss_systemd_library():
    for d in ("/usr/lib", "/lib"):
        found = sorted(Path(d).glob("*/libnss_systemd.so.2")) + sorted(Path(d).glob("libnss_systemd.so.2"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="module")
def release_bin():
    """The binary as it is installed: scripts/build-release (static glibc where available)."""
    r = subprocess.run(
        ["nice", "sh", str(SCRIPTS / "build-release")], capture_output=True, text=True, timeout=1800
    )
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip().splitlines()[-1])


@needs_root
def test_installed_static_binary_drops_to_a_files_user_with_nss_systemd(release_bin):
    """Issue 10: statically linked glibc loads libnss_systemd.so.2 (and a second libc) for
    any NSS lookup that reaches `systemd` in nsswitch.conf, and the daemon crashed at start.
    The released binary, installed by install.sh into a private root and started by the init
    script, must become a user that exists only in /etc/passwd and /etc/group (bind-mounted
    in a private mount namespace, with nsswitch.conf naming systemd) and serve, then stop."""
    assert shutil.which("unshare"), "unshare (util-linux) is needed for a private mount namespace"
    assert nss_systemd_library(), "libnss_systemd.so.2 is needed (apt-get install -y libnss-systemd)"
    # Under /tmp and mode 0755 (pytest's tmp_path is 0700): the dropped daemon must reach it.
    tmp_path = Path(tempfile.mkdtemp(prefix="postling-nss-", dir="/tmp"))
    try:
        run_installed_static_binary(tmp_path, release_bin)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def run_installed_static_binary(tmp_path, release_bin):
    tmp_path.chmod(0o755)
    dest = tmp_path / "root"
    env = dict(os.environ, DESTDIR=str(dest), POSTLING_BIN=str(release_bin))
    r = subprocess.run(["sh", str(SCRIPTS / "install.sh")], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    (dest / "run").mkdir()
    # The files the namespace sees as /etc/passwd, /etc/group and /etc/nsswitch.conf: the
    # host's plus the installed config's user (and one supplementary group it is a member of).
    assert "user = postling\n" in (dest / "etc/postling/postling.conf").read_text()
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    assert "\npostling:" not in "\n" + passwd, "the host must not have a postling user"
    (tmp_path / "passwd").write_text(
        passwd + f"postling:x:{NSS_UID}:{NSS_GID}::/nonexistent:/usr/sbin/nologin\n")
    (tmp_path / "group").write_text(
        group + f"postling:x:{NSS_GID}:\npostling-extra:x:{NSS_EXTRA_GID}:nobody,postling\n")
    (tmp_path / "nsswitch.conf").write_text(
        "passwd: files systemd\ngroup: files systemd\nshadow: files systemd\nhosts: files\n")
    # What install.sh tells a staged install's target system to do.
    for d in ("var/spool/postling", "var/mail/postling"):
        os.chown(dest / d, NSS_UID, NSS_GID)
    etc = dest / "etc/postling"
    for p in (etc, etc / "postling.conf", etc / "users", etc / "aliases"):
        os.chown(p, 0, NSS_GID)
    # The installed config, its paths under the private root and its ports on loopback.
    smtp, pop3 = free_port(), free_port()
    conf = (etc / "postling.conf").read_text()
    conf = conf.replace("/etc/postling/", f"{etc}/").replace("/var/", f"{dest}/var/")
    conf = conf.replace("/run/postling.pid", f"{dest}/run/postling.pid")
    conf = conf.replace("0.0.0.0:25", f"127.0.0.1:{smtp}").replace("0.0.0.0:110", f"127.0.0.1:{pop3}")
    conf = conf.replace("log_file =\n", f"log_file = {tmp_path}/postling.log\n")
    if TEST_DISK_IO:
        conf += f"disk_io = {TEST_DISK_IO}\n"
    (tmp_path / "postling.conf").write_text(conf)

    script = tmp_path / "nss.sh"
    script.write_text(NSS_SCRIPT)
    r = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", str(script), str(tmp_path),
         str(dest), str(smtp)],
        capture_output=True, text=True, timeout=60,
    )
    out = r.stdout
    try:
        log = (tmp_path / "postling.log").read_text(errors="replace")
    except FileNotFoundError:
        log = ""
    steps = dict(l.split()[1:3] for l in out.splitlines() if l.startswith("STEP "))
    assert steps == {"mounts": "0", "start": "0", "stop": "0", "gone": "0", "status": "3"}, (
        out + r.stderr + log)
    lines = {l.split(" ", 1)[0]: l.split(" ", 1)[1] for l in out.splitlines() if " " in l}
    assert lines["Uid"].split() == [str(NSS_UID)] * 4, out
    assert lines["Gid"].split() == [str(NSS_GID)] * 4, out
    assert sorted(lines["Groups"].split()) == [str(NSS_GID), str(NSS_EXTRA_GID)], out
    assert lines["GREETING"].startswith("b'220 "), out
    assert f"running as user postling (uid {NSS_UID}, gid {NSS_GID})" in log, log
    rss_kib = int(lines["VmRSS"].split()[0])
    print(f"idle VmRSS of the installed static binary right after start: {rss_kib} KiB")
    assert rss_kib < 16 * 1024, out
    # The host's files are untouched.
    assert Path("/etc/passwd").read_text() == passwd
    assert Path("/etc/group").read_text() == group
