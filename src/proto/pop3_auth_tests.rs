//! POP3 login tests: USER/PASS and AUTH PLAIN, the failure delay, the failure limit, the
//! throttle and the mailbox errors at login.

use std::time::Duration;

use super::tests::{harness, host, say, session};
use super::*;
use crate::proto::pop_testing::dialog::DELAY;
use crate::proto::pop_testing::{Harness, Stop};

#[test]
fn failed_login_waits_for_the_delay() {
    let mut h = harness();
    h.auto_wake = false;
    h.send(b"USER bob\r\nPASS wrong\r\n");
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    // The USER reply was flushed before the delay; the PASS reply waits for it.
    assert!(h.wire_str().ends_with("+OK send PASS\r\n"));
    // Stepped early (should not happen), the session says how much delay is left.
    h.now += Duration::from_millis(500);
    assert_eq!(h.run(), Stop::Sleep(DELAY - Duration::from_millis(500)));
    h.wake_after(DELAY);
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str()
            .ends_with("+OK send PASS\r\n-ERR [AUTH] Invalid user name or password\r\n")
    );
    assert_eq!(
        h.host.auth_calls,
        vec![("bob".to_string(), b"wrong".to_vec())]
    );
}

#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    let run = |user: &str| {
        let mut h = harness();
        h.send(format!("USER {user}\r\nPASS nope\r\n").as_bytes());
        h.run();
        (h.wire_str(), h.sleeps.clone())
    };
    assert_eq!(run("bob"), run("nosuchuser"));
    assert_eq!(run("bob").1, vec![DELAY]);
}

#[test]
fn third_failure_closes() {
    let mut h = harness();
    for i in 1..=3 {
        let r = say(&mut h, "USER bob");
        assert_eq!(r, "+OK send PASS\r\n");
        let r = say(&mut h, "PASS bad");
        assert_eq!(
            r, "-ERR [AUTH] Invalid user name or password\r\n",
            "attempt {i}"
        );
        assert_eq!(h.closed, i == 3, "attempt {i}");
    }
    assert_eq!(h.sleeps, vec![DELAY; 3]);
    // Failures by AUTH PLAIN count the same.
    let mut h = harness();
    say(&mut h, "AUTH PLAIN AGJvYgBiYWQ=");
    say(&mut h, "USER bob");
    say(&mut h, "PASS bad");
    assert!(!h.closed);
    assert_eq!(
        say(&mut h, "AUTH PLAIN AGJvYgBiYWQ="),
        "-ERR [AUTH] Invalid user name or password\r\n"
    );
    assert!(h.closed);
}

#[test]
fn in_use_is_answered_only_after_the_delay() {
    let mut h = harness();
    h.host.open_error = Some(MailboxError::InUse);
    h.auto_wake = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    assert!(!h.wire_str().contains("IN-USE"), "nothing before the delay");
    h.wake_after(DELAY);
    h.run();
    assert!(
        h.wire_str()
            .ends_with("-ERR [IN-USE] mailbox is in use by another session, try again later\r\n")
    );
    assert!(!h.closed, "the client may try again");
}

#[test]
fn too_many_attempts_is_refused_after_the_delay_with_its_own_reply_and_closed() {
    let mut h = harness();
    h.host.too_many_attempts = true;
    h.auto_wake = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    h.wake_after(DELAY);
    assert_eq!(h.run(), Stop::Close);
    assert!(
        h.wire_str()
            .ends_with("-ERR [SYS/TEMP] Too many logins from your address, try again later\r\n")
    );
    assert!(h.host.opened.is_empty());
}

#[test]
fn throttled_address_is_refused_after_the_delay_and_closed() {
    let mut h = harness();
    h.host.throttled = true;
    h.auto_wake = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    h.wake_after(DELAY);
    assert_eq!(h.run(), Stop::Close);
    assert!(h.wire_str().ends_with(
        "-ERR [SYS/TEMP] Too many failed logins from your address, try again later\r\n"
    ));
    assert!(h.host.opened.is_empty());
}

