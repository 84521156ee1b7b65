//! Spool tests on real temporary directories.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::format::{ID_LIMIT, id_decode, id_encode};
use super::*;

fn env(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        helo: "client.example.org".into(),
        arrival: UNIX_EPOCH + Duration::new(1_714_566_896, 250_000_000),
        smtputf8: false,
        body: BodyType::SevenBit,
        pickup: None,
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn read_data(entry: &QueueEntry) -> Vec<u8> {
    let (f, len) = entry.open_data().unwrap();
    let mut v = Vec::new();
    f.take(len).read_to_end(&mut v).unwrap();
    assert_eq!(v.len() as u64, len);
    v
}

/// begin + append + enqueue + flush; returns the committed id.
fn store(spool: &mut Spool, e: &Envelope, data: &[u8]) -> QueueId {
    let mut inc = spool.begin(e).unwrap();
    inc.append(data);
    spool.commit_enqueue(inc, 1).unwrap();
    let mut r = spool.commit_flush();
    assert_eq!(r.len(), 1);
    let (tag, res) = r.pop().unwrap();
    assert_eq!(tag, 1);
    res.unwrap()
}

#[test]
fn round_trip_keeps_envelope_and_bytes() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("spool");
    let (mut spool, ids) = Spool::open(&root).unwrap();
    assert!(ids.is_empty());
    for sub in ["", "tmp", "queue"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.join(sub)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{sub}");
    }

    let e = env(&["bob@example.net", "carol@example.net"]);
    let mut inc = spool.begin(&e).unwrap();
    let id = inc.id().clone();
    assert!(id.is_valid());
    assert_eq!(names(&root.join("tmp")), vec![id.0.clone()]);
    // Many small appends crossing the write buffer several times.
    let mut data = b"Received: from client\r\nSubject: hi\r\n\r\n".to_vec();
    for i in 0..5000 {
        data.extend_from_slice(format!("line {i} .with a dot\r\n").as_bytes());
    }
    for chunk in data.chunks(977) {
        inc.append(chunk);
    }
    spool.commit_enqueue(inc, 42).unwrap();
    assert!(spool.commit_pending());
    // Nothing is in the queue before the flush: no 250 may be sent yet.
    assert!(names(&root.join("queue")).is_empty());
    let r = spool.commit_flush();
    assert_eq!(r, vec![(42, Ok(id.clone()))]);
    assert!(!spool.commit_pending());
    assert!(names(&root.join("tmp")).is_empty());
    assert_eq!(names(&root.join("queue")), vec![id.0.clone()]);

    let entry = spool.read_entry(&id).unwrap();
    assert_eq!(entry.id, id);
    assert_eq!(entry.envelope, e);
    assert_eq!(entry.rcpts, vec![RcptState::Pending, RcptState::Pending]);
    assert_eq!(entry.attempts, 0);
    assert_eq!(entry.last_error, None);
    assert_eq!(entry.next_attempt, e.arrival);
    assert_eq!(entry.data_len(), data.len() as u64);
    assert_eq!(read_data(&entry), data);
    assert_eq!(
        entry.pending().collect::<Vec<_>>(),
        vec![(0, "bob@example.net"), (1, "carol@example.net")]
    );

    // The file is readable as text: header, blank line, then the data verbatim.
    let raw = fs::read(entry.data_path()).unwrap();
    assert!(raw.starts_with(b"postling-message 1\nid "));
    assert_eq!(raw.get(entry.data_offset() as usize..).unwrap(), &data[..]);

    drop(spool);
    let (_spool, ids) = Spool::open(&root).unwrap();
    assert_eq!(ids, vec![id]);
}

#[test]
fn empty_message_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["x@y"]), b"");
    let entry = spool.read_entry(&id).unwrap();
    assert_eq!(entry.data_len(), 0);
    assert!(read_data(&entry).is_empty());
}

#[test]
fn odd_envelope_values_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let e = Envelope {
        sender: String::new(),
        recipients: vec![
            "\"john doe\"@example.org".into(),
            "a=b%20c@example.org".into(),
            "grüße@bücher.example".into(),
            "tab\there\u{1b}esc@x".into(),
            "%%%@%".into(),
            " spaced @x ".into(),
        ],
        client_ip: "2001:db8::1".parse().unwrap(),
        helo: "[IPv6:2001:db8::1] = weird % helo".into(),
        arrival: UNIX_EPOCH + Duration::new(1_000_000_000, 1),
        smtputf8: true,
        body: BodyType::EightBitMime,
        pickup: None,
    };
    let id = store(&mut spool, &e, b"x\r\n");
    assert_eq!(spool.read_entry(&id).unwrap().envelope, e);
}

#[test]
fn begin_rejects_line_breaks_and_nul() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    for bad in ["a\r@x", "a\n@x", "a\0@x"] {
        assert!(matches!(
            spool.begin(&env(&["ok@x", bad])),
            Err(SpoolError::Failed(_))
        ));
        let mut e = env(&["ok@x"]);
        e.sender = bad.into();
        assert!(spool.begin(&e).is_err());
        let mut e = env(&["ok@x"]);
        e.helo = bad.into();
        assert!(spool.begin(&e).is_err());
    }
    assert!(spool.begin(&env(&[])).is_err());
    assert!(names(&d.path().join("tmp")).is_empty());
}

#[test]
fn group_commit_reports_every_tag() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut expected = Vec::new();
    for tag in 0..6usize {
        let mut inc = spool.begin(&env(&["r@x"])).unwrap();
        inc.append(format!("message {tag}\r\n").as_bytes());
        expected.push((tag * 10, inc.id().clone()));
        spool.commit_enqueue(inc, tag * 10).unwrap();
    }
    let r = spool.commit_flush();
    let got: Vec<(usize, QueueId)> = r.into_iter().map(|(t, res)| (t, res.unwrap())).collect();
    assert_eq!(got, expected);
    for (tag, id) in &expected {
        let entry = spool.read_entry(id).unwrap();
        assert_eq!(
            read_data(&entry),
            format!("message {}\r\n", tag / 10).as_bytes()
        );
    }
    // A second flush has nothing to do.
    assert!(spool.commit_flush().is_empty());
    drop(spool);
    let (_s, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(
        ids,
        expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
}

#[test]
fn one_failure_in_a_group_fails_only_that_entry() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut ids = Vec::new();
    for tag in 0..3 {
        let mut inc = spool.begin(&env(&["r@x"])).unwrap();
        inc.append(b"data\r\n");
        ids.push(inc.id().clone());
        spool.commit_enqueue(inc, tag).unwrap();
    }
    // The middle entry's temp file disappears: its rename fails.
    fs::remove_file(d.path().join("tmp").join(&ids[1].0)).unwrap();
    let r = spool.commit_flush();
    assert_eq!(r.len(), 3);
    for (tag, res) in r {
        match tag {
            1 => assert!(matches!(res, Err(SpoolError::Failed(_)))),
            t => assert_eq!(res, Ok(ids[t].clone())),
        }
    }
    assert_eq!(
        names(&d.path().join("queue")),
        vec![ids[0].0.clone(), ids[2].0.clone()]
    );
    assert!(names(&d.path().join("tmp")).is_empty());
}

#[test]
fn abort_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut inc = spool.begin(&env(&["r@x"])).unwrap();
    inc.append(&[b'x'; 40_000]);
    assert_eq!(names(&d.path().join("tmp")).len(), 1);
    spool.abort(inc);
    assert!(names(&d.path().join("tmp")).is_empty());
    assert!(names(&d.path().join("queue")).is_empty());
    assert!(spool.commit_flush().is_empty());
}

#[test]
fn disk_full_is_latched_and_reported_as_full() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut inc = spool.begin(&env(&["r@x"])).unwrap();
    // Every write to /dev/full fails with ENOSPC, as a full spool disk would.
    inc.file = OpenOptions::new().write(true).open("/dev/full").unwrap();
    inc.append(&[b'a'; limits::SPOOL_WRITE_BUF + 10]);
    assert!(inc.failed());
    inc.append(b"ignored after the error");
    assert_eq!(spool.commit_enqueue(inc, 7), Err(SpoolError::Full));
    assert!(spool.commit_flush().is_empty());
    assert!(names(&d.path().join("tmp")).is_empty());
    assert!(names(&d.path().join("queue")).is_empty());
}

#[test]
fn write_error_on_the_final_flush_fails_the_commit() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut inc = spool.begin(&env(&["r@x"])).unwrap();
    inc.append(b"short");
    // Read-only descriptor: the buffered bytes fail when commit_enqueue writes them (EBADF).
    inc.file = File::open(&inc.tmp_path).unwrap();
    assert!(!inc.failed());
    assert!(matches!(
        spool.commit_enqueue(inc, 7),
        Err(SpoolError::Failed(_))
    ));
    assert!(names(&d.path().join("tmp")).is_empty());
    assert!(names(&d.path().join("queue")).is_empty());
}

#[test]
fn open_recovers_from_a_crash_at_every_point() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let (mut spool, _) = Spool::open(root).unwrap();
    // Complete entries: one plain, one with recorded progress.
    let done = store(&mut spool, &env(&["a@x", "b@x"]), b"one\r\n");
    let progressed = store(&mut spool, &env(&["a@x", "b@x"]), b"two\r\n");
    spool.record_progress(&progressed, &[0], &[]).unwrap();
    drop(spool);

    let t = root.join("tmp");
    let q = root.join("queue");
    let base = id_decode(&progressed.0).unwrap();
    // Crash while receiving: a temp message, partly written.
    fs::write(t.join(id_encode(base + 1).0), b"postling-message 1\nid ").unwrap();
    // Crash after writing but before the rename (commit point) of the next message.
    fs::copy(q.join(&done.0), t.join(id_encode(base + 2).0)).unwrap();
    // Crash while replacing a state file: the new one is still in tmp/.
    fs::write(t.join(format!("{}.state", progressed.0)), b"postling-st").unwrap();
    // Crash during remove: the message is gone, its state file is not.
    let removed = id_encode(base + 3);
    fs::write(
        q.join(format!("{}.state", removed.0)),
        b"postling-state 1\n",
    )
    .unwrap();
    // A file that is none of ours is left alone.
    fs::write(q.join("README"), b"admin notes").unwrap();

    let (mut spool, ids) = Spool::open(root).unwrap();
    assert_eq!(ids, vec![done.clone(), progressed.clone()]);
    assert!(names(&t).is_empty());
    assert_eq!(
        names(&q),
        vec![
            done.0.clone(),
            progressed.0.clone(),
            format!("{}.state", progressed.0),
            "README".to_string()
        ]
    );
    // The committed progress survived the crash of its replacement.
    let e = spool.read_entry(&progressed).unwrap();
    assert_eq!(e.rcpts, vec![RcptState::Delivered, RcptState::Pending]);
    // New ids are beyond every id seen on disk, temp leftovers included.
    let inc = spool.begin(&env(&["r@x"])).unwrap();
    assert!(id_decode(&inc.id().0).unwrap() > base + 3);
}

