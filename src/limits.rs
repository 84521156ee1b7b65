//! Every fixed size, count and duration of the server, each with the reason it has its value.
//!
//! Values an administrator may want to tune are config keys (see `config.rs`); their defaults
//! live here too, so a reader finds every limit in one file.

use std::time::Duration;

// ---- buffers -------------------------------------------------------------------------------

/// Per-connection input buffer. Must hold the longest SMTP command line (512, RFC 5321
/// §4.5.3.1.4) several times over so pipelined batches arrive in few reads, and must be larger
/// than `MAX_UNIT` so a session can always make progress on a full buffer.
pub const IN_BUF: usize = 8 * 1024;

/// Per-connection output buffer. Large enough that one write syscall carries a useful chunk of
/// a streamed POP3 message; replies are far smaller.
pub const OUT_BUF: usize = 16 * 1024;

/// A session processes the next command only when the output buffer has this much room, so
/// one reply always fits without growing anything. The longest single reply (EHLO's list,
/// POP3 CAPA) is far below it; multi-line listings stream across several fills.
pub const REPLY_RESERVE: usize = 1024;

/// A session never answers "need more input" while this much input is buffered: it either
/// finds a complete unit or treats the bytes as an over-long line. Keeps a full input buffer
/// from stalling a connection.
pub const MAX_UNIT: usize = 2048;
/// Socket reads and writes one connection makes in one turn before the others get theirs
/// (the rest waits for the next turn, which does not wait for the poll): at most 32 × 16 KiB
/// copied, well under a millisecond, so a client sending DATA or reading a long RETR as fast
/// as loopback allows cannot hold up everyone else's replies.
pub const IO_PER_DRIVE: usize = 32;
/// The time one connection's I/O and session work may take in one turn, whatever the number
/// of reads and writes: pipelined one-line commands (60,000 DELE) answer hundreds a read.
pub const DRIVE_SLICE: Duration = Duration::from_micros(500);
/// A turn polls again this often while it handles a batch of events and between its pieces
/// of disk work (`Reactor::handle_batch`, `Reactor::poll_within_turn`).
pub const POLL_WITHIN_TURN_AFTER: Duration = Duration::from_micros(100);
/// Events one poll reports at most (the rest come with the next poll).
pub const EVENTS_PER_POLL: usize = 256;

/// Unconsumed input (a partial command line) of up to this many bytes is kept inside the
/// connection and its input buffer returned to the pool: a slow or idle client holds no
/// buffer. Longer than most command lines, small enough that an idle connection stays far
/// below 1 KiB.
pub const INPUT_STASH: usize = 96;

/// Buffers kept in the free pool beyond those in use; more are returned to the allocator, so
/// a burst of connections does not pin memory forever.
pub const POOL_KEEP: usize = 64;

// ---- TLS (RFC 8446, RFC 5246) --------------------------------------------------------------

/// Input buffer of a TLS connection: the largest record a peer may send, a 5-octet header
/// plus 2^14 + 2048 octets of TLSCiphertext (RFC 5246 §6.2.3; rustls refuses anything
/// larger). rustls decrypts in place and needs a whole record in one buffer.
pub const TLS_IN_BUF: usize = 18_437;
/// Octets of a TLS record header (RFC 8446 §5.1).
pub const TLS_RECORD_HEADER: usize = 5;
/// Most octets a cipher adds to a record's plaintext: TLS 1.2 AES-GCM's 8-octet explicit
/// nonce and 16-octet tag (RFC 5288 §3); TLS 1.3 adds 17 (RFC 8446 §5.2), ChaCha20 16.
pub const TLS_CIPHER_OVERHEAD: usize = 24;
/// Largest TLS record postling writes: half the output buffer. The transport encodes a
/// handshake record only into this much room (rustls cannot take one back), so with half
/// the buffer a whole server flight (1-5 KiB with a usual chain) leaves in one write, where
/// full 16 KiB records would cost a write per record.
pub const TLS_RECORD_OUT_MAX: usize = OUT_BUF / 2;
/// rustls's `max_fragment_size` (header plus plaintext of one outgoing record), so that with
/// the cipher's overhead a record is at most `TLS_RECORD_OUT_MAX`.
pub const TLS_MAX_FRAGMENT: usize = TLS_RECORD_OUT_MAX - TLS_CIPHER_OVERHEAD;
/// Output room the transport needs before it reads input once the handshake is done: rustls
/// then writes on its own only alerts and TLS 1.3 KeyUpdate replies (about 31 octets each).
pub const TLS_OUT_MIN_TRAFFIC: usize = 256;
/// Longest certificate, key or CA file read: a chain of a few certificates is a few KiB, a
/// system CA bundle about 220 KiB; a file this large is not the PEM file meant.
pub const TLS_PEM_FILE_MAX: u64 = 1024 * 1024;
/// The system's CA bundle for verified outbound TLS without a configured one, first found
/// wins: Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, and the BSDs/macOS-style location.
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

