//! Changing the running shard map from the admin console: a partition reassigned (refused while
//! its rows are elsewhere, accepted with DATA IN PLACE once they are copied), the change based
//! on a version (a stale one is refused), written back to the file, kept in SHOW MAP HISTORY; and
//! a fenced partition (a move's cutover) holding the statements that touch it, only them, until
//! it serves again, with a transaction that spans the move failing with 40001.

use crate::harness::Proxy;
use crate::shards::{MAP, sharded};

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

pub async fn admin(proxy: &Proxy, sql: &str) -> Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error> {
    proxy
        .connect_db("admin", "admin", "shardwire")
        .await
        .unwrap()
        .simple_query(sql)
        .await
}

pub fn rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_reassigned_and_fenced_from_the_console() {
    let (topo, _guard) = sharded().await;
    let config = topo.config(MAP);
    let map_path = crate::shards::map_path(&config);
    let proxy = Proxy::start(&config).await;
    let c = proxy.app().await;
    c.batch_execute("DROP TABLE IF EXISTS users").await.unwrap();
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int)")
        .await
        .unwrap();
    let map = shardwire::shardmap::parse(MAP).unwrap();
    // A key of a partition on s0, and one of another partition.
    let (k, p) = (1i64..)
        .map(|k| (k, map.locate("users", &k.to_string()).unwrap().0))
        .find(|(_, pl)| pl.shard == 0)
        .map(|(k, pl)| (k, pl.partition.unwrap()))
        .unwrap();
    let other = (1i64..)
        .find(|o| map.locate("users", &o.to_string()).unwrap().0.partition != Some(p))
        .unwrap();
    c.batch_execute(&format!(
        "INSERT INTO users (id, name) VALUES ({k}, 'k'), ({other}, 'o')"
    ))
    .await
    .unwrap();

    // Its rows are on s0: reassigning it is refused, and nothing changes.
    let e = admin(&proxy, &format!("SET PARTITION users {p} TO s1"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("F0000"), "{e:?}");
    assert!(message(&e).contains("DATA IN PLACE"), "{e}");
    let dry = admin(&proxy, &format!("SET PARTITION users {p} TO s1 DATA IN PLACE DRY RUN"))
        .await
        .unwrap();
    assert!(rows(&dry).is_empty());
    assert_eq!(
        proxy.shared.runtime.load().config.map.version,
        1,
        "a dry run changes nothing"
    );
    // The test copies the partition's rows to s1 (as a mover would), then states it.
    let name: String = topo
        .shard(0)
        .await
        .query_one("SELECT name FROM users WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0);
    topo.shard(1)
        .await
        .execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)",
            &[&k, &format!("{name} on s1")],
        )
        .await
        .unwrap();
    admin(
        &proxy,
        &format!("SET PARTITION users {p} TO s1 DATA IN PLACE VERSION 1"),
    )
    .await
    .unwrap();
    assert_eq!(proxy.shared.runtime.load().config.map.version, 2);
    let file = std::fs::read_to_string(&map_path).unwrap();
    assert!(file.contains("version = 2"), "{file}");
    let reloaded = shardwire::shardmap::parse(&file).unwrap();
    assert_eq!(reloaded.locate("users", &k.to_string()).unwrap().0.shard, 1);
    // The next statement goes to s1.
    let got: String = c
        .query_one("SELECT name FROM users WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0);
    assert_eq!(got, "k on s1");
    // A change based on the old version is refused.
    let e = admin(&proxy, &format!("SET PARTITION users {p} STATE fenced VERSION 1"))
        .await
        .unwrap_err();
    assert!(message(&e).contains("based on version 1"), "{e}");
    let history = rows(&admin(&proxy, "SHOW MAP HISTORY").await.unwrap());
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(
        (history[0][1].as_str(), history[0][2].as_str(), history[0][3].as_str()),
        ("1", "2", "admin")
    );

    // Fenced: a statement on the partition waits; one on another partition does not.
    admin(&proxy, &format!("SET PARTITION users {p} STATE fenced VERSION 2"))
        .await
        .unwrap();
    let waiting = {
        let c2 = proxy.app().await;
        tokio::spawn(async move {
            c2.query_one("SELECT name FROM users WHERE id = $1", &[&k])
                .await
                .map(|r| r.get::<_, String>(0))
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let o: String = c
        .query_one("SELECT name FROM users WHERE id = $1", &[&other])
        .await
        .unwrap()
        .get(0);
    assert_eq!(o, "o");
    assert!(!waiting.is_finished(), "a statement on the fenced partition ran");
    admin(&proxy, &format!("SET PARTITION users {p} STATE serving"))
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("released when the partition serves")
        .unwrap()
        .unwrap();
    assert_eq!(got, "k on s1");

    // While a partition of the group is being moved, DDL on the group's tables is refused (the
    // move's copy must match them), in both protocols; reads and writes go on; after it, DDL runs.
    admin(&proxy, &format!("SET PARTITION users {p} STATE moving"))
        .await
        .unwrap();
    let e = c
        .batch_execute("ALTER TABLE users ADD COLUMN note text")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e}");
    assert!(e.as_db_error().unwrap().message().contains("is moving"), "{e:?}");
    let e = c.execute("TRUNCATE users", &[]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e}");
    let n: String = c
        .query_one("SELECT name FROM users WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, "k on s1", "reads of the moving partition go on");
    admin(&proxy, &format!("SET PARTITION users {p} STATE serving"))
        .await
        .unwrap();
    c.batch_execute("ALTER TABLE users ADD COLUMN note text").await.unwrap();
    c.batch_execute("ALTER TABLE users DROP COLUMN note").await.unwrap();

    // A transaction open across a change finishes on the route it started with (the mover
    // catches up its writes before the cutover); the next statement takes the new route.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 1 WHERE id = {k}"))
        .await
        .unwrap();
    admin(&proxy, &format!("SET PARTITION users {p} STATE fenced"))
        .await
        .unwrap();
    admin(&proxy, &format!("SET PARTITION users {p} TO s0 DATA IN PLACE"))
        .await
        .unwrap();
    admin(&proxy, &format!("SET PARTITION users {p} STATE serving"))
        .await
        .unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 2 WHERE id = {k}"))
        .await
        .unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let score: Option<i32> = topo
        .shard(1)
        .await
        .query_one("SELECT score FROM users WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0);
    assert_eq!(score, Some(2), "the transaction stayed on its route (s1)");
    let name: String = c
        .query_one("SELECT name FROM users WHERE id = $1", &[&k])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "k", "the next statement reads s0");
    // A transaction that starts while the partition is fenced, has work on a shard, and waits
    // for the partition to move there and back: 40001 (its work would be left on the old route).
    admin(&proxy, &format!("SET PARTITION users {p} STATE fenced"))
        .await
        .unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("UPDATE users SET score = 3 WHERE id = {other}"))
        .await
        .unwrap();
    let blocked = {
        let c = proxy.app().await;
        tokio::spawn(async move {
            c.batch_execute("BEGIN").await.unwrap();
            c.batch_execute(&format!("UPDATE users SET score = 3 WHERE id = {other}"))
                .await
                .unwrap();
            let r = c
                .batch_execute(&format!("UPDATE users SET score = 4 WHERE id = {k}"))
                .await;
            let _ = c.batch_execute("ROLLBACK").await;
            r
        })
    };
    c.batch_execute("ROLLBACK").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    admin(&proxy, &format!("SET PARTITION users {p} TO s1 DATA IN PLACE"))
        .await
        .unwrap();
    admin(&proxy, &format!("SET PARTITION users {p} STATE serving"))
        .await
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(5), blocked)
        .await
        .expect("released when the partition serves")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&e), Some("40001"), "{e:?}");
    assert_eq!(proxy.shared.runtime.load().config.map.version, 12);
    // A command with a typo names the way.
    let e = admin(&proxy, &format!("SET PARTITION users {p} INTO s1"))
        .await
        .unwrap_err();
    assert!(message(&e).contains("TO or STATE"), "{e}");
}

