#!/usr/bin/env python3
"""Where postling's disk bytes per message go (issue 11, item 4). Not part of bench/run.

    python3 bench/diskbytes.py [--messages N] [--sessions S] [--size BYTES] [--dir DIR] [--bin PATH]

Runs postling alone (same config as bench/run's smtp20 figure) and sends N messages of SIZE
bytes with `smtp-source` (S sessions, one message per connection) to one local user, waits
until all are in the Maildir and the queue is empty, and prints:

- `write_bytes` of postling's process tree (/proc/PID/io and taskstats exit records, exactly
  as bench/run's "disk bytes written per message"), per message. The kernel counts a page
  (4 KiB) each time a clean page of a file becomes dirty, in the process that dirtied it;
  so a 4.4 KB file costs 8 KiB, and a page dirtied again after writeback counts again.
  Metadata (inodes, directory blocks, bitmaps) goes through the ext4 journal (jbd2) and its
  checkpoint, kernel threads: it is in no process's write_bytes.
- Without --dir, as root: the run is made on a fresh 1 GiB ext4 file system in a loop device
  (mkfs.ext4 defaults: a journal, data=ordered; --no-journal makes it without one), and the
  device's own count of sectors written (/sys/block/loopN/stat, after `sync`) is printed
  beside it: data, metadata and journal, everything that reached the "disk"; and jbd2's
  count of journal commits and logged blocks.
- The breakdown: the sizes of one spool file, one Maildir file, and the log bytes, each
  rounded up to whole pages as write_bytes counts them. A spool file in its Maildir form
  ("link-1", doc/spool.md) is the Maildir file too (linked, not copied): counted once.

Needs `smtp-source` (Debian package postfix). Traffic stays on 127.0.0.1.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import procstat  # noqa: E402
from servers import Postling, free_port, maildir_clear, maildir_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = 4096


def pages(n):
    return -(-n // PAGE) * PAGE


def smtp_source(port, sessions, messages, size, rcpt):
    subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-M", "client.example.org", "-f", "bench@example.org", "-t", rcpt,
                    f"127.0.0.1:{port}"], check=True, stdout=subprocess.DEVNULL, timeout=900)


def wait(cond, what, timeout=300):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def queue_empty(spool):
    return not any(os.scandir(spool / "queue"))


def sectors_written(dev):
    return int(Path(f"/sys/block/{dev}/stat").read_text().split()[6])


def journal(dev):
    """(transactions, logged blocks) so far of the file system's journal, or None without one.
    jbd2 prints only averages: logged blocks = transactions x average, rounded."""
    try:
        info = Path(f"/proc/fs/jbd2/{dev}-8/info").read_text()
    except OSError:
        return None
    tx = int(re.match(r"(\d+) transactions", info).group(1))
    m = re.search(r"(\d+) logged blocks per transaction", info)
    return tx, tx * int(m.group(1)) if m else 0


def measure(work, binary, args, dev):
    pg = Postling(work, binary, (free_port(), free_port()))
    pg.setup()
    pg.start()
    try:
        # Warm-up: creates the Maildir and the spool's free/ files, as in bench/run.
        smtp_source(pg.smtp_port, args.sessions, 200, args.size, "alice@example.test")
        wait(lambda: maildir_count(pg.mail, "alice") >= 200 and queue_empty(pg.spool), "warm-up")
        maildir_clear(pg.mail, "alice")
        os.sync()
        log_before = (pg.dir / "postling.log").stat().st_size
        sect_before = sectors_written(dev) if dev else None
        jbd_before = journal(dev) if dev else None
        with procstat.Ledger(pg.root_pid) as acct:
            smtp_source(pg.smtp_port, args.sessions, args.messages, args.size, "alice@example.test")
            wait(lambda: maildir_count(pg.mail, "alice") >= args.messages, "delivery")
            wait(lambda: queue_empty(pg.spool), "removal")
            time.sleep(1)  # as bench/run: the last removals
        log_bytes = (pg.dir / "postling.log").stat().st_size - log_before
        os.sync()
        sect_after = sectors_written(dev) if dev else None
        jbd_after = journal(dev) if dev else None
        t = acct.totals
        # One message kept in the queue: a Maildir that is a plain file defers it.
        pg.mail.mkdir(parents=True, exist_ok=True)
        (pg.mail / "bob").write_bytes(b"")
        smtp_source(pg.smtp_port, 1, 1, args.size, "bob@example.test")
        wait(lambda: any(p.name.endswith(".state") for p in (pg.spool / "queue").iterdir()), "deferral")
        spool_files = {p.name: p.stat().st_size for p in (pg.spool / "queue").iterdir()}
        # The Maildir form ("link-1", doc/spool.md): the spool file is the Maildir file.
        linked = any(p.read_bytes().startswith(b"Return-Path: <") for p in (pg.spool / "queue").iterdir()
                     if "." not in p.name)
        maildir_files = sorted((pg.mail / "alice" / "new").iterdir())
        mail_size = maildir_files[0].stat().st_size
    finally:
        pg.stop()
    n = args.messages
    msg = next(s for name, s in spool_files.items() if "." not in name)
    state = next(s for name, s in spool_files.items() if name.endswith(".state"))
    print(f"messages: {n} of {args.size} bytes (smtp-source -l), {args.sessions} sessions")
    print(f"file system: {subprocess.run(['df', '-T', str(work)], capture_output=True, text=True).stdout.splitlines()[1].split()[1]}"
          f"{' (fresh loop device ' + dev + ')' if dev else ''}")
    print(f"write_bytes per message (as bench/run): {t['write_bytes'] / n:,.0f}"
          f"  (cancelled_write_bytes {t['cancelled_write_bytes'] / n:,.0f}; processes {acct.processes})")
    if dev:
        print(f"device bytes written per message (data + metadata + journal): "
              f"{(sect_after - sect_before) * 512 / n:,.0f}")
        if jbd_before and jbd_after:
            tx = jbd_after[0] - jbd_before[0]
            print(f"  journal: {tx} transactions ({tx / n:.2f} per message), about "
                  f"{(jbd_after[1] - jbd_before[1]) * PAGE / n:,.0f} bytes logged per message "
                  f"(jbd2 averages; plus a descriptor and a commit block per transaction)")
        elif dev:
            print("  journal: none (file system made without one)")
    print("breakdown (bytes; as write_bytes counts them, whole pages):")
    if linked:
        print(f"  spool file queue/<id>, in its Maildir form (for bob, as sampled): {msg} -> {pages(msg)}")
        print(f"  Maildir file: {mail_size} -> 0 (the spool file, linked into new/: no copy)")
        mail_size = 0
    else:
        print(f"  spool file queue/<id>: {msg} -> {pages(msg)}")
        print(f"  Maildir file: {mail_size} -> {pages(mail_size)}")
    print(f"  log file (log_level = info): {log_bytes / n:,.0f} per message")
    print(f"  (a state file, written only on deferral: {state} -> {pages(state)}; none here)")
    print(f"  sum: {pages(msg) + pages(mail_size) + log_bytes / n:,.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--dir", help="run in this directory (no loop device, no device count)")
    ap.add_argument("--no-journal", action="store_true",
                    help="make the loop device's ext4 without a journal (mkfs.ext4 -O ^has_journal)")
    ap.add_argument("--bin", default=os.environ.get("POSTLING_BENCH_BIN", ROOT / "target" / "release" / "postling"))
    args = ap.parse_args()
    binary = Path(args.bin).resolve()
    if args.dir:
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            measure(Path(d), binary, args, None)
        return
    if os.geteuid() != 0:
        sys.exit("diskbytes: without --dir it needs root (a loop device)")
    with tempfile.TemporaryDirectory() as d:
        img, mnt = Path(d) / "fs.img", Path(d) / "mnt"
        mnt.mkdir()
        subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F"] + (["-O", "^has_journal"] if args.no_journal else []) + [str(img)],
                       check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        try:
            src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                                 text=True, check=True).stdout.strip()
            measure(mnt / "work", binary, args, Path(src).name)
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


if __name__ == "__main__":
    main()