#[test]
fn ids_are_unique_and_increasing_over_ten_thousand_begins() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let e = env(&["r@x"]);
    let mut seen = HashSet::new();
    let mut prev = String::new();
    for _ in 0..10_000 {
        let inc = spool.begin(&e).unwrap();
        let id = inc.id().0.clone();
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(id > prev, "{id} after {prev}");
        assert!(seen.insert(id.clone()));
        prev = id;
        spool.abort(inc);
    }
    assert!(names(&d.path().join("tmp")).is_empty());
}

#[test]
fn ids_skip_names_already_in_the_queue() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    // A name the generator is about to hand out is already in the queue (copied in by hand,
    // or left by a run whose clock was ahead): it is skipped, not overwritten.
    let now = format::micros_since_epoch(SystemTime::now());
    spool.last_id = now + 1_000_000_000;
    let taken = id_encode(spool.last_id + 1);
    fs::write(d.path().join("queue").join(&taken.0), b"x").unwrap();
    let inc = spool.begin(&env(&["r@x"])).unwrap();
    assert_eq!(
        id_decode(&inc.id().0),
        Some(id_decode(&taken.0).unwrap() + 1)
    );
    assert_eq!(
        fs::read(d.path().join("queue").join(&taken.0)).unwrap(),
        b"x"
    );
    // A forged maximal id on disk does not break id generation.
    spool.last_id = ID_LIMIT - 1;
    let inc2 = spool.begin(&env(&["r@x"])).unwrap();
    assert!(inc2.id().is_valid());
    assert_ne!(inc2.id(), inc.id());
}

#[test]
fn progress_and_deferral_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["a@x", "b@x", "c@x"]), b"m\r\n");
    spool
        .record_progress(&id, &[2], &[(0, "550 5.1.1 <a@x>: no such user".into())])
        .unwrap();
    let next = UNIX_EPOCH + Duration::new(1_800_000_000, 42);
    spool
        .record_deferral(&id, 3, "451 4.2.0 mailbox \"b\" busy", next)
        .unwrap();
    drop(spool);

    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(ids, vec![id.clone()]);
    let e = spool.read_entry(&id).unwrap();
    assert_eq!(
        e.rcpts,
        vec![
            RcptState::Failed("550 5.1.1 <a@x>: no such user".into()),
            RcptState::Pending,
            RcptState::Delivered
        ]
    );
    assert_eq!(e.attempts, 3);
    assert_eq!(
        e.last_error.as_deref(),
        Some("451 4.2.0 mailbox \"b\" busy")
    );
    assert_eq!(e.next_attempt, next);
    assert_eq!(e.pending().collect::<Vec<_>>(), vec![(1, "b@x")]);
    assert!(!e.is_finished());

    // Both at once; earlier outcomes are kept.
    let later = next + Duration::from_secs(600);
    let d2 = Deferral {
        attempts: 4,
        last_error: "timeout",
        next_attempt: later,
        rcpt_errors: &[],
        delay_warned: None,
    };
    spool.record_attempt(&id, &[1], &[], Some(d2)).unwrap();
    let e = spool.read_entry(&id).unwrap();
    assert!(e.is_finished());
    assert_eq!(e.attempts, 4);
    assert_eq!(e.next_attempt, later);
    assert!(matches!(e.rcpts[0], RcptState::Failed(_)));

    // Out-of-range indices are refused and change nothing.
    let err = spool.record_progress(&id, &[3], &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(spool.read_entry(&id).unwrap().attempts, 4);
    assert!(names(&d.path().join("tmp")).is_empty());
}

#[test]
fn recipient_reasons_and_the_delay_warning_mark_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["a@x", "b@x", "c@x"]), b"m\r\n");
    let e = spool.read_entry(&id).unwrap();
    assert_eq!((e.rcpt_errors.len(), e.delay_warned), (3, None));
    let t1 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let warned = UNIX_EPOCH + Duration::from_secs(1_800_000_010);
    let errors = [
        (0, "451 4.7.1 greylisted\r\nX-Evil: 1".to_string()),
        (1, "x".repeat(100_000)),
    ];
    let d1 = Deferral {
        attempts: 1,
        last_error: "a@x: 451 4.7.1 greylisted",
        next_attempt: t1,
        rcpt_errors: &errors,
        delay_warned: Some(warned),
    };
    spool.record_attempt(&id, &[2], &[], Some(d1)).unwrap();
    drop(spool);
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let e = spool.read_entry(&id).unwrap();
    assert_eq!(e.rcpt_error(0), Some("451 4.7.1 greylisted  X-Evil: 1"));
    assert_eq!(
        e.rcpt_error(1).map(str::len),
        Some(limits::SPOOL_MAX_RCPT_REASON)
    );
    assert_eq!(e.rcpt_error(2), None, "delivered");
    assert_eq!(e.delay_warned, Some(warned));
    // The next attempt: a's reason changes, b is delivered (its reason goes), the mark stays
    // although this deferral does not carry it.
    let errors = [(0, "451 4.4.1 connection refused".to_string())];
    let d2 = Deferral {
        attempts: 2,
        last_error: "a@x: 451 4.4.1 connection refused",
        next_attempt: t1,
        rcpt_errors: &errors,
        delay_warned: None,
    };
    spool.record_attempt(&id, &[1], &[], Some(d2)).unwrap();
    let e = spool.read_entry(&id).unwrap();
    assert_eq!(e.rcpt_error(0), Some("451 4.4.1 connection refused"));
    assert_eq!(e.rcpt_error(1), None);
    assert_eq!(e.delay_warned, Some(warned), "never cleared");
    let state = fs::read_to_string(d.path().join("queue").join(format!("{}.state", id.0))).unwrap();
    assert!(
        state.contains("\ndeferred 0 451 4.4.1 connection refused\n"),
        "{state}"
    );
    assert!(!state.contains("deferred 1"), "{state}");
    // The listing reads them for `postling -q`.
    let listed = list_queue(d.path()).unwrap();
    assert_eq!(listed[0].pending, vec!["a@x".to_string()]);
    assert_eq!(
        listed[0].pending_reasons,
        vec![Some("451 4.4.1 connection refused".to_string())]
    );
    assert!(
        format_queue(&listed, SystemTime::now())
            .contains("\n  a@x\n      (451 4.4.1 connection refused)\n")
    );
    // An index out of range is refused and changes nothing.
    let bad = [(5, "x".to_string())];
    let d3 = Deferral {
        rcpt_errors: &bad,
        ..d2
    };
    let err = spool.record_attempt(&id, &[], &[], Some(d3)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn long_reasons_are_clipped() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    let long = "x".repeat(100_000);
    spool
        .record_progress(&id, &[], &[(0, long.clone())])
        .unwrap();
    spool.record_deferral(&id, 1, &long, UNIX_EPOCH).unwrap();
    let e = spool.read_entry(&id).unwrap();
    assert_eq!(
        e.rcpts,
        vec![RcptState::Failed("x".repeat(limits::SPOOL_MAX_REASON))]
    );
    assert_eq!(e.last_error.unwrap().len(), limits::SPOOL_MAX_REASON);
}

#[test]
fn remove_deletes_every_file() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    let keep = store(&mut spool, &env(&["a@x"]), b"k\r\n");
    spool.record_progress(&id, &[0], &[]).unwrap();
    assert_eq!(names(&d.path().join("queue")).len(), 3);
    spool.remove(&id).unwrap();
    assert_eq!(names(&d.path().join("queue")), vec![keep.0.clone()]);
    assert_eq!(
        spool.read_entry(&id).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // Idempotent; and recording on a removed entry fails without leaving a state file.
    spool.remove(&id).unwrap();
    assert!(spool.record_progress(&id, &[0], &[]).is_err());
    assert_eq!(names(&d.path().join("queue")), vec![keep.0.clone()]);
    drop(spool);
    let (_s, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(ids, vec![keep]);
}

#[test]
fn malformed_ids_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    for bad in ["../../etc/passwd", "", "short", "0000000000000"] {
        let id = QueueId(bad.into());
        assert_eq!(
            spool.read_entry(&id).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        assert!(spool.remove(&id).is_err());
        assert!(spool.record_progress(&id, &[], &[]).is_err());
    }
}

#[test]
fn damaged_entries_are_errors_not_panics() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let q = d.path().join("queue");
    let cases: [&[u8]; 5] = [
        b"",
        b"postling-message 1\nid 000000000001\n",
        b"garbage\n\n",
        b"postling-message 1\nid 000000000002\narrival 1.000000000\n\n",
        &[0xff; 100],
    ];
    for (i, content) in cases.iter().enumerate() {
        let id = id_encode(i as u64 + 1);
        fs::write(q.join(&id.0), content).unwrap();
        assert_eq!(
            spool.read_entry(&id).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData,
            "case {i}"
        );
    }
    // A header claiming another id is refused too.
    let real = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    let other = id_encode(99);
    fs::copy(q.join(&real.0), q.join(&other.0)).unwrap();
    assert!(spool.read_entry(&other).is_err());
    // An endless header line is cut at the limit, not read into memory.
    let huge = id_encode(100);
    let mut f = File::create(q.join(&huge.0)).unwrap();
    std::io::Write::write_all(&mut f, &vec![b'a'; limits::SPOOL_MAX_CONTROL + 10]).unwrap();
    assert!(spool.read_entry(&huge).is_err());
}

