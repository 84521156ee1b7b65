//! Where log lines go: `log_file` (appended, reopened on SIGUSR1 for logrotate), stderr in the
//! foreground, or syslog (`mail` facility) once detached. The `log` macros are the API
//! everywhere; this module only installs the logger behind them.
//!
//! Lines keep one format whatever the destination: `2026-12-01T19:06:42.5Z [INFO] message`
//! (RFC 3339 UTC, as simplelog prints on stderr). Syslog gets RFC 3164 packets
//! `<PRI>postling[PID]: message` on the Unix datagram socket `/dev/log`, sent without
//! blocking: when syslogd cannot keep up, a line is dropped rather than the reactor stalled.
//! If there is no syslog socket, lines go to stderr (which is /dev/null once detached), with
//! a warning at start. The socket path can be changed with the environment variable
//! `POSTLING_SYSLOG_SOCKET`; it exists for the tests, which must not touch the real /dev/log.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use ::log::{Level, LevelFilter, Log, Metadata, Record};

use super::flood::{self, Flood};
use crate::limits;

/// The system's syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";
/// Overrides `SYSLOG_SOCKET` (tests only).
pub const SYSLOG_SOCKET_ENV: &str = "POSTLING_SYSLOG_SOCKET";
/// RFC 3164 §4.1.1: facility 2 is "mail system".
const FACILITY_MAIL: u8 = 2;

/// Where lines are to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
    Syslog(PathBuf),
}

/// `log_file` set: that file. Empty: stderr in the foreground, syslog once detached.
pub fn destination(log_file: Option<&Path>, foreground: bool) -> Destination {
    match log_file {
        Some(p) => Destination::File(p.to_path_buf()),
        None if foreground => Destination::Stderr,
        None => Destination::Syslog(
            std::env::var_os(SYSLOG_SOCKET_ENV)
                .map_or_else(|| PathBuf::from(SYSLOG_SOCKET), PathBuf::from),
        ),
    }
}

/// Installs the logger. Ok carries a warning to log once logging works (syslog was wanted
/// but there is no socket); Err is the line to print when `log_file` cannot be opened.
pub fn init(dest: Destination, level: LevelFilter) -> Result<Option<String>, String> {
    match dest {
        Destination::Stderr => {
            install_stderr(level);
            Ok(None)
        }
        Destination::File(path) => {
            let sink = Sink::open_file(&path).map_err(|e| {
                format!(
                    "cannot open the log file {}: {e}; check log_file and its directory",
                    path.display()
                )
            })?;
            install(sink, level);
            Ok(None)
        }
        Destination::Syslog(path) => match Sink::connect_syslog(&path) {
            Ok(sink) => {
                install(sink, level);
                Ok(None)
            }
            Err(e) => {
                install_stderr(level);
                Ok(Some(format!(
                    "no syslog socket at {} ({e}): log lines go to standard error, which is /dev/null \
                     once postling detaches; set log_file, or start a syslog daemon",
                    path.display()
                )))
            }
        },
    }
}

/// True when log lines go to stderr, where start-up errors are printed anyway.
pub fn logs_to_stderr() -> bool {
    LOGGER.get().is_none()
}

/// What SIGUSR1 did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reopened {
    File(PathBuf),
    Syslog(PathBuf),
    Stderr,
}

/// Reopens `log_file` by name (after logrotate renamed it) or reconnects to syslog. On
/// failure the old destination stays in use.
pub fn reopen() -> Result<Reopened, String> {
    let Some(logger) = LOGGER.get() else {
        return Ok(Reopened::Stderr);
    };
    let mut guarded = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    // What was logged before the signal belongs in the file logrotate moved away.
    guarded.release();
    guarded.sink.reopen()
}

/// The reactor's SIGUSR1 action: reopen, and say in the (new) log what happened.
pub fn reopen_on_signal() {
    match reopen() {
        Ok(Reopened::File(p)) => ::log::info!("SIGUSR1: reopened the log file {}", p.display()),
        Ok(Reopened::Syslog(p)) => {
            ::log::info!("SIGUSR1: reconnected to syslog at {}", p.display())
        }
        Ok(Reopened::Stderr) => ::log::info!("SIGUSR1: logging to stderr, nothing to reopen"),
        Err(e) => ::log::warn!("SIGUSR1: {e}"),
    }
}

