//! The flat config file (`key = value`), parsed once into typed values. Owns the syntax, the
//! checks across keys, and `postling -t`'s check of the files the config names. Every error
//! names the file, the line and the key, and says what was expected; all errors of a file are
//! reported together. The keys themselves (defaults, forms, meanings, appliers) are one table
//! in `keys` (the value forms are in `values`), from which `docs` generates the example config,
//! the README reference and the man page.
//!
//! Syntax: `#` at the start of a line or after whitespace begins a comment; blank lines are
//! ignored; a key may appear once; values are trimmed; lists are comma-separated.

pub mod docs;
#[cfg(test)]
mod files_tests;
pub mod keys;
#[cfg(test)]
mod tests;
pub mod values;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::directory::{Directory, DirectorySettings};
use crate::limits;
use keys::ValueCtx;
use values::{format_duration, quoted};

/// The parsed configuration. Paths are absolute (relative ones are resolved against the
/// config file's directory).
#[derive(Clone, Debug)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    pub hostname: String,
    /// True when `hostname` was not set and the system's name is used.
    pub hostname_from_system: bool,
    /// Local mail domains, lower-case.
    pub domains: Vec<String>,
    pub smtp_listen: Vec<SocketAddr>,
    pub pop3_listen: Vec<SocketAddr>,
    pub pop2_listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314).
    pub smtps_listen: Vec<SocketAddr>,
    pub pop3s_listen: Vec<SocketAddr>,
    /// Message submission listeners (RFC 6409): SMTP with AUTH required before MAIL.
    pub submission_listen: Vec<SocketAddr>,
    /// Clients that may relay through port 25 without AUTH.
    pub relay_networks: Vec<values::Cidr>,
    /// The TLS identity's PEM files: both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_handshake_timeout: Duration,
    /// POP logins without TLS from other than loopback.
    pub allow_plaintext_auth: bool,
    /// TLS handshakes in flight at once; implicit-TLS connections beyond wait in the backlog.
    pub max_tls_handshakes: usize,
    pub spool_dir: PathBuf,
    pub mailbox_dir: PathBuf,
    pub users_file: PathBuf,
    pub aliases_file: PathBuf,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_message_size: u64,
    pub smtp_timeout: Duration,
    pub pop3_timeout: Duration,
    /// How long a POP3/POP2 client has from connecting until it is logged in.
    pub pop3_login_timeout: Duration,
    /// None: stderr (or syslog when detached; see the operations docs).
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub pid_file: Option<PathBuf>,
    /// Separator of subaddresses (`user+tag`); None disables subaddressing.
    pub recipient_delimiter: Option<char>,
    /// How writes are made durable (`fsync`).
    pub fsync: crate::durable::SyncMode,
    /// Which disk executor backend runs (`disk_io`).
    pub disk_io: crate::exec::DiskIo,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub queue_lifetime: Duration,
    /// When a still-queued message's sender gets a delay warning; zero: never.
    pub delay_warning_time: Duration,
    pub auth_failure_delay: Duration,
    /// Logins of any outcome per client at once and per minute (0: no limit); see `throttle`.
    pub login_attempts_per_client: u32,
    /// Run as this user after binding (empty: stay as started).
    pub user: Option<String>,
    /// The smarthost for all non-local mail; None: deliver by MX.
    pub relay_host: Option<values::RelayHost>,
    /// How mail to `relay_host` is encrypted.
    pub relay_tls: values::RelayTls,
    /// Whether `relay_host`'s certificate is verified (chain to `tls_ca_file` or the system
    /// bundle, and the name `relay_host` gives).
    pub relay_tls_verify: bool,
    /// CA certificates (PEM) for verifying `relay_host`; None: the system bundle.
    pub tls_ca_file: Option<PathBuf>,
    /// Where `relay_auth` comes from. Needs `relay_host` and a `relay_tls` other than none.
    pub relay_auth_file: Option<PathBuf>,
    /// AUTH credentials for `relay_host`, read from `relay_auth_file` by `load` (and so again
    /// on every SIGHUP). None when the file is not set, and with `load_without_secrets`.
    pub relay_auth: Option<crate::proto::smtp_client::Credentials>,
    /// Port of MX hosts (Postfix's `smtp_tcp_port`); not used for `relay_host`.
    pub outbound_port: u16,
    /// Nameservers for MX delivery; empty: those of /etc/resolv.conf.
    pub dns_servers: Vec<SocketAddr>,
    /// Whether MX delivery may connect to loopback, private and link-local addresses.
    pub outbound_allow_private: bool,
    /// Outbound connections to one destination at once.
    pub outbound_concurrency: usize,
    /// Outbound connections at once, over all destinations.
    pub outbound_max_connections: usize,
    pub outbound_connect_timeout: Duration,
    /// RFC 5321 section 4.5.3.2 timeouts of each step of an outbound dialog.
    pub outbound_timeouts: crate::proto::smtp_client::Timeouts,
    /// The line each key was set on; a key not in it has its default.
    pub set_on_line: KeyLines,
}

