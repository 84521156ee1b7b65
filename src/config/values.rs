//! The forms a config value takes (domain names, listen addresses, counts, sizes, durations,
//! paths): strict parsers that say what is wrong in words the error message can carry.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::limits;

/// A value as shown inside an error: back-quoted, cut at 60 characters, control characters
/// escaped, so a line of garbage cannot make a garbage message.
pub fn quoted(v: &str) -> String {
    let mut out = String::from("`");
    for (i, c) in v.chars().enumerate() {
        if i == 60 {
            out.push_str("...");
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.push('`');
    out
}

/// `v` whole, with control characters escaped: for messages built by parsers that do not
/// quote what they show.
pub fn escape_controls(v: &str) -> String {
    if !v.chars().any(char::is_control) {
        return v.to_string();
    }
    v.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The items of a comma-separated list, trimmed; empty items are skipped.
pub fn list_items(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// A syntactically valid domain name (RFC 1035 section 2.3.1 labels, ASCII), returned as given.
pub fn domain_name(v: &str) -> Result<String, String> {
    let problem = if v.is_empty() {
        Some("no name given".to_string())
    } else if !v.is_ascii() {
        Some(format!(
            "{} is not ASCII; write an international name in its xn-- form",
            quoted(v)
        ))
    } else if v.parse::<IpAddr>().is_ok() {
        Some(format!("{} is an IP address, not a domain name", quoted(v)))
    } else if v.len() > 253 {
        Some(format!("{} is longer than 253 characters", quoted(v)))
    } else {
        v.split('.').find_map(|label| label_problem(v, label))
    };
    match problem {
        Some(p) => Err(p),
        None => Ok(v.to_string()),
    }
}

fn label_problem(name: &str, label: &str) -> Option<String> {
    if label.is_empty() {
        return Some(format!(
            "{} has an empty label (two dots, or a dot at an end)",
            quoted(name)
        ));
    }
    if label.len() > 63 {
        return Some(format!(
            "label {} is longer than 63 characters",
            quoted(label)
        ));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Some(format!(
            "{} contains {}, which a domain name cannot",
            quoted(name),
            quoted(&c.to_string())
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Some(format!(
            "label {} starts or ends with a hyphen",
            quoted(label)
        ));
    }
    None
}

/// A list of listen addresses. An address listed twice is used once, with a warning.
pub fn listen_list(v: &str, warnings: &mut Vec<String>) -> Result<Vec<SocketAddr>, String> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let mut problems = Vec::new();
    for item in list_items(v) {
        match listen_addr(item) {
            Ok(a) if addrs.contains(&a) => warnings.push(format!("{a} is listed twice")),
            Ok(a) => addrs.push(a),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(addrs)
    } else {
        Err(problems.join("; "))
    }
}

/// An address block (`relay_networks`): the address with its low bits cleared, and the prefix
/// length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `127.0.0.0/8, ::1/128`.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr {
                addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
                prefix: 8,
            },
            Cidr {
                addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// Is `ip` (an IPv4-mapped IPv6 address counts as IPv4) in this block?
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(net)
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One `ADDRESS/PREFIX` (or a bare address: the host alone). Bits set below the prefix are an
/// error: `10.1.2.3/8` is more likely a typo than a wish for `10.0.0.0/8`.
pub fn cidr(v: &str) -> Result<Cidr, String> {
    let (a, p) = match v.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{} is not an IP address", quoted(a)))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => {
                return Err(format!(
                    "{}: the prefix length must be 0 to {max}",
                    quoted(v)
                ));
            }
        },
    };
    let c = Cidr { addr, prefix };
    // `contains` masks the address and compares it with the block's address as written: only
    // a network address written with its low bits clear contains itself.
    if !c.contains(addr) {
        return Err(format!(
            "{}: address bits are set beyond the /{prefix} prefix",
            quoted(v)
        ));
    }
    Ok(c)
}

/// A comma-separated list of `cidr`s; empty is allowed (nobody relays without AUTH).
pub fn cidr_list(v: &str) -> Result<Vec<Cidr>, String> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for item in list_items(v) {
        match cidr(item) {
            Ok(c) => out.push(c),
            Err(p) => problems.push(p),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.join("; "))
    }
}

/// One `IP:PORT` or `[IPv6]:PORT`. Never resolves a name: start-up must not need DNS.
pub fn listen_addr(v: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!(
                "{}: port 0 would listen on a random port no client knows",
                quoted(v)
            ));
        }
        return Ok(a);
    }
    match v.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Err(format!("{} has no port", quoted(v))),
        Ok(IpAddr::V6(_)) => {
            return Err(format!(
                "{} is an IPv6 address without a port; write the address in brackets and add \
                 the port, like [::1]:25",
                quoted(v)
            ));
        }
        Err(_) => {}
    }
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(if looks_like_host_name(v) {
            format!(
                "{} is a host name and has no port; an IP literal is required, since start-up \
                 never uses DNS",
                quoted(v)
            )
        } else {
            format!("{} is not an address", quoted(v))
        });
    };
    if host.contains(':') && !host.starts_with('[') {
        return Err(format!(
            "{}: an IPv6 address needs brackets, like [::1]:25",
            quoted(v)
        ));
    }
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{}: port {} is not a number",
            quoted(v),
            quoted(port)
        ));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{}: port {port} is above 65535", quoted(v)));
    }
    if looks_like_host_name(host) {
        return Err(format!(
            "{} names the host {}; an IP literal is required, since start-up never uses DNS",
            quoted(v),
            quoted(host)
        ));
    }
    Err(format!("{} is not an IP address", quoted(host)))
}