/// When a pending flood summary is due (`daemon::flood`), for the reactor's poll timeout;
/// `None` when none is pending (or lines go to stderr, where nothing is summarised).
pub fn flood_due() -> Option<Instant> {
    let logger = LOGGER.get()?;
    let sink = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    sink.flood.due()
}

/// Writes the flood summaries whose window has ended (the reactor calls it each turn; cheap
/// when nothing is pending).
pub fn flush_floods(now: Instant) {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let mut sink = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::new();
    sink.flood.flush_due(now, &mut out);
    for line in out {
        sink.emit(Level::Info, &format_args!("{line}"), SystemTime::now());
    }
}

/// A reactor turn begins: until `release_lines`, lines for a log file are gathered and then
/// written with one system call, not one each (a message logs about five lines, in two or
/// three turns). Syslog and stderr lines go out at once as before.
pub fn hold_lines() {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let mut g = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    if matches!(g.sink, Sink::File { .. }) && g.held.is_none() {
        g.held = Some(std::mem::take(&mut g.spare));
    }
}

/// The turn ends: what `hold_lines` gathered is written.
pub fn release_lines() {
    let Some(logger) = LOGGER.get() else {
        return;
    };
    let mut g = logger.sink.lock().unwrap_or_else(|p| p.into_inner());
    g.release();
}

/// Above this many bytes held in a turn, they are written at once (the memory stays small).
const HELD_MAX: usize = 32 * 1024;

static LOGGER: OnceLock<SinkLogger> = OnceLock::new();

fn install(sink: Sink, level: LevelFilter) {
    let logger = LOGGER.get_or_init(|| SinkLogger {
        level,
        sink: Mutex::new(Guarded::new(sink)),
    });
    // Fails only if a logger is already installed, which start-up never does twice.
    let _ = ::log::set_logger(logger);
    ::log::set_max_level(level);
    // Lines held in a turn reach the file before a panic ends the process (`panic = abort`):
    // they say what led to it. (`try_lock`: the panic may have come from inside the logger.)
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(Ok(mut g)) = LOGGER.get().map(|l| l.sink.try_lock()) {
            g.release();
        }
        previous(info);
    }));
}

fn install_stderr(level: LevelFilter) {
    let config = simplelog::ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .build();
    let _ = simplelog::WriteLogger::init(level, config, io::stderr());
}

/// One thread logs, but `log` wants `Sync`: the Mutex is never contended.
struct SinkLogger {
    level: LevelFilter,
    sink: Mutex<Guarded>,
}

/// The destination and the flood table that decides what reaches it.
struct Guarded {
    sink: Sink,
    flood: Flood,
    /// Lines for the file gathered during a reactor turn (`hold_lines`), if one is running.
    held: Option<Vec<u8>>,
    /// The buffer `held` had, kept between turns.
    spare: Vec<u8>,
}

impl Guarded {
    fn new(sink: Sink) -> Guarded {
        Guarded {
            sink,
            flood: Flood::new(),
            held: None,
            spare: Vec::new(),
        }
    }

    /// Writes one line, or adds it to the turn's held lines.
    fn emit(&mut self, level: Level, args: &fmt::Arguments, wall: SystemTime) {
        match self.held.as_mut() {
            Some(held) => {
                held.extend_from_slice(format_line(wall, level, args).as_bytes());
                if held.len() >= HELD_MAX {
                    self.sink.write_bytes(held);
                    held.clear();
                }
            }
            None => self.sink.write(level, args, wall),
        }
    }

    /// Writes the held lines and stops holding.
    fn release(&mut self) {
        let Some(mut held) = self.held.take() else {
            return;
        };
        if !held.is_empty() {
            self.sink.write_bytes(&held);
        }
        held.clear();
        if held.capacity() <= HELD_MAX {
            self.spare = held;
        }
    }