/// The line each key was set on, in the file's order. A list, not a map: a config sets at
/// most one entry per key name (a second setting is an error), a few dozen, so a lookup is a
/// short scan; no map code of its own in a binary held to 3 MiB; and two loads of one file
/// print alike (the fuzz harness compares them).
#[derive(Clone, Debug, Default)]
pub struct KeyLines(Vec<(&'static str, usize)>);

impl KeyLines {
    /// The line `key` was set on.
    pub fn get(&self, key: &str) -> Option<&usize> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, line)| line)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Records that `key` was set on `line` (the later line, if it was set before).
    pub fn insert(&mut self, key: &'static str, line: usize) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = line,
            None => self.0.push((key, line)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// One thing wrong with the config or a file it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The config file could not be read at all: `FILE: cannot read: <error>`.
    Unreadable { file: PathBuf, error: String },
    /// `FILE:LINE: key: problem (expected …)`; `line` is None for a key left at its default.
    Bad {
        file: PathBuf,
        line: Option<usize>,
        key: String,
        problem: String,
        expected: String,
    },
    /// An error in a file the config names (users, aliases), already `FILE:LINE: …`.
    InNamedFile(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Unreadable { file, error } => {
                write!(f, "{}: cannot read: {error}", file.display())
            }
            ConfigError::Bad {
                file,
                line,
                key,
                problem,
                expected,
            } => {
                write!(f, "{}", file.display())?;
                if let Some(n) = line {
                    write!(f, ":{n}")?;
                }
                write!(f, ": {key}: {problem} (expected {expected})")
            }
            ConfigError::InNamedFile(text) => f.write_str(text),
        }
    }
}

/// Errors in the order of the lines they name, so an administrator reads the file top down;
/// errors without a line (a key left at its default, a file the config names) come last, in
/// the order they were found.
fn sort_by_line(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| match e {
        ConfigError::Bad { line: Some(n), .. } => (0, *n),
        ConfigError::Unreadable { .. } => (0, 0),
        _ => (1, 0),
    });
}

impl Config {
    /// Built-in defaults, as if the file were empty. `path` is where it would be read from.
    pub fn defaults(path: &Path) -> Config {
        let (hostname, _) = system_hostname();
        Config {
            path: path.to_path_buf(),
            domains: vec![domain_of_hostname(&hostname)],
            hostname,
            hostname_from_system: true,
            smtp_listen: vec![SocketAddr::from(([0, 0, 0, 0], 25))],
            pop3_listen: vec![SocketAddr::from(([0, 0, 0, 0], 110))],
            pop2_listen: Vec::new(),
            smtps_listen: Vec::new(),
            pop3s_listen: Vec::new(),
            submission_listen: Vec::new(),
            relay_networks: values::Cidr::loopback(),
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: limits::TLS_HANDSHAKE_TIMEOUT_DEFAULT,
            allow_plaintext_auth: false,
            max_tls_handshakes: limits::MAX_TLS_HANDSHAKES_DEFAULT,
            spool_dir: PathBuf::from("/var/spool/postling"),
            mailbox_dir: PathBuf::from("/var/mail/postling"),
            users_file: PathBuf::from("/etc/postling/users"),
            aliases_file: PathBuf::from("/etc/postling/aliases"),
            max_connections: limits::MAX_CONNECTIONS_DEFAULT,
            max_connections_per_ip: limits::MAX_CONNECTIONS_PER_IP_DEFAULT,
            max_message_size: limits::MAX_MESSAGE_SIZE_DEFAULT,
            smtp_timeout: limits::SMTP_TIMEOUT_DEFAULT,
            pop3_timeout: limits::POP3_TIMEOUT_DEFAULT,
            pop3_login_timeout: limits::POP_LOGIN_TIMEOUT_DEFAULT,
            log_file: None,
            log_level: log::LevelFilter::Info,
            pid_file: None,
            recipient_delimiter: Some('+'),
            fsync: crate::durable::SyncMode::File,
            disk_io: crate::exec::DiskIo::Auto,
            retry_min: limits::RETRY_MIN_DEFAULT,
            retry_max: limits::RETRY_MAX_DEFAULT,
            queue_lifetime: limits::QUEUE_LIFETIME_DEFAULT,
            delay_warning_time: limits::DELAY_WARNING_TIME_DEFAULT,
            auth_failure_delay: limits::AUTH_FAILURE_DELAY_DEFAULT,
            login_attempts_per_client: limits::AUTH_ATTEMPTS_PER_CLIENT_DEFAULT,
            user: None,
            relay_host: None,
            relay_tls: values::RelayTls::Starttls,
            relay_tls_verify: true,
            tls_ca_file: None,
            relay_auth_file: None,
            relay_auth: None,
            outbound_port: limits::OUTBOUND_PORT_DEFAULT,
            dns_servers: Vec::new(),
            outbound_allow_private: false,
            outbound_concurrency: limits::OUTBOUND_CONCURRENCY_DEFAULT,
            outbound_max_connections: limits::OUTBOUND_MAX_CONNECTIONS_DEFAULT,
            outbound_connect_timeout: limits::OUTBOUND_CONNECT_TIMEOUT_DEFAULT,
            outbound_timeouts: crate::proto::smtp_client::Timeouts::default(),
            set_on_line: KeyLines::default(),
        }
    }

