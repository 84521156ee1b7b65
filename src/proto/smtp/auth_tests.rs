//! Submission (RFC 6409) and SMTP AUTH (RFC 4954) dialogs, each checked whole and split at
//! every byte boundary: replies, host calls (password checks, delays) and stored bytes must not
//! depend on how the input arrives.

use super::tests::*;
use super::*;
use crate::proto::AuthVerdict;

const PLAIN_OK: &str = "AGFsaWNlAHNlY3JldA=="; // \0alice\0secret
const PLAIN_BAD: &str = "AGFsaWNlAHdyb25n"; // \0alice\0wrong

/// A submission session for a non-loopback client; `clear`: a login without TLS is allowed.
fn submission(clear: bool) -> SmtpSession {
    SmtpSession::new(settings_with_tls(), peer()).with_submission(clear)
}

fn port25(relay_client: bool) -> SmtpSession {
    SmtpSession::new(settings_with_tls(), peer()).with_relay_client(relay_client)
}

fn run(make: &dyn Fn() -> SmtpSession, host: &dyn Fn() -> FakeHost, input: &str) -> Driver {
    let mut d = Driver::with_session(host(), make());
    d.send(input.as_bytes());
    d
}

/// Runs `input` whole, byte by byte and split at every boundary; all must agree. Returns the
/// whole run.
#[track_caller]
fn dialog_with(
    make: &dyn Fn() -> SmtpSession,
    host: &dyn Fn() -> FakeHost,
    input: &str,
    replies: &[&str],
) -> Driver {
    let whole = run(make, host, input);
    assert_eq!(whole.replies(), replies, "input: {input:?}");
    let bytes = input.as_bytes();
    let mut d = Driver::with_session(host(), make());
    d.send_chunked(bytes, 1);
    assert_eq!(d.replies(), replies, "byte by byte");
    assert_eq!(d.host.calls, whole.host.calls, "byte by byte");
    for k in 1..bytes.len() {
        let mut d = Driver::with_session(host(), make());
        d.send(&bytes[..k]);
        d.send(&bytes[k..]);
        assert_eq!(d.replies(), replies, "split at {k}");
        assert_eq!(d.host.calls, whole.host.calls, "split at {k}");
        assert_eq!(d.closed, whole.closed, "split at {k}");
    }
    whole
}

#[track_caller]
fn dialog(make: &dyn Fn() -> SmtpSession, input: &str, replies: &[&str]) -> Driver {
    dialog_with(make, &FakeHost::new, input, replies)
}

const EHLO_SUBMISSION: [&str; 8] = [
    "250-mail.example.test",
    "250-STARTTLS",
    "250-AUTH PLAIN LOGIN",
    "250-PIPELINING",
    "250-SIZE 10000",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250 SMTPUTF8",
];

fn with_ehlo<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    EHLO_SUBMISSION
        .iter()
        .copied()
        .chain(rest.iter().copied())
        .collect()
}

#[test]
fn plain_with_initial_response_then_relay_and_submitted_headers() {
    let host = || FakeHost::new().verdict("bob@elsewhere.org", RcptVerdict::RelayDenied);
    let input = format!(
        "EHLO c.example.org\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test>\r\n\
         RCPT TO:<bob@elsewhere.org>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    );
    let d = dialog_with(
        &|| submission(true),
        &host,
        &input,
        &with_ehlo(&[
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok: queued as Q1",
            "221 2.0.0 Bye",
        ]),
    );
    assert_eq!(d.session.auth_user(), Some("alice"));
    let stored = String::from_utf8(d.host.appended()).unwrap();
    assert!(stored.contains(" with ESMTPA id Q1"), "{stored}");
    let date = crate::date::rfc5322_date(arrival());
    assert!(
        stored.ends_with(&format!(
            "Subject: hi\r\nDate: {date}\r\nMessage-ID: <Q1.000000000000feed@{HOST}>\r\n\r\nbody\r\n"
        )),
        "{stored}"
    );
    assert_eq!(
        d.host.envelopes()[0].recipients,
        vec!["bob@elsewhere.org".to_string()]
    );
}

#[test]
fn existing_date_and_message_id_are_kept_and_tls_says_esmtpsa() {
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test>\r\n\
         RCPT TO:<bob@example.test>\r\nDATA\r\nDATE: x\r\nmessage-id : <m@x>\r\n\r\nb\r\n.\r\n"
    );
    let mut d = Driver::with_session(FakeHost::new(), submission(false));
    d.send(b"EHLO c\r\nSTARTTLS\r\n");
    d.send(input.as_bytes());
    let r = d.replies();
    assert!(
        r.contains(&"235 2.7.0 Authentication successful".to_string()),
        "{r:?}"
    );
    assert_eq!(r.last().unwrap(), "250 2.0.0 Ok: queued as Q1");
    let stored = String::from_utf8(d.host.appended()).unwrap();
    assert!(
        stored.contains(" with ESMTPSA (version=TLSv1.3"),
        "{stored}"
    );
    assert!(
        stored.ends_with("DATE: x\r\nmessage-id : <m@x>\r\n\r\nb\r\n"),
        "{stored}"
    );
}

