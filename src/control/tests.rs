//! Queue commands on a real spool in a temp directory, as the daemon and the offline command
//! carry them out.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::deliver::engine::DeliveryPolicy;
use crate::deliver::local::Maildirs;
use crate::mail::{BodyType, Envelope};

fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "client".into(),
        arrival: SystemTime::now(),
        smtputf8: false,
        body: BodyType::SevenBit,
        pickup: None,
    }
}

fn queue(spool: &mut Spool, sender: &str, rcpts: &[&str]) -> QueueId {
    let mut inc = spool.begin(&envelope(sender, rcpts)).unwrap();
    spool.append(&mut inc, b"Subject: hi\r\n\r\nbody\r\n");
    spool.commit_one(inc).unwrap()
}

fn engine(mail: &Path) -> Engine {
    Engine::new(
        Maildirs::new(mail, "mail.example.test"),
        DeliveryPolicy {
            hostname: "mail.example.test".into(),
            retry_min: Duration::from_secs(3600),
            retry_max: Duration::from_secs(3600),
            queue_lifetime: Duration::from_secs(86400),
            delay_warning: Duration::ZERO,
        },
    )
}

fn words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

#[test]
fn commands_parse_and_travel_as_one_line() {
    let id = |s: &str| QueueId(s.into());
    assert_eq!(Command::parse(&words("flush")), Ok(Command::Flush(vec![])));
    assert_eq!(
        Command::parse(&words("hold A B")),
        Ok(Command::Hold(vec![id("A"), id("B")]))
    );
    assert_eq!(Command::parse(&words("delete all")), Ok(Command::DeleteAll));
    for bad in [
        "",
        "hold",
        "release",
        "bounce",
        "delete",
        "delete all X",
        "frobnicate X",
    ] {
        assert!(Command::parse(&words(bad)).is_err(), "{bad:?}");
    }
    for cmd in [
        Command::Flush(vec![]),
        Command::Bounce(vec![id("01K0VS027V6M")]),
        Command::DeleteAll,
        Command::Release(vec![id("A"), id("B")]),
    ] {
        let line = cmd.encode();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(Command::parse(&words(&line)), Ok(cmd));
    }
    let l = Line::failed("x\r\ny".into());
    assert_eq!(
        Line::decode(l.encode().trim_end()),
        Some(Line::failed("x  y".into()))
    );
    assert_eq!(Line::decode("nonsense"), None);
}