// ---- SMTP (RFC 5321) ------------------------------------------------------------------------

/// RFC 5321 §4.5.3.1.4: command line including CRLF.
pub const SMTP_MAX_LINE: usize = 512;
/// RFC 4954 §4: a SASL response line of SMTP AUTH may exceed the command limit; the same bound
/// as POP's (RFC 4616 §2: PLAIN's three fields of 255 octets each, base64, plus CRLF).
pub const SMTP_SASL_MAX_LINE: usize = POP_SASL_MAX_LINE;
/// RFC 5321 §4.5.3.1.8 asks servers to accept at least 100 recipients.
pub const SMTP_MAX_RCPTS: usize = 100;
/// RFC 5321 §4.5.3.1.3: a path is at most 256 octets.
pub const SMTP_MAX_PATH: usize = 256;
/// Longest EHLO/HELO name kept: a domain is at most 255 octets (RFC 1035 §2.3.4).
pub const SMTP_MAX_HELO: usize = 255;
/// Erroneous commands (syntax, sequence, unknown) before `421 4.7.0`; stops abusive scanners.
pub const SMTP_MAX_ERRORS: u32 = 10;
/// Rejected recipients per session before `421 4.7.0`: address-harvest protection.
pub const SMTP_MAX_REJECTED_RCPTS: u32 = 20;
/// Rejected recipients per client (an IPv4 address, an IPv6 /64) across its connections
/// before its sessions get `421 4.7.0` for every RCPT and at the greeting: a harvester
/// reconnecting after each 20 got 3 000 answers in 0.2 s. A mailing list with a hundred stale
/// addresses here is still answered in full.
pub const SMTP_REJECTED_RCPTS_PER_CLIENT: u32 = 100;
/// The count drains by one each interval (100 an hour): an address over budget is answered
/// again after 36 s, one more refusal at a time, so a harvester learns 2 500 names a day
/// instead of thousands a second, and a shared relay's good mail is only deferred.
pub const SMTP_REJECTED_RCPTS_INTERVAL: Duration = Duration::from_secs(36);
/// Clients remembered by the rejected-recipient budget; the ones closest to draining are
/// forgotten first.
pub const SMTP_REJECTED_RCPTS_TABLE: usize = 1024;
/// Cap on a whole SMTP session, whatever progress it makes: a 10 MiB message at a slow
/// 3 KiB/s still fits, a client drip-feeding NOOPs does not hold a slot forever.
pub const SMTP_SESSION_CAP: Duration = Duration::from_secs(60 * 60);
/// Default `smtp_timeout`: RFC 5321 §4.5.3.2.7 asks for 5 minutes while awaiting a command.
pub const SMTP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);

// ---- SMTP client (outbound) ----------------------------------------------------------------

/// RFC 5321 §4.5.3.2.1: the client waits 5 minutes for the initial 220.
pub const SMTP_CLIENT_GREETING_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.2: 5 minutes for the reply to MAIL.
pub const SMTP_CLIENT_MAIL_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.3: 5 minutes for the reply to each RCPT.
pub const SMTP_CLIENT_RCPT_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// RFC 5321 §4.5.3.2.4: 2 minutes for the 354 to DATA.
pub const SMTP_CLIENT_DATA_INIT_TIMEOUT: Duration = Duration::from_secs(2 * 60);
/// RFC 5321 §4.5.3.2.5: 3 minutes for the server to take each block of data (each
/// `send_data` that makes progress re-arms it).
pub const SMTP_CLIENT_DATA_BLOCK_TIMEOUT: Duration = Duration::from_secs(3 * 60);
/// RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final dot: the server may be
/// filtering or storing a large message, and giving up early risks a duplicate delivery.
pub const SMTP_CLIENT_DATA_END_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// EHLO, HELO, STARTTLS and its handshake, AUTH, RSET, QUIT: the RFC names no figure; 5
/// minutes like MAIL and RCPT.
pub const SMTP_CLIENT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Octets of a reply kept for the record (a DSN, `postling -q`), as the spool keeps a reason
/// (`SPOOL_MAX_REASON`); the rest of a long multi-line reply is read and dropped.
pub const SMTP_CLIENT_REPLY_KEEP: usize = SPOOL_MAX_REASON;
/// Octets of one reply line's text kept: RFC 5321 §4.5.3.1.5 bounds a reply line at 512
/// octets; more is consumed and dropped.
pub const SMTP_CLIENT_LINE_KEEP: usize = 512;

// ---- outbound delivery (config defaults and bounds) ---------------------------------------

