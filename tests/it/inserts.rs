//! INSERTs into sharded tables the way applications write them: without a column list (the
//! columns read from the shard's catalog, again after DDL through shardwire), in both protocols.

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each, keys_on};
use crate::shards::{MAP, SHARDS, sharded};

async fn row_on(topo: &crate::shards::Sharded, id: i64) -> Option<(usize, String, Option<i32>)> {
    for s in 0..SHARDS {
        if let Some(r) = topo
            .shard(s)
            .await
            .query_opt("SELECT name, score FROM users WHERE id = $1", &[&id])
            .await
            .unwrap()
        {
            return Some((s, r.get(0), r.get(1)));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_without_a_column_list_are_routed_by_key() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    each(&c, SCHEMA).await;
    let (a, b, d) = (keys_on(0, 2, 1), keys_on(1, 2, 1), keys_on(2, 1, 1)[0]);
    // Simple protocol, rows of two shards in one statement (split, atomically).
    c.batch_execute(&format!(
        "INSERT INTO users VALUES ({}, 'a', 'c1', 1), ({}, 'b', NULL, 2)",
        a[0], b[0]
    ))
    .await
    .unwrap();
    assert_eq!(row_on(topo, a[0]).await, Some((0, "a".into(), Some(1))));
    assert_eq!(row_on(topo, b[0]).await, Some((1, "b".into(), Some(2))));
    // Extended protocol, fewer values than columns (the rest take their defaults), RETURNING.
    let rows = c
        .query("INSERT INTO users VALUES ($1, $2) RETURNING id, name", &[&d, &"d"])
        .await
        .unwrap();
    assert_eq!((rows[0].get::<_, i64>(0), rows[0].get::<_, String>(1)), (d, "d".into()));
    assert_eq!(row_on(topo, d).await, Some((2, "d".into(), None)));
    // The wrong number of values gets the server's own error.
    let e = c
        .batch_execute(&format!("INSERT INTO users VALUES ({}, 'x', 'y', 1, 2)", a[1]))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42601"), "{e:?}");
    // After DDL through shardwire the new column order is used.
    c.batch_execute("ALTER TABLE users DROP COLUMN country").await.unwrap();
    c.batch_execute(&format!("INSERT INTO users VALUES ({}, 'after', 7)", a[1]))
        .await
        .unwrap();
    assert_eq!(row_on(topo, a[1]).await, Some((0, "after".into(), Some(7))));
    c.execute("INSERT INTO users VALUES ($1, $2, $3)", &[&b[1], &"after", &8i32])
        .await
        .unwrap();
    assert_eq!(row_on(topo, b[1]).await, Some((1, "after".into(), Some(8))));
    // A table that does not exist: the error a database gives.
    let e = c
        .batch_execute("INSERT INTO users_missing VALUES (1)")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42P01"), "{e:?}");
}
