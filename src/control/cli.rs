//! `postling queue flush|hold|release|delete|bounce`: the command-line side. Sends the command
//! to the running daemon over its control socket, or, with no daemon, carries it out on the
//! spool itself under the spool lock (see the parent module).
//!
//! Exit status (sysexits.h): 0 every part done; 64 (EX_USAGE) bad usage; 66 (EX_NOINPUT) some
//! id names no message in the queue (the other ids were still processed); 74 (EX_IOERR) the
//! spool refused a change; 75 (EX_TEMPFAIL) a daemon holds the spool but does not answer;
//! 77 (EX_NOPERM) the spool cannot be reached with this user's rights; 71 (EX_OSERR) any
//! other failure of the system.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use super::{Command, Line, Status, apply, lock_spool, socket_address};
use crate::config::Config;
use crate::daemon::privilege::{self, Account};
use crate::deliver::engine::{DeliveryPolicy, Engine};
use crate::deliver::local::Maildirs;
use crate::limits;
use crate::spool::Spool;

pub const EX_USAGE: u8 = 64;
pub const EX_NOINPUT: u8 = 66;
pub const EX_OSERR: u8 = 71;
pub const EX_IOERR: u8 = 74;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_NOPERM: u8 = 77;

/// Runs a parsed command (not `list`, which main handles as `-q`) and prints the outcome.
pub fn run(config: &Config, cmd: &Command) -> ExitCode {
    if let Command::Flush(ids)
    | Command::Hold(ids)
    | Command::Release(ids)
    | Command::Delete(ids)
    | Command::Bounce(ids) = cmd
    {
        // Ids travel as words of one line; anything else cannot be an id anyway.
        if let Some(bad) = ids
            .iter()
            .find(|id| id.0.is_empty() || id.0.contains(char::is_whitespace))
        {
            eprintln!("postling: {:?}: not a queue id", bad.0);
            return ExitCode::from(EX_USAGE);
        }
    }
    let dir = &config.spool_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return no_spool(dir, cmd),
        Err(e) => return fail(e, &format!("cannot reach the spool {}", dir.display())),
    };
    // Root acts as the spool's owner, so every file it makes belongs to the user the daemon
    // runs as (a root-owned 0600 bounce would be unreadable for the daemon).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && meta.uid() != 0 {
        let account = Account {
            name: privilege::name_of_uid(meta.uid()).unwrap_or_else(|| meta.uid().to_string()),
            uid: meta.uid(),
            gid: meta.gid(),
            groups: vec![meta.gid()],
        };
        if let Err(e) = privilege::drop_to(&account) {
            eprintln!("postling: {e}");
            return ExitCode::from(EX_OSERR);
        }
    }
    let deadline = Instant::now() + limits::CONTROL_CONNECT_TIMEOUT;
    loop {
        match lock_spool(dir, false) {
            Ok(Some(lock)) => {
                let lines = offline(config, cmd);
                drop(lock);
                return report(&lines);
            }
            Ok(None) => {}
            Err(e) => return fail(e, &format!("cannot lock the spool {}", dir.display())),
        }
        // A daemon holds the spool: ask it.
        match ask_daemon(dir, cmd) {
            Ok(lines) => return report(&lines),
            Err(e) if not_listening(&e) && Instant::now() < deadline => {
                // Between taking the lock and binding the socket (or just exiting).
                std::thread::sleep(limits::CONTROL_CONNECT_RETRY);
            }
            Err(e) => {
                eprintln!(
                    "postling: the daemon holds the spool {} but does not answer on its control socket: {e}",
                    dir.display()
                );
                return ExitCode::from(EX_TEMPFAIL);
            }
        }
    }
}

fn not_listening(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
    )
}

fn fail(e: io::Error, what: &str) -> ExitCode {
    eprintln!("postling: {what}: {e}");
    ExitCode::from(if e.kind() == io::ErrorKind::PermissionDenied {
        EX_NOPERM
    } else {
        EX_OSERR
    })
}

/// No spool directory at all: no message exists.
fn no_spool(dir: &Path, cmd: &Command) -> ExitCode {
    let ids = match cmd {
        Command::Hold(v) | Command::Release(v) | Command::Delete(v) | Command::Bounce(v) => v,
        Command::Flush(v) => v,
        Command::DeleteAll => return ExitCode::SUCCESS,
    };
    let lines: Vec<Line> = ids.iter().map(super::Line::unknown).collect();
    if lines.is_empty() {
        println!("the queue is empty (no spool at {} yet)", dir.display());
    }
    report(&lines)
}

/// No daemon: the command's own process acts, holding the spool lock. Opening the spool
/// tidies what a crash left, exactly as the daemon's start would.
fn offline(config: &Config, cmd: &Command) -> Vec<Line> {
    // Log lines (`ID: removed by postling queue delete`) go where the daemon's go, when
    // that is a file or a syslog socket; never onto the terminal twice.
    let dest = crate::daemon::log::destination(config.log_file.as_deref(), false);
    let loggable = match &dest {
        crate::daemon::log::Destination::Syslog(p) => p.exists(),
        _ => true,
    };
    if loggable {
        let _ = crate::daemon::log::init(dest, log::LevelFilter::Info);
    }
    let mut spool = match Spool::open(&config.spool_dir) {
        Ok((s, _)) => s,
        Err(e) => {
            return vec![Line::failed(format!(
                "cannot open the spool {}: {e}",
                config.spool_dir.display()
            ))];
        }
    };
    spool.set_sync_mode(config.fsync);
    let mut engine = Engine::new(
        Maildirs::new(&config.mailbox_dir, &config.hostname),
        DeliveryPolicy {
            hostname: config.hostname.clone(),
            retry_min: config.retry_min,
            retry_max: config.retry_max,
            queue_lifetime: config.queue_lifetime,
            delay_warning: config.delay_warning_time,
        },
    );
    apply(cmd, &mut spool, &mut engine, false, SystemTime::now())
}

/// Sends the request over the control socket and reads the reply lines until the daemon
/// closes.
fn ask_daemon(dir: &Path, cmd: &Command) -> io::Result<Vec<Line>> {
    let dir_fd = std::fs::File::open(dir)?;
    let mut stream = UnixStream::connect(socket_address(dir, &dir_fd))?;
    stream.set_read_timeout(Some(limits::CONTROL_REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(limits::CONTROL_REPLY_TIMEOUT))?;
    stream.write_all(cmd.encode().as_bytes())?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
            } else {
                e
            }
        })?;
        lines.push(Line::decode(&line).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {line:?}"))
        })?);
    }
    if lines.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without an answer (stopping?)",
        ));
    }
    Ok(lines)
}

/// Prints each line (successes on stdout, the rest on stderr) and picks the exit status.
fn report(lines: &[Line]) -> ExitCode {
    let mut status = 0;
    for l in lines {
        match l.status {
            Status::Ok => println!("{}", l.text),
            Status::Unknown => {
                eprintln!("postling: {}", l.text);
                if status == 0 {
                    status = EX_NOINPUT;
                }
            }
            Status::Failed => {
                eprintln!("postling: {}", l.text);
                status = EX_IOERR;
            }
        }
    }
    ExitCode::from(status)
}
