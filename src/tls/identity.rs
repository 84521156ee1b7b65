//! The server's TLS identity: a certificate chain and its private key, read from PEM files and
//! turned into the one `rustls::ServerConfig` every TLS connection shares.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::NoServerSessionStorage;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, ServerConfig};

use crate::limits::{TLS_MAX_FRAGMENT, TLS_PEM_FILE_MAX};

/// A loaded certificate and key, ready for connections.
pub struct TlsIdentity {
    /// Shared by every connection made while this identity is current; a reload builds a new
    /// one and open connections keep theirs.
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's notAfter, for the "expires within 14 days" warning; `None` if
    /// the certificate's validity field could not be read (rustls accepted it anyway).
    pub not_after: Option<SystemTime>,
}

impl TlsIdentity {
    /// Reads `cert_path` (the leaf certificate first, then any intermediates) and `key_path`
    /// (PKCS#8, PKCS#1 or SEC1), checks that the key belongs to the leaf certificate and builds
    /// the server configuration. An error is one sentence naming the file at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<TlsIdentity, String> {
        let chain = read_certificates(cert_path, "certificate")?;

        let mut key_pem = read_pem_file(key_path, "key")?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem);
        // The PEM text of a private key need not outlive its parsing.
        key_pem.fill(0);
        let key = match key {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => {
                return Err(format!(
                    "key file {} holds no private key (no \"-----BEGIN PRIVATE KEY-----\" section)",
                    key_path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "key file {} is not valid PEM: {e}",
                    key_path.display()
                ));
            }
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            format!(
                "key file {} holds no key postling can use ({e}); RSA, ECDSA P-256/P-384 and Ed25519 keys work",
                key_path.display()
            )
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        match certified.keys_match() {
            // ring always knows a key's public half, so `Unknown` does not happen with it;
            // rustls itself accepts such a key, and so do we.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                return Err(format!(
                    "key file {} does not match the certificate in {}",
                    key_path.display(),
                    cert_path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "certificate file {} does not start with a usable X.509 certificate ({e})",
                    cert_path.display()
                ));
            }
        }
        let not_after = certified
            .cert
            .first()
            .and_then(|leaf| leaf_not_after(leaf.as_ref()));

        let mut config = ServerConfig::builder_with_provider(provider)
            // TLS 1.3 and 1.2 only: rustls implements nothing older.
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS set-up failed: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
        // No resumption: a mail client makes one connection per poll or per message, a full
        // handshake costs about a millisecond, and a ticket key or a session cache is state to
        // rotate, bound and protect.
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        // An outgoing record fits half the output buffer (`TLS_RECORD_OUT_MAX`).
        config.max_fragment_size = Some(TLS_MAX_FRAGMENT);
        // SMTP and POP3 have no ALPN ids in use; a client offering ALPN still connects.
        config.alpn_protocols = Vec::new();
        Ok(TlsIdentity {
            config: Arc::new(config),
            not_after,
        })
    }
}

/// The certificates of a PEM file (`what`: "certificate", "CA", for the error), at least one.
pub(super) fn read_certificates(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem_file(path, what)?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        match item {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                return Err(format!(
                    "{what} file {} is not valid PEM: {e}",
                    path.display()
                ));
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{what} file {} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" section)",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads a whole PEM file of at most `TLS_PEM_FILE_MAX` bytes.
fn read_pem_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let file = File::open(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => format!("{what} file {} does not exist", path.display()),
        _ => format!("{what} file {} cannot be opened: {e}", path.display()),
    })?;
    let mut bytes = Vec::new();
    file.take(TLS_PEM_FILE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{what} file {} cannot be read: {e}", path.display()))?;
    if bytes.len() as u64 > TLS_PEM_FILE_MAX {
        return Err(format!(
            "{what} file {} is larger than {TLS_PEM_FILE_MAX} bytes, too large for a PEM file",
            path.display()
        ));
    }
    Ok(bytes)
}

/// notAfter of a DER certificate (RFC 5280 §4.1): Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, ... }, ... }. rustls and webpki do not expose it, and this walk is
/// a few lines against an X.509 parser crate.
pub(crate) fn leaf_not_after(cert: &[u8]) -> Option<SystemTime> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = der_next(cert)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_next(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der_next(tbs)?;
    if tag == 0xa0 {
        // Explicit version; the serial number follows.
        rest = der_next(rest)?.2;
    }
    let rest = der_next(rest)?.2; // signature algorithm
    let rest = der_next(rest)?.2; // issuer
    let (SEQUENCE, validity, _) = der_next(rest)? else {
        return None;
    };
    let after_not_before = der_next(validity)?.2;
    let (tag, time, _) = der_next(after_not_before)?;
    der_time(tag, time)
}

/// One DER tag-length-value: (tag, contents, what follows).
fn der_next(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| len << 8 | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ` (RFC 5280 §4.1.2.5).
fn der_time(tag: u8, t: &[u8]) -> Option<SystemTime> {
    let num = |d: &[u8]| -> Option<i64> {
        d.iter().try_fold(0i64, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (year, rest) = match (tag, t.len()) {
        // RFC 5280 §4.1.2.5.1: YY of 50 or more is 19YY.
        (0x17, 13) => {
            let yy = num(&t[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &t[2..])
        }
        (0x18, 15) => (num(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest[10] != b'Z' {
        return None;
    }
    let (month, day) = (num(&rest[0..2])?, num(&rest[2..4])?);
    let (hour, min, sec) = (num(&rest[4..6])?, num(&rest[6..8])?, num(&rest[8..10])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm; the inverse
/// of `date::civil_from_days`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
