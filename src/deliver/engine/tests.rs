//! The engine on a fake in-memory queue and a real directory and Maildir root on temp dirs.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::directory::{Directory, DirectorySettings};
use crate::mail::BodyType;

/// One `record_attempt` call as the fake queue saw it.
#[derive(Clone, Debug)]
struct Rec {
    id: QueueId,
    delivered: Vec<usize>,
    failed: Vec<(usize, String)>,
    attempts: u32,
    last_error: String,
    rcpt_errors: Vec<(usize, String)>,
    delay_warned: Option<SystemTime>,
}

/// One queued entry of the fake queue.
#[derive(Clone)]
struct FakeEntry {
    env: Envelope,
    data: Vec<u8>,
    pending: Vec<usize>,
    attempts: u32,
    delay_warned: Option<SystemTime>,
    linkable: Option<Linkable>,
}

#[derive(Default)]
struct FakeQueue {
    entries: HashMap<QueueId, FakeEntry>,
    removed: Vec<QueueId>,
    recorded: Vec<Rec>,
    bounces: Vec<(Envelope, Vec<u8>)>,
    next: u32,
    /// `record_attempt` fails as on a full spool.
    records_fail: bool,
    /// `enqueue` fails as on a full spool.
    enqueue_fails: bool,
    /// `enqueue` hands notices to a group commit (`Enqueued::Committing`), noted here with
    /// their tickets until the test says how their commit ended.
    group_commit: bool,
    committing: Vec<(usize, QueueId)>,
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
        self.entries.insert(
            id.clone(),
            FakeEntry {
                env,
                data,
                pending: (0..rcpts.len()).collect(),
                attempts: 0,
                delay_warned: None,
                linkable: None,
            },
        );
        id
    }
}