#[test]
fn a_header_only_message_gets_the_fields_at_its_end() {
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test>\r\n\
         RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: s\r\n date: folded\r\n.\r\n"
    );
    let d = dialog(
        &|| submission(true),
        &input,
        &with_ehlo(&[
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok: queued as Q1",
        ]),
    );
    let stored = String::from_utf8(d.host.appended()).unwrap();
    let date = crate::date::rfc5322_date(arrival());
    assert!(
        stored.ends_with(&format!(
            "Subject: s\r\n date: folded\r\nDate: {date}\r\n\
             Message-ID: <Q1.000000000000feed@mail.example.test>\r\n"
        )),
        "{stored}"
    );
}

#[test]
fn port_25_mail_gets_no_added_fields() {
    let d = script(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@y.org>\r\nDATA\r\nSubject: s\r\n\r\nb\r\n.\r\n",
    );
    let stored = String::from_utf8(d.host.appended()).unwrap();
    assert!(!stored.contains("Message-ID"), "{stored}");
    assert!(stored.contains(" with ESMTP id"), "{stored}");
}

#[test]
fn plain_after_continuation_and_login_succeed() {
    dialog(
        &|| submission(true),
        &format!("EHLO c\r\nAUTH PLAIN\r\n{PLAIN_OK}\r\n"),
        &with_ehlo(&["334 ", "235 2.7.0 Authentication successful"]),
    );
    dialog(
        &|| submission(true),
        "EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nAUTH LOGIN\r\n",
        &with_ehlo(&[
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "235 2.7.0 Authentication successful",
            "503 5.5.1 Error: already authenticated",
        ]),
    );
    // LOGIN with the user name as initial response.
    dialog(
        &|| submission(true),
        "EHLO c\r\nAUTH login YWxpY2U=\r\nc2VjcmV0\r\n",
        &with_ehlo(&["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"]),
    );
}

#[test]
fn wrong_password_is_535_after_the_delay_and_the_third_closes() {
    let d = dialog(
        &|| submission(true),
        &format!(
            "EHLO c\r\nAUTH PLAIN {PLAIN_BAD}\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\nMAIL FROM:<alice@example.test>\r\nAUTH PLAIN {PLAIN_BAD}\r\nNOOP\r\n"
        ),
        &with_ehlo(&[
            "535 5.7.8 Authentication credentials invalid",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8 Authentication credentials invalid",
            "530 5.7.0 Authentication required",
            "535 5.7.8 Authentication credentials invalid",
        ]),
    );
    assert!(d.closed);
    assert_eq!(d.host.count(&Call::Slept), 3);
    assert_eq!(d.host.count(&Call::Auth("alice".into())), 3);
}

