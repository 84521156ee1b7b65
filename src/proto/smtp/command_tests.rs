//! Byte-script tables for every command and every command-level error path and limit.

use super::tests::*;
use super::*;

const EHLO_REPLY: [&str; 6] = [
    "250-mail.example.test",
    "250-PIPELINING",
    "250-SIZE 10000",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250 SMTPUTF8",
];

const MAIL_OK: &str = "250 2.1.0 Ok";
const RCPT_OK: &str = "250 2.1.5 Ok";
const OK: &str = "250 2.0.0 Ok";
const UNKNOWN_CMD: &str = "500 5.5.2 Error: command not recognized";
const TOO_MANY_ERRORS: &str = "421 4.7.0 mail.example.test too many errors";
const TOO_LONG: &str = "500 5.5.2 Error: line too long";

/// `n` copies of `line`.
fn times(line: &str, n: usize) -> String {
    line.repeat(n)
}

#[test]
fn ehlo_lists_the_extensions() {
    expect("EHLO client.example.org\r\n", &EHLO_REPLY);
    let mut d = Driver::with_settings(FakeHost::new(), settings(2048));
    d.send(b"EHLO c\r\n");
    assert!(d.replies().contains(&"250-SIZE 2048".to_owned()));
}

#[test]
fn helo_is_one_line() {
    expect("HELO client.example.org\r\n", &["250 mail.example.test"]);
}

#[test]
fn ehlo_and_helo_need_a_name() {
    expect(
        "EHLO\r\nHELO\r\nEHLO \r\nHELO a\tb\r\n",
        &[
            "501 5.5.2 Syntax: EHLO hostname",
            "501 5.5.2 Syntax: HELO hostname",
            "501 5.5.2 Syntax: EHLO hostname",
            "501 5.5.2 Syntax: HELO hostname",
        ],
    );
    let long = format!("EHLO {}\r\n", "h".repeat(limits::SMTP_MAX_HELO + 1));
    expect(&long, &["501 5.5.2 Syntax: EHLO hostname"]);
    let at_limit = format!("EHLO {}\r\n", "h".repeat(limits::SMTP_MAX_HELO));
    expect(&at_limit, &EHLO_REPLY);
    // Extra spaces before the name and words after it are tolerated.
    expect(
        "HELO   c.example.org extra words\r\n",
        &["250 mail.example.test"],
    );
}

#[test]
fn commands_are_case_insensitive() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([MAIL_OK, RCPT_OK, OK, OK, "221 2.0.0 Bye"]);
    let d = expect(
        "ehlo c\r\nmail from:<a@b.org>\r\nRcPt To:<x@example.test>\r\nrset\r\nNoOp\r\nquit\r\n",
        &want,
    );
    assert!(d.closed);
}

#[test]
fn ehlo_and_helo_reset_the_transaction() {
    let mut want = EHLO_REPLY.to_vec();
    want.push(MAIL_OK);
    want.extend(EHLO_REPLY);
    want.push("503 5.5.1 Error: need MAIL command");
    want.push("250 mail.example.test");
    want.push(MAIL_OK);
    expect(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nEHLO c\r\nRCPT TO:<x@y.org>\r\n\
         HELO c\r\nMAIL FROM:<a@b.org>\r\n",
        &want,
    );
}

#[test]
fn vrfy_never_reveals_users() {
    let host = FakeHost::new().verdict("nobody@example.test", RcptVerdict::UnknownUser);
    let d = script_with(host, "VRFY alice\r\nVRFY nobody@example.test\r\nVRFY\r\n");
    let v = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery";
    assert_eq!(d.replies(), [v, v, "501 5.5.4 Syntax: VRFY address"]);
    assert!(d.host.calls.is_empty(), "VRFY never asks the directory");
}