    /// Reads and checks the config file. Warnings (things that work but are probably not
    /// meant) come back beside the config; errors are all of them, in file order.
    /// The files holding secrets (`relay_auth_file`) are read too, and their errors are
    /// reported with the others: the daemon at start and on SIGHUP, and `postling -t`.
    pub fn load(path: &Path) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
        Config::load_with(path, Secrets::Read)
    }

    /// `load` without reading the files holding secrets (`relay_auth` stays None): for
    /// `sendmail`, `-q` and the queue commands, which run as any user (a mode-600 file is not
    /// theirs to read) and never talk to the relay.
    pub fn load_without_secrets(path: &Path) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
        Config::load_with(path, Secrets::Skip)
    }

    fn load_with(path: &Path, secrets: Secrets) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
        let text = read_limited(path).map_err(|error| {
            vec![ConfigError::Unreadable {
                file: path.to_path_buf(),
                error,
            }]
        })?;
        parse_with(&text, &config_dir(path), Config::defaults(path), secrets)
    }

    /// What `postling -t` adds to `load`: the files the config names (see `check`).
    pub fn check_files(&self) -> Vec<ConfigError> {
        self.check().0
    }

    /// Checks the files the config names, with the warnings of the users and aliases parser:
    /// users and aliases files readable and valid; spool and mailbox directories directories if
    /// they exist (the server creates them); the directories of the log and pid files exist;
    /// `user` exists.
    pub fn check(&self) -> (Vec<ConfigError>, Vec<String>) {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let users_ok = self.check_readable_file("users_file", &self.users_file, &mut errors);
        let aliases_ok = self.check_readable_file("aliases_file", &self.aliases_file, &mut errors);
        if users_ok && aliases_ok {
            match Directory::load(self.directory_settings()) {
                Ok((_, w)) => warnings = w,
                Err(es) => {
                    errors.extend(es.iter().map(|e| ConfigError::InNamedFile(e.to_string())))
                }
            }
        }
        self.check_dir_if_present("spool_dir", &self.spool_dir, &mut errors);
        self.check_dir_if_present("mailbox_dir", &self.mailbox_dir, &mut errors);
        if let Some(f) = &self.log_file {
            self.check_file_directory("log_file", f, &mut errors);
        }
        if let Some(f) = &self.pid_file {
            self.check_file_directory("pid_file", f, &mut errors);
        }
        match self.load_tls() {
            Ok(Some(identity)) => {
                if let Some(w) = tls_expiry_warning(self, &identity) {
                    warnings.push(w);
                }
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
        if let Some(ca) = &self.tls_ca_file {
            if self.check_readable_file("tls_ca_file", ca, &mut errors) {
                if let Err(problem) = check_ca_file(ca) {
                    errors.push(self.file_error(
                        "tls_ca_file",
                        problem,
                        "a PEM file of CA certificates",
                    ));
                }
            }
        }
        if let Some(user) = &self.user {
            // The files the privilege drop reads, never NSS (see daemon::accounts).
            let files = crate::daemon::accounts::Files::system();
            let problem = match crate::daemon::accounts::find_user(&files, user) {
                Ok(Some(account)) => {
                    warnings.extend(self.relay_auth_owner_warning(user, account.uid));
                    None
                }
                Ok(None) => Some(format!(
                    "{} is not in {} (postling reads local accounts only, not LDAP, NIS or other NSS sources)",
                    quoted(user),
                    files.passwd.display()
                )),
                Err(e) => Some(e),
            };
            if let Some(problem) = problem {
                errors.push(self.file_error(
                    "user",
                    problem,
                    "an existing local user, e.g. one made with `useradd --system postling`",
                ));
            }
        }
        (errors, warnings)
    }

    /// The daemon reads `relay_auth_file` again on SIGHUP as `user`, after the privilege
    /// drop; a mode-600 file someone else owns then cannot be read, and the reload fails. Said
    /// by `-t` now rather than at the first reload.
    fn relay_auth_owner_warning(&self, user: &str, uid: libc::uid_t) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let file = self.relay_auth_file.as_ref()?;
        let owner = std::fs::metadata(file).ok()?.uid();
        if owner == uid {
            return None;
        }
        let place = match self.set_on_line.get("relay_auth_file") {
            Some(n) => format!("{}:{n}", self.path.display()),
            None => self.path.display().to_string(),
        };
        Some(format!(
            "{place}: relay_auth_file: {} is owned by uid {owner}, not by {user} (uid {uid}), \
             so a reload on SIGHUP, running as {user}, cannot read it; run `chown {user} {}`",
            file.display(),
            file.display()
        ))
    }

    /// The TLS identity `tls_cert` and `tls_key` name, loaded and checked (the key matches the
    /// certificate); None when TLS is off. An error names the config file, the line and the
    /// PEM file at fault.
    pub fn load_tls(&self) -> Result<Option<crate::tls::TlsIdentity>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        crate::tls::TlsIdentity::load(cert, key)
            .map(Some)
            .map_err(|problem| {
                let key_name = if problem.starts_with("key file") {
                    "tls_key"
                } else {
                    "tls_cert"
                };
                self.file_error(
                    key_name,
                    problem,
                    "a PEM certificate chain and its matching private key",
                )
            })
    }

    /// What the users and aliases tables are built from.
    pub fn directory_settings(&self) -> DirectorySettings {
        DirectorySettings {
            users_file: self.users_file.clone(),
            aliases_file: self.aliases_file.clone(),
            domains: self.domains.clone(),
            recipient_delimiter: self.recipient_delimiter,
        }
    }

    /// An error about a key's value as a whole, on the line it was set (if it was).
    fn file_error(&self, key: &str, problem: String, expected: &str) -> ConfigError {
        ConfigError::Bad {
            file: self.path.clone(),
            line: self.set_on_line.get(key).copied(),
            key: key.to_string(),
            problem,
            expected: expected.to_string(),
        }
    }

    fn check_readable_file(&self, key: &str, path: &Path, errors: &mut Vec<ConfigError>) -> bool {
        let expected = "a readable file";
        let problem = match std::fs::metadata(path) {
            Err(e) => format!("cannot read {}: {e}", path.display()),
            Ok(m) if !m.is_file() => format!("{} is not a regular file", path.display()),
            Ok(_) => match std::fs::File::open(path) {
                Ok(_) => return true,
                Err(e) => format!("cannot read {}: {e}", path.display()),
            },
        };
        errors.push(self.file_error(key, problem, expected));
        false
    }

    fn check_dir_if_present(&self, key: &str, path: &Path, errors: &mut Vec<ConfigError>) {
        let problem = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Ok(_) => format!("{} exists but is not a directory", path.display()),
            Err(e) => format!("cannot check {}: {e}", path.display()),
        };
        errors.push(self.file_error(
            key,
            problem,
            "a directory, or a path where the server may create one",
        ));
    }

    fn check_file_directory(&self, key: &str, path: &Path, errors: &mut Vec<ConfigError>) {
        let expected = "a file in an existing directory";
        let problem = if path.is_dir() {
            format!("{} is a directory", path.display())
        } else {
            let dir = path.parent().unwrap_or(Path::new("/"));
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => return,
                Ok(_) => format!("{} is not a directory", dir.display()),
                Err(e) => format!("directory {}: {e}", dir.display()),
            }
        };
        errors.push(self.file_error(key, problem, expected));
    }
}

