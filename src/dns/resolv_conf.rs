//! Which nameservers the resolver asks: the `nameserver` lines of `/etc/resolv.conf`
//! (resolv.conf(5)), re-read when the file changes, or the `dns_servers` config override.
//!
//! Only `nameserver` lines matter to a stub that asks for fully qualified names (mail domains
//! are never searched or dotted-relative); `search`, `domain`, `options`, `sortlist` and
//! anything unknown are ignored, as glibc ignores what it does not know.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::limits;

/// The DNS port (RFC 1035 §4.2).
pub const DNS_PORT: u16 = 53;

/// Where the system's nameservers are listed. Only the server passes this path; tests pass
/// their own files.
pub const SYSTEM_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The nameservers of a resolv.conf text, in order, at most `limits::DNS_MAX_SERVERS`
/// (glibc's MAXNS: later lines are ignored). An IPv6 address may carry a `%scope`: a number,
/// or an interface name that `if_index` turns into one (an unknown interface drops the
/// line). A line that is not an IP literal is ignored, like glibc does.
pub fn parse_resolv_conf(text: &str, if_index: &dyn Fn(&str) -> Option<u32>) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        if servers.len() == limits::DNS_MAX_SERVERS {
            break;
        }
        // Comments start with '#' or ';' at the beginning of a line (resolv.conf(5)); glibc
        // also accepts them after the value, so anything past the first word is dropped.
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else { continue };
        if let Some(addr) = parse_server_ip(value, if_index) {
            if !servers.contains(&addr) {
                servers.push(addr);
            }
        }
    }
    servers
}

fn parse_server_ip(v: &str, if_index: &dyn Fn(&str) -> Option<u32>) -> Option<SocketAddr> {
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, scope) = v.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    if scope.is_empty() {
        return None;
    }
    let scope_id = match scope.parse::<u32>() {
        Ok(n) => n,
        Err(_) => if_index(scope)?,
    };
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope_id)))
}

/// The system's interface index for a name (if_nametoindex(3)); None when there is none.
pub fn system_if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// What identifies one version of the file: a replaced file (new inode) or an edited one
/// (size or mtime) is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp_of(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    }
}

/// The nameserver list from a resolv.conf file, refreshed when the file changes.
///
/// `refresh(now)` looks at the file at most every `limits::RESOLV_CONF_CHECK_INTERVAL` and
/// reads it only when its inode, size or mtime changed. A missing or unreadable file means
/// no servers (lookups then fail temporarily), never an error: a box may gain its resolver
/// after postling started.
pub struct ResolvConf {
    path: PathBuf,
    checked: Option<Instant>,
    stamp: Option<Stamp>,
    servers: Vec<SocketAddr>,
    reads: u64,
}

impl ResolvConf {
    pub fn new(path: impl Into<PathBuf>) -> ResolvConf {
        ResolvConf {
            path: path.into(),
            checked: None,
            stamp: None,
            servers: Vec::new(),
            reads: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The servers as of the last refresh.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// How many times the file was read (for tests and the log).
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Checks the file if the interval has passed; returns the new server list when it
    /// changed (the caller hands it to the resolver), None otherwise.
    pub fn refresh(&mut self, now: Instant) -> Option<Vec<SocketAddr>> {
        if let Some(t) = self.checked {
            if now.saturating_duration_since(t) < limits::RESOLV_CONF_CHECK_INTERVAL {
                return None;
            }
        }
        self.checked = Some(now);
        let stamp = std::fs::metadata(&self.path).ok().map(|m| stamp_of(&m));
        if stamp.is_some() && stamp == self.stamp {
            return None;
        }
        let servers = match stamp {
            None => Vec::new(),
            Some(_) => {
                self.reads += 1;
                match read_bounded(&self.path) {
                    Some(text) => parse_resolv_conf(&text, &system_if_index),
                    None => Vec::new(),
                }
            }
        };
        self.stamp = stamp;
        if servers == self.servers {
            return None;
        }
        self.servers = servers.clone();
        Some(servers)
    }
}

fn read_bounded(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let mut bytes = Vec::new();
    f.take(limits::RESOLV_CONF_MAX_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    // Not UTF-8 in places: the nameserver lines that are still readable count.
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Parses the `dns_servers` config value: a comma- or space-separated list of `IP`,
/// `IP:PORT`, `[IPv6]` or `[IPv6]:PORT` (port 53 by default). Empty means "use resolv.conf".
pub fn parse_dns_servers(v: &str) -> Result<Vec<SocketAddr>, String> {
    let mut servers: Vec<SocketAddr> = Vec::new();
    let mut problems = Vec::new();
    for item in v
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
    {
        let bare = item
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(item);
        // An IPv6 address may carry a `%scope` (a number or an interface name) as in
        // resolv.conf; with a port, std's `[addr%N]:port` form takes a number.
        let parsed = if let Some(a) = parse_server_ip(bare, &system_if_index) {
            Ok(a)
        } else if let Ok(a) = item.parse::<SocketAddr>() {
            if a.port() == 0 {
                Err(format!("\"{item}\": port 0 is not a DNS server's port"))
            } else {
                Ok(a)
            }
        } else {
            Err(format!(
                "\"{item}\" is not an IP address with an optional port (names are not \
                 allowed: the resolver cannot look up its own servers)"
            ))
        };
        match parsed {
            Ok(a) if servers.contains(&a) => {}
            Ok(a) => servers.push(a),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    if servers.len() > limits::DNS_MAX_SERVERS {
        return Err(format!(
            "{} servers listed; at most {} are used",
            servers.len(),
            limits::DNS_MAX_SERVERS
        ));
    }
    Ok(servers)
}
