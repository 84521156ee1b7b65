//! Where remote mail goes: destinations, the addresses to try for each, and which addresses
//! may never be connected to. Pure functions, tested without DNS or sockets.

use std::net::{IpAddr, SocketAddr};

use crate::deliver::Outcome;
use crate::dns::{AddrResult, Name};
use crate::limits;

/// A group of recipients that travel over the same connections.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DestKey {
    /// Everything non-local goes to `relay_host`.
    Relay,
    /// By MX: the recipient's domain, lower-case (an address literal keeps its brackets).
    Domain(String),
}

impl DestKey {
    /// The destination of `address` (`local@domain`).
    pub fn of(address: &str, relay: bool) -> DestKey {
        if relay {
            return DestKey::Relay;
        }
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        DestKey::Domain(domain.to_ascii_lowercase())
    }
}

/// One address to try, with the name it came from (for the log and TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub host: String,
    pub addr: SocketAddr,
}

impl Route {
    /// `mx.example.org[192.0.2.1]:25`, the `relay=` of the log.
    pub fn label(&self) -> String {
        format!("{}[{}]:{}", self.host, self.addr.ip(), self.addr.port())
    }
}

/// Why an address is not connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unspecified, multicast or broadcast: never a mail server.
    Unusable,
    /// One of this server's own listening addresses: a mail loop.
    Own,
    /// Loopback, private or link-local, and neither `relay_host` nor
    /// `outbound_allow_private` allows it.
    Private,
}

fn v4_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private (RFC 1918, RFC 4193), shared (RFC 6598) or link-local.
pub fn is_private(ip: IpAddr) -> bool {
    match v4_of(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// May this server connect to `addr`? `own` are its listening addresses; `allow_private`
/// is `outbound_allow_private`, or true for the configured `relay_host`.
pub fn check_endpoint(
    addr: SocketAddr,
    own: &[SocketAddr],
    allow_private: bool,
) -> Result<(), Refusal> {
    let ip = v4_of(addr.ip());
    let unusable = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if unusable {
        return Err(Refusal::Unusable);
    }
    let ours = own.iter().any(|l| {
        l.port() == addr.port()
            && (v4_of(l.ip()) == ip || (l.ip().is_unspecified() && ip.is_loopback()))
    });
    if ours {
        return Err(Refusal::Own);
    }
    if is_private(ip) && !allow_private {
        return Err(Refusal::Private);
    }
    Ok(())
}

/// The exchanges to try for `domain`, lowest preference first, without this server itself
/// and anything it prefers less (RFC 5321 §5.1); at most `limits::OUTBOUND_MAX_MX`. Naming
/// only this server, or this server first, is a loop.
pub fn usable_mx(
    domain: &str,
    hosts: &[(u16, Name)],
    own_hostname: &str,
) -> Result<Vec<String>, Outcome> {
    let own_pref = hosts
        .iter()
        .filter(|(_, n)| {
            n.to_string()
                .trim_end_matches('.')
                .eq_ignore_ascii_case(own_hostname.trim_end_matches('.'))
        })
        .map(|(p, _)| *p)
        .min();
    let names: Vec<String> = hosts
        .iter()
        .filter(|(p, _)| own_pref.is_none_or(|own| *p < own))
        .map(|(_, n)| n.to_string().trim_end_matches('.').to_ascii_lowercase())
        .take(limits::OUTBOUND_MAX_MX)
        .collect();
    if names.is_empty() {
        return Err(Outcome::Permanent(format!(
            "5.4.6 mail for {domain} loops back to myself (its MX names this server, {own_hostname})"
        )));
    }
    Ok(names)
}

/// An address literal domain (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) as an IP.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => &inner[5..],
        _ => inner,
    };
    inner.parse().ok()
}

/// The routes from the address answers of each exchange (in MX order), each address checked
/// by `check_endpoint`. None usable: the outcome for every recipient of the destination
/// (a loop bounces; temporary failures, and private addresses, defer; a name with no
/// address at all bounces).
pub fn build_routes(
    what: &str,
    answers: &[(String, AddrResult)],
    port: u16,
    own: &[SocketAddr],
    allow_private: bool,
) -> Result<Vec<Route>, Outcome> {
    let mut routes = Vec::new();
    let mut temp: Option<String> = None;
    let mut refused: Option<(Refusal, SocketAddr)> = None;
    for (host, answer) in answers {
        match answer {
            AddrResult::Addrs(ips) => {
                for ip in ips {
                    let addr = SocketAddr::new(*ip, port);
                    match check_endpoint(addr, own, allow_private) {
                        Ok(()) => routes.push(Route {
                            host: host.clone(),
                            addr,
                        }),
                        Err(r) => {
                            // A loop outranks the other refusals in the reason.
                            if refused.is_none_or(|(prev, _)| prev != Refusal::Own) {
                                refused = Some((r, addr));
                            }
                        }
                    }
                }
            }
            AddrResult::TempFail(why) => {
                temp.get_or_insert_with(|| format!("DNS lookup of {host} failed: {why}"));
            }
            AddrResult::NoAddresses | AddrResult::NxDomain => {}
        }
    }
    routes.truncate(limits::OUTBOUND_MAX_ROUTES);
    if !routes.is_empty() {
        return Ok(routes);
    }
    Err(match (refused, temp) {
        (Some((Refusal::Own, addr)), _) => Outcome::Permanent(format!(
            "5.4.6 mail for {what} loops back to myself ({addr} is this server)"
        )),
        (_, Some(why)) => Outcome::Temporary(format!("4.4.3 {why}")),
        (Some((Refusal::Private, addr)), None) => Outcome::Temporary(format!(
            "4.4.4 mail for {what} would go to the private address {addr}; set outbound_allow_private = yes to allow it"
        )),
        (Some((Refusal::Unusable, addr)), None) => Outcome::Permanent(format!(
            "5.4.4 mail for {what} would go to {addr}, which is no mail server's address"
        )),
        (None, None) => Outcome::Permanent(format!("5.4.4 no address found for {what}")),
    })
}

#[cfg(test)]
mod tests;