/// Letters, digits, dots and hyphens with at least one letter: what a host name looks like,
/// as opposed to a mistyped IP literal.
fn looks_like_host_name(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && v.chars().any(|c| c.is_ascii_alphabetic())
}

/// A whole number in `min..=max`, digits only (no sign, no spaces).
pub fn count(v: &str, min: usize, max: usize) -> Result<usize, String> {
    if v.starts_with('-') {
        return Err(format!("{} is negative", quoted(v)));
    }
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a whole number", quoted(v)));
    }
    match v.parse::<usize>() {
        Ok(n) if n < min => Err(format!("{} is below {min}", quoted(v))),
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("{} is above {max}", quoted(v))),
    }
}

/// Splits a leading run of ASCII digits from the rest (a unit or suffix).
fn number_and_suffix(v: &str) -> (&str, &str) {
    let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    // The digits are ASCII, so `end` is a character boundary.
    v.split_at(end)
}

/// A size in bytes: digits with an optional binary K, M or G suffix (either case).
pub fn size(v: &str) -> Result<u64, String> {
    if v.starts_with('-') {
        return Err(format!("{} is negative", quoted(v)));
    }
    let (digits, suffix) = number_and_suffix(v);
    if digits.is_empty() {
        return Err(format!("{} is not a size", quoted(v)));
    }
    let multiplier: u64 = match suffix {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => {
            return Err(format!(
                "{} has an unknown suffix {}",
                quoted(v),
                quoted(suffix)
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{} is too large", quoted(v)))
}

/// A duration of at least 1s and at most `limits::CONFIG_MAX_DURATION`.
pub fn duration(v: &str) -> Result<Duration, String> {
    let d = duration_with_zero(v)?;
    if d.is_zero() {
        return Err(format!("{} is too short: 1s is the least", quoted(v)));
    }
    Ok(d)
}

/// A duration of at most `limits::CONFIG_MAX_DURATION`; zero allowed (the caller decides).
pub fn duration_with_zero(v: &str) -> Result<Duration, String> {
    if v.starts_with('-') {
        return Err(format!("{} is negative", quoted(v)));
    }
    let (digits, unit) = number_and_suffix(v);
    if digits.is_empty() {
        return Err(format!("{} is not a duration", quoted(v)));
    }
    let seconds_per_unit: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => {
            return Err(format!(
                "{} has an unknown unit {}",
                quoted(v),
                quoted(unit)
            ));
        }
    };
    let too_long = || {
        format!(
            "{} is longer than {}",
            quoted(v),
            format_duration(limits::CONFIG_MAX_DURATION)
        )
    };
    let seconds = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(seconds_per_unit))
        .ok_or_else(too_long)?;
    let d = Duration::from_secs(seconds);
    if d > limits::CONFIG_MAX_DURATION {
        return Err(too_long());
    }
    Ok(d)
}

/// A duration in the largest unit that divides it: `90s`, `10m`, `5d`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, per) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= per && s % per == 0 {
            return format!("{}{unit}", s / per);
        }
    }
    format!("{s}s")
}

pub fn required_path(v: &str, base: &Path) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("no path given".to_string());
    }
    Ok(resolve_path(base, v))
}

pub fn optional_path(v: &str, base: &Path) -> Option<PathBuf> {
    (!v.is_empty()).then(|| resolve_path(base, v))
}

/// `v` relative to `base` (the config file's directory). Leading `..` steps consume `base`'s
/// last components, which is exact because `base` is canonical; later ones are kept.
pub fn resolve_path(base: &Path, v: &str) -> PathBuf {
    let value = Path::new(v);
    if value.is_absolute() {
        return value.to_path_buf();
    }
    let mut out = base.to_path_buf();
    let mut leading = true;
    for part in value.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if leading && out.parent().is_some() => {
                out.pop();
            }
            other => {
                leading = leading && other == Component::ParentDir;
                out.push(other.as_os_str());
            }
        }
    }
    out
}

/// `yes` or `no`.
pub fn yes_no(v: &str) -> Result<bool, String> {
    match v {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("{} is not yes or no", quoted(v))),
    }
}

/// A TCP port, 1 to 65535, digits only.
pub fn port(v: &str) -> Result<u16, String> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {} is not a number", quoted(v)));
    }
    match v.parse::<u16>() {
        Ok(0) => Err("port 0 is not a port a server listens on".to_string()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {} is above 65535", quoted(v))),
    }
}

