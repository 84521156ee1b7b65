//! The `sendmail` command (also `mailq`, and `postling sendmail`): how programs on the box
//! submit mail. It reads a message on standard input, decides its envelope (the flags, or the
//! To/Cc/Bcc headers with `-t`), completes its header, and writes it as one drop file into
//! `spool_dir/maildrop/`, a directory every user may write into but nobody but the daemon may
//! list or read (mode 1733, like /tmp without the read bit). The daemon's pickup (`pickup.rs`)
//! takes it from there: at once if it runs, at its next start otherwise.
//!
//! Durability: the file is written under `<name>.tmp` (`O_EXCL`, mode 0600), fsync'ed,
//! renamed to `<name>`, and the rename made durable (an fsync of `maildrop/` where the user may
//! open it, otherwise a syncfs of its filesystem) before the exit status 0. Any failure removes
//! the temporary file: nothing is ever half queued.
//!
//! Exit statuses are sysexits.h: 0, EX_USAGE 64 (bad flags, no recipients), EX_DATAERR 65
//! (unreadable or too large input, too many recipients), EX_NOUSER 67 (a recipient that is
//! not an address), EX_TEMPFAIL 75 (disk full, no maildrop yet, daemon not running for `-q`),
//! EX_NOPERM 77 (maildrop not writable, `-q` by a user who may not signal the daemon),
//! EX_CONFIG 78. `-bs` (SMTP on standard input and output) answers per message instead.

pub mod args;
pub mod bs;
pub mod dropfile;
pub mod message;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use crate::config::Config;
use crate::daemon::accounts::Files;
use crate::daemon::privilege;
use args::{Invocation, Mode};
use dropfile::DropEnvelope;

pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_NOUSER: u8 = 67;
pub const EX_OSERR: u8 = 71;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_NOPERM: u8 = 77;
pub const EX_CONFIG: u8 = 78;

/// The drop directory under `spool_dir`.
pub const MAILDROP_DIR: &str = "maildrop";
/// Its mode: anyone may create files (and, sticky, remove only their own); only its owner,
/// the daemon, may list or read it.
pub const MAILDROP_MODE: u32 = 0o1733;

const DEFAULT_CONFIG: &str = "/etc/postling/postling.conf";

/// A failure: the line for standard error and the exit status.
struct Fail(u8, String);

fn fail<T>(status: u8, text: impl Into<String>) -> Result<T, Fail> {
    Err(Fail(status, text.into()))
}

/// The domain that completes a bare user name (`root` → `root@<origin>`), for recipients and
/// for the sender: the hostname when it is one of the local domains, else the first local
/// domain, so mail to a bare name stays on the box.
pub fn origin_domain(config: &Config) -> &str {
    if config
        .domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&config.hostname))
    {
        &config.hostname
    } else {
        config
            .domains
            .first()
            .map_or(config.hostname.as_str(), |d| d.as_str())
    }
}

/// `name` → `name@origin`; an address with a domain is kept.
pub fn qualify(addr: &str, origin: &str) -> String {
    if addr.contains('@') {
        addr.to_string()
    } else {
        format!("{addr}@{origin}")
    }
}

/// Is `addr` a mailbox SMTP could carry (the same parser as RCPT TO)?
pub fn valid_address(addr: &str) -> bool {
    !addr.contains(['<', '>', '\r', '\n', '\0'])
        && crate::proto::smtp_addr::parse_rcpt(&format!("TO:<{addr}>")).is_ok()
}

/// May the user `name` (not root, not the daemon's user) claim `sender`? Only its own
/// address: its name at the hostname or at a local domain.
pub fn sender_allowed(name: &str, sender: &str, config: &Config) -> bool {
    let Some((local, domain)) = sender.rsplit_once('@') else {
        return false;
    };
    local == name
        && (domain.eq_ignore_ascii_case(&config.hostname)
            || config
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain)))
}

/// The uid of the configured `user` (the daemon's), if any.
pub fn daemon_uid(config: &Config) -> Option<u32> {
    let name = config.user.as_deref()?;
    privilege::lookup(&Files::system(), name)
        .ok()
        .map(|a| a.uid)
}