/// Default `outbound_port`: SMTP's port (RFC 5321 §4.5.4.2 / IANA), Postfix's `smtp_tcp_port`.
pub const OUTBOUND_PORT_DEFAULT: u16 = 25;
/// Port of `relay_host` when it names none: 25 like any SMTP server, 465 (RFC 8314 §7.3, the
/// submissions port) when `relay_tls = implicit`, since nothing speaks implicit TLS on 25.
pub const RELAY_PORT_DEFAULT: u16 = 25;
pub const RELAY_PORT_IMPLICIT_TLS_DEFAULT: u16 = 465;
/// Default `outbound_connect_timeout`: a reachable server answers a SYN within a second or
/// two; 30 s outlasts a few lost SYNs (Linux retries at 1, 3, 7, 15 s) without letting a
/// blackholed MX hold a connection slot for the kernel's two minutes.
pub const OUTBOUND_CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default `outbound_concurrency` (connections to one destination at once): what a receiving
/// server tolerates from one client without throttling it (Postfix's initial destination
/// concurrency is 5).
pub const OUTBOUND_CONCURRENCY_DEFAULT: usize = 4;
/// Most `outbound_concurrency` allowed: beyond this a receiver treats us as a flood.
pub const OUTBOUND_CONCURRENCY_MAX: usize = 100;
/// Default `outbound_max_connections` (all destinations): each holds buffers and a
/// descriptor; 32 keeps a small box's memory and descriptors for its inbound clients.
pub const OUTBOUND_MAX_CONNECTIONS_DEFAULT: usize = 32;
/// Most `outbound_max_connections` allowed: far more than a small server ever needs, and
/// bounded so a typo cannot take every descriptor from the listeners.
pub const OUTBOUND_MAX_CONNECTIONS_MAX: usize = 1000;
/// Largest `relay_auth_file` read: it holds one line; a larger file is not the file meant.
pub const RELAY_AUTH_FILE_MAX: u64 = 64 * 1024;
/// Longest user name or password in `relay_auth_file`: RFC 4616 §2 bounds PLAIN's authcid
/// and passwd at 255 octets each.
pub const RELAY_AUTH_FIELD_MAX: usize = 255;

// ---- POP3 (RFC 1939) / POP2 (RFC 937) -------------------------------------------------------

/// RFC 2449 §4: a POP3 command line is at most 255 octets including CRLF.
pub const POP_MAX_LINE: usize = 255;
/// RFC 5034 §4 lets a SASL response line exceed the 255-octet command limit. RFC 4616 §2
/// bounds PLAIN's authzid, authcid and passwd at 255 octets each: 767 octets are 1024 base64
/// characters, plus CRLF.
pub const POP_SASL_MAX_LINE: usize = 1026;
/// Decoded SASL PLAIN message: authzid NUL authcid NUL passwd (RFC 4616 §2), rounded up to the
/// whole base64 quanta of `POP_SASL_MAX_LINE`.
pub const POP_SASL_MAX_DECODED: usize = (POP_SASL_MAX_LINE - 2) / 4 * 3;
/// Erroneous commands (unknown, wrong state, bad syntax, over-long) before the connection is
/// closed; stops scanners and confused clients from holding a slot.
pub const POP_MAX_ERRORS: u32 = 10;
/// Bytes of a message file read per call while streaming RETR/TOP (a stack array, never a
/// heap buffer): a 100 MiB message costs no more memory than a small one. At most doubled by
/// LF→CRLF and dot-stuffing, so one read always fits in `OUT_BUF`.
pub const POP_STREAM_CHUNK: usize = 4 * 1024;
/// A streamed message pauses for the output to drain rather than read fewer bytes than this:
/// tiny reads would cost one system call each for a handful of bytes.
pub const POP_STREAM_MIN_READ: usize = 256;
/// Longest unique-id written by UIDL. RFC 1939 §7 says 1 to 70 characters, but a Maildir
/// unique name with a long hostname can exceed that; a file name (NAME_MAX) never exceeds 255.
/// Keeps a UIDL line far below `REPLY_RESERVE` whatever the host returns.
pub const POP_MAX_UID: usize = 255;
/// RFC 1939 §3: the inactivity timer must be at least 10 minutes.
pub const POP3_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// Default `pop3_login_timeout`: from connecting to a successful login. A real client logs in
/// within a few round trips (plus `auth_failure_delay` per failure); an idle unauthenticated
/// connection holds a slot for nothing. RFC 1939 §3's 10-minute autologout timer is the idle
/// timeout of a logged-in session (`pop3_timeout`).
pub const POP_LOGIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Rounds of the TLS pump per read or flush: each moves at least one record, and a bound keeps
/// one connection from holding the reactor (16 records of output fill `OUT_BUF` many times).
pub const TLS_PUMPS_PER_CALL: usize = 64;
/// Default time a client has to finish a TLS handshake: a real client needs one or two round
/// trips (well under a second); a stalled or trickling one must not hold a slot for longer.
pub const TLS_HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default of `max_tls_handshakes`: a handshake in flight holds up to a TLS input and an output
/// buffer (34 KiB) and about a millisecond of CPU, so 64 bound both (2.2 MiB) while a burst of
/// real clients (one or two round trips each) still passes at once.
pub const MAX_TLS_HANDSHAKES_DEFAULT: usize = 64;
/// A certificate expiring within this long draws a warning at start and on reload.
pub const TLS_CERT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 60 * 60);
/// Cap on a whole POP session: enough to download 100 MiB over a slow link.
pub const POP_SESSION_CAP: Duration = Duration::from_secs(2 * 60 * 60);
/// Failed logins on one connection before it is closed.
pub const AUTH_MAX_FAILURES: u32 = 3;
/// Default delay before a failed login is answered (config `auth_failure_delay`).
pub const AUTH_FAILURE_DELAY_DEFAULT: Duration = Duration::from_secs(2);
/// The failure delay may not be configured below this.
pub const AUTH_FAILURE_DELAY_MIN: Duration = Duration::from_secs(1);
/// Failed logins per client (an IPv4 address, an IPv6 /64; see `throttle`) before its logins
/// are refused without checking the password, over every protocol, whatever succeeds in
/// between. Ten covers a user fumbling a password and a mail program retrying a stale one.
pub const AUTH_THROTTLE_FAILURES: u32 = 10;
/// The failure count drains by one each interval, so a throttled client gets one more try
/// each 3 min (20 an hour, 480 a day). A program polling every 5 min with a stale password
/// (12 failures an hour) never throttles the users behind the same address.
pub const AUTH_THROTTLE_INTERVAL: Duration = Duration::from_secs(3 * 60);
/// Clients remembered by the login throttle (about 40 octets each); the ones closest to
/// draining are forgotten first.
pub const AUTH_THROTTLE_TABLE: usize = 1024;
/// Default login attempts per client (right, wrong or against an `[IN-USE]` mailbox; every
/// protocol) at once and then per minute, before its logins are refused without a check, each
/// after `auth_failure_delay` (config `login_attempts_per_client`). A household or office
/// behind one address polling a few dozen accounts every minute stays under it; a client
/// looping logins (about 20,000 a second against an `[IN-USE]` mailbox before this budget)
/// does not.
pub const AUTH_ATTEMPTS_PER_CLIENT_DEFAULT: u32 = 30;
/// The most `login_attempts_per_client` may say: beyond it the limit is no limit (use 0).
pub const AUTH_ATTEMPTS_PER_CLIENT_MAX: usize = 100_000;
/// The attempt count drains by the budget each window (one every window ÷ budget).
pub const AUTH_ATTEMPTS_WINDOW: Duration = Duration::from_secs(60);
/// Clients remembered by the attempt budget (about 40 octets each).
pub const AUTH_ATTEMPTS_TABLE: usize = 1024;
/// How long a successful password check is remembered (`auth::cache`): clients that log in
/// again and again with a right password (a mail program polling every minute, or a flood
/// against an `[IN-USE]` mailbox) cost one SHA512-CRYPT per user and password per 30 s, while
/// a changed password or a failure takes effect at once (both drop the entry).
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(30);
/// Successful checks remembered at once (about 80 octets each); beyond it the oldest goes.
/// More than the users a small server has logging in within `AUTH_CACHE_TTL`.
pub const AUTH_CACHE_ENTRIES: usize = 256;

