"""The three servers under test, each set up in its own directory under bench/work/.

Nothing of the system's configuration is edited: Postfix runs from its own config directory
(`postfix -c`) with its own queue directory, Dovecot from its own config file and base_dir,
postling from its own config. /etc/postfix is still snapshotted and checked (and restored
if anything changed it) because a Postfix command run by mistake without `-c` would edit it.
"""
import grp
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import procstat

USERS = ["alice", "bob", "carol"]
DOMAIN = "example.test"
# alice's password is stored as SHA512-CRYPT (5,000 rounds, the default) in postling's and
# Dovecot's password files, so that a login costs a real hash (the authflood figure); the
# others stay {PLAIN}. The salt is fixed so both servers get the same stored string.
ALICE_PW = "alice-pw"


def alice_crypt():
    return "{SHA512-CRYPT}" + sh(["openssl", "passwd", "-6", "-salt", "benchsalt", ALICE_PW]).stdout.strip()


def password_lines():
    return "".join(f"{u}:{alice_crypt() if u == 'alice' else '{PLAIN}' + u + '-pw'}\n" for u in USERS)


def sh(cmd, check=True, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=check, capture_output=True, text=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30, greeting=True):
    """Waits until `port` accepts (and, with `greeting`, says something: an implicit-TLS port
    says nothing before the client's hello)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if greeting:
                    s.recv(200)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def pid_from(path):
    try:
        pid = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


# The harness's own deletions are kept out of the measurements. Freeing thousands of inodes
# (a Maildir emptied between rounds, a server's directory from the round before) makes the
# next file creations in the same block group slower: on an ext4 without a journal (this
# machine's) every creation scans past the inodes freed in the last 60-300 s
# (`recently_deleted` in fs/ext4/ialloc.c), which measured at ~0.5 ms a file after a 5,000
# file cleanup, and that cost landed on whichever server ran next. So what the harness
# removes is renamed into a trash directory (no inode is freed) and deleted after the run.
_trash = None
_trashed = 0


def set_trash(path):
    """Where `discard` moves things; None deletes them at once (the default)."""
    global _trash
    _trash = Path(path) if path else None
    if _trash:
        _trash.mkdir(parents=True, exist_ok=True)


def discard(path):
    """Removes a file or directory tree for the harness, by moving it into the trash."""
    global _trashed
    path = Path(path)
    if not os.path.lexists(path):
        return
    if _trash is None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
        return
    _trashed += 1
    os.rename(path, _trash / f"{os.getpid()}-{_trashed}")


def empty_trash():
    """Deletes what `discard` moved aside (after the measurements)."""
    if _trash is not None:
        shutil.rmtree(_trash, ignore_errors=True)
        _trash.mkdir(parents=True, exist_ok=True)


def maildir_clear(root, user):
    """Empties a user's Maildir (keeps the directories, which a server may have cached)."""
    for sub in ("new", "cur", "tmp"):
        d = Path(root) / user / sub
        if d.is_dir():
            for f in os.scandir(d):
                discard(f.path)


def maildir_count(root, user):
    n = 0
    for sub in ("new", "cur"):
        try:
            n += len(os.listdir(Path(root) / user / sub))
        except FileNotFoundError:
            pass
    return n


class Server:
    name = "?"
    smtp_port = None
    pop3_port = None
    # Process names (comm) of a server at rest; None: any process set that stays unchanged.
    rest_processes = None

    def root_pid(self):
        raise NotImplementedError

    def pids(self):
        return procstat.tree(self.root_pid())


