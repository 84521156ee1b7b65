//! The TLS transport against rustls's ordinary client, all in memory: a small reactor model
//! moves bytes between a `ClientConnection` and a `TlsServerSession` on fixed buffers of the
//! sizes the real connection uses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};

use super::*;
use crate::limits::{IN_BUF, OUT_BUF, TLS_IN_BUF, TLS_RECORD_OUT_MAX};

pub(super) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
}

pub(super) fn identity(cert: &str, key: &str) -> TlsIdentity {
    TlsIdentity::load(&fixture(cert), &fixture(key)).expect("fixture identity loads")
}

fn client_config(root: &str, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture(root)).expect("root file") {
        roots.add(cert.expect("root pem")).expect("root cert");
    }
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("client versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn client(config: Arc<ClientConfig>) -> ClientConnection {
    let name = ServerName::try_from("mail.example.test").expect("server name");
    ClientConnection::new(config, name).expect("client connection")
}

/// A deterministic xorshift generator: random splits that repeat on every run.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The reactor's side of one TLS connection, server or client: fixed buffers of the real
/// sizes, and the session reduced to "consume all plaintext" (or a little at a time).
pub(super) struct Peer<C> {
    pub(super) tls: TlsSession<C>,
    pub(super) tls_in: Vec<u8>,
    pub(super) tls_in_len: usize,
    /// Room the model session offers for plaintext per pump.
    pub(super) plain_room: usize,
    pub(super) plain_in: Vec<u8>,
    /// What the session received, and what it still has to send.
    pub(super) received: Vec<u8>,
    pub(super) plain_out: Vec<u8>,
    pub(super) tls_out: Vec<u8>,
    pub(super) tls_out_len: usize,
    /// Everything sent to the other side, not yet handed to it.
    pub(super) wire: Vec<u8>,
    /// Everything this side sent, to check record sizes.
    pub(super) sent: Vec<u8>,
    /// A socket that takes only part of the output per write.
    pub(super) slow_socket: Option<Rng>,
    pub(super) handshake_done: bool,
    pub(super) peer_closed: bool,
    pub(super) closed: bool,
    pub(super) error: Option<TlsError>,
}

pub(super) type Server = Peer<UnbufferedServerConnection>;

impl Server {
    pub(super) fn new(identity: &TlsIdentity) -> Server {
        Peer::with(TlsServerSession::new(identity.config.clone()).expect("session"))
    }
}

impl<C: UnbufferedConnection> Peer<C> {
    pub(super) fn with(tls: TlsSession<C>) -> Peer<C> {
        Peer {
            tls,
            tls_in: vec![0; TLS_IN_BUF],
            tls_in_len: 0,
            plain_room: IN_BUF,
            plain_in: vec![0; IN_BUF],
            received: Vec::new(),
            plain_out: Vec::new(),
            tls_out: vec![0; OUT_BUF],
            tls_out_len: 0,
            wire: Vec::new(),
            sent: Vec::new(),
            slow_socket: None,
            handshake_done: false,
            peer_closed: false,
            closed: false,
            error: None,
        }
    }

