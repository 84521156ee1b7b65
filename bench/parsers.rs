//! Micro-benchmark of the SMTP and POP3 sessions (`cargo bench --bench parsers`).
//!
//! Drives `SmtpSession` and `Pop3Session` the way the reactor does (input offered in windows
//! of at most `limits::IN_BUF`, the output buffer drained when the session asks, commits and
//! logins answered at once) against in-memory hosts that do no I/O and allocate nothing per
//! call, so the figures are the sessions' own cost: bytes and commands per second, and heap
//! allocations per command counted by a `#[global_allocator]`.
//!
//! A benchmark, not a test: it prints a Markdown table (bench/run copies it into
//! bench/RESULTS.md). It still checks that every scripted command got its reply, so a broken
//! session cannot produce a fast-looking number.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use postling::buf::{Buf, OutBuf};
use postling::limits;
use postling::mail::{
    Envelope, MailboxDone, MailboxError, MessageInfo, QueueId, RcptVerdict, SpoolError,
};
use postling::proto::pop3::{Pop3Session, PopSettings};
use postling::proto::smtp::{SmtpHost, SmtpSession, SmtpSettings};
use postling::proto::{AuthVerdict, Completion, Ctx, MailboxRequest, Next, PopHost, Step};

// ---- allocation counting ------------------------------------------------------------------

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn alloc_counts() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        ALLOC_BYTES.load(Ordering::Relaxed),
    )
}

// ---- measurement --------------------------------------------------------------------------

/// One scenario's totals over its measured repetitions.
struct Figure {
    name: &'static str,
    /// Input octets offered to the session (client to server).
    bytes_in: u64,
    /// Output octets the session wrote (server to client).
    bytes_out: u64,
    commands: u64,
    /// Messages transferred (SMTP: accepted; POP3: retrieved).
    messages: u64,
    allocs: u64,
    alloc_bytes: u64,
    elapsed: Duration,
}

impl Figure {
    fn row(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let cmds = self.commands.max(1) as f64;
        let messages = if self.messages == 0 {
            "–".to_string()
        } else {
            readable(self.messages as f64 / secs)
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.1} |",
            self.name,
            readable(self.bytes_in as f64 / secs / 1e6),
            readable(self.bytes_out as f64 / secs / 1e6),
            readable(self.commands as f64 / secs),
            messages,
            readable(secs * 1e9 / cmds),
            self.allocs as f64 / cmds,
            self.alloc_bytes as f64 / cmds,
        )
    }
}

