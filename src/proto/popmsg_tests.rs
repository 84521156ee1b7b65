use super::*;
use crate::proto::pop_testing::{Body, FakeHost, wire_size};

/// The odd file of tests/integration/test_pop.py::test_byte_exact_round_trip_of_odd_files.
const ODD: &[u8] = b"Subject: odd\n\n.\n..\n.x\nbare lf\ncrlf line\r\nno final newline";
const ODD_WIRE: &[u8] =
    b"Subject: odd\r\n\r\n..\r\n...\r\n..x\r\nbare lf\r\ncrlf line\r\nno final newline\r\n.\r\n";

fn host_with(raw: &[u8]) -> FakeHost {
    let mut h = FakeHost::new();
    h.add_message("u1", raw);
    h
}

/// Runs a stream to its end, draining the output whenever it says Full (and, with
/// `squeeze`, leaving only that much free space at the start of every fill).
fn run(host: &mut FakeHost, mut stream: MessageStream, squeeze: Option<usize>) -> (Vec<u8>, Fill) {
    let mut out = OutBuf::new_boxed();
    let mut wire = Vec::new();
    let squeeze_to = |out: &mut OutBuf| {
        if let Some(free) = squeeze {
            let filler = out.free().saturating_sub(free);
            out.push(&vec![b'#'; filler]);
        }
    };
    squeeze_to(&mut out);
    let first = stream.start(host, &mut out, b"+OK\r\n");
    let mut last = match first {
        Ok(f) => f,
        Err(e) => return (Vec::new(), Fill::Failed(e)),
    };
    let mut fills = 0;
    loop {
        wire.extend(out.bytes().iter().filter(|&&b| b != b'#'));
        out.clear();
        match last {
            Fill::Full => {
                fills += 1;
                assert!(fills < 1_000_000, "no progress");
                squeeze_to(&mut out);
                last = stream.fill(host, &mut out);
            }
            done => return (wire, done),
        }
    }
}

fn retr_wire(raw: &[u8], max_read: Option<usize>, squeeze: Option<usize>) -> Vec<u8> {
    let mut host = host_with(raw);
    host.max_read = max_read;
    let (wire, end) = run(&mut host, MessageStream::retr(0), squeeze);
    assert!(matches!(end, Fill::Done), "{end:?}");
    wire.strip_prefix(b"+OK\r\n")
        .expect("status first")
        .to_vec()
}

#[test]
fn odd_file_is_byte_exact_at_every_read_size() {
    assert_eq!(retr_wire(ODD, None, None), ODD_WIRE);
    for max_read in 1..=9 {
        assert_eq!(
            retr_wire(ODD, Some(max_read), None),
            ODD_WIRE,
            "reads of {max_read}"
        );
    }
    assert_eq!(wire_size(ODD), ODD_WIRE.len() as u64 - 2 - 3 - 3);
}

#[test]
fn line_end_and_dot_rules() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"\r\n", b"\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"a.b\n", b"a.b\r\n.\r\n"),
        (b"abc\r", b"abc\r\n.\r\n"),
        (b"a\rb\n", b"a\rb\r\n.\r\n"),
        (b"\n\n", b"\r\n\r\n.\r\n"),
        (b"x\r\r\n", b"x\r\r\n.\r\n"),
        (b"last", b"last\r\n.\r\n"),
    ];
    for (raw, want) in cases {
        for max_read in [None, Some(1), Some(2), Some(3)] {
            assert_eq!(
                retr_wire(raw, max_read, None),
                *want,
                "{:?} reads {max_read:?}",
                raw.escape_ascii().to_string()
            );
        }
    }
}

#[test]
fn squeezed_output_gives_the_same_bytes() {
    let mut raw = Vec::new();
    for i in 0..2000 {
        raw.extend_from_slice(if i % 3 == 0 { b".dot\n" } else { b"line\r\n" });
    }
    let whole = retr_wire(&raw, None, None);
    for free in [limits::REPLY_RESERVE, 600, 523, 517] {
        assert_eq!(retr_wire(&raw, None, Some(free)), whole, "free {free}");
    }
    assert_eq!(
        whole.len() as u64,
        wire_size(&raw) + 2000 / 3 + 1 + 3,
        "one extra dot per dotted line, then the terminator"
    );
}

#[test]
fn reads_are_small_and_bounded() {
    let mut host = FakeHost::new();
    host.add_body("big", Body::Synthetic { len: 1 << 20 });
    let (wire, end) = run(&mut host, MessageStream::retr(0), None);
    assert!(matches!(end, Fill::Done));
    assert!(host.largest_read_buf <= limits::POP_STREAM_CHUNK);
    assert_eq!(
        wire.len() as u64,
        5 + Body::Synthetic { len: 1 << 20 }.wire_size() + 2 + 3
    );
}

