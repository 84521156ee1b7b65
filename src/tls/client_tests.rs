//! The client side against the server side, both `TlsSession`s on fixed buffers in memory,
//! each driven by the reactor model of `tests.rs`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoClientAuth, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CertificateError, ClientConfig, ServerConfig, SupportedProtocolVersion};

use super::client::first_existing;
use super::tests::{Peer, Rng, Server, all_at_once, fixture, identity};
use super::*;
use crate::limits::{TLS_IN_BUF, TLS_MAX_FRAGMENT, TLS_OUT_MIN_TRAFFIC, TLS_RECORD_OUT_MAX};

type Client = Peer<UnbufferedClientConnection>;

fn client(config: Arc<ClientConfig>, name: &str) -> Client {
    Peer::with(TlsClientSession::new(config, name).expect("client session"))
}

fn verified(ca: &str) -> Arc<ClientConfig> {
    client_config_verified(Some(&fixture(ca))).expect("CA file loads")
}

/// A server of only the given versions, presenting `cert` and signing with `key` (which
/// need not match: `TlsIdentity` refuses that, this does not).
fn server_with(cert: &str, key: &str, versions: &[&'static SupportedProtocolVersion]) -> Server {
    let config = server_config(cert, key, versions, Arc::new(NoClientAuth));
    Peer::with(TlsServerSession::new(Arc::new(config)).expect("server session"))
}

fn server_config(
    cert: &str,
    key: &str,
    versions: &[&'static SupportedProtocolVersion],
    client_auth: Arc<dyn ClientCertVerifier>,
) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture(cert))
        .expect("cert file")
        .map(|c| c.expect("cert pem"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(fixture(key)).expect("key pem");
    let key = provider.key_provider.load_private_key(key).expect("key");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_client_cert_verifier(client_auth)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(CertifiedKey::new(
            chain, key,
        ))));
    config.max_fragment_size = Some(TLS_MAX_FRAGMENT);
    config.send_tls13_tickets = 0;
    config
}

/// Hands what one side wrote to the other, at most `split()` bytes per read.
fn carry<A: UnbufferedConnection, B: UnbufferedConnection>(
    from: &mut Peer<A>,
    to: &mut Peer<B>,
    split: &mut dyn FnMut() -> usize,
) -> bool {
    let n = to.feed_all(&from.wire, split);
    from.wire.drain(..n);
    n > 0
}

/// Moves bytes both ways until neither side has anything left to say.
fn exchange(c: &mut Client, s: &mut Server, split: &mut dyn FnMut() -> usize) {
    for _ in 0..100_000 {
        c.turn();
        s.turn();
        let to_server = carry(c, s, split);
        let to_client = carry(s, c, split);
        if !to_server && !to_client {
            return;
        }
    }
    panic!("exchange never settled");
}

