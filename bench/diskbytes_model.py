#!/usr/bin/env python3
"""A model, not the server: the file operations postling makes per message, today and with
a spool file that is also the Maildir file (a hard link), replayed on a fresh ext4 in a loop
device to see what each design costs the disk. Needs root (a loop device).

    python3 bench/diskbytes_model.py [--messages N] [--group G]

Today (as strace shows it for the bench's 4 KiB message, doc/spool.md):
  accept:  write 4,606 bytes into an emptied free/ file, sync_file_range; fdatasync each;
           rename free/f -> queue/id each; fsync(queue/)          (per group of G)
  deliver: create Maildir tmp/ file, write 4,442 bytes, sync_file_range; fdatasync each;
           rename tmp/ -> new/ each; fsync(new/)                   (per group of G)
  remove:  rename queue/id -> free/f, truncate it (no sync)
  log:     428 bytes appended per message
link-1: the spool file holds the Maildir bytes (4,442) and its envelope in the same file's
  name and first lines (Return-Path, Delivered-To), so no second file:
  accept:  create tmp/id (O_EXCL), write, sync_file_range; fdatasync each; rename
           tmp/id -> queue/id each; fsync(queue/)
  deliver: link queue/id -> Maildir new/ each; fsync(new/)
  remove:  unlink queue/id (no sync: a redone delivery finds its copy)
link-2: as link-1, plus a separate envelope file queue/id.env (174 bytes) written, synced and
  renamed with the data, and unlinked at removal.
"""
import argparse
import ctypes
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

libc = ctypes.CDLL(None, use_errno=True)
SYNC_FILE_RANGE_WRITE = 2
PAGE = 4096
SPOOL, MAILDIR, ENVELOPE, LOG = 4606, 4442, 174, 428


def sfr(fd):
    libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), SYNC_FILE_RANGE_WRITE)


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def write_bytes():
    io = dict(l.split(": ") for l in Path("/proc/self/io").read_text().splitlines())
    return int(io["write_bytes"])


def today(root, n, group, logf):
    q, free, new, tmp = root / "queue", root / "free", root / "mail" / "new", root / "mail" / "tmp"
    for i in range(300):  # the free/ pool a running server has
        (free / f"f{i}").touch()
    pool = list(range(300))
    for start in range(0, n, group):
        ids = range(start, min(n, start + group))
        fds = []
        for i in ids:
            f = pool.pop()
            fd = os.open(free / f"f{f}", os.O_WRONLY)
            os.write(fd, b"x" * SPOOL)
            sfr(fd)
            fds.append((fd, f, i))
        for fd, _, _ in fds:
            os.fdatasync(fd)
        for fd, f, i in fds:
            os.rename(free / f"f{f}", q / f"m{i}")
            os.close(fd)
        fsync_dir(q)
        # delivery
        mfds = []
        for i in ids:
            fd = os.open(tmp / f"m{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"y" * MAILDIR)
            sfr(fd)
            mfds.append((fd, i))
        for fd, _ in mfds:
            os.fdatasync(fd)
        for fd, i in mfds:
            os.rename(tmp / f"m{i}", new / f"m{i}")
            os.close(fd)
        fsync_dir(new)
        for fd, f, i in fds:
            os.rename(q / f"m{i}", free / f"f{f}")
            os.close(os.open(free / f"f{f}", os.O_WRONLY | os.O_TRUNC))
            pool.insert(0, f)
            os.write(logf, b"l" * LOG)


def linked(root, n, group, logf, envelope):
    q, tmpq, new = root / "queue", root / "tmp", root / "mail" / "new"
    for start in range(0, n, group):
        ids = range(start, min(n, start + group))
        fds = []
        for i in ids:
            names = [f"m{i}"] + ([f"m{i}.env"] if envelope else [])
            for name in names:
                fd = os.open(tmpq / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, b"y" * (ENVELOPE if name.endswith(".env") else MAILDIR))
                sfr(fd)
                fds.append((fd, name))
        for fd, _ in fds:
            os.fdatasync(fd)
        for fd, name in fds:
            os.rename(tmpq / name, q / name)
            os.close(fd)
        fsync_dir(q)
        for i in ids:
            os.link(q / f"m{i}", new / f"m{i}")
        fsync_dir(new)
        for i in ids:
            os.unlink(q / f"m{i}")
            if envelope:
                os.unlink(q / f"m{i}.env")
            os.write(logf, b"l" * LOG)


def run(design, n, group):
    with tempfile.TemporaryDirectory() as d:
        img, mnt = Path(d) / "fs.img", Path(d) / "mnt"
        mnt.mkdir()
        subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        try:
            dev = Path(subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                                      text=True, check=True).stdout.strip()).name
            for sub in ("queue", "free", "tmp", "mail/new", "mail/tmp"):
                (mnt / sub).mkdir(parents=True)
            logf = os.open(mnt / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.sync()
            stat = Path(f"/sys/block/{dev}/stat")
            s0, w0 = int(stat.read_text().split()[6]), write_bytes()
            if design == "today":
                today(mnt, n, group, logf)
            else:
                linked(mnt, n, group, logf, envelope=design == "link-2")
            w1 = write_bytes()
            os.close(logf)
            os.sync()
            s1 = int(stat.read_text().split()[6])
            info = Path(f"/proc/fs/jbd2/{dev}-8/info").read_text()
            tx = int(re.match(r"(\d+) transactions", info).group(1))
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
    return (w1 - w0) / n, (s1 - s0) * 512 / n, tx / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--group", type=int, default=9, help="messages per commit group (9: the bench's average)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("diskbytes_model: needs root (a loop device)")
    print(f"{args.messages} messages, groups of {args.group}; bytes per message")
    print(f"{'design':8} {'write_bytes':>12} {'device':>10} {'commits':>8}")
    for design in ("today", "link-1", "link-2"):
        w, dev, tx = run(design, args.messages, args.group)
        print(f"{design:8} {w:12,.0f} {dev:10,.0f} {tx:8.2f}")


if __name__ == "__main__":
    main()