impl QueueStore for FakeQueue {
    fn load(&mut self, id: &QueueId) -> io::Result<Entry> {
        let e = self
            .entries
            .get(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Entry {
            envelope: e.env.clone(),
            pending: e.pending.clone(),
            attempts: e.attempts,
            delay_warned: e.delay_warned.is_some(),
            linkable: e.linkable.clone(),
        })
    }
    fn open_data(&mut self, id: &QueueId) -> io::Result<Box<dyn Read>> {
        let e = self
            .entries
            .get(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        Ok(Box::new(io::Cursor::new(e.data.clone())))
    }
    /// The entry's data written to a file of its own (outside every Maildir root), as the
    /// spool keeps it: the copy is read from a file.
    fn copy_source(&mut self, id: &QueueId) -> io::Result<CopySource> {
        use std::os::unix::ffi::OsStrExt;
        let e = self
            .entries
            .get(id)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let dir = std::env::temp_dir().join(format!("postling-fakeq-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        // (Tests run in parallel, each queue numbering its entries from 1.)
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}", id.0));
        fs::write(&path, &e.data)?;
        Ok(CopySource {
            path: std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            offset: 0,
            len: e.data.len() as u64,
            lf_form: false,
        })
    }
    fn record_attempt(
        &mut self,
        id: &QueueId,
        delivered: &[usize],
        failed: &[(usize, String)],
        deferral: &Deferral<'_>,
    ) -> io::Result<()> {
        if self.records_fail {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        if let Some(e) = self.entries.get_mut(id) {
            e.pending
                .retain(|i| !delivered.contains(i) && !failed.iter().any(|(f, _)| f == i));
            e.attempts = deferral.attempts;
            e.delay_warned = e.delay_warned.or(deferral.delay_warned);
        }
        self.recorded.push(Rec {
            id: id.clone(),
            delivered: delivered.to_vec(),
            failed: failed.to_vec(),
            attempts: deferral.attempts,
            last_error: deferral.last_error.to_string(),
            rcpt_errors: deferral.rcpt_errors.to_vec(),
            delay_warned: deferral.delay_warned,
        });
        Ok(())
    }
    fn remove(&mut self, id: &QueueId) -> io::Result<()> {
        self.entries.remove(id);
        self.removed.push(id.clone());
        Ok(())
    }
    fn enqueue(
        &mut self,
        envelope: &Envelope,
        data: &[u8],
        ticket: usize,
    ) -> Result<Enqueued, SpoolError> {
        if self.enqueue_fails {
            return Err(SpoolError::Full);
        }
        self.bounces.push((envelope.clone(), data.to_vec()));
        let id = QueueId(format!("BOUNCE{:06}", self.bounces.len()));
        if self.group_commit {
            assert!(owns_ticket(ticket));
            self.committing.push((ticket, id.clone()));
            return Ok(Enqueued::Committing(id));
        }
        Ok(Enqueued::Durable(id))
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
            delay_warning: Duration::ZERO,
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
    let r = &w.queue.recorded[0];
    assert_eq!(
        (&r.id, r.delivered.as_slice(), r.failed.len(), r.attempts),
        (&id, &[0][..], 0, 1)
    );
    assert!(
        r.last_error.starts_with("bob@example.test: "),
        "{}",
        r.last_error
    );
    // bob's own reason, without the address; none for alice (delivered).
    assert_eq!(r.rcpt_errors.len(), 1);
    assert_eq!(r.rcpt_errors[0].0, 1);
    assert_eq!(
        format!("bob@example.test: {}", r.rcpt_errors[0].1),
        r.last_error
    );
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
    let r = w.queue.recorded.last().unwrap();
    assert_eq!(r.delivered, vec![0]);
    assert_eq!(
        r.failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![2]
    );
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
            delay_warning: Duration::ZERO,
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

/// A world whose bob cannot take mail (his Maildir is a file) and whose `fwd` alias forwards
/// outside (deferred: its server cannot be reached, see `run_at`), with delay warnings after
/// an hour.
fn delaying_world() -> World {
    let mut w = world("fwd: far@elsewhere.test\n", Duration::from_secs(5 * 86400));
    w.engine.policy.delay_warning = Duration::from_secs(3600);
    fs::create_dir_all(&w.mail).unwrap();
    fs::write(w.mail.join("bob"), b"not a maildir").unwrap();
    w
}

impl World {
    /// Makes every queued entry due and runs a batch as if the wall clock said `wall`.
    fn run_at(&mut self, wall: SystemTime) {
        for id in self.queue.entries.keys() {
            self.engine.schedule.remove(id);
            self.engine.schedule.due_now(id.clone());
        }
        self.engine
            .run(8, &mut self.queue, &self.dir, Instant::now(), wall);
        // Remote copies: the outbound side could not connect.
        for job in self.engine.take_remote_jobs() {
            let outcomes = (0..job.recipients.len())
                .map(|tag| RemoteOutcome {
                    tag,
                    outcome: Outcome::Temporary(format!(
                        "4.4.1 cannot connect to the server of {}",
                        job.recipients[tag]
                    )),
                    relay: "none".into(),
                    note: None,
                })
                .collect();
            self.engine
                .remote_done(&job.id, outcomes, &mut self.queue, Instant::now(), wall);
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.queue
            .bounces
            .iter()
            .map(|(_, m)| String::from_utf8_lossy(m).to_string())
            .filter(|m| m.contains("Action: delayed"))
            .collect()
    }
}

#[test]
fn one_delay_warning_after_delay_warning_time_lists_the_pending_recipients() {
    let mut w = delaying_world();
    let id = w.queue.add(
        "s@example.org",
        &["alice@example.test", "bob@example.test", "fwd@example.test"],
    );
    let arrival = w.queue.entries[&id].env.arrival;
    w.run_at(arrival + Duration::from_secs(60));
    assert_eq!(count(&w.mail, "alice"), 1);
    assert!(w.queue.bounces.is_empty(), "not yet: queued for a minute");
    assert_eq!(w.queue.recorded[0].delay_warned, None);
    // Per-recipient reasons: bob's Maildir, fwd's unreachable server; none for alice.
    let reasons = &w.queue.recorded[0].rcpt_errors;
    assert_eq!(reasons.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
    assert!(
        reasons[1]
            .1
            .contains("cannot connect to the server of far@"),
        "{reasons:?}"
    );

    let later = arrival + Duration::from_secs(3601);
    w.run_at(later);
    let warnings = w.warnings();
    assert_eq!(warnings.len(), 1);
    assert_eq!(w.queue.bounces.len(), 1, "no bounce: nothing failed");
    let (env, _) = &w.queue.bounces[0];
    assert_eq!(
        (env.sender.as_str(), env.recipients.as_slice()),
        ("", &["s@example.org".to_string()][..])
    );
    let text = &warnings[0];
    let until = crate::date::rfc5322_date(arrival + Duration::from_secs(5 * 86400));
    assert!(
        text.contains(&format!("keep trying until {until}.")),
        "{text}"
    );
    for rcpt in ["bob@example.test", "fwd@example.test"] {
        assert!(
            text.contains(&format!(
                "Final-Recipient: rfc822; {rcpt}\r\nAction: delayed\r\nStatus: 4."
            )),
            "{rcpt}: {text}"
        );
    }
    assert!(
        !text.contains("alice@example.test"),
        "delivered: not listed"
    );
    assert!(text.contains(
        "Diagnostic-Code: X-Postling; cannot connect to the server of far@elsewhere.test"
    ));
    assert!(
        text.contains("Subject: test\r\n"),
        "original headers attached"
    );
    // Recorded with the deferral, and the warning is due at once like any message.
    assert_eq!(w.queue.recorded[1].delay_warned, Some(later));
    assert_eq!(w.queue.entries[&id].delay_warned, Some(later));
    assert_eq!(w.engine.schedule.len(), 2, "the entry and the warning");

    // Later deferrals send no second warning.
    w.queue.bounces.clear();
    for h in 2..5 {
        w.run_at(arrival + Duration::from_secs(h * 3600));
    }
    assert!(w.warnings().is_empty());
    assert_eq!(w.queue.recorded.len(), 5);
}

#[test]
fn no_delay_warning_to_the_null_sender_or_when_turned_off() {
    let mut w = delaying_world();
    let bounce = w.queue.add("", &["bob@example.test"]);
    let arrival = w.queue.entries[&bounce].env.arrival;
    w.run_at(arrival + Duration::from_secs(7200));
    assert_eq!(w.queue.recorded.len(), 1, "deferred");
    assert!(w.queue.bounces.is_empty());

    let mut w = delaying_world();
    w.engine.policy.delay_warning = Duration::ZERO;
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    w.run_at(arrival + Duration::from_secs(4 * 86400));
    assert_eq!(w.queue.recorded.len(), 1, "deferred");
    assert!(w.queue.bounces.is_empty(), "0 = never");
}

#[test]
fn a_delay_warning_that_cannot_be_queued_is_tried_at_the_next_deferral() {
    let mut w = delaying_world();
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    w.queue.enqueue_fails = true;
    w.run_at(arrival + Duration::from_secs(3601));
    assert_eq!(
        w.queue.recorded[0].delay_warned, None,
        "not sent, not recorded"
    );
    w.queue.enqueue_fails = false;
    w.run_at(arrival + Duration::from_secs(7200));
    assert_eq!(w.warnings().len(), 1);
    assert!(w.queue.recorded[1].delay_warned.is_some());
}

#[test]
fn a_delay_warning_queued_but_not_recorded_is_not_repeated_and_is_recorded_later() {
    let mut w = delaying_world();
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    // The warning is queued first, then the record fails (a full spool).
    w.queue.records_fail = true;
    w.run_at(arrival + Duration::from_secs(3601));
    assert_eq!(w.warnings().len(), 1);
    w.run_at(arrival + Duration::from_secs(7200));
    assert_eq!(w.warnings().len(), 1, "kept in memory: not sent again");
    w.queue.records_fail = false;
    w.run_at(arrival + Duration::from_secs(3 * 3600));
    assert_eq!(w.warnings().len(), 1);
    assert_eq!(
        w.queue.recorded.last().unwrap().delay_warned,
        Some(arrival + Duration::from_secs(3601)),
        "written with the next record that can be"
    );
}

#[test]
fn a_crash_between_queueing_the_warning_and_recording_it_repeats_it_once() {
    // The order chosen: queue the warning, then record it. A crash in between (here: the
    // record lost, then a restart) sends it once more, never zero times.
    let mut w = delaying_world();
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    w.queue.records_fail = true;
    w.run_at(arrival + Duration::from_secs(3601));
    assert_eq!(w.warnings().len(), 1);
    // The restart: a new engine knows nothing of the warning; the queue does not either.
    let policy = DeliveryPolicy {
        hostname: "mail.example.test".into(),
        retry_min: Duration::from_secs(60),
        retry_max: Duration::from_secs(3600),
        queue_lifetime: Duration::from_secs(5 * 86400),
        delay_warning: Duration::from_secs(3600),
    };
    w.engine = Engine::new(Maildirs::new(&w.mail, "mail.example.test"), policy);
    w.queue.records_fail = false;
    w.engine.recovered(id.clone());
    w.run_at(arrival + Duration::from_secs(7200));
    assert_eq!(w.warnings().len(), 2, "the one duplicate a crash may cost");
    w.run_at(arrival + Duration::from_secs(3 * 3600));
    assert_eq!(w.warnings().len(), 2, "and no more");
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
    let r = &w.queue.recorded[0];
    assert_eq!(
        (&r.id, r.delivered.as_slice(), r.failed.len(), r.attempts),
        (&id, &[1][..], 0, 1)
    );
    assert!(r.last_error.contains("far.test"), "{}", r.last_error);
    // The pending recipient's own reason is kept for `postling -q`.
    assert_eq!(r.rcpt_errors.len(), 1);
    assert!(
        r.rcpt_errors[0].1.contains("far.test"),
        "{:?}",
        r.rcpt_errors
    );
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
        e.data = format!("{hops}Subject: looping\r\n\r\nbody\r\n").into_bytes();
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

/// With the disk executor, a batch's Maildir commit never waits on the reactor: `work`
/// returns (long before its deadline) while the syncs are out, `has_work` says there is
/// nothing to do (the reactor sleeps until a completion), and the entry is settled only after
/// the data syncs, the renames and the directory syncs are all in.
#[test]
fn with_an_executor_the_commit_is_awaited_not_waited_for() {
    use crate::exec::{Executor, Inline};
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let id = w
        .queue
        .add("s@example.org", &["alice@example.test", "bob@example.test"]);
    w.engine.schedule.due_now(id.clone());
    let mut exec = Executor::Inline(Inline::new());
    let now = Instant::now();
    let far = now + Duration::from_secs(3600);
    let mut rounds = 0;
    loop {
        w.engine.work(
            8,
            &mut w.queue,
            &w.dir,
            now,
            SystemTime::now(),
            far,
            Some(&mut exec),
        );
        if !w.engine.busy() {
            break;
        }
        assert!(!w.engine.has_work(now), "waiting is not work");
        let mut done = Vec::new();
        exec.drain(&mut done);
        assert!(!done.is_empty(), "a waiting batch has operations out");
        if rounds < 2 {
            // The copies, then their data syncs, are out: nothing renamed yet, nothing
            // settled.
            assert_eq!(count(&w.mail, "alice") + count(&w.mail, "bob"), 0);
        } else {
            // The directory syncs are out: the files are in new/, the entry still queued.
            assert_eq!(count(&w.mail, "alice") + count(&w.mail, "bob"), 2);
            assert!(w.queue.removed.is_empty());
        }
        for c in done {
            assert!(crate::deliver::local::owns(c.tag));
            w.engine.complete(c);
        }
        assert!(w.engine.has_work(now));
        rounds += 1;
        assert!(rounds <= 3, "copies, data syncs, then directory syncs");
    }
    assert_eq!(rounds, 3);
    assert_eq!(w.queue.removed, vec![id]);
    assert_eq!(count(&w.mail, "alice") + count(&w.mail, "bob"), 2);
    assert_eq!(exec.in_flight(), 0);
}

/// The engine on the real spool (`SpoolStore`), both on one file system: entries in the
/// Maildir form ("link-1") are linked into the Maildir, not copied.
mod linked {
    use super::*;
    use crate::deliver::store::SpoolStore;
    use crate::spool::Spool;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    const DATA: &[u8] = b"Received: from x\r\nSubject: hi\r\n\r\nline one\r\na\r\r\nbare\rcr\r\n";

    struct Real {
        w: World,
        spool_dir: PathBuf,
        spool: Spool,
    }

    fn real() -> Real {
        let w = world(ALIASES, Duration::from_secs(3600));
        let spool_dir = w._tmp.path().join("spool");
        let (spool, ids) = Spool::open(&spool_dir).unwrap();
        assert!(ids.is_empty());
        Real {
            w,
            spool_dir,
            spool,
        }
    }

    fn env(rcpts: &[&str]) -> Envelope {
        Envelope {
            sender: "s@example.org".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            helo: "client".into(),
            arrival: SystemTime::now(),
            smtputf8: false,
            body: BodyType::SevenBit,
            pickup: None,
        }
    }

    fn files(mail: &Path, user: &str) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = ["new", "cur"]
            .iter()
            .flat_map(|sub| {
                fs::read_dir(mail.join(user).join(sub))
                    .into_iter()
                    .flatten()
            })
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    impl Real {
        fn queue(&mut self, rcpts: &[&str], maildir_form: bool) -> QueueId {
            let mut inc = self.spool.begin_with(&env(rcpts), maildir_form).unwrap();
            // In pieces, so a CR LF is split across two appends.
            for piece in DATA.chunks(7) {
                self.spool.append(&mut inc, piece);
            }
            self.spool.commit_one(inc).unwrap()
        }

        fn run(&mut self) -> usize {
            let mut store = SpoolStore::new(&mut self.spool);
            self.w.engine.run(
                8,
                &mut store,
                &self.w.dir,
                Instant::now(),
                SystemTime::now(),
            )
        }

        /// A crash and a restart: the spool opened again, a new engine with every entry
        /// recovered.
        fn restart(&mut self) {
            let (spool, ids) = Spool::open(&self.spool_dir).unwrap();
            self.spool = spool;
            let host = self.w.engine.policy.hostname.clone();
            self.w.engine = Engine::new(
                Maildirs::new(&self.w.mail, &host),
                DeliveryPolicy {
                    hostname: host,
                    retry_min: Duration::from_secs(60),
                    retry_max: Duration::from_secs(3600),
                    queue_lifetime: Duration::from_secs(3600),
                    delay_warning: Duration::ZERO,
                },
            );
            for id in ids {
                self.w.engine.recovered(id);
            }
        }

        fn queue_file(&self, id: &QueueId) -> PathBuf {
            self.spool_dir.join("queue").join(&id.0)
        }
    }

    /// The Maildir name without its unique part: `,S=…,W=…`.
    fn sizes(p: &Path) -> String {
        let name = p.file_name().unwrap().to_str().unwrap();
        name[name.find(',').unwrap()..].to_string()
    }

    #[test]
    fn the_queued_file_becomes_the_maildir_file_with_the_bytes_and_name_of_a_copy() {
        let mut r = real();
        let linked = r.queue(&["alice@example.test"], true);
        let copied = r.queue(&["alice@example.test"], false);
        let queued = r.queue_file(&linked);
        let inode = fs::metadata(&queued).unwrap().ino();
        for id in [&linked, &copied] {
            r.w.engine.schedule.due_now(id.clone());
        }
        assert_eq!(r.run(), 2);
        let got = files(&r.w.mail, "alice");
        assert_eq!(got.len(), 2, "{got:?}");
        let (a, b) = (fs::read(&got[0]).unwrap(), fs::read(&got[1]).unwrap());
        assert_eq!(a, b, "a link holds exactly the bytes of a copy");
        assert!(a.starts_with(b"Return-Path: <s@example.org>\nDelivered-To: alice@example.test\nReceived: from x\nSubject: hi\n\nline one\na\r\nbare\rcr\n"));
        assert_eq!(sizes(&got[0]), sizes(&got[1]), "same S= and W=");
        let by_link: Vec<&PathBuf> = got
            .iter()
            .filter(|p| fs::metadata(p).unwrap().ino() == inode)
            .collect();
        assert_eq!(
            by_link.len(),
            1,
            "the Maildir form entry was linked, not copied"
        );
        assert_eq!(
            fs::metadata(by_link[0]).unwrap().nlink(),
            1,
            "its queue name is gone"
        );
        assert!(!queued.exists());
        assert!(r.spool.ids().unwrap().is_empty());
        // Its inode was not taken for reuse: the next message does not overwrite the mail.
        let next = r.queue(&["bob@example.test"], true);
        assert_ne!(fs::metadata(r.queue_file(&next)).unwrap().ino(), inode);
        assert_eq!(fs::read(by_link[0]).unwrap(), a);
    }

    /// Through each disk executor: a batch of links only has no data sync to wait for: the
    /// links are made in the executor, then `new/` is synced, and the entry is removed after.
    #[test]
    fn through_the_executor_a_linked_batch_waits_for_its_links_then_the_directory_sync() {
        use crate::exec::{Executor, Helper, Inline, Uring};
        let mut execs = vec![
            Executor::Inline(Inline::new()),
            Executor::Helper(Box::new(Helper::spawn().unwrap())),
        ];
        if let Ok(ring) = Uring::ring() {
            execs.push(Executor::Uring(Box::new(Uring::new(
                ring,
                Helper::spawn().unwrap(),
            ))));
        }
        for mut exec in execs {
            let mut r = real();
            let id = r.queue(&["alice@example.test"], true);
            let inode = fs::metadata(r.queue_file(&id)).unwrap().ino();
            r.w.engine.schedule.due_now(id.clone());
            let now = Instant::now();
            let far = now + Duration::from_secs(3600);
            let mut rounds = 0;
            loop {
                let mut store = SpoolStore::new(&mut r.spool);
                r.w.engine.work(
                    8,
                    &mut store,
                    &r.w.dir,
                    now,
                    SystemTime::now(),
                    far,
                    Some(&mut exec),
                );
                if !r.w.engine.busy() {
                    break;
                }
                // Not yet durable: the entry is still queued.
                assert!(r.queue_file(&id).exists());
                let mut done = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(20);
                while done.is_empty() && Instant::now() < deadline {
                    exec.drain(&mut done);
                }
                assert_eq!(done.len(), 1, "the link, then the sync of new/");
                for c in done {
                    r.w.engine.complete(c);
                }
                rounds += 1;
                assert!(rounds <= 2);
                if rounds == 1 {
                    assert_eq!(files(&r.w.mail, "alice").len(), 1, "linked");
                }
            }
            assert_eq!(rounds, 2);
            let got = files(&r.w.mail, "alice");
            assert_eq!(got.len(), 1);
            let md = fs::metadata(&got[0]).unwrap();
            assert_eq!((md.ino(), md.nlink()), (inode, 1));
            assert!(r.spool.ids().unwrap().is_empty());
        }
    }

    #[test]
    fn links_and_copies_commit_together_with_syncfs_too() {
        let mut r = real();
        r.w.engine
            .set_sync_mode(crate::durable::SyncMode::Filesystem);
        let ids = [
            r.queue(&["alice@example.test"], true),
            r.queue(&["alice@example.test"], false),
            r.queue(&["bob@example.test"], true),
        ];
        for id in &ids {
            r.w.engine.schedule.due_now(id.clone());
        }
        assert_eq!(r.run(), 3);
        assert_eq!(files(&r.w.mail, "alice").len(), 2);
        assert_eq!(files(&r.w.mail, "bob").len(), 1);
        assert!(r.spool.ids().unwrap().is_empty());
    }

    #[test]
    fn an_entry_read_back_after_a_restart_is_linked_under_the_same_name() {
        let mut r = real();
        let id = r.queue(&["alice@example.test"], true);
        // Delivered now (sizes known from the writing) and, the same entry, after a restart
        // (sizes counted from the file): one name.
        r.w.engine.schedule.due_now(id.clone());
        assert_eq!(r.run(), 1);
        let first = files(&r.w.mail, "alice");
        fs::remove_file(&first[0]).unwrap();
        let id2 = r.queue(&["alice@example.test"], true);
        r.restart();
        assert_eq!(r.run(), 1);
        let second = files(&r.w.mail, "alice");
        assert_eq!(second.len(), 1);
        assert_eq!(sizes(&first[0]), sizes(&second[0]));
        let _ = id2;
    }

    #[test]
    fn a_crash_at_every_point_of_a_linked_delivery_delivers_exactly_once() {
        // 0: committed, nothing attempted. 1: linked into new/, the queue name still there
        // (the crash came before the removal, or a power cut undid it). 2: removed.
        for point in 0..3 {
            let mut r = real();
            let id = r.queue(&["alice@example.test"], true);
            let queued = r.queue_file(&id);
            if point > 0 {
                r.w.engine.schedule.due_now(id.clone());
                assert_eq!(r.run(), 1);
                let got = files(&r.w.mail, "alice");
                assert_eq!(got.len(), 1);
                if point == 1 {
                    // The state before the removal: both names on one inode.
                    fs::hard_link(&got[0], &queued).unwrap();
                }
            }
            r.restart();
            r.run();
            let got = files(&r.w.mail, "alice");
            assert_eq!(got.len(), 1, "point {point}: exactly one copy");
            let md = fs::metadata(&got[0]).unwrap();
            assert_eq!(md.nlink(), 1, "point {point}");
            assert!(!queued.exists(), "point {point}");
            let text = fs::read(&got[0]).unwrap();
            assert!(
                text.ends_with(b"line one\na\r\nbare\rcr\n"),
                "point {point}"
            );
            assert!(r.spool.ids().unwrap().is_empty(), "point {point}");
        }
    }

    #[test]
    fn a_link_that_fails_falls_back_to_a_copy_and_a_deferral_keeps_the_form() {
        let mut r = real();
        let id = r.queue(&["alice@example.test"], true);
        // alice's Maildir cannot be made: the link fails, the copy too, the entry is deferred
        // (its state recorded beside the Maildir form file).
        fs::create_dir_all(&r.w.mail).unwrap();
        fs::write(r.w.mail.join("alice"), "not a directory").unwrap();
        r.w.engine.schedule.due_now(id.clone());
        assert_eq!(r.run(), 1);
        assert!(
            r.spool_dir
                .join("queue")
                .join(format!("{}.state", id.0))
                .exists()
        );
        let e = r.spool.read_entry(&id).unwrap();
        assert_eq!(e.attempts, 1);
        assert!(e.is_maildir_form());
        // Fixed, after a restart: delivered (by link).
        fs::remove_file(r.w.mail.join("alice")).unwrap();
        let inode = fs::metadata(r.queue_file(&id)).unwrap().ino();
        r.restart();
        r.run();
        let got = files(&r.w.mail, "alice");
        assert_eq!(got.len(), 1);
        assert_eq!(fs::metadata(&got[0]).unwrap().ino(), inode);
        assert!(r.spool.ids().unwrap().is_empty());
        // A link that cannot be made is copied in the same commit; when the copy fails too
        // (here: the spool file is gone from under a stale entry path) the failure names both.
        let mut md = Maildirs::new(&r.w.mail, "h");
        let staged = md.stage_link(
            "alice",
            "1.M1QXH00000000.h",
            &r.spool_dir.join("queue/NOSUCHFILE"),
            1,
            2,
            SystemTime::now(),
        );
        let out = md.commit(vec![staged.unwrap()]);
        assert!(
            matches!(&out[..], [Outcome::Temporary(why)] if why.contains("cannot link or copy")),
            "{out:?}"
        );
    }

    #[test]
    fn a_bounce_of_a_maildir_form_entry_quotes_the_message_with_crlf() {
        let mut r = real();
        let id = r.queue(&["alice@example.test"], true);
        let mut store = SpoolStore::new(&mut r.spool);
        let n =
            r.w.engine
                .return_to_sender(&id, &mut store, SystemTime::now())
                .unwrap();
        assert_eq!(n, 1);
        let ids = r.spool.ids().unwrap();
        assert_eq!(ids.len(), 1, "the entry gone, its bounce queued");
        let bounce = r.spool.read_entry(&ids[0]).unwrap();
        assert!(!bounce.is_maildir_form());
        let mut text = Vec::new();
        bounce.read_data().unwrap().read_to_end(&mut text).unwrap();
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.contains("Received: from x\r\nSubject: hi\r\n"),
            "the original header, with CRLF: {text}"
        );
    }
}

/// While a batch waits for its Maildir commit in the executor, an entry that came due
/// meanwhile does not make the reactor poll with a zero timeout (it waits for the batch's
/// end): the engine's timeout is none until the completions come, and zero again after.
#[test]
fn a_batch_waiting_for_its_commit_does_not_wake_the_reactor_for_the_next_due_entry() {
    use crate::exec::{Executor, Inline};
    let mut w = world(ALIASES, Duration::from_secs(3600));
    let first = w.queue.add("s@example.org", &["alice@example.test"]);
    let second = w.queue.add("s@example.org", &["bob@example.test"]);
    w.engine.schedule.due_now(first);
    w.engine.schedule.due_now(second);
    let mut exec = Executor::Inline(Inline::new());
    let now = Instant::now();
    let far = now + Duration::from_secs(3600);
    // A batch of one entry: the second stays due in the schedule.
    w.engine.work(
        1,
        &mut w.queue,
        &w.dir,
        now,
        SystemTime::now(),
        far,
        Some(&mut exec),
    );
    assert!(w.engine.busy() && !w.engine.has_work(now));
    assert_eq!(w.engine.schedule.timeout(now), Some(Duration::ZERO));
    assert_eq!(
        w.engine.timeout(now),
        None,
        "waiting for the executor, not spinning"
    );
    let mut done = Vec::new();
    exec.drain(&mut done);
    for c in done {
        w.engine.complete(c);
    }
    assert_eq!(w.engine.timeout(now), Some(Duration::ZERO));
}

// ---- notices committed in the spool's group commit (issue 11) ----------------------------

impl World {
    /// Hands the engine the group commit's outcome for every notice it queued, `ok` or full.
    fn commit_notices(&mut self, ok: bool, wall: SystemTime) {
        for (ticket, id) in std::mem::take(&mut self.queue.committing) {
            let result = if ok { Ok(id) } else { Err(SpoolError::Full) };
            self.engine
                .notice_committed(ticket, result, &mut self.queue, Instant::now(), wall);
        }
    }
}

/// A bounce committed in the group commit: the entry whose recipients failed is removed only
/// once the bounce is durable, is never attempted again meanwhile, and the bounce is due
/// then.
#[test]
fn a_bounce_in_the_group_commit_holds_the_removal_until_it_is_durable() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    w.queue.group_commit = true;
    let id = w.queue.add(
        "s@example.org",
        &["ghost@example.test", "carol@example.test"],
    );
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(count(&w.mail, "carol"), 1);
    assert_eq!(
        w.queue.committing.len(),
        1,
        "the bounce is in the group commit"
    );
    assert!(w.queue.removed.is_empty() && w.queue.recorded.is_empty());
    assert!(w.engine.awaits_notice(&id));
    assert!(w.engine.schedule.next_due(Instant::now()).is_none());
    // A flush of the queue meanwhile does not attempt it again.
    w.engine.flush_one(id.clone());
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    assert_eq!(count(&w.mail, "carol"), 1);
    assert!(w.queue.removed.is_empty());
    assert_eq!(w.queue.bounces.len(), 1, "no second bounce");
    w.commit_notices(true, SystemTime::now());
    assert_eq!(w.queue.removed, vec![id.clone()]);
    assert!(!w.engine.awaits_notice(&id));
    assert_eq!(w.engine.notices_len(), 0);
    assert_eq!(
        w.engine.schedule.next_due(Instant::now()),
        Some(QueueId("BOUNCE000001".into())),
        "the bounce is due once durable"
    );
}

/// A bounce whose commit fails (a full spool): its recipients stay pending, recorded with the
/// reason, and the entry is tried again later; nothing is lost.
#[test]
fn a_bounce_whose_commit_fails_keeps_its_recipients_pending() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    w.queue.group_commit = true;
    let id = w.queue.add(
        "s@example.org",
        &["ghost@example.test", "carol@example.test"],
    );
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    w.commit_notices(false, SystemTime::now());
    assert!(w.queue.removed.is_empty());
    let r = &w.queue.recorded[0];
    assert_eq!(
        (&r.id, r.delivered.as_slice(), r.failed.len()),
        (&id, &[1][..], 0)
    );
    assert!(
        r.rcpt_errors
            .iter()
            .any(|(i, why)| *i == 0 && why.contains("bounce cannot be queued")),
        "{:?}",
        r.rcpt_errors
    );
    assert!(!w.engine.awaits_notice(&id));
    assert!(
        w.engine.schedule.timeout(Instant::now()).is_some(),
        "tried again later"
    );
}

/// A delay warning committed in the group commit: the deferral is recorded (with the warning)
/// only once the warning is durable; one whose commit fails is recorded as not sent.
#[test]
fn a_delay_warning_in_the_group_commit_is_recorded_once_durable() {
    let mut w = delaying_world();
    w.queue.group_commit = true;
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    let at = arrival + Duration::from_secs(3601);
    w.run_at(at);
    assert_eq!(w.warnings().len(), 1);
    assert!(
        w.queue.recorded.is_empty(),
        "not recorded before the warning is durable"
    );
    assert!(w.engine.awaits_notice(&id));
    w.commit_notices(true, at);
    assert_eq!(w.queue.recorded.len(), 1);
    assert_eq!(w.queue.recorded[0].delay_warned, Some(at));
    // Not warned again at the next deferral.
    w.run_at(arrival + Duration::from_secs(7200));
    assert!(w.queue.committing.is_empty());
    assert_eq!(w.warnings().len(), 1);

    let mut w = delaying_world();
    w.queue.group_commit = true;
    let id = w.queue.add("s@example.org", &["bob@example.test"]);
    let arrival = w.queue.entries[&id].env.arrival;
    w.run_at(arrival + Duration::from_secs(3601));
    w.commit_notices(false, arrival + Duration::from_secs(3601));
    assert_eq!(w.queue.recorded.len(), 1);
    assert_eq!(
        w.queue.recorded[0].delay_warned, None,
        "not sent: tried again"
    );
    w.run_at(arrival + Duration::from_secs(7200));
    assert_eq!(
        w.queue.committing.len(),
        1,
        "queued again at the next deferral"
    );
}

/// An entry removed by the administrator while its bounce is being committed: the bounce
/// still goes out, and nothing more happens to the entry.
#[test]
fn a_bounce_being_committed_for_a_deleted_entry_still_goes_out() {
    let mut w = world(ALIASES, Duration::from_secs(3600));
    w.queue.group_commit = true;
    let id = w.queue.add("s@example.org", &["ghost@example.test"]);
    w.engine.schedule.due_now(id.clone());
    w.run(8);
    w.engine.forget(&id);
    w.commit_notices(true, SystemTime::now());
    assert!(w.queue.removed.is_empty() && w.queue.recorded.is_empty());
    assert_eq!(
        w.engine.schedule.next_due(Instant::now()),
        Some(QueueId("BOUNCE000001".into()))
    );
}