#[test]
fn throttled_and_unavailable_checks() {
    let throttled = || {
        let mut h = FakeHost::new();
        h.auth_override = Some(AuthVerdict::Throttled);
        h
    };
    let d = dialog_with(
        &|| submission(true),
        &throttled,
        &format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n"),
        &with_ehlo(&[
            "421 4.7.0 mail.example.test too many failed logins from your address, try again later",
        ]),
    );
    assert!(d.closed);
    assert_eq!(d.host.count(&Call::Slept), 1, "the same delay as a failure");
    // Over the attempt budget (right password or not): the same, with its own reason.
    let too_many = || {
        let mut h = FakeHost::new();
        h.auth_override = Some(AuthVerdict::TooManyAttempts);
        h
    };
    let d = dialog_with(
        &|| submission(true),
        &too_many,
        &format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n"),
        &with_ehlo(&[
            "421 4.7.0 mail.example.test too many logins from your address, try again later",
        ]),
    );
    assert!(d.closed);
    assert_eq!(d.host.count(&Call::Slept), 1, "the same delay as a failure");
    let unavailable = || {
        let mut h = FakeHost::new();
        h.auth_override = Some(AuthVerdict::Unavailable);
        h
    };
    dialog_with(
        &|| submission(true),
        &unavailable,
        &format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nNOOP\r\n"),
        &with_ehlo(&["454 4.7.0 Temporary authentication failure", "250 2.0.0 Ok"]),
    );
}

#[test]
fn cancel_bad_base64_and_bad_forms() {
    let d = dialog(
        &|| submission(true),
        "EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nYWxpY2U=\r\n*\r\n\
         AUTH PLAIN !!!!\r\nAUTH PLAIN\r\nAGFsaWNl\r\nAUTH LOGIN YWxpY2U\r\nAUTH CRAM-MD5\r\nAUTH\r\n",
        &with_ehlo(&[
            "334 ",
            "501 5.0.0 Authentication cancelled",
            "334 VXNlcm5hbWU6",
            "501 5.0.0 Authentication cancelled",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "501 5.0.0 Authentication cancelled",
            "501 5.5.2 Cannot decode response (invalid base64)",
            "334 ",
            "501 5.5.2 Malformed SASL PLAIN response",
            "501 5.5.2 Cannot decode response (invalid base64)",
            "504 5.5.4 Unrecognized authentication type",
            "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
        ]),
    );
    assert!(
        d.host.calls.is_empty(),
        "nothing checked: {:?}",
        d.host.calls
    );
}

#[test]
fn an_over_long_response_line_ends_the_exchange() {
    let long = "A".repeat(limits::SMTP_SASL_MAX_LINE + 10);
    dialog(
        &|| submission(true),
        &format!("EHLO c\r\nAUTH PLAIN\r\n{long}\r\nNOOP\r\n"),
        &with_ehlo(&[
            "334 ",
            "500 5.5.6 Authentication exchange line is too long",
            "250 2.0.0 Ok",
        ]),
    );
}