#[test]
fn bounces_enqueue_outside_an_smtp_session() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let bounce = Envelope {
        sender: String::new(),
        recipients: vec!["alice@example.org".into()],
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "mail.example.org".into(),
        arrival: SystemTime::now(),
        smtputf8: false,
        body: BodyType::SevenBit,
        pickup: None,
    };
    let mut inc = spool.begin(&bounce).unwrap();
    inc.append(b"Subject: Undelivered Mail\r\n\r\nsorry\r\n");
    spool.commit_enqueue(inc, usize::MAX).unwrap();
    let r = spool.commit_flush();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, usize::MAX);
    let id = r[0].1.clone().unwrap();
    assert_eq!(spool.read_entry(&id).unwrap().envelope, bounce);
}

#[test]
fn listing_shows_one_line_per_message() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(
        format_queue(&[], SystemTime::now()),
        "Mail queue is empty\n"
    );
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    assert_eq!(list_queue(d.path()).unwrap(), vec![]);

    let now = UNIX_EPOCH + Duration::from_secs(1_714_566_896);
    let mut e1 = env(&["bob@example.net", "carol@example.net"]);
    e1.arrival = now - Duration::from_secs(180);
    let a = store(&mut spool, &e1, b"12345\r\n");
    spool.record_progress(&a, &[0], &[]).unwrap();
    spool
        .record_deferral(
            &a,
            2,
            "451 4.2.0 \"busy\"\u{1b}[2J",
            now + Duration::from_secs(3600),
        )
        .unwrap();
    let mut e2 = env(&["dave@example.net"]);
    e2.sender.clear();
    e2.arrival = now - Duration::from_secs(2 * 86400 + 5);
    let b = store(&mut spool, &e2, b"");
    // An entry whose header is unreadable is listed with the reason.
    let broken = id_encode(id_decode(&b.0).unwrap() + 1);
    fs::write(d.path().join("queue").join(&broken.0), b"junk").unwrap();

    let list = list_queue(d.path()).unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0].pending, vec!["carol@example.net".to_string()]);
    assert_eq!(list[0].size, 7);
    let mut list2 = list.clone();
    list2.truncate(2);
    let text = format_queue(&list2, now);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        vec![
            "QUEUE-ID      AGE       SIZE SENDER RECIPIENTS LAST-ERROR NEXT-ATTEMPT",
            &format!(
                "{}   3m          7 alice@example.org carol@example.net \"451 4.2.0 \\\"busy\\\"?[2J\" 2024-05-01T13:34:56Z",
                a.0
            ),
            &format!("{}   2d          0 <> dave@example.net - now", b.0),
            "2 messages in queue",
        ]
    );
    let text = format_queue(&list, now);
    assert!(text.ends_with("3 messages in queue\n"));
    assert!(text.contains(&format!("{} ", broken.0)));
    assert!(text.contains("unreadable entry"));
    let one = format_queue(&list[1..2], now);
    assert!(one.ends_with("\n1 message in queue\n"));
}

#[test]
fn listing_tolerates_vanishing_entries_and_missing_spool() {
    let d = tempfile::tempdir().unwrap();
    assert!(list_queue(&d.path().join("nope")).is_err());
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let a = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    spool.remove(&a).unwrap();
    assert!(list_queue(d.path()).unwrap().is_empty());
    // An orphan state file (crash during remove) is not an entry.
    fs::write(
        d.path().join("queue").join(format!("{}.state", a.0)),
        b"postling-state 1\n",
    )
    .unwrap();
    assert!(list_queue(d.path()).unwrap().is_empty());
}

#[test]
fn removed_files_are_rewritten_by_later_messages_without_old_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let big = vec![b'B'; 100_000];
    let first = store(&mut spool, &env(&["a@x"]), &big);
    spool.remove(&first).unwrap();
    assert_eq!(names(&d.path().join("free")).len(), 1);
    assert!(names(&d.path().join("queue")).is_empty());
    let second = store(&mut spool, &env(&["b@x"]), b"short\r\n");
    assert!(
        names(&d.path().join("free")).is_empty(),
        "the free file was reused"
    );
    let e = spool.read_entry(&second).unwrap();
    assert_eq!(read_data(&e), b"short\r\n");
    // The same holds when read back from disk (no cache), as after a restart.
    drop(spool);
    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(ids, vec![second.clone()]);
    let e = spool.read_entry(&second).unwrap();
    assert_eq!(e.envelope.recipients, vec!["b@x".to_string()]);
    assert_eq!(read_data(&e), b"short\r\n");
}

#[test]
fn free_files_survive_a_restart_and_junk_there_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let ids: Vec<QueueId> = (0..3)
        .map(|_| store(&mut spool, &env(&["a@x"]), b"m\r\n"))
        .collect();
    for id in &ids {
        spool.remove(id).unwrap();
    }
    drop(spool);
    fs::write(d.path().join("free").join("junk"), b"?").unwrap();
    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert!(ids.is_empty());
    let mut free = names(&d.path().join("free"));
    free.sort();
    assert_eq!(free, vec!["f1", "f2", "f3"]);
    // New frees continue the numbering instead of overwriting a kept file.
    let id = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    spool.remove(&id).unwrap();
    assert_eq!(names(&d.path().join("free")).len(), 3);
    assert!(names(&d.path().join("free")).iter().all(|n| n != "junk"));
}

#[test]
fn the_free_pool_keeps_everything_while_busy_and_is_trimmed_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let ids: Vec<QueueId> = (0..limits::SPOOL_FREE_KEEP + 40)
        .map(|_| {
            let inc = spool.begin(&env(&["a@x"])).unwrap();
            spool.commit_enqueue(inc, 0).unwrap();
            spool.commit_flush().pop().unwrap().1.unwrap()
        })
        .collect();
    for id in &ids {
        spool.remove(id).unwrap();
    }
    let free = || names(&d.path().join("free")).len();
    assert_eq!(
        free(),
        limits::SPOOL_FREE_KEEP + 40,
        "no unlink while mail flows"
    );
    assert!(spool.free_excess());
    spool.trim_free(30);
    assert_eq!(free(), limits::SPOOL_FREE_KEEP + 10);
    spool.trim_free(30);
    assert_eq!(free(), limits::SPOOL_FREE_KEEP);
    assert!(!spool.free_excess());
    spool.trim_free(30);
    assert_eq!(free(), limits::SPOOL_FREE_KEEP);
}

#[test]
fn a_fresh_entry_reads_back_as_from_disk_and_state_wins_once_written() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let e = env(&["a@x", "b@x"]);
    let id = store(&mut spool, &e, b"data\r\n");
    let cached = spool.read_entry(&id).unwrap();
    let (mut reopened, _) = Spool::open(d.path()).unwrap();
    let disk = reopened.read_entry(&id).unwrap();
    assert_eq!(cached.envelope, disk.envelope);
    assert_eq!(cached.rcpts, disk.rcpts);
    assert_eq!(cached.data_offset(), disk.data_offset());
    assert_eq!(cached.data_len(), disk.data_len());
    assert_eq!(read_data(&cached), b"data\r\n");

    let id2 = store(&mut spool, &e, b"x\r\n");
    spool.record_progress(&id2, &[0], &[]).unwrap();
    let after = spool.read_entry(&id2).unwrap();
    assert_eq!(after.rcpts, vec![RcptState::Delivered, RcptState::Pending]);
}

/// The bytes of every file in `free/`, by name.
fn free_files(root: &Path) -> Vec<(String, Vec<u8>, u64)> {
    use std::os::unix::fs::MetadataExt;
    names(&root.join("free"))
        .into_iter()
        .map(|n| {
            let p = root.join("free").join(&n);
            let blocks = fs::metadata(&p).unwrap().blocks();
            (n, fs::read(&p).unwrap(), blocks)
        })
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_removed_message_leaves_an_empty_file_in_free() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let secret = b"delivered mail, not for anyone's eyes\r\n".repeat(2000);
    // One removed without a state file (the usual case), one with recorded progress.
    let plain = store(&mut spool, &env(&["a@x"]), &secret);
    let stated = store(&mut spool, &env(&["a@x", "b@x"]), &secret);
    spool.record_progress(&stated, &[0], &[]).unwrap();
    spool.remove(&plain).unwrap();
    spool.remove(&stated).unwrap();
    assert!(names(&d.path().join("queue")).is_empty());
    let free = free_files(d.path());
    assert_eq!(free.len(), 2, "both files kept for reuse");
    for (name, bytes, blocks) in free {
        assert_eq!(bytes.len(), 0, "free/{name} keeps the old message's size");
        assert_eq!(blocks, 0, "free/{name} keeps the old message's blocks");
        assert!(!contains(&bytes, b"not for anyone's eyes"));
    }
    // The emptied files are still reused, and a short message in one has only its own bytes.
    let next = store(&mut spool, &env(&["b@x"]), b"short\r\n");
    assert_eq!(names(&d.path().join("free")).len(), 1);
    let e = spool.read_entry(&next).unwrap();
    assert_eq!(read_data(&e), b"short\r\n");
}

#[test]
fn open_empties_a_free_file_a_crash_left_full() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store(&mut spool, &env(&["a@x"]), b"m\r\n");
    drop(spool);
    // A crash after a removal's rename, before its truncation: the message is in free/.
    fs::rename(
        d.path().join("queue").join(&id.0),
        d.path().join("free").join("f7"),
    )
    .unwrap();
    assert!(
        fs::metadata(d.path().join("free").join("f7"))
            .unwrap()
            .len()
            > 0
    );
    let (_spool, ids) = Spool::open(d.path()).unwrap();
    assert!(ids.is_empty());
    let free = free_files(d.path());
    assert_eq!(free.len(), 1, "kept for reuse");
    assert_eq!((free[0].1.len(), free[0].2), (0, 0), "emptied at start-up");
}

/// The hook of the full-disk test: the disk has room again once the free files are gone.
fn room_again(inc: &mut Incoming) {
    use std::io::{Seek, SeekFrom};
    inc.file = OpenOptions::new().write(true).open(&inc.tmp_path).unwrap();
    inc.file.seek(SeekFrom::Start(inc.written)).unwrap();
}