#[test]
fn expn_help_noop_rset_quit() {
    let d = expect(
        "EXPN team\r\nHELP\r\nHELP MAIL\r\nNOOP\r\nNOOP anything at all\r\nRSET\r\nRSET x\r\n\
         QUIT x\r\nQUIT\r\nNOOP\r\n",
        &[
            "502 5.5.1 EXPN not available",
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY",
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY",
            OK,
            OK,
            OK,
            "501 5.5.4 Syntax: RSET",
            "501 5.5.4 Syntax: QUIT",
            "221 2.0.0 Bye",
        ],
    );
    assert!(d.closed, "QUIT closes; what follows is never read");
}

#[test]
fn rset_clears_the_transaction() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        MAIL_OK,
        RCPT_OK,
        OK,
        "503 5.5.1 Error: need MAIL command",
        "503 5.5.1 Error: need MAIL command",
        MAIL_OK,
    ]);
    expect(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@y.org>\r\nRSET\r\nRCPT TO:<x@y.org>\r\n\
         DATA\r\nMAIL FROM:<a@b.org>\r\n",
        &want,
    );
}

#[test]
fn sequence_errors() {
    let host = FakeHost::new().verdict("nobody@example.test", RcptVerdict::UnknownUser);
    let d = script_with(
        host,
        "MAIL FROM:<a@b.org>\r\nRCPT TO:<x@y.org>\r\nDATA\r\nHELO c\r\nRCPT TO:<x@y.org>\r\n\
         DATA\r\nMAIL FROM:<a@b.org>\r\nDATA\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n\
         MAIL FROM:<c@d.org>\r\n",
    );
    assert_eq!(
        d.replies(),
        [
            "503 5.5.1 Error: send HELO/EHLO first",
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need MAIL command",
            "250 mail.example.test",
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need MAIL command",
            MAIL_OK,
            "503 5.5.1 Error: need RCPT command",
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
            "503 5.5.1 Error: need RCPT command",
            "503 5.5.1 Error: nested MAIL command",
        ]
    );
    assert!(d.host.envelopes().is_empty());
}

#[test]
fn unknown_commands_and_verbs_needing_a_space() {
    expect(
        "BOGUS\r\nMAILFROM:<a@b.org>\r\nEHLOc\r\nSTARTTLS\r\nAUTH PLAIN x\r\n\r\n \r\n",
        &[
            UNKNOWN_CMD,
            UNKNOWN_CMD,
            UNKNOWN_CMD,
            // Known but not offered here (no certificate; AUTH before submission): 502.
            "502 5.5.1 Error: STARTTLS not available",
            "502 5.5.1 Error: AUTH not available",
            UNKNOWN_CMD,
            UNKNOWN_CMD,
        ],
    );
}

#[test]
fn mail_syntax_errors() {
    // Two sessions: ten errors in one would spend the error budget.
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        "501 5.5.2 Syntax: MAIL FROM:<address>",
        "501 5.5.2 Syntax: MAIL FROM:<address>",
        "501 5.5.2 Syntax: MAIL FROM:<address>",
        "501 5.1.7 Bad sender address syntax: missing '>'",
        "501 5.1.7 Bad sender address syntax: bad domain",
        "501 5.1.7 Bad sender address syntax: invalid UTF-8",
        MAIL_OK,
    ]);
    let mut d = Driver::new(FakeHost::new());
    d.send(
        b"EHLO c\r\nMAIL\r\nMAIL FROM <a@b.org>\r\nMAIL TO:<a@b.org>\r\nMAIL FROM:<a@b.org\r\n\
          MAIL FROM:<a@b..org>\r\nMAIL FROM:<\xff@b.org>\r\nMAIL FROM:<a@b.org>\r\n",
    );
    assert_eq!(d.replies(), want);
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        "555 5.5.4 Unsupported parameter: RET",
        "501 5.5.4 SIZE must be a number of octets",
        "501 5.5.4 BODY given twice",
        "501 5.5.4 malformed parameter",
        "501 5.5.2 Syntax: MAIL FROM:<address>",
        MAIL_OK,
    ]);
    expect(
        "EHLO c\r\nMAIL FROM:<a@b.org> RET=HDRS\r\nMAIL FROM:<a@b.org> SIZE=x\r\n\
         MAIL FROM:<a@b.org> BODY=7BIT BODY=7BIT\r\nMAIL FROM:<a@b.org> =\r\n\
         MAIL FROM:<a@b.org>  SIZE=1\r\nMAIL FROM:<a@b.org>\r\n",
        &want,
    );
}

