//! The MySQL front end over three MariaDB shards, compared with one reference MariaDB holding
//! every row: the same statements (point, IN, ranges, ORDER BY/LIMIT, aggregates, GROUP BY,
//! HAVING, co-located joins, reference tables) give the same rows, or a clear refusal
//! (ER_NOT_SUPPORTED_YET, 1235).

use std::sync::OnceLock;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Value};
use shardwire::sandbox_mysql::MariaSandbox;

use crate::harness::Proxy;
use crate::mysql::lasting;
use crate::shards::MAP;

pub struct Topo {
    pub shards: Vec<&'static MariaSandbox>,
    pub reference: &'static MariaSandbox,
}

pub fn topo() -> &'static Topo {
    static T: OnceLock<Topo> = OnceLock::new();
    T.get_or_init(|| Topo {
        shards: (0..3).map(|_| lasting(|| MariaSandbox::start(0))).collect(),
        reference: lasting(|| MariaSandbox::start(0)),
    })
}

pub static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn config(t: &Topo) -> String {
    config_with(t, MAP)
}

fn config_with(t: &Topo, map: &str) -> String {
    let path = std::env::temp_dir().join(format!("shardwire-mymap-{}.toml", crate::harness::rand_suffix()));
    std::fs::write(&path, map).unwrap();
    let mut shards = String::new();
    for (i, sb) in t.shards.iter().enumerate() {
        shards.push_str(&format!(
            "[[shards]]\nname = \"s{i}\"\nprimary = \"{}\"\n",
            sb.url(&sb.primary)
        ));
    }
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
mysql_listen = "127.0.0.1:0"
[pool]
max_size = 10
checkout_timeout = "3s"
[routing]
lag_check_interval = "100ms"
[[users]]
name = "app"
password = "app"
[sharding]
map = "{}"
{shards}"#,
        path.display()
    )
}

pub async fn direct(sb: &MariaSandbox) -> Conn {
    let o = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(sb.primary.port)
        .user(Some(shardwire::sandbox_mysql::BACKEND_USER))
        .pass(Some(shardwire::sandbox_mysql::BACKEND_PASSWORD))
        .db_name(Some("app"))
        .prefer_socket(false);
    Conn::new(o).await.unwrap()
}

pub const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS users, orders, countries, events",
    "CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(40) COLLATE utf8mb4_bin NOT NULL, country VARCHAR(4), score INT)",
    "CREATE TABLE orders (id BIGINT NOT NULL, user_id BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL, status VARCHAR(10) COLLATE utf8mb4_bin NOT NULL, PRIMARY KEY (user_id, id))",
    "CREATE TABLE countries (code VARCHAR(4) COLLATE utf8mb4_bin PRIMARY KEY, name VARCHAR(40) NOT NULL, region VARCHAR(10) COLLATE utf8mb4_bin NOT NULL)",
    "CREATE TABLE events (id BIGINT PRIMARY KEY, kind VARCHAR(10) COLLATE utf8mb4_bin NOT NULL, weight DOUBLE)",
];

const USERS: i64 = 600;
const ORDERS: i64 = 1800;
const COUNTRIES: [&str; 6] = ["br", "de", "fr", "jp", "uk", "us"];