fn top_wire(raw: &[u8], lines: u64, max_read: Option<usize>) -> Vec<u8> {
    let mut host = host_with(raw);
    host.max_read = max_read;
    let (wire, end) = run(&mut host, MessageStream::top(0, lines), None);
    assert!(matches!(end, Fill::Done));
    wire.strip_prefix(b"+OK\r\n").unwrap().to_vec()
}

#[test]
fn top_sends_header_blank_line_and_k_lines() {
    let raw = b"A: 1\nB: 2\n\none\n.two\nthree\n";
    let cases: &[(u64, &[u8])] = &[
        (0, b"A: 1\r\nB: 2\r\n\r\n.\r\n"),
        (1, b"A: 1\r\nB: 2\r\n\r\none\r\n.\r\n"),
        (2, b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\n.\r\n"),
        (3, b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\nthree\r\n.\r\n"),
        (4, b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\nthree\r\n.\r\n"),
        (
            u64::MAX,
            b"A: 1\r\nB: 2\r\n\r\none\r\n..two\r\nthree\r\n.\r\n",
        ),
    ];
    for (k, want) in cases {
        for max_read in [None, Some(1), Some(4)] {
            assert_eq!(
                top_wire(raw, *k, max_read),
                *want,
                "k={k} reads {max_read:?}"
            );
        }
    }
}

#[test]
fn top_edge_shapes() {
    // CRLF blank line, split between reads.
    for max_read in [None, Some(1), Some(2), Some(5)] {
        assert_eq!(
            top_wire(b"A: 1\r\n\r\nbody\r\n", 0, max_read),
            b"A: 1\r\n\r\n.\r\n"
        );
    }
    // No blank line at all: everything is header.
    assert_eq!(top_wire(b"A: 1\nB: 2", 0, None), b"A: 1\r\nB: 2\r\n.\r\n");
    // Body without a final newline.
    assert_eq!(top_wire(b"A: 1\n\nx", 5, None), b"A: 1\r\n\r\nx\r\n.\r\n");
    // A header line that is only spaces is not the blank line.
    assert_eq!(
        top_wire(b"A: 1\n \n\nb\n", 0, None),
        b"A: 1\r\n \r\n\r\n.\r\n"
    );
    // Empty message.
    assert_eq!(top_wire(b"", 0, None), b".\r\n");
}

fn pop2_wire(raw: &[u8], size: u64, max_read: Option<usize>) -> (Vec<u8>, Fill) {
    let mut host = host_with(raw);
    host.max_read = max_read;
    let (wire, end) = run(&mut host, MessageStream::pop2(0, size), None);
    (wire.strip_prefix(b"+OK\r\n").unwrap_or(&wire).to_vec(), end)
}

#[test]
fn pop2_sends_exactly_size_octets_unstuffed() {
    let size = wire_size(ODD);
    for max_read in [None, Some(1), Some(3)] {
        let (wire, end) = pop2_wire(ODD, size, max_read);
        assert!(matches!(end, Fill::Done));
        assert_eq!(
            wire,
            b"Subject: odd\r\n\r\n.\r\n..\r\n.x\r\nbare lf\r\ncrlf line\r\nno final newline"
        );
        assert_eq!(wire.len() as u64, size);
    }
    // A file longer than its listed size (it changed) is cut at the size, even mid-CRLF.
    let (wire, end) = pop2_wire(b"ab\ncd\n", 3, None);
    assert!(matches!(end, Fill::Done));
    assert_eq!(wire, b"ab\r");
    // Size zero sends nothing.
    let (wire, end) = pop2_wire(b"ab\n", 0, None);
    assert!(matches!(end, Fill::Done));
    assert!(wire.is_empty());
    // A file shorter than promised cannot be completed.
    let (_, end) = pop2_wire(b"ab\n", 10, None);
    assert!(matches!(end, Fill::Failed(e) if e.kind() == io::ErrorKind::UnexpectedEof));
}

#[test]
fn read_errors() {
    // On the first read: nothing is written, the caller can still answer -ERR.
    let mut host = host_with(b"hello\n");
    host.read_error_at = Some(0);
    let mut out = OutBuf::new_boxed();
    let r = MessageStream::retr(0).start(&mut host, &mut out, b"+OK\r\n");
    assert!(r.is_err());
    assert!(out.is_empty());
    // Later: Failed, after part of the message went out.
    let mut raw = Vec::new();
    for _ in 0..5000 {
        raw.extend_from_slice(b"0123456789\n");
    }
    let mut host = host_with(&raw);
    host.read_error_at = Some(20_000);
    let (wire, end) = run(&mut host, MessageStream::retr(0), None);
    assert!(matches!(end, Fill::Failed(_)), "{end:?}");
    assert!(wire.len() > 20_000 && !wire.ends_with(b"\r\n.\r\n"));
}

#[test]
fn stream_state_is_small() {
    assert!(
        std::mem::size_of::<MessageStream>() <= 96,
        "{}",
        std::mem::size_of::<MessageStream>()
    );
}