/// Handshake, a command each way, close_notify from the client, then from the server.
fn dialog(mut c: Client, mut s: Server, split: &mut dyn FnMut() -> usize) -> (Client, Server) {
    exchange(&mut c, &mut s, split);
    assert_eq!(c.error, None);
    assert_eq!(s.error, None);
    assert!(c.handshake_done && s.handshake_done);
    assert!(c.tls.negotiated().is_some());
    assert_eq!(c.tls.negotiated(), s.tls.negotiated());

    s.plain_out
        .extend_from_slice(b"220 mail.example.test ESMTP\r\n");
    c.plain_out.extend_from_slice(b"EHLO client.example\r\n");
    exchange(&mut c, &mut s, split);
    assert_eq!(c.received, b"220 mail.example.test ESMTP\r\n");
    assert_eq!(s.received, b"EHLO client.example\r\n");
    assert!(c.plain_out.is_empty() && s.plain_out.is_empty());

    c.plain_out.extend_from_slice(b"QUIT\r\n");
    c.tls.close_notify();
    exchange(&mut c, &mut s, split);
    assert!(c.closed, "close_notify written");
    assert_eq!(s.received, b"EHLO client.example\r\nQUIT\r\n");
    assert!(s.peer_closed, "the server sees end of input");
    s.plain_out.extend_from_slice(b"221 bye\r\n");
    s.tls.close_notify();
    exchange(&mut c, &mut s, split);
    assert!(s.closed);
    assert_eq!(c.error, None);
    assert_eq!(s.error, None);
    (c, s)
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[test]
fn verified_handshake_data_both_ways_and_close_notify() {
    for (cert, key, versions, want) in [
        ("ecdsa-cert.pem", "ecdsa-key.pem", BOTH, "TLSv1.3"),
        ("rsa-cert.pem", "rsa-key.pem", BOTH, "TLSv1.3"),
        ("ecdsa-cert.pem", "ecdsa-key.pem", TLS12, "TLSv1.2"),
        ("rsa-cert.pem", "rsa-key.pem", TLS12, "TLSv1.2"),
    ] {
        let c = client(verified(cert), "mail.example.test");
        let s = server_with(cert, key, versions);
        let (c, _) = dialog(c, s, &mut all_at_once());
        assert_eq!(c.tls.negotiated().map(|n| n.0), Some(want), "{cert}");
    }
    // A chain: the client trusts only the CA that signed the leaf.
    let c = client(verified("ca-cert.pem"), "mail.example.test");
    dialog(
        c,
        Server::new(&identity("chain.pem", "chain-key.pem")),
        &mut || 1000,
    );
}

#[test]
fn verified_ip_literal() {
    for name in ["127.0.0.1", "::1", "mx.example.test"] {
        let c = client(verified("ip-cert.pem"), name);
        dialog(
            c,
            Server::new(&identity("ip-cert.pem", "ip-key.pem")),
            &mut all_at_once(),
        );
    }
    // An address the certificate does not carry, and a DNS name against an IP-only match.
    for name in ["127.0.0.2", "::2", "mail.example.test"] {
        let mut c = client(verified("ip-cert.pem"), name);
        let mut s = Server::new(&identity("ip-cert.pem", "ip-key.pem"));
        exchange(&mut c, &mut s, &mut all_at_once());
        assert!(is_wrong_name(&c.error), "{name}: {:?}", c.error);
    }
}

fn is_wrong_name(e: &Option<TlsError>) -> bool {
    matches!(
        e,
        Some(TlsError::Protocol(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )))
    )
}

/// Both ends close, no plaintext got through, and the server heard why in an alert.
fn assert_refused(c: &Client, s: &Server) {
    assert!(c.closed && s.closed);
    assert!(!c.handshake_done);
    assert!(c.received.is_empty() && s.received.is_empty());
    assert!(
        matches!(
            s.error,
            Some(TlsError::Protocol(rustls::Error::AlertReceived(_)))
        ),
        "{:?}",
        s.error
    );
}

#[test]
fn verified_refuses_a_wrong_name() {
    for versions in [BOTH, TLS12] {
        let mut c = client(verified("ecdsa-cert.pem"), "other.example.test");
        let mut s = server_with("ecdsa-cert.pem", "ecdsa-key.pem", versions);
        c.plain_out.extend_from_slice(b"EHLO x\r\n");
        exchange(&mut c, &mut s, &mut all_at_once());
        assert!(is_wrong_name(&c.error), "{:?}", c.error);
        assert_refused(&c, &s);
        let text = c.error.as_ref().map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("other.example.test"), "{text}");
    }
}

#[test]
fn verified_refuses_an_untrusted_ca() {
    for (ca, cert, key) in [
        ("ca-cert.pem", "ecdsa-cert.pem", "ecdsa-key.pem"),
        ("ip-cert.pem", "chain.pem", "chain-key.pem"),
        // A trusted certificate of the same subject but another key.
        ("rsa-cert.pem", "ecdsa-cert.pem", "ecdsa-key.pem"),
    ] {
        let mut c = client(verified(ca), "mail.example.test");
        let mut s = Server::new(&identity(cert, key));
        exchange(&mut c, &mut s, &mut all_at_once());
        let Some(TlsError::Protocol(rustls::Error::InvalidCertificate(e))) = &c.error else {
            panic!("{cert} against {ca}: {:?}", c.error);
        };
        if ca != "rsa-cert.pem" {
            assert_eq!(*e, CertificateError::UnknownIssuer, "{cert} against {ca}");
        }
        assert_refused(&c, &s);
    }
}

