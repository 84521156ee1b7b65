"""Torture: crash safety. `kill -9` at random moments under a steady 20-session load, restart on
the same spool and Maildirs, and check every promise: each message that got a `250` is in each
of its recipients' Maildirs exactly once (or still queued), and duplicates come only from
deliveries a kill cut between the Maildir write and the queue update."""
import collections
import random
import time

from test_torture import (
    MAILDIR_PID_RE, SmtpLoad, check_accepted_delivered, maildir_copies, maildir_files,
    normal_client, wait_queue_empty,
)

KILLS = 22
# Delivery attempts per reactor turn (limits::DELIVERIES_PER_TURN): one kill can cut at most
# the batch being settled, so at most this many messages per kill may be delivered twice.
DELIVERIES_PER_TURN = 8
SPOOL_FREE_KEEP = 256  # limits::SPOOL_FREE_KEEP: removed messages' files kept in free/ for reuse


def maildir_time(path):
    """The wall-clock time in a Maildir unique name (SECONDS.M<usec>P...)."""
    secs, rest = path.name.split(".", 1)
    return int(secs) + int(rest[1:rest.index("P")]) / 1e6


def test_kill9_under_load_loses_nothing(server_factory):
    s = server_factory(retry_min="1s", retry_max="2s", max_connections_per_ip="64", log_level="info")
    s.start()
    rng = random.Random(20261201)
    pids = []  # every incarnation of the server, in order
    killed_at = {}  # pid -> wall-clock time of its kill
    t0 = time.monotonic()
    with SmtpLoad(s, sessions=20, per_session=4, sizes=(200, 6000), seed=7) as load:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.25, 0.9))
            pids.append(s.proc.pid)
            killed_at[s.proc.pid] = time.time()
            s.kill9()
            s.start()
        pids.append(s.proc.pid)
        time.sleep(1.0)  # the last incarnation serves the load a while too
        load.finish()
    loaded = time.monotonic() - t0
    wait_queue_empty(s, timeout=90)
    drained = time.monotonic() - t0 - loaded

    accepted = load.accepted
    copies = maildir_copies(s)
    lost, dups, damaged = check_accepted_delivered(s, accepted, copies)
    promised_copies = sum(len(users) for users, _ in accepted.values())
    delivered_copies = sum(len(v) for c in copies.values() for v in c.values())
    unpromised = {(u, qid) for u, c in copies.items() for qid in c if qid not in accepted}
    # A duplicate is allowed only where a kill cut a delivery between the Maildir write and the
    # queue update: its first copy was written by a killed incarnation just before the kill,
    # the second by a later incarnation redelivering the entry it found still queued.
    dup_messages = collections.defaultdict(set)  # killed pid -> queue ids delivered twice
    for (u, qid), paths in dups.items():
        writers = sorted((maildir_time(p), int(MAILDIR_PID_RE.search(p.name).group(1))) for p in paths)
        (first_time, first_pid), (_, second_pid) = writers[0], writers[1]
        assert first_pid in killed_at, f"{qid}: first copy by pid {first_pid}, never killed"
        assert killed_at[first_pid] - 2.0 <= first_time <= killed_at[first_pid] + 0.05, (
            f"{qid} for {u}: first copy {killed_at[first_pid] - first_time:.3f}s before its "
            f"writer was killed: not a delivery cut by the kill")
        assert pids.index(second_pid) > pids.index(first_pid), f"{qid}: copies out of order"
        dup_messages[first_pid].add(qid)
    dup_copies = sum(len(p) - 1 for p in dups.values())
    tmp_left = sum(1 for u in ("alice", "bob", "carol")
                   for p in (s.dir / "mail" / u / "tmp").glob("*"))
    # free/ keeps the files of removed messages for reuse (at most SPOOL_FREE_KEEP); anything
    # in tmp/ or queue/ would be a leftover.
    spool = s.dir / "spool"
    spool_left = [p.name for d in ("tmp", "queue") for p in (spool / d).glob("*")]
    # While mail flows every removed file is kept; once the queue is idle the excess over
    # SPOOL_FREE_KEEP is given back a few files per turn.
    deadline = time.time() + 10
    while len(list((spool / "free").glob("*"))) > SPOOL_FREE_KEEP and time.time() < deadline:
        time.sleep(0.05)
    free_kept = len(list((spool / "free").glob("*")))
    # A kill between a removal's rename into free/ and its truncation leaves delivered mail
    # there; the next start empties it, and a running server empties every file it frees.
    free_held = sum(p.stat().st_size for p in (spool / "free").glob("*"))
    c = load.counts
    print(f"\ncrash safety: {KILLS} kill -9 over {loaded:.1f}s of 20-session load, queue empty "
          f"{drained:.1f}s after the load stopped")
    print(f"  messages sent {c['sent']}, accepted (250) {c['accepted']}, refused {c['refused']} "
          f"{dict(load.replies)}, cut by a kill {c['cut']}, connections refused during restarts "
          f"{c['no connection']}")
    print(f"  promised copies {promised_copies}, copies in Maildirs {delivered_copies}, lost "
          f"{len(lost)}, damaged {len(damaged)}, duplicate copies {dup_copies} of "
          f"{len({q for q in (k[1] for k in dups)})} messages (per killed incarnation: "
          f"{ {pid: len(q) for pid, q in dup_messages.items()} }), delivered without a 250 "
          f"(killed between commit and reply) {len(unpromised)}, Maildir tmp/ leftovers {tmp_left}, "
          f"free/ {free_kept} files holding {free_held} octets")
    print(f"  duplicated messages {sum(len(q) for q in dup_messages.values())} for {KILLS} kills")
    assert c["accepted"] >= 200, "the load generator hardly got anything through"
    assert not lost, f"{len(lost)} promised copies lost, e.g. {lost[:5]}"
    assert not damaged, f"damaged copies: {damaged[:5]}"
    killed = set(pids[:-1])
    for pid, qids in dup_messages.items():
        assert pid in killed, f"duplicates written by pid {pid}, which was never killed"
        assert len(qids) <= DELIVERIES_PER_TURN, (
            f"one kill (pid {pid}) duplicated {len(qids)} messages, more than one delivery batch")
    assert sum(len(q) for q in dup_messages.values()) <= KILLS * DELIVERIES_PER_TURN
    assert not spool_left, f"files left in the spool after the queue emptied: {spool_left}"
    assert free_kept <= SPOOL_FREE_KEEP, f"{free_kept} files kept in free/"
    assert free_held == 0, f"the {free_kept} files in free/ hold {free_held} octets of old mail"
    # The server is healthy after all that.
    normal_client(s)
    assert len(maildir_files(s, "alice")) >= 1
