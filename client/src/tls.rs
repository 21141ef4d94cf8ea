//! Whom the client trusts for QUIC and `wss://`: [`ServerTrust`].
//!
//! The default verifies the edge's certificate against the operating system's root
//! certificates and the host name the client connects to, as a browser does.
//! Pinning one certificate (the self-signed development certificate an edge serves
//! at `GET /v1/cert`), adding private roots, fetching the pin from the edge over
//! plain HTTP, and accepting anything are explicit choices. rustls always runs on
//! the ring provider, passed explicitly, so the process-wide default provider
//! (which another crate may set) does not matter.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;

use crate::error::ClientError;

/// How the client decides to trust an edge's TLS certificate (QUIC, `wss://`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ServerTrust {
    /// The operating system's root certificates; the certificate must be valid for
    /// the host name connected to. Default.
    #[default]
    SystemRoots,
    /// These root certificates (DER) besides the system's: a private CA, or an
    /// edge's own self-signed certificate used as a root. The host name must match.
    AddedRoots(Vec<Vec<u8>>),
    /// Exactly this certificate (DER), whatever its issuer and names: pinning, e.g.
    /// the edge's development certificate obtained over a channel you trust.
    Pinned(Vec<u8>),
    /// Development only: before every QUIC connect, fetch the edge's certificate
    /// from its `GET /v1/cert` and pin it. That request is plain HTTP unless the
    /// edge URL is `https://`, so anyone on the path can substitute a certificate.
    FetchFromEdge,
    /// Development only: any certificate (handshake signatures are still checked).
    InsecureAcceptAny,
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `trust`. `pinned` (a certificate fetched
/// for [`ServerTrust::FetchFromEdge`]) is used as a pin instead.
pub fn client_config(
    trust: &ServerTrust,
    pinned: Option<&[u8]>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, ClientError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    // A pin must at least be a certificate (parsed as a trust anchor would be).
    let check = |der: &[u8]| {
        rustls::RootCertStore::empty()
            .add(CertificateDer::from(der.to_vec()))
            .map_err(|e| ClientError::Tls(format!("pinned certificate: {e}")))
    };
    if let Some(der) = pinned.or(match trust {
        ServerTrust::Pinned(der) => Some(der.as_slice()),
        _ => None,
    }) {
        check(der)?;
    }
    let pin = |der: &[u8]| {
        Arc::new(CustomCert {
            pinned: Some(der.to_vec()),
            provider: provider.clone(),
        })
    };
    let builder = match (trust, pinned) {
        (_, Some(der)) => builder
            .dangerous()
            .with_custom_certificate_verifier(pin(der)),
        (ServerTrust::Pinned(der), None) => builder
            .dangerous()
            .with_custom_certificate_verifier(pin(der)),
        (ServerTrust::FetchFromEdge, None) => {
            return Err(ClientError::Tls(
                "ServerTrust::FetchFromEdge needs the fetched certificate".into(),
            ));
        }
        (ServerTrust::InsecureAcceptAny, None) => {
            warn!("TLS client accepts any server certificate: development only");
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CustomCert {
                    pinned: None,
                    provider,
                }))
        }
        (ServerTrust::SystemRoots, None) => builder.with_root_certificates(roots(&[])?),
        (ServerTrust::AddedRoots(added), None) => builder.with_root_certificates(roots(added)?),
    };
    let mut tls = builder.with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tls)
}

/// The system's roots plus `added`. Unreadable system certificates are skipped (with
/// a warning); no usable root at all is an error, since nothing could verify.
fn roots(added: &[Vec<u8>]) -> Result<rustls::RootCertStore, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        warn!(error = %e, "cannot read a system root certificate");
    }
    let (_, ignored) = store.add_parsable_certificates(found.certs);
    if ignored > 0 {
        warn!(ignored, "system root certificates rustls cannot parse");
    }
    for der in added {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| ClientError::Tls(format!("added root certificate: {e}")))?;
    }
    if store.is_empty() {
        return Err(ClientError::Tls(
            "no root certificate to verify the edge with: the system has none readable; \
             add roots (ServerTrust::AddedRoots) or pin the edge's certificate"
                .into(),
        ));
    }
    Ok(store)
}

/// The TLS server name for `host` (a DNS name or an IP address literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, ClientError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| ClientError::Tls(format!("{host:?} is not a valid TLS server name: {e}")))
}

/// Trusts exactly the `pinned` certificate, or (development only, `None`) any
/// certificate; either way the handshake signature must match the certificate.
#[derive(Debug)]
struct CustomCert {
    pinned: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CustomCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(der) if end_entity.as_ref() != der.as_slice() => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