#[test]
fn unverified_accepts_any_certificate() {
    let config = client_config_unverified();
    for (cert, key, versions, name) in [
        ("ecdsa-cert.pem", "ecdsa-key.pem", BOTH, "mail.example.test"),
        (
            "ecdsa-cert.pem",
            "ecdsa-key.pem",
            BOTH,
            "mx.elsewhere.example",
        ),
        ("rsa-cert.pem", "rsa-key.pem", TLS12, "mx.elsewhere.example"),
        ("ecdsa-cert.pem", "ecdsa-key.pem", TLS12, "192.0.2.7"),
        ("chain.pem", "chain-key.pem", BOTH, "2001:db8::25"),
    ] {
        let c = client(config.clone(), name);
        dialog(c, server_with(cert, key, versions), &mut all_at_once());
    }
}

/// A server presenting a certificate whose key it does not hold: even unverified, the
/// handshake signature must match the presented key.
#[test]
fn unverified_still_checks_the_handshake_signature() {
    for versions in [BOTH, TLS12] {
        let mut c = client(client_config_unverified(), "mail.example.test");
        let mut s = server_with("ecdsa-cert.pem", "other-key.pem", versions);
        exchange(&mut c, &mut s, &mut all_at_once());
        assert!(
            matches!(
                c.error,
                Some(TlsError::Protocol(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature
                )))
            ),
            "{:?}",
            c.error
        );
        assert_refused(&c, &s);
    }
}

/// What a Postfix or Exim smarthost may do that postling's own server does not: send TLS 1.3
/// session tickets after the handshake, and ask for an optional client certificate. The
/// client ignores the tickets (no resumption) and sends no certificate.
#[test]
fn server_tickets_and_certificate_request() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        CertificateDer::pem_file_iter(fixture("ca-cert.pem"))
            .expect("ca")
            .map(|c| c.expect("pem")),
    );
    let asks = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .expect("client verifier");
    for versions in [BOTH, TLS12] {
        let mut config = server_config("ecdsa-cert.pem", "ecdsa-key.pem", versions, asks.clone());
        config.send_tls13_tickets = 2;
        config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
        let s = Peer::with(TlsServerSession::new(Arc::new(config)).expect("server"));
        let c = client(verified("ecdsa-cert.pem"), "mail.example.test");
        dialog(c, s, &mut || 100);
    }
}

/// The same dialog with the bytes cut at 1, at random places, and through a slow socket on
/// both sides into a session that takes a few bytes at a time.
#[test]
fn dialog_at_random_splits() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    dialog(
        client(verified("ecdsa-cert.pem"), "mail.example.test"),
        Server::new(&id),
        &mut || 1,
    );
    for seed in 1..=20u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
        let versions = if seed % 2 == 0 { BOTH } else { TLS12 };
        let mut s = server_with("ecdsa-cert.pem", "ecdsa-key.pem", versions);
        if seed > 10 {
            c.slow_socket = Some(Rng(seed));
            s.slow_socket = Some(Rng(seed ^ 0xff));
            c.plain_room = 3;
        }
        dialog(c, s, &mut || 1 + rng.below(700));
    }
}

/// One data record each way, handed over in two reads cut at every byte.
#[test]
fn data_record_split_at_every_byte() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut at = 1;
    loop {
        let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
        let mut s = Server::new(&id);
        exchange(&mut c, &mut s, &mut all_at_once());
        c.plain_out
            .extend_from_slice(b"MAIL FROM:<a@example.test>\r\n");
        s.plain_out.extend_from_slice(b"250 2.1.0 ok\r\n");
        c.turn();
        s.turn();
        let len = c.wire.len().max(s.wire.len());
        // The first read takes `at` bytes, the next the rest.
        let cut = || {
            let mut first = true;
            move || {
                if std::mem::take(&mut first) {
                    at
                } else {
                    usize::MAX
                }
            }
        };
        carry(&mut c, &mut s, &mut cut());
        carry(&mut s, &mut c, &mut cut());
        exchange(&mut c, &mut s, &mut all_at_once());
        assert_eq!(s.received, b"MAIL FROM:<a@example.test>\r\n", "cut {at}");
        assert_eq!(c.received, b"250 2.1.0 ok\r\n", "cut {at}");
        at += 1;
        if at >= len {
            break;
        }
    }
}

