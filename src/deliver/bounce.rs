//! Delivery status notifications (RFC 3464) in an RFC 6522 multipart/report, from
//! `MAILER-DAEMON@<hostname>` to the original sender, sent with the null reverse-path
//! (RFC 5321 §4.5.5) so a report can never bounce again: the non-delivery report (bounce,
//! `Action: failed`) and the delay warning (`Action: delayed`, the message is still queued).

use std::fmt::Write as _;

/// One recipient that failed for good (or, in a delay warning, is still being retried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    pub address: String,
    /// RFC 3463 status, e.g. `5.1.1`; `4.4.7` for an expired message; always `4.x.x` in a
    /// delay warning.
    pub status: String,
    pub reason: String,
}

/// What a bounce is about.
pub struct BounceInput<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// The original sender, who receives the report. Never empty (nothing bounces to `<>`).
    pub sender: &'a str,
    pub arrival_date: &'a str,
    pub date: &'a str,
    pub failed: &'a [FailedRecipient],
    /// The original message's header section (up to the blank line), CRLF line endings.
    pub original_headers: &'a [u8],
}

/// Longest header section copied into the report; past it the headers are cut at a line end.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// The header section of a stored message: everything before the first empty line, capped.
pub fn header_section(data: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(data, b"\r\n\r\n").map_or(data.len(), |i| i + 2);
    let mut end = end.min(MAX_RETURNED_HEADERS);
    if end < data.len() && end == MAX_RETURNED_HEADERS {
        end = memchr::memrchr(b'\n', &data[..end]).map_or(0, |i| i + 1);
    }
    &data[..end]
}

/// Builds the whole non-delivery report (CRLF line endings), ready to be spooled.
pub fn build(b: &BounceInput<'_>) -> Vec<u8> {
    render(b, None)
}

/// Builds the delay warning (CRLF line endings): `b.failed` are the recipients still being
/// retried with their last reason, `retry_until` (an RFC 5322 date) is when the server gives
/// up: the arrival plus `queue_lifetime`.
pub fn build_delay_warning(b: &BounceInput<'_>, retry_until: &str) -> Vec<u8> {
    render(b, Some(retry_until))
}

