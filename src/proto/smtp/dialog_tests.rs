//! Whole dialogs from tests/dialogs/smtp/ (format in the README there), replayed whole, one
//! byte at a time and split at every byte boundary: the replies, the stored bytes and the host
//! calls must not depend on how the input arrives.

use super::tests::*;
use super::*;
use crate::date::rfc5322_date;

struct Transcript {
    name: &'static str,
    host: FakeHost,
    max_message_size: u64,
    client: Vec<u8>,
    server: Vec<u8>,
    stored: Vec<u8>,
    closes: bool,
}

/// Decodes the escapes and `{long:N:c}` / `{date}` placeholders of a transcript line.
fn unescape(text: &str, date: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{long:") {
            let end = after.find('}').expect("unterminated {long:N:c}");
            let (n, ch) = after[..end].split_once(':').expect("{long:N:c}");
            let n: usize = n.parse().expect("{long:N:c} count");
            out.extend(ch.repeat(n).bytes());
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix("{date}") {
            out.extend_from_slice(date.as_bytes());
            rest = after;
        } else if let Some(after) = rest.strip_prefix('\\') {
            let (bytes, skip): (Vec<u8>, usize) = match after.as_bytes().first() {
                Some(b'r') => (vec![b'\r'], 1),
                Some(b'n') => (vec![b'\n'], 1),
                Some(b't') => (vec![b'\t'], 1),
                Some(b'0') => (vec![0], 1),
                Some(b'\\') => (vec![b'\\'], 1),
                Some(b'x') => (
                    vec![u8::from_str_radix(&after[1..3], 16).expect("\\xHH")],
                    3,
                ),
                other => panic!("unknown escape \\{other:?}"),
            };
            out.extend(bytes);
            rest = &after[skip..];
        } else {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn spool_error(word: &str) -> SpoolError {
    match word {
        "full" => SpoolError::Full,
        "failed" => SpoolError::Failed("test".into()),
        other => panic!("unknown spool error {other:?}"),
    }
}

fn parse(name: &'static str, text: &str) -> Transcript {
    let date = rfc5322_date(arrival());
    let mut t = Transcript {
        name,
        host: FakeHost::new(),
        max_message_size: MAX_SIZE,
        client: Vec::new(),
        server: Vec::new(),
        stored: Vec::new(),
        closes: false,
    };
    for (n, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (kind, body) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{name}:{}: no directive", n + 1));
        let body = body.strip_prefix(' ').unwrap_or(body);
        match kind {
            "H" => {
                let (key, value) = body.split_once(' ').expect("H: key value");
                let host = std::mem::replace(&mut t.host, FakeHost::new());
                t.host = match key {
                    "unknown" => host.verdict(value, RcptVerdict::UnknownUser),
                    "relay" => host.verdict(value, RcptVerdict::RelayDenied),
                    "tempfail" => host.verdict(value, RcptVerdict::TempFail),
                    _ => {
                        let mut host = host;
                        match key {
                            "max_message_size" => t.max_message_size = value.parse().unwrap(),
                            "begin" => host.begin_error = Some(spool_error(value)),
                            "commit" => host.commit_error = Some(spool_error(value)),
                            "durable" => host.durable_error = Some(spool_error(value)),
                            other => panic!("{name}:{}: unknown H: {other}", n + 1),
                        }
                        host
                    }
                };
            }
            "C" => {
                t.client.extend(unescape(body, &date));
                t.client.extend_from_slice(b"\r\n");
            }
            "B" => t.client.extend(unescape(body, &date)),
            "S" => {
                t.server.extend(unescape(body, &date));
                t.server.extend_from_slice(b"\r\n");
            }
            "M" => {
                t.stored.extend(unescape(body, &date));
                t.stored.extend_from_slice(b"\r\n");
            }
            "P" => t.stored.extend(unescape(body, &date)),
            "E" => t.closes = true,
            other => panic!("{name}:{}: unknown directive {other:?}", n + 1),
        }
    }
    t
}

fn transcripts() -> Vec<Transcript> {
    vec![
        parse(
            "simple.txt",
            include_str!("../../../tests/dialogs/smtp/simple.txt"),
        ),
        parse(
            "whole.txt",
            include_str!("../../../tests/dialogs/smtp/whole.txt"),
        ),
        parse(
            "errors.txt",
            include_str!("../../../tests/dialogs/smtp/errors.txt"),
        ),
    ]
}

fn fresh_host(t: &Transcript) -> FakeHost {
    let mut host = FakeHost::new();
    host.verdicts = t.host.verdicts.clone();
    host.begin_error = t.host.begin_error.clone();
    host.commit_error = t.host.commit_error.clone();
    host.durable_error = t.host.durable_error.clone();
    host
}

/// Plays the client bytes split at the given offsets.
fn play(t: &Transcript, splits: &[usize]) -> Driver {
    let mut d = Driver::with_settings(fresh_host(t), settings(t.max_message_size));
    let mut from = 0;
    for &at in splits.iter().chain(std::iter::once(&t.client.len())) {
        d.send(&t.client[from..at]);
        from = at;
    }
    d
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_same(t: &Transcript, d: &Driver, reference: &Driver, how: &str) {
    assert_eq!(
        show(&d.written),
        show(&reference.written),
        "{}: {how}",
        t.name
    );
    assert_eq!(d.host.calls, reference.host.calls, "{}: {how}", t.name);
    assert_eq!(d.closed, reference.closed, "{}: {how}", t.name);
}

#[test]
fn transcripts_play_as_written() {
    for t in transcripts() {
        let d = play(&t, &[]);
        assert_eq!(show(&d.written), show(&t.server), "{}: replies", t.name);
        assert_eq!(
            show(&d.host.appended()),
            show(&t.stored),
            "{}: stored",
            t.name
        );
        assert_eq!(d.closed, t.closes, "{}: close", t.name);
    }
}

#[test]
fn transcripts_fed_one_byte_at_a_time() {
    for t in transcripts() {
        let reference = play(&t, &[]);
        let mut d = Driver::with_settings(fresh_host(&t), settings(t.max_message_size));
        d.send_chunked(&t.client, 1);
        assert_same(&t, &d, &reference, "one byte at a time");
    }
}

#[test]
fn transcripts_split_at_every_byte_boundary() {
    for t in transcripts() {
        let reference = play(&t, &[]);
        for at in 0..=t.client.len() {
            let d = play(&t, &[at]);
            assert_same(&t, &d, &reference, &format!("split at {at}"));
        }
    }
}

#[test]
fn transcripts_split_at_many_random_places() {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for t in transcripts() {
        let reference = play(&t, &[]);
        for round in 0..200 {
            let len = t.client.len() as u64;
            let mut splits: Vec<usize> = (0..1 + next() % 40)
                .map(|_| (next() % (len + 1)) as usize)
                .collect();
            splits.sort_unstable();
            let d = play(&t, &splits);
            assert_same(&t, &d, &reference, &format!("round {round}: {splits:?}"));
        }
    }
}
