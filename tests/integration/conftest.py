"""Harness for integration tests: starts the real postling binary on loopback with a temp config.

Every test gets fresh ports, a fresh state directory, users and aliases files. Nothing here
mocks the server: tests talk to it with real clients over 127.0.0.1 / ::1 only.
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("POSTLING_BIN", ROOT / "target" / "debug" / "postling"))

# The disk executor backend the whole suite runs on (`disk_io = auto | uring | helper`), from
# POSTLING_TEST_DISK_IO: scripts/test runs the suite once with the default and once with
# `helper`. Unset, configs carry no disk_io line (the server's default, auto). A test that
# sets disk_io itself (test_authexec compares the backends) keeps its own value.
TEST_DISK_IO = os.environ.get("POSTLING_TEST_DISK_IO") or None
if TEST_DISK_IO not in (None, "auto", "uring", "helper"):
    raise SystemExit(f"POSTLING_TEST_DISK_IO={TEST_DISK_IO!r}: expected auto, uring or helper")

# The start-up line (level info) that names the backend each explicit mode must end up on.
DISK_IO_LINE = {
    "uring": "disk_io: uring (disk_io = uring)",
    "helper": "disk_io: helper process (disk_io = helper)",
}


def disk_io_settings():
    """The config settings every generated config carries for the backend under test."""
    return {"disk_io": TEST_DISK_IO} if TEST_DISK_IO else {}

# Demo users for tests: alice has a SHA512-CRYPT hash (openssl passwd -6 -salt testsalt alice-pw),
# bob and carol plain passwords so most logins are cheap.
USERS = """\
alice:{SHA512-CRYPT}$6$testsalt$SALTED_PLACEHOLDER
bob:{PLAIN}bob-pw
carol:{PLAIN}carol-pw
"""
ALIASES = """\
postmaster: alice
team: alice, bob
"""


_PORTS_GIVEN = set()


def free_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port nothing listens on, never one this run handed out before: the kernel may give
    the same port to two binds in a row once the first socket is closed (one server got its
    SMTP and POP3 ports equal, and refused to start)."""
    for _ in range(1000):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.bind((host, 0))
        port = s.getsockname()[1]
        s.close()
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port
    raise RuntimeError("no port left that this run has not handed out")


def have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def alice_hash():
    out = subprocess.run(
        ["openssl", "passwd", "-6", "-salt", "testsalt", "alice-pw"],
        capture_output=True, text=True, check=True,
    )
    return out.stdout.strip()


class Server:
    """One postling process with its own config and state directory."""

    def __init__(self, tmp: Path, **settings):
        self.dir = tmp
        self.smtp_port = free_port()
        self.pop3_port = free_port()
        self.pop2_port = free_port()
        self.conf = tmp / "postling.conf"
        self.log_path = tmp / "postling.log"
        self.proc = None
        self.log_mark = 0
        (tmp / "users").write_text(USERS.replace("$6$testsalt$SALTED_PLACEHOLDER", alice_hash()))
        (tmp / "aliases").write_text(ALIASES)
        self.settings = {
            "hostname": "mail.example.test",
            "domains": "example.test",
            "smtp_listen": f"127.0.0.1:{self.smtp_port}",
            "pop3_listen": f"127.0.0.1:{self.pop3_port}",
            "pop2_listen": "",
            "spool_dir": str(tmp / "spool"),
            "mailbox_dir": str(tmp / "mail"),
            "users_file": "users",
            "aliases_file": "aliases",
            "log_file": "",
            "log_level": "debug",
            # The tests connect from loopback, which relay_networks lets relay by default;
            # empty, they see what any outside client sees (test_submission covers both).
            "relay_networks": "",
            # No test may ask the machine's resolver: mail for other domains is looked up
            # here, where nothing answers (tests of delivery by MX run their own server).
            "dns_servers": f"127.0.0.1:{free_port()}",
            **disk_io_settings(),
        }
        self.settings.update(settings)
        self.write_config()

    def write_config(self, extra_lines=""):
        lines = [f"{k} = {v}" for k, v in self.settings.items() if v is not None]
        self.conf.write_text("\n".join(lines) + "\n" + extra_lines)

    def start(self, args=("-f",), prefix=(), wait=True):
        self.log_mark = len(self.log())
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*prefix, str(BIN), "-c", str(self.conf), *args],
            stdout=subprocess.PIPE, stderr=self.logf, stdin=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"postling exited with {self.proc.returncode}:\n{self.log()}")
            log = self.log()[self.log_mark:]
            if "] ready" in log:
                self.check_disk_io(log)
                return
            time.sleep(0.02)
        raise AssertionError(f"postling not ready after {timeout}s:\n{self.log()}")

    def check_disk_io(self, log):
        """With POSTLING_TEST_DISK_IO set, a server started with that mode logged that it runs
        that backend: the second run of the suite cannot silently run the default."""
        want = DISK_IO_LINE.get(TEST_DISK_IO)
        # "ready" is an info line: where it shows, the start-up disk_io line shows too.
        if want and self.settings.get("disk_io") == TEST_DISK_IO:
            assert want in log, f"POSTLING_TEST_DISK_IO={TEST_DISK_IO} but:\n{log}"

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log():
                return
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in log after {timeout}s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def connect(self, port=None, family=socket.AF_INET, host="127.0.0.1", timeout=5):
        s = socket.create_connection((host, port or self.smtp_port), timeout=timeout)
        return s

    def cpu_ticks(self):
        """utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def status(self, key):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split(":", 1)[1].strip()
        return None


def recv_line(sock, timeout=5):
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture
def server_factory(tmp_path):
    servers = []

    def make(**settings):
        sub = tmp_path / f"s{len(servers)}"
        sub.mkdir()
        s = Server(sub, **settings)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop(signal.SIGKILL)


@pytest.fixture
def server(server_factory):
    return server_factory().start()