#[test]
fn mail_tolerances() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([MAIL_OK, OK, MAIL_OK, OK, MAIL_OK, OK, MAIL_OK]);
    expect(
        "EHLO c\r\nMAIL FROM: <a@b.org>\r\nRSET\r\nMAIL FROM:a@b.org\r\nRSET\r\n\
         MAIL FROM:<>\r\nRSET\r\nMAIL FROM:<a@b.org>  \r\n",
        &want,
    );
}

#[test]
fn parameters_need_ehlo() {
    expect(
        "HELO c\r\nMAIL FROM:<a@b.org> SIZE=10\r\nMAIL FROM:<a@b.org>\r\n",
        &[
            "250 mail.example.test",
            "555 5.5.4 Unsupported parameter: SIZE",
            MAIL_OK,
        ],
    );
}

#[test]
fn size_at_and_over_the_limit() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        "552 5.3.4 Message size exceeds fixed maximum message size",
        "552 5.3.4 Message size exceeds fixed maximum message size",
        MAIL_OK,
    ]);
    let d = expect(
        "EHLO c\r\nMAIL FROM:<a@b.org> SIZE=10001\r\n\
         MAIL FROM:<a@b.org> SIZE=99999999999999999999\r\nMAIL FROM:<a@b.org> SIZE=10000\r\n",
        &want,
    );
    assert_eq!(d.session.errors, 0, "a size refusal is not a client error");
}

#[test]
fn rcpt_verdicts() {
    let host = FakeHost::new()
        .verdict("nobody@example.test", RcptVerdict::UnknownUser)
        .verdict("x@elsewhere.org", RcptVerdict::RelayDenied)
        .verdict("slow@example.test", RcptVerdict::TempFail);
    let d = script_with(
        host,
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<alice@example.test>\r\n\
         RCPT TO:<nobody@example.test>\r\nRCPT TO:<x@elsewhere.org>\r\n\
         RCPT TO:<slow@example.test>\r\nRCPT TO:<@r1.org,@r2.org:bob@example.test>\r\n\
         RCPT TO:<postmaster>\r\nRCPT TO:<\"john doe\"@example.test>\r\nRCPT TO:carol@example.test\r\n\
         RCPT TO: <dave@example.test>\r\n",
    );
    assert_eq!(
        d.replies()[EHLO_REPLY.len()..],
        [
            MAIL_OK,
            RCPT_OK,
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
            "550 5.7.1 <x@elsewhere.org>: Relay access denied",
            "451 4.3.0 <slow@example.test>: Temporary lookup failure, try again later",
            RCPT_OK,
            RCPT_OK,
            RCPT_OK,
            RCPT_OK,
            RCPT_OK,
        ]
    );
    assert_eq!(
        d.host.verdict_calls(),
        [
            "alice@example.test",
            "nobody@example.test",
            "x@elsewhere.org",
            "slow@example.test",
            "bob@example.test",
            "postmaster",
            "\"john doe\"@example.test",
            "carol@example.test",
            "dave@example.test",
        ]
    );
    assert_eq!(
        d.session.rejected_rcpts, 2,
        "temporary failures are not rejections"
    );
}

#[test]
fn rcpt_syntax_errors() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        MAIL_OK,
        "501 5.5.2 Syntax: RCPT TO:<address>",
        "501 5.5.2 Syntax: RCPT TO:<address>",
        "501 5.1.3 Bad recipient address syntax: empty recipient",
        "501 5.1.3 Bad recipient address syntax: no domain (expected local@domain)",
        "501 5.1.3 Bad recipient address syntax: bad source route",
        "555 5.5.4 Unsupported parameter: NOTIFY",
        "501 5.1.3 Path too long",
    ]);
    let long = format!("RCPT TO:<{}@example.test>\r\n", "a".repeat(250));
    let d = expect(
        &format!(
            "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT\r\nRCPT FROM:<a@b.org>\r\nRCPT TO:<>\r\n\
             RCPT TO:<alice>\r\nRCPT TO:<@x.org user@d.org>\r\nRCPT TO:<a@b.org> NOTIFY=NEVER\r\n{long}"
        ),
        &want,
    );
    assert!(
        d.host.calls.is_empty(),
        "nothing malformed reaches the directory"
    );
}

