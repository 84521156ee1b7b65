//! The maildrop pickup: the daemon's side of `sendmail`. It owns `spool_dir/maildrop/`
//! (creates it mode 1733, `bad/` inside it 0700), watches it with inotify (one descriptor in
//! the reactor's poll: a rename into the directory wakes the daemon, an idle daemon is never
//! woken), scans it once at start-up, and turns each drop file into a queue entry.
//!
//! Each drop file is checked before anything is queued: a plain file with one link, owned
//! by the uid its envelope names, no larger than `max_message_size` allows, a well-formed
//! envelope and header section, every address valid, and a sender that uid may claim (root
//! and the daemon's own user any; everyone else only their own address). A file that fails
//! is moved into `maildrop/bad/` with a log line naming it and the reason.
//!
//! Crash safety: the queue entry records the drop file's name (`pickup` in its envelope
//! header) and is committed (fsync, rename, directory fsync) before the drop file is unlinked
//! and `maildrop/` fsync'ed. A crash in between leaves both; the start-up scan finds the name
//! in the queue and only removes the drop file, so the message is delivered once.

use std::collections::{HashSet, VecDeque};
use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::{info, warn};

use crate::config::Config;
use crate::limits;
use crate::mail::{BodyType, Envelope};
use crate::sendmail::{self, MAILDROP_DIR, MAILDROP_MODE, dropfile, message};

/// Where rejected drop files go.
const BAD_DIR: &str = "bad";

/// What the checks need from the config (replaced on reload).
#[derive(Clone, Debug)]
pub struct PickupSettings {
    pub hostname: String,
    pub domains: Vec<String>,
    pub max_message_size: u64,
}

impl PickupSettings {
    pub fn from_config(config: &Config) -> PickupSettings {
        PickupSettings {
            hostname: config.hostname.clone(),
            domains: config.domains.clone(),
            max_message_size: config.max_message_size,
        }
    }
}

/// A drop file read and checked: ready to be written into the spool.
#[derive(Debug)]
pub struct Accepted {
    pub envelope: Envelope,
    pub uid: u32,
    /// The user's name when it is a plain one (for the Received header).
    pub user: Option<String>,
    /// The message, CRLF lines, header first.
    pub data: Vec<u8>,
}

/// What became of one name taken from the queue of waiting files.
#[derive(Debug)]
pub enum Loaded {
    Accepted(Accepted),
    /// Invalid: to be moved into `bad/` with this reason.
    Invalid(String),
    /// Gone meanwhile (already handled), or not a file we look at.
    Skip,
    /// Could not be read for a reason that may pass (I/O): left where it is.
    Later(String),
}

pub struct Pickup {
    dir: PathBuf,
    inotify: OwnedFd,
    /// Names to look at, in arrival order, without repeats.
    waiting: VecDeque<String>,
    queued: HashSet<String>,
    /// Queued by this process but their unlink failed: never offered again (the next start
    /// finds them in the queue and removes them).
    done: HashSet<String>,
    settings: PickupSettings,
    /// The uid the daemon runs as: like root, it may claim any sender.
    own_uid: u32,
}

fn mkdir_mode(path: &Path, mode: u32) -> io::Result<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
        other => other?,
    }
    // The creation mode went through the umask; an existing directory gets the mode too.
    if fs::symlink_metadata(path)?.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