/// The warning for a certificate that expires within `TLS_CERT_EXPIRY_WARNING` (or has
/// expired), naming the file.
pub fn tls_expiry_warning(c: &Config, identity: &crate::tls::TlsIdentity) -> Option<String> {
    let not_after = identity.not_after?;
    let now = std::time::SystemTime::now();
    let file = c.tls_cert.as_deref().unwrap_or(Path::new("?")).display();
    match not_after.duration_since(now) {
        Err(_) => Some(format!(
            "the certificate in {file} has expired; clients that check certificates will refuse it"
        )),
        Ok(left) if left <= limits::TLS_CERT_EXPIRY_WARNING => Some(format!(
            "the certificate in {file} expires in {} days; renew it and send SIGHUP",
            left.as_secs() / 86_400
        )),
        Ok(_) => None,
    }
}

/// `tls_ca_file` holds at least one PEM certificate and nothing that is not valid PEM.
fn check_ca_file(path: &Path) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let mut text = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limits::TLS_PEM_FILE_MAX + 1).read_to_end(&mut text))
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if text.len() as u64 > limits::TLS_PEM_FILE_MAX {
        return Err(format!(
            "{shown} is larger than {} bytes",
            limits::TLS_PEM_FILE_MAX
        ));
    }
    let mut certs = 0;
    for item in CertificateDer::pem_slice_iter(&text) {
        match item {
            Ok(_) => certs += 1,
            Err(e) => return Err(format!("{shown} is not valid PEM: {e}")),
        }
    }
    if certs == 0 {
        return Err(format!(
            "{shown} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" section)"
        ));
    }
    Ok(())
}

