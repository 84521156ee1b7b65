//! Runs dialog transcripts (tests/dialogs/pop3/*.txt, tests/dialogs/pop2/*.txt) against a
//! session and a `FakeHost`. The format is documented at the top of every transcript and in
//! tests/dialogs/README.md:
//!
//! ```text
//! # comment (also blank lines)
//! @user NAME PASSWORD       the host knows this user          (before the first C/S line)
//! @message UID TEXT         a message file with these bytes   (before the first C/S line)
//! @open-error in-use|temp|perm   the next mailbox_open fails
//! @update-error temp|perm   mailbox_update fails
//! @throttled                authenticate answers Throttled
//! @too-many-attempts        authenticate answers TooManyAttempts
//! @read-error OFFSET        reading any message at or past OFFSET fails
//! C: TEXT                   the client sends TEXT + CRLF (`C:` alone: an empty line)
//! C| TEXT                   the client sends exactly TEXT
//! S: TEXT                   the server sends TEXT + CRLF next (`S:` alone: CRLF)
//! S| TEXT                   the server sends exactly TEXT next
//! -- sleep                  the session now waits out the failure delay; it passes
//! -- close                  the session has closed the connection
//! -- deleted N...           QUIT's UPDATE removed these message numbers (`none`: nothing)
//! -- no-update              no UPDATE has happened
//! ```
//! TEXT takes the escapes `\r`, `\n`, `\t`, `\\`, `\s` (a space, for trailing spaces) and
//! `\xHH`. Output the script does not expect is an error, so every reply is in the transcript.

use std::rc::Rc;
use std::time::Duration;

use super::{FakeHost, Harness, PopSession, Stop};
use crate::mail::MailboxError;
use crate::proto::pop3::PopSettings;

/// The delay the transcripts run with.
pub const DELAY: Duration = Duration::from_secs(2);

pub fn settings() -> Rc<PopSettings> {
    Rc::new(PopSettings {
        hostname: "pop.example.test".to_string(),
        auth_failure_delay: DELAY,
        stls: false,
    })
}

/// Decodes the escapes of a TEXT field.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b's') => out.push(b' '),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let hex = std::str::from_utf8(&hex).map_err(|e| e.to_string())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("\\x{hex}: {e}"))?);
            }
            other => return Err(format!("bad escape \\{:?}", other.map(char::from))),
        }
    }
    Ok(out)
}

fn mailbox_error(word: &str) -> Result<MailboxError, String> {
    match word {
        "in-use" => Ok(MailboxError::InUse),
        "temp" => Ok(MailboxError::Temporary("injected".into())),
        "perm" => Ok(MailboxError::Permanent("injected".into())),
        _ => Err(format!("unknown mailbox error {word:?}")),
    }
}