#[test]
fn mailbox_errors_at_login() {
    // [IN-USE] waits out the failure delay (a refusal answered at once lets a client loop
    // logins as fast as the reactor answers); the others are answered at once.
    let cases = [
        (
            MailboxError::InUse,
            "-ERR [IN-USE] mailbox is in use by another session, try again later\r\n",
            vec![DELAY],
        ),
        (
            MailboxError::Temporary("EIO".into()),
            "-ERR [SYS/TEMP] mailbox unavailable, try again later\r\n",
            vec![],
        ),
        (
            MailboxError::Permanent("gone".into()),
            "-ERR [SYS/PERM] mailbox unavailable\r\n",
            vec![],
        ),
    ];
    for (err, want, sleeps) in cases {
        let mut h = harness();
        h.host.open_error = Some(err);
        say(&mut h, "USER bob");
        assert_eq!(say(&mut h, "PASS bob-pw"), want);
        assert_eq!(h.sleeps, sleeps);
        assert!(!h.closed);
        // Still in AUTHORIZATION: a later attempt works.
        assert_eq!(say(&mut h, "STAT"), "-ERR not logged in\r\n");
        say(&mut h, "USER bob");
        assert_eq!(
            say(&mut h, "PASS bob-pw"),
            "+OK maildrop has 3 messages (100 octets)\r\n"
        );
    }
}

#[test]
fn password_is_the_rest_of_the_line() {
    let mut h = harness();
    say(&mut h, "USER carol");
    assert_eq!(
        say(&mut h, "PASS carol pw with spaces"),
        "+OK maildrop has 3 messages (100 octets)\r\n"
    );
}

#[test]
fn auth_plain_forms() {
    let b = base64_of;
    let ok = "+OK maildrop has 3 messages (100 octets)\r\n";
    // Initial response, with and without authzid.
    let mut h = harness();
    assert_eq!(
        say(&mut h, &format!("AUTH PLAIN {}", b(b"\0bob\0bob-pw"))),
        ok
    );
    let mut h = harness();
    assert_eq!(
        say(&mut h, &format!("auth plain {}", b(b"bob\0bob\0bob-pw"))),
        ok
    );
    // Continuation.
    let mut h = harness();
    assert_eq!(say(&mut h, "AUTH PLAIN"), "+ \r\n");
    assert_eq!(say(&mut h, &b(b"\0bob\0bob-pw")), ok);
    // Cancel.
    let mut h = harness();
    assert_eq!(say(&mut h, "AUTH PLAIN"), "+ \r\n");
    assert_eq!(say(&mut h, "*"), "-ERR authentication cancelled\r\n");
    assert_eq!(say(&mut h, "STAT"), "-ERR not logged in\r\n");
    // Bad base64 in the continuation; a proxy authzid.
    let mut h = harness();
    say(&mut h, "AUTH PLAIN");
    assert_eq!(
        say(&mut h, "not base64"),
        "-ERR invalid base64 in SASL response\r\n"
    );
    assert_eq!(
        say(&mut h, &format!("AUTH PLAIN {}", b(b"alice\0bob\0bob-pw"))),
        "-ERR authorization identity must be empty or the user name\r\n"
    );
    assert_eq!(
        say(&mut h, &format!("AUTH PLAIN {}", b(b"\0\0bob-pw"))),
        "-ERR malformed SASL PLAIN response\r\n"
    );
    assert!(h.host.auth_calls.is_empty());
    // Wrong password: the same delayed [AUTH] reply as PASS.
    let mut h = harness();
    assert_eq!(
        say(&mut h, &format!("AUTH PLAIN {}", b(b"\0bob\0nope"))),
        "-ERR [AUTH] Invalid user name or password\r\n"
    );
    assert_eq!(h.sleeps, vec![DELAY]);
}

#[test]
fn sasl_continuation_may_exceed_the_command_limit() {
    let long_pw = "p".repeat(600);
    let mut host = host();
    host.add_user("dave", &long_pw);
    let mut h = Harness::new(session(), host);
    let token = base64_of(format!("\0dave\0{long_pw}").as_bytes());
    assert!(token.len() > limits::POP_MAX_LINE);
    assert_eq!(say(&mut h, "AUTH PLAIN"), "+ \r\n");
    assert_eq!(
        say(&mut h, &token),
        "+OK maildrop has 3 messages (100 octets)\r\n"
    );
    // Beyond its own limit it is refused and the exchange ends, in sync.
    let mut h = harness();
    say(&mut h, "AUTH PLAIN");
    let too_long = "A".repeat(limits::POP_SASL_MAX_LINE);
    assert_eq!(say(&mut h, &too_long), "-ERR line too long\r\n");
    assert_eq!(say(&mut h, "STAT"), "-ERR not logged in\r\n");
    // The same length as a command line is too long.
    let mut h = harness();
    assert_eq!(
        say(&mut h, &format!("AUTH PLAIN {token}")),
        "-ERR line too long\r\n"
    );
}

