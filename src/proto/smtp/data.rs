//! DATA: the envelope handed to the spool, the `Received:` header, streaming the message
//! through the dot decoder with the size limit, and the hand-over to the durable commit.

use memchr::memrchr;

use super::received::{Protocol, Trace, received_header};
use super::{Flow, Mode, SmtpHost, SmtpSession, Unit, reply};
use crate::date::rfc5322_date;
use crate::limits;
use crate::proto::dotdata::DotDecoder;
use crate::proto::{Ctx, OutBuf};
use crate::spool::{Envelope, SpoolError};

pub(super) struct DataReceiver {
    decoder: DotDecoder,
    /// Decoded octets so far (the Received header not counted).
    size: u64,
    /// Past `max_message_size`: the rest is read and dropped, the entry already aborted.
    over_limit: bool,
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
        let helo = greeting.name.clone();
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
            self.tls,
            None,
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
                authenticated: false,
            },
            tls: self.tls,
            queue_id: &id.0,
            single_recipient,
            date: &rfc5322_date(ctx.wall),
        });
        host.message_append(header.as_bytes());
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
        let limit = self.settings.max_message_size;
        let decoded = decoder.decode(rest.get(..offered).unwrap_or(rest), &mut |bytes| {
            if *over_limit {
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
        });
        if !decoded.finished {
            return Unit::Done(decoded.consumed, Flow::Continue);
        }
        let over_limit = *over_limit;
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