    /// Reads as much of `bytes` as the input buffer takes, when the session wants to read,
    /// then pumps. Returns how many bytes were taken.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> usize {
        if !self.tls.wants_read() {
            self.turn();
            return 0;
        }
        let n = bytes.len().min(TLS_IN_BUF - self.tls_in_len);
        self.tls_in[self.tls_in_len..self.tls_in_len + n].copy_from_slice(&bytes[..n]);
        self.tls_in_len += n;
        self.turn();
        n
    }

    /// Feeds `bytes` in reads of `piece()` bytes until all are taken, the connection is
    /// closed or a read takes nothing. Returns how many bytes were taken.
    pub(super) fn feed_all(&mut self, bytes: &[u8], piece: &mut dyn FnMut() -> usize) -> usize {
        let mut at = 0;
        while at < bytes.len() && !self.closed {
            let want = piece().clamp(1, bytes.len() - at);
            let n = self.feed(&bytes[at..at + want]);
            if n == 0 {
                break;
            }
            at += n;
        }
        at
    }

    /// Feeds bytes that are not TLS: the connection fails with a protocol error, sends at most
    /// one alert and never plaintext, and drops what comes after.
    pub(super) fn assert_garbage_refused(&mut self, garbage: &[u8]) {
        self.feed(garbage);
        assert!(self.closed, "{garbage:?}");
        assert!(
            matches!(self.error, Some(TlsError::Protocol(_))),
            "{garbage:?}: {:?}",
            self.error
        );
        assert!(
            self.wire.is_empty() || self.wire[0] == 0x15,
            "{:?}",
            self.wire
        );
        assert!(self.wire.len() < 64);
        assert!(self.received.is_empty());
        self.feed(b"more");
        assert_eq!(self.tls_in_len, 0);
    }

    /// Pumps until nothing moves, sending the output buffer whenever it is asked to.
    pub(super) fn turn(&mut self) {
        for _ in 0..100_000 {
            let room = self.plain_room.min(self.plain_in.len());
            let p = self.tls.pump(Buffers {
                tls_in: &mut self.tls_in[..self.tls_in_len],
                plain_out: &self.plain_out,
                plain_in: &mut self.plain_in[..room],
                tls_out: &mut self.tls_out[self.tls_out_len..],
            });
            assert!(p.tls_consumed <= self.tls_in_len);
            self.tls_in.copy_within(p.tls_consumed..self.tls_in_len, 0);
            self.tls_in_len -= p.tls_consumed;
            self.plain_out.drain(..p.plain_consumed);
            self.received
                .extend_from_slice(&self.plain_in[..p.plaintext_len]);
            self.tls_out_len += p.tls_out_len;
            self.handshake_done = p.handshake_done;
            self.peer_closed = p.peer_closed;
            self.closed = p.closed;
            if p.error.is_some() {
                self.error = p.error.clone();
            }
            let sent = self.flush();
            let moved = p.tls_consumed + p.plain_consumed + p.plaintext_len + p.tls_out_len > 0;
            // Held plaintext moves whenever there is room, so `moved` covers it.
            let again = moved || (p.needs_output_room && sent && !p.closed);
            if !again {
                return;
            }
        }
        panic!("pump never settled");
    }

    /// The reactor writes the output buffer to the socket: all of it, or with a slow socket
    /// only a part, the rest waiting in the buffer for the next turn.
    pub(super) fn flush(&mut self) -> bool {
        let n = match &mut self.slow_socket {
            Some(rng) => (1 + rng.below(3000)).min(self.tls_out_len),
            None => self.tls_out_len,
        };
        self.wire.extend_from_slice(&self.tls_out[..n]);
        self.sent.extend_from_slice(&self.tls_out[..n]);
        self.tls_out.copy_within(n..self.tls_out_len, 0);
        self.tls_out_len -= n;
        n > 0
    }

    /// Largest record (header included) this side sent.
    pub(super) fn largest_record(&self) -> usize {
        let (mut at, mut largest) = (0, 0);
        while at + 5 <= self.sent.len() {
            let len = 5 + usize::from(u16::from_be_bytes([self.sent[at + 3], self.sent[at + 4]]));
            largest = largest.max(len);
            at += len;
        }
        largest
    }
}

/// Moves bytes both ways until neither side has anything left to say. `split` picks how many
/// client bytes the server gets per read.
fn exchange(
    c: &mut ClientConnection,
    s: &mut Server,
    got: &mut Vec<u8>,
    split: &mut dyn FnMut() -> usize,
) {
    let mut to_server: Vec<u8> = Vec::new();
    for _ in 0..1_000_000 {
        let mut moved = false;
        while c.wants_write() {
            c.write_tls(&mut to_server).expect("client write_tls");
        }
        while !to_server.is_empty() && !s.closed {
            let want = split().clamp(1, to_server.len());
            let n = s.feed(&to_server[..want]);
            if n == 0 {
                break;
            }
            to_server.drain(..n);
            moved = true;
        }
        s.turn();
        let mut wire = std::mem::take(&mut s.wire);
        let mut at = 0;
        while at < wire.len() {
            let n = c.read_tls(&mut &wire[at..]).expect("client read_tls");
            at += n;
            if let Err(e) = c.process_new_packets() {
                panic!("client: {e}");
            }
            moved = true;
            drain_client(c, got);
        }
        wire.clear();
        drain_client(c, got);
        if !moved && !c.wants_write() && (to_server.is_empty() || s.closed) {
            return;
        }
    }
    panic!("exchange never settled");
}