#[test]
fn a_full_disk_gives_back_the_free_files_then_takes_the_message() {
    // Full while appending (40 KB: the buffer fills) and full at the final flush (100 bytes).
    for size in [40_000, 100] {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let ids: Vec<QueueId> = (0..3)
            .map(|_| store(&mut spool, &env(&["a@x"]), b"m\r\n"))
            .collect();
        for id in &ids {
            spool.remove(id).unwrap();
        }
        assert_eq!(names(&d.path().join("free")).len(), 3);
        spool.on_release = Some(room_again);
        let mut inc = spool.begin(&env(&["r@x"])).unwrap();
        // Every write to /dev/full fails with ENOSPC, as a full spool disk would, until the
        // spool has given back its free files (`room_again`).
        inc.file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let data: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        spool.append(&mut inc, &data);
        spool.commit_enqueue(inc, 7).unwrap();
        let (tag, r) = spool.commit_flush().pop().unwrap();
        assert_eq!(tag, 7);
        let id = r.expect("accepted once the free files were given back");
        assert!(
            names(&d.path().join("free")).is_empty(),
            "free files given back"
        );
        let (mut reopened, _) = Spool::open(d.path()).unwrap();
        let e = reopened.read_entry(&id).unwrap();
        assert_eq!(e.envelope.recipients, vec!["r@x".to_string()]);
        assert_eq!(read_data(&e), data, "size {size}");
    }
}

#[test]
fn a_full_disk_with_nothing_to_give_back_refuses() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    spool.on_release = Some(room_again);
    let mut inc = spool.begin(&env(&["r@x"])).unwrap();
    inc.file = OpenOptions::new().write(true).open("/dev/full").unwrap();
    spool.append(&mut inc, &[b'a'; 40_000]);
    assert!(inc.failed());
    assert_eq!(spool.commit_enqueue(inc, 7), Err(SpoolError::Full));
    assert!(names(&d.path().join("tmp")).is_empty());
    assert!(names(&d.path().join("queue")).is_empty());
}

#[test]
fn hold_and_release_are_one_marker_each_and_survive_reopen() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let q = root.join("queue");
    let (mut spool, _) = Spool::open(root).unwrap();
    let id = store(&mut spool, &env(&["a@x"]), b"one\r\n");
    let other = store(&mut spool, &env(&["a@x"]), b"two\r\n");
    assert!(spool.hold(&id).unwrap());
    assert!(!spool.hold(&id).unwrap(), "held already");
    assert!(spool.is_held(&id) && !spool.is_held(&other));
    assert_eq!(
        names(&q),
        vec![id.0.clone(), format!("{}.hold", id.0), other.0.clone()]
    );
    assert_eq!(
        fs::metadata(q.join(format!("{}.hold", id.0)))
            .unwrap()
            .len(),
        0,
        "an empty marker"
    );
    // A crash now (the marker exists): start-up finds the entry held, not junk.
    drop(spool);
    let (mut spool, ids) = Spool::open(root).unwrap();
    assert_eq!(ids, vec![id.clone(), other.clone()]);
    assert!(spool.is_held(&id) && !spool.is_held(&other));
    let listed = list_queue(root).unwrap();
    assert!(listed[0].held && !listed[1].held);
    assert!(format_queue(&listed, SystemTime::now()).contains(" HELD\n"));
    assert!(format_queue(&listed, SystemTime::now()).ends_with("2 messages in queue, 1 held\n"));
    // Release: the marker goes; after a crash the entry is plain again.
    assert!(spool.release(&id).unwrap());
    assert!(!spool.release(&id).unwrap(), "was not held");
    drop(spool);
    let (spool, _) = Spool::open(root).unwrap();
    assert!(!spool.is_held(&id));
    assert_eq!(names(&q), vec![id.0.clone(), other.0.clone()]);
    // Unknown and malformed ids.
    let mut spool = spool;
    let gone = id_encode(id_decode(&other.0).unwrap() + 7);
    assert_eq!(
        spool.hold(&gone).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert_eq!(
        spool.release(&gone).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    assert!(!spool.contains(&gone) && spool.contains(&other));
    assert!(spool.hold(&QueueId("../x".into())).is_err());
    assert!(!spool.contains(&QueueId("../queue".into())));
}

#[test]
fn removing_a_held_entry_at_every_crash_point_leaves_a_state_start_up_understands() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let q = root.join("queue");
    let (mut spool, _) = Spool::open(root).unwrap();
    let keep = store(&mut spool, &env(&["a@x"]), b"keep\r\n");
    let id = store(&mut spool, &env(&["a@x", "b@x"]), b"held\r\n");
    spool.record_progress(&id, &[0], &[]).unwrap();
    spool.hold(&id).unwrap();
    spool.hold(&keep).unwrap();
    drop(spool);
    let msg = fs::read(q.join(&id.0)).unwrap();
    let state = fs::read(q.join(format!("{}.state", id.0))).unwrap();
    // remove = message out (the removal point), then the state file, then the marker. A
    // crash after each step leaves these files:
    let after_message = [
        (format!("{}.state", id.0), &state[..]),
        (format!("{}.hold", id.0), &b""[..]),
    ];
    let after_state = [(format!("{}.hold", id.0), &b""[..])];
    for (step, leftovers) in [&after_message[..], &after_state[..]].iter().enumerate() {
        let _ = fs::remove_file(q.join(&id.0));
        for (name, bytes) in leftovers.iter() {
            fs::write(q.join(name), bytes).unwrap();
        }
        let (spool, ids) = Spool::open(root).unwrap();
        assert_eq!(ids, vec![keep.clone()], "step {step}");
        assert_eq!(
            names(&q),
            vec![keep.0.clone(), format!("{}.hold", keep.0)],
            "orphans removed at step {step}"
        );
        assert!(spool.is_held(&keep) && !spool.is_held(&id));
        // New ids stay beyond every id seen, orphans included.
        drop(spool);
    }
    // Before the first step nothing changed: the entry is whole, held, with its progress.
    fs::write(q.join(&id.0), &msg).unwrap();
    fs::write(q.join(format!("{}.state", id.0)), &state).unwrap();
    fs::write(q.join(format!("{}.hold", id.0)), b"").unwrap();
    let (mut spool, ids) = Spool::open(root).unwrap();
    assert_eq!(ids, vec![keep.clone(), id.clone()]);
    assert!(spool.is_held(&id));
    let e = spool.read_entry(&id).unwrap();
    assert_eq!(e.rcpts, vec![RcptState::Delivered, RcptState::Pending]);
    // And the real removal takes every file of the entry.
    spool.remove(&id).unwrap();
    assert_eq!(names(&q), vec![keep.0.clone(), format!("{}.hold", keep.0)]);
    assert!(!spool.is_held(&id));
}

#[test]
fn pickup_names_come_back_from_the_queue_after_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("spool");
    let (mut spool, _) = Spool::open(&root).unwrap();
    let mut e = env(&["bob@example.net"]);
    e.pickup = Some("0123456789abcdef0123456789abcdef".into());
    store(&mut spool, &e, b"Subject: x\r\n\r\nhi\r\n");
    store(&mut spool, &env(&["carol@example.net"]), b"x\r\n");
    drop(spool);
    let (spool, ids) = Spool::open(&root).unwrap();
    assert_eq!(ids.len(), 2);
    let names = spool.pickup_names(&ids);
    assert_eq!(
        names,
        HashSet::from(["0123456789abcdef0123456789abcdef".to_string()])
    );
}

/// The group commit in the disk executor (`commit::ExecGroup`), driven as the reactor drives
/// it, on the inline backend: each operation runs at submit, its completion waits for `drain`.
mod in_the_executor {
    use super::*;
    use crate::exec::{Completion, Errno, Executor, Inline};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::Instant;

    fn exec() -> Executor {
        Executor::Inline(Inline::new())
    }

    /// One reactor turn: the executor's completions (each through `tamper`) go back to the
    /// spool, then `commit_work` moves on. Returns what it reported.
    fn turn(
        spool: &mut Spool,
        exec: &mut Executor,
        tamper: &mut dyn FnMut(&mut Completion),
    ) -> Vec<Committed> {
        let mut got = Vec::new();
        exec.drain(&mut got);
        for mut c in got {
            assert!(commit_owns(c.tag) && !crate::mailbox::job::owns(c.tag));
            tamper(&mut c);
            spool.commit_completion(c);
        }
        spool.commit_work(Instant::now(), Some(exec))
    }

    fn enqueue(spool: &mut Spool, n: usize) -> Vec<QueueId> {
        (0..n)
            .map(|tag| {
                let mut inc = spool.begin(&env(&["r@x"])).unwrap();
                inc.append(format!("message {tag}\r\n").as_bytes());
                let id = inc.id().clone();
                spool.commit_enqueue(inc, tag).unwrap();
                id
            })
            .collect()
    }

    fn pipe_file() -> File {
        let mut fds = [0; 2];
        // SAFETY: room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors, owned from here on (the write end is closed at once).
        unsafe {
            drop(OwnedFd::from_raw_fd(fds[1]));
            File::from(OwnedFd::from_raw_fd(fds[0]))
        }
    }

    fn sorted(mut r: Vec<Committed>) -> Vec<Committed> {
        r.sort_by_key(|(t, _)| *t);
        r
    }