/// The machine's host name from `gethostname(2)`: no DNS, never fails (falls back to
/// "localhost"). The flag says whether it is fully qualified (contains a dot).
pub fn system_hostname() -> (String, bool) {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(buf.get(..end).unwrap_or(&[]))
            .trim()
            .to_string()
    } else {
        String::new()
    };
    let name = if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    };
    let fq = name.contains('.');
    (name, fq)
}

/// The default of `domains`: the part of the host name after its first dot, or the name.
pub fn domain_of_hostname(hostname: &str) -> String {
    match hostname.split_once('.') {
        Some((_, d)) if !d.is_empty() => d.to_ascii_lowercase(),
        _ => hostname.to_ascii_lowercase(),
    }
}

/// The whole file, refusing one larger than `limits::CONFIG_MAX_BYTES`.
fn read_limited(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    file.take(limits::CONFIG_MAX_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > limits::CONFIG_MAX_BYTES {
        return Err(format!(
            "larger than {} bytes; is this a config file?",
            limits::CONFIG_MAX_BYTES
        ));
    }
    Ok(text)
}

/// The absolute directory of the config file, which relative paths in it start from.
fn config_dir(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if let Ok(canonical) = std::fs::canonicalize(&parent) {
        return canonical;
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(parent),
        Err(_) => parent,
    }
}

/// Collects errors and warnings while the file is read.
struct Report<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Report<'_> {
    fn error(&mut self, line: Option<usize>, key: &str, problem: String, expected: &str) {
        self.errors.push(ConfigError::Bad {
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            problem,
            expected: expected.to_string(),
        });
    }

    fn warn(&mut self, line: Option<usize>, key: &str, text: &str) {
        let place = match line {
            Some(n) => format!("{}:{n}", self.file.display()),
            None => self.file.display().to_string(),
        };
        self.warnings.push(format!("{place}: {key}: {text}"));
    }
}

/// Whether parsing reads the files that hold secrets (see `Config::load_without_secrets`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Secrets {
    Read,
    Skip,
}

/// Parses the text of a config file onto `config` (the defaults, carrying the file's path).
/// `base` is the absolute directory relative paths start from. Reads no file.
#[cfg(test)]
pub(crate) fn parse(
    text: &[u8],
    base: &Path,
    config: Config,
) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
    parse_with(text, base, config, Secrets::Skip)
}