#[test]
fn every_command_on_a_spool_unknown_ids_reported_the_rest_done() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(&d.path().join("spool")).unwrap();
    let mut eng = engine(&d.path().join("mail"));
    let a = queue(&mut spool, "s@example.org", &["alice@example.test"]);
    let b = queue(
        &mut spool,
        "s@example.org",
        &["bob@example.test", "carol@example.test"],
    );
    let c = queue(&mut spool, "", &["bob@example.test"]);
    let unknown = QueueId("01K0VS027V6M".into());
    let now = SystemTime::now();

    let r = apply(
        &Command::Hold(vec![a.clone(), unknown.clone(), QueueId("x/y".into())]),
        &mut spool,
        &mut eng,
        true,
        now,
    );
    assert_eq!(
        r.iter().map(|l| l.status).collect::<Vec<_>>(),
        [Status::Ok, Status::Unknown, Status::Unknown]
    );
    assert!(r[1].text.contains("no such message"), "{}", r[1].text);
    assert!(r[2].text.contains("not a queue id"), "{}", r[2].text);
    assert!(spool.is_held(&a) && eng.is_held(&a));

    // Flush: the held one stays held, the other is due now.
    eng.schedule
        .defer(b.clone(), Instant::now() + Duration::from_secs(3600));
    let r = apply(
        &Command::Flush(vec![a.clone(), b.clone()]),
        &mut spool,
        &mut eng,
        true,
        now,
    );
    assert!(r[0].text.contains("stays held"));
    assert_eq!(eng.schedule.timeout(Instant::now()), Some(Duration::ZERO));
    assert_eq!(eng.schedule.len(), 1);

    let r = apply(
        &Command::Release(vec![a.clone(), b.clone()]),
        &mut spool,
        &mut eng,
        true,
        now,
    );
    assert!(r[0].text.contains("released"), "{}", r[0].text);
    assert!(r[1].text.contains("was not held"), "{}", r[1].text);
    assert!(!spool.is_held(&a) && !eng.is_held(&a));

    // Bounce b: a DSN for its sender is queued, b is gone; c (null sender) goes without one.
    let before = spool.ids().unwrap().len();
    let r = apply(
        &Command::Bounce(vec![b.clone(), c.clone()]),
        &mut spool,
        &mut eng,
        true,
        now,
    );
    assert!(r.iter().all(|l| l.status == Status::Ok), "{r:?}");
    assert!(r[0].text.contains("2 recipient"), "{}", r[0].text);
    let ids = spool.ids().unwrap();
    assert_eq!(ids.len(), before - 2 + 1, "b and c gone, one bounce queued");
    let dsn = ids.iter().find(|i| **i != a).unwrap().clone();
    let e = spool.read_entry(&dsn).unwrap();
    assert_eq!(e.envelope.sender, "");
    assert_eq!(e.envelope.recipients, vec!["s@example.org".to_string()]);
    let (mut f, _) = e.open_data().unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).unwrap();
    assert!(text.contains("Status: 5.0.0"), "{text}");
    assert!(text.contains("returned by the administrator"));

    // Delete one, then all.
    let r = apply(
        &Command::Delete(vec![a.clone(), a.clone()]),
        &mut spool,
        &mut eng,
        true,
        now,
    );
    assert_eq!(r[0].status, Status::Ok);
    assert_eq!(r[1].status, Status::Unknown, "deleted already");
    let r = apply(&Command::DeleteAll, &mut spool, &mut eng, true, now);
    assert_eq!(r.len(), 1);
    assert!(spool.ids().unwrap().is_empty());
    assert!(
        eng.schedule.is_empty(),
        "deleted entries leave the schedule"
    );
    let r = apply(&Command::DeleteAll, &mut spool, &mut eng, true, now);
    assert!(r[0].text.contains("empty"));
}

/// The daemon's way: a step whose deadline has passed acts on one entry, in the order given;
/// `delete all` lists the queue at its first step; the last step says the command is done.
#[test]
fn a_command_runs_one_slice_at_a_time() {
    let d = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(&d.path().join("spool")).unwrap();
    let mut eng = engine(&d.path().join("mail"));
    let ids: Vec<QueueId> = (0..3)
        .map(|_| queue(&mut spool, "s@example.org", &["alice@example.test"]))
        .collect();
    let unknown = QueueId("01K0VS027V6M".into());
    let now = SystemTime::now();
    let past = Instant::now();
    let mut hold = Progress::new(Command::Hold(vec![
        ids[2].clone(),
        unknown.clone(),
        ids[0].clone(),
    ]));
    let mut lines = Vec::new();
    assert!(!hold.step(&mut spool, &mut eng, true, now, past, &mut lines));
    assert_eq!(lines.len(), 1);
    assert!(spool.is_held(&ids[2]) && !spool.is_held(&ids[0]));
    assert!(!hold.step(&mut spool, &mut eng, true, now, past, &mut lines));
    assert!(hold.step(&mut spool, &mut eng, true, now, past, &mut lines));
    let statuses: Vec<Status> = lines.iter().map(|l| l.status).collect();
    assert_eq!(statuses, [Status::Ok, Status::Unknown, Status::Ok]);
    assert!(lines[0].text.starts_with(&ids[2].0) && lines[2].text.starts_with(&ids[0].0));
    assert!(spool.is_held(&ids[0]) && !spool.is_held(&ids[1]));

    // With time left, one step does it all.
    let mut lines = Vec::new();
    let later = Instant::now() + Duration::from_secs(60);
    let mut all = Progress::new(Command::DeleteAll);
    assert!(all.step(&mut spool, &mut eng, true, now, later, &mut lines));
    assert_eq!(lines.len(), 3);
    assert!(spool.ids().unwrap().is_empty());
    let mut lines = Vec::new();
    let mut empty = Progress::new(Command::DeleteAll);
    assert!(empty.step(&mut spool, &mut eng, true, now, past, &mut lines));
    assert!(lines[0].text.contains("empty"), "{lines:?}");
}