impl Pickup {
    /// Creates `maildrop/` (1733) and `maildrop/bad/` (0700), makes `spool_dir` searchable
    /// (0711: users must reach `maildrop/`, and nothing else there is readable), and starts
    /// watching. Returns the pickup and the drop names waiting (for the start-up scan).
    pub fn open(spool_dir: &Path, settings: PickupSettings) -> io::Result<(Pickup, Vec<String>)> {
        let mode = fs::metadata(spool_dir)?.mode() & 0o7777;
        if mode & 0o011 != 0o011 {
            fs::set_permissions(spool_dir, fs::Permissions::from_mode(mode | 0o011))?;
            info!(
                "made {} searchable (mode {:04o}) so that sendmail reaches {MAILDROP_DIR}/",
                spool_dir.display(),
                mode | 0o011
            );
        }
        let dir = spool_dir.join(MAILDROP_DIR);
        mkdir_mode(&dir, MAILDROP_MODE)?;
        mkdir_mode(&dir.join(BAD_DIR), 0o700)?;
        File::open(spool_dir)?.sync_all()?;
        // SAFETY: inotify_init1 has no memory preconditions; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let inotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let c_dir = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a path with a NUL byte"))?;
        // Watching starts before the scan, so a file renamed in between is seen by one of them.
        // SAFETY: a valid descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                inotify.as_raw_fd(),
                c_dir.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_ONLYDIR,
            )
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let own_uid = unsafe { libc::geteuid() };
        let p = Pickup {
            dir,
            inotify,
            waiting: VecDeque::new(),
            queued: HashSet::new(),
            done: HashSet::new(),
            settings,
            own_uid,
        };
        let names = p.list(true)?;
        Ok((p, names))
    }

    /// The names in `maildrop/` worth a look, oldest first (by name would be random). At
    /// start-up (`cleanup`) stale `.tmp` files of a `sendmail` that died are removed.
    fn list(&self, cleanup: bool) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let now = SystemTime::now();
        for ent in fs::read_dir(&self.dir)? {
            let ent = ent?;
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                warn!(
                    "pickup: ignoring {} (not a drop file name)",
                    ent.path().display()
                );
                continue;
            };
            if name == BAD_DIR {
                continue;
            }
            if dropfile::is_tmp_name(&name) {
                let stale = ent
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > limits::MAILDROP_TMP_STALE);
                if cleanup && stale {
                    match fs::remove_file(ent.path()) {
                        Ok(()) => info!("pickup: removed stale {}", ent.path().display()),
                        Err(e) => warn!("pickup: cannot remove {}: {e}", ent.path().display()),
                    }
                }
                continue;
            }
            let mtime = ent.metadata().and_then(|m| m.modified()).ok();
            names.push((mtime, name));
        }
        names.sort_unstable();
        Ok(names.into_iter().map(|(_, n)| n).collect())
    }

    pub fn fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }

    pub fn set_settings(&mut self, settings: PickupSettings) {
        self.settings = settings;
    }

    /// Queues a name to look at (once).
    pub fn offer(&mut self, name: String) {
        if !self.done.contains(&name) && self.queued.insert(name.clone()) {
            self.waiting.push_back(name);
        }
    }

    /// Lists `maildrop/` again (SIGUSR2, an inotify queue overflow).
    pub fn rescan(&mut self) {
        match self.list(false) {
            Ok(names) => names.into_iter().for_each(|n| self.offer(n)),
            Err(e) => warn!("pickup: cannot list {}: {e}", self.dir.display()),
        }
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty()
    }

    pub fn next_name(&mut self) -> Option<String> {
        let n = self.waiting.pop_front()?;
        self.queued.remove(&n);
        Some(n)
    }

    /// Reads every pending inotify event (the descriptor is edge-triggered in the poll) and
    /// queues the names renamed or written into `maildrop/`.
    pub fn readable(&mut self) {
        let mut buf = [0u8; limits::INOTIFY_BUF];
        loop {
            // SAFETY: read into a buffer we own, at most its length.
            let n =
                unsafe { libc::read(self.inotify.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    _ => {
                        warn!("pickup: reading inotify events: {e}");
                        return;
                    }
                }
            }
            if n == 0 {
                return;
            }
            let events = buf.get(..n as usize).unwrap_or_default();
            let mut overflow = false;
            for (mask, name) in parse_events(events) {
                if mask & libc::IN_Q_OVERFLOW != 0 {
                    overflow = true;
                } else if let Some(name) = name {
                    if !dropfile::is_tmp_name(&name) && name != BAD_DIR {
                        self.offer(name);
                    }
                }
            }
            if overflow {
                warn!("pickup: inotify queue overflowed; listing maildrop/ again");
                self.rescan();
            }
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads and checks the drop file `name`.
    pub fn load(&self, name: &str) -> Loaded {
        if !dropfile::is_drop_name(name) {
            return Loaded::Invalid("not a drop file name".into());
        }
        let s = &self.settings;
        let max_data = usize::try_from(s.max_message_size).unwrap_or(usize::MAX);
        let max_file = max_data.saturating_add(limits::SPOOL_MAX_CONTROL);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(self.path(name))
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Skip,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Loaded::Invalid("a symbolic link".into());
            }
            // Made by hand with a mode the daemon's user cannot read: it never will be.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Loaded::Invalid(format!("not readable by the daemon ({e})"));
            }
            Err(e) => return Loaded::Later(format!("cannot open: {e}")),
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return Loaded::Later(format!("cannot stat: {e}")),
        };
        if !meta.file_type().is_file() {
            return Loaded::Invalid("not a plain file".into());
        }
        if meta.nlink() != 1 {
            return Loaded::Invalid(format!("{} links (a drop file has one)", meta.nlink()));
        }
        if meta.len() > max_file as u64 {
            return Loaded::Invalid(format!(
                "{} bytes: larger than max_message_size ({}) allows",
                meta.len(),
                s.max_message_size
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        if let Err(e) = (&file).take(max_file as u64 + 1).read_to_end(&mut bytes) {
            return Loaded::Later(format!("cannot read: {e}"));
        }
        match check(&bytes, meta.uid(), self.own_uid, s) {
            Ok((env, offset, user)) => {
                let mut data = bytes;
                data.drain(..offset);
                Loaded::Accepted(Accepted {
                    uid: env.uid,
                    user,
                    envelope: to_spool_envelope(env, &data, name),
                    data,
                })
            }
            Err(why) => Loaded::Invalid(why),
        }
    }

    /// The drop file is queued: unlink it and make that durable before the entry can be
    /// delivered and removed (else a power cut could bring back the file without its entry).
    pub fn remove(&mut self, name: &str) -> io::Result<()> {
        let result = match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => File::open(&self.dir).and_then(|d| d.sync_all()),
        };
        if result.is_err() {
            self.done.insert(name.to_string());
        }
        result
    }

    /// Moves an invalid drop file into `bad/` (removes it if that fails) and logs why.
    pub fn reject(&self, name: &str, why: &str) {
        let from = self.path(name);
        let bad_name: String = name
            .chars()
            .map(|c| if c == '/' || c.is_control() { '_' } else { c })
            .collect();
        let to = self.dir.join(BAD_DIR).join(&bad_name);
        match fs::rename(&from, &to) {
            Ok(()) => warn!(
                "pickup: maildrop/{} refused: {why}; moved to {}",
                name.escape_debug(),
                to.display()
            ),
            Err(e) => {
                let removed = fs::remove_file(&from);
                warn!(
                    "pickup: maildrop/{} refused: {why}; cannot move it into bad/ ({e}), {}",
                    name.escape_debug(),
                    if removed.is_ok() {
                        "removed it"
                    } else {
                        "cannot remove it either"
                    }
                );
            }
        }
    }
}