/// Standard base64 with padding, for building test tokens.
fn base64_of(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn pass_awaits_the_check_and_resumes_with_its_verdict() {
    let mut h = harness();
    h.auto_verify = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\nSTAT\r\n");
    assert_eq!(h.run(), Stop::AwaitAuth);
    assert_eq!(
        h.auth_requests,
        vec![("bob".to_string(), b"bob-pw".to_vec())]
    );
    // Nothing answered and nothing more read while the check runs; no host call either.
    assert!(h.wire_str().ends_with("+OK send PASS\r\n"));
    assert_eq!(h.pending_input(), b"STAT\r\n".len());
    assert!(h.host.auth_calls.is_empty());
    assert!(
        !h.session.holds_nothing(),
        "not evictable while the check runs"
    );
    h.verify(AuthVerdict::Accepted("bob".into()));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str().ends_with(
            "+OK send PASS\r\n+OK maildrop has 3 messages (100 octets)\r\n+OK 3 100\r\n"
        )
    );
    assert_eq!(h.host.opened, vec!["bob".to_string()]);
}

#[test]
fn a_rejected_check_still_waits_for_the_failure_delay() {
    let mut h = harness();
    h.auto_verify = false;
    h.auto_wake = false;
    h.send(b"USER bob\r\nPASS nope\r\n");
    assert_eq!(h.run(), Stop::AwaitAuth);
    h.verify(AuthVerdict::Rejected);
    assert_eq!(h.run(), Stop::Sleep(DELAY));
    h.wake_after(DELAY);
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str()
            .ends_with("+OK send PASS\r\n-ERR [AUTH] Invalid user name or password\r\n")
    );
    // Throttled: the same delay, then [SYS/TEMP] and the close.
    let mut h = harness();
    h.auto_verify = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(h.run(), Stop::AwaitAuth);
    h.verify(AuthVerdict::Throttled);
    assert_eq!(h.run(), Stop::Close);
    assert_eq!(h.sleeps, vec![DELAY]);
    assert!(h.host.opened.is_empty());
}

#[test]
fn auth_plain_awaits_the_check_too() {
    let mut h = harness();
    h.auto_verify = false;
    h.send(format!("AUTH PLAIN {}\r\n", base64_of(b"\0bob\0bob-pw")).as_bytes());
    assert_eq!(h.run(), Stop::AwaitAuth);
    assert_eq!(
        h.auth_requests,
        vec![("bob".to_string(), b"bob-pw".to_vec())]
    );
    h.verify(AuthVerdict::Accepted("bob".into()));
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(
        h.wire_str().lines().last(),
        Some("+OK maildrop has 3 messages (100 octets)")
    );
    // The continuation form.
    let mut h = harness();
    h.auto_verify = false;
    h.send(b"AUTH PLAIN\r\n");
    assert_eq!(h.run(), Stop::NeedInput);
    h.send(format!("{}\r\n", base64_of(b"\0bob\0bob-pw")).as_bytes());
    assert_eq!(h.run(), Stop::AwaitAuth);
    h.verify(AuthVerdict::Rejected);
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(h.sleeps, vec![DELAY]);
}

#[test]
fn a_check_that_cannot_run_is_a_temporary_failure_not_counted() {
    let mut h = harness();
    h.host.check_unavailable = true;
    for _ in 0..limits::AUTH_MAX_FAILURES + 1 {
        say(&mut h, "USER bob");
        assert_eq!(
            say(&mut h, "PASS bob-pw"),
            "-ERR [SYS/TEMP] cannot check passwords now, try again later\r\n"
        );
    }
    assert!(h.sleeps.is_empty(), "no failure delay");
    assert!(!h.closed, "not counted as failures");
    h.host.check_unavailable = false;
    say(&mut h, "USER bob");
    assert_eq!(
        say(&mut h, "PASS bob-pw"),
        "+OK maildrop has 3 messages (100 octets)\r\n"
    );
}

