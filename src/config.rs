//! The flat config file (`key = value`), parsed once into typed values. Every error names the
//! file, the line and the key, and says what was expected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::limits;

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
    pub spool_dir: PathBuf,
    pub mailbox_dir: PathBuf,
    pub users_file: PathBuf,
    pub aliases_file: PathBuf,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_message_size: u64,
    pub smtp_timeout: Duration,
    pub pop3_timeout: Duration,
    /// None: stderr (or syslog when detached; see the operations docs).
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub pid_file: Option<PathBuf>,
    /// Separator of subaddresses (`user+tag`); None disables subaddressing.
    pub recipient_delimiter: Option<char>,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub queue_lifetime: Duration,
    pub auth_failure_delay: Duration,
    /// Run as this user after binding (empty: stay as started).
    pub user: Option<String>,
}

impl Config {
    /// Built-in defaults, as if the file were empty. `path` is where it would be read from.
    pub fn defaults(path: &Path) -> Config {
        let (hostname, _) = system_hostname();
        let domain = match hostname.split_once('.') {
            Some((_, d)) if !d.is_empty() => d.to_ascii_lowercase(),
            _ => hostname.to_ascii_lowercase(),
        };
        Config {
            path: path.to_path_buf(),
            hostname,
            hostname_from_system: true,
            domains: vec![domain],
            smtp_listen: vec![SocketAddr::from(([0, 0, 0, 0], 25))],
            pop3_listen: vec![SocketAddr::from(([0, 0, 0, 0], 110))],
            pop2_listen: Vec::new(),
            spool_dir: PathBuf::from("/var/spool/postling"),
            mailbox_dir: PathBuf::from("/var/mail/postling"),
            users_file: PathBuf::from("/etc/postling/users"),
            aliases_file: PathBuf::from("/etc/postling/aliases"),
            max_connections: limits::MAX_CONNECTIONS_DEFAULT,
            max_connections_per_ip: limits::MAX_CONNECTIONS_PER_IP_DEFAULT,
            max_message_size: limits::MAX_MESSAGE_SIZE_DEFAULT,
            smtp_timeout: limits::SMTP_TIMEOUT_DEFAULT,
            pop3_timeout: limits::POP3_TIMEOUT_DEFAULT,
            log_file: None,
            log_level: log::LevelFilter::Info,
            pid_file: None,
            recipient_delimiter: Some('+'),
            retry_min: limits::RETRY_MIN_DEFAULT,
            retry_max: limits::RETRY_MAX_DEFAULT,
            queue_lifetime: limits::QUEUE_LIFETIME_DEFAULT,
            auth_failure_delay: limits::AUTH_FAILURE_DELAY_DEFAULT,
            user: None,
        }
    }
}

impl Config {
    /// What the users and aliases tables are built from.
    pub fn directory_settings(&self) -> crate::directory::DirectorySettings {
        crate::directory::DirectorySettings {
            users_file: self.users_file.clone(),
            aliases_file: self.aliases_file.clone(),
            domains: self.domains.clone(),
            recipient_delimiter: self.recipient_delimiter,
        }
    }
}

/// The machine's host name from `gethostname(2)`: no DNS, never fails (falls back to
/// "localhost"). The flag says whether it is fully qualified (contains a dot).
pub fn system_hostname() -> (String, bool) {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_string()
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
