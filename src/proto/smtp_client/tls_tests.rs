//! STARTTLS (RFC 3207) and AUTH (RFC 4954) dialogs, including response injection, each played
//! whole, split at every byte boundary and one byte at a time (`tests::check`).

use super::tests::*;
use super::*;

fn s(parts: &[&str]) -> String {
    parts.concat()
}

const EHLO_TLS: &str = "250-mx.example.net\r\n250-STARTTLS\r\n250 PIPELINING\r\n";
const AFTER_TLS: &str =
    "250-mx.example.net\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 1000\r\n";
const TRANSACTION: &str = "250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n221 bye\r\n";
const DELIVERED: &str = "delivered: end of data: 250 2.0.0 queued";

fn starttls(policy: TlsPolicy, segments: &[&[u8]]) -> Driver {
    check(
        || Driver::new(settings(policy, None), msg(&["b@example.net"]), BODY, false),
        segments,
    )
}

#[test]
fn starttls_opportunistic_offered() {
    let first = s(&[GREETING, EHLO_TLS, "220 2.0.0 ready\r\n"]);
    let second = s(&[AFTER_TLS, TRANSACTION]);
    let d = starttls(
        TlsPolicy::Opportunistic,
        &[first.as_bytes(), second.as_bytes()],
    );
    assert_eq!(d.handshakes, 1);
    // EHLO again over TLS, and no second STARTTLS although it is still advertised.
    assert!(d.text().starts_with(&s(&[
        EHLO,
        "STARTTLS\r\n",
        EHLO,
        "MAIL FROM:<a@example.org> SIZE=21\r\n"
    ])));
    assert_eq!(d.summary(), [[DELIVERED]]);
}

#[test]
fn starttls_opportunistic_not_offered_or_refused() {
    let server = s(&[GREETING, "250 mx.example.net\r\n", TRANSACTION]);
    let d = starttls(TlsPolicy::Opportunistic, &[server.as_bytes()]);
    assert_eq!(d.handshakes, 0);
    assert!(
        d.text()
            .starts_with(&s(&[EHLO, "MAIL FROM:<a@example.org>\r\n"]))
    );
    assert_eq!(d.summary(), [[DELIVERED]]);
    // Refused: the mail goes in clear (opportunistic means exactly that).
    let server = s(&[
        GREETING,
        EHLO_TLS,
        "454 4.7.0 TLS not available\r\n",
        TRANSACTION,
    ]);
    let d = starttls(TlsPolicy::Opportunistic, &[server.as_bytes()]);
    assert!(
        d.text()
            .starts_with(&s(&[EHLO, "STARTTLS\r\nMAIL FROM:<a@example.org>\r\n"]))
    );
    assert_eq!(d.summary(), [[DELIVERED]]);
    // Never: not even asked.
    let server = s(&[GREETING, EHLO_TLS, TRANSACTION]);
    let d = starttls(TlsPolicy::Never, &[server.as_bytes()]);
    assert!(!d.text().contains("STARTTLS"));
    assert_eq!(d.summary(), [[DELIVERED]]);
}

#[test]
fn starttls_required() {
    let server = s(&[GREETING, "250 mx.example.net\r\n", "221 bye\r\n"]);
    let d = starttls(TlsPolicy::Required, &[server.as_bytes()]);
    assert_eq!(d.text(), s(&[EHLO, "QUIT\r\n"]));
    assert_eq!(d.summary(), [["temporary: TLS required but not offered"]]);
    // HELO servers offer nothing, so nothing either.
    let server = s(&[GREETING, "500 no\r\n250 mx\r\n221 bye\r\n"]);
    let d = starttls(TlsPolicy::Required, &[server.as_bytes()]);
    assert_eq!(d.summary(), [["temporary: TLS required but not offered"]]);
    // Offered but refused: a temporary failure, whatever the code.
    let server = s(&[
        GREETING,
        EHLO_TLS,
        "554 5.7.0 no TLS for you\r\n221 bye\r\n",
    ]);
    let d = starttls(TlsPolicy::Required, &[server.as_bytes()]);
    assert_eq!(d.text(), s(&[EHLO, "STARTTLS\r\nQUIT\r\n"]));
    assert_eq!(
        d.summary(),
        [["temporary: STARTTLS refused: 554 5.7.0 no TLS for you"]]
    );
}