    /// One line: written (after any summary that is due or pending), or only counted when
    /// its target marks it as storm-prone and its kind is over the burst.
    fn line(
        &mut self,
        target: &str,
        level: Level,
        args: &fmt::Arguments,
        now: Instant,
        wall: SystemTime,
    ) {
        let key = target.strip_prefix(flood::TARGET_PREFIX);
        let mut summaries = Vec::new();
        let write = self.flood.offer(key, now, &mut summaries);
        for line in summaries {
            self.emit(Level::Info, &format_args!("{line}"), wall);
        }
        if write {
            self.emit(level, args, wall);
        }
    }
}

impl Log for SinkLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let t = std::time::Instant::now();
        let mut guarded = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        guarded.line(
            record.target(),
            record.level(),
            record.args(),
            Instant::now(),
            SystemTime::now(),
        );
        crate::turnstat::count("log.line", t.elapsed());
    }

    fn flush(&self) {}
}

/// A destination this module writes itself (stderr is simplelog's).
enum Sink {
    File {
        path: PathBuf,
        file: File,
    },
    Syslog {
        path: PathBuf,
        socket: Option<UnixDatagram>,
    },
}

impl Sink {
    fn open_file(path: &Path) -> io::Result<Sink> {
        Ok(Sink::File {
            path: path.to_path_buf(),
            file: open_append(path)?,
        })
    }

    fn connect_syslog(path: &Path) -> io::Result<Sink> {
        Ok(Sink::Syslog {
            path: path.to_path_buf(),
            socket: Some(connect(path)?),
        })
    }

    /// Whole lines, already formatted, to the file (`hold_lines`; a file sink only).
    fn write_bytes(&mut self, lines: &[u8]) {
        if let Sink::File { file, .. } = self {
            // A full disk cannot be reported in the log it fills; the lines are lost.
            let _ = file.write_all(lines);
        }
    }

    fn write(&mut self, level: Level, args: &fmt::Arguments, now: SystemTime) {
        match self {
            Sink::File { file, .. } => {
                // A full disk cannot be reported in the log it fills; the line is lost.
                let _ = file.write_all(format_line(now, level, args).as_bytes());
            }
            Sink::Syslog { path, socket } => {
                let packet = syslog_packet(level, std::process::id(), args);
                let sent = socket.as_ref().map(|s| s.send(&packet));
                match sent {
                    Some(Ok(_)) => {}
                    // syslogd is behind: drop the line rather than block every client.
                    Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // Not connected or refused: syslogd restarted; reconnect once per line.
                    _ => {
                        *socket = connect(path).ok();
                        if let Some(s) = socket.as_ref() {
                            let _ = s.send(&packet);
                        }
                    }
                }
            }
        }
    }