#[test]
fn unsafe_local_parts_are_refused_by_the_session() {
    let mut want = EHLO_REPLY.to_vec();
    want.push(MAIL_OK);
    want.extend(["550 5.1.3 Recipient address rejected: local part not allowed"; 5]);
    let d = expect(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<../etc@example.test>\r\n\
         RCPT TO:<a/b@example.test>\r\nRCPT TO:<\"x/../y\"@example.test>\r\n\
         RCPT TO:<a\x01b@example.test>\r\nRCPT TO:<a\rb@example.test>\r\n",
        &want,
    );
    assert!(d.host.calls.is_empty(), "never passed to the host");
    assert_eq!(d.session.rejected_rcpts, 5);
    assert_eq!(d.session.errors, 0);
}

#[test]
fn smtputf8_addresses() {
    let mut want = EHLO_REPLY.to_vec();
    want.extend([
        "553 5.6.7 Non-ASCII sender address not permitted without SMTPUTF8",
        MAIL_OK,
        "553 5.6.7 Non-ASCII recipient address not permitted without SMTPUTF8",
        OK,
        MAIL_OK,
        RCPT_OK,
    ]);
    let d = expect(
        "EHLO c\r\nMAIL FROM:<jörg@exämple.org>\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<ü@example.test>\r\n\
         RSET\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<ü@example.test>\r\n",
        &want,
    );
    assert_eq!(d.host.verdict_calls(), ["ü@example.test"]);
}

#[test]
fn one_hundred_recipients_then_452() {
    let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b.org>\r\n");
    for i in 0..=limits::SMTP_MAX_RCPTS {
        input.push_str(&format!("RCPT TO:<u{i}@example.test>\r\n"));
    }
    input.push_str("RCPT TO:<u0@example.test>\r\nDATA\r\n.\r\n");
    let d = script(&input);
    let replies = d.replies();
    let rcpt_replies = &replies[EHLO_REPLY.len() + 1..];
    assert_eq!(rcpt_replies[..limits::SMTP_MAX_RCPTS], [RCPT_OK; 100]);
    assert_eq!(
        rcpt_replies[limits::SMTP_MAX_RCPTS..limits::SMTP_MAX_RCPTS + 2],
        [
            "452 4.5.3 Too many recipients",
            "452 4.5.3 Too many recipients"
        ]
    );
    assert_eq!(d.host.verdict_calls().len(), limits::SMTP_MAX_RCPTS);
    let env = &d.host.envelopes()[0];
    assert_eq!(env.recipients.len(), limits::SMTP_MAX_RCPTS);
    assert_eq!(env.recipients[99], "u99@example.test");
}

#[test]
fn duplicate_recipients_are_kept_once() {
    let d = script(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<x@example.test>\r\n\
         DATA\r\n.\r\n",
    );
    assert_eq!(d.replies()[EHLO_REPLY.len() + 2], RCPT_OK);
    assert_eq!(d.host.verdict_calls(), ["x@example.test"]);
    assert_eq!(d.host.envelopes()[0].recipients, ["x@example.test"]);
}

