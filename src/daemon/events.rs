//! The text of the log lines an administrator follows a message or a client by: one function
//! per event, in one Postfix-like `key=value` style, the queue id first where there is one
//! (doc/operations.md has the table). The formatters are pure (unit-tested here); the `log_*`
//! functions write them, the storm-prone ones under a flood target (`daemon::flood`), so a
//! storm is summarised instead of filling the disk.
//!
//! Anything a client chose (a user name, an address) is cleaned of control characters and
//! cut to `MAX_FIELD` before it is written, so it cannot forge a line. Passwords never reach
//! this module.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use log::info;

use super::flood;

/// Longest client-chosen field written (an address is at most 256 octets, RFC 5321 §4.5.3.1.3).
const MAX_FIELD: usize = 256;

/// A client-chosen string made safe for one log line: control characters as `\xNN`, cut at
/// `MAX_FIELD` bytes (at a character boundary) with `…`.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD));
    for c in s.chars() {
        if out.len() >= MAX_FIELD {
            out.push('…');
            break;
        }
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// `ID: client=unknown[192.0.2.7]:41234 helo=<mx.example> tls=TLSv1.3/TLS13_AES_128_GCM_SHA256 auth=none`
/// (no reverse lookup is made, so the host is `unknown`, as Postfix writes it without one).
pub fn client(
    id: &str,
    peer: SocketAddr,
    helo: &str,
    tls: Option<(&str, &str)>,
    auth: Option<&str>,
) -> String {
    let tls = tls.map_or_else(|| "none".to_string(), |(v, c)| format!("{v}/{c}"));
    format!(
        "{id}: client=unknown[{}]:{} helo=<{}> tls={tls} auth={}",
        peer.ip(),
        peer.port(),
        clean(helo),
        auth.map_or_else(|| "none".to_string(), clean)
    )
}

/// `ID: uid=1000 user=alice from=<alice@example.org> (maildrop/NAME)`: a local submission.
pub fn pickup(id: &str, uid: u32, user: Option<&str>, sender: &str, drop_file: &str) -> String {
    let user = user.map_or_else(String::new, |u| format!(" user={}", clean(u)));
    format!(
        "{id}: uid={uid}{user} from=<{}> (maildrop/{})",
        clean(sender),
        clean(drop_file)
    )
}

/// `ID: from=<sender> size=N nrcpt=M`: the message is committed to the queue.
pub fn queued(id: &str, sender: &str, size: u64, nrcpt: usize) -> String {
    format!("{id}: from=<{}> size={size} nrcpt={nrcpt}", clean(sender))
}

/// Where a recipient's copy went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sent,
    Deferred,
    Bounced,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Deferred => "deferred",
            Status::Bounced => "bounced",
        }
    }
}

/// One recipient's delivery.
pub struct Delivery<'a> {
    pub id: &'a str,
    /// Where it ended up (the local user, or the remote address of an alias).
    pub to: &'a str,
    /// The recipient as the sender gave it (written only when it differs from `to`).
    pub orig_to: &'a str,
    /// `local`, or `none` when no relay is configured for a remote address.
    pub relay: &'a str,
    /// Since arrival.
    pub delay: Duration,
    pub status: Status,
    /// The reply or reason, in the parentheses.
    pub reason: &'a str,
}

/// `ID: to=<alice> orig_to=<postmaster@example.org> relay=local delay=0.3 status=sent (delivered to maildir)`
pub fn delivery(d: &Delivery<'_>) -> String {
    let orig = if d.orig_to == d.to {
        String::new()
    } else {
        format!(" orig_to=<{}>", clean(d.orig_to))
    };
    format!(
        "{}: to=<{}>{orig} relay={} delay={:.1} status={} ({})",
        d.id,
        clean(d.to),
        d.relay,
        d.delay.as_secs_f64(),
        d.status.as_str(),
        clean(d.reason)
    )
}

/// `ID: sender non-delivery notification: NEWID`
pub fn bounce_notice(id: &str, new_id: &str) -> String {
    format!("{id}: sender non-delivery notification: {new_id}")
}

/// `ID: sender delay notification: NEWID` (the delay warning DSN, as Postfix logs it)
pub fn delay_notice(id: &str, new_id: &str) -> String {
    format!("{id}: sender delay notification: {new_id}")
}

/// `ID: removed`
pub fn removed(id: &str) -> String {
    format!("{id}: removed")
}

/// `reject: RCPT from [192.0.2.7]: 550 5.1.1 <x@example.org>: Recipient address rejected: User unknown`
/// (`stage` is `RCPT`, `MAIL` or `CONNECT`; `reply` without its CRLF).
pub fn reject(stage: &str, ip: IpAddr, reply: &str) -> String {
    format!("reject: {stage} from [{ip}]: {}", clean(reply.trim_end()))
}