/// Runs `sendmail ARGS` (or `mailq` when `mailq`); `config_path` comes from `postling -c FILE
/// sendmail`, and `-C` overrides it.
pub fn main(args: &[String], mailq: bool, config_path: Option<PathBuf>) -> ExitCode {
    let me = if mailq { "mailq" } else { "sendmail" };
    match run(args, mailq, config_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(status, text)) => {
            if !text.is_empty() {
                eprintln!("postling {me}: {text}");
            }
            ExitCode::from(status)
        }
    }
}

fn run(args: &[String], mailq: bool, config_path: Option<PathBuf>) -> Result<(), Fail> {
    let inv = match args::parse(args, mailq) {
        Ok(inv) => inv,
        Err(e) => {
            return fail(
                EX_USAGE,
                format!(
                    "{e}\nusage: sendmail [-t] [-i] [-f sender] [-F name] [-C config] [-v] [-bm|-bs|-bp|-q] [recipient ...]"
                ),
            );
        }
    };
    for note in &inv.notes {
        eprintln!("postling sendmail: note: {note}");
    }
    let path = inv
        .config
        .clone()
        .or(config_path)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    if let Err(e) = File::open(&path) {
        if e.kind() == io::ErrorKind::PermissionDenied {
            return fail(
                EX_CONFIG,
                format!(
                    "cannot read the config {}: {e}; sendmail runs as the calling user, so the \
                     config and its directory must be readable by everyone (chmod 644 {}, chmod 755 on its directory)",
                    path.display(),
                    path.display()
                ),
            );
        }
    }
    // sendmail runs as the calling user and never talks to the relay: relay_auth_file (mode
    // 600, the daemon's) is not its to read.
    let config = match Config::load_without_secrets(&path) {
        Ok((c, _)) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return fail(
                EX_CONFIG,
                format!("cannot use the config {}", path.display()),
            );
        }
    };
    match inv.mode {
        Mode::ListQueue => print_queue_or_fail(&config),
        Mode::Flush => flush(&config),
        Mode::NewAliases => {
            eprintln!(
                "postling sendmail: postling reads {} itself when it changes; nothing to rebuild",
                config.aliases_file.display()
            );
            Ok(())
        }
        Mode::Smtp => smtp_on_stdio(&inv, &config),
        Mode::Deliver => submit(&inv, &config),
    }
}

/// `-bp` / `mailq`: the same listing as `postling -q`.
fn print_queue_or_fail(config: &Config) -> Result<(), Fail> {
    match print_queue(config) {
        0 => Ok(()),
        s => Err(Fail(s, String::new())),
    }
}

/// Prints the queue listing (`postling -q`, `mailq`); returns the exit status.
pub fn print_queue(config: &Config) -> u8 {
    match crate::spool::list_queue(&config.spool_dir) {
        Ok(entries) => {
            print!(
                "{}",
                crate::spool::format_queue(&entries, SystemTime::now())
            );
            0
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            println!(
                "Mail queue is empty (no spool at {} yet)",
                config.spool_dir.display()
            );
            0
        }
        Err(e) => {
            eprintln!(
                "postling: cannot read the queue in {}: {e}",
                config.spool_dir.display()
            );
            if e.kind() == io::ErrorKind::PermissionDenied {
                EX_NOPERM
            } else {
                EX_OSERR
            }
        }
    }
}

/// `-q`: SIGUSR2 to the running daemon (found by its locked pid file): every queued message
/// and every waiting drop file is tried now.
fn flush(config: &Config) -> Result<(), Fail> {
    let Some(pid_path) = config.pid_file.as_deref() else {
        return fail(
            EX_CONFIG,
            format!(
                "-q needs pid_file in {} to find the daemon",
                config.path.display()
            ),
        );
    };
    let not_running = || {
        fail(
            EX_TEMPFAIL,
            "postling is not running; queued mail is sent when it starts",
        )
    };
    let Ok(file) = File::open(pid_path) else {
        return not_running();
    };
    // SAFETY: flock on a descriptor owned by `file`. The daemon holds LOCK_EX while it runs.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        return not_running();
    }
    let mut text = String::new();
    let _ = (&file).read_to_string(&mut text);
    let Some(pid) = text.trim().parse::<libc::pid_t>().ok().filter(|&p| p > 1) else {
        return not_running();
    };
    // SAFETY: kill with a pid read from the daemon's locked pid file and a valid signal.
    if unsafe { libc::kill(pid, libc::SIGUSR2) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return fail(
                EX_NOPERM,
                "only root and the daemon's user may ask for a queue run",
            );
        }
        return fail(
            EX_TEMPFAIL,
            format!("cannot signal postling (pid {pid}): {e}"),
        );
    }
    Ok(())
}

