//! Statements over several shards while a hash partition moves: the shard that does not serve
//! the partition holds a copy of its rows (the move's target before the switch, its source
//! after), and reads, writes and COPY through shardwire see each row once, in both protocols.
//! And a statement whose parts run first finishes under the map it started with while a reload
//! lists the shards in another order (a shard id indexes one map's shards; `map_swap` covers a
//! scatter), with no cached shape or prepared plan of one map used under another.

use tokio_postgres::SimpleQueryMessage;

use crate::harness::Proxy;
use crate::map_admin::{admin, rows};
use crate::shards::{MAP, Sharded, sharded};

const USERS: i64 = 120;

/// `users` with keys 1..=USERS named `u<id>`, and the partition of key 1 with its shard.
async fn seed(topo: &Sharded, c: &tokio_postgres::Client) -> (u32, usize, Vec<i64>) {
    c.batch_execute(
        "DROP TABLE IF EXISTS users; CREATE TABLE users (id bigint PRIMARY KEY, name text, country text, score int, \
         tag text GENERATED ALWAYS AS ('t' || id) STORED)",
    )
    .await
    .unwrap();
    let values: Vec<String> = (1..=USERS).map(|i| format!("({i}, 'u{i}')")).collect();
    c.batch_execute(&format!("INSERT INTO users (id, name) VALUES {}", values.join(", ")))
        .await
        .unwrap();
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let (pl, _) = map.locate("users", "1").unwrap();
    let p = pl.partition.unwrap();
    let in_p: Vec<i64> = (1..=USERS)
        .filter(|k| map.locate("users", &k.to_string()).unwrap().0.partition == Some(p))
        .collect();
    assert!(in_p.len() > 1, "{in_p:?}");
    let _ = topo;
    (p, pl.shard, in_p)
}

/// The partition's rows copied to shard `to` (as a mover's copy would be), named `moved`.
async fn copy_to(topo: &Sharded, to: usize, keys: &[i64]) {
    let values: Vec<String> = keys.iter().map(|k| format!("({k}, 'moved')")).collect();
    topo.shard(to)
        .await
        .batch_execute(&format!("INSERT INTO users (id, name) VALUES {}", values.join(", ")))
        .await
        .unwrap();
}

fn first(msgs: &[SimpleQueryMessage]) -> String {
    rows(msgs).first().and_then(|r| r.first().cloned()).unwrap_or_default()
}

