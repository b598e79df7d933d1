//! [`RedisTlsConfig`] → a rustls `ClientConfig` for fred: the trusted roots (a CA file or
//! the system's), the client certificate for mutual TLS, and the opt-in verifier that skips
//! verification. Used only by `client`.
//!
//! Every file is read and checked here, once, when a client is built, so a TLS setup that
//! can never work is a start-up error naming the file, never a limiter that runs degraded
//! for ever. The crypto provider is aws-lc-rs, named explicitly: it is the one the workspace
//! already builds (for reqwest), and naming it keeps `ClientConfig::builder`'s process-wide
//! default out of the picture.

use std::path::Path;
use std::sync::Arc;

use fred::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use fred::rustls::crypto::{
    CryptoProvider, aws_lc_rs, verify_tls12_signature, verify_tls13_signature,
};
use fred::rustls::pki_types::pem::{self, PemObject};
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use fred::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::RedisTlsConfig;
use crate::error::ConfigError;

/// The rustls client config for `tls` (already validated: cert and key come as a pair,
/// skip-verify comes without a CA file).
pub(crate) fn client_config(tls: &RedisTlsConfig) -> Result<ClientConfig, ConfigError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls {
            problem: format!("the crypto provider offers no TLS version: {e}"),
        })?;
    let builder = if tls.insecure_skip_verify {
        tracing::warn!(
            "redis tls: insecure_skip_verify is on, the server's certificate is NOT verified \
             (anyone on the path can impersonate Redis)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerification { provider }))
    } else {
        builder.with_root_certificates(roots(tls)?)
    };
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = certificates("cert_file", cert_file)?;
    let key = private_key(key_file)?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        let problem = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
                "does not match the certificate in cert_file {}",
                cert_file.display()
            ),
            _ => "cannot be used as the client certificate's key".to_owned(),
        };
        file_error("key_file", key_file, problem, Some(Box::new(e)))
    })
}

/// The roots to verify the server with: the CA file's certificates, or else the system's.
fn roots(tls: &RedisTlsConfig) -> Result<RootCertStore, ConfigError> {
    let mut store = RootCertStore::empty();
    if let Some(ca_file) = &tls.ca_file {
        for cert in certificates("ca_file", ca_file)? {
            store.add(cert).map_err(|e| {
                file_error(
                    "ca_file",
                    ca_file,
                    "holds a certificate that cannot be a trust anchor".to_owned(),
                    Some(Box::new(e)),
                )
            })?;
        }
        return Ok(store);
    }
    let system = fred::rustls_native_certs::load_native_certs();
    let (added, _ignored) = store.add_parsable_certificates(system.certs);
    for e in &system.errors {
        tracing::warn!(error = %e, "redis tls: some system root certificates could not be loaded");
    }
    if added == 0 {
        let errors: Vec<String> = system.errors.iter().map(ToString::to_string).collect();
        return Err(ConfigError::Tls {
            problem: format!(
                "no system root certificates found{}; install the ca-certificates package or \
                 set ca_file",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join("; "))
                }
            ),
        });
    }
    Ok(store)
}

/// Every PEM certificate in `path` (at least one).
fn certificates(
    setting: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(setting, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| {
            file_error(
                setting,
                path,
                "is not valid PEM".to_owned(),
                Some(Box::new(e)),
            )
        })?;
    if certs.is_empty() {
        return Err(file_error(
            setting,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
            None,
        ));
    }
    Ok(certs)
}

/// The first PEM private key in `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read("key_file", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "holds no PEM private key".to_owned(),
            _ => "is not valid PEM".to_owned(),
        };
        file_error("key_file", path, problem, Some(Box::new(e)))
    })
}

/// Reads a whole file. Blocking, but only at start-up and for a few kilobytes.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    // The kind ("entity not found", "permission denied") keeps the message useful where only
    // `Display` is shown; the full OS error is the source.
    std::fs::read(path).map_err(|e| {
        let problem = format!("cannot be read ({})", e.kind());
        file_error(setting, path, problem, Some(Box::new(e)))
    })
}

/// A [`ConfigError::TlsFile`] for `path`.
fn file_error(
    setting: &'static str,
    path: &Path,
    problem: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> ConfigError {
    ConfigError::TlsFile {
        setting,
        path: path.display().to_string(),
        problem,
        source,
    }
}

/// `insecure_skip_verify`: accepts any certificate chain and name, but still checks that the
/// server holds the key of the certificate it sent (the handshake signature), so the session
/// is encrypted to whoever answered, just not authenticated.
#[derive(Debug)]
struct SkipVerification {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SkipVerification {
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
        verify_tls12_signature(
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
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
