//! The outcome texts remote delivery hands the engine: an RFC 3463 status first (the DSN
//! takes it from there), then the server and its reply the way Postfix logs them.

use super::*;
use crate::proto::smtp_client::{Detail, Enhanced, Reply};

fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
    Reply {
        code,
        enhanced: enhanced.map(|(class, subject, detail)| Enhanced {
            class,
            subject,
            detail,
        }),
        text: text.to_string(),
    }
}

const LABEL: &str = "mx.example.net[192.0.2.25]:25";

#[test]
fn a_refused_recipient_names_the_server_its_reply_and_the_command() {
    let r = reply(550, Some((5, 1, 1)), "<bob@example.net>: no such user");
    let d = Detail {
        text: format!("RCPT TO: 550 5.1.1 {}", r.text),
        reply: Some(r),
    };
    let (o, note) = convert(&smtp_client::Outcome::Permanent(d), LABEL);
    assert_eq!(
        o,
        Outcome::Permanent(format!(
            "5.1.1 host {LABEL} said: 550 5.1.1 <bob@example.net>: no such user (in reply to RCPT TO)"
        ))
    );
    assert_eq!(note, None);
}

#[test]
fn a_reply_without_enhanced_code_gets_the_class_status() {
    let r = reply(451, None, "try later");
    let d = Detail {
        text: "MAIL FROM: 451 try later".into(),
        reply: Some(r),
    };
    let (o, _) = convert(&smtp_client::Outcome::Temporary(d), LABEL);
    assert_eq!(
        o,
        Outcome::Temporary(format!(
            "4.0.0 host {LABEL} said: 451 try later (in reply to MAIL FROM)"
        ))
    );
}

#[test]
fn local_reasons_keep_their_own_status_or_get_the_default() {
    let d = Detail {
        reply: None,
        text: "timeout waiting for the greeting".into(),
    };
    let (o, _) = convert(&smtp_client::Outcome::Temporary(d), LABEL);
    assert_eq!(
        o,
        Outcome::Temporary(format!("4.4.2 {LABEL}: timeout waiting for the greeting"))
    );
    let d = Detail {
        reply: None,
        text: "4.7.0 TLS handshake failed: bad certificate".into(),
    };
    let (o, _) = convert(&smtp_client::Outcome::Temporary(d), LABEL);
    assert_eq!(
        o,
        Outcome::Temporary(format!(
            "4.7.0 {LABEL}: TLS handshake failed: bad certificate"
        ))
    );
}

#[test]
fn an_accepted_recipient_keeps_the_servers_reply_for_the_log() {
    let r = reply(250, Some((2, 0, 0)), "Ok: queued as 4Xyz");
    let d = Detail {
        text: "end of data: 250 2.0.0 Ok: queued as 4Xyz".into(),
        reply: Some(r),
    };
    let (o, note) = convert(&smtp_client::Outcome::Delivered(d), LABEL);
    assert_eq!(o, Outcome::Delivered);
    assert_eq!(note.as_deref(), Some("250 2.0.0 Ok: queued as 4Xyz"));
}

#[test]
fn literal_addresses_of_a_smarthost() {
    assert_eq!(literal_ip("192.0.2.1"), "192.0.2.1".parse().ok());
    assert_eq!(literal_ip("[2001:db8::1]"), "2001:db8::1".parse().ok());
    assert_eq!(literal_ip("smtp.example.net"), None);
}