class Postling(Server):
    name = "postling"

    def __init__(self, work, binary, ports, disk_io="auto"):
        self.dir = work / "postling"
        self.mail = self.dir / "mail"
        self.spool = self.dir / "spool"
        self.conf = self.dir / "postling.conf"
        self.binary = binary
        self.smtp_port, self.pop3_port = ports
        self.proc = None
        # Set before setup() for the TLS figures: (cert, key) and the implicit-TLS port.
        self.tls = None
        self.smtps_port = None
        # Set before setup() for the relay figure: extra config lines (relay_host and friends).
        self.relay_conf = {}
        # The executor's backend (`bench/run --disk-io`).
        self.disk_io = disk_io

    def setup(self):
        self.kill_leftover()
        discard(self.dir)
        self.dir.mkdir(parents=True)
        (self.dir / "users").write_text(password_lines())
        (self.dir / "aliases").write_text("postmaster: alice\n")
        # Production defaults except: loopback ports, state in this directory, connection
        # limits above the 10,000 idle connections, and the retry interval (see deferred).
        self.write_conf()
        out = sh([str(self.binary), "-t", "-c", str(self.conf)], check=False)
        if out.returncode != 0:
            raise RuntimeError(f"postling -t: {out.stdout}{out.stderr}")

    def write_conf(self):
        tls = ""
        if self.tls:
            # Only for the TLS figures, so the others measure the server as before.
            tls = f"tls_cert = {self.tls[0]}\ntls_key = {self.tls[1]}\nsmtps_listen = 127.0.0.1:{self.smtps_port}\n"
        relay = "".join(f"{k} = {v}\n" for k, v in self.relay_conf.items())
        self.conf.write_text(tls + relay +
            f"hostname = bench.{DOMAIN}\ndomains = {DOMAIN}\n"
            f"smtp_listen = 127.0.0.1:{self.smtp_port}\npop3_listen = 127.0.0.1:{self.pop3_port}\n"
            f"pop2_listen =\nspool_dir = spool\nmailbox_dir = mail\n"
            f"users_file = users\naliases_file = aliases\n"
            f"max_connections = 12000\nmax_connections_per_ip = 12000\n"
            f"log_file = postling.log\nlog_level = info\npid_file = postling.pid\n"
            f"retry_min = 1h\nretry_max = 1h\nauth_failure_delay = 1s\n"
            f"disk_io = {self.disk_io}\n"
        )

    def use_cert(self, cert, key):
        """Switches the certificate by rewriting the config and SIGHUP (new connections get it)."""
        self.tls = (cert, key)
        self.write_conf()
        self.proc.send_signal(signal.SIGHUP)

    def kill_leftover(self):
        pid = pid_from(self.dir / "postling.pid")
        if pid and os.path.realpath(f"/proc/{pid}/exe") == os.path.realpath(self.binary):
            os.kill(pid, signal.SIGTERM)
            time.sleep(2)

    def start(self):
        # As scripts/postling.init and postling.service start it (see the README, Memory).
        env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.tcache_count=0")
        self.proc = subprocess.Popen([str(self.binary), "-f", "-c", str(self.conf)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr.log", "ab"), start_new_session=True)
        wait_port(self.smtp_port)
        wait_port(self.pop3_port)
        if self.smtps_port:
            wait_port(self.smtps_port, greeting=False)

    def root_pid(self):
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def queue(self):
        """(entries, entries with a delivery error) from `postling -q`."""
        out = sh([str(self.binary), "-q", "-c", str(self.conf)], check=False).stdout
        lines = [l for l in out.splitlines()[1:] if l and not l.startswith(("Mail queue", "-- ")) and l[0].isalnum()]
        entries = [l for l in lines if len(l.split()) > 5]
        return len(entries), sum(1 for l in entries if '"' in l)


POSTFIX_SERVICES = """\
{listen} inet  n       -       n       -       {maxproc}   smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
"""
# Implicit TLS (RFC 8314) as Postfix's master.cf.proto has it for port 465.
POSTFIX_SMTPS = """\
{listen} inet  n       -       n       -       {maxproc}   smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
"""


class Postfix(Server):
    """Debian's Postfix from a private config directory, virtual(8) Maildir delivery."""
    name = "postfix"
    rest_processes = {"master", "qmgr", "pickup", "postlogd"}  # the rest end after max_idle

    def __init__(self, work, port, maxproc):
        self.dir = work / "postfix"
        self.etc = self.dir / "etc"
        self.queue_dir = self.dir / "queue"
        self.mail = self.dir / "mail"
        self.smtp_port = port
        self.maxproc = maxproc
        self.tls = None  # (cert, key) for the TLS figures
        self.smtps_port = None
        self.relay_conf = {}  # main.cf settings for the relay figure (relayhost and friends)

    def setup(self):
        if not shutil.which("postfix"):
            raise RuntimeError("postfix is not installed")
        self.kill_leftover()
        discard(self.dir)
        for d in (self.etc, self.queue_dir, self.dir / "data", self.mail):
            d.mkdir(parents=True)
        uid, gid = pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid
        for d in (self.dir / "data", self.mail):
            os.chown(d, uid, gid)
        (self.etc / "vmailbox").write_text("".join(f"{u}@{DOMAIN} {u}/\n" for u in USERS))
        # Debian's defaults except what a loopback benchmark needs; each line says why.
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,  # private queue: the system's is never touched
            "data_directory": self.dir / "data",
            "mail_owner": "postfix", "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1", "inet_protocols": "ipv4",
            "myhostname": f"bench.{DOMAIN}", "mydomain": DOMAIN, "mydestination": "",
            "mynetworks": "127.0.0.0/8", "alias_maps": "", "alias_database": "",
            "virtual_mailbox_domains": DOMAIN, "virtual_mailbox_base": self.mail,
            "virtual_mailbox_maps": f"hash:{self.etc}/vmailbox",
            "virtual_uid_maps": f"static:{uid}", "virtual_gid_maps": f"static:{gid}",
            # No DNS from a benchmark (and postling does no client lookups either).
            "smtpd_peername_lookup": "no",
            # The side session's NOOPs would otherwise count as junk after 100 and be slowed.
            "smtpd_junk_command_limit": "1000000",
            # No per-client limits: every benchmark client is 127.0.0.1.
            "smtpd_client_connection_count_limit": "0", "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            # The same retry interval as postling's bench config (see the deferred figure).
            "minimal_backoff_time": "1h", "maximal_backoff_time": "1h",
            "maillog_file": self.dir / "maillog", "maillog_file_prefixes": self.dir,
        }
        if self.tls:
            # Only for the TLS figures: the certificate for the smtps service below (which
            # also offers STARTTLS on the plaintext port, as postling does with a certificate).
            settings.update(smtpd_tls_cert_file=self.tls[0], smtpd_tls_key_file=self.tls[1],
                            smtpd_tls_security_level="may")
        settings.update(self.relay_conf)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        master = POSTFIX_SERVICES.format(listen=f"127.0.0.1:{self.smtp_port}", maxproc=self.maxproc)
        if self.tls:
            master += POSTFIX_SMTPS.format(listen=f"127.0.0.1:{self.smtps_port}", maxproc=self.maxproc)
        (self.etc / "master.cf").write_text(master)
        self.postfix("postmap", str(self.etc / "vmailbox"))
        self.postfix("postfix", "check")

    def postfix(self, command, *args, check=True):
        # Output to a file, not a pipe: `postfix start` leaves daemons that must not hold it.
        with open(self.dir / "commands.log", "a+") as f:
            pos = f.tell()
            rc = subprocess.run([command, "-c", str(self.etc), *args], stdin=subprocess.DEVNULL,
                                stdout=f, stderr=f).returncode
            f.seek(pos)
            text = f.read()
        out = subprocess.CompletedProcess(args, rc, text, "")
        if check and out.returncode != 0:
            log = (self.dir / "maillog").read_text()[-2000:] if (self.dir / "maillog").exists() else ""
            raise RuntimeError(f"{command} {' '.join(args)} failed: {out.stdout}{log}")
        return out.stdout

    def kill_leftover(self):
        if pid_from(self.queue_dir / "pid" / "master.pid"):
            sh(["postfix", "-c", str(self.etc), "stop"], check=False)
            time.sleep(2)

    def start(self):
        self.postfix("postfix", "start")
        wait_port(self.smtp_port)
        if self.smtps_port:
            wait_port(self.smtps_port, greeting=False)

    def use_cert(self, cert, key):
        self.tls = (cert, key)
        self.postfix("postconf", "-e", f"smtpd_tls_cert_file={cert}", f"smtpd_tls_key_file={key}")
        self.postfix("postfix", "reload")

    def root_pid(self):
        return pid_from(self.queue_dir / "pid" / "master.pid")

    def stop(self):
        root = self.root_pid()
        if root is None:
            return
        leftovers = self.pids()
        self.postfix("postfix", "stop", check=False)
        deadline = time.time() + 20
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in leftovers):
            time.sleep(0.2)
        for p in leftovers:  # processes of this instance only, by pid
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def queue(self):
        """(entries, deferred entries) from `postqueue -j`."""
        import json
        out = self.postfix("postqueue", "-j", check=False)
        entries = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
        return len(entries), sum(1 for e in entries if e.get("queue_name") == "deferred")

    def purge_queue(self):
        self.postfix("postsuper", "-d", "ALL", check=False)


