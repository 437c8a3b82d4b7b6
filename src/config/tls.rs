//! `[server.tls]`: the certificate and key files read and checked into a rustls server
//! configuration, so that `check` and `RELOAD` reject a missing file or a key that does not
//! match its certificate before anything is served with them.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;
use super::raw::RawTls;
use super::validate::{err, one_of};

/// Whether clients must use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Clients that send SSLRequest get TLS; the others go on unencrypted.
    Prefer,
    /// Clients that log in without TLS are refused (28000), as with `hostssl` in pg_hba.conf.
    Require,
}

/// Client TLS, typed.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Whether TLS is required.
    pub mode: TlsMode,
    /// Certificates, key and protocol versions for the handshakes.
    pub server: Arc<rustls::ServerConfig>,
}

/// Reads and checks the certificate chain and key (paths relative to `base`).
pub fn load(raw: &RawTls, base: Option<&Path>) -> Result<TlsConfig, ConfigError> {
    let resolve = |p: &str| base.map_or_else(|| Path::new(p).to_path_buf(), |b| b.join(p));
    let mode = one_of(
        "server.tls.mode",
        raw.mode.as_deref(),
        TlsMode::Prefer,
        &[("prefer", TlsMode::Prefer), ("require", TlsMode::Require)],
    )?;
    let cert_path = resolve(&raw.cert_file);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| err("server.tls.cert_file", format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(err(
            "server.tls.cert_file",
            format!("{}: no PEM certificate in the file", cert_path.display()),
        ));
    }
    let key_path = resolve(&raw.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| err("server.tls.key_file", format!("{}: {e}", key_path.display())))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| err("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| err("server.tls", format!("certificate and key do not go together: {e}")))?;
    Ok(TlsConfig {
        mode,
        server: Arc::new(server),
    })
}
