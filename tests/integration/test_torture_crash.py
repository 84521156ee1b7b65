"""Torture: crash safety. `kill -9` at random moments under a steady 20-session load, restart on
the same spool and Maildirs, and check every promise: each message that got a `250` is in each
of its recipients' Maildirs exactly once: no copy lost, and no copy twice, not even from a
delivery a kill cut between the Maildir renames and the queue update (the restarted server
finds those copies by their names and does not write them again)."""
import random
import time

from test_torture import (
    SmtpLoad, check_accepted_delivered, maildir_copies, maildir_files, normal_client,
    wait_queue_empty,
)

KILLS = 22
SPOOL_FREE_KEEP = 256  # limits::SPOOL_FREE_KEEP: removed messages' files kept in free/ for reuse


def test_kill9_under_load_loses_nothing(server_factory):
    s = server_factory(retry_min="1s", retry_max="2s", max_connections_per_ip="64", log_level="info")
    s.start()
    rng = random.Random(20261201)
    t0 = time.monotonic()
    with SmtpLoad(s, sessions=20, per_session=4, sizes=(200, 6000), seed=7) as load:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.25, 0.9))
            s.kill9()
            s.start()
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
    # Copies of messages whose 250 a kill cut off count too: those must not come twice either.
    dups.update({(u, qid): paths for u, c in copies.items() for qid, paths in c.items()
                 if qid not in accepted and len(paths) > 1})
    dup_copies = sum(len(p) - 1 for p in dups.values())
    found_again = s.log().count("already has its copy")
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
          f"{len({q for q in (k[1] for k in dups)})} messages, delivered without a 250 "
          f"(killed between commit and reply) {len(unpromised)}, Maildir tmp/ leftovers {tmp_left}, "
          f"free/ {free_kept} files holding {free_held} octets")
    print(f"  over {KILLS} kills: lost copies {len(lost)}, duplicate copies {dup_copies}, "
          f"copies found after a restart instead of written again {found_again}")
    assert c["accepted"] >= 200, "the load generator hardly got anything through"
    assert not lost, f"{len(lost)} promised copies lost, e.g. {lost[:5]}"
    assert not damaged, f"damaged copies: {damaged[:5]}"
    assert not dups, (
        f"{dup_copies} duplicate copies after {KILLS} kills, e.g. "
        f"{[(k, [p.name for p in v]) for k, v in list(dups.items())[:3]]}")
    assert not spool_left, f"files left in the spool after the queue emptied: {spool_left}"
    assert free_kept <= SPOOL_FREE_KEEP, f"{free_kept} files kept in free/"
    assert free_held == 0, f"the {free_kept} files in free/ hold {free_held} octets of old mail"
    # The server is healthy after all that.
    normal_client(s)
    assert len(maildir_files(s, "alice")) >= 1
