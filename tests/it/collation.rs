//! Text order across shards under a collation that is not byte order.

use crate::harness::Proxy;

/// Shards whose database orders text by an ICU collation (en-US here): a cross-shard ORDER BY,
/// min() or max() of text is merged in that collation's order (the same order one database of
/// that collation gives); HAVING comparing text by order is refused with the way out; with
/// `COLLATE "C"` the merge is byte order; comparisons run on the shards as usual.
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
    let names = [
        "b", "B", "a", "A", "é", "e", "Z", "z", "ab", "a b", "Ab", "ä", "É", "co-op", "coop", "Ω", "1", "10", "9",
    ];
    let values: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("({i}, '{n}')")).collect();
    c.batch_execute(&format!("INSERT INTO users (id, name) VALUES {}", values.join(",")))
        .await
        .unwrap();
    // One database of the same collation orders the same names.
    let one = {
        let (one, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=icu_en",
                topo.shard_ports[0]
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        one
    };
    let names_vec: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let column = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<String>>();
    let sorted = column(
        one.query("SELECT n FROM unnest($1::text[]) n ORDER BY n", &[&names_vec])
            .await
            .unwrap(),
    );
    assert_eq!(
        column(c.query("SELECT name FROM users ORDER BY name", &[]).await.unwrap()),
        sorted
    );
    let mut desc = sorted.clone();
    desc.reverse();
    let got = column(
        c.query("SELECT name FROM users ORDER BY name DESC LIMIT 5", &[])
            .await
            .unwrap(),
    );
    assert_eq!(got, desc[..5]);
    // Simple protocol too, and min/max.
    let simple = c.simple_query("SELECT min(name), max(name) FROM users").await.unwrap();
    let row = simple
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0).unwrap().to_owned(), r.get(1).unwrap().to_owned()))
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(row, (sorted[0].clone(), sorted[sorted.len() - 1].clone()));
    let e = c
        .query(
            "SELECT country, max(name) FROM users GROUP BY country HAVING max(name) > 'b'",
            &[],
        )
        .await
        .unwrap_err();
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("icu:en-US") && db.message().contains("HAVING"),
        "{}",
        db.message()
    );
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
