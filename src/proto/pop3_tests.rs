use super::*;
use crate::proto::pop_testing::dialog;
use crate::proto::pop_testing::{Body, FakeHost, Harness, Stop, run_split, wire_size};

const ONE: &[u8] = b"Subject: one\n\nfirst body\n";
const TWO: &[u8] = b"Subject: two\n\nline\n.dotted\n..two dots\nlast";
const THREE: &[u8] = b"Subject: three\r\n\r\nthird\r\n";

pub(super) fn host() -> FakeHost {
    let mut h = FakeHost::new();
    h.add_user("bob", "bob-pw");
    h.add_user("carol", "carol pw with spaces");
    h.add_message("1000.M1P1Q1.h,S=30", ONE);
    h.add_message("1001.M1P1Q2.h", TWO);
    h.add_message("1002.M1P1Q3.h", THREE);
    h
}

pub(super) fn session() -> Pop3Session {
    Pop3Session::new(dialog::settings())
}

pub(super) fn harness() -> Harness<Pop3Session> {
    Harness::new(session(), host())
}

pub(super) fn logged_in() -> Harness<Pop3Session> {
    let mut h = harness();
    let r = h.exchange(b"USER bob\r\nPASS bob-pw\r\n");
    assert!(
        r.ends_with(b"+OK maildrop has 3 messages (100 octets)\r\n"),
        "{:?}",
        h.wire_str()
    );
    h
}

pub(super) fn say(h: &mut Harness<Pop3Session>, line: &str) -> String {
    let r = h.exchange(format!("{line}\r\n").as_bytes());
    String::from_utf8_lossy(&r).into_owned()
}

fn total_octets() -> u64 {
    wire_size(ONE) + wire_size(TWO) + wire_size(THREE)
}

#[test]
fn greeting_and_sizes() {
    let h = harness();
    assert_eq!(h.wire_str(), "+OK pop.example.test POP3 postling ready\r\n");
    assert_eq!(total_octets(), 100);
    assert!(
        std::mem::size_of::<Pop3Session>() <= 160,
        "{}",
        std::mem::size_of::<Pop3Session>()
    );
}

#[test]
fn capa_in_both_states() {
    let want = "+OK Capability list follows\r\nTOP\r\nUIDL\r\nUSER\r\nSASL PLAIN\r\nRESP-CODES\r\n\
                AUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION postling\r\n.\r\n";
    let mut h = harness();
    assert_eq!(say(&mut h, "CAPA"), want);
    let mut h = logged_in();
    assert_eq!(say(&mut h, "capa"), want);
}

#[test]
fn authorization_state_table() {
    let cases: &[(&str, &str)] = &[
        ("STAT", "-ERR not logged in\r\n"),
        ("LIST", "-ERR not logged in\r\n"),
        ("LIST 1", "-ERR not logged in\r\n"),
        ("RETR 1", "-ERR not logged in\r\n"),
        ("DELE 1", "-ERR not logged in\r\n"),
        ("NOOP", "-ERR not logged in\r\n"),
        ("RSET", "-ERR not logged in\r\n"),
        ("TOP 1 1", "-ERR not logged in\r\n"),
        ("UIDL", "-ERR not logged in\r\n"),
        ("PASS bob-pw", "-ERR send USER first\r\n"),
        ("USER", "-ERR syntax: USER name\r\n"),
        ("USER a b", "-ERR syntax: USER name\r\n"),
        ("USER nosuchuser", "+OK send PASS\r\n"),
        ("USER bob", "+OK send PASS\r\n"),
        ("APOP bob 0123456789abcdef", "-ERR unknown command\r\n"),
        ("XTND", "-ERR unknown command\r\n"),
        ("", "-ERR unknown command\r\n"),
        ("STATX", "-ERR unknown command\r\n"),
        ("AUTH", "+OK SASL mechanisms follow\r\nPLAIN\r\n.\r\n"),
        ("AUTH CRAM-MD5", "-ERR unsupported SASL mechanism\r\n"),
        ("AUTH PLAIN a b", "-ERR syntax: AUTH PLAIN [response]\r\n"),
        (
            "AUTH PLAIN !!!!",
            "-ERR invalid base64 in SASL response\r\n",
        ),
        ("AUTH PLAIN =", "-ERR malformed SASL PLAIN response\r\n"),
    ];
    for (cmd, want) in cases {
        let mut h = harness();
        assert_eq!(say(&mut h, cmd), *want, "{cmd:?}");
        assert!(
            h.host.auth_calls.is_empty() && h.host.opened.is_empty(),
            "{cmd:?}"
        );
    }
}