/// `parse`, reading `relay_auth_file` when `secrets` says so.
pub(crate) fn parse_with(
    text: &[u8],
    base: &Path,
    mut config: Config,
    secrets: Secrets,
) -> Result<(Config, Vec<String>), Vec<ConfigError>> {
    let file = config.path.clone();
    let mut report = Report {
        file: &file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let mut failed: Vec<&'static str> = Vec::new();
    // Editors on some systems start UTF-8 files with a byte-order mark; it is not part of a key.
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let n = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = match decode_line(raw) {
            Ok(line) => line,
            Err((label, problem)) => {
                report.error(Some(n), &label, problem, "UTF-8 text without NUL bytes");
                continue;
            }
        };
        let content = strip_comment(line).trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            let label = content.split_whitespace().next().unwrap_or(content);
            report.error(
                Some(n),
                &quoted_label(label),
                "the line has no `=`".to_string(),
                "key = value, or `key =` for an empty value",
            );
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            report.error(
                Some(n),
                "line",
                "no key before `=`".to_string(),
                "key = value",
            );
            continue;
        }
        let Some(spec) = keys::spec(key) else {
            report.error(
                Some(n),
                &quoted_label(key),
                format!("unknown key; did you mean {}?", keys::nearest_key(key)),
                "one of the keys listed in postling.conf(5) and postling.conf.example",
            );
            continue;
        };
        if let Some(first) = config.set_on_line.get(spec.name) {
            let problem = format!("set again; it was first set on line {first}");
            report.error(Some(n), spec.name, problem, "each key at most once");
            continue;
        }
        config.set_on_line.insert(spec.name, n);
        let mut ctx = ValueCtx {
            base,
            warnings: Vec::new(),
        };
        if let Err(problem) = (spec.apply)(&mut config, value, &mut ctx) {
            report.error(Some(n), spec.name, problem, spec.form);
            failed.push(spec.name);
        }
        for w in ctx.warnings {
            report.warn(Some(n), spec.name, &w);
        }
    }
    if !config.set_on_line.contains_key("domains") {
        config.domains = vec![domain_of_hostname(&config.hostname)];
    }
    // The relay's default port depends on relay_tls, which may come later in the file.
    if let Some(relay) = config.relay_host.as_mut() {
        if relay.port == 0 {
            relay.port = match config.relay_tls {
                values::RelayTls::Implicit => limits::RELAY_PORT_IMPLICIT_TLS_DEFAULT,
                _ => limits::RELAY_PORT_DEFAULT,
            };
        }
    }
    check_across_keys(&config, &failed, &mut report);
    if secrets == Secrets::Read && relay_auth_wanted(&config, &failed) {
        if let Some(file) = &config.relay_auth_file {
            match read_relay_auth(file) {
                Ok(creds) => config.relay_auth = Some(creds),
                Err(problem) => report.error(
                    config.set_on_line.get("relay_auth_file").copied(),
                    "relay_auth_file",
                    problem,
                    RELAY_AUTH_EXPECTED,
                ),
            }
        }
    }
    if report.errors.is_empty() {
        Ok((config, report.warnings))
    } else {
        let mut errors = report.errors;
        sort_by_line(&mut errors);
        Err(errors)
    }
}

const RELAY_AUTH_EXPECTED: &str =
    "a file only its owner can read (chmod 600) holding one line `user password`";

/// `relay_auth_file` is set and usable with the other keys (else `check_across_keys` has
/// said why not, and the file is not read).
fn relay_auth_wanted(c: &Config, failed: &[&'static str]) -> bool {
    c.relay_auth_file.is_some()
        && c.relay_host.is_some()
        && c.relay_tls != values::RelayTls::None
        && !["relay_auth_file", "relay_host", "relay_tls"]
            .iter()
            .any(|k| failed.contains(k))
}

/// The credentials in `path`: a regular file no one but its owner may read or change (it
/// holds a password), at most `limits::RELAY_AUTH_FILE_MAX` bytes, one `user password` line.
/// The permissions are those of the file opened, not of a name that could be swapped.
fn read_relay_auth(path: &Path) -> Result<crate::proto::smtp_client::Credentials, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = escaped_path(path);
    // Non-blocking, so a FIFO named by mistake is refused below instead of hanging start-up.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
    }
    .map_err(|e| format!("cannot read {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} holds a password but its mode {mode:04o} lets other users read or change \
             it; run `chmod 600 {shown}`"
        ));
    }
    let mut text = Vec::new();
    let read = file
        .take(limits::RELAY_AUTH_FILE_MAX + 1)
        .read_to_end(&mut text);
    let result = match read {
        Err(e) => Err(format!("cannot read {shown}: {e}")),
        Ok(_) if text.len() as u64 > limits::RELAY_AUTH_FILE_MAX => Err(format!(
            "{shown} is larger than {} bytes; it should hold one line",
            limits::RELAY_AUTH_FILE_MAX
        )),
        Ok(_) => values::relay_auth_text(&text).map_err(|p| format!("{shown}: {p}")),
    };
    // The password need not outlive its parsing in this buffer.
    text.fill(0);
    result
}

/// A path as shown in an error of `load`: whole, with control characters escaped (the path
/// comes from the config, and a message must stay one clean line).
fn escaped_path(path: &Path) -> String {
    values::escape_controls(&path.display().to_string())
}