/// 100 KiB each way through the fixed buffers.
#[test]
fn stream_100k_each_way() {
    let mut c = client(verified("rsa-cert.pem"), "mail.example.test");
    let mut s = Server::new(&identity("rsa-cert.pem", "rsa-key.pem"));
    exchange(&mut c, &mut s, &mut all_at_once());
    let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    c.plain_out.extend_from_slice(&big);
    s.plain_out.extend_from_slice(&big);
    c.plain_room = 1000;
    exchange(&mut c, &mut s, &mut all_at_once());
    assert!(c.received == big && s.received == big);
    assert!(c.largest_record() <= TLS_RECORD_OUT_MAX);
    assert!(c.largest_record() > TLS_RECORD_OUT_MAX - 100);
}

/// `pump` writes nothing into less room than `output_room_needed`, and after the handshake
/// moves data through an output buffer of just that size.
#[test]
fn tiny_output_buffer_honours_output_room_needed() {
    let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
    assert!(c.tls.wants_read());
    let need = c.tls.output_room_needed();
    assert_eq!(need, TLS_RECORD_OUT_MAX);
    let mut tls_in = [0u8; 0];
    let mut plain_in = [0u8; 16];
    let mut tls_out = vec![0u8; need];
    let p = c.tls.pump(Buffers {
        tls_in: &mut tls_in,
        plain_out: b"",
        plain_in: &mut plain_in,
        tls_out: &mut tls_out[..need - 1],
    });
    assert!(p.needs_output_room && p.tls_out_len == 0 && p.error.is_none());
    let p = c.tls.pump(Buffers {
        tls_in: &mut tls_in,
        plain_out: b"",
        plain_in: &mut plain_in,
        tls_out: &mut tls_out,
    });
    assert!(p.tls_out_len > 0 && tls_out[0] == 0x16, "a ClientHello");

    let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
    let mut s = Server::new(&identity("ecdsa-cert.pem", "ecdsa-key.pem"));
    exchange(&mut c, &mut s, &mut all_at_once());
    assert_eq!(c.tls.output_room_needed(), TLS_OUT_MIN_TRAFFIC);
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 200) as u8).collect();
    let mut sent = 0;
    for _ in 0..1000 {
        let mut out = vec![0u8; TLS_OUT_MIN_TRAFFIC];
        let p = c.tls.pump(Buffers {
            tls_in: &mut tls_in,
            plain_out: &data[sent..],
            plain_in: &mut plain_in,
            tls_out: &mut out,
        });
        assert!(p.error.is_none());
        sent += p.plain_consumed;
        s.feed(&out[..p.tls_out_len]);
        if sent == data.len() {
            break;
        }
        assert!(p.plain_consumed > 0 && p.needs_output_room);
    }
    assert!(s.received == data);
}

#[test]
fn close_during_handshake_closes_at_once() {
    let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
    c.turn();
    assert!(!c.wire.is_empty(), "ClientHello");
    c.tls.close_notify();
    c.wire.clear();
    c.turn();
    assert!(c.closed && c.wire.is_empty());
    assert!(!c.tls.wants_read());
}

#[test]
fn invalid_server_name_is_an_error() {
    let config = client_config_unverified();
    for name in [
        "",
        "not a name",
        "[::1]",
        "mx..example",
        "a_b@c",
        "127.0.0.1:25",
    ] {
        match TlsClientSession::new(config.clone(), name) {
            Err(TlsError::ServerName(n)) => assert_eq!(n, name),
            Err(e) => panic!("{name:?}: {e}"),
            Ok(_) => panic!("{name:?} accepted"),
        }
    }
    let e = TlsError::ServerName("a b".into());
    assert_eq!(
        e.to_string(),
        "TLS error: \"a b\" is not a valid server name"
    );
}