#[test]
fn transaction_state_table() {
    let cases: &[(&str, &str)] = &[
        ("STAT", "+OK 3 100\r\n"),
        ("stat", "+OK 3 100\r\n"),
        ("NOOP", "+OK\r\n"),
        ("LIST 2", "+OK 2 47\r\n"),
        ("list 3", "+OK 3 25\r\n"),
        ("UIDL 1", "+OK 1 1000.M1P1Q1.h,S=30\r\n"),
        (
            "LIST",
            "+OK 3 messages (100 octets)\r\n1 28\r\n2 47\r\n3 25\r\n.\r\n",
        ),
        (
            "UIDL",
            "+OK 3 messages (100 octets)\r\n1 1000.M1P1Q1.h,S=30\r\n2 1001.M1P1Q2.h\r\n\
             3 1002.M1P1Q3.h\r\n.\r\n",
        ),
        (
            "RETR 1",
            "+OK 28 octets\r\nSubject: one\r\n\r\nfirst body\r\n.\r\n",
        ),
        (
            "Retr 2",
            "+OK 47 octets\r\nSubject: two\r\n\r\nline\r\n..dotted\r\n...two dots\r\nlast\r\n.\r\n",
        ),
        (
            "TOP 1 0",
            "+OK top of message follows\r\nSubject: one\r\n\r\n.\r\n",
        ),
        (
            "TOP 2 2",
            "+OK top of message follows\r\nSubject: two\r\n\r\nline\r\n..dotted\r\n.\r\n",
        ),
        (
            "TOP 3 99",
            "+OK top of message follows\r\nSubject: three\r\n\r\nthird\r\n.\r\n",
        ),
        ("DELE 3", "+OK message 3 deleted\r\n"),
        ("RSET", "+OK maildrop has 3 messages (100 octets)\r\n"),
        ("USER bob", "-ERR already logged in\r\n"),
        ("PASS bob-pw", "-ERR already logged in\r\n"),
        ("AUTH PLAIN", "-ERR already logged in\r\n"),
        ("STAT 1", "-ERR this command takes no arguments\r\n"),
        ("NOOP x", "-ERR this command takes no arguments\r\n"),
        ("RSET 1", "-ERR this command takes no arguments\r\n"),
        ("RETR", "-ERR syntax: RETR msg\r\n"),
        ("RETR 1 2", "-ERR syntax: RETR msg\r\n"),
        ("DELE", "-ERR syntax: DELE msg\r\n"),
        ("TOP 1", "-ERR syntax: TOP msg lines\r\n"),
        ("TOP 1 2 3", "-ERR syntax: TOP msg lines\r\n"),
        ("TOP 1 x", "-ERR invalid line count\r\n"),
        ("TOP 1 -1", "-ERR invalid line count\r\n"),
        ("LIST 1 2", "-ERR syntax: LIST/UIDL [msg]\r\n"),
        ("UIDL 1 2", "-ERR syntax: LIST/UIDL [msg]\r\n"),
        ("HELO", "-ERR unknown command\r\n"),
    ];
    for (cmd, want) in cases {
        let mut h = logged_in();
        assert_eq!(say(&mut h, cmd), *want, "{cmd:?}");
    }
}

#[test]
fn message_numbers_are_strict() {
    for arg in [
        "4294967297",
        "4294967296",
        "18446744073709551617",
        "18446744073709551616",
        "99999999999999999999999",
        "-1",
        "+1",
        "1x",
        "0x1",
        "1.",
    ] {
        for cmd in ["LIST", "UIDL", "RETR", "DELE"] {
            let mut h = logged_in();
            let r = say(&mut h, &format!("{cmd} {arg}"));
            assert!(r.starts_with("-ERR"), "{cmd} {arg}: {r}");
            assert_eq!(
                say(&mut h, "STAT"),
                "+OK 3 100\r\n",
                "{cmd} {arg} deleted something"
            );
        }
        let mut h = logged_in();
        assert!(say(&mut h, &format!("TOP {arg} 1")).starts_with("-ERR"));
    }
    for arg in ["0", "4", "18446744073709551615"] {
        let mut h = logged_in();
        assert_eq!(
            say(&mut h, &format!("RETR {arg}")),
            "-ERR no such message\r\n"
        );
        assert_eq!(
            say(&mut h, &format!("LIST {arg}")),
            "-ERR no such message\r\n"
        );
    }
    let mut h = logged_in();
    assert_eq!(say(&mut h, "LIST 0002"), "+OK 2 47\r\n");
}