/// Three significant digits, thousands separated: 2,180,000 or 196 or 0.123.
fn readable(x: f64) -> String {
    if x >= 1000.0 {
        let digits = x.log10().floor() as i32 + 1;
        let unit = 10f64.powi(digits - 3);
        let rounded = ((x / unit).round() * unit) as u64;
        let text = rounded.to_string();
        let mut grouped = String::new();
        for (i, c) in text.chars().enumerate() {
            if i > 0 && (text.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        grouped
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Runs `once` (one repetition, returning its totals) until at least `budget` has passed,
/// after one warm-up repetition that is not counted.
fn measure(name: &'static str, budget: Duration, mut once: impl FnMut() -> Totals) -> Figure {
    black_box(once());
    let mut fig = Figure {
        name,
        bytes_in: 0,
        bytes_out: 0,
        commands: 0,
        messages: 0,
        allocs: 0,
        alloc_bytes: 0,
        elapsed: Duration::ZERO,
    };
    let started = Instant::now();
    while fig.elapsed < budget {
        let t = once();
        fig.bytes_in += t.bytes_in;
        fig.bytes_out += t.bytes_out;
        fig.commands += t.commands;
        fig.messages += t.messages;
        fig.allocs += t.allocs;
        fig.alloc_bytes += t.alloc_bytes;
        fig.elapsed = started.elapsed();
    }
    fig
}

/// One repetition: counts are taken only over the measured part (after greeting and login).
#[derive(Default)]
struct Totals {
    bytes_in: u64,
    bytes_out: u64,
    commands: u64,
    messages: u64,
    allocs: u64,
    alloc_bytes: u64,
}

fn ctx() -> Ctx {
    Ctx {
        now: Instant::now(),
        wall: SystemTime::now(),
    }
}

/// The reactor's side of one session, reduced to what the sessions see: a window of input
/// of at most `IN_BUF` octets, an output buffer drained when the session asks for room,
/// answers to `AwaitCommit` and `Sleep`.
trait Session {
    type Host: ?Sized;
    fn step(&mut self, input: &[u8], out: &mut OutBuf, host: &mut Self::Host) -> Step;
    fn resume(&mut self, out: &mut OutBuf, host: &mut Self::Host);
}

/// Feeds all of `script` through `session`; returns octets written and the replies seen
/// (lines of output starting with `reply_prefix`, counted as they are drained).
fn drive<S: Session>(
    session: &mut S,
    host: &mut S::Host,
    out: &mut OutBuf,
    script: &[u8],
    reply_prefix: &[u8],
) -> (u64, u64) {
    let mut pos = 0;
    let mut written = 0u64;
    let mut replies = 0u64;
    let mut drain = |out: &mut OutBuf| {
        let bytes = out.bytes();
        written += bytes.len() as u64;
        replies += count_reply_lines(bytes, reply_prefix);
        out.clear();
    };
    loop {
        if out.free() < limits::REPLY_RESERVE {
            drain(out);
        }
        let end = (pos + limits::IN_BUF).min(script.len());
        let window = script.get(pos..end).unwrap_or_default();
        let step = session.step(window, out, host);
        pos += step.consumed;
        match step.next {
            Next::Continue => {}
            Next::NeedOutput => drain(out),
            Next::AwaitCommit | Next::AwaitAuth | Next::AwaitMailbox | Next::Sleep(_) => {
                session.resume(out, host)
            }
            Next::NeedInput if end == script.len() => break,
            Next::NeedInput => {}
            Next::Close | Next::StartTls => break,
        }
    }
    drain(out);
    (written, replies)
}

/// Lines of `bytes` that begin with `prefix` (a reply line starts at the buffer start or
/// after an LF; a reply never straddles a drain because sessions write whole lines).
fn count_reply_lines(bytes: &[u8], prefix: &[u8]) -> u64 {
    if prefix.is_empty() {
        return 0;
    }
    let mut n = u64::from(bytes.starts_with(prefix));
    for i in memchr::memchr_iter(b'\n', bytes) {
        if bytes
            .get(i + 1..)
            .is_some_and(|rest| rest.starts_with(prefix))
        {
            n += 1;
        }
    }
    n
}

// ---- SMTP ---------------------------------------------------------------------------------

/// Accepts every recipient and stores nothing; returns an empty (allocation-free) queue id.
struct NullSpool {
    appended: u64,
    begun: u64,
}

impl SmtpHost for NullSpool {
    fn client_over_rcpt_budget(&mut self) -> bool {
        false
    }
    fn rcpt_refused(&mut self) {}
    fn rcpt_verdict(&mut self, _rcpt: &str) -> RcptVerdict {
        RcptVerdict::Accept
    }
    fn message_begin(&mut self, _envelope: &Envelope) -> Result<QueueId, SpoolError> {
        self.begun += 1;
        Ok(QueueId(String::new()))
    }
    fn message_append(&mut self, bytes: &[u8]) {
        self.appended += bytes.len() as u64;
    }
    fn message_commit(&mut self) -> Result<(), SpoolError> {
        Ok(())
    }
    fn message_abort(&mut self) {}
}

impl Session for SmtpSession {
    type Host = NullSpool;
    fn step(&mut self, input: &[u8], out: &mut OutBuf, host: &mut NullSpool) -> Step {
        SmtpSession::step(self, input, ctx(), out, host)
    }
    fn resume(&mut self, out: &mut OutBuf, host: &mut NullSpool) {
        let done = Completion::Committed(Ok(QueueId(String::new())));
        SmtpSession::resume(self, done, ctx(), out, host);
    }
}

/// A 4 KiB message body as smtp-source sends it: header lines, then 76-column text lines.
fn message_body(size: usize) -> Vec<u8> {
    let mut body = b"From: <bench@example.org>\r\nTo: <alice@example.test>\r\n\
Subject: parser benchmark\r\nMessage-Id: <1@client.example.org>\r\n\r\n"
        .to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+=/()[]\r\n";
    while body.len() + line.len() <= size {
        body.extend_from_slice(line);
    }
    // One dot-stuffed line per message, so the decoder's unstuffing is on the path.
    body.extend_from_slice(b"..a line that began with a dot\r\n");
    body
}

/// A pipelined dialog: EHLO, then `messages` × (MAIL, RCPT, DATA, body, `.`), then QUIT.
/// Returns the script and its command count (the end of data counts as one).
fn smtp_dialog(messages: usize, body: &[u8]) -> (Vec<u8>, u64) {
    let mut s = b"EHLO client.example.org\r\n".to_vec();
    for i in 0..messages {
        s.extend_from_slice(format!("MAIL FROM:<sender{i}@example.org> SIZE=4200\r\n").as_bytes());
        s.extend_from_slice(b"RCPT TO:<alice@example.test>\r\nDATA\r\n");
        s.extend_from_slice(body);
        s.extend_from_slice(b".\r\n");
    }
    s.extend_from_slice(b"QUIT\r\n");
    (s, 2 + 4 * messages as u64)
}

/// Envelope commands only: MAIL, three RCPTs and RSET per round (address parsing heavy).
fn smtp_envelopes(rounds: usize) -> (Vec<u8>, u64) {
    let mut s = b"EHLO client.example.org\r\n".to_vec();
    for i in 0..rounds {
        s.extend_from_slice(
            format!("MAIL FROM:<\"quoted sender {i}\"@sub.example.org> BODY=8BITMIME\r\n")
                .as_bytes(),
        );
        s.extend_from_slice(
            b"RCPT TO:<alice@example.test>\r\nRCPT TO:<bob+tag@example.test>\r\n\
RCPT TO:<postmaster@example.test>\r\nRSET\r\n",
        );
    }
    s.extend_from_slice(b"QUIT\r\n");
    (s, 2 + 5 * rounds as u64)
}

fn smtp_settings() -> Rc<SmtpSettings> {
    Rc::new(SmtpSettings {
        hostname: "bench.example.test".into(),
        max_message_size: 10 * 1024 * 1024,
        starttls: false,
        auth_failure_delay: std::time::Duration::from_secs(2),
    })
}

/// One session over `script`; checks that `ok_replies` final `250 ` lines came back (EHLO's
/// last line, MAIL, RCPT, RSET and each end of data).
fn smtp_once(
    script: &[u8],
    commands: u64,
    messages: u64,
    ok_replies: u64,
    out: &mut OutBuf,
) -> Totals {
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap_or_else(|_| unreachable!());
    let mut session = SmtpSession::new(smtp_settings(), peer);
    let mut host = NullSpool {
        appended: 0,
        begun: 0,
    };
    session.greet(ctx(), out, &mut host);
    out.clear();
    let (a0, b0) = alloc_counts();
    let (written, oks) = drive(&mut session, &mut host, out, script, b"250 ");
    let (a1, b1) = alloc_counts();
    assert_eq!(oks, ok_replies, "every command answered 250");
    assert_eq!(host.begun, messages, "every DATA reached the spool");
    black_box(host.appended);
    Totals {
        bytes_in: script.len() as u64,
        bytes_out: written,
        commands,
        messages,
        allocs: a1 - a0,
        alloc_bytes: b1 - b0,
    }
}

// ---- POP3 ---------------------------------------------------------------------------------

/// A mailbox in memory: every message is the same raw Maildir file (LF line ends).
struct MemoryMailbox {
    raw: Vec<u8>,
    wire_size: u64,
    count: usize,
    /// Allocated at login by the session's own request (the snapshot), outside the counted part.
    uids: Vec<Box<str>>,
    updated: usize,
}

impl MemoryMailbox {
    fn new(raw: Vec<u8>, count: usize) -> MemoryMailbox {
        let lf = raw.iter().filter(|&&b| b == b'\n').count();
        let wire_size = (raw.len() + lf) as u64;
        let uids = (0..count)
            .map(|i| format!("1700000000.M{i}P1.bench").into_boxed_str())
            .collect();
        MemoryMailbox {
            raw,
            wire_size,
            count,
            uids,
            updated: 0,
        }
    }
}

impl MemoryMailbox {
    /// The reactor's side of `Next::AwaitAuth`.
    fn authenticate(&mut self, user: &str, password: &[u8]) -> AuthVerdict {
        if user == "bob" && password == b"bob-pw" {
            AuthVerdict::Accepted("bob".into())
        } else {
            AuthVerdict::Rejected
        }
    }
}

impl MemoryMailbox {
    /// The reactor's side of `Next::AwaitMailbox`.
    fn answer(&mut self, request: MailboxRequest) -> MailboxDone {
        match request {
            MailboxRequest::Open(user) => MailboxDone::Opened(self.mailbox_open(&user)),
            MailboxRequest::Update(deleted) => MailboxDone::Updated(self.mailbox_update(&deleted)),
            // (Its messages are in memory: a read never says `WouldBlock`.)
            MailboxRequest::Warm => MailboxDone::Warmed,
            MailboxRequest::Size(index) if index < self.count => {
                MailboxDone::Sized(Ok(self.wire_size))
            }
            MailboxRequest::Size(_) => {
                MailboxDone::Sized(Err(MailboxError::Temporary("no such message".into())))
            }
        }
    }

    fn mailbox_open(&mut self, _user: &str) -> Result<Vec<MessageInfo>, MailboxError> {
        Ok(self
            .uids
            .iter()
            .take(self.count)
            .map(|uid| MessageInfo {
                uid: uid.clone(),
                size: self.wire_size,
            })
            .collect())
    }

    fn mailbox_update(&mut self, deleted: &[usize]) -> Result<(), MailboxError> {
        self.updated += deleted.len();
        Ok(())
    }
}

impl PopHost for MemoryMailbox {
    fn message_read(&mut self, index: usize, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if index >= self.count {
            return Err(io::Error::other("no such message"));
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.raw.len());
        let rest = self.raw.get(start..).unwrap_or_default();
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
    fn mailbox_release(&mut self) {}
}

impl Session for Pop3Session {
    type Host = MemoryMailbox;
    fn step(&mut self, input: &[u8], out: &mut OutBuf, host: &mut MemoryMailbox) -> Step {
        Pop3Session::step(self, input, ctx(), out, host)
    }
    fn resume(&mut self, out: &mut OutBuf, host: &mut MemoryMailbox) {
        let c = match (self.take_auth(), self.take_mailbox()) {
            (Some(r), _) => Completion::Auth(host.authenticate(&r.user, &r.password)),
            (None, Some(m)) => Completion::Mailbox(host.answer(m)),
            (None, None) => Completion::Woke,
        };
        Pop3Session::resume(self, c, ctx(), out, host);
    }
}

/// A Maildir file of about `size` octets: a few header lines, then 75-column text lines
/// with LF ends, one of them starting with a dot (so RETR has to stuff it).
fn maildir_file(size: usize) -> Vec<u8> {
    let mut raw = b"Return-Path: <bench@example.org>\nFrom: <bench@example.org>\n\
To: <bob@example.test>\nSubject: pop3 benchmark\n\n"
        .to_vec();
    raw.extend_from_slice(b".a line that begins with a dot\n");
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_+=/()\n";
    while raw.len() + line.len() <= size {
        raw.extend_from_slice(line);
    }
    raw
}

fn pop_settings() -> Rc<PopSettings> {
    Rc::new(PopSettings {
        hostname: "bench.example.test".into(),
        auth_failure_delay: Duration::from_secs(1),
        stls: false,
    })
}

/// Logs in (not counted), then runs `script` and checks that `ok_replies` `+OK` lines came
/// back (a RETR's body lines never start with `+OK` in these messages).
fn pop3_once(
    mailbox: &mut MemoryMailbox,
    script: &[u8],
    commands: u64,
    messages: u64,
    ok_replies: u64,
    out: &mut OutBuf,
) -> Totals {
    let mut session = Pop3Session::new(pop_settings());
    session.greet(ctx(), out);
    out.clear();
    let (_, logged_in) = drive(
        &mut session,
        mailbox,
        out,
        b"USER bob\r\nPASS bob-pw\r\n",
        b"+OK",
    );
    assert_eq!(logged_in, 2, "login accepted");
    mailbox.updated = 0;
    let (a0, b0) = alloc_counts();
    let (written, oks) = drive(&mut session, mailbox, out, script, b"+OK");
    let (a1, b1) = alloc_counts();
    assert_eq!(oks, ok_replies, "every command answered +OK");
    Totals {
        bytes_in: script.len() as u64,
        bytes_out: written,
        commands,
        messages,
        allocs: a1 - a0,
        alloc_bytes: b1 - b0,
    }
}

// ---- main ---------------------------------------------------------------------------------

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(2)
    };
    let mut out: Box<OutBuf> = Buf::new_boxed();
    let mut figures = Vec::new();

    let body = message_body(4096);
    let (dialog, dialog_cmds) = smtp_dialog(1000, &body);
    figures.push(measure(
        "SMTP: pipelined dialog, 1,000 × 4 KiB messages",
        budget,
        || smtp_once(&dialog, dialog_cmds, 1000, 1 + 3 * 1000, &mut out),
    ));
    let (envelopes, envelope_cmds) = smtp_envelopes(10_000);
    figures.push(measure(
        "SMTP: envelope commands (MAIL, 3 × RCPT, RSET) × 10,000",
        budget,
        || smtp_once(&envelopes, envelope_cmds, 0, 1 + 5 * 10_000, &mut out),
    ));

    let mut small = MemoryMailbox::new(maildir_file(4096), 1000);
    let mut retr_dele = Vec::new();
    for i in 1..=1000 {
        retr_dele.extend_from_slice(format!("RETR {i}\r\nDELE {i}\r\n").as_bytes());
    }
    retr_dele.extend_from_slice(b"QUIT\r\n");
    figures.push(measure(
        "POP3: RETR+DELE of 1,000 × 4 KiB, then QUIT",
        budget,
        || pop3_once(&mut small, &retr_dele, 2001, 1000, 2001, &mut out),
    ));

    let mut big = MemoryMailbox::new(maildir_file(50 * 1024 * 1024), 1);
    figures.push(measure("POP3: RETR of one 50 MiB message", budget, || {
        pop3_once(&mut big, b"RETR 1\r\n", 1, 1, 1, &mut out)
    }));

    let mut listing = MemoryMailbox::new(maildir_file(4096), 1000);
    let mut small_cmds = Vec::new();
    for i in 1..=1000 {
        small_cmds
            .extend_from_slice(format!("STAT\r\nLIST {i}\r\nUIDL {i}\r\nNOOP\r\n").as_bytes());
    }
    figures.push(measure(
        "POP3: small commands (STAT, LIST n, UIDL n, NOOP) × 1,000",
        budget,
        || pop3_once(&mut listing, &small_cmds, 4000, 0, 4000, &mut out),
    ));

    println!(
        "| scenario | input MB/s | output MB/s | commands/s | messages/s | ns/command | allocations/command | bytes allocated/command |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &figures {
        println!("{}", f.row());
    }
}