// ---- connections ----------------------------------------------------------------------------

pub const MAX_CONNECTIONS_DEFAULT: usize = 512;
pub const MAX_CONNECTIONS_PER_IP_DEFAULT: usize = 16;
/// Connections taken from the listen backlogs per reactor turn, round-robin across listeners.
pub const ACCEPTS_PER_TURN: usize = 64;

/// How long accepting pauses after EMFILE/ENFILE before it is tried again (it is also retried
/// as soon as any connection closes). Long enough that a saturated server costs no CPU.
pub const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// Descriptors needed beside connections: listeners, spool and mailbox files, log, signals.
pub const FD_RESERVE: usize = 32;
/// On SIGTERM, how long open sessions get to finish writing their goodbye.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Listen backlog for every listener.
pub const LISTEN_BACKLOG: i32 = 1024;

// ---- messages and queue ---------------------------------------------------------------------

pub const MAX_MESSAGE_SIZE_DEFAULT: u64 = 10 * 1024 * 1024;
/// The largest `max_message_size` the config accepts: 1 GiB keeps every size a client is told
/// (the SIZE extension, POP3 LIST, POP2's `#nnn`) inside the 32-bit counters old clients use,
/// and no single message can take a small box's spool disk for minutes.
pub const MAX_MESSAGE_SIZE_LIMIT: u64 = 1 << 30;
pub const RETRY_MIN_DEFAULT: Duration = Duration::from_secs(60);
pub const RETRY_MAX_DEFAULT: Duration = Duration::from_secs(60 * 60);
pub const QUEUE_LIFETIME_DEFAULT: Duration = Duration::from_secs(5 * 24 * 60 * 60);
/// `delay_warning_time`: Postfix's default; a sender hears about mail stuck for half a
/// working day, long before the bounce after `queue_lifetime`.
pub const DELAY_WARNING_TIME_DEFAULT: Duration = Duration::from_secs(4 * 60 * 60);
/// Entries gathered into one delivery batch (their Maildir syncs are shared); a batch is
/// worked on in steps within `WORK_SLICE`, so a backlog never starves clients.
pub const DELIVERIES_PER_TURN: usize = 8;
/// How long freshly accepted mail may wait for a whole delivery batch to be due. A steady
/// single-session stream then shares each batch's Maildir directory syncs; a message alone is
/// delivered this much later, which no mail reader notices.
pub const DELIVERY_LINGER: Duration = Duration::from_millis(10);
/// Time each reactor turn gives to commit steps (where the group commit does not wait in the
/// disk executor: `fsync = filesystem`), and again to delivery steps, before it polls
/// the sockets again. One step (one fdatasync or fsync) is about 0.1-0.3 ms on an SSD, so a
/// client waits for a step or two at most, never for a whole batch.
pub const WORK_SLICE: Duration = Duration::from_micros(250);
/// Files in a Maildir's `tmp/` older than this are what a crash left behind; the Maildir
/// specification says to remove them after 36 hours.
pub const MAILDIR_TMP_MAX_AGE: Duration = Duration::from_secs(36 * 60 * 60);
/// Alias expansion depth before it is treated as a loop.
pub const ALIAS_MAX_DEPTH: usize = 16;
/// Addresses one recipient may expand to through aliases.
pub const ALIAS_MAX_EXPANSION: usize = 1000;
/// Largest users or aliases file read: far above 100 000 users of ~150 octets a line, and it
/// bounds what a mistaken path (a device, a log file) can make the server allocate.
pub const DIRECTORY_FILE_MAX: u64 = 16 * 1024 * 1024;
/// Highest `rounds=` accepted in a `{SHA512-CRYPT}` hash. A login costs about a microsecond a
/// round in the one reactor thread, so this keeps one check near 50 ms; `openssl passwd -6`
/// and `mkpasswd` use the default 5 000.
pub const SHA512_CRYPT_MAX_ROUNDS: usize = 50_000;
/// Longest password accepted anywhere: a POP3 command line is at most 255 octets (RFC 2449
/// §4), so no longer password can arrive; bounds the constant-time `{PLAIN}` comparison.
pub const PASSWORD_MAX: usize = 255;

