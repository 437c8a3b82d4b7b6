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
    // And /metrics, with the refusal counted.
    let http = proxy.bound.http.expect("admin_http configured");
    let body = crate::admin::http_get(http, "/metrics").await;
    assert!(
        body.contains(&format!("shardwire_ids_issued_total {}", all.len() + 3)),
        "{body}"
    );
    assert!(body.contains("shardwire_ids_issuing 1"), "{body}");
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

async fn show_ids(proxy: &Proxy) -> (String, String, String) {
    let admin = proxy.connect_db("admin", "admin", "shardwire").await.unwrap();
    let msgs = admin.simple_query("SHOW IDS").await.unwrap();
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get(0).unwrap().to_owned(),
                r.get(1).unwrap().to_owned(),
                r.get(5).unwrap().to_owned(),
            )),
            _ => None,
        })
        .unwrap()
}

async fn leased_worker(proxy: &Proxy) -> u16 {
    for _ in 0..100 {
        let (w, lease, state) = show_ids(proxy).await;
        if state == "issuing" && lease.starts_with("leased") {
            return w.parse().unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no lease: {:?}", show_ids(proxy).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_worker_ids_never_collide_and_expired_ones_are_reused() {
    let topo = shared();
    let store = format!("postgres://postgres@127.0.0.1:{}/app", topo.primary_port);
    topo.primary()
        .await
        .batch_execute("DROP TABLE IF EXISTS shardwire_worker_leases")
        .await
        .unwrap();
    let config = format!(
        "{}\n[ids]\nlease = \"{store}\"\nlease_ttl = \"600ms\"\n",
        topo.config("", "")
    );
    let a = Proxy::start(&config).await;
    let b = Proxy::start(&config).await;
    let (wa, wb) = (leased_worker(&a).await, leased_worker(&b).await);
    assert_ne!(wa, wb, "two running instances never hold the same worker id");
    // IDs from both are distinct and carry their own worker ids.
    let (ca, cb) = (a.app().await, b.app().await);
    let ia: Vec<i64> = ca
        .query("SELECT shardwire.next_ids(200)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ib: Vec<i64> = cb
        .query("SELECT shardwire.next_ids(200)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let all: HashSet<i64> = ia.iter().chain(&ib).copied().collect();
    assert_eq!(all.len(), 400);
    let last_a = *ia.last().unwrap() as u64;
    // A stops; once its lease expires a new instance reuses its worker id, and starts after the
    // last millisecond A issued in (kept in the lease row).
    a.stop();
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let c = Proxy::start(&config).await;
    assert_eq!(leased_worker(&c).await, wa, "the expired lease is reused");
    assert_eq!(leased_worker(&b).await, wb, "b keeps its lease");
    let first_c: i64 = c
        .app()
        .await
        .query_one("SELECT shardwire.next_id()", &[])
        .await
        .unwrap()
        .get(0);
    let epoch = shardwire::ids::DEFAULT_EPOCH_MS;
    assert!(
        shardwire::ids::decode(first_c as u64, epoch).unix_ms >= shardwire::ids::decode(last_a, epoch).unix_ms,
        "not before the last millisecond the worker id issued in"
    );
    assert!(first_c as u64 > last_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_the_lease_store_stops_issuing() {
    let (faults, _guard) = crate::harness::faults().await;
    let topo = shared();
    let store = format!("postgres://postgres@127.0.0.1:{}/app", faults.primary_port);
    let config = format!(
        "{}\n[ids]\nlease = \"{store}\"\nlease_ttl = \"900ms\"\n",
        topo.config("", "")
    );
    let p = Proxy::start(&config).await;
    leased_worker(&p).await;
    let c = p.app().await;
    c.query_one("SELECT shardwire.next_id()", &[]).await.unwrap();
    faults.stop_primary();
    // Within two thirds of the TTL after the last renewal (plus one renewal period) it refuses.
    let mut refused = None;
    for _ in 0..40 {
        match c.query_one("SELECT shardwire.next_id()", &[]).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    faults.start_primary();
    let e = refused.expect("IDs stop when the lease cannot be renewed");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("55000"), "{e:?}");
    // Back once the store is.
    leased_worker(&p).await;
    c.query_one("SELECT shardwire.next_id()", &[]).await.unwrap();
}