#[test]
fn the_spool_lock_is_exclusive() {
    let d = tempfile::tempdir().unwrap();
    let held = lock_spool(d.path(), false).unwrap();
    assert!(held.is_some());
    assert!(
        lock_spool(d.path(), false).unwrap().is_none(),
        "a daemon holds it"
    );
    drop(held);
    assert!(lock_spool(d.path(), false).unwrap().is_some());
    fs::remove_dir(d.path()).unwrap_or(());
}

#[test]
fn long_socket_paths_go_through_the_open_directory() {
    let d = tempfile::tempdir().unwrap();
    let f = File::open(d.path()).unwrap();
    assert_eq!(socket_address(d.path(), &f), d.path().join(SOCKET_NAME));
    let long = d.path().join("x".repeat(120));
    fs::create_dir(&long).unwrap();
    let f = File::open(&long).unwrap();
    let addr = socket_address(&long, &f);
    assert!(addr.starts_with("/proc/self/fd/"));
    let l = std::os::unix::net::UnixListener::bind(&addr).unwrap();
    assert!(long.join(SOCKET_NAME).exists());
    std::os::unix::net::UnixStream::connect(&addr).unwrap();
    drop(l);
}

/// Turns as the reactor's, each after the poll said something is ready, until a request.
fn request(poll: &mut mio::Poll, server: &mut ControlServer, at: Instant) -> Option<Command> {
    let mut events = mio::Events::with_capacity(4);
    for _ in 0..50 {
        server.turn(poll.registry(), at);
        if let Some(cmd) = server.take_request() {
            return Some(cmd);
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for e in events.iter() {
            server.ready(e.token());
        }
    }
    None
}

/// The daemon's end of the socket: a command's reply lines reach the client as they come,
/// the client's deadline does not drop it while its command runs (however long), the last
/// part ends the reply, and a command that said nothing is answered `ok`.
#[test]
fn the_reply_streams_and_the_deadline_waits_for_the_command() {
    use std::io::{BufRead, BufReader, Write};
    let d = tempfile::tempdir().unwrap();
    let poll = mio::Poll::new().unwrap();
    let mut server = ControlServer::bind(d.path(), poll.registry()).unwrap();
    let connect = || {
        let c = std::os::unix::net::UnixStream::connect(d.path().join(SOCKET_NAME)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    let mut poll = poll;
    let mut client = connect();
    client.write_all(b"hold A B\n").unwrap();
    let now = Instant::now();
    let cmd = request(&mut poll, &mut server, now);
    let id = |s: &str| QueueId(s.into());
    assert_eq!(cmd, Some(Command::Hold(vec![id("A"), id("B")])));
    let mut reader = BufReader::new(client.try_clone().unwrap());
    server.reply_part(&[Line::ok("A: held".into())], false, poll.registry(), now);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(
        line, "ok A: held\n",
        "the first part before the command ends"
    );
    // Long past the client's deadline, still carrying out its command: kept.
    let late = now + limits::CONTROL_CLIENT_TIMEOUT * 3;
    server.turn(poll.registry(), late);
    assert!(server.take_request().is_none(), "one command at a time");
    server.reply_part(&[Line::ok("B: held".into())], true, poll.registry(), late);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert_eq!(rest, "ok B: held\n", "the rest, then the daemon closes");

    let mut quiet = connect();
    quiet.write_all(b"flush\n").unwrap();
    assert_eq!(
        request(&mut poll, &mut server, late),
        Some(Command::Flush(vec![]))
    );
    server.reply_part(&[], true, poll.registry(), late);
    let mut all = String::new();
    std::io::Read::read_to_string(&mut quiet, &mut all).unwrap();
    assert_eq!(all, "ok\n");
}