/// Who submits: the calling user, and what it may claim.
pub struct Submitter {
    pub uid: u32,
    pub name: String,
    /// `name@origin`: the address it sends as by default.
    pub own: String,
    pub origin: String,
    /// Root or the daemon's user: may claim any envelope sender.
    pub privileged: bool,
}

impl Submitter {
    fn calling(config: &Config) -> Result<Submitter, Fail> {
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let Some(name) = privilege::name_of_uid(uid) else {
            return fail(
                EX_NOPERM,
                format!("uid {uid} has no entry in /etc/passwd, so it has no address to send from"),
            );
        };
        let origin = origin_domain(config).to_string();
        Ok(Submitter {
            uid,
            own: format!("{name}@{origin}"),
            name,
            origin,
            privileged: uid == 0 || daemon_uid(config) == Some(uid),
        })
    }

    /// The envelope sender for a requested one (`-f`, `MAIL FROM`): `Err` when it is not an
    /// address; `Ok((sender, false))` when the request was refused and the own address used.
    pub fn sender(&self, asked: &str, config: &Config) -> Result<(String, bool), String> {
        let s = asked.trim();
        let s = s
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(s);
        let s = if s.is_empty() {
            String::new()
        } else {
            qualify(s, &self.origin)
        };
        if !s.is_empty() && !valid_address(&s) {
            return Err(format!("{s:?} is not a mail address"));
        }
        if self.privileged || sender_allowed(&self.name, &s, config) {
            Ok((s, true))
        } else {
            Ok((self.own.clone(), false))
        }
    }
}

