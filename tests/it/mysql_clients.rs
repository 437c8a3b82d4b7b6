//! Stock MySQL clients through shardwire: PyMySQL and mysqlclient (`tests/clients/mysql_app.py`,
//! Debian's python3-pymysql and python3-mysqldb) and sysbench's OLTP workloads, with prepared
//! statements on and off.

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
async fn python_drivers_transactions_and_tls() {
    let _g = REPLICATION.read().await;
    let certs = crate::tls::Certs::new();
    let sb = tokio::task::spawn_blocking(maria).await.unwrap();
    let p = Proxy::start(&config(sb, &certs.server_section("prefer"))).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/mysql_app.py");
    for driver in ["pymysql", "MySQLdb"] {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::process::Command::new(python())
                .arg(&script)
                .arg(driver)
                .arg("127.0.0.1")
                .arg(p.bound.mysql.unwrap().port().to_string())
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
        assert!(out.status.success() && text.contains("ok"), "{driver}: {text}");
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
