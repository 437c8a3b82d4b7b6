//! `[server.tls]`: the certificate and key files read and checked into a rustls server
//! configuration, so that `check` and `RELOAD` reject a missing file or a key that does not
//! match its certificate before anything is served with them.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;
use super::raw::RawTls;
use super::{err, one_of};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    fn raw(cert: &str, key: &str, mode: Option<&str>) -> RawTls {
        RawTls {
            cert_file: cert.into(),
            key_file: key.into(),
            mode: mode.map(Into::into),
        }
    }

    #[test]
    fn loads_relative_paths_and_rejects_bad_files_with_the_field() {
        let dir = std::env::temp_dir().join(format!("shardwire-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_pair(&dir, "a");
        write_pair(&dir, "b");
        std::fs::write(dir.join("empty.crt"), "not a certificate\n").unwrap();
        let base = Some(dir.as_path());

        let ok = load(&raw("a.crt", "a.key", None), base).unwrap();
        assert_eq!(ok.mode, TlsMode::Prefer);
        let ok = load(&raw("a.crt", "a.key", Some("require")), base).unwrap();
        assert_eq!(ok.mode, TlsMode::Require);

        let cases = [
            (raw("a.crt", "a.key", Some("always")), "server.tls.mode"),
            (raw("missing.crt", "a.key", None), "server.tls.cert_file"),
            (raw("empty.crt", "a.key", None), "server.tls.cert_file"),
            (raw("a.crt", "missing.key", None), "server.tls.key_file"),
            // b's key does not belong to a's certificate.
            (raw("a.crt", "b.key", None), "server.tls"),
        ];
        for (r, field) in cases {
            match load(&r, base) {
                Err(ConfigError::Invalid { path, message }) => assert_eq!(path, field, "{message}"),
                other => panic!(
                    "{} / {}: expected an error on {field}, got {other:?}",
                    r.cert_file, r.key_file
                ),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