/// `-bm`: read, check, complete and drop the message.
fn submit(inv: &Invocation, config: &Config) -> Result<(), Fail> {
    let who = Submitter::calling(config)?;
    let sender = match inv.sender.as_deref() {
        None => who.own.clone(),
        Some(asked) => match who.sender(asked, config) {
            Err(e) => return fail(EX_USAGE, format!("-f {e}")),
            Ok((s, true)) => s,
            Ok((s, false)) => {
                eprintln!(
                    "postling sendmail: note: only root and the daemon's user may set the envelope sender; using {s} instead of <{}>",
                    asked.trim()
                );
                s
            }
        },
    };
    let origin = who.origin.clone();

    let limit = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
    let raw = read_input(inv.ignore_dots, limit)?;
    let split = message::split(&raw);
    let mut recipients: Vec<String> = Vec::new();
    if inv.from_headers {
        for f in split
            .fields
            .iter()
            .filter(|f| f.is("To") || f.is("Cc") || f.is("Bcc"))
        {
            recipients.extend(message::addresses(&f.value()));
        }
    }
    recipients.extend(inv.recipients.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    let mut envelope_rcpts = Vec::new();
    for r in recipients {
        let r = qualify(r.trim(), &origin);
        if !valid_address(&r) {
            return fail(EX_NOUSER, format!("{r:?}: not a valid recipient address"));
        }
        if seen.insert(r.to_ascii_lowercase()) {
            envelope_rcpts.push(r);
        }
    }
    if envelope_rcpts.is_empty() {
        let why = if inv.from_headers {
            "no recipients: none given and none in To:, Cc: or Bcc:"
        } else {
            "no recipients given (name them as arguments, or use -t)"
        };
        return fail(EX_USAGE, why);
    }
    if envelope_rcpts.len() > crate::limits::SENDMAIL_MAX_RCPTS {
        return fail(
            EX_DATAERR,
            format!(
                "too many recipients ({}; at most {})",
                envelope_rcpts.len(),
                crate::limits::SENDMAIL_MAX_RCPTS
            ),
        );
    }
    let (token, size) = drop_message(
        config,
        &who,
        inv.full_name.as_deref(),
        &sender,
        &envelope_rcpts,
        &raw,
    )?;
    if inv.verbose {
        eprintln!(
            "postling sendmail: queued {size} bytes from <{sender}> for {} in {}/{token}",
            envelope_rcpts.join(", "),
            config.spool_dir.join(MAILDROP_DIR).display()
        );
    }
    Ok(())
}

/// `-bs`: SMTP on standard input and output (see `bs.rs`). The sender rules are those of
/// `-f`; each message is dropped like one from `-bm`.
fn smtp_on_stdio(inv: &Invocation, config: &Config) -> Result<(), Fail> {
    let who = Submitter::calling(config)?;
    let ctx = bs::BsContext {
        hostname: &config.hostname,
        max_message_size: usize::try_from(config.max_message_size).unwrap_or(usize::MAX),
    };
    let mut drop_one = |asked: &str, rcpts: &[String], data: &[u8]| -> Result<String, String> {
        let sender = match who.sender(asked, config) {
            Ok((s, _)) => s,
            Err(e) => return Err(format!("553 5.1.7 {e}")),
        };
        let rcpts: Vec<String> = rcpts.iter().map(|r| qualify(r, &who.origin)).collect();
        match drop_message(
            config,
            &who,
            inv.full_name.as_deref(),
            &sender,
            &rcpts,
            data,
        ) {
            Ok((token, _)) => Ok(format!("queued as maildrop/{token} from <{sender}>")),
            Err(Fail(EX_DATAERR, text)) => Err(format!("552 5.3.4 {text}")),
            Err(Fail(_, text)) => Err(format!("451 4.3.0 {text}")),
        }
    };
    let stdin = io::stdin();
    let mut input = stdin.lock();
    let mut out = io::stdout().lock();
    bs::run(&mut input, &mut out, &ctx, &mut drop_one)
        .or_else(|e| fail(EX_TEMPFAIL, format!("-bs: {e}")))
}

/// Completes the message's header, checks its size and writes the drop file; returns the
/// drop file's name and the message's size.
fn drop_message(
    config: &Config,
    who: &Submitter,
    full_name: Option<&str>,
    sender: &str,
    recipients: &[String],
    raw: &[u8],
) -> Result<(String, usize), Fail> {
    let limit = usize::try_from(config.max_message_size).unwrap_or(usize::MAX);
    let now = SystemTime::now();
    let token = random_name()?;
    let from = message::from_value(full_name, &who.own);
    let date = crate::date::rfc5322_date(now);
    let micros = crate::spool::format::micros_since_epoch(now);
    let message_id = format!(
        "<{micros}.{}@{}>",
        token.get(..12).unwrap_or(&token),
        config.hostname
    );
    let completed = message::complete(
        raw,
        &message::Additions {
            from: &from,
            date: &date,
            message_id: &message_id,
        },
    );
    // The daemon refuses what this check refuses (into maildrop/bad/): say so now instead.
    if let Err(why) = message::check_header(&completed) {
        return fail(EX_DATAERR, format!("cannot send this message: {why}"));
    }
    if completed.len() > limit {
        return fail(
            EX_DATAERR,
            format!(
                "message too large: {} bytes with its header completed, max_message_size is {}",
                completed.len(),
                config.max_message_size
            ),
        );
    }
    let env = DropEnvelope {
        uid: who.uid,
        arrival: now,
        sender: sender.to_string(),
        recipients: recipients.to_vec(),
    };
    let dir = config.spool_dir.join(MAILDROP_DIR);
    write_drop(&dir, &token, &env, &completed, config.user.is_some())?;
    Ok((token, completed.len()))
}

/// Standard input, normalised, refused once it grows past `limit`.
fn read_input(ignore_dots: bool, limit: usize) -> Result<Vec<u8>, Fail> {
    let mut n = message::Normaliser::new(ignore_dots);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        let got = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(g) => g,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return fail(EX_DATAERR, format!("cannot read standard input: {e}")),
        };
        let more = n.push(buf.get(..got).unwrap_or_default());
        if n.len() > limit {
            return fail(
                EX_DATAERR,
                format!("message too large: over max_message_size ({limit} bytes)"),
            );
        }
        if !more {
            break;
        }
    }
    Ok(n.finish())
}

