//! The message a local program hands to `sendmail`, as pure functions over bytes: line ending
//! normalisation and the end-of-input dot, the header section (fields, folding), recipient
//! addresses taken from To/Cc/Bcc (`-t`), Bcc removal, and the header fields added when
//! missing (From, Date, Message-ID). The daemon's pickup checks drop files with the same
//! header parser.

/// Turns standard input into CRLF lines, incrementally and bounded: LF and CRLF both end a
/// line (a bare CR inside a line is kept), a last line without an ending gets CRLF, and unless
/// `ignore_dots` a line holding only `.` ends the input (Sendmail's rule; `-i`/`-oi` turn it off).
pub struct Normaliser {
    out: Vec<u8>,
    /// The current line so far (without its LF).
    line: Vec<u8>,
    ignore_dots: bool,
    /// The dot line was seen: everything after it is ignored.
    ended: bool,
    /// The first line is dropped if it is an mbox `From ` line.
    first: bool,
}

impl Normaliser {
    pub fn new(ignore_dots: bool) -> Normaliser {
        Normaliser {
            out: Vec::new(),
            line: Vec::new(),
            ignore_dots,
            ended: false,
            first: true,
        }
    }

    /// Takes more input. Returns false once the input has ended (a dot line), so the caller
    /// stops reading.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if self.ended {
                return false;
            }
            if b == b'\n' {
                self.end_line();
            } else {
                self.line.push(b);
            }
        }
        !self.ended
    }

    /// Bytes of output so far (the caller's size bound), plus the line in progress.
    pub fn len(&self) -> usize {
        self.out.len() + self.line.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let first = std::mem::replace(&mut self.first, false);
        if !self.ignore_dots && line == b"." {
            self.ended = true;
            return;
        }
        if first && line.starts_with(b"From ") {
            return;
        }
        self.out.extend_from_slice(&line);
        self.out.extend_from_slice(b"\r\n");
        line.clear();
        self.line = line;
    }

    /// The normalised message.
    pub fn finish(mut self) -> Vec<u8> {
        if !self.ended && !self.line.is_empty() {
            self.end_line();
        }
        self.out
    }
}

/// One header field: its name and its whole raw text (name, colon, value, folds, final CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub raw: Vec<u8>,
}

impl Field {
    /// The value unfolded (CRLF before whitespace removed), without the name and colon and
    /// the final CRLF; lossy for bytes that are not UTF-8.
    pub fn value(&self) -> String {
        let raw = self.raw.get(self.name.len() + 1..).unwrap_or_default();
        let raw = raw.strip_suffix(b"\r\n").unwrap_or(raw);
        let mut v = Vec::with_capacity(raw.len());
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            if b == b'\r' && raw.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            v.push(b);
            i += 1;
        }
        String::from_utf8_lossy(&v).trim().to_string()
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A message split into its header fields and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split<'a> {
    pub fields: Vec<Field>,
    /// The body, after the empty line (or from the first line that is not a header field).
    pub body: &'a [u8],
    /// The header section ended with an empty line (false: it ended at a line that is not a
    /// field, or at the end of the message).
    pub separated: bool,
}

/// A field name: printable ASCII except the colon (RFC 5322 §3.6.8).
fn field_name(line: &[u8]) -> Option<&str> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line.get(..colon)?;
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    std::str::from_utf8(name).ok()
}

/// Splits a CRLF message into fields and body. A line that is neither a field nor a
/// continuation ends the header section there (it is the first line of the body).
pub fn split(msg: &[u8]) -> Split<'_> {
    let mut fields: Vec<Field> = Vec::new();
    let mut pos = 0;
    while pos < msg.len() {
        let rest = msg.get(pos..).unwrap_or_default();
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |p| p + 2);
        let line = rest.get(..end).unwrap_or_default();
        if line == b"\r\n" {
            return Split {
                fields,
                body: msg.get(pos + 2..).unwrap_or_default(),
                separated: true,
            };
        }
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if continuation {
            if let Some(last) = fields.last_mut() {
                last.raw.extend_from_slice(line);
                pos += end;
                continue;
            }
        } else if let Some(name) = field_name(line) {
            fields.push(Field {
                name: name.to_string(),
                raw: line.to_vec(),
            });
            pos += end;
            continue;
        }
        break;
    }
    Split {
        fields,
        body: msg.get(pos..).unwrap_or_default(),
        separated: false,
    }
}