/// What a server that does not speak TLS sends: the client fails, sends at most an alert,
/// and drops what follows.
#[test]
fn garbage_server_is_an_error() {
    for garbage in [
        &b"220 mx.example.test ESMTP\r\n"[..],
        b"220 hello\r\n",
        b"\x15\x03\x03\x00\x02\x02\x28",
        b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00",
        b"\x17\x03\x03\x00\x10AAAAAAAAAAAAAAAA",
        b"\x16\x03\x03\xff\xff",
    ] {
        let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
        c.turn();
        c.wire.clear();
        c.assert_garbage_refused(garbage);
    }
}

/// Random records, and the real server flight with random bytes changed, fed to a client
/// waiting for the ServerHello: an error or a wait, never a panic, a loop or growth.
#[test]
fn random_records_mid_handshake_never_panic() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    for seed in 1..=300u64 {
        let mut rng = Rng(0xdead_beef_cafe_f00d ^ seed.wrapping_mul(0x9e37_79b9));
        let mut c = client(verified("ecdsa-cert.pem"), "mail.example.test");
        c.turn();
        let mutated = seed % 3 == 0;
        let bytes = if mutated {
            let mut s = Server::new(&id);
            carry(&mut c, &mut s, &mut all_at_once());
            let mut flight = std::mem::take(&mut s.wire);
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(flight.len());
                flight[at] ^= 1 << rng.below(8);
            }
            flight
        } else {
            // Records of plausible types and lengths with random contents.
            let mut bytes = Vec::new();
            while bytes.len() < 6000 {
                let kind = [0x14, 0x15, 0x16, 0x17, rng.below(256) as u8][rng.below(5)];
                let len = rng.below(400);
                bytes.extend_from_slice(&[kind, 0x03, [0x01, 0x03][rng.below(2)]]);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
                bytes.extend((0..len).map(|_| rng.below(256) as u8));
            }
            bytes
        };
        c.wire.clear();
        c.feed_all(&bytes, &mut || 1 + rng.below(300));
        assert!(c.tls_in_len <= TLS_IN_BUF);
        assert!(c.received.is_empty(), "seed {seed}");
        // A changed bit in a record header's version may pass unnoticed; nothing else can.
        assert!(mutated || !c.handshake_done, "seed {seed}");
    }
}

#[test]
fn ca_file_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = |path: &Path| match client_config_verified(Some(path)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    };
    let missing = dir.path().join("missing.pem");
    assert_eq!(
        err(&missing),
        format!("CA file {} does not exist", missing.display())
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"").expect("write");
    assert_eq!(
        err(&empty),
        format!(
            "CA file {} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" section)",
            empty.display()
        )
    );
    let key = fixture("ecdsa-key.pem");
    assert!(
        err(&key).starts_with(&format!("CA file {} holds no certificate", key.display())),
        "{}",
        err(&key)
    );
    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, b"-----BEGIN CERTIFICATE-----\nMIIB\n").expect("write");
    assert!(
        err(&broken).starts_with(&format!("CA file {} is not valid PEM", broken.display())),
        "{}",
        err(&broken)
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    assert_eq!(
        err(&junk),
        format!(
            "CA file {} holds no certificate postling can use (1 could not be parsed)",
            junk.display()
        )
    );
    assert!(
        err(dir.path()).starts_with(&format!("CA file {} cannot be read", dir.path().display())),
        "{}",
        err(dir.path())
    );
}

#[test]
fn system_bundle_is_the_first_that_exists() {
    let ca = fixture("ca-cert.pem");
    let rsa = fixture("rsa-cert.pem");
    let paths = [
        "/nonexistent/postling/ca.pem",
        ca.to_str().expect("utf-8"),
        rsa.to_str().expect("utf-8"),
    ];
    assert_eq!(first_existing(&paths), Some(ca.clone()));
    assert_eq!(first_existing(&paths[..1]), None);
    // This machine's own bundle: loads if there is one, else an error naming where it looked.
    match client_config_verified(None) {
        Ok(_) => assert!(first_existing(crate::limits::SYSTEM_CA_BUNDLES).is_some()),
        Err(e) => assert!(e.contains("/etc/ssl/certs/ca-certificates.crt"), "{e}"),
    }
}

#[test]
fn client_session_size() {
    let size = std::mem::size_of::<TlsClientSession>();
    println!("size_of::<TlsClientSession>() = {size} bytes");
    assert!(size <= 6 * 1024, "{size}");
}