/// `[server] watch_files`: a changed map file is served without a signal; a file caught half
/// written, or a change that moves rows, leaves the running map serving. A node a reload adds
/// that does not answer is refused before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_are_watched_and_unreachable_nodes_refused() {
    let (topo, _guard) = sharded().await;
    let config = topo
        .config(MAP)
        .replacen("[server]\n", "[server]\nwatch_files = \"100ms\"\n", 1);
    let map_path = crate::shards::map_path(&config);
    let proxy = Proxy::start(&config).await;
    let version = || proxy.shared.runtime.load().config.map.version;
    let shared = proxy.shared.clone();
    let wait_for = |want: u64| {
        let shared = shared.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if shared.runtime.load().config.map.version == want {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            false
        }
    };
    // A valid change (scatter writes refused, version 2): served.
    let v2 = MAP.replace("version = 1", "version = 2").replace(
        "default_shard = \"s0\"",
        "default_shard = \"s0\"\nscatter_writes = \"refuse\"",
    );
    assert_ne!(v2, MAP.replace("version = 1", "version = 2"));
    std::fs::write(&map_path, &v2).unwrap();
    assert!(wait_for(2).await, "the changed map was not picked up");
    let rejected = || {
        proxy
            .shared
            .stats
            .rejected_reloads
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = rejected();
    // Half a file, then a change that moves partitions: both refused, version 2 serves.
    std::fs::write(&map_path, &v2[..v2.len() / 2]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let moved = v2.replace("version = 2", "version = 3").replace(
        r#"assignment = { s0 = "0-20", s1 = "21-41", s2 = "42-63" }"#,
        r#"assignment = { s0 = "0-21", s1 = "22-41", s2 = "42-63" }"#,
    );
    std::fs::write(&map_path, &moved).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(version(), 2);
    assert!(rejected() >= before + 2, "{} rejections", rejected() - before);
    std::fs::write(&map_path, &v2).unwrap();
    // A replica that does not answer: RELOAD refused, the old configuration serves.
    let port = shardwire::sandbox::free_port().unwrap();
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    let with_replica = text.replacen(
        "name = \"s1\"\n",
        &format!("name = \"s1\"\nreplicas = [\"postgres://postgres@127.0.0.1:{port}/app\"]\n"),
        1,
    );
    assert_ne!(with_replica, text);
    std::fs::write(&proxy.config_path, with_replica).unwrap();
    let e = admin(&proxy, "RELOAD").await.unwrap_err();
    assert!(message(&e).contains("not reachable"), "{}", message(&e));
    assert!(proxy.shared.runtime.load().clusters[1].replicas.is_empty());
    std::fs::write(&proxy.config_path, text).unwrap();
}
