//! IDs answered by the proxy: `SELECT shardwire.next_id()` / `next_ids(n)` in the simple and the
//! extended protocol, through tokio-postgres and psql, with SHOW IDS.

use std::collections::HashSet;

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Proxy, shared};

fn simple_ids(msgs: &[SimpleQueryMessage]) -> Vec<i64> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_id_is_answered_by_the_proxy() {
    let topo = shared();
    let proxy = Proxy::start(&format!("{}\n[ids]\nworker_id = 5\n", topo.config("", ""))).await;
    let c = proxy.app().await;
    let one = simple_ids(&c.simple_query("SELECT shardwire.next_id()").await.unwrap());
    let many = simple_ids(&c.simple_query("select SHARDWIRE.NEXT_IDS(1000);").await.unwrap());
    assert_eq!((one.len(), many.len()), (1, 1000));
    assert!(many.windows(2).all(|w| w[0] < w[1]), "increasing");
    assert!(many[0] > one[0]);
    // Extended protocol, binary results, a parameter for the count; inside a transaction too.
    let row = c.query_one("SELECT shardwire.next_id()", &[]).await.unwrap();
    let ext: i64 = row.get(0);
    assert!(ext > many[999]);
    let rows = c.query("SELECT shardwire.next_ids($1)", &[&500i64]).await.unwrap();
    let ext_many: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ext_many.len(), 500);
    c.batch_execute("BEGIN").await.unwrap();
    let in_tx = simple_ids(&c.simple_query("SELECT shardwire.next_id()").await.unwrap());
    c.batch_execute("COMMIT").await.unwrap();
    let mut all: HashSet<i64> = HashSet::new();
    for id in one.iter().chain(&many).chain(&ext_many).chain(&in_tx).chain([&ext]) {
        assert!(all.insert(*id), "duplicate {id}");
        let d = shardwire::ids::decode(*id as u64, shardwire::ids::DEFAULT_EPOCH_MS);
        assert_eq!(d.worker, 5);
    }
    // Out-of-range counts are refused with a clear error; the session goes on.
    let e = c.simple_query("SELECT shardwire.next_ids(1000000)").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22023"), "{e:?}");
    // psql (simple protocol).
    let bin = shardwire::sandbox::pg_bin_dir().unwrap();
    let out = std::process::Command::new(bin.join("psql"))
        .arg(proxy.url("app", "app"))
        .args(["-X", "-At", "-c", "SELECT shardwire.next_ids(3)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let psql_ids: Vec<i64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(psql_ids.len(), 3);
    assert!(psql_ids.iter().all(|id| !all.contains(id)));
    // SHOW IDS counts them.
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let msgs = admin.simple_query("SHOW IDS").await.unwrap();
    let row = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0).unwrap().to_owned(), r.get(2).unwrap().to_owned())),
            _ => None,
        })
        .unwrap();
    assert_eq!(row, ("5".to_string(), (all.len() + 3).to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_id_without_configuration_is_a_clear_error() {
    let topo = shared();
    let proxy = Proxy::start(&topo.config("", "")).await;
    let c = proxy.app().await;
    let e = c.simple_query("SELECT shardwire.next_id()").await.unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().contains("[ids]"), "{}", db.message());
    c.simple_query("SELECT 1").await.unwrap();
}