#[test]
fn deleted_messages_are_invisible_until_rset() {
    let mut h = logged_in();
    assert_eq!(say(&mut h, "DELE 2"), "+OK message 2 deleted\r\n");
    for cmd in ["LIST 2", "UIDL 2", "RETR 2", "TOP 2 0", "DELE 2"] {
        assert_eq!(
            say(&mut h, cmd),
            "-ERR message 2 already deleted\r\n",
            "{cmd}"
        );
    }
    assert_eq!(say(&mut h, "STAT"), "+OK 2 53\r\n");
    assert_eq!(
        say(&mut h, "LIST"),
        "+OK 2 messages (53 octets)\r\n1 28\r\n3 25\r\n.\r\n"
    );
    assert_eq!(
        say(&mut h, "UIDL"),
        "+OK 2 messages (53 octets)\r\n1 1000.M1P1Q1.h,S=30\r\n3 1002.M1P1Q3.h\r\n.\r\n"
    );
    assert_eq!(
        say(&mut h, "RSET"),
        "+OK maildrop has 3 messages (100 octets)\r\n"
    );
    assert_eq!(say(&mut h, "LIST 2"), "+OK 2 47\r\n");
    assert_eq!(say(&mut h, "DELE 1"), "+OK message 1 deleted\r\n");
    assert_eq!(say(&mut h, "DELE 3"), "+OK message 3 deleted\r\n");
    assert_eq!(
        say(&mut h, "LIST"),
        "+OK 1 messages (47 octets)\r\n2 47\r\n.\r\n"
    );
    assert_eq!(
        say(&mut h, "QUIT"),
        "+OK postling POP3 server signing off (2 deleted, 1 left)\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.host.updates, vec![vec![0, 2]]);
}

#[test]
fn quit_updates_only_in_transaction() {
    let mut h = harness();
    assert_eq!(say(&mut h, "USER bob"), "+OK send PASS\r\n");
    assert_eq!(
        say(&mut h, "QUIT"),
        "+OK postling POP3 server signing off\r\n"
    );
    assert!(h.closed);
    assert!(h.host.updates.is_empty() && h.host.opened.is_empty());

    let mut h = logged_in();
    assert_eq!(
        say(&mut h, "QUIT"),
        "+OK postling POP3 server signing off (0 deleted, 3 left)\r\n"
    );
    assert_eq!(h.host.updates, vec![Vec::<usize>::new()]);

    let mut h = logged_in();
    h.host.update_error = Some(MailboxError::Temporary("disk".into()));
    say(&mut h, "DELE 1");
    assert_eq!(
        say(&mut h, "QUIT"),
        "-ERR [SYS/TEMP] some deleted messages were not removed\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.host.updates, vec![vec![0]]);
}

#[test]
fn timeout_and_shutdown_delete_nothing() {
    let mut h = logged_in();
    say(&mut h, "DELE 1");
    h.timeout();
    assert!(
        h.wire_str()
            .ends_with("-ERR [SYS/TEMP] timeout, closing connection\r\n")
    );
    assert_eq!(h.run(), Stop::Close);
    assert!(h.host.updates.is_empty());

    let mut h = logged_in();
    say(&mut h, "DELE 1");
    h.shutdown();
    assert!(
        h.wire_str()
            .ends_with("-ERR [SYS/TEMP] server shutting down\r\n")
    );
    h.send(b"QUIT\r\n");
    assert_eq!(h.run(), Stop::Close);
    assert!(
        h.host.updates.is_empty(),
        "no UPDATE after shutdown, even with QUIT queued"
    );
}

#[test]
fn timeout_mid_message_adds_nothing_to_the_body() {
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_body("big", Body::Synthetic { len: 1 << 20 });
    let mut h = Harness::new(session(), host);
    h.exchange(b"USER bob\r\nPASS bob-pw\r\n");
    let mut out = OutBuf::new_boxed();
    let ctx = h.ctx();
    let step = h.session.step(b"RETR 1\r\n", ctx, &mut out, &mut h.host);
    assert_eq!(step, Step::new(8, Next::NeedOutput));
    let before = out.len();
    h.session.on_timeout(&mut out);
    assert_eq!(out.len(), before);
    let step = h.session.step(b"", ctx, &mut out, &mut h.host);
    assert_eq!(step.next, Next::Close);
}

#[test]
fn long_lines_are_discarded_in_sync() {
    let mut h = logged_in();
    let long = format!("LIST {}", "1".repeat(300));
    assert_eq!(say(&mut h, &long), "-ERR line too long\r\n");
    // Longer than MAX_UNIT, arriving in pieces without a line end.
    let junk = vec![b'x'; 5000];
    for piece in junk.chunks(700) {
        h.send(piece);
        assert_eq!(h.run(), Stop::NeedInput);
    }
    assert!(h.pending_input() < limits::MAX_UNIT);
    assert_eq!(say(&mut h, "tail of it"), "-ERR line too long\r\n");
    assert_eq!(say(&mut h, "NOOP"), "+OK\r\n");
    // Exactly at the limit (255 with CRLF) is fine.
    let mut h = harness();
    let name = "u".repeat(255 - "USER \r\n".len());
    assert_eq!(say(&mut h, &format!("USER {name}")), "+OK send PASS\r\n");
    assert_eq!(
        say(&mut h, &format!("USER {name}x")),
        "-ERR line too long\r\n"
    );
}

#[test]
fn too_many_errors_close() {
    let mut h = logged_in();
    for i in 1..limits::POP_MAX_ERRORS {
        assert_eq!(
            say(&mut h, "BOGUS"),
            "-ERR unknown command\r\n",
            "error {i}"
        );
    }
    // Replies that are not protocol errors do not count.
    assert_eq!(say(&mut h, "RETR 9"), "-ERR no such message\r\n");
    assert_eq!(
        say(&mut h, "STAT 1"),
        "-ERR too many bad commands, closing connection\r\n"
    );
    assert!(h.closed);
    assert!(h.host.updates.is_empty());
}

#[test]
fn read_errors_at_start_and_mid_message() {
    let mut h = logged_in();
    h.host.read_error_at = Some(0);
    assert_eq!(
        say(&mut h, "RETR 1"),
        "-ERR [SYS/TEMP] cannot read that message now\r\n"
    );
    assert_eq!(
        say(&mut h, "TOP 1 0"),
        "-ERR [SYS/TEMP] cannot read that message now\r\n"
    );
    h.host.read_error_at = None;
    assert_eq!(say(&mut h, "NOOP"), "+OK\r\n");

    let mut host = host();
    host.add_body("big", Body::Synthetic { len: 100_000 });
    host.read_error_at = Some(50_000);
    let mut h = Harness::new(session(), host);
    h.exchange(b"USER bob\r\nPASS bob-pw\r\nDELE 1\r\n");
    h.send(b"RETR 4\r\nQUIT\r\n");
    assert_eq!(h.run(), Stop::Close);
    assert!(!h.wire.ends_with(b"\r\n.\r\n"));
    assert!(
        h.host.updates.is_empty(),
        "a broken transfer deletes nothing"
    );
}

#[test]
fn odd_file_byte_exact_through_the_session() {
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_message(
        "7.M1P1Q1.h",
        b"Subject: odd\n\n.\n..\n.x\nbare lf\ncrlf line\r\nno final newline",
    );
    let mut h = Harness::new(session(), host);
    let r = h.exchange(b"USER bob\r\nPASS bob-pw\r\nRETR 1\r\n");
    let want: &[u8] =
        b"+OK send PASS\r\n+OK maildrop has 1 messages (63 octets)\r\n+OK 63 octets\r\n\
        Subject: odd\r\n\r\n..\r\n...\r\n..x\r\nbare lf\r\ncrlf line\r\nno final newline\r\n.\r\n";
    assert_eq!(
        r.escape_ascii().to_string(),
        want.escape_ascii().to_string()
    );
}

#[test]
fn uidl_writes_only_printable_ids() {
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_message("a b\r\n.\u{e9}", b"x\n");
    host.add_message(&"u".repeat(400), b"y\n");
    let mut h = Harness::new(session(), host);
    h.exchange(b"USER bob\r\nPASS bob-pw\r\n");
    assert_eq!(say(&mut h, "UIDL 1"), "+OK 1 a?b??.??\r\n");
    let r = say(&mut h, "UIDL");
    assert_eq!(
        r,
        format!(
            "+OK 2 messages (6 octets)\r\n1 a?b??.??\r\n2 {}\r\n.\r\n",
            "u".repeat(255)
        )
    );
}

#[test]
fn large_listing_streams_across_fills() {
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    for i in 0..5000 {
        host.add_message(
            &format!("{}.M{i}P1Q1.host.example", 1_700_000_000 + i),
            b"x\n",
        );
    }
    let mut h = Harness::new(session(), host);
    h.exchange(b"USER bob\r\nPASS bob-pw\r\nDELE 17\r\n");
    let waits = h.output_waits;
    let r = h.exchange(b"UIDL\r\nLIST\r\nSTAT\r\n");
    assert!(
        h.output_waits - waits >= 10,
        "{} fills",
        h.output_waits - waits
    );
    let text = String::from_utf8(r).unwrap();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "+OK 4999 messages (14997 octets)");
    assert_eq!(lines[1], "1 1700000000.M0P1Q1.host.example");
    assert!(!text.contains("\r\n17 "));
    assert_eq!(lines[4999], "5000 1700004999.M4999P1Q1.host.example");
    assert_eq!(lines[5000], ".");
    assert_eq!(lines[5001], "+OK 4999 messages (14997 octets)");
    assert_eq!(lines[5001 + 4999], "5000 3");
    assert_eq!(lines[5001 + 5000], ".");
    assert_eq!(lines[5001 + 5001], "+OK 4999 14997");
    // With a socket that takes only 100 octets at a time, the same bytes come out.
    let mut slow = Harness::new(session(), {
        let mut host = FakeHost::new();
        host.add_user("bob", "bob-pw");
        for i in 0..5000 {
            host.add_message(
                &format!("{}.M{i}P1Q1.host.example", 1_700_000_000 + i),
                b"x\n",
            );
        }
        host
    });
    slow.drain_limit = Some(100);
    slow.exchange(b"USER bob\r\nPASS bob-pw\r\nDELE 17\r\n");
    assert_eq!(slow.exchange(b"UIDL\r\nLIST\r\nSTAT\r\n"), text.as_bytes());
}

#[test]
fn fifty_mib_message_streams_with_flat_memory() {
    const LEN: u64 = 50 << 20;
    let mut host = FakeHost::new();
    host.add_user("bob", "bob-pw");
    host.add_body("big", Body::Synthetic { len: LEN });
    let mut h = Harness::new(session(), host);
    h.exchange(b"USER bob\r\nPASS bob-pw\r\n");
    let heap = h.session.heap_capacity();
    h.keep_wire = false;
    let start = h.wire_len;
    h.send(b"RETR 1\r\nNOOP\r\n");
    assert_eq!(h.run(), Stop::NeedInput);
    let size = Body::Synthetic { len: LEN }.wire_size();
    let status = format!("+OK {size} octets\r\n").len() as u64;
    // The last line has no LF, so CRLF is added before the terminator; then NOOP's reply.
    assert_eq!(h.wire_len - start, status + size + 2 + 3 + 5);
    assert_eq!(h.wire_tail.as_slice(), &b"xxxxxx\r\n.\r\n+OK\r\n"[..]);
    assert_eq!(
        h.session.heap_capacity(),
        heap,
        "no heap growth while streaming"
    );
    assert!(h.host.largest_read_buf <= limits::POP_STREAM_CHUNK);
    assert!(h.host.reads >= LEN / limits::POP_STREAM_CHUNK as u64);
    assert!(h.output_waits >= LEN / limits::OUT_BUF as u64);
    assert!(std::mem::size_of::<Pop3Session>() <= 160);
}

#[test]
fn commands_after_retr_wait_their_turn() {
    let mut h = logged_in();
    let r = h.exchange(b"RETR 3\r\nDELE 3\r\nLIST 3\r\n");
    assert_eq!(
        String::from_utf8(r).unwrap(),
        "+OK 25 octets\r\nSubject: three\r\n\r\nthird\r\n.\r\n+OK message 3 deleted\r\n\
         -ERR message 3 already deleted\r\n"
    );
}

const BATCH: &[u8] = b"CAPA\r\nUSER bob\r\nPASS wrong\r\nUSER bob\r\nPASS bob-pw\r\nSTAT\r\n\
LIST\r\nUIDL 2\r\nRETR 2\r\nTOP 1 0\r\nDELE 1\r\nBOGUS\r\nLIST 1\r\nRSET\r\nDELE 2\r\nNOOP\r\nQUIT\r\n";

#[test]
fn pipelined_batch_split_anywhere_gives_identical_output() {
    let whole = run_split(harness, BATCH, &[]);
    let text = String::from_utf8(whole.clone()).unwrap();
    assert!(
        text.ends_with("+OK postling POP3 server signing off (1 deleted, 2 left)\r\n"),
        "{text}"
    );
    assert_eq!(
        text.matches("\r\n.\r\n").count(),
        4,
        "CAPA, LIST, RETR, TOP"
    );
    for cut in 1..BATCH.len() {
        assert_eq!(run_split(harness, BATCH, &[cut]), whole, "cut at {cut}");
    }
    let every: Vec<usize> = (1..BATCH.len()).collect();
    assert_eq!(
        run_split(harness, BATCH, &every),
        whole,
        "one octet at a time"
    );
}

#[test]
fn lf_only_clients_are_understood() {
    let mut h = harness();
    let r = h.exchange(b"USER bob\nPASS bob-pw\nSTAT\n");
    assert!(String::from_utf8(r).unwrap().ends_with("+OK 3 100\r\n"));
}

#[test]
fn full_input_buffer_never_stalls() {
    // Every state gets MAX_UNIT octets without a line end; the harness asserts the contract.
    let mut h = harness();
    h.send(&vec![b'a'; limits::MAX_UNIT]);
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(h.pending_input(), 0);
    let mut h = harness();
    say(&mut h, "AUTH PLAIN");
    h.send(&vec![b'A'; limits::MAX_UNIT]);
    assert_eq!(h.run(), Stop::NeedInput);
    assert_eq!(say(&mut h, ""), "-ERR line too long\r\n");
    let mut h = logged_in();
    h.send(&vec![b'a'; limits::IN_BUF]);
    assert_eq!(h.run(), Stop::NeedInput);
}

#[test]
fn dialog_transcripts() {
    dialog::run_all("pop3", session);
}

#[test]
fn dialog_runner_rejects_wrong_transcripts() {
    const GREETING: &str = "S: +OK pop.example.test POP3 postling ready\n";
    let bad = [
        "S: +OK wrong greeting\n".to_string(),
        // The delay is not in the transcript.
        format!(
            "@user bob pw\n{GREETING}C: USER bob\nS: +OK send PASS\nC: PASS x\nS: -ERR [AUTH] Invalid user name or password\n"
        ),
        // A reply the transcript does not list.
        format!("{GREETING}C: NOOP\n"),
        format!("{GREETING}-- close\n"),
        format!("{GREETING}-- sleep\n"),
        format!("{GREETING}C: QUIT\nS: +OK postling POP3 server signing off\n-- deleted 1\n"),
        format!("{GREETING}X: what\n"),
        format!("{GREETING}@user late pw\n"),
        format!("{GREETING}C: bad \\q escape\n"),
    ];
    for script in &bad {
        assert!(
            dialog::run(script, session, usize::MAX).is_err(),
            "{script}"
        );
    }
    let good = format!(
        "{GREETING}C: QUIT\nS: +OK postling POP3 server signing off\n-- close\n-- no-update\n"
    );
    assert!(dialog::run(&good, session, 1).is_ok());
}

/// Before login a session may be evicted and is under the login deadline; after it, neither.
#[test]
fn holds_nothing_and_logged_in_follow_the_login() {
    let mut h = harness();
    assert!(h.session.holds_nothing() && !h.session.logged_in());
    say(&mut h, "USER bob");
    assert!(h.session.holds_nothing() && !h.session.logged_in());
    say(&mut h, "AUTH PLAIN");
    assert!(h.session.holds_nothing(), "waiting for the SASL response");
    say(&mut h, "*");
    let h = logged_in();
    assert!(!h.session.holds_nothing() && h.session.logged_in());
}

mod tls_rules {
    use super::*;
    use crate::buf::Buf;
    use crate::proto::pop_testing::dialog::settings;
    use std::time::SystemTime;

    fn ctx() -> Ctx {
        Ctx {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn run(s: &mut Pop3Session, input: &[u8]) -> (String, Next, usize) {
        let mut out = Buf::new_boxed();
        let mut host = FakeHost::new();
        let step = s.step(input, ctx(), &mut out, &mut host);
        (
            String::from_utf8_lossy(out.bytes()).into_owned(),
            step.next,
            step.consumed,
        )
    }

    fn with_stls() -> Rc<PopSettings> {
        let mut s = (*settings()).clone();
        s.stls = true;
        Rc::new(s)
    }

    #[test]
    fn stls_stops_at_its_line_and_capa_follows_the_rules() {
        let mut s = Pop3Session::new(with_stls()).with_clear_login(false);
        let (capa, _, _) = run(&mut s, b"CAPA\r\n");
        assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");
        assert!(!capa.contains("USER") && !capa.contains("SASL"), "{capa}");
        let (reply, _, _) = run(&mut s, b"USER bob\r\n");
        assert!(reply.starts_with("-ERR [AUTH] TLS required"), "{reply}");
        let (reply, next, consumed) = run(&mut s, b"STLS\r\nCAPA\r\n");
        assert_eq!(reply, "+OK Begin TLS negotiation\r\n");
        assert_eq!((next, consumed), (Next::StartTls, 6));
        s.tls_established();
        let (capa, _, _) = run(&mut s, b"CAPA\r\n");
        assert!(!capa.contains("STLS"), "{capa}");
        assert!(capa.contains("USER\r\nSASL PLAIN\r\n"), "{capa}");
        let (reply, _, _) = run(&mut s, b"STLS\r\n");
        assert_eq!(reply, "-ERR command not permitted when TLS active\r\n");
    }

    #[test]
    fn stls_without_a_certificate_or_with_arguments() {
        let mut s = Pop3Session::new(settings());
        let (capa, _, _) = run(&mut s, b"CAPA\r\n");
        assert!(!capa.contains("STLS") && capa.contains("USER"), "{capa}");
        let (reply, _, _) = run(&mut s, b"STLS\r\n");
        assert_eq!(reply, "-ERR STLS not available\r\n");
        let mut s = Pop3Session::new(with_stls());
        let (reply, next, _) = run(&mut s, b"STLS x\r\n");
        assert_eq!(reply, "-ERR syntax: STLS\r\n");
        // The reply goes out before anything else is read; no TLS is started.
        assert_eq!(next, Next::NeedOutput);
    }
}

/// Messages not in memory: each read that would wait is a `MailboxRequest::Warm` the session
/// waits for (nothing else is read or written meanwhile), and the transfer is byte for byte
/// the one a warm mailbox gives, for RETR and TOP, big and small.
#[test]
fn a_message_not_in_memory_is_read_in_and_sent_the_same() {
    let run = |cold: Option<u64>| {
        let mut host = host();
        host.add_body("big", Body::Synthetic { len: 100_000 });
        host.cold_window = cold;
        let mut h = Harness::new(session(), host);
        h.exchange(b"USER bob\r\nPASS bob-pw\r\n");
        let mut wire = Vec::new();
        for cmd in ["RETR 4", "RETR 2", "TOP 4 3", "RETR 1", "NOOP"] {
            wire.extend(h.exchange(format!("{cmd}\r\n").as_bytes()));
        }
        (wire, h.host.warms, h.mailbox_requests.clone())
    };
    let (warm, warms, _) = run(None);
    assert_eq!(warms, 0);
    let (cold, warms, requests) = run(Some(16 * 1024));
    assert_eq!(
        String::from_utf8_lossy(&cold),
        String::from_utf8_lossy(&warm)
    );
    assert!(warm.ends_with(b"+OK\r\n"));
    // The big message in 16 KiB windows, the others (and TOP's head) in one each.
    let windows = Body::Synthetic { len: 100_000 }
        .file_len()
        .div_ceil(16 * 1024);
    assert_eq!(u64::from(warms), windows + 3);
    let asked = requests
        .iter()
        .filter(|r| **r == MailboxRequest::Warm)
        .count();
    assert_eq!(asked as u64, windows + 3);
}

/// A RETR whose first bytes were not in memory and then cannot be read is answered `-ERR`
/// as before (nothing of it was written), and the session goes on.
#[test]
fn a_message_read_in_that_then_fails_is_answered_err() {
    let mut h = logged_in();
    h.host.cold_window = Some(4096);
    h.host.read_error_at = Some(0);
    assert_eq!(
        say(&mut h, "RETR 1"),
        "-ERR [SYS/TEMP] cannot read that message now\r\n"
    );
    assert_eq!(h.host.warms, 1);
    h.host.read_error_at = None;
    assert_eq!(say(&mut h, "NOOP"), "+OK\r\n");
}