class Dovecot(Server):
    name = "dovecot"

    def __init__(self, work, port):
        self.dir = work / "dovecot"
        self.mail = self.dir / "mail"
        self.conf = self.dir / "dovecot.conf"
        self.pop3_port = port
        self.tls = None  # (cert, key) for the TLS figures
        self.pop3s_port = None

    def setup(self):
        if not shutil.which("dovecot"):
            raise RuntimeError("dovecot is not installed")
        self.kill_leftover()
        discard(self.dir)
        (self.dir / "run").mkdir(parents=True)
        self.mail.mkdir()
        shutil.chown(self.mail, "mail", "mail")
        (self.dir / "passwd").write_text(password_lines())
        self.write_conf()

    def write_conf(self):
        # Dovecot's defaults except: POP3 only, loopback, TLS only for the TLS figures,
        # passwords from a file (the same stored strings as postling's), Maildir under this
        # directory owned by `mail`, process and client limits raised above the 1,000 idle TLS
        # connections of the tls figure (each pre-login connection is a pop3-login process),
        # and the failed-login delay of postling's bench config (1 s; Dovecot's default 2 s).
        ssl = "ssl = no"
        if self.tls:
            ssl = f"ssl = yes\nssl_cert = <{self.tls[0]}\nssl_key = <{self.tls[1]}"
        self.conf.write_text(f"""\
base_dir = {self.dir}/run
protocols = pop3
listen = 127.0.0.1
{ssl}
default_process_limit = 1500
default_client_limit = 6000
auth_failure_delay = 1s
disable_plaintext_auth = no
auth_mechanisms = plain
log_path = {self.dir}/dovecot.log
passdb {{
  driver = passwd-file
  args = {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={self.mail}/%u
}}
mail_location = maildir:{self.mail}/%u
first_valid_uid = 1
service pop3-login {{
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port or 0}
  }}
}}
""")

    def use_cert(self, cert, key):
        self.tls = (cert, key)
        self.write_conf()
        sh(["doveadm", "-c", str(self.conf), "reload"])

    def kill_leftover(self):
        if pid_from(self.dir / "run" / "master.pid"):
            sh(["doveadm", "-c", str(self.conf), "stop"], check=False)
            time.sleep(2)

    def start(self):
        # Not through sh(): the daemon would inherit the capture pipes and never close them.
        subprocess.run(["dovecot", "-c", str(self.conf)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=open(self.dir / "start.log", "ab"))
        wait_port(self.pop3_port)
        if self.pop3s_port:
            wait_port(self.pop3s_port, greeting=False)

    def root_pid(self):
        return pid_from(self.dir / "run" / "master.pid")

    def stop(self):
        if self.root_pid() is None:
            return
        leftovers = self.pids()
        sh(["doveadm", "-c", str(self.conf), "stop"], check=False)
        deadline = time.time() + 10
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in leftovers):
            time.sleep(0.2)
        for p in leftovers:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


class EtcPostfixGuard:
    """Snapshot of /etc/postfix, restored at the end if anything changed it."""

    def __init__(self, work):
        self.saved = work / "etc-postfix.tar"

    @staticmethod
    def digest():
        h = hashlib.sha256()
        for p in sorted(Path("/etc/postfix").rglob("*")):
            h.update(str(p).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.hexdigest()

    def save(self):
        if not Path("/etc/postfix").exists():
            self.before = None
            return
        with tarfile.open(self.saved, "w") as t:
            t.add("/etc/postfix", arcname="postfix")
        self.before = self.digest()

    def restore(self):
        if self.before is None or self.digest() == self.before:
            return False
        shutil.rmtree("/etc/postfix")
        with tarfile.open(self.saved) as t:
            t.extractall("/etc")
        return True
