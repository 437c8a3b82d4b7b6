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
        &format!("SELECT count(*) || ' rows' FROM {t}"),
    ]))
    .await;
    assert!(out.contains("COPY 3"), "{out}");
    assert!(out.contains("3 rows"), "the session reads its own COPY: {out}");
    crate::harness::replica_caught_up(topo).await;
    let out = run(tokio::process::Command::new(bin("psql")).arg(&url).args([
        "-tA",
        "-c",
        "SELECT 'replica ' || pg_is_in_recovery()",
    ]))
    .await;
    assert!(
        out.contains("replica true"),
        "a session that wrote nothing reads a replica: {out}"
    );
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

/// Parameters a client reads back look as the server would show them: its encoding in the
/// server's spelling (`utf8` → `UTF8`, `latin9` → `LATIN9`), and an empty `application_name`
/// when it set none (not the name of shardwire's own server connections).
#[tokio::test]
async fn reported_parameters_look_as_the_server_shows_them() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let url = proxy.url("app", "app");
    for (asked, shown) in [("utf8", "UTF8"), ("latin9", "LATIN9"), ("iso-8859-1", "LATIN1")] {
        let out = run(tokio::process::Command::new(bin("psql"))
            .arg(&url)
            .env("PGCLIENTENCODING", asked)
            .args(["-tA", "-c", "\\encoding", "-c", "SHOW client_encoding"]))
        .await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, vec![shown, shown], "PGCLIENTENCODING={asked}");
    }
    // What the proxy reports at login itself, read off the wire.
    for (asked, shown) in [("utf8", "UTF8"), ("latin9", "LATIN9")] {
        let status = login_parameters(&proxy, &[("client_encoding", asked)]).await;
        assert_eq!(status.get("client_encoding").map(String::as_str), Some(shown));
        assert_eq!(status.get("application_name").map(String::as_str), Some(""));
    }
    // tokio-postgres sends no application_name.
    let c = proxy.app().await;
    for _ in 0..3 {
        let name: String = c.query_one("SHOW application_name", &[]).await.unwrap().get(0);
        assert_eq!(name, "");
        let name: String = c
            .query_one("SELECT current_setting('application_name')", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, "");
    }
    let out = run(tokio::process::Command::new(bin("psql"))
        .arg(&url)
        .args(["-tA", "-c", "SHOW application_name"]))
    .await;
    assert_eq!(out.trim(), "psql");
}

/// Logs in as `trusted` with `extra` startup parameters; the ParameterStatus values received.
async fn login_parameters(proxy: &Proxy, extra: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "trusted"), ("database", "app")].iter().chain(extra) {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = (body.len() as i32 + 4).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    s.write_all(&msg).await.unwrap();
    let mut buf = Vec::new();
    let mut out = std::collections::HashMap::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("login answers")
            .unwrap();
        assert!(n > 0, "connection closed during login");
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < len + 1 {
                break;
            }
            let m: Vec<u8> = buf.drain(..len + 1).collect();
            match m[0] {
                b'S' => {
                    let mut parts = m[5..].split(|&b| b == 0);
                    let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                    out.insert(name, value);
                }
                b'Z' => return out,
                b'E' => panic!("login failed: {}", String::from_utf8_lossy(&m[5..])),
                _ => {}
            }
        }
    }
}