    #[test]
    fn data_sync_then_rename_then_dir_sync_then_the_report() {
        let d = tempfile::tempdir().unwrap();
        let (q, t) = (d.path().join("queue"), d.path().join("tmp"));
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = exec();
        let ids = enqueue(&mut spool, 3);
        let keep = &mut |_: &mut Completion| {};
        // Turn 1: the three fdatasyncs; nothing renamed, nothing reported.
        assert!(spool.commit_runnable());
        assert!(spool.commit_work(Instant::now(), Some(&mut x)).is_empty());
        assert_eq!(x.in_flight(), 3);
        assert!(
            !spool.commit_runnable(),
            "waits for completions, not in a loop"
        );
        assert_eq!(names(&t).len(), 3);
        assert!(names(&q).is_empty());
        // Turn 2: data durable, so the three renames (the commit point); still no report.
        assert!(turn(&mut spool, &mut x, keep).is_empty());
        assert_eq!(x.in_flight(), 3);
        assert_eq!(names(&q).len(), 3);
        assert!(names(&t).is_empty());
        // Turn 3: renamed, so one fsync of queue/ for the whole group; still no report.
        assert!(turn(&mut spool, &mut x, keep).is_empty());
        assert_eq!(x.in_flight(), 1);
        // Turn 4: queue/ durable: every message reported, by its tag.
        let r = sorted(turn(&mut spool, &mut x, keep));
        let want: Vec<Committed> = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(t, id)| (t, Ok(id)))
            .collect();
        assert_eq!(r, want);
        assert!(!spool.commit_pending());
        assert_eq!(x.in_flight(), 0);
        let (_, found) = Spool::open(d.path()).unwrap();
        assert_eq!(found, ids);
    }

    /// `fsync = filesystem`: the data stage is one syncfs for the whole group and the
    /// directory stage another, both in the executor; the order of the stages is the same.
    #[test]
    fn filesystem_mode_syncs_once_per_stage_in_the_executor() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("queue");
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        spool.set_sync_mode(crate::durable::SyncMode::Filesystem);
        let mut x = exec();
        let ids = enqueue(&mut spool, 3);
        let keep = &mut |_: &mut Completion| {};
        assert!(spool.commit_work(Instant::now(), Some(&mut x)).is_empty());
        assert_eq!(x.in_flight(), 1, "one syncfs for three files");
        assert!(!spool.commit_runnable());
        assert!(names(&q).is_empty());
        assert!(turn(&mut spool, &mut x, keep).is_empty());
        assert_eq!(x.in_flight(), 3, "the renames");
        assert_eq!(names(&q).len(), 3);
        assert!(turn(&mut spool, &mut x, keep).is_empty());
        assert_eq!(x.in_flight(), 1, "one syncfs for queue/");
        let r = sorted(turn(&mut spool, &mut x, keep));
        let want: Vec<Committed> = ids
            .iter()
            .cloned()
            .enumerate()
            .map(|(t, id)| (t, Ok(id)))
            .collect();
        assert_eq!(r, want);
        assert!(!spool.commit_pending());
    }

    /// A failed syncfs fails every member of the group (none is renamed into queue/).
    #[test]
    fn a_failed_syncfs_fails_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path().join("queue");
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        spool.set_sync_mode(crate::durable::SyncMode::Filesystem);
        let mut x = exec();
        enqueue(&mut spool, 2);
        assert!(spool.commit_work(Instant::now(), Some(&mut x)).is_empty());
        let eio = &mut |c: &mut Completion| c.result = Err(Errno(libc::EIO));
        let r = sorted(turn(&mut spool, &mut x, eio));
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|(_, res)| res.is_err()));
        assert!(names(&q).is_empty());
        assert!(!spool.commit_pending());
    }

    #[test]
    fn messages_finishing_meanwhile_form_the_next_group() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = exec();
        let first = enqueue(&mut spool, 2);
        assert!(spool.commit_work(Instant::now(), Some(&mut x)).is_empty());
        let second = enqueue(&mut spool, 1);
        assert!(!spool.commit_runnable());
        let keep = &mut |_: &mut Completion| {};
        let mut reported = Vec::new();
        for _ in 0..10 {
            reported.extend(turn(&mut spool, &mut x, keep));
        }
        assert_eq!(reported.len(), 3);
        assert_eq!(
            reported[2].1,
            Ok(second[0].clone()),
            "after the first group"
        );
        assert!(
            reported[..2]
                .iter()
                .all(|(_, r)| r.as_ref().is_ok_and(|id| first.contains(id)))
        );
    }

    #[test]
    fn a_failed_data_sync_fails_that_message_only() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = exec();
        let ids = enqueue(&mut spool, 3);
        // The middle message's descriptor cannot be synced (a pipe: EINVAL).
        spool.pending[1].1.file = pipe_file();
        let keep = &mut |_: &mut Completion| {};
        let mut r = spool.commit_work(Instant::now(), Some(&mut x));
        for _ in 0..3 {
            r.extend(turn(&mut spool, &mut x, keep));
        }
        let r = sorted(r);
        assert!(matches!(r[1], (1, Err(SpoolError::Failed(_)))), "{r:?}");
        assert_eq!(r[0], (0, Ok(ids[0].clone())));
        assert_eq!(r[2], (2, Ok(ids[2].clone())));
        assert_eq!(
            names(&d.path().join("queue")),
            vec![ids[0].0.clone(), ids[2].0.clone()]
        );
        assert!(
            names(&d.path().join("tmp")).is_empty(),
            "its temp file is gone"
        );
    }

    #[test]
    fn a_full_disk_at_the_data_sync_is_full_and_gives_back_the_free_files() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let old = store(&mut spool, &env(&["a@x"]), b"m\r\n");
        spool.remove(&old).unwrap();
        assert_eq!(names(&d.path().join("free")).len(), 1);
        let mut x = exec();
        let ids = enqueue(&mut spool, 2);
        let mut r = spool.commit_work(Instant::now(), Some(&mut x));
        // The fdatasync of tag 0 says ENOSPC (as after writeback into a full disk).
        let mut full = |c: &mut Completion| {
            if c.tag & !crate::spool::commit::TAG_BIT == 0 && c.result.is_ok() {
                c.result = Err(Errno(libc::ENOSPC));
            }
        };
        r.extend(turn(&mut spool, &mut x, &mut full));
        let keep = &mut |_: &mut Completion| {};
        for _ in 0..2 {
            r.extend(turn(&mut spool, &mut x, keep));
        }
        let r = sorted(r);
        assert_eq!(r, vec![(0, Err(SpoolError::Full)), (1, Ok(ids[1].clone()))]);
        assert!(
            names(&d.path().join("free")).is_empty(),
            "free files given back"
        );
        assert_eq!(names(&d.path().join("queue")), vec![ids[1].0.clone()]);
    }

    #[test]
    fn a_failed_rename_fails_that_message_only() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = exec();
        let ids = enqueue(&mut spool, 3);
        let keep = &mut |_: &mut Completion| {};
        let mut r = spool.commit_work(Instant::now(), Some(&mut x));
        // Data durable; the middle temp file vanishes before its rename (ENOENT).
        fs::remove_file(d.path().join("tmp").join(&ids[1].0)).unwrap();
        for _ in 0..3 {
            r.extend(turn(&mut spool, &mut x, keep));
        }
        let r = sorted(r);
        assert!(matches!(r[1], (1, Err(SpoolError::Failed(_)))), "{r:?}");
        assert_eq!(
            (r[0].clone(), r[2].clone()),
            ((0, Ok(ids[0].clone())), (2, Ok(ids[2].clone())))
        );
        assert_eq!(
            names(&d.path().join("queue")),
            vec![ids[0].0.clone(), ids[2].0.clone()]
        );
    }

    #[test]
    fn a_failed_dir_sync_withdraws_the_group_and_acknowledges_nothing() {
        for errno in [libc::EIO, libc::ENOSPC] {
            let d = tempfile::tempdir().unwrap();
            let (mut spool, _) = Spool::open(d.path()).unwrap();
            let mut x = exec();
            enqueue(&mut spool, 2);
            let mut fail_dir = |c: &mut Completion| {
                // The only operation of the third stage is the directory's fsync.
                c.result = Err(Errno(errno));
            };
            let keep = &mut |_: &mut Completion| {};
            let mut r = spool.commit_work(Instant::now(), Some(&mut x));
            r.extend(turn(&mut spool, &mut x, keep));
            r.extend(turn(&mut spool, &mut x, keep));
            assert_eq!(names(&d.path().join("queue")).len(), 2, "renamed");
            assert!(r.is_empty());
            r.extend(turn(&mut spool, &mut x, &mut fail_dir));
            let want = if errno == libc::ENOSPC {
                SpoolError::Full
            } else {
                SpoolError::Failed(std::io::Error::from_raw_os_error(errno).to_string())
            };
            assert_eq!(sorted(r), vec![(0, Err(want.clone())), (1, Err(want))]);
            assert!(names(&d.path().join("queue")).is_empty(), "withdrawn");
            assert!(names(&d.path().join("tmp")).is_empty());
        }
    }

    #[test]
    fn a_real_failed_dir_sync_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        spool.queue_dir = pipe_file();
        let mut x = exec();
        enqueue(&mut spool, 1);
        let r = spool.commit_flush_with(Some(&mut x));
        assert!(matches!(r[..], [(0, Err(SpoolError::Failed(_)))]), "{r:?}");
        assert!(names(&d.path().join("queue")).is_empty());
    }

    #[test]
    fn a_crash_at_every_stage_loses_nothing_acknowledged() {
        // Crash (the spool forgotten: no destructor runs, as in a SIGKILL) after each turn.
        for crash_after in 0..4 {
            let d = tempfile::tempdir().unwrap();
            let (mut spool, _) = Spool::open(d.path()).unwrap();
            let mut x = exec();
            let ids = enqueue(&mut spool, 2);
            let keep = &mut |_: &mut Completion| {};
            let mut acked = spool.commit_work(Instant::now(), Some(&mut x));
            for _ in 0..crash_after {
                acked.extend(turn(&mut spool, &mut x, keep));
            }
            std::mem::forget(spool);
            let (_, found) = Spool::open(d.path()).unwrap();
            // After turn 0 (data syncs): not renamed, so gone (the client retries); 1 and 2
            // (renames and the directory sync ran: inline runs each at submit): kept, not
            // acknowledged (a retry may duplicate, never lose); 3: acknowledged, kept.
            let (want_found, want_acked) = match crash_after {
                0 => (vec![], 0),
                1 | 2 => (ids.clone(), 0),
                _ => (ids.clone(), 2),
            };
            assert_eq!(found, want_found, "crash after turn {crash_after}");
            assert_eq!(acked.len(), want_acked, "crash after turn {crash_after}");
            assert!(names(&d.path().join("tmp")).is_empty());
        }
    }
}

// ---- the Maildir form ("link-1") -------------------------------------------------------------

/// begin_with(maildir form) + append in pieces + group commit.
fn store_linkable(spool: &mut Spool, e: &Envelope, data: &[u8]) -> QueueId {
    let mut inc = spool.begin_with(e, true).unwrap();
    assert!(inc.maildir_form());
    for piece in data.chunks(3) {
        spool.append(&mut inc, piece);
    }
    assert_eq!(
        inc.data_size(),
        data.len() as u64,
        "size= counts the bytes received"
    );
    spool.commit_enqueue(inc, 1).unwrap();
    spool.commit_flush().pop().unwrap().1.unwrap()
}

const MSG: &[u8] = b"Subject: x\r\n\r\nbody\r\nCR CR LF\r\r\nend";

