//! The engine on a fake in-memory queue and a real directory and Maildir root on temp dirs.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::directory::{Directory, DirectorySettings};
use crate::spool::BodyType;

/// (entry, delivered, failed, attempts, last error) per `record_attempt`.
type Recorded = (QueueId, Vec<usize>, Vec<(usize, String)>, u32, String);

#[derive(Default)]
struct FakeQueue {
    entries: HashMap<QueueId, (Envelope, Vec<u8>, Vec<usize>, u32)>,
    removed: Vec<QueueId>,
    recorded: Vec<Recorded>,
    bounces: Vec<(Envelope, Vec<u8>)>,
    next: u32,
    /// `record_attempt` fails as on a full spool.
    records_fail: bool,
}

impl FakeQueue {
    fn add(&mut self, sender: &str, rcpts: &[&str]) -> QueueId {
        self.next += 1;
        let id = QueueId(format!("ID{:010}", self.next));
        let env = Envelope {
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: "client".into(),
            arrival: SystemTime::now(),
            smtputf8: false,
            body: BodyType::SevenBit,
            pickup: None,
        };
        let data = b"Subject: test\r\nFrom: x@example.org\r\n\r\nbody\r\n".to_vec();
        self.entries
            .insert(id.clone(), (env, data, (0..rcpts.len()).collect(), 0));
        id
    }
}

impl QueueStore for FakeQueue {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry> {
        let (env, _, pending, attempts) = self
            .entries
            .get(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Entry {
            envelope: env.clone(),
            pending: pending.clone(),
            attempts: *attempts,
        })
    }
    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>> {
        let (_, data, _, _) = self
            .entries
            .get(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(io::Cursor::new(data.clone())))
    }
    fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        attempts: u32,
        last_error: &str,
        _next_attempt: SystemTime,
    ) -> io::Result<()> {
        if self.records_fail {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if let Some((_, _, pending, a)) = self.entries.get_mut(id) {
            pending.retain(|i| !delivered.contains(i) && !failed.iter().any(|(f, _)| f == i));
            *a = attempts;
        }
        self.recorded.push((
            id.clone(),
            delivered.to_vec(),
            failed.to_vec(),
            attempts,
            last_error.to_string(),
        ));
        Ok(())
    }
    fn remove(&mut self, id: &QueueId) -> io::Result<()> {
        self.entries.remove(id);
        self.removed.push(id.clone());
        Ok(())
    }
    fn enqueue(&mut self, envelope: &Envelope, data: &[u8]) -> Result<QueueId, SpoolError> {
        self.bounces.push((envelope.clone(), data.to_vec()));
        Ok(QueueId(format!("BOUNCE{:06}", self.bounces.len())))
    }
}

struct World {
    _tmp: tempfile::TempDir,
    mail: std::path::PathBuf,
    dir: Directory,
    engine: Engine,
    queue: FakeQueue,
}

fn world(aliases: &str, lifetime: Duration) -> World {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    let alias_file = tmp.path().join("aliases");
    fs::write(&users, "alice:{PLAIN}a\nbob:{PLAIN}b\ncarol:{PLAIN}c\n").unwrap();
    fs::write(&alias_file, aliases).unwrap();
    let (dir, _) = Directory::load(DirectorySettings {
        users_file: users,
        aliases_file: alias_file,
        domains: vec!["example.test".into()],
        recipient_delimiter: Some('+'),
    })
    .unwrap();
    let mail = tmp.path().join("mail");
    let engine = Engine::new(
        Maildirs::new(&mail, "mail.example.test"),
        DeliveryPolicy {
            hostname: "mail.example.test".into(),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            queue_lifetime: lifetime,
        },
    );
    World {
        _tmp: tmp,
        mail,
        dir,
        engine,
        queue: FakeQueue::default(),
    }
}

