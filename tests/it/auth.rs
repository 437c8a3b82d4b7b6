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

#[tokio::test]
async fn shardwire_logs_in_to_servers_with_scram_and_md5() {
    let topo = shared();
    let p = topo.primary().await;
    for (role, password, encryption) in [("sw_scram", "scram-pw", "scram-sha-256"), ("sw_md5", "md5-pw", "md5")] {
        p.batch_execute(&format!(
            "SET password_encryption = '{encryption}'; \
             DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             ALTER ROLE {role} PASSWORD '{password}'"
        ))
        .await
        .unwrap();
    }
    crate::harness::replica_caught_up(topo).await;
    for (role, password) in [("sw_scram", "scram-pw"), ("sw_md5", "md5-pw")] {
        let config = topo
            .config("", "")
            .replace("postgres://postgres@", &format!("postgres://{role}:{password}@"));
        let proxy = Proxy::start(&config).await;
        proxy.wait_replicas_in_rotation().await;
        let c = proxy.app().await;
        let r = c
            .query_one("SELECT current_user::text, pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, bool>(1)),
            (role.to_string(), true),
            "{role} on the replica"
        );
        let r = c
            .query_one(
                "/* shardwire: primary */ SELECT current_user::text, pg_is_in_recovery()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, bool>(1)),
            (role.to_string(), false),
            "{role} on the primary"
        );
        // A wrong stored password: a clear connection error for the client, nothing else.
        let wrong = config.replace(&format!("{role}:{password}@"), &format!("{role}:nope@"));
        let proxy = Proxy::start(&wrong).await;
        // The first client of a fresh cluster learns the server's parameters at login, so the
        // error may come then; otherwise with the first statement.
        let e = match proxy.connect("app", "app").await {
            Err(e) => e,
            Ok(c) => c.query_one("/* shardwire: primary */ SELECT 1", &[]).await.unwrap_err(),
        };
        let db = e.as_db_error().expect("a database error");
        assert_eq!(db.code().code(), "08006", "{db:?}");
        assert!(
            db.message().contains("password authentication failed"),
            "{}",
            db.message()
        );
    }
}
