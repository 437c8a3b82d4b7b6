//! Stock clients: psql (simple protocol, \copy) and pgbench in every protocol mode.

use std::path::PathBuf;

use crate::harness::{Proxy, shared, table};

fn bin(name: &str) -> PathBuf {
    shardwire::sandbox::pg_bin_dir().unwrap().join(name)
}

async fn run(cmd: &mut tokio::process::Command) -> String {
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("finishes")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn psql_reads_writes_and_copies() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    proxy.wait_replicas_in_rotation().await;
    let url = proxy.url("app", "app");
    let t = table("psql");
    let dir = std::env::temp_dir();
    let input = dir.join(format!("{t}.in"));
    std::fs::write(&input, "1,one\n2,two\n3,three\n").unwrap();
    let out = run(tokio::process::Command::new(bin("psql")).arg(&url).args([
        "-v",
        "ON_ERROR_STOP=1",
        "-tA",
        "-c",
        &format!("CREATE TABLE {t} (id int, v text)"),
        "-c",
        &format!("\\copy {t} FROM '{}' WITH (FORMAT csv)", input.display()),
        "-c",
        &format!("SELECT count(*) || ' rows, replica ' || pg_is_in_recovery() FROM {t} /* shardwire: primary */"),
        "-c",
        "SELECT 'replica ' || pg_is_in_recovery()",
    ]))
    .await;
    assert!(out.contains("COPY 3"), "{out}");
    assert!(out.contains("3 rows, replica false"), "{out}");
    assert!(out.contains("replica true"), "{out}");
    crate::harness::replica_caught_up(topo).await;
    let out = run(tokio::process::Command::new(bin("psql")).arg(&url).args([
        "-tA",
        "-c",
        &format!("\\copy (SELECT * FROM {t} ORDER BY id) TO STDOUT WITH (FORMAT csv)"),
    ]))
    .await;
    assert_eq!(out.trim(), "1,one\n2,two\n3,three");
    run(tokio::process::Command::new(bin("psql"))
        .arg(&url)
        .args(["-c", &format!("DROP TABLE {t}")]))
    .await;
    let _ = std::fs::remove_file(input);
}

#[tokio::test]
async fn pgbench_runs_clean_in_every_protocol_mode() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let url = proxy.url("app", "app");
    run(tokio::process::Command::new(bin("pgbench")).args(["-i", "-s", "1", "-q", &url])).await;
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [true, false] {
            let mut cmd = tokio::process::Command::new(bin("pgbench"));
            cmd.args(["-M", mode, "-c", "4", "-j", "2", "-t", "100", "-n"]);
            if select_only {
                cmd.arg("-S");
            }
            cmd.arg(&url);
            let out = run(&mut cmd).await;
            assert!(
                out.contains("number of failed transactions: 0"),
                "{mode} select_only={select_only}:\n{out}"
            );
            assert!(
                out.contains("number of transactions actually processed: 400/400"),
                "{out}"
            );
        }
    }
}
