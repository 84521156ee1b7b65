//! DATA: the envelope handed to the spool, the `Received:` header, streaming the message
//! through the dot decoder with the size limit, and the hand-over to the durable commit.

use memchr::memrchr;

use super::received::{Protocol, Trace, received_header};
use super::{Flow, Mode, SmtpHost, SmtpSession, Unit, reply};
use crate::date::rfc5322_date;
use crate::limits;
use crate::mail::{Envelope, SpoolError};
use crate::proto::dotdata::DotDecoder;
use crate::proto::{Ctx, OutBuf};

pub(super) struct DataReceiver {
    decoder: DotDecoder,
    /// Decoded octets so far (the Received header not counted).
    size: u64,
    /// Past `max_message_size`: the rest is read and dropped, the entry already aborted.
    over_limit: bool,
}

/// Watches the header section of a submitted message (RFC 6409 §8.2, §8.3) and, where it ends,
/// inserts the Date and Message-ID fields it lacked. Works byte by byte on the header only,
/// so however the input is split the result is the same.
pub(super) struct HeaderFix {
    /// Still in the header section.
    active: bool,
    at_line_start: bool,
    /// The current line's field name so far (lower-cased), up to its colon.
    name: arrayvec::ArrayVec<u8, 16>,
    /// The name is complete (the colon was seen) or too long to matter.
    name_done: bool,
    seen_date: bool,
    seen_message_id: bool,
    date: String,
    message_id: String,
}

impl HeaderFix {
    pub(super) fn new(date: String, message_id: String) -> HeaderFix {
        HeaderFix {
            active: true,
            at_line_start: true,
            name: arrayvec::ArrayVec::new(),
            name_done: false,
            seen_date: false,
            seen_message_id: false,
            date,
            message_id,
        }
    }

    /// The fields to add, once.
    fn missing(&mut self) -> String {
        self.active = false;
        let mut s = String::new();
        if !self.seen_date {
            s.push_str(&format!("Date: {}\r\n", self.date));
        }
        if !self.seen_message_id {
            s.push_str(&format!("Message-ID: {}\r\n", self.message_id));
        }
        s
    }

    /// Passes `bytes` to `emit` (counted: true) with the added fields (counted: false) where
    /// the header ends.
    fn feed(&mut self, bytes: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.active {
            return emit(bytes, true);
        }
        for (i, &b) in bytes.iter().enumerate() {
            if self.at_line_start {
                self.at_line_start = false;
                if b == b'\r' || b == b'\n' {
                    // The empty line that ends the header: the fields go before it.
                    if i > 0 {
                        emit(bytes.get(..i).unwrap_or_default(), true);
                    }
                    let add = self.missing();
                    if !add.is_empty() {
                        emit(add.as_bytes(), false);
                    }
                    return emit(bytes.get(i..).unwrap_or_default(), true);
                }
                // A continuation line keeps the field's name done; a new field starts one.
                self.name.clear();
                self.name_done = b == b' ' || b == b'\t';
            }
            if b == b'\n' {
                self.at_line_start = true;
                continue;
            }
            if self.name_done {
                continue;
            }
            if b == b':' {
                self.name_done = true;
                let name = self.name.trim_ascii_end();
                if name == b"date" {
                    self.seen_date = true;
                } else if name == b"message-id" {
                    self.seen_message_id = true;
                }
            } else if self.name.try_push(b.to_ascii_lowercase()).is_err() {
                self.name_done = true;
            }
        }
        if !bytes.is_empty() {
            emit(bytes, true);
        }
    }

    /// The data ended inside the header (no body): the fields go at the end, if the last line
    /// was complete.
    fn finish(&mut self) -> Option<String> {
        (self.active && self.at_line_start).then(|| self.missing())
    }
}

