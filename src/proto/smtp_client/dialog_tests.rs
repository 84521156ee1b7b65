//! Whole dialogs against scripted servers: each script is played whole, split at every byte
//! boundary and one byte at a time (see `tests::check`), and the commands written and the
//! verdict on every recipient must come out the same.

use super::tests::*;
use super::*;

fn s(parts: &[&str]) -> String {
    parts.concat()
}

const EHLO_BASIC: &str = "250-mx.example.net\r\n250 8BITMIME\r\n";
const EHLO_PIPE: &str =
    "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n";
const DELIVERED: &str = "delivered: end of data: 250 2.0.0 queued as X";

#[test]
fn happy_path_without_pipelining() {
    let server = s(&[
        GREETING,
        EHLO_BASIC,
        "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n",
        "250 2.0.0 queued as X\r\n221 2.0.0 bye\r\n",
    ]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    assert_eq!(
        d.text(),
        s(&[
            EHLO,
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\n",
            "DATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        ])
    );
    assert_eq!(d.summary(), [[DELIVERED, DELIVERED]]);
    assert!(d.closed);
}

/// Without PIPELINING each command waits for the reply to the one before (RFC 5321 §4.1).
#[test]
fn without_pipelining_one_command_per_reply() {
    let mut d = Driver::new(
        plain(),
        msg(&["b@example.net", "c@example.net"]),
        BODY,
        false,
    );
    d.play(&[GREETING.as_bytes(), EHLO_BASIC.as_bytes()], Cut::Whole);
    assert!(
        d.text().ends_with("MAIL FROM:<a@example.org>\r\n"),
        "{}",
        d.text()
    );
    d.send(b"250 ok\r\n");
    assert!(d.text().ends_with("\r\nRCPT TO:<b@example.net>\r\n"));
    d.send(b"250 ok\r\n");
    assert!(d.text().ends_with("\r\nRCPT TO:<c@example.net>\r\n"));
    d.send(b"250 ok\r\n");
    assert!(d.text().ends_with("\r\nDATA\r\n"));
}

#[test]
fn happy_path_with_pipelining() {
    let mut d = Driver::new(
        plain(),
        msg(&["b@example.net", "c@example.net"]),
        BODY,
        false,
    );
    d.play(&[GREETING.as_bytes(), EHLO_PIPE.as_bytes()], Cut::Whole);
    // RFC 2920: MAIL, every RCPT and DATA in one batch, before any reply.
    assert_eq!(
        d.text(),
        s(&[
            EHLO,
            "MAIL FROM:<a@example.org> SIZE=21\r\nRCPT TO:<b@example.net>\r\n",
            "RCPT TO:<c@example.net>\r\nDATA\r\n"
        ])
    );
    let replies = "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as X\r\n221 bye\r\n";
    let server = s(&[GREETING, EHLO_PIPE, replies]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    assert!(
        d.text()
            .ends_with("DATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    );
    assert_eq!(d.summary(), [[DELIVERED, DELIVERED]]);
}

/// A server that does not know EHLO (5xx) gets HELO, and no ESMTP parameters.
#[test]
fn helo_fallback() {
    let server = s(&[
        GREETING,
        "502 5.5.2 what?\r\n250 mx.example.net\r\n",
        "250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as X\r\n221 bye\r\n",
    ]);
    let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
    assert_eq!(
        d.text(),
        s(&[
            EHLO,
            "HELO client.example.test\r\nMAIL FROM:<a@example.org>\r\n",
            "RCPT TO:<b@example.net>\r\nDATA\r\nSubject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        ])
    );
    assert_eq!(d.summary(), [[DELIVERED]]);
}

#[test]
fn size_too_big_is_permanent() {
    let server = s(&[GREETING, "250-mx\r\n250 SIZE 10\r\n", "221 bye\r\n"]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    assert_eq!(
        d.text(),
        s(&[EHLO, "QUIT\r\n"]),
        "nothing sent that the server must refuse"
    );
    let why = "permanent: message size 21 exceeds the server's limit 10";
    assert_eq!(d.summary(), [[why, why]]);
}

#[test]
fn eight_bit_body_needs_8bitmime() {
    let make = || {
        let mut m = msg(&["b@example.net"]);
        m.body = BodyType::EightBitMime;
        Driver::new(plain(), m, "Subject: ü\r\n\r\n".as_bytes(), false)
    };
    let server = s(&[GREETING, "250-mx\r\n250 PIPELINING\r\n", "221 bye\r\n"]);
    let d = check(make, &[server.as_bytes()]);
    assert_eq!(d.text(), s(&[EHLO, "QUIT\r\n"]));
    assert_eq!(
        d.summary(),
        [["permanent: the message has 8-bit data but the server does not offer 8BITMIME"]]
    );
    // Offered: BODY=8BITMIME goes with MAIL.
    let server = s(&[
        GREETING,
        EHLO_BASIC,
        "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n",
    ]);
    let d = check(make, &[server.as_bytes()]);
    assert!(
        d.text()
            .contains("MAIL FROM:<a@example.org> BODY=8BITMIME\r\n")
    );
    assert!(d.text().contains("\r\nSubject: \u{fc}\r\n\r\n.\r\n"));
    assert_eq!(d.summary(), [["delivered: end of data: 250 ok"]]);
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let server = s(&[GREETING, EHLO_BASIC, "221 bye\r\n"]);
    let d = check_plain(&["jörg@example.net"], &[server.as_bytes()]);
    assert_eq!(d.text(), s(&[EHLO, "QUIT\r\n"]));
    assert_eq!(
        d.summary(),
        [[
            "permanent: the message needs SMTPUTF8 (UTF-8 addresses or headers) but the server \
           does not offer it"
        ]]
    );
    let ehlo = "250-mx\r\n250 SMTPUTF8\r\n";
    let server = s(&[
        GREETING,
        ehlo,
        "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n",
    ]);
    let d = check_plain(&["jörg@example.net"], &[server.as_bytes()]);
    assert!(
        d.text()
            .contains("MAIL FROM:<a@example.org> SMTPUTF8\r\nRCPT TO:<jörg@example.net>")
    );
}

#[test]
fn mixed_rcpt_outcomes_then_data_accepted() {
    let rcpts = ["ok@example.net", "busy@example.net", "gone@example.net"];
    let replies = "250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.1 busy\r\n550 5.1.1 no such user\r\n\
                   354 go\r\n250 2.0.0 queued as X\r\n221 bye\r\n";
    for ehlo in [EHLO_BASIC, EHLO_PIPE] {
        let server = s(&[GREETING, ehlo, replies]);
        let d = check_plain(&rcpts, &[server.as_bytes()]);
        assert_eq!(
            d.summary(),
            [[
                DELIVERED,
                "temporary: RCPT TO: 450 4.2.1 busy",
                "permanent: RCPT TO: 550 5.1.1 no such user"
            ]]
        );
    }
}

/// A 4xx or 5xx to the final dot applies to every recipient accepted at RCPT, only to them.
#[test]
fn final_reply_applies_to_accepted_recipients() {
    let rcpts = ["a@example.net", "b@example.net", "c@example.net"];
    for (code, kind) in [
        ("451 4.3.0 try later", "temporary"),
        ("554 5.6.0 spam", "permanent"),
    ] {
        let replies = format!(
            "250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n{code}\r\n221 bye\r\n"
        );
        let server = s(&[GREETING, EHLO_PIPE, &replies]);
        let d = check_plain(&rcpts, &[server.as_bytes()]);
        let data = format!("{kind}: end of data: {code}");
        assert_eq!(
            d.summary(),
            [[
                data.as_str(),
                "permanent: RCPT TO: 550 5.1.1 unknown",
                data.as_str()
            ]]
        );
    }
}

#[test]
fn all_recipients_refused() {
    // Without PIPELINING no DATA is sent.
    let server = s(&[GREETING, EHLO_BASIC, "250 ok\r\n550 no\r\n221 bye\r\n"]);
    let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
    assert_eq!(
        d.text(),
        s(&[
            EHLO,
            "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nQUIT\r\n"
        ])
    );
    assert_eq!(d.summary(), [["permanent: RCPT TO: 550 no"]]);
    // With it, DATA was already sent; its 554 ends the transaction. A server that says 354
    // anyway gets an empty message (RFC 2920 §3.1), whose verdict changes nothing.
    for data in ["554 5.5.1 no valid recipients\r\n", "354 go\r\n250 ok\r\n"] {
        let server = s(&[
            GREETING,
            EHLO_PIPE,
            "250 ok\r\n550 no\r\n",
            data,
            "221 bye\r\n",
        ]);
        let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
        let empty = if data.starts_with("354") { ".\r\n" } else { "" };
        assert!(
            d.text().ends_with(&format!("DATA\r\n{empty}QUIT\r\n")),
            "{}",
            d.text()
        );
        assert_eq!(d.summary(), [["permanent: RCPT TO: 550 no"]]);
    }
}

#[test]
fn mail_refused() {
    // 4xx at MAIL: everything defers; the pipelined RCPT and DATA replies are read and ignored.
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "451 4.3.0 later\r\n503 no\r\n503 no\r\n503 no\r\n221 bye\r\n",
    ]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    let why = "temporary: MAIL FROM: 451 4.3.0 later";
    assert_eq!(d.summary(), [[why, why]]);
    assert!(d.text().ends_with("DATA\r\nQUIT\r\n"));
    // 5xx at MAIL without pipelining: everything bounces, no RCPT is sent.
    let server = s(&[GREETING, EHLO_BASIC, "553 5.1.8 bad sender\r\n221 bye\r\n"]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    let why = "permanent: MAIL FROM: 553 5.1.8 bad sender";
    assert_eq!(d.summary(), [[why, why]]);
    assert_eq!(
        d.text(),
        s(&[EHLO, "MAIL FROM:<a@example.org>\r\nQUIT\r\n"])
    );
}

#[test]
fn greeting_refusals() {
    let d = check_plain(&["b@example.net"], &[b"554 5.7.1 go away\r\n221 bye\r\n"]);
    assert_eq!(d.text(), "QUIT\r\n");
    assert_eq!(d.summary(), [["permanent: greeting: 554 5.7.1 go away"]]);
    // 421: the server is closing; no QUIT.
    let d = check_plain(&["b@example.net"], &[b"421 4.3.2 busy\r\n"]);
    assert_eq!(d.text(), "");
    assert!(d.closed);
    assert_eq!(d.summary(), [["temporary: greeting: 421 4.3.2 busy"]]);
}

#[test]
fn multi_line_replies() {
    let server = s(&[
        "220-mx.example.net ESMTP\r\n220-no UCE\r\n220 welcome\r\n",
        "250-mx.example.net hello\r\n250-PIPELINING\r\n250-SIZE\r\n250 HELP\r\n",
        "250 ok\r\n550-5.1.1 the user\r\n550-5.1.1 does not\r\n550 5.1.1 exist\r\n221 bye\r\n",
    ]);
    let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
    assert!(d.text().contains("MAIL FROM:<a@example.org> SIZE=21\r\n"));
    assert_eq!(
        d.summary(),
        [["permanent: RCPT TO: 550 5.1.1 the user does not exist"]]
    );
    match &d.outcomes[0][0] {
        Outcome::Permanent(Detail { reply: Some(r), .. }) => {
            assert_eq!((r.code, r.text.as_str()), (550, "the user does not exist"));
            assert_eq!(
                r.enhanced.map(|e| (e.class, e.subject, e.detail)),
                Some((5, 1, 1))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Anything that is not a well-formed reply ends the session: every open recipient defers.
#[test]
fn malformed_replies_are_protocol_errors() {
    for (server, why) in [
        ("hello there\r\n", "a reply line without a valid reply code"),
        ("220 mx\n", "a reply line ended in a bare LF"),
        ("220-mx\r\n250 mx\r\n", "reply code 250 inside a 220 reply"),
        (
            "220 mx\r\n250-mx\r\n250_PIPELINING\r\n",
            "a reply code followed by neither SP nor '-'",
        ),
        (
            "220 mx\r\n354 what\r\n",
            "unexpected reply to EHLO: 354 what",
        ),
        (
            "220 mx\r\n250 mx\r\n250 ok\r\n250 ok\r\n250 ok\r\n",
            "unexpected reply to DATA: 250 ok",
        ),
    ] {
        let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
        assert!(d.closed, "{server:?}");
        assert_eq!(
            d.summary(),
            [[format!("temporary: protocol error: {why}")]],
            "{server:?}"
        );
        assert!(
            !d.text().ends_with("QUIT\r\n"),
            "no QUIT to a server that is not talking SMTP"
        );
    }
}

/// A reply of any length is consumed in bounded memory; the record keeps a cut text.
#[test]
fn over_long_replies_are_consumed_in_bounded_memory() {
    let long_line = format!("550 5.1.1 {}\r\n", "x".repeat(100_000));
    let many_lines = "550-5.1.1 yyyyyyyyyy\r\n".repeat(5_000) + "550 5.1.1 end\r\n";
    for rcpt_reply in [long_line, many_lines] {
        let server = s(&[
            GREETING,
            "250-mx\r\n250 PIPELINING\r\n",
            "250 ok\r\n",
            &rcpt_reply,
            "554 no recipients\r\n221 bye\r\n",
        ]);
        let mut d = Driver::new(plain(), msg(&["b@example.net"]), BODY, false);
        d.play(&[server.as_bytes()], Cut::Whole);
        assert!(
            d.max_buffered < limits::MAX_UNIT,
            "buffered {}",
            d.max_buffered
        );
        assert!(
            d.text().ends_with("QUIT\r\n"),
            "{:?} {:?}",
            d.text(),
            d.summary()
        );
        match &d.outcomes[0][0] {
            Outcome::Permanent(Detail { reply: Some(r), .. }) => {
                assert_eq!(r.code, 550);
                assert!(r.text.len() <= limits::SMTP_CLIENT_REPLY_KEEP);
                assert!(r.text.len() >= limits::SMTP_CLIENT_LINE_KEEP - "5.1.1 ".len());
            }
            other => panic!("{other:?}"),
        }
    }
    // A greeting line longer than `MAX_UNIT`, split anywhere.
    let greeting = format!("220 {}\r\n", "z".repeat(3 * limits::MAX_UNIT));
    let server = s(&[&greeting, EHLO_BASIC, "250 ok\r\n550 no\r\n221 bye\r\n"]);
    let d = check_plain(&["b@example.net"], &[server.as_bytes()]);
    assert_eq!(d.summary(), [["permanent: RCPT TO: 550 no"]]);
}

#[test]
fn dot_stuffing_and_the_end_of_data() {
    let replies = "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n";
    let server = s(&[GREETING, EHLO_PIPE, replies]);
    for (data, sent) in [
        (
            &b".first\r\n..two\r\nmid.dle\r\n.\r\nend\r\n"[..],
            &b"..first\r\n...two\r\nmid.dle\r\n..\r\nend\r\n.\r\n"[..],
        ),
        (b"no final line end", b"no final line end\r\n.\r\n"),
        (b"ends in CR\r", b"ends in CR\r\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"bare\n.lf\n", b"bare\n..lf\n\r\n.\r\n"),
    ] {
        let d = check(
            || Driver::new(plain(), msg(&["b@example.net"]), data, false),
            &[server.as_bytes()],
        );
        let mut expected = b"DATA\r\n".to_vec();
        expected.extend_from_slice(sent);
        expected.extend_from_slice(b"QUIT\r\n");
        assert!(
            d.written.ends_with(&expected),
            "{:?}",
            String::from_utf8_lossy(&d.written)
        );
        assert_eq!(d.summary(), [["delivered: end of data: 250 ok"]]);
    }
}

/// Data of any size streams through the fixed output buffer.
#[test]
fn large_message_streams_through_the_output_buffer() {
    let data: Vec<u8> = (0..20_000)
        .flat_map(|i| format!(".line {i}\r\n").into_bytes())
        .collect();
    let server = s(&[
        GREETING,
        EHLO_BASIC,
        "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n",
    ]);
    let mut d = Driver::new(plain(), msg(&["b@example.net"]), &data, false);
    d.play(&[server.as_bytes()], Cut::Whole);
    let stuffed: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("..line {i}\r\n").into_bytes())
        .collect();
    let mut expected = stuffed;
    expected.extend_from_slice(b".\r\nQUIT\r\n");
    assert!(d.written.ends_with(&expected));
}

#[test]
fn two_messages_on_one_connection() {
    let make = || {
        Driver::new(plain(), msg(&["b@example.net"]), BODY, false)
            .then(msg(&["c@example.net", "d@example.net"]), b"second\r\n")
    };
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued as X\r\n",
        "250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n450 4.2.2 full\r\n354 go\r\n250 2.0.0 queued as X\r\n",
        "221 bye\r\n",
    ]);
    let d = check(make, &[server.as_bytes()]);
    assert!(d.text().contains(
        "hello\r\n.\r\nRSET\r\nMAIL FROM:<a@example.org> SIZE=21\r\nRCPT TO:<c@example.net>\r\n\
         RCPT TO:<d@example.net>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n"
    ));
    assert_eq!(
        d.summary(),
        vec![
            vec![DELIVERED],
            vec![DELIVERED, "temporary: RCPT TO: 450 4.2.2 full"]
        ]
    );
    // A refused RSET defers the next message and ends the connection.
    let make = || {
        Driver::new(plain(), msg(&["b@example.net"]), BODY, false)
            .then(msg(&["c@example.net"]), b"second\r\n")
    };
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n500 no\r\n221 bye\r\n",
    ]);
    let d = check(make, &[server.as_bytes()]);
    assert_eq!(
        d.summary(),
        vec![
            vec!["delivered: end of data: 250 ok"],
            vec!["temporary: RSET: 500 no"]
        ]
    );
    assert!(d.text().ends_with("RSET\r\nQUIT\r\n"));
}

/// 421 in the middle of a pipelined batch: the server is going away; everything open defers.
#[test]
fn service_closing_mid_transaction() {
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "250 ok\r\n250 ok\r\n421 4.4.2 shutting down\r\n",
    ]);
    let d = check_plain(&["b@example.net", "c@example.net"], &[server.as_bytes()]);
    let why = "temporary: RCPT TO: 421 4.4.2 shutting down";
    assert_eq!(d.summary(), [[why, why]]);
    assert!(d.closed);
    assert!(d.text().ends_with("DATA\r\n"), "no QUIT after 421");
}

#[test]
fn connection_lost_defers_open_recipients() {
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n",
    ]);
    let mut d = Driver::new(
        plain(),
        msg(&["b@example.net", "c@example.net"]),
        BODY,
        false,
    );
    d.play(&[server.as_bytes()], Cut::Whole);
    d.client.peer_closed();
    d.run();
    assert_eq!(
        d.summary(),
        [[
            "permanent: RCPT TO: 550 no",
            "temporary: connection closed by the server while waiting for the reply to the end \
             of data"
        ]]
    );
}

/// Addresses that cannot go into a command line (a CR or LF would inject a command) are
/// refused before anything is sent.
#[test]
fn unsendable_addresses() {
    let server = s(&[
        GREETING,
        EHLO_PIPE,
        "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n",
    ]);
    let d = check_plain(
        &["x@example.net>\r\nRSET", "b@example.net"],
        &[server.as_bytes()],
    );
    assert!(!d.text().contains("RCPT TO:<x"));
    assert_eq!(
        d.summary(),
        [[
            "permanent: invalid recipient address",
            "delivered: end of data: 250 ok"
        ]]
    );
}

/// Calls out of order are refused or harmless: no verdicts before the end, no second message
/// mid-transaction, no second QUIT.
#[test]
fn caller_calls_out_of_order() {
    let mut d = Driver::new(plain(), msg(&["b@example.net"]), BODY, false);
    d.play(&[GREETING.as_bytes(), EHLO_BASIC.as_bytes()], Cut::Whole);
    assert!(d.client.take_outcomes().is_none());
    assert!(
        d.client
            .next_message(msg(&["c@example.net"]), d.now)
            .is_err()
    );
    let mut out = crate::buf::OutBuf::new_boxed();
    assert_eq!(
        d.client.send_data(b"x", d.now, &mut out),
        0,
        "data before the 354"
    );
    assert!(!d.client.end_data(d.now, &mut out));
    d.send(b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n");
    assert!(d.text().ends_with(".\r\nQUIT\r\n"));
    d.client.quit(d.now);
    d.run();
    assert_eq!(d.text().matches("QUIT").count(), 1, "{}", d.text());
    assert_eq!(d.summary(), [["delivered: end of data: 250 ok"]]);
}

/// A pipelined batch larger than the output buffer is written across several drains, and the
/// replies still match their commands in order.
#[test]
fn pipelined_batch_larger_than_the_output_buffer() {
    let rcpts: Vec<String> = (0..200)
        .map(|i| format!("r{i:03}{}@example.net", "x".repeat(230)))
        .collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let mut replies = String::from("250 ok\r\n");
    for i in 0..200 {
        replies += if i == 150 { "550 no\r\n" } else { "250 ok\r\n" };
    }
    replies += "354 go\r\n250 ok\r\n221 bye\r\n";
    let server = s(&[GREETING, EHLO_PIPE, &replies]);
    let mut d = Driver::new(plain(), msg(&rcpts), BODY, false);
    d.play(&[server.as_bytes()], Cut::Whole);
    let text = d.text();
    assert!(text.len() > limits::OUT_BUF);
    let order: Vec<usize> = rcpts
        .iter()
        .map(|r| text.find(r).expect("RCPT sent"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    let summary = &d.summary()[0];
    assert_eq!(summary.len(), 200);
    for (i, o) in summary.iter().enumerate() {
        let expected = if i == 150 {
            "permanent: RCPT TO: 550 no"
        } else {
            "delivered: end of data: 250 ok"
        };
        assert_eq!(o, expected, "recipient {i}");
    }
}