/// The report: a bounce, or with `retry_until` a delay warning.
fn render(b: &BounceInput<'_>, retry_until: Option<&str>) -> Vec<u8> {
    let boundary = format!("{}.postling-report/{}", b.queue_id, b.hostname);
    let (subject, kind, explanation, headers_part) = match retry_until {
        None => (
            "Undelivered Mail Returned to Sender",
            "bounce",
            "Your message could not be delivered to one or more recipients.\r\n\
             It is attached below with its headers.\r\n"
                .to_string(),
            "Undelivered Message Headers",
        ),
        Some(until) => (
            "Delayed Mail (still being retried)",
            "delay",
            format!(
                "####################################################################\r\n\
                 # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
                 ####################################################################\r\n\
                 \r\n\
                 Your message could not be delivered yet to one or more recipients.\r\n\
                 The mail system will keep trying until {until}.\r\n\
                 If it still cannot deliver it by then, it will return it to you.\r\n\
                 Its headers are attached below.\r\n"
            ),
            "Delayed Message Headers",
        ),
    };
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{to}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.{kind}@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {host}.\r\n\
         \r\n\
         {explanation}\
         \r\n",
        host = b.hostname,
        to = b.sender,
        date = b.date,
        id = b.queue_id,
    );
    for f in b.failed {
        let _ = write!(m, "<{}>: {}\r\n", f.address, one_line(&f.reason));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {host}\r\n\
         X-Postling-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        host = b.hostname,
        id = b.queue_id,
        arrival = b.arrival_date,
    );
    for f in b.failed {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {addr}\r\n\
             Action: {action}\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: X-Postling; {reason}\r\n",
            addr = f.address,
            action = if retry_until.is_some() {
                "delayed"
            } else {
                "failed"
            },
            status = f.status,
            reason = one_line(&f.reason),
        );
        if let Some(until) = retry_until {
            // RFC 3464 §2.3.9.
            let _ = write!(m, "Will-Retry-Until: {until}\r\n");
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Description: {headers_part}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(b.original_headers);
    if !b.original_headers.ends_with(b"\r\n") && !b.original_headers.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Keeps a diagnostic on one header line: no CR/LF/control characters from an error text.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_has_the_rfc3464_parts() {
        let failed = [FailedRecipient {
            address: "nobody@example.test".into(),
            status: "5.1.1".into(),
            reason: "unknown user\r\ninjected: header".into(),
        }];
        let msg = build(&BounceInput {
            hostname: "mail.example.test",
            queue_id: "ABC123",
            sender: "bob@example.org",
            arrival_date: "Sun, 22 Nov 2026 12:00:00 +0000",
            date: "Sun, 22 Nov 2026 12:00:05 +0000",
            failed: &failed,
            original_headers: b"Subject: hello\r\nFrom: bob@example.org\r\n",
        });
        let text = String::from_utf8(msg).unwrap();
        assert!(text.starts_with("From: Mail Delivery System <MAILER-DAEMON@mail.example.test>\r\nTo: <bob@example.org>\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mail.example.test\r\n"
        ));
        assert!(text.contains(
            "Final-Recipient: rfc822; nobody@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ));
        assert!(text.contains("Diagnostic-Code: X-Postling; unknown user  injected: header\r\n"));
        assert!(text.contains(
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\nFrom: bob@example.org\r\n"
        ));
        assert!(text.ends_with("--ABC123.postling-report/mail.example.test--\r\n"));
        assert!(!text.contains("\n\n"), "every line ends in CRLF");
    }

    #[test]
    fn delay_warning_says_delayed_and_until_when() {
        let delayed = [
            FailedRecipient {
                address: "far@elsewhere.test".into(),
                status: "4.4.1".into(),
                reason: "connection refused\r\nX-Injected: 1".into(),
            },
            FailedRecipient {
                address: "slow@elsewhere.test".into(),
                status: "4.0.0".into(),
                reason: "needs a relay".into(),
            },
        ];
        let msg = build_delay_warning(
            &BounceInput {
                hostname: "mail.example.test",
                queue_id: "ABC123",
                sender: "bob@example.org",
                arrival_date: "Sun, 22 Nov 2026 12:00:00 +0000",
                date: "Sun, 22 Nov 2026 16:00:05 +0000",
                failed: &delayed,
                original_headers: b"Subject: hello\r\n",
            },
            "Fri, 27 Nov 2026 12:00:00 +0000",
        );
        let text = String::from_utf8(msg).unwrap();
        assert!(text.contains("\r\nSubject: Delayed Mail (still being retried)\r\n"));
        assert!(text.contains("Message-ID: <ABC123.delay@mail.example.test>\r\n"));
        assert!(text.contains("YOU DO NOT NEED TO RESEND YOUR MESSAGE"));
        assert!(text.contains("keep trying until Fri, 27 Nov 2026 12:00:00 +0000.\r\n"));
        assert!(text.contains("<far@elsewhere.test>: connection refused  X-Injected: 1\r\n"));
        assert!(text.contains(
            "Final-Recipient: rfc822; far@elsewhere.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n\
             Diagnostic-Code: X-Postling; connection refused  X-Injected: 1\r\n\
             Will-Retry-Until: Fri, 27 Nov 2026 12:00:00 +0000\r\n"
        ));
        assert!(text.contains(
            "Final-Recipient: rfc822; slow@elsewhere.test\r\nAction: delayed\r\nStatus: 4.0.0\r\n"
        ));
        assert!(!text.contains("Action: failed"));
        assert!(!text.contains("\nX-Injected"), "no header injection");
        assert!(text.contains(
            "Content-Description: Delayed Message Headers\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n"
        ));
        assert!(!text.contains("\n\n"), "every line ends in CRLF");
        // A bounce carries no Will-Retry-Until (RFC 3464 §2.3.9: only with delayed).
        let bounce = String::from_utf8(build(&BounceInput {
            hostname: "h",
            queue_id: "Q",
            sender: "s@x",
            arrival_date: "d",
            date: "d",
            failed: &delayed,
            original_headers: b"",
        }))
        .unwrap();
        assert!(!bounce.contains("Will-Retry-Until") && bounce.contains("Action: failed"));
    }

    #[test]
    fn header_section_stops_at_blank_line_and_is_capped() {
        assert_eq!(
            header_section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(header_section(b"A: 1\r\n"), b"A: 1\r\n");
        let mut big = Vec::new();
        while big.len() < MAX_RETURNED_HEADERS + 100 {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let h = header_section(&big);
        assert!(h.len() <= MAX_RETURNED_HEADERS && h.ends_with(b"\r\n"));
    }
}