fn drain_client(c: &mut ClientConnection, got: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match c.reader().read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("client read: {e}"),
        }
    }
}

pub(super) fn all_at_once() -> impl FnMut() -> usize {
    || usize::MAX
}

/// Handshake, a command and a reply, then close_notify from the server.
fn dialog(
    cert: &str,
    key: &str,
    root: &str,
    versions: &[&'static SupportedProtocolVersion],
    split: &mut dyn FnMut() -> usize,
) -> (Server, ClientConnection) {
    let id = identity(cert, key);
    let s = Server::new(&id);
    dialog_on(s, root, versions, split)
}

fn dialog_on(
    mut s: Server,
    root: &str,
    versions: &[&'static SupportedProtocolVersion],
    split: &mut dyn FnMut() -> usize,
) -> (Server, ClientConnection) {
    let mut c = client(client_config(root, versions));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, split);
    assert!(s.handshake_done, "server finished the handshake");
    assert!(!c.is_handshaking(), "client finished the handshake");
    assert_eq!(s.error, None);

    c.writer()
        .write_all(b"EHLO client.example\r\n")
        .expect("client write");
    exchange(&mut c, &mut s, &mut got, split);
    assert_eq!(s.received, b"EHLO client.example\r\n");

    s.plain_out.extend_from_slice(b"250 mail.example.test\r\n");
    exchange(&mut c, &mut s, &mut got, split);
    assert_eq!(got, b"250 mail.example.test\r\n");
    assert!(s.plain_out.is_empty());

    s.tls.close_notify();
    exchange(&mut c, &mut s, &mut got, split);
    assert!(s.closed, "close_notify ends the connection");
    assert_eq!(s.error, None);
    // The client saw a clean close: its reader reports end of stream, not an error.
    let mut buf = [0u8; 16];
    assert_eq!(c.reader().read(&mut buf).expect("clean close"), 0);
    (s, c)
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[test]
fn tls13_ecdsa_handshake_data_both_ways_and_close_notify() {
    let (s, _) = dialog(
        "ecdsa-cert.pem",
        "ecdsa-key.pem",
        "ecdsa-cert.pem",
        BOTH,
        &mut all_at_once(),
    );
    let (version, suite) = s.tls.negotiated().expect("negotiated");
    assert_eq!(version, "TLSv1.3");
    assert!(
        suite.starts_with("TLS_AES_") || suite.starts_with("TLS_CHACHA20"),
        "{suite}"
    );
}

#[test]
fn tls13_rsa_2048_handshake() {
    let (s, _) = dialog(
        "rsa-cert.pem",
        "rsa-key.pem",
        "rsa-cert.pem",
        BOTH,
        &mut all_at_once(),
    );
    assert_eq!(s.tls.negotiated().map(|n| n.0), Some("TLSv1.3"));
}

#[test]
fn tls12_only_client_works_with_ecdsa_and_rsa() {
    let (s, _) = dialog(
        "ecdsa-cert.pem",
        "ecdsa-key.pem",
        "ecdsa-cert.pem",
        TLS12,
        &mut all_at_once(),
    );
    let (version, suite) = s.tls.negotiated().expect("negotiated");
    assert_eq!(version, "TLSv1.2");
    assert!(suite.starts_with("TLS_ECDHE_ECDSA_WITH_"), "{suite}");
    let (s, _) = dialog(
        "rsa-cert.pem",
        "rsa-key.pem",
        "rsa-cert.pem",
        TLS12,
        &mut all_at_once(),
    );
    let (version, suite) = s.tls.negotiated().expect("negotiated");
    assert_eq!(version, "TLSv1.2");
    assert!(suite.starts_with("TLS_ECDHE_RSA_WITH_"), "{suite}");
}

#[test]
fn chain_file_with_intermediate_is_served_whole() {
    // A leaf and the CA that signed it in one file; the client trusts only the CA.
    let id = identity("chain.pem", "chain-key.pem");
    let mut s = Server::new(&id);
    let mut c = client(client_config("ca-cert.pem", BOTH));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    assert!(s.handshake_done && !c.is_handshaking());
    let sent = c.peer_certificates().expect("server certificates");
    assert_eq!(sent.len(), 2, "leaf and CA from the chain file");
}

#[test]
fn client_bytes_one_at_a_time() {
    for versions in [BOTH, TLS12] {
        dialog(
            "ecdsa-cert.pem",
            "ecdsa-key.pem",
            "ecdsa-cert.pem",
            versions,
            &mut || 1,
        );
    }
}

#[test]
fn client_bytes_split_at_random_boundaries() {
    for seed in 1..=20u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let versions = if seed % 2 == 0 { BOTH } else { TLS12 };
        dialog(
            "ecdsa-cert.pem",
            "ecdsa-key.pem",
            "ecdsa-cert.pem",
            versions,
            &mut || 1 + rng.below(700),
        );
    }
}

/// A socket that takes a random part of the output per write: the transport waits for
/// room (a whole record during the handshake) and never loses or reorders a record.
#[test]
fn slow_socket_partial_writes() {
    let id = identity("rsa-cert.pem", "rsa-key.pem");
    for seed in 1..=10u64 {
        let mut s = Server::new(&id);
        s.slow_socket = Some(Rng(0x0123_4567_89ab_cdef ^ seed));
        let versions = if seed % 2 == 0 { BOTH } else { TLS12 };
        let mut rng = Rng(seed);
        let (mut s, mut c) = dialog_on(s, "rsa-cert.pem", versions, &mut || 1 + rng.below(500));
        assert_eq!(s.error, None);
        // After close: nothing more from the server.
        let mut got = Vec::new();
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        assert!(got.is_empty());
    }
    let mut s = Server::new(&id);
    s.slow_socket = Some(Rng(77));
    let mut c = client(client_config("rsa-cert.pem", BOTH));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 13 % 253) as u8).collect();
    s.plain_out.extend_from_slice(&big);
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    assert!(got == big, "stream intact through partial writes");
    assert!(s.largest_record() <= TLS_RECORD_OUT_MAX);
}