#[test]
fn command_line_of_512_octets_is_accepted_513_is_too_long() {
    let at_limit = format!("NOOP {}\r\n", "x".repeat(limits::SMTP_MAX_LINE - 7));
    assert_eq!(at_limit.len(), limits::SMTP_MAX_LINE);
    let over = format!("NOOP {}\r\n", "x".repeat(limits::SMTP_MAX_LINE - 6));
    assert_eq!(over.len(), limits::SMTP_MAX_LINE + 1);
    expect(&format!("{at_limit}{over}NOOP\r\n"), &[OK, TOO_LONG, OK]);
    // A bare LF ends a command line too; its 512 octets include the LF.
    let lf_at_limit = format!("NOOP {}\n", "x".repeat(limits::SMTP_MAX_LINE - 6));
    let lf_over = format!("NOOP {}\n", "x".repeat(limits::SMTP_MAX_LINE - 5));
    expect(
        &format!("{lf_at_limit}{lf_over}NOOP\n"),
        &[OK, TOO_LONG, OK],
    );
}

#[test]
fn long_line_split_anyhow_stays_in_sync_without_growing() {
    for len in [600, 2047, 2048, 2049, 5000, 20000] {
        let line = format!("NOOP {}\r\nNOOP\r\n", "y".repeat(len));
        for chunk in [1, 7, 100, 511, 512, 513, 2048, 4096, usize::MAX] {
            let mut d = Driver::new(FakeHost::new());
            d.send_chunked(line.as_bytes(), chunk);
            assert_eq!(d.replies(), [TOO_LONG, OK], "len {len} chunk {chunk}");
            assert!(
                d.max_buffered < limits::MAX_UNIT + chunk.min(limits::IN_BUF),
                "len {len} chunk {chunk}: held {}",
                d.max_buffered
            );
        }
    }
}

#[test]
fn long_line_then_pipelined_commands_in_one_read() {
    let input = format!("EHLO c\r\n{}\r\nMAIL FROM:<a@b.org>\r\n", "z".repeat(3000));
    let mut want = EHLO_REPLY.to_vec();
    want.extend([TOO_LONG, MAIL_OK]);
    expect(&input, &want);
}

#[test]
fn nul_in_a_command_is_an_error() {
    let d = expect(
        "NOOP a\0b\r\n\0\r\nEHLO \0\r\nNOOP\r\n",
        &[
            "500 5.5.2 Error: NUL character in command",
            "500 5.5.2 Error: NUL character in command",
            "500 5.5.2 Error: NUL character in command",
            OK,
        ],
    );
    assert_eq!(d.session.errors, 3);
}

#[test]
fn error_budget_ninth_answered_tenth_closes() {
    let d = expect(&times("BOGUS\r\n", 10), &{
        let mut v = vec![UNKNOWN_CMD; 9];
        v.push(TOO_MANY_ERRORS);
        v
    });
    assert!(d.closed);
    let d = expect(&times("BOGUS\r\n", 9), &[UNKNOWN_CMD; 9]);
    assert!(!d.closed);
}

#[test]
fn every_kind_of_error_counts_and_others_do_not() {
    let over = format!("NOOP {}\r\n", "x".repeat(600));
    let host = FakeHost::new().verdict("nobody@example.test", RcptVerdict::UnknownUser);
    let d = script_with(
        host,
        &format!(
            "MAIL FROM:<a@b.org>\r\nBOGUS\r\nEHLO c\r\nRCPT TO:<x@y.org>\r\nMAIL FROM:x\r\n\
             MAIL FROM:<a@b.org> FOO=1\r\nMAIL FROM:<a@b.org> SIZE=q\r\n{over}NOOP \0\r\n\
             EXPN x\r\nMAIL FROM:<a@b.org> SIZE=99999\r\nMAIL FROM:<a@b.org>\r\n\
             RCPT TO:<nobody@example.test>\r\nRCPT TO:<../x@example.test>\r\nVRFY x\r\n\
             DATA x\r\nNOOP\r\n"
        ),
    );
    let replies = d.replies();
    assert_eq!(
        replies[replies.len() - 8..],
        [
            "502 5.5.1 EXPN not available",
            "552 5.3.4 Message size exceeds fixed maximum message size",
            MAIL_OK,
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown",
            "550 5.1.3 Recipient address rejected: local part not allowed",
            "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery",
            "501 5.5.4 Syntax: DATA",
            OK,
        ]
    );
    // Counted: 503, 500, 503, 501, 555, 501, 500 (too long), 500 (NUL), 501 (DATA x).
    assert_eq!(d.session.errors, 9);
    assert!(!d.closed);
    let mut d = d;
    d.send(b"BOGUS\r\n");
    assert_eq!(
        d.replies().last().map(String::as_str),
        Some(TOO_MANY_ERRORS)
    );
    assert!(d.closed);
}

