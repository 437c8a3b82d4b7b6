//! Query strings of several statements for different shards, sent as one simple Query (as
//! `psql -c` and drivers' batch execution send them): run as one database runs them, in one
//! transaction, the rest skipped after an error, one ReadyForQuery at the end.

use tokio_postgres::SimpleQueryMessage;

use crate::harness::Proxy;
use crate::sharding::{SCHEMA, each, keys_on};
use crate::shards::{MAP, sharded};
use crate::transactions::{names, over_shards, sorted};

fn code(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_string_over_shards_runs_as_one_transaction() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let c = proxy.app().await;
    // DDL for every shard, several statements in one string.
    c.batch_execute(SCHEMA).await.unwrap();
    let (a, b, d) = (keys_on(0, 1, 1)[0], keys_on(1, 1, 1)[0], keys_on(2, 1, 1)[0]);
    c.batch_execute(&format!(
        "INSERT INTO users (id, name) VALUES ({a}, 'a'); INSERT INTO users (id, name) VALUES ({b}, 'b'); \
         INSERT INTO users (id, name) VALUES ({d}, 'd')"
    ))
    .await
    .unwrap();
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "a"), (b, "b"), (d, "d")])
    );

    // The transfer, as one string: both shards commit.
    c.batch_execute(&format!(
        "BEGIN; UPDATE users SET name = 'x' WHERE id = {a}; UPDATE users SET name = 'y' WHERE id = {b}; COMMIT;"
    ))
    .await
    .unwrap();
    assert_eq!(names(topo, &[a, b]).await, sorted(vec![(a, "x"), (b, "y")]));

    // Results of every statement in order, each with its tag, as one database sends them.
    let msgs = c
        .simple_query(&format!(
            "SELECT name FROM users WHERE id = {a}; SELECT name FROM users WHERE id = {b}; \
             SELECT count(*) FROM users; UPDATE users SET score = 1 WHERE id = {d}"
        ))
        .await
        .unwrap();
    let shown: Vec<String> = msgs
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::Row(r) => format!("row {}", r.get(0).unwrap_or("NULL")),
            SimpleQueryMessage::CommandComplete(n) => format!("done {n}"),
            _ => "other".into(),
        })
        .filter(|s| s != "other")
        .collect();
    assert_eq!(
        shown,
        ["row x", "done 1", "row y", "done 1", "row 3", "done 1", "done 1"],
        "{msgs:?}"
    );

    // An error in the middle of an implicit transaction: what ran before it is rolled back on
    // every shard, what comes after it does not run, and the session is idle again.
    let e = c
        .batch_execute(&format!(
            "UPDATE users SET name = 'p' WHERE id = {a}; UPDATE users SET name = 'q' WHERE id = {b}; \
             SELECT 1 / 0; UPDATE users SET name = 'r' WHERE id = {d}"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("22012"), "{e:?}");
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "x"), (b, "y"), (d, "d")]),
        "nothing of the failed string is left"
    );
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session is usable after the failed string");

    // An error inside the string's own block leaves the block failed, as on one database:
    // the statements after the error (the COMMIT too) are skipped.
    let e = c
        .batch_execute(&format!(
            "BEGIN; UPDATE users SET name = 'p' WHERE id = {a}; UPDATE users SET name = 'q' WHERE id = {b}; \
             SELECT 1 / 0; COMMIT"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("22012"), "{e:?}");
    let e = c.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code(&e), Some("25P02"), "the block stays failed: {e:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(names(topo, &[a, b]).await, sorted(vec![(a, "x"), (b, "y")]));

    // A string that opens a block and leaves it open: the next statements join it.
    c.batch_execute(&format!(
        "BEGIN; UPDATE users SET name = 'o1' WHERE id = {a}; UPDATE users SET name = 'o2' WHERE id = {b}"
    ))
    .await
    .unwrap();
    assert_eq!(
        names(topo, &[a, b]).await,
        sorted(vec![(a, "x"), (b, "y")]),
        "not committed yet"
    );
    // Inside the open block spanning shards, a string that writes and commits.
    c.batch_execute(&format!("UPDATE users SET name = 'o3' WHERE id = {d}; COMMIT"))
        .await
        .unwrap();
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "o1"), (b, "o2"), (d, "o3")])
    );
    // A COMMIT in the middle commits what came before; the error after it undoes only its own part.
    let e = c
        .batch_execute(&format!(
            "UPDATE users SET name = 'm1' WHERE id = {a}; UPDATE users SET name = 'm2' WHERE id = {b}; COMMIT; \
             UPDATE users SET name = 'm3' WHERE id = {d}; UPDATE users SET name = NULL WHERE id = {a}"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("23502"), "{e:?}");
    assert_eq!(
        names(topo, &[a, b, d]).await,
        sorted(vec![(a, "m1"), (b, "m2"), (d, "o3")])
    );
    // A refused statement in the string: nothing runs.
    let e = c
        .batch_execute(&format!(
            "UPDATE users SET name = 'z' WHERE id = {a}; UPDATE users SET id = id + 1 WHERE id = {b}"
        ))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some("0A000"), "{e:?}");
    assert_eq!(names(topo, &[a]).await, sorted(vec![(a, "m1")]));
    assert_eq!(over_shards(topo, "SELECT count(*) FROM users").await, 3);
    // A read refused as written whose part runs first, after a write in the same string: it
    // sees the write (one transaction), and both take effect.
    let msgs = c
        .simple_query(&format!(
            "UPDATE users SET name = 'w' WHERE id = {d}; \
             SELECT name FROM users WHERE id = (SELECT min(id) FROM users WHERE name = 'w')"
        ))
        .await
        .unwrap();
    let got: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["w"]);
    assert_eq!(names(topo, &[d]).await, sorted(vec![(d, "w")]));

    // psql -c with the whole transfer in one string.
    let psql = shardwire::sandbox::pg_bin_dir().unwrap().join("psql");
    let out = tokio::process::Command::new(psql)
        .arg(proxy.url("app", "app"))
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!(
                "BEGIN; UPDATE users SET name = 'psql-a' WHERE id = {a}; UPDATE users SET name = 'psql-b' WHERE id = {b}; COMMIT;"
            ),
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names(topo, &[a, b]).await, sorted(vec![(a, "psql-a"), (b, "psql-b")]));
    each(&c, "DROP TABLE users").await;
}
