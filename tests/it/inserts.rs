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

async fn placed(topo: &crate::shards::Sharded, ids: std::ops::RangeInclusive<i64>) -> usize {
    let map = shardwire::shardmap::parse(MAP).unwrap();
    let mut n = 0;
    for s in 0..SHARDS {
        for r in topo
            .shard(s)
            .await
            .query(
                "SELECT id FROM users WHERE id BETWEEN $1 AND $2",
                &[ids.start(), ids.end()],
            )
            .await
            .unwrap()
        {
            let id: i64 = r.get(0);
            assert_eq!(
                map.locate("users", &id.to_string()).unwrap().0.shard,
                s,
                "row {id} on the wrong shard"
            );
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_reads_the_rows_then_routes_each_by_key() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let mut c = proxy.app().await;
    each(&c, SCHEMA).await;
    // From a set-returning function (no table), in both protocols.
    let n = c
        .execute(
            "INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(1, 30) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n, 30);
    c.batch_execute("INSERT INTO users (id, name) SELECT g, 'u' || g FROM generate_series(31, 60) g")
        .await
        .unwrap();
    assert_eq!(placed(topo, 1..=60).await, 60);
    // Without a column list, from a reference table.
    c.batch_execute(
        "INSERT INTO countries (code, name, region) VALUES ('fr', 'France', 'eu'), ('jp', 'Japan', 'asia')",
    )
    .await
    .unwrap();
    c.batch_execute("INSERT INTO users SELECT 100 + row_number() OVER (ORDER BY code), name, code FROM countries")
        .await
        .unwrap();
    assert_eq!(placed(topo, 101..=102).await, 2);
    // RETURNING, and a SELECT that yields nothing.
    let r = c
        .simple_query("INSERT INTO users (id, name) SELECT 200, 'r' RETURNING id, name")
        .await
        .unwrap();
    assert!(
        r.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("200"))),
        "{r:?}"
    );
    let r = c
        .simple_query("INSERT INTO users (id, name) SELECT 1, 'x' WHERE false")
        .await
        .unwrap();
    assert!(
        r.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(0))),
        "{r:?}"
    );
    // The extended protocol with parameters (tokio-postgres sends them in binary).
    let n = c
        .execute(
            "INSERT INTO users (id, name) SELECT g, $1 FROM generate_series($2::bigint, $3::bigint) g",
            &[&"p", &300i64, &309i64],
        )
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert_eq!(placed(topo, 300..=309).await, 10);
    // Inside a transaction it commits or rolls back with the rest; a duplicate key fails it all.
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("INSERT INTO users (id, name) SELECT g, 't' FROM generate_series(400, 409) g")
        .await
        .unwrap();
    let seen: i64 = tx
        .query_one("SELECT count(*) FROM users WHERE id BETWEEN 400 AND 409", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 10, "the transaction sees its own rows");
    tx.rollback().await.unwrap();
    assert_eq!(placed(topo, 400..=409).await, 0);
    let e = c
        .batch_execute("INSERT INTO users (id, name) SELECT g, 'd' FROM generate_series(55, 70) g")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("23505"), "{e:?}");
    assert_eq!(placed(topo, 61..=70).await, 0, "the failed INSERT ... SELECT left rows");
    // A SELECT over several shards is read merged, and its rows split by key.
    let users: i64 = c.query_one("SELECT count(*) FROM users", &[]).await.unwrap().get(0);
    c.batch_execute("INSERT INTO orders (id, user_id, amount, status) SELECT id, id, 1, 'n' FROM users")
        .await
        .unwrap();
    let copied: i64 = c
        .query_one(
            "SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id AND o.id = u.id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copied, users, "every row on the shard of its key, next to its user");
}
