use std::time::Duration;

use super::*;
use crate::proto::pop_testing::dialog::{self, DELAY};
use crate::proto::pop_testing::{Body, FakeHost, Harness, Stop, run_split, wire_size};

const ONE: &[u8] = b"Subject: pop2\n\nhello\n";
const TWO: &[u8] = b"Subject: two\n\n.dot stays\nno final newline";
const THREE: &[u8] = b"Subject: three\r\n\r\nthird\r\n";

fn host() -> FakeHost {
    let mut h = FakeHost::new();
    h.add_user("bob", "bob-pw");
    h.add_message("5.M1P1Q1.h", ONE);
    h.add_message("6.M1P1Q1.h", TWO);
    h.add_message("7.M1P1Q1.h", THREE);
    h
}

fn session() -> Pop2Session {
    Pop2Session::new(dialog::settings())
}

fn harness() -> Harness<Pop2Session> {
    Harness::new(session(), host())
}

fn say(h: &mut Harness<Pop2Session>, line: &str) -> String {
    let r = h.exchange(format!("{line}\r\n").as_bytes());
    String::from_utf8_lossy(&r).into_owned()
}

fn logged_in() -> Harness<Pop2Session> {
    let mut h = harness();
    assert_eq!(say(&mut h, "HELO bob bob-pw"), "#3\r\n");
    h
}

#[test]
fn greeting_and_size() {
    let h = harness();
    assert_eq!(
        h.wire_str(),
        "+ POP2 pop.example.test postling server ready\r\n"
    );
    assert!(
        std::mem::size_of::<Pop2Session>() <= 160,
        "{}",
        std::mem::size_of::<Pop2Session>()
    );
}