/// The smarthost all non-local mail goes to (`relay_host`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHost {
    /// A domain name, or an IP literal without brackets (`192.0.2.1`, `2001:db8::1`). Never
    /// looked up for MX: a name is resolved to its addresses only.
    pub host: String,
    /// Never 0 in a loaded config: when the value names none, 25, or 465 with
    /// `relay_tls = implicit`.
    pub port: u16,
}

impl RelayHost {
    /// The host as an IP address, if it is a literal (then nothing is looked up).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl std::fmt::Display for RelayHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// How mail to `relay_host` is encrypted (`relay_tls`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RelayTls {
    /// STARTTLS (RFC 3207) is required: a relay that does not offer it, or fails the
    /// handshake, defers the mail.
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314), usually port 465.
    Implicit,
    /// Plain text, never TLS.
    None,
}

/// `starttls`, `implicit` or `none`, in any case.
pub fn relay_tls(v: &str) -> Result<RelayTls, String> {
    match v.to_ascii_lowercase().as_str() {
        "starttls" => Ok(RelayTls::Starttls),
        "implicit" => Ok(RelayTls::Implicit),
        "none" => Ok(RelayTls::None),
        _ => Err(format!("{} is not starttls, implicit or none", quoted(v))),
    }
}

/// `HOST`, `HOST:PORT`, `[HOST]` or `[HOST]:PORT`, where HOST is a domain name or an IPv4
/// literal, and inside brackets also an IPv6 literal (optionally `IPv6:`-prefixed, as in
/// Postfix). Postfix's brackets mean "no MX lookup"; postling never looks up MX for the relay
/// anyway, so they are only stripped. The port is None when not written (the caller picks
/// the default, which depends on `relay_tls`). Empty: None (no relay).
pub fn relay_host(v: &str) -> Result<Option<(String, Option<u16>)>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let (host, port_text, bracketed) = if let Some(rest) = v.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(format!("{} has `[` without a closing `]`", quoted(v)));
        };
        let port_text = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(format!("{}: after `]` only `:PORT` may follow", quoted(v)));
                }
            },
        };
        (inside, port_text, true)
    } else {
        match v.matches(':').count() {
            0 => (v, None, false),
            1 => match v.split_once(':') {
                Some((h, p)) => (h, Some(p), false),
                None => (v, None, false),
            },
            _ => {
                return Err(format!(
                    "{}: an IPv6 address needs brackets, like [2001:db8::1]:587",
                    quoted(v)
                ));
            }
        }
    };
    let port = port_text
        .map(port)
        .transpose()
        .map_err(|p| format!("{}: {p}", quoted(v)))?;
    let host = relay_host_name(host, bracketed).map_err(|p| match port_text {
        None if !bracketed => p,
        _ => format!("{}: {p}", quoted(v)),
    })?;
    Ok(Some((host, port)))
}

/// The host part of `relay_host`: an IP literal or a domain name (one trailing dot allowed).
fn relay_host_name(host: &str, bracketed: bool) -> Result<String, String> {
    let literal = if bracketed {
        let lower = host.to_ascii_lowercase();
        let bare = lower.strip_prefix("ipv6:").unwrap_or(&lower).to_string();
        bare.parse::<IpAddr>().ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    };
    if let Some(ip) = literal {
        if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
            return Err(format!("{ip} is not an address a server can have"));
        }
        return Ok(ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("no host name given".to_string());
    }
    // A last label of digits only is a mistyped IPv4 address, never a name (RFC 1123 §2.1:
    // top-level labels are alphabetic).
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{} is neither an IPv4 address nor a host name",
            quoted(host)
        ));
    }
    domain_name(name)
}

/// The text of `relay_auth_file`: one line `user password` (the user is the first word, the
/// password the rest of the line, trimmed); blank lines and lines starting with `#` are
/// skipped. Errors name the line of the file and never show the password.
pub fn relay_auth_text(text: &[u8]) -> Result<crate::proto::smtp_client::Credentials, String> {
    let mut found: Option<(usize, crate::proto::smtp_client::Credentials)> = None;
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let n = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(line) = std::str::from_utf8(raw) else {
            return Err(format!("line {n} is not valid UTF-8"));
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("line {n} contains a control character"));
        }
        if let Some((first, _)) = &found {
            return Err(format!(
                "line {n} is a second credential line (the first is line {first}); the file \
                 holds one `user password` line"
            ));
        }
        let (user, password) = match line.split_once(|c: char| c.is_whitespace()) {
            Some((u, p)) => (u, p.trim()),
            None => (line, ""),
        };
        if password.is_empty() {
            return Err(format!(
                "line {n} has a user name but no password; write `user password` on one line"
            ));
        }
        for (what, v) in [("user name", user), ("password", password)] {
            if v.len() > limits::RELAY_AUTH_FIELD_MAX {
                return Err(format!(
                    "line {n}: the {what} is longer than {} octets",
                    limits::RELAY_AUTH_FIELD_MAX
                ));
            }
        }
        let creds = crate::proto::smtp_client::Credentials {
            user: user.to_string(),
            password: password.to_string(),
        };
        found = Some((n, creds));
    }
    match found {
        Some((_, c)) => Ok(c),
        None => Err("holds no `user password` line".to_string()),
    }
}