fn show(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Runs one transcript, sending client bytes `chunk` octets at a time (running the session
/// after each piece). Returns the whole wire on success.
pub fn run<S: PopSession>(
    script: &str,
    make: impl Fn() -> S,
    chunk: usize,
) -> Result<Vec<u8>, String> {
    let mut host = Some(FakeHost::new());
    let mut h: Option<Harness<S>> = None;
    let mut matched = 0;
    let mut sleeping = false;
    for (no, raw_line) in script.lines().enumerate() {
        let at = |msg: String| format!("line {}: {msg}", no + 1);
        let line = raw_line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(directive) = line.strip_prefix('@') {
            let host = host
                .as_mut()
                .ok_or_else(|| at("@ lines go before the dialog".into()))?;
            let mut words = directive.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("user"), Some(name), Some(pw)) => host.add_user(name, pw),
                (Some("message"), Some(uid), text) => {
                    host.add_message(uid, &unescape(text.unwrap_or("")).map_err(at)?)
                }
                (Some("open-error"), Some(kind), None) => {
                    host.open_error = Some(mailbox_error(kind).map_err(at)?)
                }
                (Some("update-error"), Some(kind), None) => {
                    host.update_error = Some(mailbox_error(kind).map_err(at)?)
                }
                (Some("throttled"), None, None) => host.throttled = true,
                (Some("too-many-attempts"), None, None) => host.too_many_attempts = true,
                (Some("read-error"), Some(offset), None) => {
                    host.read_error_at = Some(offset.parse().map_err(|e| at(format!("{e}")))?)
                }
                _ => return Err(at(format!("unknown directive {line:?}"))),
            }
            continue;
        }
        let h = match h.as_mut() {
            Some(h) => h,
            None => {
                let mut fresh = Harness::new(make(), host.take().unwrap_or_default());
                fresh.auto_wake = false;
                h.insert(fresh)
            }
        };
        // `S:` / `C:` alone is an empty line (editors strip the trailing space of `S: `).
        let (tag, text) = match line {
            "S:" => ("S: ", ""),
            "C:" => ("C: ", ""),
            _ => (line.get(..3).unwrap_or(line), line.get(3..).unwrap_or("")),
        };
        match tag {
            "C: " | "C| " => {
                let mut bytes = unescape(text).map_err(at)?;
                if tag == "C: " {
                    bytes.extend_from_slice(b"\r\n");
                }
                for piece in bytes.chunks(chunk.max(1)) {
                    h.send(piece);
                    if !sleeping && !h.closed && matches!(h.run(), Stop::Sleep(_)) {
                        sleeping = true;
                    }
                }
            }
            "S: " | "S| " => {
                let mut want = unescape(text).map_err(at)?;
                if tag == "S: " {
                    want.extend_from_slice(b"\r\n");
                }
                if !sleeping && !h.closed && matches!(h.run(), Stop::Sleep(_)) {
                    sleeping = true;
                }
                let got = h.wire.get(matched..).unwrap_or_default();
                if !got.starts_with(&want) {
                    let shown = &got[..got.len().min(want.len() + 40)];
                    return Err(at(format!(
                        "expected {:?}\n got {:?}{}",
                        show(&want),
                        show(shown),
                        if sleeping {
                            " (session is sleeping)"
                        } else {
                            ""
                        }
                    )));
                }
                matched += want.len();
            }
            "-- " => {
                let mut words = text.split(' ');
                match words.next() {
                    Some("sleep") => {
                        if !sleeping {
                            match h.run() {
                                Stop::Sleep(_) => {}
                                other => {
                                    return Err(at(format!("expected a sleep, got {other:?}")));
                                }
                            }
                        }
                        if h.sleeps.last() != Some(&DELAY) {
                            return Err(at(format!("slept {:?}, not {DELAY:?}", h.sleeps.last())));
                        }
                        if h.wire.len() != matched {
                            return Err(at(format!(
                                "output before the delay was over: {:?}",
                                show(&h.wire[matched..])
                            )));
                        }
                        sleeping = false;
                        h.wake_after(DELAY);
                        if let Stop::Sleep(_) = h.run() {
                            sleeping = true;
                        }
                    }
                    Some("close") => {
                        if !sleeping && !h.closed {
                            h.run();
                        }
                        if !h.closed {
                            return Err(at("the session did not close".into()));
                        }
                    }
                    Some("deleted") => {
                        let want: Vec<usize> = words
                            .filter(|w| *w != "none")
                            .map(|w| w.parse::<usize>().map(|n| n - 1))
                            .collect::<Result<_, _>>()
                            .map_err(|e| at(format!("{e}")))?;
                        if h.host.updates.last() != Some(&want) {
                            return Err(at(format!("updates {:?}", h.host.updates)));
                        }
                    }
                    Some("no-update") => {
                        if !h.host.updates.is_empty() {
                            return Err(at(format!("updates {:?}", h.host.updates)));
                        }
                    }
                    _ => return Err(at(format!("unknown check {line:?}"))),
                }
            }
            _ => return Err(at(format!("cannot parse {line:?}"))),
        }
    }
    let h = h.ok_or("empty transcript")?;
    if h.wire.len() != matched {
        return Err(format!(
            "unexpected output at the end: {:?}",
            show(&h.wire[matched..])
        ));
    }
    Ok(h.wire)
}

/// Every `*.txt` under `tests/dialogs/<dir>`, sorted, with its text.
pub fn transcripts(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/dialogs")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), text)
        })
        .collect()
}

/// Runs every transcript of `dir` whole and in pieces of 1 to 7 octets; each must pass and
/// all splits must give the same wire.
pub fn run_all<S: PopSession>(dir: &str, make: impl Fn() -> S + Copy) {
    let all = transcripts(dir);
    assert!(!all.is_empty(), "no transcripts in tests/dialogs/{dir}");
    for (name, text) in all {
        let whole = run(&text, make, usize::MAX).unwrap_or_else(|e| panic!("{dir}/{name}: {e}"));
        for chunk in 1..=7 {
            let split = run(&text, make, chunk)
                .unwrap_or_else(|e| panic!("{dir}/{name} in {chunk}-octet pieces: {e}"));
            assert_eq!(split, whole, "{dir}/{name}: {chunk}-octet pieces differ");
        }
    }
}