/// Response injection (RFC 3207 §4, CVE-2011-0411): replies sent in the same flight as the
/// `220` to STARTTLS are dropped, never taken as answers to what is sent over TLS. Here they
/// would have claimed PIPELINING and accepted the whole transaction.
#[test]
fn starttls_response_injection_is_discarded() {
    let injected = "250-evil\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 fake\r\n";
    let first = s(&[GREETING, EHLO_TLS, "220 2.0.0 ready\r\n", injected]);
    let second = s(&["250-mx.example.net\r\n250 SIZE 1000\r\n", TRANSACTION]);
    let d = starttls(TlsPolicy::Required, &[first.as_bytes(), second.as_bytes()]);
    assert_eq!(d.handshakes, 1);
    assert!(
        !d.client.extensions().pipelining,
        "an injected EHLO reply was believed"
    );
    assert_eq!(
        d.text(),
        s(&[
            EHLO,
            "STARTTLS\r\n",
            EHLO,
            "MAIL FROM:<a@example.org> SIZE=21\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
            "Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n"
        ])
    );
    assert_eq!(d.summary(), [[DELIVERED]]);

    // The session itself drops what it is offered with the 220 and until the handshake is
    // done, writing nothing.
    let mut c = SmtpClient::new(plain(), msg(&["b@example.net"]), false, t0());
    let mut out = crate::buf::OutBuf::new_boxed();
    let step = c.step(GREETING.as_bytes(), t0(), &mut out);
    assert_eq!(step, ClientStep::new(GREETING.len(), ClientNext::NeedInput));
    let step = c.step(EHLO_TLS.as_bytes(), t0(), &mut out);
    assert_eq!(step, ClientStep::new(EHLO_TLS.len(), ClientNext::NeedInput));
    assert_eq!(out.bytes(), s(&[EHLO, "STARTTLS\r\n"]).as_bytes());
    out.clear();
    let flight = s(&["220 ready\r\n", injected]);
    let step = c.step(flight.as_bytes(), t0(), &mut out);
    assert_eq!(step, ClientStep::new(flight.len(), ClientNext::StartTls));
    let step = c.step(b"250 injected later\r\n", t0(), &mut out);
    assert_eq!(step, ClientStep::new(20, ClientNext::StartTls));
    assert!(out.is_empty());
    c.tls_established(t0());
    let step = c.step(b"", t0(), &mut out);
    assert_eq!(step, ClientStep::new(0, ClientNext::NeedInput));
    assert_eq!(out.bytes(), EHLO.as_bytes());
}

const USER: Option<(&str, &str)> = Some(("user", "secret"));

fn auth(tls_up: bool, segments: &[&[u8]]) -> Driver {
    check(
        || {
            Driver::new(
                settings(TlsPolicy::Opportunistic, USER),
                msg(&["b@example.net"]),
                BODY,
                tls_up,
            )
        },
        segments,
    )
}

#[test]
fn auth_plain_over_implicit_tls() {
    let server = s(&[GREETING, AFTER_TLS, "235 2.7.0 ok\r\n", TRANSACTION]);
    let d = auth(true, &[server.as_bytes()]);
    // base64("\0user\0secret"), RFC 4616.
    assert!(
        d.text()
            .starts_with(&s(&[EHLO, "AUTH PLAIN AHVzZXIAc2VjcmV0\r\nMAIL FROM:"]))
    );
    assert_eq!(d.summary(), [[DELIVERED]]);
}

#[test]
fn auth_login_after_starttls() {
    let ehlo = "250-mx\r\n250-STARTTLS\r\n250 AUTH LOGIN\r\n";
    let first = s(&[GREETING, ehlo, "220 ready\r\n"]);
    let second = s(&[
        ehlo,
        "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 ok\r\n",
        TRANSACTION,
    ]);
    let d = auth(false, &[first.as_bytes(), second.as_bytes()]);
    assert!(d.text().starts_with(&s(&[
        EHLO,
        "STARTTLS\r\n",
        EHLO,
        "AUTH LOGIN\r\ndXNlcg==\r\nc2VjcmV0\r\nMAIL FROM:<a@example.org>\r\n"
    ])));
    assert_eq!(d.summary(), [[DELIVERED]]);
}

/// An authentication failure at the smarthost defers the mail (no bounce storm), and so does
/// every reason not to authenticate at all.
#[test]
fn auth_failures_are_temporary() {
    let server = s(&[
        GREETING,
        AFTER_TLS,
        "535 5.7.8 bad credentials\r\n221 bye\r\n",
    ]);
    let d = auth(true, &[server.as_bytes()]);
    assert_eq!(
        d.text(),
        s(&[EHLO, "AUTH PLAIN AHVzZXIAc2VjcmV0\r\nQUIT\r\n"])
    );
    assert_eq!(
        d.summary(),
        [["temporary: authentication failed: AUTH: 535 5.7.8 bad credentials"]]
    );
    // LOGIN refused at the password.
    let ehlo = "250-mx\r\n250 AUTH LOGIN\r\n";
    let server = s(&[
        GREETING,
        ehlo,
        "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 no\r\n221 bye\r\n",
    ]);
    let d = auth(true, &[server.as_bytes()]);
    assert_eq!(
        d.summary(),
        [["temporary: authentication failed: AUTH: 535 no"]]
    );
    // No TLS: the credentials are never sent.
    let server = s(&[GREETING, "250-mx\r\n250 AUTH PLAIN\r\n221 bye\r\n"]);
    let d = auth(false, &[server.as_bytes()]);
    assert_eq!(d.text(), s(&[EHLO, "QUIT\r\n"]));
    assert_eq!(
        d.summary(),
        [[
            "temporary: authentication failed: not sending credentials over a connection without TLS"
        ]]
    );
    // No usable mechanism.
    let server = s(&[GREETING, "250-mx\r\n250 AUTH CRAM-MD5\r\n221 bye\r\n"]);
    let d = auth(true, &[server.as_bytes()]);
    assert_eq!(
        d.summary(),
        [
            [
                "temporary: authentication failed: the server offers neither AUTH PLAIN nor AUTH LOGIN"
            ]
        ]
    );
}

#[test]
fn credentials_never_in_debug_output() {
    let c = Credentials {
        user: "user".into(),
        password: "secret".into(),
    };
    assert!(!format!("{c:?}").contains("secret"));
}