/// A line as text, or the label and problem of an error: NUL bytes and invalid UTF-8 are
/// reported, never passed on.
fn decode_line(raw: &[u8]) -> Result<&str, (String, String)> {
    // Name the key when the damage is in the value, so the message points at something.
    let label = || {
        let before = raw.split(|&b| b == b'=').next().unwrap_or(&[]);
        match std::str::from_utf8(before) {
            Ok(k) if raw.contains(&b'=') && !k.trim().is_empty() && !k.contains('\0') => {
                quoted_label(k.trim())
            }
            _ => "line".to_string(),
        }
    };
    if let Some(at) = raw.iter().position(|&b| b == 0) {
        return Err((label(), format!("contains a NUL byte at column {}", at + 1)));
    }
    std::str::from_utf8(raw).map_err(|e| {
        let problem = format!("is not valid UTF-8 at column {}", e.valid_up_to() + 1);
        (label(), problem)
    })
}

/// The line without its comment: `#` starts one at the start of the line or after whitespace;
/// inside a word it is part of the value.
fn strip_comment(line: &str) -> &str {
    let mut previous_is_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && previous_is_space {
            return line.get(..i).unwrap_or(line);
        }
        previous_is_space = c.is_whitespace();
    }
    line
}

/// A key as written by the user, shown without back-quotes unless it needs escaping.
fn quoted_label(key: &str) -> String {
    let shown = quoted(key);
    let plain = shown.trim_matches('`');
    if plain == key { key.to_string() } else { shown }
}