/// The addresses of an RFC 5322 address-list (To, Cc, Bcc): display names, comments and
/// group names dropped, angle brackets and source routes removed, empty groups
/// (`undisclosed-recipients:;`) contributing nothing.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut text = String::new(); // outside comments and angle brackets
    let mut angle: Option<String> = None;
    let mut in_angle = false;
    let mut depth = 0usize; // comment nesting
    let mut quoted = false;
    let mut chars = value.chars();
    let finish = |text: &mut String, angle: &mut Option<String>, out: &mut Vec<String>| {
        let addr = match angle.take() {
            Some(a) => a,
            None => text.split_whitespace().collect::<String>(),
        };
        // A source route (`@a,@b:user@c`) is obsolete: only the mailbox counts.
        let addr = match addr.strip_prefix('@').and_then(|r| r.split_once(':')) {
            Some((_, mailbox)) => mailbox.to_string(),
            None => addr,
        };
        if !addr.trim().is_empty() {
            out.push(addr.trim().to_string());
        }
        text.clear();
    };
    while let Some(c) = chars.next() {
        if depth > 0 {
            match c {
                '\\' => {
                    chars.next();
                }
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            continue;
        }
        let target = if in_angle {
            angle.get_or_insert_with(String::new)
        } else {
            &mut text
        };
        if quoted {
            target.push(c);
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        target.push(n);
                    }
                }
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                target.push(c);
            }
            '(' => depth = 1,
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            ',' if !in_angle => finish(&mut text, &mut angle, &mut out),
            ':' if !in_angle => text.clear(), // a group's display name
            ';' if !in_angle => finish(&mut text, &mut angle, &mut out),
            c if in_angle && c.is_whitespace() => {}
            _ => target.push(c),
        }
    }
    finish(&mut text, &mut angle, &mut out);
    out
}

/// What `complete` adds to a message that lacks it.
pub struct Additions<'a> {
    /// `Full Name <user@domain>` or `user@domain`.
    pub from: &'a str,
    /// RFC 5322 date-time.
    pub date: &'a str,
    /// `<unique@hostname>`.
    pub message_id: &'a str,
}