#[test]
fn twenty_rejections_answered_twenty_first_closes() {
    let mut host = FakeHost::new();
    for i in 0..30 {
        host = host.verdict(&format!("n{i}@example.test"), RcptVerdict::UnknownUser);
    }
    let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b.org>\r\n");
    // Rejections of every kind count: unknown user, relay, unsafe local part.
    host = host.verdict("r@elsewhere.org", RcptVerdict::RelayDenied);
    input.push_str("RCPT TO:<r@elsewhere.org>\r\nRCPT TO:<a/b@example.test>\r\n");
    for i in 0..18 {
        input.push_str(&format!("RCPT TO:<n{i}@example.test>\r\n"));
    }
    input.push_str("RCPT TO:<ok@example.test>\r\n");
    let mut d = Driver::new(host);
    d.send(input.as_bytes());
    assert!(!d.closed, "20 rejections are answered");
    assert_eq!(d.session.rejected_rcpts, 20);
    assert_eq!(d.replies().last().map(String::as_str), Some(RCPT_OK));
    d.send(b"RCPT TO:<n20@example.test>\r\nNOOP\r\n");
    assert!(d.closed);
    assert_eq!(
        d.replies().last().map(String::as_str),
        Some("421 4.7.0 mail.example.test too many rejected recipients")
    );
}

const OVER_CLIENT_BUDGET: &str =
    "421 4.7.0 mail.example.test too many rejected recipients from your address, try again later";

/// Issue 10 item 8: a harvester reconnecting after each 20 refusals used to get a fresh budget
/// with every connection.
#[test]
fn rejected_recipient_budget_spans_sessions_from_one_address() {
    let per_session = limits::SMTP_MAX_REJECTED_RCPTS;
    let sessions = limits::SMTP_REJECTED_RCPTS_PER_CLIENT / per_session;
    let mut host = FakeHost::new();
    for i in 0..sessions * per_session {
        host = host.verdict(&format!("n{i}@example.test"), RcptVerdict::UnknownUser);
    }
    let mut probe = 0;
    for _ in 0..sessions {
        let mut d = Driver::new(host);
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.org>\r\n");
        for _ in 0..per_session {
            d.send(format!("RCPT TO:<n{probe}@example.test>\r\n").as_bytes());
            probe += 1;
        }
        let replies = d.replies();
        let refused = replies
            .iter()
            .filter(|r| r.starts_with("550 5.1.1"))
            .count();
        assert_eq!(refused as u32, per_session, "{replies:?}");
        assert!(!d.closed);
        host = d.host;
    }
    // The next connection from that address is refused at once, without a 220.
    let mut d = Driver::new(host);
    assert_eq!(
        String::from_utf8_lossy(&d.written),
        format!("{OVER_CLIENT_BUDGET}\r\n")
    );
    d.send(b"EHLO c\r\n");
    assert!(d.closed);
    assert_eq!(
        d.written.len(),
        OVER_CLIENT_BUDGET.len() + 2,
        "nothing after the 421"
    );
}

/// A session opened before its address ran out of budget gets no verdict after that, for a
/// known recipient neither: 250 against 421 would go on telling who exists.
#[test]
fn over_the_address_budget_no_recipient_gets_a_verdict() {
    let mut d = Driver::new(FakeHost::new());
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<alice@example.test>\r\n");
    assert_eq!(d.replies().last().map(String::as_str), Some(RCPT_OK));
    // Other connections from the same address spend the budget meanwhile.
    for _ in 0..limits::SMTP_REJECTED_RCPTS_PER_CLIENT {
        d.host.rcpt_budget.refused(peer().ip(), d.host.now);
    }
    let verdicts = d.host.verdict_calls().len();
    d.send(b"RCPT TO:<bob@example.test>\r\nNOOP\r\n");
    assert_eq!(
        d.replies().last().map(String::as_str),
        Some(OVER_CLIENT_BUDGET)
    );
    assert!(d.closed);
    assert_eq!(d.host.verdict_calls().len(), verdicts, "no verdict asked");
}

