//! Memory of one idle TLS connection after the handshake (issue #12 budget: 6 KiB with
//! rustls's state). A counting global allocator sees every heap byte; only the changes made
//! inside the server's calls are charged to the server, so the client's memory (same thread,
//! same process) does not count. Its own test binary: no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use postling::limits::{IN_BUF, OUT_BUF, TLS_IN_BUF};
use postling::tls::{Buffers, TlsIdentity, TlsServerSession};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tls")
        .join(name)
}

/// Heap bytes the server's calls kept, summed over the connection's life so far.
struct Charged(isize);
impl Charged {
    fn call<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let before = LIVE.load(Ordering::Relaxed);
        let out = f();
        self.0 += LIVE.load(Ordering::Relaxed) - before;
        out
    }
}

fn measure(cert: &str, key: &str, tls12: bool) -> (usize, isize) {
    let id = TlsIdentity::load(&fixture(cert), &fixture(key)).expect("identity");
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture(cert)).expect("root") {
        roots.add(c.expect("pem")).expect("root");
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from("mail.example.test").expect("name");
    let mut client = ClientConnection::new(Arc::new(config), name).expect("client");

    // The reactor's pooled buffers: not part of an idle connection.
    let mut tls_in = vec![0u8; TLS_IN_BUF];
    let mut tls_in_len = 0;
    let mut plain_in = vec![0u8; IN_BUF];
    let mut tls_out = vec![0u8; OUT_BUF];
    let mut plain_out: Vec<u8> = Vec::new();
    let mut received = Vec::new();

    let mut charged = Charged(0);
    let mut server = charged.call(|| TlsServerSession::new(id.config.clone()).expect("session"));
    let mut sent_reply = false;
    for _ in 0..1000 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("write_tls");
        }
        let mut at = 0;
        let mut to_client = Vec::new();
        loop {
            let n = (to_server.len() - at).min(TLS_IN_BUF - tls_in_len);
            tls_in[tls_in_len..tls_in_len + n].copy_from_slice(&to_server[at..at + n]);
            tls_in_len += n;
            at += n;
            let p = charged.call(|| {
                server.pump(Buffers {
                    tls_in: &mut tls_in[..tls_in_len],
                    plain_out: &plain_out,
                    plain_in: &mut plain_in,
                    tls_out: &mut tls_out,
                })
            });
            tls_in.copy_within(p.tls_consumed..tls_in_len, 0);
            tls_in_len -= p.tls_consumed;
            plain_out.drain(..p.plain_consumed);
            received.extend_from_slice(&plain_in[..p.plaintext_len]);
            to_client.extend_from_slice(&tls_out[..p.tls_out_len]);
            let moved = p.tls_consumed + p.plain_consumed + p.plaintext_len + p.tls_out_len;
            if moved == 0 && at == to_server.len() {
                break;
            }
        }
        let mut at = 0;
        while at < to_client.len() {
            at += client.read_tls(&mut &to_client[at..]).expect("read_tls");
            client.process_new_packets().expect("client");
        }
        if !client.is_handshaking() && !sent_reply {
            // One command and one reply, as an idle connection has behind it.
            client.writer().write_all(b"NOOP\r\n").expect("write");
            plain_out.extend_from_slice(b"250 2.0.0 OK\r\n");
            sent_reply = true;
            continue;
        }
        if sent_reply && received == b"NOOP\r\n" && plain_out.is_empty() && !client.wants_write() {
            break;
        }
    }
    assert!(server.handshake_done());
    assert_eq!(received, b"NOOP\r\n");
    (std::mem::size_of::<TlsServerSession>(), charged.0)
}

#[test]
fn idle_tls_connection_memory() {
    for (cert, key, tls12) in [
        ("ecdsa-cert.pem", "ecdsa-key.pem", false),
        ("ecdsa-cert.pem", "ecdsa-key.pem", true),
        ("rsa-cert.pem", "rsa-key.pem", false),
        ("rsa-cert.pem", "rsa-key.pem", true),
    ] {
        let (inline, heap) = measure(cert, key, tls12);
        let total = inline as isize + heap;
        println!(
            "idle TLS connection ({cert}, {}): {inline} bytes inline + {heap} bytes heap = {total} bytes",
            if tls12 { "TLS 1.2" } else { "TLS 1.3" }
        );
        assert!(total <= 6 * 1024, "{total} bytes > 6 KiB");
    }
}