#[test]
fn a_maildir_form_entry_holds_the_maildir_copy_and_reads_back_as_received() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store_linkable(&mut spool, &env(&["bob@example.org"]), MSG);
    let path = d.path().join("queue").join(&id.0);
    let want: &[u8] = b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.org\nSubject: x\n\nbody\nCR CR LF\r\nend";
    assert_eq!(fs::read(&path).unwrap(), want);
    // Read back fresh (sizes from the writing) and after a restart (counted from the file).
    let fresh = spool.read_entry(&id).unwrap();
    let fresh_sizes = fresh.maildir_sizes().unwrap().unwrap();
    // W=: every LF not after a CR is sent as CRLF by POP3 (5 of the 6 here).
    assert_eq!(fresh_sizes, (want.len() as u64, want.len() as u64 + 5));
    drop(spool);
    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(ids, vec![id.clone()]);
    let e = spool.read_entry(&id).unwrap();
    assert!(e.is_maildir_form());
    assert_eq!(e.maildir_sizes().unwrap(), Some(fresh_sizes));
    assert_eq!(e.envelope.sender, "alice@example.org");
    assert_eq!(e.envelope.recipients, vec!["bob@example.org".to_string()]);
    assert_eq!(
        e.envelope, fresh.envelope,
        "the cache says what the file says"
    );
    assert_eq!(
        e.envelope.arrival,
        format::id_time(id_decode(&id.0).unwrap()),
        "the arrival time is the id's"
    );
    let mut back = Vec::new();
    e.read_data().unwrap().read_to_end(&mut back).unwrap();
    assert_eq!(back, MSG, "as received");
    // Deferral, hold and the listing work on it.
    spool
        .record_deferral(&id, 1, "451 busy", SystemTime::now())
        .unwrap();
    assert_eq!(spool.read_entry(&id).unwrap().attempts, 1);
    assert!(spool.hold(&id).unwrap());
    let listed = list_queue(d.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].sender, "alice@example.org");
    assert_eq!(listed[0].last_error.as_deref(), Some("451 busy"));
    spool.remove(&id).unwrap();
    assert!(spool.ids().unwrap().is_empty());
}

#[test]
fn only_envelopes_the_maildir_form_can_carry_get_it() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut two = env(&["a@x", "b@x"]);
    let mut utf8 = env(&["a@x"]);
    utf8.smtputf8 = true;
    let mut dropped = env(&["a@x"]);
    dropped.pickup = Some("0123456789abcdef0123456789abcdef".into());
    for e in [&mut two, &mut utf8, &mut dropped] {
        let inc = spool.begin_with(e, true).unwrap();
        assert!(!inc.maildir_form(), "{e:?}");
        spool.abort(inc);
    }
    // BODY=8BITMIME needs no room: it is read back as 7bit (a relay looks at the data).
    let mut eight = env(&["a@x"]);
    eight.body = BodyType::EightBitMime;
    let inc = spool.begin_with(&eight, true).unwrap();
    assert!(inc.maildir_form());
    spool.abort(inc);
    // And not when the caller does not ask (the recipient is not one local Maildir).
    let inc = spool.begin_with(&env(&["a@x"]), false).unwrap();
    assert!(!inc.maildir_form());
    spool.abort(inc);
}

#[test]
fn a_linked_file_is_never_emptied_for_reuse_at_removal_or_at_start_up() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let id = store_linkable(&mut spool, &env(&["bob@example.org"]), MSG);
    let mailbox = d.path().join("maildir-copy");
    fs::hard_link(d.path().join("queue").join(&id.0), &mailbox).unwrap();
    let want = fs::read(&mailbox).unwrap();
    spool.remove(&id).unwrap();
    assert_eq!(
        fs::read(&mailbox).unwrap(),
        want,
        "removal unlinks, never truncates"
    );
    assert!(
        free_files(d.path()).is_empty(),
        "its inode is the mailbox's"
    );
    // A crash inside a removal that had renamed a linked file into free/: start-up drops
    // that name and leaves the mailbox's file alone.
    let id = store_linkable(&mut spool, &env(&["bob@example.org"]), MSG);
    let mailbox2 = d.path().join("maildir-copy2");
    fs::hard_link(d.path().join("queue").join(&id.0), &mailbox2).unwrap();
    drop(spool);
    fs::rename(
        d.path().join("queue").join(&id.0),
        d.path().join("free").join("f9"),
    )
    .unwrap();
    let (_spool, ids) = Spool::open(d.path()).unwrap();
    assert!(ids.is_empty());
    assert_eq!(fs::read(&mailbox2).unwrap(), want);
    assert!(!d.path().join("free").join("f9").exists());
}

#[test]
fn a_maildir_form_entry_survives_a_crash_at_every_commit_point() {
    // Before the commit's rename: nothing in the queue. After: a readable entry.
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut inc = spool.begin_with(&env(&["bob@example.org"]), true).unwrap();
    spool.append(&mut inc, MSG);
    std::mem::forget(inc); // a crash: the temp file stays where it is
    drop(spool);
    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert!(ids.is_empty(), "uncommitted: gone");
    let id = store_linkable(&mut spool, &env(&["bob@example.org"]), MSG);
    drop(spool);
    let (mut spool, ids) = Spool::open(d.path()).unwrap();
    assert_eq!(ids, vec![id.clone()]);
    assert!(spool.read_entry(&id).unwrap().is_maildir_form());
}

/// Files made ahead and removals done in the disk executor (`prepare.rs`), driven as the
/// reactor drives them, on the inline backend.
mod ahead {
    use super::*;
    use crate::exec::{Executor, Inline};

    /// The executor's completions go back to the spool until none is left in flight.
    /// A spool with an inline executor and one entry in the Maildir form (to bob), its files
    /// made ahead already settled: the start of the tests of a linked entry's removal.
    pub(super) fn linkable_entry() -> (tempfile::TempDir, Spool, Executor, QueueId) {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = Executor::Inline(Inline::new());
        let id = store_linkable(&mut spool, &env(&["bob@example.org"]), MSG);
        settle(&mut spool, &mut x);
        (d, spool, x, id)
    }

    fn settle(spool: &mut Spool, exec: &mut Executor) {
        for _ in 0..10 {
            let mut got = Vec::new();
            exec.drain(&mut got);
            for c in got {
                assert!(prepare_owns(c.tag) && !commit_owns(c.tag));
                spool.prepared(c, Some(exec));
            }
            spool.prepare_files(Some(exec));
            if !spool.preparing() {
                return;
            }
        }
        panic!("operations still in flight");
    }

    #[test]
    fn a_message_begun_finds_its_file_made_ahead_instead_of_creating_one() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = Executor::Inline(Inline::new());
        // Nothing begun: nothing made (an idle server makes no files).
        spool.prepare_files(Some(&mut x));
        assert!(!spool.preparing());
        assert!(names(&d.path().join("free")).is_empty());
        // A message begins (its own file is created: none was ready) and ends.
        let first = spool.begin(&env(&["r@x"])).unwrap();
        assert!(first.tmp_path.starts_with(d.path().join("tmp")));
        spool.abort(first);
        // The next turn makes files ahead, in the executor.
        spool.prepare_files(Some(&mut x));
        assert!(spool.preparing());
        settle(&mut spool, &mut x);
        assert_eq!(
            names(&d.path().join("free")).len(),
            limits::SPOOL_READY_FILES
        );
        // The next message opens one of them: no file is created in tmp/.
        let second = spool.begin(&env(&["r@x"])).unwrap();
        assert!(second.tmp_path.starts_with(d.path().join("free")));
        assert!(names(&d.path().join("tmp")).is_empty());
        drop(second);
    }

    #[test]
    fn a_removed_entry_goes_to_free_in_the_executor_emptied() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = Executor::Inline(Inline::new());
        let id = store(&mut spool, &env(&["r@x"]), b"Subject: x\r\n\r\nbody\r\n");
        settle(&mut spool, &mut x);
        let before = names(&d.path().join("free")).len();
        spool.remove(&id).unwrap();
        // Not on the reactor: the file is still in queue/ until the next turn submits it.
        assert!(names(&d.path().join("queue")).contains(&id.0));
        spool.prepare_files(Some(&mut x));
        settle(&mut spool, &mut x);
        assert!(!names(&d.path().join("queue")).contains(&id.0));
        let free = names(&d.path().join("free"));
        assert_eq!(free.len(), before + 1);
        for f in &free {
            assert_eq!(
                fs::metadata(d.path().join("free").join(f)).unwrap().len(),
                0
            );
        }
        // And it is reused.
        let inc = spool.begin(&env(&["r@x"])).unwrap();
        assert!(inc.tmp_path.starts_with(d.path().join("free")));
    }

    /// A Maildir-form entry that delivery linked into a Maildir is the mailbox's message:
    /// with removals in the executor too, only its name in queue/ goes; it is never moved to
    /// free/ nor emptied (that would empty the user's mail).
    #[test]
    fn a_linked_entry_is_unlinked_never_emptied_when_removals_go_to_the_executor() {
        let (d, mut spool, mut x, id) = linkable_entry();
        let queued = d.path().join("queue").join(&id.0);
        let maildir_copy = d.path().join("delivered");
        fs::hard_link(&queued, &maildir_copy).unwrap();
        let content = fs::read(&maildir_copy).unwrap();
        let free_before = names(&d.path().join("free"));
        spool.remove(&id).unwrap();
        // Not on the reactor: the name is still in queue/ until the next turn submits it.
        assert!(queued.exists());
        spool.prepare_files(Some(&mut x));
        let mut got = Vec::new();
        x.drain(&mut got);
        assert_eq!(got.len(), 1, "one operation: the unlink");
        for c in got {
            spool.prepared(c, Some(&mut x));
        }
        settle(&mut spool, &mut x);
        assert!(!queued.exists());
        assert_eq!(
            fs::read(&maildir_copy).unwrap(),
            content,
            "the mail is intact"
        );
        assert_eq!(fs::metadata(&maildir_copy).unwrap().nlink(), 1);
        assert_eq!(
            names(&d.path().join("free")),
            free_before,
            "not a free file"
        );
    }

    #[test]
    fn without_an_executor_for_files_a_removal_is_done_at_once() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let id = store(&mut spool, &env(&["r@x"]), b"x\r\n");
        spool.prepare_files(None);
        spool.remove(&id).unwrap();
        assert!(!names(&d.path().join("queue")).contains(&id.0));
        assert_eq!(names(&d.path().join("free")).len(), 1);
    }

    #[test]
    fn shutdown_carries_out_the_removals_handed_over() {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let mut x = Executor::Inline(Inline::new());
        let id = store(&mut spool, &env(&["r@x"]), b"x\r\n");
        spool.prepare_files(Some(&mut x));
        spool.remove(&id).unwrap();
        spool.finish_removals(Some(&mut x));
        assert!(!spool.preparing());
        assert!(!names(&d.path().join("queue")).contains(&id.0));
    }
}