/// A chain of 40 certificates (about 20 KiB) makes handshake records of full size: each
/// must wait for a whole record of output room, even when the socket drains slowly.
#[test]
fn big_certificate_chain_through_a_slow_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pem = std::fs::read(fixture("chain.pem")).expect("chain");
    let ca = std::fs::read(fixture("ca-cert.pem")).expect("ca");
    for _ in 0..40 {
        pem.extend_from_slice(&ca);
    }
    let big = dir.path().join("big-chain.pem");
    std::fs::write(&big, &pem).expect("write");
    let id = TlsIdentity::load(&big, &fixture("chain-key.pem")).expect("big chain loads");
    for seed in 1..=6u64 {
        let mut s = Server::new(&id);
        s.slow_socket = Some(Rng(0xfeed_f00d ^ seed));
        let versions = if seed % 2 == 0 { BOTH } else { TLS12 };
        let (s, c) = dialog_on(s, "ca-cert.pem", versions, &mut || usize::MAX);
        assert_eq!(c.peer_certificates().map(|c| c.len()), Some(42));
        assert!(
            s.largest_record() > TLS_RECORD_OUT_MAX - 100,
            "{}",
            s.largest_record()
        );
        assert!(s.largest_record() <= TLS_RECORD_OUT_MAX);
    }
}

