//! TLS between clients and shardwire: psql verifying the certificate, tokio-postgres over rustls
//! (extended protocol, a large result, COPY in), `mode = "require"` refusing plaintext logins, and
//! bytes smuggled in after an SSLRequest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::SinkExt;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Proxy, shared};

/// A CA and a server certificate it signed for `localhost` and 127.0.0.1, written as PEM files.
pub struct Certs {
    dir: PathBuf,
    ca_pem: String,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!("shardwire-tls-{}", crate::harness::rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "shardwire test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        // psql reads the root certificate as the postgres user when the tests run as root.
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        Certs { dir, ca_pem: ca.pem() }
    }

    pub fn server_section(&self, mode: &str) -> String {
        format!(
            "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nmode = \"{mode}\"\n",
            self.dir.join("server.crt").display(),
            self.dir.join("server.key").display()
        )
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// tokio-postgres over rustls, trusting only the test CA.
    fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let mut roots = rustls::RootCertStore::empty();
        let ders = rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes());
        for der in ders {
            roots.add(der.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect_tls(
    proxy: &Proxy,
    certs: &Certs,
    sslmode: tokio_postgres::config::SslMode,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    connect_tls_as(proxy, certs, sslmode, "app", "app", "app").await
}

async fn connect_tls_as(
    proxy: &Proxy,
    certs: &Certs,
    sslmode: tokio_postgres::config::SslMode,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::Config::new()
        .host("localhost")
        .hostaddr(std::net::IpAddr::from([127, 0, 0, 1]))
        .port(proxy.port())
        .user(user)
        .password(password)
        .dbname(db)
        .ssl_mode(sslmode)
        .connect(certs.connector())
        .await?;
    tokio::spawn(conn);
    Ok(c)
}

async fn psql(args: &[&str]) -> std::process::Output {
    let bin = shardwire::sandbox::pg_bin_dir().unwrap().join("psql");
    tokio::process::Command::new(bin).args(args).output().await.unwrap()
}

fn conninfo(proxy: &Proxy, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={} user=app password=app dbname=app {extra}",
        proxy.port()
    )
}

#[tokio::test]
async fn psql_verifies_the_certificate_and_queries_over_tls() {
    let certs = Certs::new();
    let proxy = Proxy::start(&shared().config(&certs.server_section("prefer"), "")).await;
    // The read below must find the replica in rotation (else it is served by the primary).
    proxy.wait_replicas_in_rotation().await;
    let ca = certs.ca_file();
    let info = conninfo(&proxy, &format!("sslmode=verify-full sslrootcert={}", path_str(&ca)));
    let out = psql(&[
        &info,
        "-c",
        "\\conninfo",
        "-tAc",
        "SELECT 'over tls ' || pg_is_in_recovery()",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SSL connection"), "psql did not report TLS: {stdout}");
    assert!(
        stdout.contains("over tls t"),
        "read did not reach the replica: {stdout}"
    );

    // A client that does not ask for TLS still gets in when TLS is only preferred.
    let out = psql(&[&conninfo(&proxy, "sslmode=disable"), "-tAc", "SELECT 1"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A client checking the name against a certificate not made for it gives up.
    let out = psql(&[
        &format!(
            "host=127.0.0.2 hostaddr=127.0.0.1 port={} user=app password=app dbname=app sslmode=verify-full sslrootcert={}",
            proxy.port(),
            path_str(&ca)
        ),
        "-c",
        "SELECT 1",
    ])
    .await;
    assert!(!out.status.success());

    // The proxy is unharmed by that failed handshake.
    let c = connect_tls(&proxy, &certs, tokio_postgres::config::SslMode::Require)
        .await
        .unwrap();
    assert_eq!(c.query_one("SELECT 41 + 1", &[]).await.unwrap().get::<_, i32>(0), 42);
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn extended_protocol_large_results_and_copy_over_tls() {
    let certs = Certs::new();
    let proxy = Proxy::start(&shared().config(&certs.server_section("prefer"), "")).await;
    let c = connect_tls(&proxy, &certs, tokio_postgres::config::SslMode::Require)
        .await
        .unwrap();
    // Prepared, binary parameters and results.
    let stmt = c.prepare("SELECT $1::bigint * 2, $2::text || '!'").await.unwrap();
    for i in 0..50i64 {
        let row = c.query_one(&stmt, &[&i, &format!("n{i}")]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), i * 2);
        assert_eq!(row.get::<_, String>(1), format!("n{i}!"));
    }
    // A result of several megabytes: many TLS records, partial socket writes.
    let rows = c
        .query("SELECT g, repeat('x', 100) FROM generate_series(1, 60000) g", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 60000);
    assert_eq!(rows[59999].get::<_, i32>(0), 60000);
    assert!(rows.iter().all(|r| r.get::<_, &str>(1).len() == 100));

    // COPY FROM STDIN, written to the primary, in many TLS records.
    let t = crate::harness::table("tls_copy");
    c.batch_execute(&format!("CREATE TABLE {t} (id int, v text)"))
        .await
        .unwrap();
    let sink = c.copy_in(&format!("COPY {t} FROM STDIN")).await.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in 0..20 {
        let mut data = String::new();
        for i in 0..1000 {
            data.push_str(&format!("{}\tvalue {}\n", chunk * 1000 + i, i));
        }
        sink.send(bytes::Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 20000);
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {t} /* shardwire: primary */"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20000);
    c.batch_execute(&format!("DROP TABLE {t}")).await.unwrap();
}

#[tokio::test]
async fn require_mode_refuses_plaintext_logins() {
    let certs = Certs::new();
    let proxy = Proxy::start(&shared().config(&certs.server_section("require"), "")).await;
    let Err(e) = proxy.connect("app", "app").await else {
        panic!("a plaintext login got in");
    };
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("require"), "{}", db.message());

    let out = psql(&[&conninfo(&proxy, "sslmode=disable"), "-c", "SELECT 1"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without TLS refused"));

    let c = connect_tls(&proxy, &certs, tokio_postgres::config::SslMode::Require)
        .await
        .unwrap();
    assert_eq!(c.query_one("SELECT 7", &[]).await.unwrap().get::<_, i32>(0), 7);
    // A cancel request reaches the query through TLS too.
    let token = c.cancel_token();
    let connector = certs.connector();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(connector).await
    });
    let started = std::time::Instant::now();
    let Err(e) = c.simple_query("SELECT pg_sleep(10)").await else {
        panic!("the query was not cancelled");
    };
    assert_eq!(e.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED), "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    canceller.await.unwrap().unwrap();
    assert_eq!(c.query_one("SELECT 8", &[]).await.unwrap().get::<_, i32>(0), 8);

    // The admin console works over TLS too, and SHOW CLIENTS says how each client is encrypted.
    let admin = connect_tls_as(
        &proxy,
        &certs,
        tokio_postgres::config::SslMode::Require,
        "admin",
        "admin",
        "shardwire",
    )
    .await
    .unwrap();
    let rows: Vec<Vec<Option<String>>> = admin
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect();
    assert!(!rows.is_empty());
    for r in &rows {
        let tls = r.last().unwrap().as_deref().unwrap_or("");
        assert!(tls.starts_with("TLSv1_"), "client without TLS details: {r:?}");
    }
}

#[tokio::test]
async fn bytes_after_an_ssl_request_are_refused_before_the_handshake() {
    let certs = Certs::new();
    let proxy = Proxy::start(&shared().config(&certs.server_section("prefer"), "")).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    // SSLRequest followed at once by plaintext that would be taken for the first TLS bytes.
    let mut out = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    out.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
    s.write_all(&out).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert_eq!(reply.first(), Some(&b'E'), "expected an error, got {reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("unencrypted data after SSL request"));

    // Others are not disturbed.
    let c = connect_tls(&proxy, &certs, tokio_postgres::config::SslMode::Require)
        .await
        .unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
}