#[test]
fn a_timeout_or_shutdown_while_checking_ignores_the_late_verdict() {
    for shutdown in [false, true] {
        let mut h = harness();
        h.auto_verify = false;
        h.send(b"USER bob\r\nPASS bob-pw\r\n");
        assert_eq!(h.run(), Stop::AwaitAuth);
        if shutdown {
            h.shutdown();
        } else {
            h.timeout();
        }
        let before = h.wire.len();
        h.verify(AuthVerdict::Accepted("bob".into()));
        assert_eq!(h.run(), Stop::Close);
        assert_eq!(h.wire.len(), before, "nothing after the goodbye");
        assert!(
            h.host.opened.is_empty(),
            "no mailbox locked for a gone session"
        );
    }
}

#[test]
fn the_login_is_answered_when_the_mailbox_is_open() {
    use crate::mail::{MailboxDone, MessageInfo};
    use crate::proto::MailboxRequest;
    let mut h = harness();
    h.auto_mailbox = false;
    // Pipelined: STAT waits behind the opening.
    h.send(b"USER bob\r\nPASS bob-pw\r\nSTAT\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(h.mailbox_requests, vec![MailboxRequest::Open("bob".into())]);
    assert!(h.wire_str().ends_with("+OK send PASS\r\n"), "no reply yet");
    assert_eq!(
        h.pending_input(),
        b"STAT\r\n".len(),
        "nothing read meanwhile"
    );
    h.mailbox_done(MailboxDone::Opened(Ok(vec![MessageInfo {
        uid: "1.a".into(),
        size: 7,
    }])));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str()
            .ends_with("+OK send PASS\r\n+OK maildrop has 1 messages (7 octets)\r\n+OK 1 7\r\n")
    );
    // An opening that fails leaves the session in AUTHORIZATION.
    let mut h = harness();
    h.auto_mailbox = false;
    h.send(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    h.mailbox_done(MailboxDone::Opened(Err(MailboxError::Temporary(
        "cannot list".into(),
    ))));
    assert_eq!(h.run(), Stop::NeedInput);
    assert!(
        h.wire_str()
            .ends_with("-ERR [SYS/TEMP] mailbox unavailable, try again later\r\n")
    );
    assert!(say(&mut h, "STAT").starts_with("-ERR"), "not logged in");
}

#[test]
fn quit_is_answered_when_the_deletions_are_done() {
    use crate::mail::MailboxDone;
    use crate::proto::MailboxRequest;
    let mut h = super::tests::logged_in();
    h.auto_mailbox = false;
    assert_eq!(say(&mut h, "DELE 1"), "+OK message 1 deleted\r\n");
    assert_eq!(say(&mut h, "DELE 3"), "+OK message 3 deleted\r\n");
    let before = h.wire.len();
    h.send(b"QUIT\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    assert_eq!(
        h.mailbox_requests.last(),
        Some(&MailboxRequest::Update(vec![0, 2]))
    );
    assert_eq!(
        h.wire.len(),
        before,
        "nothing said before the deletions end"
    );
    h.mailbox_done(MailboxDone::Updated(Ok(())));
    assert_eq!(h.run(), Stop::Close);
    assert!(
        h.wire_str()
            .ends_with("+OK postling POP3 server signing off (2 deleted, 1 left)\r\n")
    );
    // Deletions that failed part-way: the client is told some are still there.
    let mut h = super::tests::logged_in();
    h.auto_mailbox = false;
    say(&mut h, "DELE 2");
    h.send(b"QUIT\r\n");
    assert_eq!(h.run(), Stop::AwaitMailbox);
    h.mailbox_done(MailboxDone::Updated(Err(MailboxError::Temporary(
        "1 of 1 marked messages not removed".into(),
    ))));
    assert_eq!(h.run(), Stop::Close);
    assert!(
        h.wire_str()
            .ends_with("-ERR [SYS/TEMP] some deleted messages were not removed\r\n")
    );
}