/// Every kind of refused recipient counts against the address, and accepted ones do not.
#[test]
fn refused_recipients_of_every_kind_count_against_the_address() {
    let host = FakeHost::new()
        .verdict("n@example.test", RcptVerdict::UnknownUser)
        .verdict("r@elsewhere.org", RcptVerdict::RelayDenied);
    let mut d = Driver::new(host);
    d.send(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<n@example.test>\r\nRCPT TO:<r@elsewhere.org>\r\n\
         RCPT TO:<a/b@example.test>\r\nRCPT TO:<j\u{f6}rg@example.test>\r\nRCPT TO:<ok@example.test>\r\n"
            .as_bytes(),
    );
    assert_eq!(d.session.rejected_rcpts, 4);
    // The address's budget holds exactly those four: 95 more stay within it, one more not.
    for _ in 0..limits::SMTP_REJECTED_RCPTS_PER_CLIENT - 5 {
        d.host.rcpt_budget.refused(peer().ip(), d.host.now);
    }
    assert!(!d.host.rcpt_budget.over(peer().ip(), d.host.now));
    d.host.rcpt_budget.refused(peer().ip(), d.host.now);
    assert!(d.host.rcpt_budget.over(peer().ip(), d.host.now));
}

#[test]
fn http_requests_are_dropped_without_a_reply() {
    for first in [
        "GET / HTTP/1.1",
        "POST /form HTTP/1.0",
        "HEAD / HTTP/1.1",
        "PUT /x HTTP/1.1",
        "CONNECT mail.example.test:25 HTTP/1.1",
        "OPTIONS * HTTP/1.1",
        "DELETE /x HTTP/1.1",
        "GET /",
        "FOO /bar HTTP/1.1",
    ] {
        let d = script(&format!("{first}\r\nHost: x\r\n\r\nEHLO c\r\n"));
        assert!(d.closed, "{first}");
        assert_eq!(d.replies(), Vec::<String>::new(), "{first}");
    }
    // Later in a session, too.
    let d = script("NOOP\r\nPOST / HTTP/1.1\r\nNOOP\r\n");
    assert_eq!(d.replies(), [OK]);
    assert!(d.closed);
    // A request line too long for a command is recognised before it is discarded.
    let d = script(&format!("GET /{} HTTP/1.1\r\nNOOP\r\n", "a".repeat(3000)));
    assert_eq!(d.replies(), Vec::<String>::new());
    assert!(d.closed);
    // Lower-case words are ordinary unknown commands.
    expect("get / x\r\n", &[UNKNOWN_CMD]);
}

#[test]
fn pipelined_batch_larger_than_the_output_buffer() {
    // Far more replies than the output buffer holds: NeedOutput, drain, continue, in order.
    let n = 3000;
    let mut d = Driver::new(FakeHost::new());
    d.send(times("NOOP\r\n", n).as_bytes());
    assert_eq!(d.replies(), vec![OK; n]);
}

#[test]
fn need_input_until_a_line_is_complete() {
    let mut s = SmtpSession::new(settings(MAX_SIZE), peer());
    let mut out: Box<OutBuf> = crate::buf::Buf::new_boxed();
    let mut host = FakeHost::new();
    assert_eq!(
        s.step(b"NOO", ctx(), &mut out, &mut host),
        Step::new(0, Next::NeedInput)
    );
    assert_eq!(
        s.step(b"NOOP\r", ctx(), &mut out, &mut host),
        Step::new(0, Next::NeedInput)
    );
    assert_eq!(
        s.step(b"NOOP\r\nNO", ctx(), &mut out, &mut host),
        Step::new(6, Next::NeedInput)
    );
    assert_eq!(out.bytes(), b"250 2.0.0 Ok\r\n");
    // 512 octets without an end: still just waiting (below MAX_UNIT).
    let partial = vec![b'x'; limits::SMTP_MAX_LINE + 10];
    assert_eq!(
        s.step(&partial, ctx(), &mut out, &mut host),
        Step::new(0, Next::NeedInput)
    );
    // MAX_UNIT octets without an end: consumed (discarded), never a stall.
    let full = vec![b'x'; limits::MAX_UNIT];
    assert_eq!(
        s.step(&full, ctx(), &mut out, &mut host),
        Step::new(limits::MAX_UNIT, Next::NeedInput)
    );
}