/// The message as stored: every Bcc field removed (the recipients it named still get the
/// message), From, Date and Message-ID added at the end of the header section when missing,
/// and an empty line between header and body even if the input had none.
pub fn complete(msg: &[u8], add: &Additions<'_>) -> Vec<u8> {
    let s = split(msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    for f in s.fields.iter().filter(|f| !f.is("Bcc")) {
        out.extend_from_slice(&f.raw);
        if !f.raw.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    let has = |name: &str| s.fields.iter().any(|f| f.is(name));
    if !has("From") {
        out.extend_from_slice(format!("From: {}\r\n", add.from).as_bytes());
    }
    if !has("Date") {
        out.extend_from_slice(format!("Date: {}\r\n", add.date).as_bytes());
    }
    if !has("Message-ID") {
        out.extend_from_slice(format!("Message-ID: {}\r\n", add.message_id).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(s.body);
    out
}

/// `Name <addr>`, the name quoted when it holds anything but letters, digits, spaces and the
/// atext specials that need no quoting.
pub fn from_value(full_name: Option<&str>, addr: &str) -> String {
    let Some(name) = full_name
        .map(|n| n.replace(['\r', '\n'], " "))
        .filter(|n| !n.trim().is_empty())
    else {
        return addr.to_string();
    };
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        format!("{} <{addr}>", name.trim())
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\" <{addr}>")
    }
}

/// A header section a drop file may carry: fields only (no stray line), ended by an empty
/// line, with a From field. `Err` names what is wrong.
pub fn check_header(msg: &[u8]) -> Result<(), String> {
    let s = split(msg);
    if !s.separated {
        return Err("the header section does not end with an empty line".into());
    }
    if !s.fields.iter().any(|f| f.is("From")) {
        return Err("no From: header".into());
    }
    if s.fields.iter().any(|f| f.raw.contains(&0)) {
        return Err("a NUL byte in the header".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(input: &[u8], ignore_dots: bool) -> Vec<u8> {
        let mut n = Normaliser::new(ignore_dots);
        n.push(input);
        n.finish()
    }

    #[test]
    fn line_endings_become_crlf_and_a_bare_cr_stays() {
        assert_eq!(norm(b"a\nb\r\nc\rd\ne", true), b"a\r\nb\r\nc\rd\r\ne\r\n");
        assert_eq!(norm(b"", true), b"");
        assert_eq!(norm(b"\n\n", true), b"\r\n\r\n");
    }

    #[test]
    fn a_dot_line_ends_input_unless_ignored() {
        let mut n = Normaliser::new(false);
        assert!(n.push(b"Subject: x\n\nbody\n"));
        assert!(!n.push(b".\nafter\n"));
        assert_eq!(n.finish(), b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(norm(b"a\r\n.\r\nb\n", false), b"a\r\n");
        assert_eq!(norm(b"a\n.\nb\n", true), b"a\r\n.\r\nb\r\n");
        // Only a lone dot: ".." and ". " are data.
        assert_eq!(norm(b"..\n. \n", false), b"..\r\n. \r\n");
        // Split across pushes.
        let mut n = Normaliser::new(false);
        n.push(b"x\n.");
        n.push(b"\ny\n");
        assert_eq!(n.finish(), b"x\r\n");
    }

    #[test]
    fn an_mbox_from_line_at_the_top_is_dropped() {
        assert_eq!(
            norm(b"From alice Mon Jan 1\nSubject: s\n", true),
            b"Subject: s\r\n"
        );
        assert_eq!(norm(b"a\nFrom b\n", true), b"a\r\nFrom b\r\n");
    }

    #[test]
    fn split_handles_folds_and_a_missing_separator() {
        let m = b"To: a@x.test,\r\n\tb@x.test\r\nSubject: hi\r\n\r\nbody\r\n";
        let s = split(m);
        assert!(s.separated);
        assert_eq!(s.fields.len(), 2);
        assert_eq!(s.fields[0].value(), "a@x.test,\tb@x.test");
        assert_eq!(s.body, b"body\r\n");
        let s = split(b"Subject: hi\r\nthis is not a header\r\n");
        assert!(!s.separated);
        assert_eq!(s.fields.len(), 1);
        assert_eq!(s.body, b"this is not a header\r\n");
        // A continuation line first is body, not a field.
        assert_eq!(split(b" x\r\n").fields.len(), 0);
    }

    #[test]
    fn addresses_of_to_cc_and_bcc() {
        assert_eq!(
            addresses("Alice <alice@x.test>, bob@x.test (Bob), \"Smith, C\" <c@x.test>"),
            ["alice@x.test", "bob@x.test", "c@x.test"]
        );
        assert_eq!(
            addresses("team: a@x.test, B <b@x.test>;, d@x.test"),
            ["a@x.test", "b@x.test", "d@x.test"]
        );
        assert!(addresses("undisclosed-recipients:;").is_empty());
        assert!(addresses("").is_empty());
        assert_eq!(addresses("<@relay.test:e@x.test>"), ["e@x.test"]);
        assert_eq!(addresses("(a (nested) comment) f@x.test"), ["f@x.test"]);
        assert_eq!(addresses("\"odd:name\"@x.test"), ["\"odd:name\"@x.test"]);
        assert_eq!(addresses("root"), ["root"]);
    }

    #[test]
    fn folded_multiple_to_and_cc_fields_and_bcc_removal() {
        let m = b"To: a@x.test,\r\n b@x.test\r\nCc: c@x.test\r\nTo: d@x.test\r\nBcc: secret@x.test,\r\n\tother@x.test\r\nSubject: s\r\n\r\nhi\r\n";
        let s = split(m);
        let rcpts: Vec<String> = s
            .fields
            .iter()
            .filter(|f| f.is("to") || f.is("cc") || f.is("bcc"))
            .flat_map(|f| addresses(&f.value()))
            .collect();
        assert_eq!(
            rcpts,
            [
                "a@x.test",
                "b@x.test",
                "c@x.test",
                "d@x.test",
                "secret@x.test",
                "other@x.test"
            ]
        );
        let add = Additions {
            from: "u@h.test",
            date: "Fri, 04 Dec 2026 18:00:00 +0000",
            message_id: "<1@h.test>",
        };
        let out = complete(m, &add);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("secret") && !text.contains("other@") && !text.contains("Bcc"));
        assert!(text.starts_with(
            "To: a@x.test,\r\n b@x.test\r\nCc: c@x.test\r\nTo: d@x.test\r\nSubject: s\r\n"
        ));
        assert!(text.ends_with(
            "From: u@h.test\r\nDate: Fri, 04 Dec 2026 18:00:00 +0000\r\nMessage-ID: <1@h.test>\r\n\r\nhi\r\n"
        ));
        check_header(text.as_bytes()).unwrap();
    }

    #[test]
    fn complete_keeps_existing_fields_and_adds_the_separator() {
        let add = Additions {
            from: "x",
            date: "d",
            message_id: "m",
        };
        let out = complete(
            b"from: Me <me@x.test>\r\ndate: d0\r\nmessage-id: <m0>\r\nbody line\r\n",
            &add,
        );
        assert_eq!(
            out,
            b"from: Me <me@x.test>\r\ndate: d0\r\nmessage-id: <m0>\r\n\r\nbody line\r\n"
        );
        let out = complete(b"", &add);
        assert_eq!(out, b"From: x\r\nDate: d\r\nMessage-ID: m\r\n\r\n");
    }

    #[test]
    fn from_values() {
        assert_eq!(from_value(None, "u@h"), "u@h");
        assert_eq!(from_value(Some("Cron Daemon"), "u@h"), "Cron Daemon <u@h>");
        assert_eq!(from_value(Some("Smith, J."), "u@h"), "\"Smith, J.\" <u@h>");
        assert_eq!(
            from_value(Some("a\"b\r\nX: y"), "u@h"),
            "\"a\\\"b  X: y\" <u@h>"
        );
    }

    #[test]
    fn header_checks() {
        assert!(check_header(b"From: a\r\n\r\n").is_ok());
        assert!(check_header(b"From: a\r\nbody\r\n").is_err());
        assert!(check_header(b"Subject: a\r\n\r\n").is_err());
        assert!(check_header(b"From: a\0\r\n\r\n").is_err());
    }
}