/// 100 KiB each way: server to client through the 16 KiB output buffer (records of
/// `TLS_RECORD_OUT_MAX`), client to server into a session that takes only a few bytes per call, so decrypted
/// records wait in the transport.
#[test]
fn stream_100k_each_way_through_fixed_buffers() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    for versions in [BOTH, TLS12] {
        let mut s = Server::new(&id);
        let mut c = client(client_config("ecdsa-cert.pem", versions));
        let mut got = Vec::new();
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());

        let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        s.plain_out.extend_from_slice(&big);
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        assert_eq!(got.len(), big.len());
        assert!(got == big, "server-to-client stream intact");
        let largest = s.largest_record();
        assert!(
            largest <= TLS_RECORD_OUT_MAX,
            "record {largest} > {TLS_RECORD_OUT_MAX}"
        );
        assert!(
            largest > TLS_RECORD_OUT_MAX - 100,
            "records are full size: {largest}"
        );

        s.plain_room = 1000;
        // The client's own send buffer is bounded: write a piece, let it drain, repeat.
        for piece in big.chunks(16 * 1024) {
            c.writer().write_all(piece).expect("client write");
            exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        }
        assert!(s.received == big, "client-to-server stream intact");
        assert!(s.tls.wants_read(), "nothing held once delivered");
    }
}

/// A TLS 1.3 client asks for a key update: the server's own KeyUpdate goes out ahead of its
/// next data, in a buffer that a full data record alone would fill.
#[test]
fn key_update_from_the_client() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut s = Server::new(&id);
    let mut c = client(client_config("ecdsa-cert.pem", BOTH));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    for round in 0..3u8 {
        c.refresh_traffic_keys().expect("key update");
        c.writer()
            .write_all(&[b'a' + round; 100])
            .expect("client write");
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        let big = vec![round; 40_000];
        s.plain_out.extend_from_slice(&big);
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        assert!(got == big, "round {round}");
        got.clear();
    }
    assert_eq!(s.received.len(), 300);
    assert_eq!(s.error, None);
    assert!(s.largest_record() <= TLS_RECORD_OUT_MAX);
}

#[test]
fn session_output_waits_for_the_handshake() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut s = Server::new(&id);
    // A reply queued before any ClientHello: nothing can be sent in plaintext.
    s.plain_out.extend_from_slice(b"+OK ready\r\n");
    s.turn();
    assert!(s.wire.is_empty());
    assert_eq!(s.plain_out, b"+OK ready\r\n");
    let mut c = client(client_config("ecdsa-cert.pem", BOTH));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    assert_eq!(got, b"+OK ready\r\n");
}

#[test]
fn client_close_notify_is_end_of_input() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut s = Server::new(&id);
    let mut c = client(client_config("ecdsa-cert.pem", BOTH));
    let mut got = Vec::new();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    c.writer().write_all(b"QUIT\r\n").expect("client write");
    c.send_close_notify();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    assert_eq!(s.received, b"QUIT\r\n");
    assert!(s.peer_closed);
    assert!(!s.tls.wants_read());
    // The server may still answer, then closes.
    s.plain_out.extend_from_slice(b"+OK bye\r\n");
    s.tls.close_notify();
    exchange(&mut c, &mut s, &mut got, &mut all_at_once());
    assert_eq!(got, b"+OK bye\r\n");
    assert!(s.closed);
    assert_eq!(s.error, None);
}

#[test]
fn close_during_handshake_closes_at_once() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut s = Server::new(&id);
    s.tls.close_notify();
    s.turn();
    assert!(s.closed);
    assert!(s.wire.is_empty(), "nothing to send before keys exist");
}

#[test]
fn no_session_resumption_and_no_alpn() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut config = (*client_config("ecdsa-cert.pem", BOTH)).clone();
    config.alpn_protocols = vec![b"smtp".to_vec()];
    let config = Arc::new(config);
    for round in 0..2 {
        let mut s = Server::new(&id);
        let mut c = client(config.clone());
        let mut got = Vec::new();
        exchange(&mut c, &mut s, &mut got, &mut all_at_once());
        assert!(s.handshake_done, "round {round}");
        assert_eq!(
            c.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "round {round}"
        );
        assert_eq!(c.alpn_protocol(), None);
    }
}