/// 128 random bits as 32 hex digits: the drop file's name, unguessable so that nobody can
/// open another user's file by name in the unlistable directory.
fn random_name() -> Result<String, Fail> {
    let mut bytes = [0u8; 16];
    let mut got = 0;
    while got < bytes.len() {
        let rest = bytes.get_mut(got..).unwrap_or_default();
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return fail(EX_OSERR, format!("no random numbers: {e}"));
        }
        got += n as usize;
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_error(dir: &Path, e: &io::Error) -> Fail {
    let status = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => EX_NOPERM,
        _ => EX_TEMPFAIL,
    };
    let hint = match e.raw_os_error() {
        Some(libc::ENOENT) => "; the daemon creates it when it starts: start postling once",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "; it must be mode 1733 and spool_dir searchable (the daemon sets both when it starts)"
        }
        _ => "",
    };
    Fail(
        status,
        format!("cannot write into {}: {e}{hint}", dir.display()),
    )
}

/// Writes `<dir>/<token>.tmp`, makes it durable, renames it to `<dir>/<token>` and makes the
/// rename durable. On any error the temporary file is removed. `readable`: the daemon drops
/// its privileges, so the file is made readable for it (mode 0644) before it becomes visible;
/// the name stays the secret (the directory cannot be listed).
fn write_drop(
    dir: &Path,
    token: &str,
    env: &DropEnvelope,
    msg: &[u8],
    readable: bool,
) -> Result<(), Fail> {
    let tmp = dir.join(format!("{token}.tmp"));
    let fin = dir.join(token);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| write_error(dir, &e))?;
    let result = (|| -> io::Result<()> {
        file.write_all(dropfile::encode(env).as_bytes())?;
        file.write_all(msg)?;
        if readable {
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &fin)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(dir, &e));
    }
    // The rename must be durable before the exit status says so. The directory itself can be
    // opened only by its owner (no read bit for others); everyone else syncs the filesystem.
    let synced = match File::open(dir) {
        Ok(d) => d.sync_all(),
        // SAFETY: syncfs on a descriptor owned by `file`.
        Err(_) => match unsafe { libc::syncfs(file.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        },
    };
    if let Err(e) = synced {
        // Whether the rename survives a crash is unknown: take the message back, so the
        // caller's retry cannot make a duplicate.
        let _ = std::fs::remove_file(&fin);
        return Err(write_error(dir, &e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hostname: &str, domains: &[&str]) -> Config {
        let mut c = Config::defaults(Path::new("/x.conf"));
        c.hostname = hostname.into();
        c.domains = domains.iter().map(|d| d.to_string()).collect();
        c
    }

    #[test]
    fn bare_names_stay_on_the_box() {
        let c = config("mail.example.test", &["example.test"]);
        assert_eq!(origin_domain(&c), "example.test");
        assert_eq!(qualify("root", origin_domain(&c)), "root@example.test");
        assert_eq!(qualify("a@b.test", "x"), "a@b.test");
        let c = config("box.test", &["example.test", "box.test"]);
        assert_eq!(origin_domain(&c), "box.test");
    }

    #[test]
    fn unprivileged_senders_may_claim_only_their_own_address() {
        let c = config("mail.example.test", &["example.test"]);
        assert!(sender_allowed("bob", "bob@example.test", &c));
        assert!(sender_allowed("bob", "bob@MAIL.example.test", &c));
        assert!(!sender_allowed("bob", "alice@example.test", &c));
        assert!(!sender_allowed("bob", "bob@elsewhere.test", &c));
        assert!(!sender_allowed("bob", "", &c));
    }

    #[test]
    fn address_syntax() {
        assert!(valid_address("alice@example.test"));
        assert!(valid_address("\"a b\"@example.test"));
        assert!(!valid_address("a b@example.test"));
        assert!(!valid_address("a@"));
        assert!(!valid_address("<a@b.test>"));
    }
}
