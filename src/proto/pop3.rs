//! The POP3 server session (RFC 1939, RFC 2449, RFC 5034): a sans-I/O state machine.

use std::rc::Rc;
use std::time::Duration;

use super::{Completion, Ctx, Next, OutBuf, PopHost, Step};

/// Settings shared by all POP3 and POP2 sessions.
#[derive(Clone, Debug)]
pub struct PopSettings {
    pub hostname: String,
    /// Delay before a failed login is answered.
    pub auth_failure_delay: Duration,
}

pub struct Pop3Session {
    settings: Rc<PopSettings>,
}

impl Pop3Session {
    pub fn new(settings: Rc<PopSettings>) -> Pop3Session {
        Pop3Session { settings }
    }

    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf) {
        out.push(format!("+OK {} POP3 postling ready\r\n", self.settings.hostname).as_bytes());
    }

    pub fn step(
        &mut self,
        _input: &[u8],
        _ctx: Ctx,
        _out: &mut OutBuf,
        _host: &mut dyn PopHost,
    ) -> Step {
        Step::new(0, Next::NeedInput)
    }

    pub fn resume(
        &mut self,
        _c: Completion,
        _ctx: Ctx,
        _out: &mut OutBuf,
        _host: &mut dyn PopHost,
    ) {
    }

    pub fn on_timeout(&mut self, out: &mut OutBuf) {
        out.push(b"-ERR [SYS/TEMP] timeout, closing connection\r\n");
    }

    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        out.push(b"-ERR [SYS/TEMP] server shutting down\r\n");
    }
}