/// A removal whose rename the helper process never answered (it died: `EPIPE`) is done with
/// blocking calls: no delivered entry stays in `queue/`.
#[test]
fn a_removal_lost_with_the_helper_is_done_at_once() {
    use crate::exec::{Errno, Executor, Inline};
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut x = Executor::Inline(Inline::new());
    let id = store(&mut spool, &env(&["r@x"]), b"x\r\n");
    // The files made ahead after that message are made first.
    loop {
        spool.prepare_files(Some(&mut x));
        let mut got = Vec::new();
        x.drain(&mut got);
        if got.is_empty() {
            break;
        }
        for c in got {
            spool.prepared(c, Some(&mut x));
        }
    }
    let free = d.path().join("free");
    let before = names(&free);
    spool.remove(&id).unwrap();
    spool.prepare_files(Some(&mut x));
    let mut got = Vec::new();
    x.drain(&mut got);
    assert_eq!(got.len(), 1, "the rename");
    // The inline executor ran the rename at submit; undo it, as if it never ran.
    let moved = names(&free)
        .into_iter()
        .find(|n| !before.contains(n))
        .unwrap();
    fs::rename(free.join(&moved), d.path().join("queue").join(&id.0)).unwrap();
    let mut c = got.pop().unwrap();
    c.result = Err(Errno(libc::EPIPE));
    spool.prepared(c, Some(&mut x));
    assert!(!names(&d.path().join("queue")).contains(&id.0));
    assert_eq!(fs::metadata(free.join(&moved)).unwrap().len(), 0);
}

/// The same for the unlink of an entry linked into a Maildir: done with a blocking call when
/// the helper never answered, so the delivered entry does not stay in `queue/`.
#[test]
fn an_unlink_lost_with_the_helper_is_done_at_once() {
    use crate::exec::Errno;
    let (d, mut spool, mut x, id) = ahead::linkable_entry();
    let queued = d.path().join("queue").join(&id.0);
    let maildir_copy = d.path().join("delivered");
    fs::hard_link(&queued, &maildir_copy).unwrap();
    spool.remove(&id).unwrap();
    spool.prepare_files(Some(&mut x));
    let mut got = Vec::new();
    x.drain(&mut got);
    let mut c = got.pop().expect("the unlink");
    // The inline executor ran it at submit; put the name back, as if it never ran.
    fs::hard_link(&maildir_copy, &queued).unwrap();
    c.result = Err(Errno(libc::EPIPE));
    spool.prepared(c, Some(&mut x));
    assert!(!queued.exists());
    assert_eq!(fs::metadata(&maildir_copy).unwrap().nlink(), 1);
}

/// At shutdown the commit flush drains the executor: the completions of files being made
/// ahead are handed on, not dropped, so the wait for the spool's removals that follows ends.
#[test]
fn the_shutdown_commit_flush_hands_on_the_files_made_ahead() {
    use crate::exec::{Executor, Inline};
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(d.path()).unwrap();
    let mut x = Executor::Inline(Inline::new());
    let mut inc = spool.begin(&env(&["r@x"])).unwrap();
    inc.append(b"x\r\n");
    spool.prepare_files(Some(&mut x));
    assert!(spool.preparing());
    spool.commit_enqueue(inc, 1).unwrap();
    let r = spool.commit_flush_with(Some(&mut x));
    assert_eq!(r.len(), 1);
    let t = std::time::Instant::now();
    spool.finish_removals(Some(&mut x));
    assert!(!spool.preparing());
    assert!(t.elapsed() < limits::SPOOL_REMOVALS_WAIT);
    assert_eq!(
        names(&d.path().join("free")).len(),
        limits::SPOOL_READY_FILES
    );
}

/// Delivery state written in the disk executor (`spool::state`), driven as the reactor
/// drives it: `prepare_files` once a turn, every completion back through `prepared`.
mod state_writes {
    use super::*;
    use crate::exec::{Completion, Errno, Executor, Inline};

