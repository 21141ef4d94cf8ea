//! The QUIC server certificate: loaded from PEM files, or self-signed at start
//! for development (clients then pin it by the fingerprint served at `/v1/cert`).
//! rustls is always built with the ring provider, explicitly, so the process-wide
//! default provider (which another crate may set to aws-lc-rs) does not matter.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::config::EdgeConfig;
use crate::error::EdgeError;

/// ALPN of the danmaku QUIC protocol.
pub const ALPN: &[u8] = b"danmaku/1";
/// ALPN of the same protocol with batches in the dense layout and zstd
/// dictionary 1 (what `danmaku.v3.pb` is to WebSocket); preferred.
pub const ALPN_DENSE: &[u8] = b"danmaku/2";

pub(crate) struct CertMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl CertMaterial {
    pub fn load_or_generate(config: &EdgeConfig) -> Result<Self, EdgeError> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Self::load(cert, key),
            _ => Self::self_signed(),
        }
    }

    fn load(cert: &Path, key: &Path) -> Result<Self, EdgeError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| EdgeError::Tls(format!("{}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(EdgeError::Tls(format!(
                "{}: no certificate found",
                cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| EdgeError::Tls(format!("{}: {e}", key.display())))?;
        Ok(CertMaterial { chain, key })
    }

    fn self_signed() -> Result<Self, EdgeError> {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .map_err(|e| EdgeError::Tls(e.to_string()))?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(CertMaterial {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key),
        })
    }

    /// DER of the leaf certificate.
    pub fn leaf(&self) -> &[u8] {
        &self.chain[0]
    }

    pub fn server_config(&self) -> Result<quinn::ServerConfig, EdgeError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| EdgeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| EdgeError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN_DENSE.to_vec(), ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| EdgeError::Tls(e.to_string()))?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
    }
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// PEM text of a DER certificate.
pub fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_cert_makes_a_server_config_and_round_trips_as_pem() {
        let m = CertMaterial::self_signed().unwrap();
        m.server_config().unwrap();
        let text = pem(m.leaf());
        let back = CertificateDer::from_pem_slice(text.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), m.leaf());
        assert_eq!(sha256_hex(m.leaf()).len(), 64);
    }
}