// ---- spool ----------------------------------------------------------------------------------

/// Write buffer of one message being received, never grown: a few disk writes per typical
/// message instead of one per network read.
pub const SPOOL_WRITE_BUF: usize = 16 * 1024;
/// Write buffers of committed messages kept for the next ones (given back at rest): a buffer
/// this size is a mapping of its own (`buf::allocate_buffers_outside_the_heap`), and mapping,
/// faulting in and unmapping one per message cost more than the message's write.
pub const SPOOL_SPARE_BUFS: usize = 32;
/// Largest envelope header or state file the spool writes or reads back: bounds memory when
/// reading a damaged file, and is far above 100 recipients (RFC 5321 §4.5.3.1.8) of 256
/// octets each (§4.5.3.1.3), even when every byte is escaped.
pub const SPOOL_MAX_CONTROL: usize = 1024 * 1024;
/// Longest error text kept per recipient or attempt: a reply line is at most 512 octets
/// (RFC 5321 §4.5.3.1.5); longer multi-line replies are cut.
pub const SPOOL_MAX_REASON: usize = 1000;
/// Longest last reason kept per pending recipient (shown by `postling -q`, listed in the
/// delay warning): one reply line (RFC 5321 §4.5.3.1.5) with its status; 100 recipients
/// (`SMTP_MAX_RCPTS`) of it stay far below `SPOOL_MAX_CONTROL` even when every byte is escaped.
pub const SPOOL_MAX_RCPT_REASON: usize = 512;
/// New ids tried by `begin` when a name is already taken (clock stepped back past old
/// entries) before it gives up.
pub const SPOOL_ID_TRIES: u32 = 16;
/// Message files of removed entries kept in `free/` for reuse once the queue is idle (while
/// mail flows, every removed file is kept): a burst of this many messages reuses old inodes
/// instead of allocating new ones; the files are empty, so they hold no disk blocks.
pub const SPOOL_FREE_KEEP: usize = 256;
/// Empty files the spool keeps ready in `free/` while messages arrive, made ahead in the
/// disk executor (`spool::prepare`): one per message of a turn's worth of sessions, so no
/// session waits on the reactor for an inode (0.3-0.4 ms each on a busy ext4). At most
/// `SPOOL_FREE_KEEP`, so the idle trim never undoes them.
pub const SPOOL_READY_FILES: usize = 32;
/// Longest a stop waits for the spool's removals in the executor (each is a rename and a
/// truncation: milliseconds); past it a removal left undone delivers its entry again after the
/// restart, which is better than a stop that never ends.
pub const SPOOL_REMOVALS_WAIT: Duration = Duration::from_secs(5);
/// Excess free files unlinked per reactor turn while the queue is idle: the clean-up never
/// holds a client up for long.
pub const SPOOL_TRIM_PER_TURN: usize = 32;
/// Envelopes of just-committed entries kept in memory for their first delivery attempt;
/// past this (delivery far behind) entries are read back from disk as after a restart.
pub const SPOOL_FRESH_MAX: usize = 4096;