/// `auth failed: pop3 USER from [192.0.2.7] user=<bob>` (the name as the client sent it;
/// never the password).
pub fn auth_failed(proto: &str, mechanism: &str, ip: IpAddr, user: &str) -> String {
    format!(
        "auth failed: {proto} {mechanism} from [{ip}] user=<{}>",
        clean(user)
    )
}

/// Writes a line (info level).
pub fn log(line: &str) {
    info!("{line}");
}

/// Writes a line that storms can repeat, summarised per `kind` and client address.
pub fn log_flood(kind: &str, ip: IpAddr, line: &str) {
    let target = flood::target(kind, ip);
    info!(target: &target, "{line}");
}

/// Writes a rejection (summarised per stage and client).
pub fn log_reject(stage: &str, ip: IpAddr, reply: &str) {
    log_flood(&format!("reject: {stage}"), ip, &reject(stage, ip, reply));
}

/// Writes a failed login (summarised per protocol and client).
pub fn log_auth_failed(proto: &str, mechanism: &str, ip: IpAddr, user: &str) {
    log_flood(
        &format!("auth failed: {proto}"),
        ip,
        &auth_failed(proto, mechanism, ip, user),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn client_line_names_address_port_helo_tls_and_auth() {
        let peer: SocketAddr = "192.0.2.7:41234".parse().unwrap();
        assert_eq!(
            client("Q1", peer, "mx.example", None, None),
            "Q1: client=unknown[192.0.2.7]:41234 helo=<mx.example> tls=none auth=none"
        );
        assert_eq!(
            client(
                "Q1",
                peer,
                "h",
                Some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256")),
                Some("alice")
            ),
            "Q1: client=unknown[192.0.2.7]:41234 helo=<h> tls=TLSv1.3/TLS13_AES_128_GCM_SHA256 auth=alice"
        );
        let v6: SocketAddr = "[2001:db8::1]:25".parse().unwrap();
        assert!(client("Q", v6, "h", None, None).contains("client=unknown[2001:db8::1]:25 "));
    }

    #[test]
    fn queued_and_pickup_lines() {
        assert_eq!(
            queued("Q1", "bob@example.org", 1234, 2),
            "Q1: from=<bob@example.org> size=1234 nrcpt=2"
        );
        assert_eq!(queued("Q1", "", 5, 1), "Q1: from=<> size=5 nrcpt=1");
        assert_eq!(
            pickup("Q2", 1000, Some("alice"), "alice@h", "123.4"),
            "Q2: uid=1000 user=alice from=<alice@h> (maildrop/123.4)"
        );
        assert_eq!(
            pickup("Q2", 7, None, "x@h", "d"),
            "Q2: uid=7 from=<x@h> (maildrop/d)"
        );
    }

    #[test]
    fn delivery_lines_show_orig_to_only_when_it_differs() {
        let mut d = Delivery {
            id: "Q1",
            to: "alice@example.org",
            orig_to: "alice@example.org",
            relay: "local",
            delay: Duration::from_millis(1260),
            status: Status::Sent,
            reason: "delivered to maildir",
        };
        assert_eq!(
            delivery(&d),
            "Q1: to=<alice@example.org> relay=local delay=1.3 status=sent (delivered to maildir)"
        );
        d.orig_to = "postmaster@example.org";
        d.status = Status::Bounced;
        d.reason = "5.1.1 unknown user";
        assert_eq!(
            delivery(&d),
            "Q1: to=<alice@example.org> orig_to=<postmaster@example.org> relay=local delay=1.3 status=bounced (5.1.1 unknown user)"
        );
        d.status = Status::Deferred;
        assert!(delivery(&d).contains(" status=deferred ("));
    }

    #[test]
    fn bounce_removed_reject_and_auth_lines() {
        assert_eq!(
            bounce_notice("Q1", "Q2"),
            "Q1: sender non-delivery notification: Q2"
        );
        assert_eq!(removed("Q1"), "Q1: removed");
        assert_eq!(
            reject(
                "RCPT",
                ip(),
                "550 5.1.1 <x@h>: Recipient address rejected: User unknown\r\n"
            ),
            "reject: RCPT from [192.0.2.7]: 550 5.1.1 <x@h>: Recipient address rejected: User unknown"
        );
        assert_eq!(
            auth_failed("pop3", "USER", ip(), "bob"),
            "auth failed: pop3 USER from [192.0.2.7] user=<bob>"
        );
    }

    #[test]
    fn client_chosen_text_cannot_forge_a_line() {
        let line = auth_failed("pop3", "USER", ip(), "bob\nreject: forged\r");
        assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
        assert!(line.contains("bob\\x0areject: forged\\x0d"), "{line}");
        let long = "a".repeat(10_000);
        let line = queued("Q", &long, 1, 1);
        assert!(line.len() < MAX_FIELD + 64, "{}", line.len());
        assert!(line.contains('…'));
    }
}
