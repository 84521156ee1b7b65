"""Per-server process accounting that survives process churn.

A multi-process server (Postfix, Dovecot) starts and ends processes while it works: a
Postfix `smtpd` exits after 100 connections, a `cleanup` after 100 messages, an idle one
after 100 s. Summing /proc/PID counters at the start and end of a window would lose
whatever an exited process did in between, which would flatter the peer. So a `Ledger`
takes a /proc snapshot of the server's process tree at both ends and, in between, listens
to the kernel's taskstats exit records (generic netlink, TASKSTATS family): each exiting
process reports its final CPU time, context switches and I/O bytes there, and nothing has to
poll while the window runs (polling would itself load the machine under test).

Counters, per process: CPU ticks (utime + stime, 1/100 s), context switches (voluntary +
involuntary), write_bytes, cancelled_write_bytes (from /proc/PID/io and the exit record).
"""
import os
import socket
import struct
import threading
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# linux/genetlink.h, linux/taskstats.h
NETLINK_GENERIC = 16
GENL_ID_CTRL = 16
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK = 4
TASKSTATS_TYPE_PID = 1
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
NLM_F_REQUEST = 1

# Offsets in struct taskstats (stable since version 1; later versions only append).
TS_PID, TS_PPID = 128, 132
TS_UTIME, TS_STIME = 152, 160  # microseconds
TS_WRITE_BYTES, TS_CANCELLED = 256, 264
TS_NVCSW, TS_NIVCSW = 272, 280
TS_MIN_LEN = 288

FIELDS = ("ticks", "switches", "write_bytes", "cancelled_write_bytes")


def proc_counters(pid):
    """(start time, counters) of a live process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    switches = sum(int(l.split()[1]) for l in status.splitlines() if "ctxt_switches" in l)
    iod = dict(l.split(": ") for l in io.splitlines() if ": " in l)
    return int(stat[19]), {
        "ticks": int(stat[11]) + int(stat[12]),
        "switches": switches,
        "write_bytes": int(iod.get("write_bytes", 0)),
        "cancelled_write_bytes": int(iod.get("cancelled_write_bytes", 0)),
    }


def all_processes():
    """{pid: ppid} of every process."""
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return out


def tree(root):
    """`root` and all its descendants (empty if `root` is gone)."""
    if root is None or not Path(f"/proc/{root}").exists():
        return []
    parents = all_processes()
    children = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def memory_kib(pids):
    """(sum of VmRSS, sum of Pss) in KiB over `pids`."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


class ExitListener:
    """Collects taskstats exit records of every process on the machine while it runs."""

    def __init__(self):
        self.records = {}
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self.sock.bind((0, 0))
        self.family = self._family_id()
        self.cpus = f"0-{os.cpu_count() - 1}"
        self._send(TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, self.cpus.encode() + b"\0")
        self.sock.settimeout(0.2)
        self.running = True
        self.lost = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self, cmd, attr_type, value, family=None):
        attr = struct.pack("HH", 4 + len(value), attr_type) + value
        attr += b"\0" * (-len(attr) % 4)
        payload = struct.pack("BBH", cmd, 1, 0) + attr
        self.sock.send(struct.pack("IHHII", 16 + len(payload), family or self.family, NLM_F_REQUEST, 1, 0) + payload)

    def _family_id(self):
        self.family = GENL_ID_CTRL
        self._send(CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0", GENL_ID_CTRL)
        data = self.sock.recv(65536)
        for attr_type, value in _attrs(data[20:]):
            if attr_type == CTRL_ATTR_FAMILY_ID:
                return struct.unpack("H", value[:2])[0]
        raise RuntimeError("the kernel has no TASKSTATS netlink family")

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                self.lost = True  # ENOBUFS: records were dropped
                continue
            self._parse(data)

    def _parse(self, data):
        while len(data) >= 16:
            length, msg_type = struct.unpack("IH", data[:6])
            if length < 16:
                return
            if msg_type == self.family and data[16] == TASKSTATS_CMD_NEW:
                for attr_type, value in _attrs(data[20:length]):
                    if attr_type == TASKSTATS_TYPE_AGGR_PID:
                        for sub_type, sub in _attrs(value):
                            if sub_type == TASKSTATS_TYPE_STATS and len(sub) >= TS_MIN_LEN:
                                self._record(sub)
            data = data[(length + 3) & ~3:]

    def _record(self, ts):
        u64 = lambda off: struct.unpack_from("Q", ts, off)[0]
        pid, ppid = struct.unpack_from("II", ts, TS_PID)
        self.records[pid] = (ppid, {
            "ticks": (u64(TS_UTIME) + u64(TS_STIME)) * CLK_TCK / 1e6,
            "switches": u64(TS_NVCSW) + u64(TS_NIVCSW),
            "write_bytes": u64(TS_WRITE_BYTES),
            "cancelled_write_bytes": u64(TS_CANCELLED),
        })

    def close(self):
        self.running = False
        self.thread.join()
        try:
            self._send(TASKSTATS_CMD_GET, TASKSTATS_CMD_ATTR_DEREGISTER_CPUMASK, self.cpus.encode() + b"\0")
        except OSError:
            pass
        self.sock.close()


def _attrs(data):
    while len(data) >= 4:
        length, attr_type = struct.unpack("HH", data[:4])
        if length < 4:
            return
        yield attr_type & 0x3FFF, data[4:length]
        data = data[(length + 3) & ~3:]


class Ledger:
    """Counters of a server's whole process tree over a window, exited processes included.

    `root_pid` is a callable so a restarted server is followed. Use as a context manager;
    afterwards `totals` holds the sums and `processes` how many took part.
    """

    def __init__(self, root_pid):
        self.root_pid = root_pid
        self.totals = None

    def _snapshot(self):
        snap = {}
        for pid in tree(self.root_pid()):
            c = proc_counters(pid)
            if c:
                snap[pid] = c
        return snap

    def __enter__(self):
        self.listener = ExitListener()
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc):
        end = self._snapshot()
        self.listener.close()
        members = set(self.start) | set(end)
        totals = dict.fromkeys(FIELDS, 0)
        counted = 0
        # Exited processes: members seen at the start, or children of a member (repeat until
        # no more are found, for grandchildren).
        exited = {pid: rec for pid, rec in self.listener.records.items() if pid not in end}
        grew = True
        while grew:
            grew = False
            for pid, (ppid, _) in exited.items():
                if pid not in members and ppid in members:
                    members.add(pid)
                    grew = True
        for pid in members:
            if pid in end:
                now = end[pid][1]
                before = self.start[pid][1] if pid in self.start and self.start[pid][0] == end[pid][0] else None
            elif pid in exited:
                now = exited[pid][1]
                before = self.start[pid][1] if pid in self.start else None
            else:
                continue
            counted += 1
            for f in FIELDS:
                totals[f] += now[f] - (before[f] if before else 0)
        self.totals = totals
        self.processes = counted
        self.exits_lost = self.listener.lost
        return False