    fn deferral(attempts: u32, error: &str) -> Deferral<'_> {
        Deferral {
            attempts,
            last_error: error,
            next_attempt: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + u64::from(attempts)),
            rcpt_errors: &[],
            delay_warned: None,
        }
    }

    /// A spool that knows its executor runs file operations (as after the reactor's first
    /// turn), with one entry for two recipients.
    fn setup(x: &mut Executor) -> (tempfile::TempDir, Spool, QueueId) {
        let d = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let id = store(&mut spool, &env(&["a@x", "b@x"]), b"m\r\n");
        turns(&mut spool, x, &mut |_| {});
        (d, spool, id)
    }

    /// Reactor turns until nothing is in flight; each completion goes through `tamper`.
    fn turns(spool: &mut Spool, x: &mut Executor, tamper: &mut dyn FnMut(&mut Completion)) {
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            spool.prepare_files(Some(x));
            let mut got = Vec::new();
            x.drain(&mut got);
            if got.is_empty() && !spool.preparing() {
                return;
            }
            assert!(std::time::Instant::now() < give_up, "the writes never end");
            for mut c in got {
                assert!(prepare_owns(c.tag));
                tamper(&mut c);
                spool.prepared(c, Some(x));
            }
        }
    }

    /// `turns`, with the `n`th completion (from 1) failed with `errno`.
    fn turns_failing(spool: &mut Spool, x: &mut Executor, n: usize, errno: i32) {
        let mut seen = 0;
        turns(spool, x, &mut |c| {
            seen += 1;
            if seen == n {
                c.result = Err(Errno(errno));
            }
        });
        assert!(seen >= n, "only {seen} completions");
    }

    fn on_disk(d: &tempfile::TempDir, id: &QueueId) -> Option<String> {
        fs::read_to_string(d.path().join("queue").join(format!("{}.state", id.0))).ok()
    }

    fn recorded_then_written(mut x: Executor) {
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "451 busy")))
            .unwrap();
        // Nothing is written on the reactor, and the recorded state is what reads see.
        assert_eq!(on_disk(&d, &id), None);
        assert!(
            spool.states_submittable(),
            "the reactor must come back for it"
        );
        let e = spool.read_entry(&id).unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (1, Some("451 busy")));
        assert_eq!(e.rcpts, vec![RcptState::Pending, RcptState::Delivered]);
        turns(&mut spool, &mut x, &mut |_| {});
        assert!(!spool.states_submittable());
        let text = on_disk(&d, &id).expect("the state file");
        assert!(text.contains("451 busy"), "{text}");
        assert!(names(&d.path().join("tmp")).is_empty());
        // Read back from the file now, the same; and after a restart.
        let e = spool.read_entry(&id).unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (1, Some("451 busy")));
        drop(spool);
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let e = spool.read_entry(&id).unwrap();
        assert_eq!(e.rcpts, vec![RcptState::Pending, RcptState::Delivered]);
        assert_eq!(e.attempts, 1);
    }

    /// `$name` as a test of its own on each backend.
    macro_rules! on_every_backend {
        ($name:ident) => {
            mod $name {
                use crate::exec::{Executor, Inline};
                #[test]
                fn inline() {
                    super::$name(Executor::Inline(Inline::new()));
                }
                #[test]
                fn helper() {
                    super::$name(crate::exec::tests::helper());
                }
                #[test]
                fn uring() {
                    if let Some(x) = crate::exec::tests::uring() {
                        super::$name(x);
                    }
                }
            }
        };
    }

    on_every_backend!(recorded_then_written);
    on_every_backend!(removed_with_its_state);

    /// A second record while the first is being written waits for it, merges with it, and
    /// is what ends on disk.
    #[test]
    fn a_newer_record_made_during_a_write_ends_on_disk() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "first")))
            .unwrap();
        spool.prepare_files(Some(&mut x));
        spool
            .record_attempt(&id, &[], &[], Some(deferral(2, "second")))
            .unwrap();
        let e = spool.read_entry(&id).unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (2, Some("second")));
        assert_eq!(e.rcpts[1], RcptState::Delivered, "merged with the first");
        turns(&mut spool, &mut x, &mut |_| {});
        let text = on_disk(&d, &id).unwrap();
        assert!(text.contains("second") && !text.contains("first"), "{text}");
        drop(spool);
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        let e = spool.read_entry(&id).unwrap();
        assert_eq!(e.attempts, 2);
        assert_eq!(e.rcpts[1], RcptState::Delivered);
    }

    /// An entry removed while its state is being written leaves no state file behind.
    #[test]
    fn an_entry_removed_during_its_write_leaves_nothing() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "x")))
            .unwrap();
        spool.prepare_files(Some(&mut x));
        spool.remove(&id).unwrap();
        turns(&mut spool, &mut x, &mut |_| {});
        assert_gone(&d, &id);
        assert!(names(&d.path().join("tmp")).is_empty());
        // Removed before its write even started: nothing is written at all.
        let id2 = store(&mut spool, &env(&["a@x"]), b"m\r\n");
        spool
            .record_attempt(&id2, &[], &[], Some(deferral(1, "y")))
            .unwrap();
        spool.remove(&id2).unwrap();
        assert!(!spool.states_submittable());
        turns(&mut spool, &mut x, &mut |_| {});
        assert_eq!(on_disk(&d, &id2), None);
    }

    /// A write whose sync fails leaves the file as it was, keeps the recorded state for reads
    /// (the next attempt must not forget who got the message), and the next record writes.
    #[test]
    fn a_failed_write_is_kept_for_reads_and_written_by_the_next_record() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "x")))
            .unwrap();
        // Fail the data sync: the third operation (open, write, fdatasync).
        turns_failing(&mut spool, &mut x, 3, libc::EIO);
        assert_eq!(on_disk(&d, &id), None);
        assert!(
            names(&d.path().join("tmp")).is_empty(),
            "the temp file is discarded"
        );
        assert!(
            !spool.preparing(),
            "a failed write is not retried on its own"
        );
        let e = spool.read_entry(&id).unwrap();
        assert_eq!(e.rcpts[1], RcptState::Delivered);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(2, "again")))
            .unwrap();
        turns(&mut spool, &mut x, &mut |_| {});
        let text = on_disk(&d, &id).unwrap();
        assert!(text.contains("again"), "{text}");
        drop(spool);
        let (mut spool, _) = Spool::open(d.path()).unwrap();
        assert_eq!(
            spool.read_entry(&id).unwrap().rcpts[1],
            RcptState::Delivered
        );
    }

    /// A kept text never hides a newer state written with blocking calls (the executor gone
    /// for file operations after the failure).
    #[test]
    fn a_blocking_record_supersedes_a_kept_text() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "kept")))
            .unwrap();
        turns_failing(&mut spool, &mut x, 3, libc::EIO);
        assert_eq!(on_disk(&d, &id), None);
        // No executor for file operations from now on.
        spool.prepare_files(None);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(2, "blocking")))
            .unwrap();
        assert!(on_disk(&d, &id).unwrap().contains("blocking"));
        let e = spool.read_entry(&id).unwrap();
        assert_eq!((e.attempts, e.last_error.as_deref()), (2, Some("blocking")));
        assert_eq!(
            e.rcpts[1],
            RcptState::Delivered,
            "merged with the kept text"
        );
        assert!(!spool.preparing());
    }

    /// The helper process gone with a step (`EPIPE`): the write is made with blocking calls.
    #[test]
    fn a_write_lost_with_the_helper_is_made_at_once() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(1, "lost")))
            .unwrap();
        turns_failing(&mut spool, &mut x, 2, libc::EPIPE);
        assert!(on_disk(&d, &id).unwrap().contains("lost"));
        assert!(!spool.preparing());
    }

    fn entry_files(d: &tempfile::TempDir, id: &QueueId) -> Vec<String> {
        names(&d.path().join("queue"))
            .into_iter()
            .filter(|n| n.starts_with(&id.0))
            .collect()
    }

    fn assert_gone(d: &tempfile::TempDir, id: &QueueId) {
        let left = entry_files(d, id);
        assert!(left.is_empty(), "{id}: {left:?} left in queue/");
    }

    /// An entry with a state file and a hold marker is removed in the executor: nothing of
    /// it is left in `queue/`, nothing was removed before the turn, and its file is emptied
    /// in `free/` for reuse.
    fn removed_with_its_state(mut x: Executor) {
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "x")))
            .unwrap();
        turns(&mut spool, &mut x, &mut |_| {});
        assert!(spool.hold(&id).unwrap());
        let free_before = names(&d.path().join("free")).len();
        spool.remove(&id).unwrap();
        assert_eq!(
            entry_files(&d, &id).len(),
            3,
            "nothing is removed on the reactor"
        );
        assert!(spool.states_submittable());
        turns(&mut spool, &mut x, &mut |_| {});
        assert_gone(&d, &id);
        let free = names(&d.path().join("free"));
        assert_eq!(free.len(), free_before + 1);
        for f in free {
            assert_eq!(
                fs::metadata(d.path().join("free").join(f)).unwrap().len(),
                0
            );
        }
        drop(spool);
        let (_, ids) = Spool::open(d.path()).unwrap();
        assert!(ids.is_empty());
    }

    /// A removal whose step the helper never answered (`EPIPE`) is finished with blocking
    /// calls; one removed at shutdown before its turn came is carried out by `finish_removals`.
    #[test]
    fn removals_lost_with_the_helper_or_left_at_shutdown_are_done() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        let id2 = store(&mut spool, &env(&["a@x"]), b"m\r\n");
        for i in [&id, &id2] {
            spool
                .record_attempt(i, &[], &[], Some(deferral(1, "x")))
                .unwrap();
        }
        turns(&mut spool, &mut x, &mut |_| {});
        spool.remove(&id).unwrap();
        turns_failing(&mut spool, &mut x, 2, libc::EPIPE);
        assert_gone(&d, &id);
        spool.remove(&id2).unwrap();
        spool.finish_removals(Some(&mut x));
        assert!(!spool.preparing());
        assert_gone(&d, &id2);
    }

    /// A message file that cannot be removed keeps its state file (its progress is not lost).
    #[test]
    fn a_removal_that_fails_keeps_the_state() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[1], &[], Some(deferral(1, "x")))
            .unwrap();
        turns(&mut spool, &mut x, &mut |_| {});
        spool.remove(&id).unwrap();
        turns_failing(&mut spool, &mut x, 1, libc::EIO);
        // The inline executor did rename the file; the failure said it did not: the state
        // stays, whatever happened to the message file.
        assert!(on_disk(&d, &id).is_some());
    }

    fn logged() -> Vec<String> {
        super::super::state::LOGGED.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }

    /// The line that says an attempt was recorded is logged once its state is on disk (a
    /// `postling -q` after it shows what it says), and at once where records are blocking.
    #[test]
    fn the_recorded_line_waits_for_the_write() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        logged();
        spool
            .record_attempt(&id, &[], &[], Some(deferral(1, "later")))
            .unwrap();
        spool.log_when_recorded(&id, format!("{id}: deferred for 1h"));
        assert!(logged().is_empty());
        spool.prepare_files(Some(&mut x));
        // A second record while the first is written: its line waits for its own write.
        spool
            .record_attempt(&id, &[], &[], Some(deferral(2, "later still")))
            .unwrap();
        spool.log_when_recorded(&id, format!("{id}: deferred again"));
        let mut lines = Vec::new();
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        while lines.len() < 2 {
            assert!(std::time::Instant::now() < give_up);
            let mut got = Vec::new();
            x.drain(&mut got);
            for c in got {
                spool.prepared(c, Some(&mut x));
                for line in logged() {
                    let text = on_disk(&d, &id).unwrap_or_default();
                    let on_time = if lines.is_empty() {
                        text.contains("later") && !text.contains("later still")
                    } else {
                        text.contains("later still")
                    };
                    assert!(on_time, "{line} logged with {text:?} on disk");
                    lines.push(line);
                }
            }
            spool.prepare_files(Some(&mut x));
        }
        assert_eq!(
            lines,
            vec![
                format!("{id}: deferred for 1h"),
                format!("{id}: deferred again")
            ]
        );
        // Without an executor for file operations the record is on disk at once, and so is
        // its line.
        let (d2, mut plain) = {
            let d = tempfile::tempdir().unwrap();
            let (s, _) = Spool::open(d.path()).unwrap();
            (d, s)
        };
        let id2 = store(&mut plain, &env(&["a@x"]), b"m\r\n");
        plain
            .record_attempt(&id2, &[], &[], Some(deferral(1, "now")))
            .unwrap();
        assert!(on_disk(&d2, &id2).is_some());
        plain.log_when_recorded(&id2, "now".into());
        assert_eq!(logged(), vec!["now".to_string()]);
    }

    /// More records at once than the executor takes operations: the rest wait for room (no
    /// blocking call, no record lost), and every one ends on disk.
    #[test]
    fn more_records_than_the_executor_takes_all_end_on_disk() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, _) = setup(&mut x);
        let n = limits::EXEC_MAX_IN_FLIGHT + 44;
        let ids: Vec<QueueId> = (0..n)
            .map(|_| store(&mut spool, &env(&["a@x"]), b"m\r\n"))
            .collect();
        turns(&mut spool, &mut x, &mut |_| {});
        for id in &ids {
            spool
                .record_attempt(id, &[], &[], Some(deferral(1, "many")))
                .unwrap();
        }
        spool.prepare_files(Some(&mut x));
        assert!(!spool.states_submittable(), "blocked until a completion");
        assert!(ids.iter().all(|id| on_disk(&d, id).is_none()));
        turns(&mut spool, &mut x, &mut |_| {});
        for id in &ids {
            assert!(on_disk(&d, id).is_some_and(|t| t.contains("many")), "{id}");
        }
        for id in &ids {
            spool.remove(id).unwrap();
        }
        turns(&mut spool, &mut x, &mut |_| {});
        for id in &ids {
            assert_gone(&d, id);
        }
    }

    /// A step the executor has no room for waits for the next turn, then goes on.
    #[test]
    fn a_step_without_room_waits_for_the_next_turn() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(1, "room")))
            .unwrap();
        spool.prepare_files(Some(&mut x));
        let mut got = Vec::new();
        x.drain(&mut got);
        assert_eq!(got.len(), 1, "the open");
        // Someone else takes every place before the open's completion is handed on.
        let tmp = tempfile::tempdir().unwrap();
        let mut filler = 0;
        while x
            .submit(
                77,
                crate::exec::DiskOp::Unlink {
                    dir: None,
                    path: std::ffi::CString::new(
                        tmp.path().join("none").as_os_str().as_encoded_bytes(),
                    )
                    .unwrap(),
                },
            )
            .is_ok()
        {
            filler += 1;
        }
        assert_eq!(filler, limits::EXEC_MAX_IN_FLIGHT);
        for c in got {
            spool.prepared(c, Some(&mut x));
        }
        assert!(spool.preparing());
        assert!(
            !spool.states_submittable(),
            "no spinning while the executor is full"
        );
        let mut others = Vec::new();
        x.drain(&mut others);
        assert!(others.iter().all(|c| c.tag == 77));
        turns(&mut spool, &mut x, &mut |_| {});
        assert!(on_disk(&d, &id).unwrap().contains("room"));
    }

    /// The administrator's removal is done when it returns, executor or not.
    #[test]
    fn remove_now_is_done_when_it_returns() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(1, "x")))
            .unwrap();
        turns(&mut spool, &mut x, &mut |_| {});
        assert!(spool.hold(&id).unwrap());
        spool.remove_now(&id).unwrap();
        assert_gone(&d, &id);
        assert!(!spool.states_submittable());
    }

    /// Shutdown writes what was recorded: after `finish_removals` it is on disk.
    #[test]
    fn shutdown_writes_what_was_recorded() {
        let mut x = Executor::Inline(Inline::new());
        let (d, mut spool, id) = setup(&mut x);
        spool
            .record_attempt(&id, &[], &[], Some(deferral(1, "at shutdown")))
            .unwrap();
        spool.finish_removals(Some(&mut x));
        assert!(!spool.preparing());
        assert!(on_disk(&d, &id).unwrap().contains("at shutdown"));
    }
}
