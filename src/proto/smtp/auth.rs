//! SMTP AUTH on the submission ports (RFC 4954): PLAIN (RFC 4616) with an initial response or
//! after `334 `, and LOGIN (`334 VXNlcm5hbWU6`, `334 UGFzc3dvcmQ6`). Responses are strict
//! base64 (`sasl::decode_base64`), `*` cancels (`501`), lines are bounded
//! (`limits::SMTP_SASL_MAX_LINE`). Decoded passwords live in stack buffers wiped after use and
//! in the `AuthRequest`, which wipes itself.

use super::{AuthStep, Flow, Mode, PlainError, SmtpSession, reply, sasl};
use crate::limits;
use crate::proto::{AuthRequest, AuthVerdict, Ctx, OutBuf};

/// Decoded SASL message buffer (PLAIN's three fields, or one LOGIN field).
type Decoded = [u8; limits::POP_SASL_MAX_DECODED];

impl SmtpSession {
    /// `AUTH mechanism [initial-response]` on a submission port.
    pub(super) fn auth(&mut self, args: &[u8], _ctx: Ctx, out: &mut OutBuf) -> Flow {
        if self.greeting.as_ref().is_none_or(|g| !g.extended) {
            return self.client_error(out, format_args!("503 5.5.1 Error: send EHLO first"));
        }
        if self.user().is_some() {
            return self.client_error(out, format_args!("503 5.5.1 Error: already authenticated"));
        }
        if self.transaction.is_some() {
            return self.client_error(
                out,
                format_args!("503 5.5.1 Error: AUTH not allowed in a mail transaction"),
            );
        }
        if !self.login_allowed() {
            return self.client_error(
                out,
                format_args!(
                    "538 5.7.11 Encryption required for requested authentication mechanism"
                ),
            );
        }
        let mut words = args.split(|&b| b == b' ');
        let (mechanism, initial, extra) = (words.next(), words.next(), words.next());
        let (Some(mechanism), None) = (mechanism.filter(|m| !m.is_empty()), extra) else {
            return self.client_error(
                out,
                format_args!("501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
            );
        };
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            self.set_mechanism("PLAIN");
            match initial {
                None => {
                    self.mode = Mode::AuthResponse(AuthStep::Plain);
                    reply!(out, "334 ");
                    Flow::Continue
                }
                // RFC 4954 §4: `=` is an empty initial response.
                Some(b"=") => self.plain(b"", out),
                Some(response) => self.plain(response, out),
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            self.set_mechanism("LOGIN");
            match initial {
                None => {
                    self.mode = Mode::AuthResponse(AuthStep::LoginUser);
                    reply!(out, "334 VXNlcm5hbWU6");
                    Flow::Continue
                }
                Some(response) => self.login_user(response, out),
            }
        } else {
            self.client_error(
                out,
                format_args!("504 5.5.4 Unrecognized authentication type"),
            )
        }
    }

    fn set_mechanism(&mut self, mechanism: &'static str) {
        if let Some(a) = self.auth.as_mut() {
            a.mechanism = mechanism;
        }
    }

    /// A response line after a `334`.
    pub(super) fn auth_response(&mut self, line: &[u8], _ctx: Ctx, out: &mut OutBuf) -> Flow {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        let step = std::mem::replace(&mut self.mode, Mode::Command);
        let Mode::AuthResponse(step) = step else {
            return Flow::Continue;
        };
        if text == b"*" {
            return self.client_error(out, format_args!("501 5.0.0 Authentication cancelled"));
        }
        match step {
            AuthStep::Plain => self.plain(text, out),
            AuthStep::LoginUser => self.login_user(text, out),
            AuthStep::LoginPassword(user) => {
                let mut buf: Decoded = [0; limits::POP_SASL_MAX_DECODED];
                let flow = match sasl::decode_base64(text, &mut buf) {
                    Some(n) => {
                        let password = buf.get(..n).unwrap_or_default();
                        self.check(&user, password);
                        Flow::Continue
                    }
                    None => self.bad_base64(out),
                };
                buf.fill(0);
                flow
            }
        }
    }

    fn bad_base64(&mut self, out: &mut OutBuf) -> Flow {
        self.client_error(
            out,
            format_args!("501 5.5.2 Cannot decode response (invalid base64)"),
        )
    }

    fn plain(&mut self, base64: &[u8], out: &mut OutBuf) -> Flow {
        let mut buf: Decoded = [0; limits::POP_SASL_MAX_DECODED];
        let flow = match sasl::decode_plain(base64, &mut buf) {
            Ok(p) => {
                let (user, password) = (p.authcid, p.password);
                self.check(user, password);
                Flow::Continue
            }
            Err(PlainError::Base64) => self.bad_base64(out),
            Err(PlainError::Malformed) => {
                self.client_error(out, format_args!("501 5.5.2 Malformed SASL PLAIN response"))
            }
            Err(PlainError::Authzid) => self.client_error(
                out,
                format_args!("501 5.5.2 Authorization identity must be empty or the user name"),
            ),
        };
        buf.fill(0);
        flow
    }

    fn login_user(&mut self, base64: &[u8], out: &mut OutBuf) -> Flow {
        let mut buf: Decoded = [0; limits::POP_SASL_MAX_DECODED];
        let user = sasl::decode_base64(base64, &mut buf)
            .and_then(|n| buf.get(..n))
            .filter(|u| !u.is_empty() && !u.contains(&0))
            .map(Box::<[u8]>::from);
        let Some(user) = user else {
            return self.bad_base64(out);
        };
        self.mode = Mode::AuthResponse(AuthStep::LoginPassword(user));
        reply!(out, "334 UGFzc3dvcmQ6");
        Flow::Continue
    }

    /// Hands the check to the reactor; `verified` goes on with its verdict.
    fn check(&mut self, user: &[u8], password: &[u8]) {
        // `set_mechanism` recorded it at the AUTH command; the log lines name it.
        let mechanism = self.auth.as_ref().map_or("PLAIN", |a| a.mechanism);
        let request = AuthRequest::new(user, password).with_mechanism(mechanism);
        self.mode = Mode::AwaitAuth(Some(Box::new(request)));
    }

    pub(super) fn verified(&mut self, verdict: AuthVerdict, ctx: Ctx, out: &mut OutBuf) {
        if !matches!(self.mode, Mode::AwaitAuth(_)) {
            return;
        }
        self.mode = Mode::Command;
        match verdict {
            AuthVerdict::Accepted(name) => {
                if let Some(a) = self.auth.as_mut() {
                    a.user = Some(name.into_boxed_str());
                }
                reply!(out, "235 2.7.0 Authentication successful");
            }
            AuthVerdict::Rejected => {
                if let Some(a) = self.auth.as_mut() {
                    a.failures = a.failures.saturating_add(1);
                }
                self.delay(ctx, None);
            }
            AuthVerdict::Throttled => {
                self.delay(ctx, Some("failed logins"));
            }
            AuthVerdict::TooManyAttempts => {
                self.delay(ctx, Some("logins"));
            }
            AuthVerdict::Unavailable => {
                reply!(out, "454 4.7.0 Temporary authentication failure");
            }
        }
    }

    fn delay(&mut self, ctx: Ctx, close_why: Option<&'static str>) {
        let wake_at = ctx.now + self.settings.auth_failure_delay;
        if let Some(a) = self.auth.as_mut() {
            a.wake_at = Some(wake_at);
        }
        self.mode = Mode::Delaying { close_why };
    }

    /// The failed login's delay is over: its reply. A throttled address, or a session past
    /// `limits::AUTH_MAX_FAILURES`, is closed.
    pub(super) fn woke(&mut self, out: &mut OutBuf) {
        let Mode::Delaying { close_why } = self.mode else {
            return;
        };
        if let Some(what) = close_why {
            reply!(
                out,
                "421 4.7.0 {} too many {what} from your address, try again later",
                self.settings.hostname
            );
            self.mode = Mode::Closed;
            return;
        }
        reply!(out, "535 5.7.8 Authentication credentials invalid");
        let failures = self.auth.as_ref().map_or(0, |a| a.failures);
        self.mode = if failures >= limits::AUTH_MAX_FAILURES {
            Mode::Closed
        } else {
            Mode::Command
        };
    }
}