#[test]
fn without_tls_auth_is_538_and_not_offered() {
    let d = dialog(
        &|| submission(false),
        &format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test>\r\n"),
        &[
            "250-mail.example.test",
            "250-STARTTLS",
            "250-PIPELINING",
            "250-SIZE 10000",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250 SMTPUTF8",
            "538 5.7.11 Encryption required for requested authentication mechanism",
            "530 5.7.0 Authentication required",
        ],
    );
    assert!(d.host.calls.is_empty());
    // After STARTTLS the same client may log in.
    let mut d = Driver::with_session(FakeHost::new(), submission(false));
    d.send(b"EHLO c\r\nSTARTTLS\r\n");
    d.send(format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n").as_bytes());
    let r = d.replies();
    assert!(r.contains(&"250-AUTH PLAIN LOGIN".to_string()), "{r:?}");
    assert_eq!(r.last().unwrap(), "235 2.7.0 Authentication successful");
}

/// RFC 3207 §4.2: STARTTLS forgets what came before it, a clear-text login included.
#[test]
fn starttls_forgets_a_login_made_in_the_clear() {
    let mut d = Driver::with_session(FakeHost::new(), submission(true));
    d.send(format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nSTARTTLS\r\n").as_bytes());
    assert_eq!(d.session.auth_user(), None);
    d.send(b"EHLO c\r\nMAIL FROM:<alice@example.test>\r\n");
    let r = d.replies();
    assert!(
        r.contains(&"235 2.7.0 Authentication successful".to_string()),
        "{r:?}"
    );
    assert!(r.contains(&"250-AUTH PLAIN LOGIN".to_string()), "{r:?}");
    assert_eq!(r.last().unwrap(), "530 5.7.0 Authentication required");
}

#[test]
fn sequence_errors() {
    dialog(
        &|| submission(true),
        &format!(
            "AUTH PLAIN {PLAIN_OK}\r\nHELO c\r\nAUTH PLAIN {PLAIN_OK}\r\nEHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\n\
             MAIL FROM:<alice@example.test>\r\nAUTH PLAIN {PLAIN_OK}\r\n"
        ),
        &[
            "503 5.5.1 Error: send EHLO first",
            "250 mail.example.test",
            "503 5.5.1 Error: send EHLO first",
            EHLO_SUBMISSION[0],
            EHLO_SUBMISSION[1],
            EHLO_SUBMISSION[2],
            EHLO_SUBMISSION[3],
            EHLO_SUBMISSION[4],
            EHLO_SUBMISSION[5],
            EHLO_SUBMISSION[6],
            EHLO_SUBMISSION[7],
            "235 2.7.0 Authentication successful",
            "250 2.1.0 Ok",
            "503 5.5.1 Error: already authenticated",
        ][..],
    )
    .replies()
    .len();
}

#[test]
fn auth_inside_a_transaction_is_503() {
    // A relay_networks client on port 25 has a transaction without AUTH; a submission
    // session cannot, so the check is made on the transaction itself.
    let mut d = Driver::with_session(FakeHost::new(), submission(true));
    d.send(
        format!("EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<alice@example.test>\r\n").as_bytes(),
    );
    d.session.auth.as_mut().unwrap().user = None;
    d.send(format!("AUTH PLAIN {PLAIN_OK}\r\n").as_bytes());
    assert_eq!(
        d.replies().last().unwrap(),
        "503 5.5.1 Error: AUTH not allowed in a mail transaction"
    );
}

#[test]
fn sender_must_be_the_users_own_and_not_null() {
    dialog(
        &|| submission(true),
        &format!(
            "EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<bob@example.test>\r\nMAIL FROM:<>\r\n\
             MAIL FROM:<alice@example.test>\r\n"
        ),
        &with_ehlo(&[
            "235 2.7.0 Authentication successful",
            "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice",
            "553 5.7.1 Sender address rejected: the null sender is not accepted on submission",
            "250 2.1.0 Ok",
        ]),
    );
}

#[test]
fn port_25_offers_no_auth_and_relays_only_for_relay_networks() {
    let host = || FakeHost::new().verdict("bob@elsewhere.org", RcptVerdict::RelayDenied);
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {PLAIN_OK}\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<bob@elsewhere.org>\r\n"
    );
    let d = dialog_with(
        &|| port25(false),
        &host,
        &input,
        &[
            "250-mail.example.test",
            "250-STARTTLS",
            "250-PIPELINING",
            "250-SIZE 10000",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250 SMTPUTF8",
            "502 5.5.1 Error: AUTH not available",
            "250 2.1.0 Ok",
            "550 5.7.1 <bob@elsewhere.org>: Relay access denied",
        ],
    );
    assert!(!d.host.calls.iter().any(|c| matches!(c, Call::Auth(_))));
    let d = run(&|| port25(true), &host, &input);
    assert_eq!(
        d.replies().last().unwrap(),
        "250 2.1.5 Ok",
        "a relay_networks client"
    );
    // An unauthenticated submission session never reaches RCPT.
    let d = run(
        &|| submission(true),
        &host,
        &input.replace(&format!("AUTH PLAIN {PLAIN_OK}\r\n"), ""),
    );
    let r = d.replies();
    assert_eq!(r[r.len() - 2], "530 5.7.0 Authentication required");
    assert_eq!(r[r.len() - 1], "503 5.5.1 Error: need MAIL command");
}
