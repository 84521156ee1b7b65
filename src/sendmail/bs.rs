//! `sendmail -bs`: an SMTP dialog on standard input and output, for programs that speak SMTP
//! to a local command instead of a socket. Each message accepted by DATA becomes one drop file,
//! exactly as without `-bs`; the `250` after the final dot comes only once it is durable.
//!
//! Generic over the streams and the way a message is dropped, so every dialog is a unit test.
//! Bounded: a command line longer than `limits::SMTP_MAX_LINE_BS` is refused, a message over
//! `max_message_size` is read to its end and refused with `552`, at most
//! `limits::SENDMAIL_MAX_RCPTS` recipients per message.

use std::io::{self, BufRead, Write};

use crate::limits;
use crate::proto::smtp_addr::{parse_mail, parse_rcpt};

/// What the dialog needs to know.
pub struct BsContext<'a> {
    pub hostname: &'a str,
    pub max_message_size: usize,
}

/// Drops one message: (sender as asked, recipients, message with CRLF lines) → a line for the
/// `250` (e.g. where it went), or `Err((code, text))` for the reply (`452 4.3.1 ...`).
pub type DropFn<'a> = dyn FnMut(&str, &[String], &[u8]) -> Result<String, String> + 'a;

/// Reads one line (up to `max` bytes plus its end); `None` at end of input, `Some(Err(()))`
/// for an over-long line (consumed to its end).
fn read_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(if line.is_empty() && !too_long {
                None
            } else if too_long {
                Some(Err(()))
            } else {
                Some(Ok(line))
            });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (buf.get(..i).unwrap_or_default(), Some(i + 1)),
            None => (buf, None),
        };
        if line.len() + chunk.len() > max {
            too_long = true;
        } else {
            line.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(if too_long { Err(()) } else { Ok(line) }));
        }
    }
}

