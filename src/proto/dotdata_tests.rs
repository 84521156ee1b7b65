use super::*;

/// Feeds `input` in the given chunk sizes (the last chunk takes the rest); returns the decoded
/// bytes, the total consumed, and how many `emit` calls were made.
fn run_chunks(start_crlf: bool, input: &[u8], chunks: &[usize]) -> (Vec<u8>, usize, bool) {
    let mut d = DotDecoder::new(start_crlf);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().copied();
    while pos < input.len() && !d.is_finished() {
        let n = sizes
            .next()
            .unwrap_or(input.len() - pos)
            .min(input.len() - pos);
        let r = d.decode(&input[pos..pos + n], &mut |b| out.extend_from_slice(b));
        assert!(r.consumed <= n);
        if !r.finished {
            assert_eq!(r.consumed, n, "a chunk without the end is consumed whole");
        }
        pos += r.consumed;
        if r.finished {
            break;
        }
    }
    (out, pos, d.is_finished())
}

fn decode_all(input: &[u8]) -> (Vec<u8>, usize, bool) {
    run_chunks(true, input, &[])
}

/// A line-at-a-time statement of the rules, for complete input (ends at a line end).
fn reference(start_crlf: bool, input: &[u8]) -> (Vec<u8>, Option<usize>) {
    let mut out = Vec::new();
    let mut pos = 0;
    let mut prev_crlf = start_crlf;
    while let Some(k) = input[pos..].iter().position(|&b| b == b'\n') {
        let lf = pos + k;
        let line = &input[pos..lf];
        let crlf = line.last() == Some(&b'\r');
        let mut content = if crlf { &line[..line.len() - 1] } else { line };
        if content == b"." && crlf && prev_crlf {
            return (out, Some(lf + 1));
        }
        if content.len() > 1 && content[0] == b'.' {
            content = &content[1..];
        }
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        prev_crlf = crlf;
        pos = lf + 1;
    }
    (out, None)
}