// ---- config ---------------------------------------------------------------------------------

/// Largest config file read: a complete one is a few KiB; bounds memory when `-c` names the
/// wrong file (a log, a device).
pub const CONFIG_MAX_BYTES: u64 = 1024 * 1024;
/// Longest duration any key accepts: deadlines are `Instant + duration`, which must not
/// overflow, and no timeout, retry or lifetime makes sense beyond ten years.
pub const CONFIG_MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
/// Highest `max_connections` / `max_connections_per_ip`: far above any descriptor limit, and
/// keeps descriptor arithmetic on the value far from overflow.
pub const CONFIG_MAX_CONNECTIONS: usize = 1_000_000;
/// RFC 1939 §3: a POP3 inactivity timer must be at least 10 minutes; a shorter `pop3_timeout`
/// is allowed but warned about.
pub const POP3_TIMEOUT_RFC_MIN: Duration = Duration::from_secs(10 * 60);

// ---- operations (daemon start-up, pid file, logging) ---------------------------------------

/// Longest start-up report a detached child sends its waiting parent ("ready", or an exit
/// status and one error line): above any start-up error line, so nothing useful is cut.
pub const START_REPORT_MAX: usize = 2048;
/// Bytes read from a pid file held by another instance: a pid has at most 10 digits.
pub const PID_FILE_MAX: usize = 32;
/// Largest /etc/passwd or /etc/group read for the privilege drop: far above any real local
/// user database (100,000 accounts are about 6 MiB), small enough to read whole at start.
pub const ACCOUNT_FILE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// RFC 3164 §4.1: a syslog packet is at most 1024 octets; longer lines are cut.
pub const SYSLOG_MAX_PACKET: usize = 1024;

// ---- disk executor (src/exec/) -------------------------------------------------------------

/// Operations one executor backend holds in flight (the io_uring ring, the helper's socket):
/// above what 20 busy sessions plus delivery and a mailbox open need at once (a few each),
/// and it bounds the slots, the ring (never overflows: ring entries = this) and the queue of
/// frames not yet sent to the helper. Submitting more returns `Full` instead of growing.
pub const EXEC_MAX_IN_FLIGHT: usize = 256;
/// Largest single write request, on every backend so callers never care which one runs: a
/// helper frame carries the data, and 64 KiB is many times the spool's write buffer.
pub const EXEC_WRITE_MAX: usize = 64 * 1024;
/// io_uring's worker threads for file operations (io-wq "bounded" workers; the kernel's
/// default is four per CPU). On a 2-CPU machine eight of them unlinking in one Maildir kept
/// the reactor thread waiting for a CPU; a few keep a disk as busy.
pub const EXEC_URING_WORKERS: u32 = 2;
/// How long the helper process may run file operations without a password check while
/// checks wait (`exec::helper`): file operations go first, since clients' commits wait on
/// them in a row, but a steady stream of them still lets a check through this often.
pub const HELPER_CHECK_YIELD: Duration = Duration::from_millis(10);
/// Mailbox operations (list a batch, move, count, unlink) one reactor turn submits for all
/// POP mailbox jobs together (each job also stays within `MAILBOX_IN_FLIGHT`): the reactor's
/// share is a few µs per completion, so a turn stays well under 1 ms, and a quarter of
/// `EXEC_MAX_IN_FLIGHT` leaves room for password checks and other work.
pub const MAILBOX_OPS_PER_TURN: usize = 64;
/// The most operations one POP mailbox job holds in flight. The executor serves its
/// operations in order (io_uring's few workers, the helper's one queue), so a client's commit
/// (an fsync) waits behind every mailbox operation submitted before it: with 64 ahead of it a
/// transaction took 15-20 ms at p99 while a 60,000-message mailbox was emptied, with 8 about
/// 8 ms, with 2 about 6 ms (p50 0.9 ms). Two keep the disk as busy as more would: one
/// directory's unlinks and renames run one at a time anyway.
pub const MAILBOX_IN_FLIGHT: usize = 2;
/// A POP mailbox job's work on the reactor goes in steps of a few hundred µs at most, one
/// step a turn for all jobs together (`MAILBOX_CPU_STEPS_PER_TURN`): an opening orders its
/// snapshot (`mailbox::stepsort`: a step sorts a chunk of `SORT_CHUNK` messages' keys or
/// merges `SORT_MERGE_STEP` of them) and builds it `MAILBOX_BUILD_STEP` messages a step;
/// every job frees its list of messages `MAILBOX_RELEASE_STEP` a step.
pub const SORT_CHUNK: usize = 2048;
pub const SORT_MERGE_STEP: usize = 16_384;
pub const MAILBOX_BUILD_STEP: usize = 1024;
pub const MAILBOX_RELEASE_STEP: usize = 8192;
pub const MAILBOX_CPU_STEPS_PER_TURN: usize = 1;
/// Most names one `ReadDir` request returns: a 100 000-message Maildir is read in a few
/// hundred requests, each a bounded reply frame (256 names of at most 255 octets).
pub const EXEC_READDIR_MAX_NAMES: usize = 256;
/// Most files one `WireSize` request counts: a round trip to the helper per file cost more
/// than the counting (1,000 files: 22 ms of a POP3 login, one at a time); 32 of 4 KiB are
/// about 0.25 ms of the helper's time, the most another client's request waits behind one.
pub const EXEC_WIRE_SIZE_BATCH: usize = 32;
/// The trace lines of one Maildir copy made in the executor (`Return-Path:` and
/// `Delivered-To:`, each with an address of at most a few hundred octets).
pub const EXEC_COPY_HEAD_MAX: usize = 4096;
/// The most one `DiskOp::Warm` reads into the page cache.
pub const EXEC_WARM_MAX: u64 = 1024 * 1024;
/// What a POP message read that would wait for the disk has read into the page cache before
/// it is tried again (`mailbox::Mailbox::read`): the kernel's own readahead goes on from there.
pub const POP_WARM_WINDOW: u64 = 128 * 1024;
/// Longest name of one directory entry (Linux NAME_MAX): the names a `WireSize` counts.
pub const FILE_NAME_MAX: usize = 255;
/// Longest path in a request: Linux's PATH_MAX, which includes the terminating NUL.
pub const EXEC_PATH_MAX: usize = 4096;
/// Largest frame between the reactor and the helper process: a full write (64 KiB) or a full
/// `ReadDir` reply (256 × 257 octets: type, length, name) plus a header; two paths (rename, link) are far below.
pub const EXEC_FRAME_MAX: usize = 68 * 1024;
/// Longest stored credential sent with a password check: a `$6$rounds=N$salt$hash` string is
/// about 120 octets; a `{PLAIN}` secret longer than `PASSWORD_MAX` can never match anyway.
pub const EXEC_CREDENTIAL_MAX: usize = 1024;
/// Bytes getdents64 reads into at once in a `ReadDir`: a few hundred entries per call.
pub const EXEC_GETDENTS_BUF: usize = 32 * 1024;