/// Runs the dialog until QUIT or the end of input.
pub fn run<R: BufRead, W: Write>(
    input: &mut R,
    out: &mut W,
    ctx: &BsContext<'_>,
    drop_message: &mut DropFn<'_>,
) -> io::Result<()> {
    let reply = |out: &mut W, text: &str| -> io::Result<()> {
        out.write_all(text.as_bytes())?;
        out.write_all(b"\r\n")?;
        out.flush()
    };
    reply(
        out,
        &format!("220 {} postling ESMTP (sendmail -bs)", ctx.hostname),
    )?;
    let mut sender: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    loop {
        let line = match read_line(input, limits::SMTP_MAX_LINE_BS)? {
            None => return Ok(()),
            Some(Err(())) => {
                reply(out, "500 5.5.2 line too long")?;
                continue;
            }
            Some(Ok(l)) => l,
        };
        let text = String::from_utf8_lossy(&line);
        let (verb, args) = text.split_once(' ').unwrap_or((&text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "HELO" => reply(out, &format!("250 {}", ctx.hostname))?,
            "EHLO" => reply(
                out,
                &format!(
                    "250-{}\r\n250-8BITMIME\r\n250 SIZE {}",
                    ctx.hostname, ctx.max_message_size
                ),
            )?,
            "MAIL" => {
                if sender.is_some() {
                    reply(out, "503 5.5.1 MAIL already given")?;
                    continue;
                }
                match parse_mail(args, true) {
                    Ok(m) if m.size.is_some_and(|s| s > ctx.max_message_size as u64) => {
                        reply(out, "552 5.3.4 message size exceeds the limit")?
                    }
                    Ok(m) => {
                        sender = Some(m.path.address.to_string());
                        reply(out, "250 2.1.0 ok")?;
                    }
                    Err(_) => reply(out, "501 5.5.2 syntax: MAIL FROM:<address>")?,
                }
            }
            "RCPT" => {
                if sender.is_none() {
                    reply(out, "503 5.5.1 MAIL first")?;
                    continue;
                }
                if rcpts.len() >= limits::SENDMAIL_MAX_RCPTS {
                    reply(out, "452 4.5.3 too many recipients")?;
                    continue;
                }
                match parse_rcpt(args) {
                    Ok(r) => {
                        rcpts.push(r.path.address.to_string());
                        reply(out, "250 2.1.5 ok")?;
                    }
                    Err(_) => reply(out, "501 5.1.3 syntax: RCPT TO:<address>")?,
                }
            }
            "DATA" => {
                let Some(from) = sender.as_deref() else {
                    reply(out, "503 5.5.1 MAIL first")?;
                    continue;
                };
                if rcpts.is_empty() {
                    reply(out, "554 5.5.1 no valid recipients")?;
                    continue;
                }
                reply(out, "354 end data with <CR><LF>.<CR><LF>")?;
                let mut data = Vec::new();
                let mut over = false;
                loop {
                    let line = match read_line(input, ctx.max_message_size)? {
                        // The input ended inside DATA: no message, and no one to answer.
                        None => return Ok(()),
                        Some(Err(())) => {
                            over = true;
                            continue;
                        }
                        Some(Ok(l)) => l,
                    };
                    if line == b"." {
                        break;
                    }
                    let line = line.strip_prefix(b".").unwrap_or(&line);
                    if data.len() + line.len() + 2 > ctx.max_message_size {
                        over = true;
                    }
                    if !over {
                        data.extend_from_slice(line);
                        data.extend_from_slice(b"\r\n");
                    }
                }
                if over {
                    reply(out, "552 5.3.4 message size exceeds max_message_size")?;
                } else {
                    match drop_message(from, &rcpts, &data) {
                        Ok(note) => reply(out, &format!("250 2.0.0 {note}"))?,
                        Err(e) => reply(out, &e)?,
                    }
                }
                sender = None;
                rcpts.clear();
            }
            "RSET" => {
                sender = None;
                rcpts.clear();
                reply(out, "250 2.0.0 ok")?;
            }
            "NOOP" => reply(out, "250 2.0.0 ok")?,
            "VRFY" => reply(out, "252 2.5.2 send some mail, I will try my best")?,
            "QUIT" => {
                reply(out, &format!("221 2.0.0 {} closing", ctx.hostname))?;
                return Ok(());
            }
            _ => reply(out, "500 5.5.2 command not recognized")?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (sender, recipients, data) of one dropped message.
    type Dropped = (String, Vec<String>, Vec<u8>);

    fn dialog(input: &[u8], max: usize) -> (String, Vec<Dropped>) {
        let mut dropped = Vec::new();
        let mut out = Vec::new();
        let ctx = BsContext {
            hostname: "mail.example.test",
            max_message_size: max,
        };
        let mut f = |s: &str, r: &[String], d: &[u8]| -> Result<String, String> {
            dropped.push((s.to_string(), r.to_vec(), d.to_vec()));
            Ok(format!("queued as {}", dropped.len()))
        };
        run(&mut &input[..], &mut out, &ctx, &mut f).unwrap();
        (String::from_utf8(out).unwrap(), dropped)
    }

    #[test]
    fn a_whole_transaction() {
        let (out, dropped) = dialog(
            b"EHLO me\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
            1000,
        );
        assert_eq!(
            out,
            "220 mail.example.test postling ESMTP (sendmail -bs)\r\n250-mail.example.test\r\n250-8BITMIME\r\n250 SIZE 1000\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n501 5.1.3 syntax: RCPT TO:<address>\r\n354 end data with <CR><LF>.<CR><LF>\r\n250 2.0.0 queued as 1\r\n221 2.0.0 mail.example.test closing\r\n"
        );
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].0, "root@example.test");
        assert_eq!(dropped[0].1, ["alice@example.test"]);
        assert_eq!(dropped[0].2, b"Subject: x\r\n\r\n.dot\r\n");
    }

    #[test]
    fn order_size_and_end_of_input() {
        let (out, dropped) = dialog(b"RCPT TO:<a@b.test>\nDATA\nMAIL FROM:<>\nMAIL FROM:<>\nDATA\nRSET\nMAIL FROM:<> SIZE=5000\nBOGUS\n", 100);
        assert!(out.contains("503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n250 2.1.0 ok\r\n503 5.5.1 MAIL already given\r\n554 5.5.1 no valid recipients\r\n250 2.0.0 ok\r\n552 5.3.4 message size exceeds the limit\r\n500 5.5.2 command not recognized\r\n"), "{out}");
        assert!(dropped.is_empty());
        let big = format!(
            "MAIL FROM:<>\nRCPT TO:<a@b.test>\nDATA\n{}\n.\nNOOP\n",
            "x".repeat(200)
        );
        let (out, dropped) = dialog(big.as_bytes(), 100);
        assert!(
            out.ends_with("552 5.3.4 message size exceeds max_message_size\r\n250 2.0.0 ok\r\n"),
            "{out}"
        );
        assert!(dropped.is_empty());
        // Input ending inside DATA drops nothing.
        let (_, dropped) = dialog(
            b"MAIL FROM:<>\nRCPT TO:<a@b.test>\nDATA\nhalf a message\n",
            100,
        );
        assert!(dropped.is_empty());
        let (out, _) = dialog(&[b'x'; 3000], 100);
        assert!(out.ends_with("500 5.5.2 line too long\r\n"), "{out}");
    }
}
