//! The `Received:` trace header the session puts first in every message (RFC 5321 §4.4).

use std::fmt::Write;
use std::net::IpAddr;

use crate::proto::smtp_addr::is_domain_or_literal;

/// How the message came in, for the `with` clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The client said EHLO (not HELO).
    pub extended: bool,
    /// MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// The session runs over TLS.
    pub tls: bool,
    /// The client authenticated (AUTH comes in a later issue).
    pub authenticated: bool,
}

impl Protocol {
    /// The registered `with` value: RFC 5321 §4.4 (SMTP, ESMTP), RFC 3848 (ESMTPS, ESMTPA,
    /// ESMTPSA) and RFC 6531 §4.3 (UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA).
    pub fn name(self) -> &'static str {
        if !self.extended {
            return "SMTP";
        }
        match (self.smtputf8, self.tls, self.authenticated) {
            (false, false, false) => "ESMTP",
            (false, true, false) => "ESMTPS",
            (false, false, true) => "ESMTPA",
            (false, true, true) => "ESMTPSA",
            (true, false, false) => "UTF8SMTP",
            (true, true, false) => "UTF8SMTPS",
            (true, false, true) => "UTF8SMTPA",
            (true, true, true) => "UTF8SMTPSA",
        }
    }
}

/// What the header says about one message.
pub struct Trace<'a> {
    /// The EHLO/HELO argument as the client sent it.
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub protocol: Protocol,
    pub queue_id: &'a str,
    /// Named only when the message has exactly one recipient: listing several would tell
    /// each of them who else got it.
    pub single_recipient: Option<&'a str>,
    /// RFC 5322 date-time of arrival.
    pub date: &'a str,
    /// TLS protocol version and cipher suite, as a comment after `with` (as sendmail does).
    pub tls: Option<(&'a str, &'a str)>,
}

/// The folded header, each line ending in CRLF, continuation lines starting with a TAB.
///
/// The client's HELO name appears only if it is a valid domain or address literal, which
/// excludes spaces, parentheses, CR and LF, so it can never inject a header line or break the
/// comment; otherwise the client is named by its address alone.
pub fn received_header(t: &Trace<'_>) -> String {
    let ip = t.client_ip.to_canonical();
    let literal = match ip {
        IpAddr::V4(a) => format!("[{a}]"),
        IpAddr::V6(a) => format!("[IPv6:{a}]"),
    };
    let mut h = String::with_capacity(256);
    // Writing into a String cannot fail.
    if is_domain_or_literal(t.helo) {
        let _ = write!(h, "Received: from {} ({} {literal})\r\n", t.helo, t.helo);
    } else {
        let _ = write!(h, "Received: from {literal} ({literal})\r\n");
    }
    let _ = write!(
        h,
        "\tby {} (postling) with {}",
        t.hostname,
        t.protocol.name()
    );
    if let Some((version, cipher)) = t.tls {
        let _ = write!(h, " (version={version} cipher={cipher})");
    }
    let _ = write!(h, " id {}", t.queue_id);
    match t.single_recipient {
        Some(rcpt) => {
            let _ = write!(h, "\r\n\tfor <{rcpt}>; {}\r\n", t.date);
        }
        None => {
            let _ = write!(h, ";\r\n\t{}\r\n", t.date);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace<'a>(helo: &'a str, rcpt: Option<&'a str>) -> Trace<'a> {
        Trace {
            helo,
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mail.example.test",
            protocol: Protocol {
                extended: true,
                smtputf8: false,
                tls: false,
                authenticated: false,
            },
            queue_id: "Q1",
            single_recipient: rcpt,
            date: "Tue, 01 Dec 2026 19:06:42 +0100",
            tls: None,
        }
    }

    #[test]
    fn tls_is_esmtps_with_version_and_cipher() {
        let mut t = trace("c.example.org", None);
        t.protocol.tls = true;
        t.tls = Some(("TLSv1.3", "TLS_AES_256_GCM_SHA384"));
        assert_eq!(
            received_header(&t),
            "Received: from c.example.org (c.example.org [192.0.2.7])\r\n\
             \tby mail.example.test (postling) with ESMTPS (version=TLSv1.3 \
             cipher=TLS_AES_256_GCM_SHA384) id Q1;\r\n\
             \tTue, 01 Dec 2026 19:06:42 +0100\r\n"
        );
    }

    #[test]
    fn one_recipient() {
        assert_eq!(
            received_header(&trace("client.example.org", Some("alice@example.test"))),
            "Received: from client.example.org (client.example.org [192.0.2.7])\r\n\
             \tby mail.example.test (postling) with ESMTP id Q1\r\n\
             \tfor <alice@example.test>; Tue, 01 Dec 2026 19:06:42 +0100\r\n"
        );
    }

    #[test]
    fn several_recipients_are_not_named() {
        assert_eq!(
            received_header(&trace("c.example.org", None)),
            "Received: from c.example.org (c.example.org [192.0.2.7])\r\n\
             \tby mail.example.test (postling) with ESMTP id Q1;\r\n\
             \tTue, 01 Dec 2026 19:06:42 +0100\r\n"
        );
    }

    #[test]
    fn hostile_helo_is_replaced_by_the_address() {
        for helo in [
            "x\r\nX-Injected: yes",
            "x\nX: y",
            "a(b)",
            "my_host",
            "",
            "a b",
        ] {
            let h = received_header(&trace(helo, Some("a@b.test")));
            assert!(
                h.starts_with("Received: from [192.0.2.7] ([192.0.2.7])\r\n"),
                "{h}"
            );
            assert_eq!(h.matches("\r\n").count(), 3, "{h}");
            assert_eq!(h.matches('\n').count(), 3, "{h}");
        }
    }

    #[test]
    fn ipv6_client_uses_the_rfc_5321_literal() {
        let mut t = trace("[IPv6:2001:db8::1]", None);
        t.client_ip = "2001:db8::1".parse().unwrap();
        let h = received_header(&t);
        assert!(h.starts_with(
            "Received: from [IPv6:2001:db8::1] ([IPv6:2001:db8::1] [IPv6:2001:db8::1])\r\n"
        ));
        t.client_ip = "::ffff:192.0.2.9".parse().unwrap();
        assert!(received_header(&t).contains(" [192.0.2.9])\r\n"));
    }

    #[test]
    fn protocol_names() {
        let p = |extended, smtputf8, tls, authenticated| {
            Protocol {
                extended,
                smtputf8,
                tls,
                authenticated,
            }
            .name()
        };
        assert_eq!(p(false, false, false, false), "SMTP");
        assert_eq!(p(true, false, false, false), "ESMTP");
        assert_eq!(p(true, false, true, false), "ESMTPS");
        assert_eq!(p(true, false, false, true), "ESMTPA");
        assert_eq!(p(true, false, true, true), "ESMTPSA");
        assert_eq!(p(true, true, false, false), "UTF8SMTP");
        assert_eq!(p(true, true, true, false), "UTF8SMTPS");
        assert_eq!(p(true, true, false, true), "UTF8SMTPA");
        assert_eq!(p(true, true, true, true), "UTF8SMTPSA");
    }
}