/// Rules between keys, checked once the whole file is read. Keys whose own value was bad are
/// left out, so one mistake gives one error.
fn check_across_keys(c: &Config, failed: &[&'static str], report: &mut Report<'_>) {
    let line = |key: &str| c.set_on_line.get(key).copied();
    let ok = |key: &str| !failed.contains(&key);

    if ok("retry_min") && ok("retry_max") && c.retry_min > c.retry_max {
        let key = if line("retry_max").is_some() {
            "retry_max"
        } else {
            "retry_min"
        };
        report.error(
            line(key),
            key,
            format!(
                "retry_min {} is longer than retry_max {}",
                format_duration(c.retry_min),
                format_duration(c.retry_max)
            ),
            "retry_min no longer than retry_max",
        );
    }

    check_listeners(c, failed, report);
    check_tls_keys(c, failed, report);
    check_outbound(c, failed, report);

    if ok("hostname") && !c.hostname.contains('.') {
        let h = &c.hostname;
        report.warnings.push(format!(
            "hostname '{h}' is not fully qualified; set `hostname = {h}.example.org` in {}",
            c.path.display()
        ));
    }
    if c.hostname_from_system {
        if let Err(problem) = values::domain_name(&c.hostname) {
            report.warn(
                None,
                "hostname",
                &format!(
                    "the system host name is not a valid domain name ({problem}); set hostname"
                ),
            );
        }
    }
    if ok("pop3_timeout") && c.pop3_timeout < limits::POP3_TIMEOUT_RFC_MIN {
        report.warn(
            line("pop3_timeout"),
            "pop3_timeout",
            &format!(
                "{} is shorter than the {} RFC 1939 section 3 asks for; clients that pause \
                 longer are cut off",
                format_duration(c.pop3_timeout),
                format_duration(limits::POP3_TIMEOUT_RFC_MIN)
            ),
        );
    }
}

/// The relay's credentials go to a smarthost only, and only over TLS; the per-destination
/// limit fits in the total.
fn check_outbound(c: &Config, failed: &[&'static str], report: &mut Report<'_>) {
    let line = |key: &str| c.set_on_line.get(key).copied();
    let ok = |key: &str| !failed.contains(&key);
    if c.relay_auth_file.is_some() && ok("relay_auth_file") {
        if c.relay_host.is_none() && ok("relay_host") {
            report.error(
                line("relay_auth_file"),
                "relay_auth_file",
                "relay_auth_file is set but relay_host is not; credentials are only sent to a \
                 smarthost, never to the MX hosts of other domains"
                    .to_string(),
                "relay_host set, or relay_auth_file empty",
            );
        } else if c.relay_tls == values::RelayTls::None && ok("relay_tls") {
            report.error(
                line("relay_auth_file"),
                "relay_auth_file",
                "relay_tls = none would send the password in plain text; credentials are only \
                 sent over TLS"
                    .to_string(),
                "relay_tls = starttls or implicit, or relay_auth_file empty",
            );
        }
    }
    if ok("outbound_concurrency")
        && ok("outbound_max_connections")
        && c.outbound_concurrency > c.outbound_max_connections
    {
        let key = if line("outbound_concurrency").is_some() {
            "outbound_concurrency"
        } else {
            "outbound_max_connections"
        };
        report.error(
            line(key),
            key,
            format!(
                "outbound_concurrency {} is more than outbound_max_connections {}",
                c.outbound_concurrency, c.outbound_max_connections
            ),
            "outbound_concurrency no more than outbound_max_connections",
        );
    }
    if !c.relay_tls_verify
        && c.relay_tls == values::RelayTls::None
        && ok("relay_tls")
        && ok("relay_tls_verify")
    {
        report.warn(
            line("relay_tls_verify"),
            "relay_tls_verify",
            "has no effect with relay_tls = none: there is no certificate to verify",
        );
    }
}

/// Every listen address must be bindable beside the others: no port on one address twice, and
/// a wildcard address (`0.0.0.0`, `[::]`) covers every address of its family.
/// `tls_cert` and `tls_key` come as a pair, and the implicit-TLS listeners need them. (Whether
/// the files load and match is `check`'s, at start and with `-t`.)
fn check_tls_keys(c: &Config, failed: &[&'static str], report: &mut Report<'_>) {
    let line = |key: &str| c.set_on_line.get(key).copied();
    if failed.contains(&"tls_cert") || failed.contains(&"tls_key") {
        return;
    }
    let expected = "both tls_cert and tls_key, or neither";
    match (&c.tls_cert, &c.tls_key) {
        (Some(_), None) => report.error(
            line("tls_cert"),
            "tls_cert",
            "tls_cert is set but tls_key is not".to_string(),
            expected,
        ),
        (None, Some(_)) => report.error(
            line("tls_key"),
            "tls_key",
            "tls_key is set but tls_cert is not".to_string(),
            expected,
        ),
        _ => {}
    }
    if c.tls_cert.is_none()
        && c.tls_key.is_none()
        && !c.submission_listen.is_empty()
        && !c.allow_plaintext_auth
        && !failed.contains(&"submission_listen")
    {
        report.warn(
            line("submission_listen"),
            "submission_listen",
            "without tls_cert and tls_key there is no STARTTLS, so only loopback clients can \
             log in there (set a certificate, or allow_plaintext_auth = yes)",
        );
    }
    if c.tls_cert.is_none() && c.tls_key.is_none() {
        for key in ["smtps_listen", "pop3s_listen"] {
            let set = if key == "smtps_listen" {
                &c.smtps_listen
            } else {
                &c.pop3s_listen
            };
            if !set.is_empty() && !failed.contains(&key) {
                report.error(
                    line(key),
                    key,
                    format!("{key} needs a certificate, but tls_cert and tls_key are not set"),
                    "tls_cert and tls_key set, or this key empty",
                );
            }
        }
    }
}

fn check_listeners(c: &Config, failed: &[&'static str], report: &mut Report<'_>) {
    let mut seen: Vec<(&'static str, Option<usize>, SocketAddr)> = Vec::new();
    let lists = [
        ("smtp_listen", &c.smtp_listen),
        ("pop3_listen", &c.pop3_listen),
        ("pop2_listen", &c.pop2_listen),
        ("smtps_listen", &c.smtps_listen),
        ("pop3s_listen", &c.pop3s_listen),
        ("submission_listen", &c.submission_listen),
    ];
    for (key, addrs) in lists {
        if failed.contains(&key) {
            continue;
        }
        let line = c.set_on_line.get(key).copied();
        for &a in addrs {
            let clash = seen.iter().find(|(_, _, b)| {
                a.port() == b.port()
                    && a.is_ipv4() == b.is_ipv4()
                    && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
            });
            if let Some(&(other_key, other_line, b)) = clash {
                let where_ = match other_line {
                    Some(n) => format!("{other_key}, line {n}"),
                    None => format!("{other_key}, by default"),
                };
                report.error(
                    line,
                    key,
                    format!("{a} overlaps {b} ({where_}); both cannot be bound"),
                    "each port of an address used once; 0.0.0.0 and [::] cover every address \
                     of their family",
                );
            }
            seen.push((key, line, a));
        }
    }
    if seen.is_empty() && !lists.iter().any(|(k, _)| failed.contains(k)) {
        report.warn(
            None,
            "smtp_listen",
            "smtp_listen, pop3_listen, pop2_listen, smtps_listen and pop3s_listen are all empty: no connections are accepted",
        );
    }
}