async fn simple(c: &tokio_postgres::Client, sql: &str) -> String {
    first(&c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")))
}

/// Every way of reading or changing the whole table sees `USERS` rows, `moved` of them copies.
async fn each_row_once(c: &tokio_postgres::Client, moved: i64) {
    assert_eq!(simple(c, "SELECT count(*) FROM users").await, USERS.to_string());
    let n: i64 = c
        .query_one("SELECT count(*) FROM users WHERE id > $1", &[&0i64])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, USERS, "extended");
    let ids: Vec<i64> = c
        .query("SELECT id FROM users ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, (1..=USERS).collect::<Vec<_>>());
    assert_eq!(
        simple(c, "SELECT count(*) FROM users WHERE name = 'moved'").await,
        moved.to_string()
    );
    // A join of the group's tables on the key, and a part that runs first.
    assert_eq!(
        simple(c, "SELECT count(*) FROM users a JOIN users b ON a.id = b.id").await,
        USERS.to_string()
    );
    assert_eq!(
        simple(c, "SELECT count(*) FROM users WHERE id > (SELECT min(id) FROM users)").await,
        (USERS - 1).to_string()
    );
    // A write over every shard changes each row once, the copy not at all.
    assert_eq!(
        c.execute("UPDATE users SET score = 7", &[]).await.unwrap(),
        USERS as u64
    );
    assert_eq!(
        simple(c, "SELECT count(*) FROM users WHERE score = 7").await,
        USERS.to_string()
    );
    // COPY of the table, text and binary.
    let copied = {
        use futures_util::TryStreamExt;
        let out = c.copy_out("COPY users (id, name) TO STDOUT").await.unwrap();
        let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
        chunks
            .iter()
            .map(|b| b.iter().filter(|&&x| x == b'\n').count())
            .sum::<usize>()
    };
    assert_eq!(copied as i64, USERS);
    // Without a column list: the columns COPY writes (the generated one left out) from every shard.
    let lines: Vec<String> = {
        use futures_util::TryStreamExt;
        let out = c.copy_out("COPY users TO STDOUT").await.unwrap();
        let chunks: Vec<bytes::Bytes> = out.try_collect().await.unwrap();
        let text: String = chunks.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect();
        text.lines().map(str::to_owned).collect()
    };
    assert_eq!(lines.len() as i64, USERS);
    assert!(lines.iter().all(|l| l.split('\t').count() == 4), "{:?}", &lines[..3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_over_every_shard_see_a_moving_partition_once() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    let (p, from, in_p) = seed(topo, &c).await;
    let to = (from + 1) % 3;
    // Before the switch: the target holds the copy, the source serves.
    copy_to(topo, to, &in_p).await;
    admin(&proxy, &format!("SET PARTITION users {p} STATE moving VERSION 1"))
        .await
        .unwrap();
    each_row_once(&c, 0).await;
    let untouched: i64 = topo
        .shard(to)
        .await
        .query_one("SELECT count(*) FROM users WHERE name = 'moved' AND score IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        untouched,
        in_p.len() as i64,
        "the copy is not written through shardwire"
    );
    // After the switch: the target serves, the source keeps its rows (the way back).
    admin(
        &proxy,
        &format!("SET PARTITION users {p} TO s{to} STATE moving DATA IN PLACE VERSION 2"),
    )
    .await
    .unwrap();
    each_row_once(&c, in_p.len() as i64).await;
    assert_eq!(simple(&c, "SELECT name FROM users WHERE id = 1").await, "moved");
    // Done: the source's copy gone, the partition serves.
    topo.shard(from)
        .await
        .execute("DELETE FROM users WHERE id = ANY($1)", &[&in_p])
        .await
        .unwrap();
    admin(&proxy, &format!("SET PARTITION users {p} STATE serving VERSION 3"))
        .await
        .unwrap();
    each_row_once(&c, in_p.len() as i64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_stays_on_its_map_when_a_reload_reorders_the_shards() {
    let (topo, _guard) = sharded().await;
    let config = topo.config(MAP);
    let map_path = crate::shards::map_path(&config);
    let proxy = Proxy::start(&config).await;
    let c = proxy.app().await;
    let (p, from, in_p) = seed(topo, &c).await;
    let to = (from + 1) % 3;
    // Shapes and a prepared statement's plan cached under version 1.
    assert_eq!(simple(&c, "SELECT name FROM users WHERE id = 1").await, "u1");
    let st = c.prepare("SELECT name FROM users WHERE id = $1").await.unwrap();
    let got: String = c.query_one(&st, &[&1i64]).await.unwrap().get(0);
    assert_eq!(got, "u1");

    // A statement whose part runs first, slowly, on every shard; the rest then runs on the
    // shard of key 1. Meanwhile a reload lists the shards in another order: every shard id of
    // version 1 names another shard in version 2.
    let slow = {
        let c2 = proxy.app().await;
        tokio::spawn(async move {
            let sql =
                "SELECT name FROM users WHERE id IN (SELECT min(id + 0) FROM users WHERE pg_sleep(0.02)::text = '')";
            first(&c2.simple_query(sql).await.unwrap())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rotated = MAP
        .replace("version = 1", "version = 2")
        .replace(r#"shards = ["s0", "s1", "s2"]"#, r#"shards = ["s1", "s2", "s0"]"#);
    std::fs::write(&map_path, rotated).unwrap();
    admin(&proxy, "RELOAD").await.unwrap();
    assert_eq!(proxy.shared.runtime.load().config.map.version, 2);
    assert!(
        !slow.is_finished(),
        "the statement ended before the reload: nothing was tested"
    );
    assert_eq!(
        slow.await.unwrap(),
        "u1",
        "the statement ran under the map it started with"
    );

    // The next statements take version 2, their cached shapes and plans made again.
    assert_eq!(simple(&c, "SELECT name FROM users WHERE id = 1").await, "u1");
    let got: String = c.query_one(&st, &[&1i64]).await.unwrap().get(0);
    assert_eq!(got, "u1");
    assert_eq!(simple(&c, "SELECT count(*) FROM users").await, USERS.to_string());

    // The partition moves (its rows copied first): the same texts now read the new shard.
    copy_to(topo, to, &in_p).await;
    admin(
        &proxy,
        &format!("SET PARTITION users {p} TO s{to} STATE moving DATA IN PLACE VERSION 2"),
    )
    .await
    .unwrap();
    assert_eq!(simple(&c, "SELECT name FROM users WHERE id = 1").await, "moved");
    let got: String = c.query_one(&st, &[&1i64]).await.unwrap().get(0);
    assert_eq!(got, "moved");
    assert_eq!(simple(&c, "SELECT count(*) FROM users").await, USERS.to_string());
}