/// One row per statement: each goes to the shard of its key.
fn rows() -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..=USERS {
        let country = if i % 23 == 0 {
            "NULL".to_string()
        } else {
            format!("'{}'", COUNTRIES[(i as usize * 7) % 6])
        };
        let score = if i % 17 == 0 {
            "NULL".into()
        } else {
            ((i * 37) % 101).to_string()
        };
        out.push(format!(
            "INSERT INTO users (id, name, country, score) VALUES ({i}, 'user{:05}', {country}, {score})",
            (i * 7919) % 10007
        ));
    }
    for i in 1..=ORDERS {
        let status = ["new", "paid", "shipped", "void"][(i % 4) as usize];
        out.push(format!(
            "INSERT INTO orders (id, user_id, amount, status) VALUES ({i}, {}, {}.{:02}, '{status}')",
            (i * 7) % USERS + 1,
            (i * 13) % 500,
            i % 100
        ));
    }
    // Escapes in string literals: the rows above the others' ids, read back by scatter queries
    // that the proxy rewrites (their literals must reach the shards as written).
    out.push(r"INSERT INTO users (id, name, country, score) VALUES (601, 'back\\slash', 'zz', 1)".into());
    out.push(r"INSERT INTO users (id, name, country, score) VALUES (602, 'O\'Brien', 'zz', 2)".into());
    out.push(r"INSERT INTO users (id, name, country, score) VALUES (603, 'it''s', 'zz', 3)".into());
    for i in (0..3000).step_by(5) {
        let w = if i % 9 == 0 {
            "NULL".into()
        } else {
            format!("{}.5", i % 50)
        };
        out.push(format!(
            "INSERT INTO events (id, kind, weight) VALUES ({i}, 'kind{}', {w})",
            i % 5
        ));
    }
    out
}

fn countries() -> String {
    let v: Vec<String> = COUNTRIES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("('{c}', 'Country {c}', '{}')", ["north", "south", "east"][i % 3]))
        .collect();
    format!("INSERT INTO countries VALUES {}", v.join(","))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

type Rows = Vec<Vec<Option<String>>>;

async fn rows_of(c: &mut Conn, sql: &str) -> Result<Rows, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = c.query(sql).await?;
    Ok(rows
        .into_iter()
        .map(|r| r.unwrap().iter().map(text).collect())
        .collect())
}

