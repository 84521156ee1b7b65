//! The POP2 server session (RFC 937): a sans-I/O state machine.

use std::rc::Rc;

use super::pop3::PopSettings;
use super::{Completion, Ctx, Next, OutBuf, PopHost, Step};

pub struct Pop2Session {
    settings: Rc<PopSettings>,
}

impl Pop2Session {
    pub fn new(settings: Rc<PopSettings>) -> Pop2Session {
        Pop2Session { settings }
    }

    pub fn greet(&mut self, _ctx: Ctx, out: &mut OutBuf) {
        out.push(
            format!(
                "+ POP2 {} postling server ready\r\n",
                self.settings.hostname
            )
            .as_bytes(),
        );
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
        out.push(b"- timeout, closing connection\r\n");
    }

    pub fn on_shutdown(&mut self, out: &mut OutBuf) {
        out.push(b"- server shutting down\r\n");
    }
}
