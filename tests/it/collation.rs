//! Text order across shards under a collation that is not byte order.

use crate::harness::Proxy;

/// Shards whose database orders text by a collation other than byte order (ICU en-US here): a
/// cross-shard ORDER BY or min() of text is refused with the way out, not answered in byte order;
/// with `COLLATE "C"` it is merged, and on one shard it runs as usual.
#[tokio::test]
async fn text_order_across_shards_follows_the_collation_or_is_refused() {
    let (topo, _guard) = crate::shards::sharded().await;
    for s in 0..crate::shards::SHARDS {
        let d = topo.shard(s).await;
        d.batch_execute("DROP DATABASE IF EXISTS icu_en").await.unwrap();
        d.batch_execute(
            "CREATE DATABASE icu_en TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
        )
        .await
        .unwrap();
    }
    let config = topo.config(crate::shards::MAP).replace("/app\"", "/icu_en\"");
    let proxy = Proxy::start(&config).await;
    let c = proxy.connect_db("app", "app", "icu_en").await.unwrap();
    c.batch_execute("CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, country text, score int)")
        .await
        .unwrap();
    let names = ["b", "B", "a", "A", "é", "e", "Z", "z"];
    let values: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("({i}, '{n}')")).collect();
    c.batch_execute(&format!("INSERT INTO users (id, name) VALUES {}", values.join(",")))
        .await
        .unwrap();
    for sql in [
        "SELECT name FROM users ORDER BY name",
        "SELECT id FROM users ORDER BY name DESC LIMIT 3",
        "SELECT min(name) FROM users",
    ] {
        let e = c.query(sql, &[]).await.unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().contains("icu:en-US") && db.message().contains("COLLATE \"C\""),
            "{sql}: {}",
            db.message()
        );
    }
    let got: Vec<String> = c
        .query("SELECT name FROM users ORDER BY name COLLATE \"C\"", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut bytes: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    bytes.sort();
    assert_eq!(got, bytes, "byte order, as the shards give it under COLLATE \"C\"");
    let n: i64 = c
        .query_one("SELECT count(*) FROM users WHERE name > 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n > 0, "comparisons run on the shards, in their collation");
    drop(c);
    drop(proxy);
    for s in 0..crate::shards::SHARDS {
        let d = topo.shard(s).await;
        let _ = d.batch_execute("DROP DATABASE IF EXISTS icu_en WITH (FORCE)").await;
    }
}