/// Loads the data through shardwire and into the reference server; returns a connection to
/// each.
async fn loaded(p: &Proxy) -> (Conn, Conn) {
    let t = topo();
    let mut reference = direct(t.reference).await;
    let mut c = crate::mysql::connect(p).await;
    for s in SCHEMA {
        c.query_drop(*s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
        reference.query_drop(*s).await.unwrap();
    }
    // A reference table is written on every shard directly (its writes need XA through the proxy).
    for sb in &t.shards {
        direct(sb).await.query_drop(countries()).await.unwrap();
    }
    reference.query_drop(countries()).await.unwrap();
    for r in rows() {
        c.query_drop(&r).await.unwrap_or_else(|e| panic!("{r}: {e}"));
        reference.query_drop(&r).await.unwrap();
    }
    (c, reference)
}

fn corpus() -> Vec<String> {
    let mut q: Vec<String> = Vec::new();
    for k in [1, 2, 17, 42, 99, 500, 599, 600, 4000] {
        q.push(format!("SELECT id, name, country, score FROM users WHERE id = {k}"));
        q.push(format!(
            "SELECT id, amount, status FROM orders WHERE user_id = {k} ORDER BY id"
        ));
    }
    for list in ["1, 2, 3", "10, 20, 30, 40, 50, 60", "7", "598, 599, 600, 601"] {
        q.push(format!("SELECT id, name FROM users WHERE id IN ({list}) ORDER BY id"));
        q.push(format!(
            "SELECT user_id, COUNT(*) FROM orders WHERE user_id IN ({list}) GROUP BY user_id ORDER BY user_id"
        ));
    }
    q.push("SELECT id FROM users WHERE id = 3 OR id = 300 ORDER BY id".into());
    q.push("SELECT id FROM users WHERE (id = 3 OR id = 300) AND score > 10 ORDER BY id".into());
    for (a, b) in [(1, 50), (100, 180), (550, 700), (1500, 1500)] {
        q.push(format!(
            "SELECT id, name FROM users WHERE id BETWEEN {a} AND {b} ORDER BY id"
        ));
        q.push(format!(
            "SELECT id, kind FROM events WHERE id >= {a} AND id < {b} ORDER BY id"
        ));
    }
    q.push("SELECT id, kind FROM events WHERE id IN (5, 1005, 2005) ORDER BY id".into());
    for (order, lim) in [
        ("id", "LIMIT 10"),
        ("id DESC", "LIMIT 10"),
        ("id", "LIMIT 5 OFFSET 100"),
        ("name, id", "LIMIT 20"),
        ("name DESC, id", "LIMIT 7 OFFSET 3"),
        ("score, id", "LIMIT 25"),
        ("score DESC, id", "LIMIT 25"),
        ("id", "LIMIT 0"),
        ("score, name", ""),
    ] {
        q.push(format!(
            "SELECT id, name, country, score FROM users ORDER BY {order} {lim}"
        ));
    }
    q.push("SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, id LIMIT 25".into());
    q.push(
        "SELECT user_id, id, amount FROM orders WHERE status = 'paid' ORDER BY amount, user_id, id LIMIT 10 OFFSET 50"
            .into(),
    );
    q.push("SELECT id, weight FROM events ORDER BY weight DESC, id LIMIT 20".into());
    q.push("SELECT id, weight FROM events ORDER BY weight, id LIMIT 20".into());
    for a in [
        "COUNT(*)",
        "COUNT(score)",
        "SUM(score)",
        "MIN(score)",
        "MAX(score)",
        "MIN(name)",
        "MAX(name)",
        "COUNT(*), SUM(score)",
        "MIN(id), MAX(id), COUNT(country)",
    ] {
        q.push(format!("SELECT {a} FROM users"));
        q.push(format!("SELECT {a} FROM users WHERE id > 300"));
    }
    for a in ["SUM(amount)", "MIN(amount)", "MAX(amount)", "COUNT(*)"] {
        q.push(format!("SELECT {a} FROM orders"));
        q.push(format!("SELECT {a} FROM orders WHERE status = 'void'"));
    }
    q.push("SELECT SUM(weight), COUNT(weight) FROM events".into());
    q.push("SELECT COUNT(*) FROM users WHERE id < 0".into());
    q.push("SELECT SUM(score), MAX(score) FROM users WHERE id < 0".into());
    q.push("SELECT status, COUNT(*), SUM(amount) FROM orders GROUP BY status ORDER BY status".into());
    q.push("SELECT status, MAX(amount), MIN(amount) FROM orders WHERE amount > 100 GROUP BY status ORDER BY 1".into());
    q.push("SELECT kind, COUNT(*), SUM(weight) FROM events GROUP BY kind ORDER BY kind".into());
    q.push("SELECT score, COUNT(*) FROM users WHERE score < 10 GROUP BY score ORDER BY score".into());
    q.push("SELECT status, COUNT(*) FROM orders GROUP BY status HAVING MAX(amount) > 499 AND MIN(amount) < 1 ORDER BY status".into());
    q.push("SELECT score, COUNT(*) FROM users WHERE score < 10 GROUP BY score HAVING score <> 3 AND COUNT(*) > 4 ORDER BY score".into());
    q.push(
        "SELECT user_id, COUNT(*), SUM(amount) FROM orders GROUP BY user_id HAVING COUNT(*) > 3 ORDER BY user_id"
            .into(),
    );
    q.push("SELECT id, COUNT(*) FROM users GROUP BY id HAVING id < 20 ORDER BY id".into());
    q.push("SELECT DISTINCT status FROM orders ORDER BY status".into());
    q.push("SELECT DISTINCT kind FROM events ORDER BY kind DESC".into());
    q.push("SELECT DISTINCT score FROM users ORDER BY score LIMIT 5".into());
    q.push(
        "SELECT id FROM users WHERE score = 7 UNION ALL SELECT user_id FROM orders WHERE amount > 499.5 ORDER BY 1"
            .into(),
    );
    q.push(
        "SELECT status FROM orders WHERE user_id < 50 UNION SELECT name FROM users WHERE id < 3 ORDER BY 1 LIMIT 6"
            .into(),
    );
    q.push("SELECT u.id, u.name, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 42 ORDER BY o.id".into());
    q.push(
        "SELECT u.id, o.id FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id IN (1, 2, 3) ORDER BY u.id, o.id"
            .into(),
    );
    q.push("SELECT u.id, COUNT(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.id < 40 GROUP BY u.id ORDER BY u.id".into());
    q.push("SELECT u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id ORDER BY o.amount DESC, o.user_id, o.id LIMIT 15".into());
    q.push("SELECT COUNT(*) FROM users u JOIN orders o ON o.user_id = u.id WHERE o.status = 'new'".into());
    q.push(r"SELECT id, name FROM users WHERE name IN ('back\\slash', 'O\'Brien', 'it''s') ORDER BY id".into());
    q.push(r"SELECT COUNT(*) FROM users WHERE name LIKE 'back\\\\%' OR name = 'O''Brien'".into());
    q.push(r"SELECT id FROM users WHERE name > 'O\'B' AND name < 'P' ORDER BY id LIMIT 3".into());
    q.push("SELECT code, name, region FROM countries ORDER BY code".into());
    q.push("SELECT COUNT(*) FROM countries".into());
    q.push("SELECT u.id, c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.id = 5".into());
    q.push("SELECT c.region, COUNT(*) FROM users u JOIN countries c ON c.code = u.country GROUP BY c.region ORDER BY c.region".into());
    q.push("SELECT u.id, c.region FROM users u JOIN countries c ON c.code = u.country ORDER BY u.id LIMIT 12".into());
    // Subqueries each shard answers for its own rows, and WITH queries meeting on one shard.
    q.push("SELECT u.id FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > 450) ORDER BY u.id LIMIT 10".into());
    q.push("SELECT id FROM users WHERE id IN (SELECT user_id FROM orders WHERE status = 'void' AND amount > 400) ORDER BY id".into());
    q.push("WITH mine AS (SELECT id, amount FROM orders WHERE user_id = 42) SELECT u.name, m.id, m.amount FROM users u JOIN mine m WHERE u.id = 42 ORDER BY m.id".into());
    // Co-located WITH queries: each keeps a user's rows together.
    q.push("WITH a AS (SELECT id FROM orders) SELECT COUNT(*) FROM a".into());
    q.push("WITH t AS (SELECT user_id, SUM(amount) AS s, COUNT(*) AS n FROM orders GROUP BY user_id) SELECT COUNT(*), MAX(s), MIN(n), SUM(n) FROM t".into());
    q.push("WITH t AS (SELECT user_id, SUM(amount) AS s FROM orders GROUP BY user_id) SELECT u.id, t.s FROM users u JOIN t ON t.user_id = u.id ORDER BY t.s DESC, u.id LIMIT 5".into());
    q
}

/// Statements refused with 1235, whatever the data.
const REFUSED: &[&str] = &[
    "SELECT AVG(score) FROM users",
    "SELECT country, COUNT(*) FROM users GROUP BY country",
    "SELECT id FROM users ORDER BY country, id LIMIT 3",
    "SELECT u.id, o.id FROM users u JOIN orders o ON o.id = u.id",
    "SELECT COUNT(DISTINCT country) FROM users",
    "SELECT 1 FROM users; SELECT 2 FROM users",
    "SELECT id FROM users WHERE id IN (SELECT MAX(user_id) FROM orders)",
    "WITH t AS (SELECT status, COUNT(*) AS n FROM orders GROUP BY status) SELECT SUM(n) FROM t",
];

fn sorted(mut r: Rows) -> Rows {
    r.sort();
    r
}

#[tokio::test]
async fn same_rows_as_one_mariadb_or_a_clear_refusal() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let p = Proxy::start(&config(t)).await;
    let (mut c, mut reference) = loaded(&p).await;
    // Writes over several shards (each one XA transaction), the same on the reference.
    for w in [
        "UPDATE users SET score = score + 1 WHERE score IS NOT NULL AND id > 500",
        "DELETE FROM orders WHERE status = 'void' AND amount < 20",
        "INSERT INTO users (id, name, country, score) VALUES (700, 'n700', 'de', 5), (701, 'n701', 'fr', 6), (702, 'n702', NULL, 7), (703, 'n703', 'us', 8)",
        "INSERT INTO countries VALUES ('zz', 'Country zz', 'west')",
    ] {
        let before = c.affected_rows();
        c.query_drop(w).await.unwrap_or_else(|e| panic!("{w}: {e}"));
        let got = c.affected_rows();
        reference.query_drop(w).await.unwrap();
        assert_eq!(got, reference.affected_rows(), "{w}: affected rows (before: {before})");
    }
    let mut failures = Vec::new();
    let corpus = corpus();
    for sql in &corpus {
        let want = rows_of(&mut reference, sql)
            .await
            .unwrap_or_else(|e| panic!("reference: {sql}: {e}"));
        let got = match rows_of(&mut c, sql).await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{sql}: {e}"));
                continue;
            }
        };
        let ordered = sql.contains("ORDER BY");
        let (got, want) = if ordered {
            (got, want)
        } else {
            (sorted(got), sorted(want))
        };
        if got != want {
            failures.push(format!(
                "{sql}:\n  got  {:?}\n  want {:?}",
                got.iter().take(5).collect::<Vec<_>>(),
                want.iter().take(5).collect::<Vec<_>>()
            ));
        }
    }
    for sql in REFUSED {
        match c.query_drop(*sql).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1235 && !e.message.is_empty() => {}
            other => failures.push(format!("{sql}: expected a 1235 refusal, got {other:?}")),
        }
    }
    assert!(corpus.len() >= 60, "{} queries", corpus.len());
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        corpus.len() + REFUSED.len(),
        failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
    );
    // Prepared statements route by their parameters.
    for id in [1i64, 42, 333, 600] {
        let got: Option<String> = c
            .exec_first("SELECT name FROM users WHERE id = ?", (id,))
            .await
            .unwrap();
        let want: Option<String> = reference
            .exec_first("SELECT name FROM users WHERE id = ?", (id,))
            .await
            .unwrap();
        assert_eq!(got, want, "id {id}");
    }
    // A transaction over two shards (XA), rolled back: nothing of it stays.
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE users SET score = 1000 WHERE id = 1")
        .await
        .unwrap();
    let inside: Option<i64> = c.query_first("SELECT score FROM users WHERE id = 1").await.unwrap();
    assert_eq!(inside, Some(1000));
    let other_shard = (2..100)
        .find(|k| {
            let map = p.shared.runtime.load().config.map.clone();
            map.locate("users", &k.to_string()).unwrap().0.shard != map.locate("users", "1").unwrap().0.shard
        })
        .unwrap();
    c.query_drop(format!("UPDATE users SET score = 1000 WHERE id = {other_shard}"))
        .await
        .unwrap();
    c.query_drop("ROLLBACK").await.unwrap();
    for id in [1, other_shard] {
        let after: Option<Option<i64>> = c
            .query_first(format!("SELECT score FROM users WHERE id = {id}"))
            .await
            .unwrap();
        let before: Option<Option<i64>> = reference
            .query_first(format!("SELECT score FROM users WHERE id = {id}"))
            .await
            .unwrap();
        assert_eq!(after, before, "rolled back on both shards");
    }
}

/// While a partition moves, a shard may hold a copy of rows it does not serve; the MySQL front
/// end cannot leave the copy out of a statement over several shards, so it refuses such
/// statements (1235) rather than read rows twice. Statements on one shard run.
#[tokio::test]
async fn a_moving_partition_refuses_statements_over_several_shards() {
    let _g = LOCK.lock().await;
    let t = tokio::task::spawn_blocking(topo).await.unwrap();
    let assignment = r#"assignment = { s0 = "0-20", s1 = "21-41", s2 = "42-63" }"#;
    assert!(MAP.contains(assignment));
    let moving = MAP.replacen(
        assignment,
        &format!("{assignment}\nstates = {{ \"5\" = \"moving\" }}"),
        1,
    );
    let p = Proxy::start(&config_with(t, &moving)).await;
    let mut c = crate::mysql::connect(&p).await;
    for sql in [
        "SELECT count(*) FROM users",
        "UPDATE users SET score = 1 WHERE score = 2",
    ] {
        match c.query_drop(sql).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1235 && e.message.contains("is moving") => {}
            other => panic!("{sql}: {other:?}"),
        }
    }
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
}
