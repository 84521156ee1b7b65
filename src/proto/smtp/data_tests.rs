//! DATA: envelopes, the Received header, spool failures, the size limit, smuggling vectors,
//! the consumption rule and the hand-over to the commit.

use super::tests::*;
use super::*;
use crate::buf::Buf;
use crate::date::rfc5322_date;

const PREAMBLE: &str = "EHLO client.example.org\r\nMAIL FROM:<s@example.org>\r\n\
                        RCPT TO:<alice@example.test>\r\nDATA\r\n";
const PREAMBLE_REPLIES: usize = 6 + 3;
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>";

fn date() -> String {
    rfc5322_date(arrival())
}

fn received_for_alice(id: &str) -> String {
    format!(
        "Received: from client.example.org (client.example.org [192.0.2.7])\r\n\
         \tby mail.example.test (postling) with ESMTP id {id}\r\n\
         \tfor <alice@example.test>; {}\r\n",
        date()
    )
}

/// Replies after the EHLO/MAIL/RCPT replies.
fn tail(d: &Driver) -> Vec<String> {
    d.replies()[PREAMBLE_REPLIES - 1..].to_vec()
}

#[test]
fn a_message_is_stored_and_queued() {
    let d = script(&format!(
        "{PREAMBLE}Subject: hi\r\n\r\nhello\r\n.\r\nMAIL FROM:<x@y.org>\r\n"
    ));
    assert_eq!(
        tail(&d),
        [GO_AHEAD, "250 2.0.0 Ok: queued as Q1", "250 2.1.0 Ok"]
    );
    let envelope = Envelope {
        sender: "s@example.org".into(),
        recipients: vec!["alice@example.test".into()],
        client_ip: "192.0.2.7".parse().unwrap(),
        helo: "client.example.org".into(),
        arrival: arrival(),
        smtputf8: false,
        body: BodyType::SevenBit,
        pickup: None,
    };
    let mut want_data = received_for_alice("Q1").into_bytes();
    want_data.extend_from_slice(b"Subject: hi\r\n\r\nhello\r\n");
    assert_eq!(
        d.host.calls,
        [
            Call::Verdict("alice@example.test".into()),
            Call::Begin(envelope),
            Call::Append(want_data),
            Call::Commit,
        ]
    );
}

#[test]
fn empty_message() {
    let d = script(&format!("{PREAMBLE}.\r\n"));
    assert_eq!(tail(&d), [GO_AHEAD, "250 2.0.0 Ok: queued as Q1"]);
    assert_eq!(d.host.appended(), received_for_alice("Q1").into_bytes());
}

#[test]
fn the_transaction_resets_after_data() {
    let d = script(&format!(
        "{PREAMBLE}x\r\n.\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
    ));
    assert_eq!(
        tail(&d),
        [
            GO_AHEAD,
            "250 2.0.0 Ok: queued as Q1",
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need MAIL command",
        ]
    );
}

#[test]
fn envelope_carries_helo_utf8_body_and_all_recipients() {
    let d = script(
        "HELO old.example.org\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\n\
         RCPT TO:<b@example.test>\r\nDATA\r\n.\r\n",
    );
    let env = d.host.envelopes()[0].clone();
    assert_eq!(env.sender, "");
    assert_eq!(env.recipients, ["a@example.test", "b@example.test"]);
    assert_eq!(env.helo, "old.example.org");
    assert_eq!(env.body, BodyType::SevenBit);
    let header = String::from_utf8(d.host.appended()).unwrap();
    assert_eq!(
        header,
        format!(
            "Received: from old.example.org (old.example.org [192.0.2.7])\r\n\
             \tby mail.example.test (postling) with SMTP id Q1;\r\n\t{}\r\n",
            date()
        )
    );

    let d = script(
        "EHLO c.example.org\r\nMAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME\r\n\
         RCPT TO:<ü@example.test>\r\nDATA\r\nSubject: grüße\r\n.\r\n",
    );
    let env = d.host.envelopes()[0].clone();
    assert!(env.smtputf8);
    assert_eq!(env.body, BodyType::EightBitMime);
    assert_eq!(env.sender, "jörg@exämple.org");
    let data = String::from_utf8(d.host.appended()).unwrap();
    assert!(data.contains("\tby mail.example.test (postling) with UTF8SMTP id Q1\r\n"));
    assert!(data.contains("\tfor <ü@example.test>; "));
    assert!(data.ends_with("\r\nSubject: grüße\r\n"));
}