/// What a plaintext client or a scanner sends to an implicit-TLS port.
#[test]
fn garbage_instead_of_client_hello_is_an_error() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    for garbage in [
        &b"EHLO client.example\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x00\x00\x00\x00\x00",
        b"\x17\x03\x03\x00\x10AAAAAAAAAAAAAAAA",
    ] {
        Server::new(&id).assert_garbage_refused(garbage);
    }
}

#[test]
fn random_garbage_never_panics_or_grows() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    for seed in 1..=200u64 {
        let mut rng = Rng(0xdead_beef_cafe_f00d ^ seed.wrapping_mul(0x9e37_79b9));
        let mut s = Server::new(&id);
        // Half the cases start like a handshake record so rustls looks further in.
        let mut bytes: Vec<u8> = (0..4096).map(|_| rng.below(256) as u8).collect();
        if seed % 2 == 0 {
            bytes[..3].copy_from_slice(&[0x16, 0x03, 0x01]);
        }
        s.feed_all(&bytes, &mut || 1 + rng.below(300));
        assert!(s.tls_in_len <= TLS_IN_BUF);
        assert!(s.received.is_empty());
        assert!(!s.handshake_done);
    }
}

/// A ClientHello that claims 60,000 bytes spread over full records: rustls joins it inside
/// the input buffer, which fills; the transport fails rather than waiting for a read that can
/// never come.
#[test]
fn handshake_message_larger_than_the_input_buffer_fails() {
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    let mut s = Server::new(&id);
    let mut bytes = Vec::new();
    let mut hello = vec![0x01, 0x00, 0xea, 0x60]; // ClientHello, 60,000 bytes
    hello.resize(60_004, 0x41);
    for chunk in hello.chunks(16_384) {
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        bytes.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        bytes.extend_from_slice(chunk);
    }
    s.feed_all(&bytes, &mut all_at_once());
    assert!(s.closed, "closed, not stuck");
    assert_eq!(s.error, Some(TlsError::TooLarge));
    assert!(s.tls_in_len <= TLS_IN_BUF);
}

#[test]
fn session_size_after_handshake() {
    let (s, _) = dialog(
        "ecdsa-cert.pem",
        "ecdsa-key.pem",
        "ecdsa-cert.pem",
        BOTH,
        &mut all_at_once(),
    );
    let size = std::mem::size_of::<TlsServerSession>();
    println!("size_of::<TlsServerSession>() = {size} bytes");
    assert!(s.closed);
    // The budget for a whole idle TLS connection; the heap part is measured by
    // tests/tls_memory.rs.
    assert!(size <= 6 * 1024, "{size}");
}

