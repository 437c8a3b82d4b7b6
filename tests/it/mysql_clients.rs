//! Stock MySQL clients through shardwire: PyMySQL and mysqlclient (`tests/clients/mysql_app.py`,
//! Debian's python3-pymysql and python3-mysqldb) and sysbench's OLTP workloads, with prepared
//! statements on and off.

use mysql_async::prelude::Queryable;

use crate::harness::Proxy;
use crate::mysql::{REPLICATION, config, maria};

fn python() -> &'static str {
    // The system's interpreter, where Debian's python3-pymysql is (not a user's pyenv).
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[tokio::test]
async fn python_drivers_and_the_cli_with_both_auth_plugins_plain_and_tls() {
    let _g = REPLICATION.read().await;
    let certs = crate::tls::Certs::new();
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/mysql_app.py");
    for plugin in ["mysql_native_password", "caching_sha2_password"] {
        let extra = format!("mysql_auth = \"{plugin}\"\n{}", certs.server_section("prefer"));
        let p = Proxy::start(&config(sb, &extra)).await;
        let port = p.bound.mysql.unwrap().port().to_string();
        // Each driver logs in over plaintext, then over TLS checking the certificate.
        for driver in ["pymysql", "MySQLdb"] {
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                tokio::process::Command::new(python())
                    .arg(&script)
                    .arg(driver)
                    .arg("127.0.0.1")
                    .arg(&port)
                    .arg(certs.ca_file())
                    .output(),
            )
            .await
            .expect("the script finishes")
            .expect("python3 runs (Debian's python3-pymysql and python3-mysqldb, which .ci/run installs)");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && text.contains("ok"), "{plugin} {driver}: {text}");
        }
        // mysql_async: a query, a prepared statement, a transaction and a multi-statement.
        for tls in [false, true] {
            let mut o = mysql_async::OptsBuilder::from_opts(crate::mysql::opts(&p, "app", "app"));
            if tls {
                o = o.ssl_opts(Some(
                    mysql_async::SslOpts::default()
                        .with_root_certs(vec![certs.ca_file().into()])
                        .with_danger_skip_domain_validation(true),
                ));
            }
            let mut c = mysql_async::Conn::new(o)
                .await
                .unwrap_or_else(|e| panic!("{plugin} tls={tls}: {e}"));
            let v: Option<i64> = c.exec_first("SELECT ? + 1", (41,)).await.unwrap();
            assert_eq!(v, Some(42));
            c.query_drop("BEGIN").await.unwrap();
            let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
            assert_eq!(one, Some(1));
            c.query_drop("COMMIT").await.unwrap();
            let mut sets = c.query_iter("SELECT 1; SELECT 2, 3").await.unwrap();
            let first: Vec<i64> = sets.collect().await.unwrap();
            let second: Vec<(i64, i64)> = sets.collect().await.unwrap();
            drop(sets);
            assert_eq!((first, second), (vec![1], vec![(2, 3)]), "{plugin} tls={tls}");
            c.disconnect().await.unwrap();
        }
        for tls in [false, true] {
            let mut cli = crate::mysql::mariadb_cli(&port);
            if tls {
                cli.arg("--ssl").arg(format!("--ssl-ca={}", certs.ca_file().display()));
            }
            let out = cli.args(["-e", "SELECT 'cli'"]).output().await.unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout) == "cli\n",
                "{plugin} tls={tls}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

async fn sysbench(port: u16, args: &[&str]) -> String {
    let port = format!("--mysql-port={port}");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("sysbench")
            .args(args)
            .args([
                "--mysql-host=127.0.0.1",
                &port,
                "--mysql-user=app",
                "--mysql-password=app",
                "--mysql-db=app",
                "--tables=2",
                "--table-size=2000",
                "--threads=4",
                "--db-driver=mysql",
            ])
            .output(),
    )
    .await
    .expect("sysbench finishes")
    .expect("sysbench runs (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "sysbench {args:?}: {text}");
    text
}

/// The count after `label` in sysbench's report ("errors:  0  (0.00 per sec.)").
fn count(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {label} in {report}"))
}

#[tokio::test]
async fn sysbench_oltp_runs_clean_with_and_without_prepared_statements() {
    let _g = REPLICATION.read().await;
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, "")).await;
    let port = p.bound.mysql.unwrap().port();
    sysbench(port, &["oltp_read_write", "cleanup"]).await;
    sysbench(port, &["oltp_read_write", "prepare"]).await;
    for test in ["oltp_point_select", "oltp_read_only", "oltp_read_write"] {
        for ps in ["--db-ps-mode=auto", "--db-ps-mode=disable"] {
            let r = sysbench(port, &[test, "run", ps, "--time=3", "--events=1500"]).await;
            assert!(count(&r, "transactions:") > 0, "{test} {ps}: {r}");
            // Deadlocks between the writing threads are retried by sysbench ("ignored"), as
            // against MariaDB direct; anything else would have failed the run.
            assert!(!r.contains("FATAL"), "{test} {ps}: {r}");
            if test != "oltp_read_write" {
                assert_eq!(count(&r, "ignored errors:"), 0, "{test} {ps}: {r}");
            }
        }
    }
    sysbench(port, &["oltp_read_write", "cleanup"]).await;
}