fn count(mail: &Path, user: &str) -> usize {
    fs::read_dir(mail.join(user).join("new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

impl World {
    fn run(&mut self, budget: usize) -> usize {
        self.engine.run(
            budget,
            &mut self.queue,
            &self.dir,
            Instant::now(),
            SystemTime::now(),
        )
    }
}

const ALIASES: &str =
    "postmaster: alice\nteam: alice, bob\nghost: nosuchuser\nloop1: loop2\nloop2: loop1\n";

#[test]
fn one_copy_per_user_however_many_recipients_lead_there() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let id = w.queue.add(
        "s@example.org",
        &[
            "alice@example.test",
            "team@example.test",
            "bob+x@example.test",
        ],
    );
    w.engine.schedule.due_now(id.clone());
    assert_eq!(w.run(8), 1);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert_eq!(count(&w.mail, "bob"), 1);
    assert_eq!(w.queue.removed, vec![id]);
    assert!(w.queue.bounces.is_empty());
    assert!(w.engine.schedule.is_empty());
}

#[test]
fn unknown_target_and_loop_bounce_at_once_to_the_sender() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let id = w.queue.add(
        "s@example.org",
        &[
            "ghost@example.test",
            "loop1@example.test",
            "carol@example.test",
        ],
    );
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(count(&w.mail, "carol"), 1);
    assert_eq!(w.queue.removed, vec![id]);
    assert_eq!(w.queue.bounces.len(), 1);
    let (env, report) = &w.queue.bounces[0];
    assert_eq!(env.sender, "");
    assert_eq!(env.recipients, vec!["s@example.org".to_string()]);
    let report = String::from_utf8_lossy(report);
    assert!(report.contains(
        "Final-Recipient: rfc822; ghost@example.test\r\nAction: failed\r\nStatus: 5.1.1"
    ));
    assert!(report.contains(
        "Final-Recipient: rfc822; loop1@example.test\r\nAction: failed\r\nStatus: 5.4.6"
    ));
    assert!(!report.contains("carol@example.test"));
    assert!(
        report.contains("Subject: test\r\n"),
        "original headers attached"
    );
    // The bounce is queued like any message and due at once.
    assert_eq!(
        w.engine.schedule.next_due(Instant::now()),
        Some(QueueId("BOUNCE000001".into()))
    );
}

#[test]
fn nothing_bounces_to_the_null_sender() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let id = w.queue.add("", &["ghost@example.test"]);
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert!(w.queue.bounces.is_empty());
    assert_eq!(w.queue.removed, vec![id]);
}

#[test]
fn temporary_failure_records_progress_and_defers_with_backoff() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    let id = w
        .queue
        .add("s@example.org", &["alice@example.test", "bob@example.test"]);
    w.engine.schedule.due_now(id.clone());
    let t0 = Instant::now();
    w.run(8);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert!(w.queue.removed.is_empty());
    let (rid, delivered, failed, attempts, why) = &w.queue.recorded[0];
    assert_eq!(
        (rid, delivered.as_slice(), failed.len(), *attempts),
        (&id, &[0][..], 0, 1)
    );
    assert!(why.starts_with("bob@example.test: "), "{why}");
    // Not due before retry_min, due after it.
    assert_eq!(w.engine.schedule.next_due(t0), None);
    let timeout = w.engine.schedule.timeout(t0).unwrap();
    assert!(
        timeout > Duration::from_secs(59) && timeout < Duration::from_secs(61),
        "{timeout:?}"
    );
    // Fixed: the next attempt delivers only bob (alice is done and not repeated).
    fs::remove_file(w.mail.join("bob")).unwrap();
    w.engine.schedule.flush();
    w.run(8);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert_eq!(count(&w.mail, "bob"), 1);
    assert_eq!(w.queue.removed, vec![id]);
}

#[test]
fn expired_temporary_failures_bounce_with_4_4_7() {
    let mut w = world(ALIASES, Duration::ZERO);
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(w.queue.removed, vec![id]);
    let report = String::from_utf8_lossy(&w.queue.bounces[0].1).to_string();
    assert!(report.contains("Status: 4.4.7"), "{report}");
    assert!(report.contains("expired"));
}

#[test]
fn a_turn_attempts_at_most_its_budget_and_delivers_the_batch() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    for _ in 0..20 {
        let id = w.queue.add("s@example.org", &["alice@example.test"]);
        w.engine.schedule.due_now(id);
    }
    assert_eq!(w.run(8), 8);
    assert_eq!(count(&w.mail, "alice"), 8);
    assert_eq!(w.run(8), 8);
    assert_eq!(w.run(8), 4);
    assert_eq!(w.run(8), 0);
    assert_eq!(count(&w.mail, "alice"), 20);
    assert_eq!(w.queue.removed.len(), 20);
}