impl SmtpSession {
    pub(super) fn data(
        &mut self,
        args: &[u8],
        ended_in_crlf: bool,
        ctx: Ctx,
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
    ) -> Flow {
        if !args.is_empty() {
            return self.client_error(out, format_args!("501 5.5.4 Syntax: DATA"));
        }
        let Some(recipients) = self.transaction.as_ref().map(|t| t.recipients.len()) else {
            return self.client_error(out, format_args!("503 5.5.1 Error: need MAIL command"));
        };
        if recipients == 0 {
            return self.client_error(out, format_args!("503 5.5.1 Error: need RCPT command"));
        }
        // A transaction exists only after EHLO/HELO, and it ends with this DATA whatever
        // happens next.
        let (Some(greeting), Some(t)) = (&self.greeting, self.transaction.take()) else {
            return Flow::Continue;
        };
        let extended = greeting.extended;
        let helo = greeting.name.to_string();
        let envelope = Envelope {
            sender: t.sender,
            recipients: t.recipients,
            client_ip: self.peer.ip(),
            helo,
            arrival: ctx.wall,
            smtputf8: t.smtputf8,
            body: t.body,
            pickup: None,
        };
        let id = match host.message_begin(&envelope) {
            Ok(id) => id,
            Err(e) => {
                self.spool_failure(out, &e);
                return Flow::Continue;
            }
        };
        // At DATA, when the message gets its queue id (before, there is no id to file it
        // under); the `from=` line follows at the commit.
        crate::daemon::events::log(&crate::daemon::events::client(
            &id.0,
            self.peer,
            &envelope.helo,
            self.tls.as_deref().copied(),
            self.auth_user(),
        ));
        let single_recipient = match envelope.recipients.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        };
        let header = received_header(&Trace {
            helo: &envelope.helo,
            client_ip: envelope.client_ip,
            hostname: &self.settings.hostname,
            protocol: Protocol {
                extended,
                smtputf8: envelope.smtputf8,
                tls: self.tls.is_some(),
                authenticated: self.user().is_some(),
            },
            tls: self.tls.as_deref().copied(),
            queue_id: &id.0,
            single_recipient,
            date: &rfc5322_date(ctx.wall),
        });
        host.message_append(header.as_bytes());
        let fix = self.user().is_some().then(|| {
            let message_id = format!(
                "<{}.{:016x}@{}>",
                id.0,
                host.random_token(),
                self.settings.hostname
            );
            HeaderFix::new(rfc5322_date(ctx.wall), message_id)
        });
        if let Some(a) = self.auth.as_mut() {
            a.fix = fix;
        }
        self.mode = Mode::Data(DataReceiver {
            decoder: DotDecoder::new(ended_in_crlf),
            size: 0,
            over_limit: false,
        });
        reply!(out, "354 End data with <CR><LF>.<CR><LF>");
        Flow::Continue
    }

    pub(super) fn spool_failure(&mut self, out: &mut OutBuf, e: &SpoolError) {
        match e {
            SpoolError::Full => reply!(out, "452 4.3.1 Insufficient system storage"),
            SpoolError::Failed(_) => {
                reply!(out, "451 4.3.0 Error: local error in processing")
            }
        }
    }

    // ---- message data -----------------------------------------------------------------------

    /// A run of complete data lines (or a large piece of one long line), through the end of
    /// data if it is in there. Only whole lines count as progress: a byte trickle does not
    /// reset the idle deadline.
    pub(super) fn data_unit(
        &mut self,
        rest: &[u8],
        out: &mut OutBuf,
        host: &mut dyn SmtpHost,
    ) -> Unit {
        let offered = match memrchr(b'\n', rest) {
            Some(lf) => lf + 1,
            None if rest.len() >= limits::MAX_UNIT => rest.len(),
            None => return Unit::Incomplete,
        };
        let Mode::Data(receiver) = &mut self.mode else {
            return Unit::Incomplete;
        };
        let DataReceiver {
            decoder,
            size,
            over_limit,
        } = receiver;
        let mut fix = self.auth.as_mut().and_then(|a| a.fix.as_mut());
        let limit = self.settings.max_message_size;
        let mut sink = |bytes: &[u8], counted: bool| {
            if *over_limit {
                return;
            }
            if !counted {
                // Added header fields: not the client's octets.
                host.message_append(bytes);
                return;
            }
            let grown = size.saturating_add(bytes.len() as u64);
            if grown > limit {
                // The host gets exactly the first `limit` octets, however the input was split.
                let fits = usize::try_from(limit.saturating_sub(*size)).unwrap_or(usize::MAX);
                if let Some(head) = bytes.get(..fits).filter(|h| !h.is_empty()) {
                    host.message_append(head);
                }
                *size = limit;
                *over_limit = true;
                host.message_abort();
            } else {
                *size = grown;
                host.message_append(bytes);
            }
        };
        let decoded = decoder.decode(rest.get(..offered).unwrap_or(rest), &mut |bytes| match fix
            .as_mut()
        {
            Some(f) => f.feed(bytes, &mut sink),
            None => sink(bytes, true),
        });
        if !decoded.finished {
            return Unit::Done(decoded.consumed, Flow::Continue);
        }
        if let Some(add) = fix.as_mut().and_then(|f| f.finish()) {
            if !*over_limit && !add.is_empty() {
                host.message_append(add.as_bytes());
            }
        }
        let over_limit = *over_limit;
        if let Some(a) = self.auth.as_mut() {
            a.fix = None;
        }
        self.mode = Mode::Command;
        if over_limit {
            reply!(out, "552 5.3.4 Message size exceeds fixed limit");
            return Unit::Done(decoded.consumed, Flow::Continue);
        }
        match host.message_commit() {
            Ok(()) => Unit::Done(decoded.consumed, Flow::AwaitCommit),
            Err(e) => {
                self.spool_failure(out, &e);
                Unit::Done(decoded.consumed, Flow::Continue)
            }
        }
    }
}