#[test]
fn the_integration_tests_raw_session() {
    // tests/integration/test_pop.py::test_pop2_raw_session, byte for byte.
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_message("5.M1P1Q1.h", ONE);
    let mut h = Harness::new(session(), host);
    assert_eq!(say(&mut h, "HELO bob bob-pw"), "#1\r\n");
    let expected = b"Subject: pop2\r\n\r\nhello\r\n";
    assert_eq!(say(&mut h, "READ 1"), format!("={}\r\n", expected.len()));
    assert_eq!(h.exchange(b"RETR\r\n"), expected);
    assert_eq!(say(&mut h, "ACKD"), "=0\r\n");
    assert_eq!(
        say(&mut h, "QUIT"),
        "+ postling POP2 server signing off\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.host.updates, vec![vec![0]]);
}

#[test]
fn before_helo() {
    for cmd in [
        "READ",
        "READ 1",
        "RETR",
        "ACKS",
        "ACKD",
        "NACK",
        "FOLD INBOX",
        "STAT",
    ] {
        let mut h = harness();
        assert_eq!(say(&mut h, cmd), "- send HELO first\r\n", "{cmd}");
    }
    for cmd in ["HELO", "HELO bob", "HELO  "] {
        let mut h = harness();
        assert_eq!(
            say(&mut h, cmd),
            "- syntax: HELO user password\r\n",
            "{cmd}"
        );
        assert!(h.host.auth_calls.is_empty());
    }
    let mut h = harness();
    assert_eq!(
        say(&mut h, "quit"),
        "+ postling POP2 server signing off\r\n"
    );
    assert!(h.closed && h.host.updates.is_empty() && h.host.opened.is_empty());
}

#[test]
fn failed_helo_waits_then_closes() {
    for user in ["bob", "nobody"] {
        let mut h = harness();
        h.auto_wake = false;
        h.send(format!("HELO {user} wrong\r\nQUIT\r\n").as_bytes());
        assert_eq!(h.run(), Stop::Sleep(DELAY));
        assert_eq!(
            h.wire_str(),
            "+ POP2 pop.example.test postling server ready\r\n"
        );
        h.wake_after(DELAY);
        assert_eq!(h.run(), Stop::Close);
        assert!(
            h.wire_str()
                .ends_with("- Invalid user name or password\r\n"),
            "{user}"
        );
        assert!(h.host.updates.is_empty());
    }
    let mut h = harness();
    h.host.throttled = true;
    assert_eq!(
        say(&mut h, "HELO bob bob-pw"),
        "- Too many failed logins from your address, try again later\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.sleeps, vec![DELAY]);
}

#[test]
fn mailbox_errors_close() {
    // In use: after the failure delay, like a failed HELO (a client cannot loop logins as
    // fast as they are answered); the others at once.
    let cases = [
        (
            MailboxError::InUse,
            "- mailbox is in use by another session\r\n",
            vec![DELAY],
        ),
        (
            MailboxError::Temporary("x".into()),
            "- mailbox unavailable, try again later\r\n",
            vec![],
        ),
        (
            MailboxError::Permanent("x".into()),
            "- mailbox unavailable, try again later\r\n",
            vec![],
        ),
    ];
    for (e, want, sleeps) in cases {
        let mut h = harness();
        h.host.open_error = Some(e);
        assert_eq!(say(&mut h, "HELO bob bob-pw"), want);
        assert!(h.closed);
        assert_eq!(h.sleeps, sleeps);
    }
}

#[test]
fn read_sizes_and_numbers() {
    let mut h = logged_in();
    let (one, two, three) = (wire_size(ONE), wire_size(TWO), wire_size(THREE));
    let cases: Vec<(&str, String)> = vec![
        ("READ", format!("={one}\r\n")),
        ("READ 2", format!("={two}\r\n")),
        ("READ", format!("={two}\r\n")),
        ("read 3", format!("={three}\r\n")),
        ("READ 4", "=0\r\n".into()),
        ("READ 0", "=0\r\n".into()),
        ("READ 4294967297", "=0\r\n".into()),
        ("READ 18446744073709551615", "=0\r\n".into()),
        (
            "READ 18446744073709551616",
            "- invalid message number\r\n".into(),
        ),
        ("READ -1", "- invalid message number\r\n".into()),
        ("READ 1x", "- invalid message number\r\n".into()),
        ("READ 1 2", "- syntax: READ [n]\r\n".into()),
        ("HELO bob bob-pw", "- already logged in\r\n".into()),
        ("ACKS", "- command not valid now\r\n".into()),
        ("NACK", "- command not valid now\r\n".into()),
        ("XYZZY", "- unknown command\r\n".into()),
    ];
    for (cmd, want) in cases {
        assert_eq!(say(&mut h, cmd), want, "{cmd}");
    }
}

#[test]
fn retr_needs_a_sized_message() {
    let mut h = logged_in();
    assert_eq!(
        say(&mut h, "RETR"),
        "- no message to retrieve (send READ first)\r\n"
    );
    say(&mut h, "READ 9");
    assert_eq!(
        say(&mut h, "RETR"),
        "- no message to retrieve (send READ first)\r\n"
    );
}

#[test]
fn acknowledgements_walk_the_mailbox() {
    let mut h = logged_in();
    let (two, three) = (wire_size(TWO), wire_size(THREE));
    say(&mut h, "READ 1");
    assert_eq!(h.exchange(b"RETR\r\n"), b"Subject: pop2\r\n\r\nhello\r\n");
    // In XFER only the acknowledgements are valid.
    assert_eq!(say(&mut h, "READ 2"), "- send ACKS, ACKD or NACK\r\n");
    assert_eq!(say(&mut h, "RETR"), "- send ACKS, ACKD or NACK\r\n");
    assert_eq!(say(&mut h, "ACKS"), format!("={two}\r\n"));
    let body_two: &[u8] = b"Subject: two\r\n\r\n.dot stays\r\nno final newline";
    assert_eq!(h.exchange(b"RETR\r\n"), body_two);
    assert_eq!(body_two.len() as u64, two);
    assert_eq!(say(&mut h, "NACK"), format!("={two}\r\n"));
    assert_eq!(h.exchange(b"RETR\r\n"), body_two);
    assert_eq!(say(&mut h, "ACKD"), format!("={three}\r\n"));
    assert_eq!(say(&mut h, "READ 2"), "=0\r\n", "ACKD'ed message is gone");
    assert_eq!(say(&mut h, "READ 3"), format!("={three}\r\n"));
    assert_eq!(h.exchange(b"RETR\r\n"), THREE);
    assert_eq!(say(&mut h, "ACKD"), "=0\r\n");
    assert_eq!(
        say(&mut h, "QUIT"),
        "+ postling POP2 server signing off\r\n"
    );
    assert_eq!(h.host.updates, vec![vec![1, 2]]);
}

#[test]
fn fold_selects_only_the_inbox() {
    let mut h = logged_in();
    assert_eq!(say(&mut h, "FOLD inbox"), "#3\r\n");
    assert_eq!(say(&mut h, "FOLD /etc/passwd"), "#0\r\n");
    assert_eq!(say(&mut h, "READ 1"), "=0\r\n");
    assert_eq!(
        say(&mut h, "RETR"),
        "- no message to retrieve (send READ first)\r\n"
    );
    assert_eq!(say(&mut h, "FOLD ../alice"), "#0\r\n");
    assert_eq!(say(&mut h, "FOLD"), "- syntax: FOLD mailbox\r\n");
    assert_eq!(say(&mut h, "FOLD InBoX"), "#3\r\n");
    assert_eq!(say(&mut h, "READ"), format!("={}\r\n", wire_size(ONE)));
    assert_eq!(
        h.host.opened,
        vec!["bob".to_string()],
        "no other mailbox is touched"
    );
}

#[test]
fn timeout_and_shutdown_delete_nothing() {
    let mut h = logged_in();
    say(&mut h, "READ 1");
    h.exchange(b"RETR\r\n");
    say(&mut h, "ACKD");
    h.timeout();
    assert!(h.wire_str().ends_with("- timeout, closing connection\r\n"));
    assert_eq!(h.run(), Stop::Close);
    let mut h = logged_in();
    h.shutdown();
    assert!(h.wire_str().ends_with("- server shutting down\r\n"));
    h.send(b"QUIT\r\n");
    assert_eq!(h.run(), Stop::Close);
    assert!(h.host.updates.is_empty());
}

#[test]
fn update_failure_is_reported() {
    let mut h = logged_in();
    h.host.update_error = Some(MailboxError::Temporary("disk".into()));
    assert_eq!(
        say(&mut h, "QUIT"),
        "- some deleted messages were not removed\r\n"
    );
    assert!(h.closed);
}

#[test]
fn too_many_errors_close() {
    let mut h = logged_in();
    for _ in 1..limits::POP_MAX_ERRORS {
        assert_eq!(say(&mut h, "BOGUS"), "- unknown command\r\n");
    }
    assert_eq!(
        say(&mut h, "BOGUS"),
        "- too many bad commands, closing connection\r\n"
    );
    assert!(h.closed && h.host.updates.is_empty());
}

#[test]
fn long_lines_are_discarded_in_sync() {
    let mut h = logged_in();
    assert_eq!(
        say(&mut h, &format!("READ {}", "1".repeat(300))),
        "- line too long\r\n"
    );
    h.send(&vec![b'x'; 3 * limits::MAX_UNIT]);
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(say(&mut h, ""), "- line too long\r\n");
    assert_eq!(say(&mut h, "READ 3"), format!("={}\r\n", wire_size(THREE)));
}

#[test]
fn read_errors() {
    let mut h = logged_in();
    h.host.read_error_at = Some(0);
    say(&mut h, "READ 1");
    assert_eq!(say(&mut h, "RETR"), "- cannot read that message now\r\n");
    h.host.read_error_at = None;
    assert_eq!(h.exchange(b"RETR\r\n"), b"Subject: pop2\r\n\r\nhello\r\n");

    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_body("big", Body::Synthetic { len: 200_000 });
    host.read_error_at = Some(100_000);
    let mut h = Harness::new(session(), host);
    say(&mut h, "HELO bob bob-pw");
    say(&mut h, "READ 1");
    h.send(b"RETR\r\nACKD\r\nQUIT\r\n");
    assert_eq!(h.run(), Stop::Close);
    assert!(h.host.updates.is_empty());
}

#[test]
fn large_message_is_exactly_its_size_with_flat_memory() {
    const LEN: u64 = 8 << 20;
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_body("big", Body::Synthetic { len: LEN });
    let mut h = Harness::new(session(), host);
    say(&mut h, "HELO bob bob-pw");
    let size = Body::Synthetic { len: LEN }.wire_size();
    assert_eq!(say(&mut h, "READ"), format!("={size}\r\n"));
    h.keep_wire = false;
    let start = h.wire_len;
    h.send(b"RETR\r\nACKS\r\n");
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(h.wire_len - start, size + 4, "the text, then `=0\\r\\n`");
    assert!(h.wire_tail.ends_with(b"xxx=0\r\n"));
    assert!(h.host.largest_read_buf <= limits::POP_STREAM_CHUNK);
}

const BATCH: &[u8] = b"HELO bob bob-pw\r\nFOLD INBOX\r\nREAD\r\nRETR\r\nACKS\r\nRETR\r\nNACK\r\n\
RETR\r\nACKD\r\nBOGUS\r\nREAD 1\r\nRETR\r\nACKD\r\nQUIT\r\n";

#[test]
fn pipelined_batch_split_anywhere_gives_identical_output() {
    let whole = run_split(harness, BATCH, &[]);
    let text = String::from_utf8(whole.clone()).unwrap();
    assert!(
        text.ends_with("+ postling POP2 server signing off\r\n"),
        "{text}"
    );
    for cut in 1..BATCH.len() {
        assert_eq!(run_split(harness, BATCH, &[cut]), whole, "cut at {cut}");
    }
    let every: Vec<usize> = (1..BATCH.len()).collect();
    assert_eq!(run_split(harness, BATCH, &every), whole);
    let h = {
        let mut h = harness();
        h.send(BATCH);
        h.run();
        h
    };
    assert_eq!(h.host.updates, vec![vec![0, 1]]);
}

#[test]
fn early_step_while_delaying_reports_time_left() {
    let mut h = harness();
    h.auto_wake = false;
    h.send(b"HELO bob nope\r\n");
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    h.now += Duration::from_secs(1);
    assert_eq!(h.run(), Stop::Sleep(DELAY - Duration::from_secs(1)));
}

#[test]
fn dialog_transcripts() {
    dialog::run_all("pop2", session);
}

/// A Maildir `W=` that lies (the listing says 5 octets for ONE, 9999 for TWO): POP2 announces
/// and sends each text whole and exactly, and ACKD deletes only what was sent.
#[test]
fn sizes_come_from_the_file_not_the_listing() {
    let mut host = host();
    host.listed_sizes = vec![(0, 5), (1, 9999)];
    let mut h = Harness::new(session(), host);
    assert_eq!(say(&mut h, "HELO bob bob-pw"), "#3\r\n");
    let (one, two) = (wire_size(ONE), wire_size(TWO));
    assert_eq!(say(&mut h, "READ 1"), format!("={one}\r\n"));
    assert_eq!(h.exchange(b"RETR\r\n"), b"Subject: pop2\r\n\r\nhello\r\n");
    assert_eq!(say(&mut h, "ACKD"), format!("={two}\r\n"));
    let body_two: &[u8] = b"Subject: two\r\n\r\n.dot stays\r\nno final newline";
    assert_eq!(h.exchange(b"RETR\r\n"), body_two);
    assert!(
        !h.closed,
        "a shorter file than listed must not close the connection"
    );
    assert_eq!(say(&mut h, "ACKD"), format!("={}\r\n", wire_size(THREE)));
    assert_eq!(
        say(&mut h, "QUIT"),
        "+ postling POP2 server signing off\r\n"
    );
    assert_eq!(h.host.updates, vec![vec![0, 1]]);
}

/// A message that cannot be sized is `=0` and cannot be retrieved (so not deleted unread).
#[test]
fn a_message_that_cannot_be_sized_is_not_retrieved() {
    let mut h = logged_in();
    h.host.size_error = true;
    assert_eq!(say(&mut h, "READ 1"), "=0\r\n");
    assert_eq!(
        say(&mut h, "RETR"),
        "- no message to retrieve (send READ first)\r\n"
    );
    h.host.size_error = false;
    assert_eq!(say(&mut h, "READ 1"), format!("={}\r\n", wire_size(ONE)));
}

/// Before HELO a session may be evicted and is under the login deadline; after it, neither.
#[test]
fn holds_nothing_and_logged_in_follow_the_login() {
    let h = harness();
    assert!(h.session.holds_nothing() && !h.session.logged_in());
    let h = logged_in();
    assert!(!h.session.holds_nothing() && h.session.logged_in());
}

#[test]
fn helo_awaits_the_check_and_resumes_with_its_verdict() {
    let mut h = harness();
    h.auto_verify = false;
    h.send(b"HELO bob bob-pw\r\nREAD 1\r\n");
    assert_eq!(h.run(), Stop::AwaitAuth);
    assert_eq!(
        h.auth_requests,
        vec![("bob".to_string(), b"bob-pw".to_vec())]
    );
    assert_eq!(h.pending_input(), b"READ 1\r\n".len());
    assert!(h.host.auth_calls.is_empty());
    h.verify(crate::proto::AuthVerdict::Accepted("bob".into()));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str()
            .ends_with(&format!("#3\r\n={}\r\n", wire_size(ONE)))
    );
    // Rejected: the delay, then `-` and the close.
    let mut h = harness();
    h.auto_verify = false;
    h.send(b"HELO bob nope\r\n");
    assert_eq!(h.run(), Stop::AwaitAuth);
    h.verify(crate::proto::AuthVerdict::Rejected);
    assert_eq!(h.run(), Stop::Close);
    assert_eq!(h.sleeps, vec![DELAY]);
    assert!(
        h.wire_str()
            .ends_with("- Invalid user name or password\r\n")
    );
}

#[test]
fn helo_whose_check_cannot_run_fails_at_once() {
    let mut h = harness();
    h.host.check_unavailable = true;
    assert_eq!(
        say(&mut h, "HELO bob bob-pw"),
        "- cannot check passwords now, try again later\r\n"
    );
    assert!(h.closed);
    assert!(h.sleeps.is_empty());
    assert!(h.host.opened.is_empty());
}

#[test]
fn helo_and_quit_wait_for_the_mailbox_work() {
    use crate::mail::{MailboxDone, MessageInfo};
    use crate::proto::MailboxRequest;
    use crate::proto::pop_testing::Stop;
    let mut h = harness();
    h.auto_mailbox = false;
    h.send(b"HELO bob bob-pw\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(h.mailbox_requests, vec![MailboxRequest::Open("bob".into())]);
    let info = |uid: &str| MessageInfo {
        uid: uid.into(),
        size: 3,
    };
    h.mailbox_done(MailboxDone::Opened(Ok(vec![info("5.a"), info("6.a")])));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(h.wire_str().ends_with("#2\r\n"));
    h.send(b"QUIT\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(h.mailbox_requests[1], MailboxRequest::Update(vec![]));
    h.mailbox_done(MailboxDone::Updated(Err(MailboxError::Temporary(
        "x".into(),
    ))));
    assert_eq!(h.run(), Stop::Close);
    assert!(
        h.wire_str()
            .ends_with("- some deleted messages were not removed\r\n")
    );
}

/// READ and each acknowledgement wait for the message to be counted (`MailboxRequest::Size`,
/// the reading of a whole file, off the reactor): nothing is answered and no line is read
/// meanwhile, even one already sent; a message not there is `=0` without a request.
#[test]
fn read_and_acknowledgements_wait_for_the_count() {
    use crate::mail::MailboxDone;
    use crate::proto::MailboxRequest;
    let mut h = logged_in();
    h.auto_mailbox = false;
    h.mailbox_requests.clear();
    let before = h.wire.len();
    h.send(b"READ 2\r\nRETR\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(h.mailbox_requests, vec![MailboxRequest::Size(1)]);
    assert_eq!(h.wire.len(), before, "no =size before the count");
    assert!(h.host.sized.is_empty());
    // (The pipelined RETR is read once the count came.)
    h.mailbox_done(MailboxDone::Sized(Ok(wire_size(TWO))));
    assert_eq!(h.run(), Stop::NeedInput);
    let body_two = b"Subject: two\r\n\r\n.dot stays\r\nno final newline";
    assert_eq!(
        &h.wire[before..],
        [format!("={}\r\n", wire_size(TWO)).as_bytes(), body_two].concat()
    );
    h.send(b"ACKS\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(h.mailbox_requests[1], MailboxRequest::Size(2));
    // A count that failed: `=0`, and RETR refuses.
    h.mailbox_done(MailboxDone::Sized(Err(MailboxError::Temporary(
        "gone".into(),
    ))));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(h.wire_str().ends_with("=0\r\n"));
    h.auto_mailbox = true;
    assert_eq!(
        say(&mut h, "RETR"),
        "- no message to retrieve (send READ first)\r\n"
    );
    // Past the last message, or a deleted one: `=0` at once, nothing counted.
    assert_eq!(say(&mut h, "READ 9"), "=0\r\n");
    assert_eq!(h.mailbox_requests.len(), 2);
    assert!(h.host.sized.is_empty());
}

/// POP2's RETR of a message not in memory: read in (`MailboxRequest::Warm`) and sent byte for
/// byte as from a warm mailbox.
#[test]
fn a_message_not_in_memory_is_read_in_and_sent_the_same() {
    let run = |cold: Option<u64>| {
        let mut host = host();
        host.add_body("big", Body::Synthetic { len: 50_000 });
        host.cold_window = cold;
        let mut h = Harness::new(session(), host);
        assert_eq!(say(&mut h, "HELO bob bob-pw"), "#4\r\n");
        let mut wire = Vec::new();
        for cmd in ["READ 4", "RETR", "ACKS", "RETR", "ACKD"] {
            wire.extend(h.exchange(format!("{cmd}\r\n").as_bytes()));
        }
        (wire, h.host.warms)
    };
    let (warm, warms) = run(None);
    assert_eq!(warms, 0);
    let (cold, warms) = run(Some(8 * 1024));
    assert_eq!(
        String::from_utf8_lossy(&cold),
        String::from_utf8_lossy(&warm)
    );
    assert!(warms >= 7, "{warms}");
}