#[test]
fn identity_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, b"").expect("write");
    let missing = dir.path().join("missing.pem");
    let cert = fixture("ecdsa-cert.pem");
    let key = fixture("ecdsa-key.pem");
    let load = |c: &Path, k: &Path| match TlsIdentity::load(c, k) {
        Ok(_) => panic!("{} / {} loaded", c.display(), k.display()),
        Err(e) => e,
    };

    let e = load(&missing, &key);
    assert_eq!(
        e,
        format!("certificate file {} does not exist", missing.display())
    );
    let e = load(&cert, &missing);
    assert_eq!(e, format!("key file {} does not exist", missing.display()));
    let e = load(&empty, &key);
    assert_eq!(
        e,
        format!(
            "certificate file {} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" section)",
            empty.display()
        )
    );
    let e = load(&cert, &empty);
    assert_eq!(
        e,
        format!(
            "key file {} holds no private key (no \"-----BEGIN PRIVATE KEY-----\" section)",
            empty.display()
        )
    );
    // A key file that holds only a certificate: the usual swapped-paths mistake.
    let e = load(&cert, &cert);
    assert!(
        e.starts_with(&format!("key file {} holds no private key", cert.display())),
        "{e}"
    );
    let e = load(&key, &key);
    assert!(
        e.starts_with(&format!(
            "certificate file {} holds no certificate",
            key.display()
        )),
        "{e}"
    );

    let other = fixture("other-key.pem");
    let e = load(&cert, &other);
    assert_eq!(
        e,
        format!(
            "key file {} does not match the certificate in {}",
            other.display(),
            cert.display()
        )
    );
    // An RSA key against an ECDSA certificate: also a mismatch, not a crash.
    let rsa_key = fixture("rsa-key.pem");
    let e = load(&cert, &rsa_key);
    assert!(e.contains("does not match"), "{e}");

    let e = load(dir.path(), &key);
    assert!(
        e.starts_with(&format!(
            "certificate file {} cannot be read",
            dir.path().display()
        )),
        "{e}"
    );

    let broken = dir.path().join("broken.pem");
    std::fs::write(&broken, b"-----BEGIN CERTIFICATE-----\nMIIB\n").expect("write");
    let e = load(&broken, &key);
    assert!(
        e.starts_with(&format!(
            "certificate file {} is not valid PEM",
            broken.display()
        )),
        "{e}"
    );

    let huge = dir.path().join("huge.pem");
    std::fs::write(&huge, vec![b'#'; 2 * 1024 * 1024]).expect("write");
    let e = load(&huge, &key);
    assert!(e.contains("larger than"), "{e}");
}

#[test]
fn leaf_not_after_is_read() {
    // GeneralizedTime (years from 2050 on): notAfter=Nov 10 18:13:11 2126 GMT.
    let id = identity("ecdsa-cert.pem", "ecdsa-key.pem");
    assert_eq!(
        id.not_after,
        Some(UNIX_EPOCH + Duration::from_secs(4_950_007_991))
    );
    // UTCTime, the leaf of a chain file: notAfter=Dec  1 18:10:47 2036 GMT.
    let id = identity("chain.pem", "chain-key.pem");
    assert_eq!(
        id.not_after,
        Some(UNIX_EPOCH + Duration::from_secs(2_111_767_847))
    );
    // Truncated or odd DER gives None, never a panic.
    let der = CertificateDer::from_pem_file(fixture("rsa-cert.pem")).expect("pem");
    for len in 0..der.as_ref().len() {
        let _ = identity::leaf_not_after(&der.as_ref()[..len]);
    }
    assert!(identity::leaf_not_after(der.as_ref()).is_some());
}

/// The server's whole first flight (ServerHello through Finished) leaves in one write: one
/// segment, not one per record.
#[test]
fn server_flight_leaves_in_one_write() {
    for (cert, key, versions) in [
        ("ecdsa-cert.pem", "ecdsa-key.pem", BOTH),
        ("ecdsa-cert.pem", "ecdsa-key.pem", TLS12),
        ("rsa-cert.pem", "rsa-key.pem", BOTH),
        ("chain.pem", "chain-key.pem", BOTH),
    ] {
        let id = identity(cert, key);
        let mut s = Server::new(&id);
        let mut c = client(client_config(cert, versions));
        let mut hello = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut hello).expect("client hello");
        }
        s.tls_in[..hello.len()].copy_from_slice(&hello);
        s.tls_in_len = hello.len();
        let mut writes = Vec::new();
        loop {
            let p = s.tls.pump(Buffers {
                tls_in: &mut s.tls_in[..s.tls_in_len],
                plain_out: &[],
                plain_in: &mut s.plain_in,
                tls_out: &mut s.tls_out,
            });
            s.tls_in.copy_within(p.tls_consumed..s.tls_in_len, 0);
            s.tls_in_len -= p.tls_consumed;
            if p.tls_out_len == 0 {
                break;
            }
            writes.push(p.tls_out_len);
        }
        println!(
            "{cert}, {} versions: first flight {writes:?}",
            versions.len()
        );
        assert_eq!(writes.len(), 1, "{cert}: {writes:?}");
    }
}
