//! The client side of TLS, for outbound SMTP (STARTTLS or implicit TLS to a smarthost or an
//! MX): the two `rustls::ClientConfig`s a client session is made from. The session itself is
//! `TlsClientSession` (session.rs), driven exactly like the server's.
//!
//! - `client_config_verified`: the server's certificate must chain to a CA of the given
//!   bundle (or the system's) and carry the name the session was made with (a DNS name, or an
//!   IP address in an IP subjectAltName), and be within its validity period.
//! - `client_config_unverified`: opportunistic TLS to an MX (RFC 7435): any certificate is
//!   accepted, but the handshake's signatures are still checked against the certificate's
//!   key, so the session is at least bound to the key the server presented.
//!
//! Neither sends a client certificate; both speak TLS 1.3 and 1.2 only and resume no sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::identity::read_certificates;
use crate::limits::{SYSTEM_CA_BUNDLES, TLS_MAX_FRAGMENT};

/// A configuration that verifies the server: its certificate chains to a CA of `ca_file` (a
/// PEM bundle) or, when `None`, of the system's bundle (the first of `SYSTEM_CA_BUNDLES` that
/// exists), and names the server the session was made for. An error is one sentence naming
/// the file at fault.
pub fn client_config_verified(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let path = match ca_file {
        Some(path) => path.to_path_buf(),
        None => first_existing(SYSTEM_CA_BUNDLES).ok_or_else(|| {
            format!(
                "no system CA bundle found (looked for {})",
                SYSTEM_CA_BUNDLES.join(", ")
            )
        })?,
    };
    let certs = read_certificates(&path, "CA")?;
    let mut roots = RootCertStore::empty();
    // A system bundle may hold a certificate webpki cannot parse; the others still serve.
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "CA file {} holds no certificate postling can use ({ignored} could not be parsed)",
            path.display()
        ));
    }
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    Ok(config(provider, verifier))
}

/// A configuration for opportunistic TLS (RFC 7435): encrypts, accepts any certificate
/// (self-signed, expired, for another name), checks only that the server holds its key.
pub fn client_config_unverified() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate {
        provider: provider.clone(),
    });
    config(provider, verifier)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        // ring's default provider has suites and key exchanges for both versions; nothing a
        // peer or the configuration controls can make this fail.
        .expect("the ring provider supports TLS 1.3 and 1.2")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // No resumption, as on the server side: a session cache is state to bound, and a full
    // handshake costs about a millisecond per outbound connection.
    config.resumption = Resumption::disabled();
    // An outgoing record fits half the output buffer (`TLS_RECORD_OUT_MAX`).
    config.max_fragment_size = Some(TLS_MAX_FRAGMENT);
    Arc::new(config)
}

/// The first of `paths` that exists.
pub(super) fn first_existing(paths: &[&str]) -> Option<PathBuf> {
    paths.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Accepts any certificate; verifies the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl AnyCertificate {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}
