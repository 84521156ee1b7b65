"""Peers for the outbound tests, all on 127.0.0.1: Postfix's smtp-sink (package postfix, which
scripts/test installs without configuring a system Postfix), a Python SMTP server that stops
answering, a throwaway CA with a leaf for `smarthost.test` / 127.0.0.1, a second postling as a
smarthost, and the test DNS server (dnsserver.py). Import the fixtures into a test module
(`from outbound_fixtures import ...`); every one stops what it started.
"""
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port
from dnsserver import DNSServer

SINK_BIN = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def listening(port):
    """Whether something listens on TCP 127.0.0.1:port (or any address), read from
    /proc/net/tcp{,6} so that checking does not open a session the peer would count."""
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_until(cond, what, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    raise AssertionError(f"{what} not seen after {timeout}s")


class Sink:
    """smtp-sink on 127.0.0.1:port dumping every transaction as one file under `dump_dir`.

    `args` are extra smtp-sink options, e.g. `("-r", "rcpt")` (450 at RCPT), `("-f", "data")`
    (500 at DATA), `("-q", "data")` (disconnect at DATA). `restart(*args)` keeps the port."""

    def __init__(self, dir: Path, port=None):
        assert os.path.exists(SINK_BIN), "smtp-sink is missing: install postfix (scripts/test does)"
        self.dir = dir
        self.dump_dir = dir / "dump"
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc = None
        self.args = ()

    def start(self, *args):
        assert not listening(self.port), f"port {self.port} is taken"
        self.args = args
        user = ["-u", "root"] if os.getuid() == 0 else []
        self.out = open(self.dir / "sink.out", "ab")
        self.proc = subprocess.Popen(
            [SINK_BIN, *user, "-c", "-h", "sink.test", "-d", f"{self.dump_dir}/msg.", *args,
             f"127.0.0.1:{self.port}", "64"],
            stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"smtp-sink exited {self.proc.returncode}: {(self.dir / 'sink.out').read_text()}")
            return listening(self.port)
        wait_until(up, f"smtp-sink listening on {self.port}")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        wait_until(lambda: not listening(self.port), f"port {self.port} closed")

    def restart(self, *args):
        self.stop()
        return self.start(*args)

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def messages(self):
        """The dumped transactions, oldest first: smtp-sink's X-* headers (X-Mail-Args,
        X-Rcpt-Args ...), its Received line, then the message with LF line ends. smtp-sink
        leaves an empty file for a transaction that ended without a message (a rejected DATA,
        a client gone before it); those are not messages."""
        files = sorted(self.dump_dir.iterdir(), key=lambda p: (p.stat().st_mtime, p.name))
        return [b for b in (p.read_bytes() for p in files) if b]

    def wait_messages(self, count, timeout=15):
        return wait_until(lambda: len(self.messages()) >= count and self.messages(),
                          f"{count} message(s) in smtp-sink {self.dump_dir}", timeout)


class StallServer:
    """An SMTP server that stops answering. `greet=False`: accepts and never says anything.
    Default: sends a 220 greeting, then reads and never replies. `answer_until="."`: answers
    EHLO/HELO, MAIL, RCPT, DATA (354) like a server, takes the message up to the final dot
    (`got_data` is set) and then never replies. Counts connections; `closed` is set when a
    client hangs up."""

    def __init__(self, greet=True, answer_until=None, port=0):
        self.greet = greet
        self.answer_until = answer_until
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", port))
        self.port = self.lsock.getsockname()[1]
        self.lsock.listen(16)
        self.lsock.settimeout(0.1)
        self.connections = 0
        self.lines = []
        self.data = b""
        self.connected = threading.Event()
        self.got_data = threading.Event()
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._socks = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            self._socks.append(c)
            self.connected.set()
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        c.settimeout(0.1)
        buf, in_data = b"", False
        try:
            if self.greet:
                c.sendall(b"220 stall.test ESMTP\r\n")
            while not self._stop.is_set():
                try:
                    chunk = c.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    self.closed.set()
                    return
                buf += chunk
                if self.answer_until is None or not self.greet:
                    self.lines.append(chunk)
                    continue
                while True:
                    if in_data:
                        end = buf.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        self.data += buf[:end + 5]
                        buf = buf[end + 5:]
                        in_data = False
                        self.got_data.set()
                        continue  # stall: never reply to the dot
                    if b"\r\n" not in buf:
                        break
                    line, buf = buf.split(b"\r\n", 1)
                    self.lines.append(line)
                    if self.got_data.is_set():
                        continue
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        c.sendall(b"250-stall.test\r\n250 8BITMIME\r\n")
                    elif verb == b"DATA":
                        c.sendall(b"354 go ahead\r\n")
                        in_data = True
                    elif verb == b"QUIT":
                        c.sendall(b"221 bye\r\n")
                    else:
                        c.sendall(b"250 ok\r\n")
        except OSError:
            self.closed.set()

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        for s in [self.lsock, *self._socks]:
            try:
                s.close()
            except OSError:
                pass


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (args, r.stderr)


class CA:
    """A throwaway CA (`ca`) and a leaf it signed (`cert`, `key`) with subjectAltName
    `DNS:smarthost.test, IP:127.0.0.1`; `other_ca` is an unrelated CA (a wrong trust anchor)."""

    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for name in ("ca", "other-ca"):
            openssl("req", "-x509", *ec, "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "2",
                    "-subj", f"/CN=postling outbound test {name}",
                    "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
        openssl("req", *ec, "-keyout", "leaf-key.pem", "-out", "leaf.csr", "-subj", "/CN=smarthost.test", cwd=d)
        (d / "leaf.ext").write_text(
            "subjectAltName=DNS:smarthost.test,IP:127.0.0.1\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n"
        )
        openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-set_serial", "2",
                "-days", "2", "-out", "leaf.pem", "-extfile", "leaf.ext", cwd=d)
        self.ca, self.other_ca = d / "ca.pem", d / "other-ca.pem"
        self.cert, self.key = d / "leaf.pem", d / "leaf-key.pem"


@pytest.fixture(scope="session")
def outbound_ca(tmp_path_factory):
    return CA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def dns_server():
    """A factory: `dns_server(zone)` starts a DNSServer on 127.0.0.1 (stopped after the test)."""
    started = []

    def make(zone=None):
        d = DNSServer(zone).start()
        started.append(d)
        return d
    yield make
    for d in started:
        d.stop()


@pytest.fixture
def sink(tmp_path):
    """A factory: `sink(*args)` starts smtp-sink with extra options; stopped after the test."""
    started = []

    def make(*args, port=None):
        s = Sink(tmp_path / f"sink{len(started)}", port=port)
        started.append(s)
        return s.start(*args)
    yield make
    for s in started:
        if s.proc:
            s.stop()


@pytest.fixture
def stall_server():
    """A factory: `stall_server(greet=..., answer_until=..., port=...)`; stopped after."""
    started = []

    def make(**kw):
        s = StallServer(**kw)
        started.append(s)
        return s
    yield make
    for s in started:
        s.stop()


SMARTHOST_DOMAIN = "remote.test"


def smarthost(server_factory, ca, **settings):
    """A second postling, `smarthost.test`, local for remote.test (users alice, bob, carol of
    the harness), with STARTTLS on smtp_listen, implicit TLS on `smtps_port` and submission on
    `sub_port`, all with the leaf of `ca`. Started."""
    sub, smtps = free_port(), free_port()
    base = dict(
        hostname="smarthost.test", domains=SMARTHOST_DOMAIN,
        tls_cert=str(ca.cert), tls_key=str(ca.key),
        submission_listen=f"127.0.0.1:{sub}", smtps_listen=f"127.0.0.1:{smtps}",
        auth_failure_delay="1s",
    )
    base.update(settings)
    b = server_factory(**base)
    b.sub_port, b.smtps_port = sub, smtps
    return b.start()