#[test]
fn vanished_entries_are_skipped() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    w.engine.schedule.due_now(QueueId("GONE00000000".into()));
    assert_eq!(w.run(8), 0);
    assert!(w.engine.schedule.is_empty());
}

#[test]
fn progress_that_cannot_be_recorded_is_remembered_until_it_can() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    let id = w.queue.add(
        "s@example.org",
        &[
            "alice@example.test",
            "bob@example.test",
            "ghost@example.test",
        ],
    );
    w.queue.records_fail = true;
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert_eq!(w.queue.bounces.len(), 1, "ghost bounced once");
    for _ in 0..3 {
        w.engine.schedule.flush();
        w.run(8);
    }
    assert_eq!(count(&w.mail, "alice"), 1, "alice is not delivered again");
    assert_eq!(w.queue.bounces.len(), 1, "ghost is not bounced again");
    // Space returns: the next record carries what was kept in memory.
    w.queue.records_fail = false;
    w.engine.schedule.flush();
    w.run(8);
    let (_, delivered, failed, _, _) = w.queue.recorded.last().unwrap();
    assert_eq!(delivered, &vec![0]);
    assert_eq!(failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![2]);
    fs::remove_file(w.mail.join("bob")).unwrap();
    w.engine.schedule.flush();
    w.run(8);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert_eq!(count(&w.mail, "bob"), 1);
    assert_eq!(w.queue.removed, vec![id]);
}