// ---- queue control (`postling queue`) --------------------------------------------------------

/// Longest request line on the control socket: a command and up to a few thousand queue ids
/// (13 bytes each); a longer one is refused, so a client cannot grow the daemon's memory.
pub const CONTROL_MAX_REQUEST: usize = 64 * 1024;

/// A control client that has not sent its request, or not read its reply, by then is dropped,
/// so a stuck `postling queue` cannot keep the socket from the next one.
pub const CONTROL_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `postling queue` waits for a running daemon to answer: it answers between two
/// delivery steps (milliseconds), so this only runs out when the daemon is stuck or stopping.
pub const CONTROL_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `postling queue` retries when the spool is locked (a daemon runs) but its control
/// socket does not accept yet: the daemon is between taking the lock and binding the socket.
pub const CONTROL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between those retries (in the command's own process; the daemon never polls).
pub const CONTROL_CONNECT_RETRY: Duration = Duration::from_millis(50);

// ---- DNS stub resolver (RFC 1035) -----------------------------------------------------------

/// RFC 1035 §2.3.4: a domain name is at most 255 octets in wire form.
pub const DNS_NAME_MAX: usize = 255;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
pub const DNS_LABEL_MAX: usize = 63;
/// Most labels a 255-octet name can have; also the most compression pointers one name may
/// use (a real name never needs more pointers than labels).
pub const DNS_MAX_LABELS: usize = 127;
/// Largest DNS message: the 2-octet TCP length prefix (RFC 1035 §4.2.2).
pub const DNS_MESSAGE_MAX: usize = 65535;
/// EDNS0 UDP payload size offered (RFC 6891 §6.2.5; 1232 is the DNS Flag Day 2020 value that
/// avoids IP fragmentation). Also the receive buffer a driver needs for one datagram.
pub const DNS_EDNS_UDP_SIZE: u16 = 1232;
/// Answer records of the asked type kept per response: far above any real MX set, and it
/// bounds the memory a hostile answer can make a lookup hold.
pub const DNS_MAX_ANSWERS: usize = 32;
/// Answer records (of any kept type, CNAMEs included) a response may hand the parser; the
/// rest are read and checked but dropped.
pub const DNS_MAX_RECORDS: usize = 64;
/// CNAMEs followed per lookup, within an answer and across re-queries: real chains are 1-3
/// long; longer ones are loops or abuse.
pub const DNS_MAX_CNAME_CHAIN: usize = 8;
/// Nameservers used, like glibc's MAXNS: later `nameserver` lines are ignored, and
/// `dns_servers` may list no more.
pub const DNS_MAX_SERVERS: usize = 3;
/// Wait for a UDP answer on the first round of servers; doubled on each later round, like
/// glibc's back-off. 2 s is far above a loopback or LAN resolver's round trip.
pub const DNS_UDP_TIMEOUT: Duration = Duration::from_secs(2);
/// Wait for a whole TCP exchange (connect, query, answer) after a truncated UDP answer.
pub const DNS_TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Rounds over the server list before a question fails temporarily (glibc's `attempts:2`).
pub const DNS_ROUNDS: usize = 2;
/// Questions outstanding at once (a lookup of addresses asks two); further questions wait in
/// order. Bounds sockets, timers and memory whatever the queue asks for.
pub const DNS_MAX_IN_FLIGHT: usize = 32;
/// Lookups accepted and not yet answered; past this `resolve` answers "resolver busy" at once
/// so a burst of queued mail cannot grow the resolver without bound.
pub const DNS_MAX_LOOKUPS: usize = 1024;
/// `/etc/resolv.conf` is checked for a change (its inode, size and mtime) at most this often,
/// so a lookup burst costs no stat calls.
pub const RESOLV_CONF_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Largest resolv.conf read: real ones are a few hundred octets.
pub const RESOLV_CONF_MAX_BYTES: u64 = 64 * 1024;
// ---- local submission (sendmail) and the maildrop pickup -------------------------------------

/// Recipients one `sendmail` call may name: the same bound as one SMTP transaction
/// (`SMTP_MAX_RCPTS`), so a local message never needs more than SMTP could carry.
pub const SENDMAIL_MAX_RCPTS: usize = SMTP_MAX_RCPTS;

/// Drop files the daemon picks up per reactor turn: each is read whole and written into the
/// spool, so a burst of submissions cannot keep the sockets waiting for long.
pub const PICKUPS_PER_TURN: usize = 8;

/// A `maildrop/<name>.tmp` file this old at start-up belongs to a `sendmail` that died while
/// writing (none takes an hour to write a message of `max_message_size`): it is removed.
pub const MAILDROP_TMP_STALE: Duration = Duration::from_secs(3600);

/// Read buffer for inotify events: room for many events of names up to 255 bytes
/// (inotify(7) advises at least `sizeof(struct inotify_event) + NAME_MAX + 1`).
pub const INOTIFY_BUF: usize = 4096;

/// Longest command line `sendmail -bs` reads: RFC 5321 §4.5.3.1.4 (512 with CRLF) with room
/// for the parameters of MAIL; longer lines are refused, never buffered without bound.
pub const SMTP_MAX_LINE_BS: usize = 1000;

/// Log flood summarising: this many lines alike (same kind, same client) within
/// `LOG_FLOOD_WINDOW` are written; further ones are only counted, and one summary line says
/// how many. Enough to see what a storm is, few enough that a storm cannot fill the disk.
pub const LOG_FLOOD_BURST: u32 = 5;
/// The window of `LOG_FLOOD_BURST`; a pending summary is written when it ends (the reactor's
/// poll wakes for it only while one is pending).
pub const LOG_FLOOD_WINDOW: Duration = Duration::from_secs(10);
/// Kinds of line tracked at once: a fixed table, the oldest evicted (its summary written), so
/// a storm from many addresses costs no more memory than one.
pub const LOG_FLOOD_SLOTS: usize = 32;
/// A flood key (event kind and client) is cut to this many bytes.
pub const LOG_FLOOD_KEY_MAX: usize = 128;

// ---- Outbound delivery -----------------------------------------------------------------------

/// RFC 5321 §6.3: a message that passed through this many servers (Received header fields) is
/// in a loop and bounced (`5.4.6`) instead of forwarded again; Postfix's default is 50, the
/// issue asks for 30 (more than any real path needs).
pub const MAX_RECEIVED_HEADERS: usize = 30;
/// Mail exchangers tried per domain (in preference order); more are rarely useful and each
/// costs address lookups.
pub const OUTBOUND_MAX_MX: usize = 5;
/// Addresses tried per connection attempt before the destination is deferred.
pub const OUTBOUND_MAX_ROUTES: usize = 10;
/// Message data read from the spool per step of an outbound transaction: one read fills at
/// most this much of the output buffer, so one connection's data never starves the others.
pub const OUTBOUND_DATA_CHUNK: usize = 4096;
/// Messages one outbound connection carries before it says QUIT (Postfix's
/// smtp_connection_reuse_count_limit idea): spreads a long queue over connections.
pub const OUTBOUND_MESSAGES_PER_CONNECTION: usize = 100;
/// Routes learnt for a destination are used for at most this long, then looked up again.
pub const OUTBOUND_ROUTE_TTL: Duration = Duration::from_secs(300);
/// Steps of one outbound connection per drive: bounds the time one connection holds the
/// reactor (each step moves at most a buffer of bytes); the rest waits for the next turn.
pub const OUTBOUND_STEPS_PER_DRIVE: usize = 64;