#[test]
fn plain_message_and_end() {
    let (out, used, done) = decode_all(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    assert_eq!(out, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(used, 23);
    assert!(done);
}

#[test]
fn empty_message_right_after_data() {
    let (out, used, done) = decode_all(b".\r\nQUIT\r\n");
    assert_eq!(out, b"");
    assert_eq!(used, 3);
    assert!(done);
}

#[test]
fn data_command_ended_in_bare_lf_so_first_dot_line_is_data() {
    let (out, _, done) = run_chunks(false, b".\r\n.\r\n", &[]);
    assert_eq!(out, b".\r\n");
    assert!(done);
}

#[test]
fn pipelined_commands_after_the_end_are_left() {
    let input = b"a\r\n.\r\nMAIL FROM:<x@y>\r\n";
    let (out, used, done) = decode_all(input);
    assert_eq!(out, b"a\r\n");
    assert!(done);
    assert_eq!(&input[used..], b"MAIL FROM:<x@y>\r\n");
}

#[test]
fn dot_unstuffing() {
    let (out, _, _) = decode_all(b"..leading dot\r\n...\r\n..\r\n.x\r\n.\r\n");
    assert_eq!(out, b".leading dot\r\n..\r\n.\r\nx\r\n");
}

#[test]
fn dot_unstuffing_after_bare_lf_line() {
    let (out, _, _) = decode_all(b"a\n..b\n.\r\n.\r\n");
    assert_eq!(out, b"a\r\n.b\r\n.\r\n");
}

#[test]
fn bare_lf_is_stored_as_crlf() {
    let (out, _, done) = decode_all(b"one\ntwo\n\nthree\r\n.\r\n");
    assert_eq!(out, b"one\r\ntwo\r\n\r\nthree\r\n");
    assert!(done);
}

#[test]
fn bare_cr_is_data() {
    let (out, _, _) = decode_all(b"a\rb\r\r\n\r.\r\n.\r\n");
    assert_eq!(out, b"a\rb\r\r\n\r.\r\n");
}

#[test]
fn smuggling_lf_dot_lf_is_a_line() {
    let (out, _, done) = decode_all(b"one\n.\nMAIL FROM:<evil@example.org>\r\n");
    assert_eq!(out, b"one\r\n.\r\nMAIL FROM:<evil@example.org>\r\n");
    assert!(!done);
}

#[test]
fn smuggling_lf_dot_crlf_is_a_line() {
    let (out, _, done) = decode_all(b"two\n.\r\nRCPT TO:<bob@example.test>\r\n");
    assert_eq!(out, b"two\r\n.\r\nRCPT TO:<bob@example.test>\r\n");
    assert!(!done);
}

#[test]
fn smuggling_crlf_dot_lf_is_a_line() {
    let (out, _, done) = decode_all(b"x\r\n.\nDATA\r\n");
    assert_eq!(out, b"x\r\n.\r\nDATA\r\n");
    assert!(!done);
}

#[test]
fn smuggling_cr_dot_cr_is_data() {
    let (out, _, done) = decode_all(b"three\r.\rDATA\r\n");
    assert_eq!(out, b"three\r.\rDATA\r\n");
    assert!(!done);
}

#[test]
fn dot_cr_then_more_is_unstuffed_data() {
    let (out, _, _) = decode_all(b".\rX\r\n.\r\r\n.\r\n");
    assert_eq!(out, b"\rX\r\n\r\r\n");
}

#[test]
fn integration_smuggling_vector() {
    // The data of test_smuggling_vectors_and_long_lines_raw in tests/integration/test_smtp.py.
    let long_line = vec![b'L'; 20000];
    let mut data = Vec::new();
    data.extend_from_slice(b"Subject: smuggle\r\n\r\n");
    data.extend_from_slice(b"one\n.\nMAIL FROM:<evil@example.org>\r\n");
    data.extend_from_slice(b"two\n.\r\nRCPT TO:<bob@example.test>\r\n");
    data.extend_from_slice(b"three\r.\rDATA\r\n");
    data.extend_from_slice(&long_line);
    data.extend_from_slice(b"\r\n..leading dot\r\n.\r\n");
    let mut expected = Vec::new();
    expected.extend_from_slice(b"Subject: smuggle\r\n\r\n");
    expected.extend_from_slice(b"one\r\n.\r\nMAIL FROM:<evil@example.org>\r\n");
    expected.extend_from_slice(b"two\r\n.\r\nRCPT TO:<bob@example.test>\r\n");
    expected.extend_from_slice(b"three\r.\rDATA\r\n");
    expected.extend_from_slice(&long_line);
    expected.extend_from_slice(b"\r\n.leading dot\r\n");
    for chunk in [1, 2, 3, 7, 512, 2048, 4096, usize::MAX] {
        let sizes = vec![chunk; data.len()];
        let (out, used, done) = run_chunks(true, &data, &sizes);
        assert_eq!(out, expected, "chunk size {chunk}");
        assert_eq!(used, data.len());
        assert!(done);
    }
}

#[test]
fn a_run_of_ordinary_lines_is_emitted_in_one_slice() {
    let mut d = DotDecoder::new(true);
    let mut calls = 0;
    let mut out = Vec::new();
    let input = b"line one\r\nline two\r\nline three\r\n";
    let r = d.decode(input, &mut |b| {
        calls += 1;
        out.extend_from_slice(b);
    });
    assert_eq!(r.consumed, input.len());
    assert_eq!(out, input);
    assert_eq!(calls, 1);
}

#[test]
fn long_line_streams_without_holding_it() {
    // Every chunk of a long line comes straight back out: nothing is retained.
    let mut d = DotDecoder::new(true);
    for _ in 0..100 {
        let mut got = 0;
        let r = d.decode(&[b'x'; 1000], &mut |b| got += b.len());
        assert_eq!((r.consumed, got), (1000, 1000));
    }
    let mut out = Vec::new();
    d.decode(b"\r\n.\r\n", &mut |b| out.extend_from_slice(b));
    assert_eq!(out, b"\r\n");
    assert!(d.is_finished());
}

#[test]
fn cr_at_chunk_end_pairs_with_lf_of_next_chunk() {
    let (out, _, done) = run_chunks(true, b"abc\r\n.\r\n", &[4, 1, 3]);
    assert_eq!(out, b"abc\r\n");
    assert!(done);
    let (out, _, done) = run_chunks(true, b"a\r\n.\r\n", &[4, 1]);
    assert_eq!(out, b"a\r\n");
    assert!(done);
}

#[test]
fn nothing_is_decoded_after_the_end() {
    let mut d = DotDecoder::new(true);
    let r = d.decode(b".\r\n", &mut |_| panic!("nothing to emit"));
    assert!(r.finished);
    let r = d.decode(b"more\r\n", &mut |_| panic!("finished"));
    assert_eq!(
        r,
        Decoded {
            consumed: 0,
            finished: true
        }
    );
}

#[test]
fn every_split_matches_whole() {
    let input: &[u8] = b"a\n.\n..b\r\n.\r\r\n\r.\r\n.c\n.\r\n..\r\n\n\r\n.\r\nrest";
    let (whole, used, done) = decode_all(input);
    assert!(done);
    for k in 0..=input.len() {
        let (out, u, d) = run_chunks(true, input, &[k]);
        assert_eq!(
            (out.as_slice(), u, d),
            (whole.as_slice(), used, done),
            "split at {k}"
        );
    }
    let (out, u, d) = run_chunks(true, input, &[1; 64]);
    assert_eq!((out, u, d), (whole, used, done));
}

/// A tiny deterministic generator (xorshift), so the randomised test is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_inputs_match_the_line_reference_at_random_splits() {
    let alphabet = b".\r\na";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let len = (rng.next() % 40) as usize;
        let mut input: Vec<u8> = (0..len)
            .map(|_| alphabet[(rng.next() % 4) as usize])
            .collect();
        input.extend_from_slice(b"\r\n.\r\n");
        let start = rng.next() % 2 == 0;
        let (want, want_end) = reference(start, &input);
        let want_end = want_end.expect("the appended CRLF.CRLF always ends the data");
        let sizes: Vec<usize> = (0..input.len())
            .map(|_| 1 + (rng.next() % 6) as usize)
            .collect();
        let (out, used, done) = run_chunks(start, &input, &sizes);
        assert!(done, "round {round}: {input:?}");
        assert_eq!(used, want_end, "round {round}: {input:?}");
        assert_eq!(out, want, "round {round}: {input:?}");
    }
}