    fn reopen(&mut self) -> Result<Reopened, String> {
        match self {
            Sink::File { path, file } => {
                let fresh = open_append(path).map_err(|e| {
                    format!(
                        "cannot reopen the log file {}: {e}; still writing to the previous one \
                         (after a privilege drop the directory must be writable by the user, or \
                         logrotate must create the file: `create 0640 <user> adm`)",
                        path.display()
                    )
                })?;
                *file = fresh;
                Ok(Reopened::File(path.clone()))
            }
            Sink::Syslog { path, socket } => {
                let fresh = connect(path).map_err(|e| {
                    format!("cannot reconnect to syslog at {}: {e}", path.display())
                })?;
                *socket = Some(fresh);
                Ok(Reopened::Syslog(path.clone()))
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn connect(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// `2026-12-01T19:06:42.53Z [INFO] message\n`: the fraction is the nanoseconds without
/// trailing zeros (none when zero), like simplelog's RFC 3339 stamp on stderr.
pub fn format_line(now: SystemTime, level: Level, args: &fmt::Arguments) -> String {
    format!("{} [{}] {}\n", rfc3339(now), level.as_str(), args)
}

/// RFC 3339 in UTC with the fraction of a second; a clock before 1970 prints as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    crate::date::rfc3339_utc(t, true)
}

/// RFC 3164 severity of a `log` level.
fn severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `<PRI>postling[PID]: message`, cut (at a character boundary) to the RFC 3164 packet size.
/// No timestamp or host: on the local socket syslogd stamps the line itself.
pub fn syslog_packet(level: Level, pid: u32, args: &fmt::Arguments) -> Vec<u8> {
    let mut text = format!(
        "<{}>postling[{pid}]: {args}",
        FACILITY_MAIL * 8 + severity(level)
    );
    if text.len() > limits::SYSLOG_MAX_PACKET {
        let mut end = limits::SYSLOG_MAX_PACKET;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use std::time::UNIX_EPOCH;

    /// 2026-12-01T19:06:42Z.
    const STAMP: u64 = 1_796_152_002;

    #[test]
    fn line_format_matches_simplelogs() {
        let t = UNIX_EPOCH + Duration::new(STAMP, 530_566_300);
        assert_eq!(
            format_line(t, Level::Info, &format_args!("ready")),
            "2026-12-01T19:06:42.5305663Z [INFO] ready\n"
        );
        let t = UNIX_EPOCH + Duration::from_secs(STAMP);
        assert_eq!(
            format_line(t, Level::Warn, &format_args!("x {}", 1)),
            "2026-12-01T19:06:42Z [WARN] x 1\n"
        );
    }

    #[test]
    fn dates_across_leap_years_and_the_epoch() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn syslog_priority_is_mail_facility_plus_severity() {
        let p = |l| String::from_utf8(syslog_packet(l, 42, &format_args!("m"))).unwrap();
        assert_eq!(p(Level::Error), "<19>postling[42]: m");
        assert_eq!(p(Level::Warn), "<20>postling[42]: m");
        assert_eq!(p(Level::Info), "<22>postling[42]: m");
        assert_eq!(p(Level::Debug), "<23>postling[42]: m");
        assert_eq!(p(Level::Trace), "<23>postling[42]: m");
    }

    #[test]
    fn long_syslog_lines_are_cut_at_a_character_boundary() {
        let long = "é".repeat(limits::SYSLOG_MAX_PACKET);
        let packet = syslog_packet(Level::Info, 1, &format_args!("{long}"));
        assert!(packet.len() <= limits::SYSLOG_MAX_PACKET);
        assert!(packet.len() >= limits::SYSLOG_MAX_PACKET - 1);
        assert!(String::from_utf8(packet).is_ok());
    }

    #[test]
    fn destination_follows_log_file_and_foreground() {
        let f = PathBuf::from("/var/log/postling.log");
        assert_eq!(destination(Some(&f), true), Destination::File(f.clone()));
        assert_eq!(destination(Some(&f), false), Destination::File(f));
        assert_eq!(destination(None, true), Destination::Stderr);
        match destination(None, false) {
            Destination::Syslog(_) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_held_in_a_turn_reach_the_file_in_one_write_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postling.log");
        let mut g = Guarded::new(Sink::open_file(&path).unwrap());
        let t = UNIX_EPOCH + Duration::from_secs(STAMP);
        g.emit(Level::Info, &format_args!("before"), t);
        g.held = Some(Vec::new());
        g.emit(Level::Info, &format_args!("one"), t);
        g.emit(Level::Warn, &format_args!("two"), t);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-12-01T19:06:42Z [INFO] before\n",
            "held until the turn ends"
        );
        g.release();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-12-01T19:06:42Z [INFO] before\n2026-12-01T19:06:42Z [INFO] one\n\
             2026-12-01T19:06:42Z [WARN] two\n"
        );
        g.emit(Level::Info, &format_args!("after"), t);
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("[INFO] after\n")
        );
        // A turn that logs a lot writes as it goes: the held bytes stay under HELD_MAX.
        g.held = Some(Vec::new());
        let long = "x".repeat(1000);
        for _ in 0..100 {
            g.emit(Level::Info, &format_args!("{long}"), t);
        }
        assert!(g.held.as_ref().unwrap().len() < HELD_MAX);
        g.release();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert_eq!(lines, 4 + 100);
    }

    #[test]
    fn file_sink_appends_and_reopens_after_a_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postling.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut sink = Sink::open_file(&path).unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(STAMP);
        sink.write(Level::Info, &format_args!("one"), t);
        let rotated = dir.path().join("postling.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        sink.write(Level::Info, &format_args!("two"), t);
        assert_eq!(sink.reopen().unwrap(), Reopened::File(path.clone()));
        sink.write(Level::Error, &format_args!("three"), t);
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "old line\n2026-12-01T19:06:42Z [INFO] one\n2026-12-01T19:06:42Z [INFO] two\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "2026-12-01T19:06:42Z [ERROR] three\n"
        );
    }

    #[test]
    fn failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("postling.log");
        let mut sink = Sink::open_file(&path).unwrap();
        let moved = dir.path().join("moved");
        std::fs::rename(&sub, &moved).unwrap();
        let err = sink.reopen().unwrap_err();
        assert!(
            err.starts_with(&format!("cannot reopen the log file {}", path.display())),
            "{err}"
        );
        assert!(err.contains("still writing to the previous one"), "{err}");
        sink.write(Level::Info, &format_args!("kept"), UNIX_EPOCH);
        let text = std::fs::read_to_string(moved.join("postling.log")).unwrap();
        assert!(text.ends_with("[INFO] kept\n"), "{text}");
    }

    #[test]
    fn syslog_sink_sends_packets_and_reconnects_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let mut sink = Sink::connect_syslog(&path).unwrap();
        sink.write(Level::Info, &format_args!("ready"), UNIX_EPOCH);
        let mut buf = [0u8; 2048];
        let n = server.recv(&mut buf).unwrap();
        let want = format!("<22>postling[{}]: ready", std::process::id());
        assert_eq!(&buf[..n], want.as_bytes());

        // syslogd restarts: a new socket at the same path.
        drop(server);
        std::fs::remove_file(&path).unwrap();
        let server = UnixDatagram::bind(&path).unwrap();
        sink.write(Level::Warn, &format_args!("after restart"), UNIX_EPOCH);
        let n = server.recv(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"<20>postling["), "{:?}", &buf[..n]);
        assert!(buf[..n].ends_with(b"]: after restart"));
    }

    #[test]
    fn a_storm_reaches_the_file_as_its_first_lines_and_one_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postling.log");
        let mut g = Guarded::new(Sink::open_file(&path).unwrap());
        let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let target = flood::target("reject: RCPT", ip);
        let t = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(STAMP);
        for i in 0..500 {
            g.line(
                &target,
                Level::Info,
                &format_args!("reject: RCPT from [192.0.2.7]: 550 n{i}"),
                t,
                wall,
            );
        }
        g.line(
            "postling::hosts",
            Level::Info,
            &format_args!("Q1: removed"),
            t + Duration::from_secs(2),
            wall,
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .map(|l| l.split("] ").nth(1).unwrap())
            .collect();
        let burst = limits::LOG_FLOOD_BURST as usize;
        assert_eq!(lines.len(), burst + 2, "{text}");
        for (i, l) in lines.iter().take(burst).enumerate() {
            assert_eq!(*l, format!("reject: RCPT from [192.0.2.7]: 550 n{i}"));
        }
        assert_eq!(
            lines[burst],
            format!(
                "reject: RCPT from [192.0.2.7]: {} more like this in the last 2.0 s",
                500 - burst
            )
        );
        assert_eq!(lines[burst + 1], "Q1: removed");
    }

    #[test]
    fn syslog_without_a_socket_is_an_error_to_fall_back_on() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Sink::connect_syslog(&dir.path().join("none")).is_err());
    }

    #[test]
    fn syslog_sink_without_a_reader_drops_lines_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let _server = UnixDatagram::bind(&path).unwrap();
        let mut sink = Sink::connect_syslog(&path).unwrap();
        // Far more than the socket buffer holds: must return, never block.
        for i in 0..10_000 {
            sink.write(
                Level::Info,
                &format_args!("line {i} {}", "x".repeat(200)),
                UNIX_EPOCH,
            );
        }
    }
}