#[test]
fn helo_that_is_not_a_domain_is_kept_out_of_the_header() {
    let d = script(
        "EHLO my_host(evil)\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n.\r\n",
    );
    assert_eq!(d.host.envelopes()[0].helo, "my_host(evil)");
    let data = String::from_utf8(d.host.appended()).unwrap();
    assert!(
        data.starts_with("Received: from [192.0.2.7] ([192.0.2.7])\r\n"),
        "{data}"
    );
    assert!(!data.contains("evil"));
}

#[test]
fn spool_begin_failures() {
    for (error, reply) in [
        (SpoolError::Full, "452 4.3.1 Insufficient system storage"),
        (
            SpoolError::Failed("EACCES".into()),
            "451 4.3.0 Error: local error in processing",
        ),
    ] {
        let mut host = FakeHost::new();
        host.begin_error = Some(error);
        let d = script_with(
            host,
            &format!("{PREAMBLE}RCPT TO:<b@example.test>\r\nNOOP\r\n"),
        );
        assert_eq!(
            tail(&d),
            [reply, "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
        );
        assert!(d.host.appended().is_empty());
        assert_eq!(d.host.count(&Call::Commit), 0);
    }
}

#[test]
fn immediate_commit_failures() {
    for (error, reply) in [
        (SpoolError::Full, "452 4.3.1 Insufficient system storage"),
        (
            SpoolError::Failed("EIO".into()),
            "451 4.3.0 Error: local error in processing",
        ),
    ] {
        let mut host = FakeHost::new();
        host.commit_error = Some(error);
        let d = script_with(host, &format!("{PREAMBLE}body\r\n.\r\nNOOP\r\n"));
        assert_eq!(tail(&d), [GO_AHEAD, reply, "250 2.0.0 Ok"]);
        assert_eq!(d.host.count(&Call::Commit), 1);
    }
}

#[test]
fn durable_commit_failures_come_through_resume() {
    for (error, reply) in [
        (SpoolError::Full, "452 4.3.1 Insufficient system storage"),
        (
            SpoolError::Failed("fsync".into()),
            "451 4.3.0 Error: local error in processing",
        ),
    ] {
        let mut host = FakeHost::new();
        host.durable_error = Some(error);
        let d = script_with(host, &format!("{PREAMBLE}body\r\n.\r\nNOOP\r\n"));
        assert_eq!(tail(&d), [GO_AHEAD, reply, "250 2.0.0 Ok"]);
    }
}

#[test]
fn await_commit_leaves_pipelined_commands_in_the_input() {
    let mut s = SmtpSession::new(settings(MAX_SIZE), peer());
    let mut out: Box<OutBuf> = Buf::new_boxed();
    let mut host = FakeHost::new();
    let step = s.step(PREAMBLE.as_bytes(), ctx(), &mut out, &mut host);
    assert_eq!(step, Step::new(PREAMBLE.len(), Next::NeedInput));
    out.clear();
    let input = b"line\r\n.\r\nNOOP\r\nQUIT\r\n";
    let step = s.step(input, ctx(), &mut out, &mut host);
    assert_eq!(step, Step::new(9, Next::AwaitCommit));
    assert!(out.is_empty(), "no reply before the commit is durable");
    // Stepped again before the verdict (the reactor does not, but it must be harmless).
    assert_eq!(
        s.step(&input[9..], ctx(), &mut out, &mut host),
        Step::new(0, Next::AwaitCommit)
    );
    s.resume(
        Completion::Committed(Ok(QueueId("Q1".into()))),
        ctx(),
        &mut out,
        &mut host,
    );
    assert_eq!(out.bytes(), b"250 2.0.0 Ok: queued as Q1\r\n");
    out.clear();
    let step = s.step(&input[9..], ctx(), &mut out, &mut host);
    assert_eq!(step, Step::new(12, Next::Close));
    assert_eq!(out.bytes(), b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
    // A stray wake-up or a second verdict changes nothing.
    s.resume(Completion::Woke, ctx(), &mut out, &mut host);
    s.resume(
        Completion::Committed(Ok(QueueId("Q9".into()))),
        ctx(),
        &mut out,
        &mut host,
    );
    assert_eq!(out.bytes(), b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n");
}

/// A message of exactly `n` decoded octets (lines of 100 octets including CRLF).
fn message_of(n: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(n);
    while m.len() + 100 <= n {
        m.extend_from_slice(&[b'a'; 98]);
        m.extend_from_slice(b"\r\n");
    }
    let rest = n - m.len();
    if rest >= 2 {
        m.extend(std::iter::repeat_n(b'b', rest - 2));
        m.extend_from_slice(b"\r\n");
    } else {
        assert_eq!(rest, 0, "pick a size that ends a line");
    }
    m
}

#[test]
fn message_of_exactly_the_maximum_size_is_accepted() {
    let body = message_of(MAX_SIZE as usize);
    let mut d = Driver::new(FakeHost::new());
    d.send(PREAMBLE.as_bytes());
    d.send(&body);
    d.send(b".\r\n");
    assert_eq!(tail(&d), [GO_AHEAD, "250 2.0.0 Ok: queued as Q1"]);
    let stored = d.host.appended();
    assert_eq!(&stored[stored.len() - body.len()..], body.as_slice());
    assert_eq!(d.host.count(&Call::Abort), 0);
}

#[test]
fn one_octet_over_the_maximum_is_refused_at_the_end() {
    let body = message_of(MAX_SIZE as usize + 2);
    for chunk in [1, 100, 4096, usize::MAX] {
        let mut d = Driver::new(FakeHost::new());
        d.send(PREAMBLE.as_bytes());
        d.send_chunked(&body, chunk);
        // Much more after the limit: read and dropped, no second abort.
        d.send_chunked(&message_of(50_000), chunk);
        assert_eq!(tail(&d), [GO_AHEAD], "no reply before the end of data");
        d.send(b".\r\nNOOP\r\n");
        assert_eq!(
            tail(&d),
            [
                GO_AHEAD,
                "552 5.3.4 Message size exceeds fixed limit",
                "250 2.0.0 Ok"
            ]
        );
        assert_eq!(d.host.count(&Call::Abort), 1);
        assert_eq!(d.host.count(&Call::Commit), 0);
        // Exactly the first MAX_SIZE octets reached the host before the abort.
        let mut want = received_for_alice("Q1").into_bytes();
        want.extend_from_slice(&body[..MAX_SIZE as usize]);
        assert_eq!(d.host.appended(), want, "chunk {chunk}");
        let abort_at = d.host.calls.iter().position(|c| *c == Call::Abort);
        assert_eq!(abort_at, Some(d.host.calls.len() - 1));
    }
    // The session goes on and takes the next message.
    let mut d = Driver::new(FakeHost::new());
    d.send(PREAMBLE.as_bytes());
    d.send(&body);
    d.send(b".\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nok\r\n.\r\n");
    assert_eq!(
        tail(&d)[1..],
        [
            "552 5.3.4 Message size exceeds fixed limit",
            "250 2.1.0 Ok",
            "250 2.1.5 Ok",
            GO_AHEAD,
            "250 2.0.0 Ok: queued as Q2"
        ]
    );
}

#[test]
fn smuggling_vectors_are_lines_of_the_message() {
    let long_line = vec![b'L'; 20000];
    let mut data = Vec::new();
    data.extend_from_slice(b"Subject: smuggle\r\n\r\n");
    data.extend_from_slice(b"one\n.\nMAIL FROM:<evil@example.org>\r\n");
    data.extend_from_slice(b"two\n.\r\nRCPT TO:<bob@example.test>\r\n");
    data.extend_from_slice(b"three\r.\rDATA\r\n");
    data.extend_from_slice(&long_line);
    data.extend_from_slice(b"\r\n..leading dot\r\n.\r\n");
    let mut want = received_for_alice("Q1").into_bytes();
    want.extend_from_slice(b"Subject: smuggle\r\n\r\n");
    want.extend_from_slice(b"one\r\n.\r\nMAIL FROM:<evil@example.org>\r\n");
    want.extend_from_slice(b"two\r\n.\r\nRCPT TO:<bob@example.test>\r\n");
    want.extend_from_slice(b"three\r.\rDATA\r\n");
    want.extend_from_slice(&long_line);
    want.extend_from_slice(b"\r\n.leading dot\r\n");
    for chunk in [1, 3, 1000, 4096, usize::MAX] {
        let mut d = Driver::with_settings(FakeHost::new(), settings(1_000_000));
        d.send(PREAMBLE.as_bytes());
        d.send_chunked(&data, chunk);
        assert_eq!(
            tail(&d),
            [GO_AHEAD, "250 2.0.0 Ok: queued as Q1"],
            "{chunk}"
        );
        assert_eq!(d.host.appended(), want, "chunk {chunk}");
        assert_eq!(d.host.verdict_calls(), ["alice@example.test"]);
        assert_eq!(d.host.envelopes().len(), 1);
        assert!(d.max_buffered < limits::IN_BUF);
    }
}

#[test]
fn data_command_ending_in_bare_lf_does_not_start_a_boundary() {
    let d = script(
        "EHLO c\r\nMAIL FROM:<a@b.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\n.\r\nx\r\n.\r\n",
    );
    let data = d.host.appended();
    assert!(data.ends_with(b".\r\nx\r\n"));
}

#[test]
fn data_consumes_only_complete_lines() {
    let mut s = SmtpSession::new(settings(MAX_SIZE), peer());
    let mut out: Box<OutBuf> = Buf::new_boxed();
    let mut host = FakeHost::new();
    s.step(PREAMBLE.as_bytes(), ctx(), &mut out, &mut host);
    // A byte trickle is not progress.
    for partial in [&b"a"[..], b"ab", b"abc\r"] {
        assert_eq!(
            s.step(partial, ctx(), &mut out, &mut host),
            Step::new(0, Next::NeedInput)
        );
    }
    // Up to the last LF.
    assert_eq!(
        s.step(b"abc\r\ndef\r\ngh", ctx(), &mut out, &mut host),
        Step::new(10, Next::NeedInput)
    );
    // MAX_UNIT without an LF is consumed, ending in a CR that may pair with a later LF.
    let mut big = vec![b'x'; limits::MAX_UNIT - 1];
    big.push(b'\r');
    assert_eq!(
        s.step(&big, ctx(), &mut out, &mut host),
        Step::new(limits::MAX_UNIT, Next::NeedInput)
    );
    assert_eq!(
        s.step(b"\n.\r\n", ctx(), &mut out, &mut host),
        Step::new(4, Next::AwaitCommit)
    );
    let data = host.appended();
    let mut want = b"abc\r\ndef\r\n".to_vec();
    want.extend_from_slice(&big);
    want.push(b'\n');
    assert!(data.ends_with(&want));
    assert_eq!(data.len(), received_for_alice("Q1").len() + want.len());
}

#[test]
fn long_data_lines_stream_with_bounded_buffering() {
    let line = vec![b'Q'; 100_000];
    let mut d = Driver::with_settings(FakeHost::new(), settings(1_000_000));
    d.send(PREAMBLE.as_bytes());
    for chunk in [1, 1500, 9000] {
        d.send_chunked(&line, chunk);
        d.send(b"\r\n");
    }
    d.send(b".\r\n");
    assert!(d.max_buffered < limits::IN_BUF);
    let stored = d.host.appended();
    assert_eq!(
        stored.len(),
        received_for_alice("Q1").len() + 3 * (line.len() + 2)
    );
    assert_eq!(tail(&d)[1], "250 2.0.0 Ok: queued as Q1");
}