#[test]
fn step_stops_when_output_is_short() {
    let mut s = SmtpSession::new(settings(MAX_SIZE), peer());
    let mut out: Box<OutBuf> = crate::buf::Buf::new_boxed();
    let mut host = FakeHost::new();
    let filler = vec![b'.'; limits::OUT_BUF - limits::REPLY_RESERVE];
    out.push(&filler);
    let step = s.step(b"NOOP\r\nNOOP\r\n", ctx(), &mut out, &mut host);
    assert_eq!(step, Step::new(6, Next::NeedOutput));
}

// ---- STARTTLS (RFC 3207) --------------------------------------------------------------------

#[test]
fn starttls_is_offered_only_with_a_certificate_and_before_tls() {
    let mut d = Driver::with_settings(FakeHost::new(), settings_with_tls());
    d.send(b"EHLO c\r\n");
    assert_eq!(d.replies()[1], "250-STARTTLS");
    d.send(b"STARTTLS\r\n");
    d.send(b"EHLO c\r\n");
    let replies = d.replies();
    assert_eq!(
        replies[EHLO_REPLY.len() + 1],
        "220 2.0.0 Ready to start TLS"
    );
    assert_eq!(&replies[EHLO_REPLY.len() + 2..], &EHLO_REPLY[..]);
    // Without a certificate: a known command that is not offered.
    expect("EHLO c\r\n", &EHLO_REPLY);
    expect("STARTTLS\r\n", &["502 5.5.1 Error: STARTTLS not available"]);
    expect("AUTH PLAIN\r\n", &["502 5.5.1 Error: AUTH not available"]);
}

#[test]
fn starttls_drops_what_was_pipelined_after_it_and_forgets_the_session() {
    let mut d = Driver::with_settings(FakeHost::new(), settings_with_tls());
    d.send(b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<a@x.example>\r\n");
    assert_eq!(
        d.discarded_at_starttls,
        b"RSET\r\nMAIL FROM:<a@x.example>\r\n"
    );
    let replies = d.replies();
    assert_eq!(replies.last().unwrap(), "220 2.0.0 Ready to start TLS");
    // EHLO is forgotten: MAIL needs a new one.
    d.send(b"MAIL FROM:<a@x.example>\r\n");
    assert_eq!(
        d.replies().last().unwrap(),
        "503 5.5.1 Error: send HELO/EHLO first"
    );
}

#[test]
fn starttls_refusals() {
    let mut d = Driver::with_settings(FakeHost::new(), settings_with_tls());
    d.send(b"EHLO c\r\nSTARTTLS now\r\nMAIL FROM:<a@x.example>\r\nSTARTTLS\r\nRSET\r\n");
    let replies = d.replies();
    assert!(
        replies.contains(&"501 5.5.4 Syntax: STARTTLS".to_owned()),
        "{replies:?}"
    );
    assert!(
        replies.contains(&"503 5.5.1 Error: STARTTLS not allowed in a mail transaction".to_owned()),
        "{replies:?}"
    );
    d.send(b"STARTTLS\r\nEHLO c\r\nSTARTTLS\r\n");
    let replies = d.replies();
    assert_eq!(replies.last().unwrap(), "220 2.0.0 Ready to start TLS");
    // Inside TLS: 503.
    d.send(b"EHLO c\r\nSTARTTLS\r\n");
    assert_eq!(
        d.replies().last().unwrap(),
        "503 5.5.1 Error: TLS already active"
    );
}