/// Every copy in a user's Maildir, `new/` and `cur/`.
fn copies(mail: &Path, user: &str) -> usize {
    ["new", "cur"]
        .iter()
        .map(|sub| {
            fs::read_dir(mail.join(user).join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn copies_a_crash_left_unrecorded_are_found_after_the_restart_and_not_written_again() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let done = w.queue.add(
        "s@example.org",
        &[
            "alice@example.test",
            "team@example.test",
            "carol@example.test",
        ],
    );
    // The crash came after the Maildir renames and before the queue update: the queue still
    // holds the entry as it was before the attempt.
    let before_crash = w.queue.entries.clone();
    w.engine.schedule.due_now(done.clone());
    assert_eq!(w.run(8), 1);
    for user in ["alice", "bob", "carol"] {
        assert_eq!(copies(&w.mail, user), 1, "{user}");
    }
    w.queue.entries = before_crash;
    // alice's POP client took hers into cur/ and a reader flagged it; bob's is still in new/.
    let alice = w.mail.join("alice");
    for f in fs::read_dir(alice.join("new")).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        fs::rename(
            alice.join("new").join(&name),
            alice.join("cur").join(format!("{name}:2,S")),
        )
        .unwrap();
    }
    // carol's copy was fetched and deleted before the restart: nothing shows it was there.
    fs::remove_dir_all(w.mail.join("carol")).unwrap();
    // And an entry the crashed process never got to.
    let fresh = w.queue.add("s@example.org", &["alice@example.test"]);

    // The restart: a new engine, every queued entry recovered.
    let host = w.engine.policy.hostname.clone();
    w.engine = Engine::new(
        Maildirs::new(&w.mail, &host),
        DeliveryPolicy {
            hostname: host,
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            queue_lifetime: Duration::from_secs(3600),
        },
    );
    w.engine.recovered(done.clone());
    w.engine.recovered(fresh.clone());
    assert_eq!(w.run(8), 2);
    assert_eq!(copies(&w.mail, "alice"), 2, "one copy of each entry");
    assert_eq!(copies(&w.mail, "bob"), 1, "not delivered again");
    assert_eq!(
        copies(&w.mail, "carol"),
        1,
        "deleted over POP before the restart: delivered again (the known limit)"
    );
    assert_eq!(w.queue.removed, vec![done.clone(), done, fresh]);
    assert!(w.engine.recovered.is_empty());
    assert!(w.engine.schedule.is_empty());
}

#[test]
fn held_entries_are_never_attempted_and_never_expire_until_released() {
    // A lifetime of zero: any attempt of the held entry would bounce it with 4.4.7.
    let mut w = world(ALIASES, Duration::ZERO);
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    let held = w.queue.add("s@example.org", &["bob@example.test"]);
    let found_held = w.queue.add("s@example.org", &["bob@example.test"]);
    w.engine.schedule.due_now(held.clone());
    w.engine.hold(held.clone());
    w.engine.recovered_held(found_held.clone());
    // Neither a queue run (SIGUSR2), nor a flush of the id, nor a late clock attempts them.
    w.engine.schedule.flush();
    w.engine.flush_one(held.clone());
    w.engine.flush_one(found_held.clone());
    let later = Instant::now() + Duration::from_secs(86400 * 30);
    assert_eq!(w.engine.schedule.timeout(later), None, "nothing scheduled");
    assert_eq!(
        w.engine
            .run(8, &mut w.queue, &w.dir, later, SystemTime::now()),
        0
    );
    assert!(w.queue.removed.is_empty() && w.queue.bounces.is_empty());
    assert!(w.queue.recorded.is_empty(), "not even a deferral");
    assert!(w.engine.is_held(&held) && w.engine.is_held(&found_held));
    // Released: due at once and attempted (bob's Maildir now works).
    fs::remove_file(w.mail.join("bob")).unwrap();
    w.engine.release(held.clone());
    w.engine.release(found_held.clone());
    assert_eq!(w.run(8), 2);
    assert_eq!(count(&w.mail, "bob"), 2);
    assert_eq!(w.queue.removed, vec![held, found_held]);
}

#[test]
fn a_hold_while_scheduled_or_deferred_takes_the_entry_out_of_the_schedule() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(w.engine.schedule.len(), 1, "deferred");
    w.engine.hold(id.clone());
    assert!(w.engine.schedule.is_empty());
    w.engine.release(id.clone());
    assert_eq!(
        w.engine.schedule.timeout(Instant::now()),
        Some(Duration::ZERO),
        "release makes it due now"
    );
    assert_eq!(w.engine.schedule.len(), 1, "once, not twice");
}

#[test]
fn return_to_sender_fails_every_pending_recipient_and_bounces() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let id = w
        .queue
        .add("s@example.org", &["alice@example.test", "bob@example.test"]);
    w.engine.hold(id.clone());
    let n = w
        .engine
        .return_to_sender(&id, &mut w.queue, SystemTime::now())
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(w.queue.removed, vec![id.clone()]);
    assert!(!w.engine.is_held(&id));
    let (env, report) = &w.queue.bounces[0];
    assert_eq!(env.recipients, vec!["s@example.org".to_string()]);
    let report = String::from_utf8_lossy(report);
    assert!(
        report.contains(
            "Final-Recipient: rfc822; bob@example.test\r\nAction: failed\r\nStatus: 5.0.0"
        )
    );
    assert!(report.contains("returned by the administrator"), "{report}");
    assert_eq!(count(&w.mail, "alice"), 0);
    // An unknown id is NotFound and changes nothing.
    let e = w
        .engine
        .return_to_sender(
            &QueueId("NONE00000000".into()),
            &mut w.queue,
            SystemTime::now(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert_eq!(w.queue.bounces.len(), 1);
}

const FORWARDS: &str = "fwd: alice, friend@remote.test, Friend@Remote.test\nboth: friend@remote.test, other@far.test\n";

fn remote_outcome(tag: usize, outcome: Outcome) -> RemoteOutcome {
    RemoteOutcome {
        tag,
        outcome,
        relay: "mx.remote.test[192.0.2.1]:25".into(),
        note: Some("250 2.0.0 queued".into()),
    }
}

#[test]
fn remote_copies_are_handed_out_once_and_the_entry_settles_when_they_come_back() {
    let mut w = world(FORWARDS, Duration::from_secs(3600));
    let id = w.queue.add(
        "s@example.org",
        &["fwd@example.test", "direct@elsewhere.test"],
    );
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    // The local copy is written at once; the entry waits for the remote part.
    assert_eq!(count(&w.mail, "alice"), 1);
    assert!(w.queue.removed.is_empty() && w.queue.recorded.is_empty());
    let jobs = w.engine.take_remote_jobs();
    assert_eq!(jobs.len(), 1);
    // Each remote address once, whatever its case and however many aliases lead there.
    assert_eq!(
        jobs[0].recipients,
        vec![
            "friend@remote.test".to_string(),
            "direct@elsewhere.test".to_string()
        ]
    );
    assert!(w.engine.is_parked(&id));
    // A queue run does not stage it again while it is out.
    w.engine.flush_one(id.clone());
    w.engine.schedule.flush();
    w.run(8);
    assert_eq!(count(&w.mail, "alice"), 1);
    assert!(w.engine.take_remote_jobs().is_empty());

    w.engine.remote_done(
        &id,
        vec![
            remote_outcome(0, Outcome::Delivered),
            remote_outcome(
                1,
                Outcome::Permanent("5.1.1 mx said: 550 5.1.1 no such user".into()),
            ),
        ],
        &mut w.queue,
        Instant::now(),
        SystemTime::now(),
    );
    assert_eq!(w.queue.removed, vec![id]);
    assert_eq!(w.queue.bounces.len(), 1, "one DSN for the failed recipient");
    let report = String::from_utf8_lossy(&w.queue.bounces[0].1).to_string();
    assert!(
        report.contains("Final-Recipient: rfc822; direct@elsewhere.test"),
        "{report}"
    );
    assert!(report.contains("Status: 5.1.1"), "{report}");
    assert!(!report.contains("friend@remote.test"), "{report}");
}

#[test]
fn a_temporary_remote_failure_defers_only_what_is_still_pending() {
    let mut w = world(FORWARDS, Duration::from_secs(3600));
    let id = w.queue.add(
        "s@example.org",
        &["both@example.test", "carol@example.test"],
    );
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    let jobs = w.engine.take_remote_jobs();
    assert_eq!(jobs[0].recipients.len(), 2);
    w.engine.remote_done(
        &id,
        vec![
            remote_outcome(0, Outcome::Delivered),
            remote_outcome(
                1,
                Outcome::Temporary("4.4.3 cannot look up far.test".into()),
            ),
        ],
        &mut w.queue,
        Instant::now(),
        SystemTime::now(),
    );
    // `both` has a copy still pending: the recipient stays; carol is done.
    let (rid, delivered, failed, attempts, why) = &w.queue.recorded[0];
    assert_eq!(
        (rid, delivered.as_slice(), failed.len(), *attempts),
        (&id, &[1][..], 0, 1)
    );
    assert!(why.contains("far.test"), "{why}");
    assert!(!w.engine.is_parked(&id));
    assert!(
        w.engine.schedule.timeout(Instant::now()).is_some(),
        "retried later"
    );
}

#[test]
fn a_message_that_passed_too_many_servers_is_not_forwarded_again() {
    let mut w = world(FORWARDS, Duration::from_secs(3600));
    let id = w.queue.add("s@example.org", &["away@remote.test"]);
    let hops = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        .repeat(limits::MAX_RECEIVED_HEADERS + 1);
    if let Some(e) = w.queue.entries.get_mut(&id) {
        e.1 = format!("{hops}Subject: looping\r\n\r\nbody\r\n").into_bytes();
    }
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert!(w.engine.take_remote_jobs().is_empty());
    assert_eq!(w.queue.removed, vec![id]);
    let report = String::from_utf8_lossy(&w.queue.bounces[0].1).to_string();
    assert!(report.contains("Status: 5.4.6"), "{report}");
}

#[test]
fn removing_an_entry_whose_remote_part_is_out_cancels_it_and_drops_late_outcomes() {
    let mut w = world(FORWARDS, Duration::from_secs(3600));
    let id = w.queue.add("s@example.org", &["away@remote.test"]);
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(w.engine.take_remote_jobs().len(), 1);
    w.engine.forget(&id);
    assert_eq!(w.engine.take_cancelled(), vec![id.clone()]);
    w.engine.remote_done(
        &id,
        vec![remote_outcome(0, Outcome::Delivered)],
        &mut w.queue,
        Instant::now(),
        SystemTime::now(),
    );
    assert!(w.queue.recorded.is_empty() && w.queue.removed.is_empty());
}
