//! Client authentication: SCRAM-SHA-256, md5, trust; wrong passwords, users and databases.

use crate::harness::{Proxy, shared};

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("no db error: {e}"))
}

#[tokio::test]
async fn logins_succeed_and_fail_as_configured() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    // SCRAM-SHA-256 (the default method).
    let c = proxy.connect("app", "app").await.unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&proxy.connect("app", "wrong").await.err().unwrap()), "28P01");
    // md5.
    let c = proxy.connect("md5user", "md5pass").await.unwrap();
    assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&proxy.connect("md5user", "nope").await.err().unwrap()), "28P01");
    // trust.
    assert!(proxy.connect("trusted", "").await.is_ok());
    // Unknown user, unknown database.
    assert_eq!(code(&proxy.connect("nobody", "x").await.err().unwrap()), "28P01");
    assert_eq!(
        code(&proxy.connect_db("app", "app", "otherdb").await.err().unwrap()),
        "3D000"
    );
    // The admin console needs an admin user.
    assert_eq!(
        code(&proxy.connect_db("app", "app", "shardwire").await.err().unwrap()),
        "42501"
    );
    assert!(proxy.connect_db("admin", "admin", "shardwire").await.is_ok());
}

#[tokio::test]
async fn psql_logs_in_with_scram_and_md5() {
    let proxy = Proxy::start(&shared().config("", "")).await;
    let psql = shardwire::sandbox::pg_bin_dir().unwrap().join("psql");
    for (user, pw) in [("app", "app"), ("md5user", "md5pass")] {
        let out = tokio::process::Command::new(&psql)
            .arg(proxy.url(user, pw))
            .args(["-tAc", "SELECT 'hello ' || current_user"])
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello postgres");
    }
    let out = tokio::process::Command::new(&psql)
        .arg(proxy.url("app", "bad"))
        .args(["-c", "SELECT 1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
}