/// (mask, name) of each event in a buffer `read` from an inotify descriptor.
fn parse_events(mut buf: &[u8]) -> Vec<(u32, Option<String>)> {
    const HEAD: usize = 16; // wd, mask, cookie, len: four 32-bit fields
    let mut out = Vec::new();
    while buf.len() >= HEAD {
        let word = |i: usize| {
            let b = buf.get(i..i + 4).unwrap_or(&[0; 4]);
            u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        };
        let mask = word(4);
        let len = word(12) as usize;
        let raw = buf.get(HEAD..HEAD + len).unwrap_or_default();
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let name = (!raw.is_empty()).then(|| String::from_utf8_lossy(raw).into_owned());
        out.push((mask, name));
        buf = buf.get(HEAD + len..).unwrap_or_default();
    }
    out
}

/// The checks of a drop file's content: envelope, owner, sizes, header, addresses, sender.
/// Ok carries the envelope, where the message starts and the user's name.
pub fn check(
    bytes: &[u8],
    owner: u32,
    own_uid: u32,
    s: &PickupSettings,
) -> Result<(dropfile::DropEnvelope, usize, Option<String>), String> {
    let (env, offset) = dropfile::decode(bytes, limits::SPOOL_MAX_CONTROL)?;
    if env.uid != owner {
        return Err(format!(
            "the envelope says uid {} but the file belongs to uid {owner}",
            env.uid
        ));
    }
    let data = bytes.get(offset..).unwrap_or_default();
    if data.len() as u64 > s.max_message_size {
        return Err(format!(
            "message of {} bytes is over max_message_size ({})",
            data.len(),
            s.max_message_size
        ));
    }
    message::check_header(data)?;
    if env.recipients.len() > limits::SENDMAIL_MAX_RCPTS {
        return Err(format!("{} recipients", env.recipients.len()));
    }
    if let Some(r) = env.recipients.iter().find(|r| !sendmail::valid_address(r)) {
        return Err(format!("recipient {r:?} is not an address"));
    }
    if !env.sender.is_empty() && !sendmail::valid_address(&env.sender) {
        return Err(format!("sender {:?} is not an address", env.sender));
    }
    let name = crate::daemon::privilege::name_of_uid(owner);
    if owner != 0 && owner != own_uid {
        let allowed = name.as_deref().is_some_and(|n| {
            let c = sender_config(s);
            sendmail::sender_allowed(n, &env.sender, &c)
        });
        if !allowed {
            return Err(format!(
                "uid {owner} ({}) may not send as <{}>",
                name.as_deref().unwrap_or("no passwd entry"),
                env.sender
            ));
        }
    }
    let plain = name.filter(|n| {
        !n.is_empty()
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    Ok((env, offset, plain))
}

/// The parts of a config `sender_allowed` reads.
fn sender_config(s: &PickupSettings) -> Config {
    let mut c = Config::defaults(Path::new(""));
    c.hostname = s.hostname.clone();
    c.domains = s.domains.clone();
    c
}

fn to_spool_envelope(env: dropfile::DropEnvelope, data: &[u8], name: &str) -> Envelope {
    let eight_bit = data.iter().any(|&b| b >= 0x80);
    let utf8_addr = !env.sender.is_ascii() || env.recipients.iter().any(|r| !r.is_ascii());
    Envelope {
        sender: env.sender,
        recipients: env.recipients,
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: "localhost".into(),
        arrival: env.arrival,
        smtputf8: utf8_addr,
        body: if eight_bit {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        pickup: Some(name.to_string()),
    }
}

/// `Received: from local user NAME (uid N) by HOST (postling) with local id ID; DATE`,
/// folded, each line ending in CRLF.
pub fn received_header(
    user: Option<&str>,
    uid: u32,
    hostname: &str,
    id: &str,
    date: &str,
) -> String {
    let who = match user {
        Some(n) => format!("local user {n} (uid {uid})"),
        None => format!("local uid {uid}"),
    };
    format!(
        "Received: from {who}\r\n\tby {hostname} (postling) with local id {id};\r\n\t{date}\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn settings() -> PickupSettings {
        PickupSettings {
            hostname: "mail.example.test".into(),
            domains: vec!["example.test".into()],
            max_message_size: 200,
        }
    }

    fn file(uid: u32, sender: &str, rcpts: &[&str], msg: &[u8]) -> Vec<u8> {
        let env = dropfile::DropEnvelope {
            uid,
            arrival: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        };
        let mut f = dropfile::encode(&env).into_bytes();
        f.extend_from_slice(msg);
        f
    }

    #[test]
    fn a_good_file_from_root_passes_whatever_its_sender() {
        let f = file(
            0,
            "anyone@else.test",
            &["alice@example.test"],
            b"From: x\r\n\r\nhi\r\n",
        );
        let (env, offset, user) = check(&f, 0, 65534, &settings()).unwrap();
        assert_eq!(env.sender, "anyone@else.test");
        assert_eq!(&f[offset..], b"From: x\r\n\r\nhi\r\n");
        assert_eq!(user.as_deref(), Some("root"));
        // The daemon's own uid may too.
        assert!(
            check(
                &file(4242, "x@y.test", &["a@example.test"], b"From: x\r\n\r\n"),
                4242,
                4242,
                &settings()
            )
            .is_ok()
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let s = settings();
        let msg = b"From: x\r\n\r\nhi\r\n";
        let cases: Vec<(Vec<u8>, u32, &str)> = vec![
            (
                file(0, "", &["a@example.test"], msg),
                1000,
                "the envelope says uid 0 but the file belongs to uid 1000",
            ),
            (
                file(0, "", &["a@example.test"], &[b'x'; 300]),
                0,
                "message of 300 bytes is over max_message_size (200)",
            ),
            (
                file(0, "", &["a@example.test"], b"no header\r\n"),
                0,
                "the header section does not end with an empty line",
            ),
            (
                file(0, "", &["a b@example.test"], msg),
                0,
                "recipient \"a b@example.test\" is not an address",
            ),
            (
                file(65534, "root@example.test", &["a@example.test"], msg),
                65534,
                "uid 65534 (nobody) may not send as <root@example.test>",
            ),
            (
                b"garbage".to_vec(),
                0,
                "the envelope header does not end (or is too large)",
            ),
        ];
        for (f, owner, why) in cases {
            assert_eq!(check(&f, owner, 4242, &s).unwrap_err(), why);
        }
        // nobody's own address is fine.
        assert!(
            check(
                &file(65534, "nobody@example.test", &["a@example.test"], msg),
                65534,
                4242,
                &s
            )
            .is_ok()
        );
    }

    #[test]
    fn the_received_header() {
        assert_eq!(
            received_header(
                Some("nobody"),
                65534,
                "mail.example.test",
                "01K0VS027V6M",
                "Fri, 04 Dec 2026 18:00:00 +0000"
            ),
            "Received: from local user nobody (uid 65534)\r\n\tby mail.example.test (postling) with local id 01K0VS027V6M;\r\n\tFri, 04 Dec 2026 18:00:00 +0000\r\n"
        );
        assert!(
            received_header(None, 7, "h", "i", "d").starts_with("Received: from local uid 7\r\n")
        );
    }

    #[test]
    fn inotify_events_parse() {
        let mut buf = Vec::new();
        for (mask, name) in [
            (libc::IN_MOVED_TO, &b"abc\0\0\0\0\0"[..]),
            (libc::IN_Q_OVERFLOW, &b""[..]),
        ] {
            buf.extend_from_slice(&1i32.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            buf.extend_from_slice(name);
        }
        assert_eq!(
            parse_events(&buf),
            [
                (libc::IN_MOVED_TO, Some("abc".to_string())),
                (libc::IN_Q_OVERFLOW, None)
            ]
        );
    }
}
