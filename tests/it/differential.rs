//! The differential test: the same data loaded through shardwire into three shards and directly
//! into one reference PostgreSQL; a corpus of queries must return the same rows both ways (in
//! order where the ORDER BY is total), and the statements shardwire cannot answer correctly must
//! be refused with 0A000 and a message.

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::bad_input::{Raw, message, startup};
use crate::harness::Proxy;
use crate::shards::{MAP, sharded};

const SCHEMA: &str = "
DROP TABLE IF EXISTS users, orders, countries, events;
CREATE TABLE users (id bigint PRIMARY KEY, name text NOT NULL, country text, score int);
CREATE TABLE orders (id bigint NOT NULL, user_id bigint NOT NULL, amount numeric(10,2) NOT NULL, status text NOT NULL, PRIMARY KEY (user_id, id));
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text NOT NULL);
CREATE TABLE events (id bigint PRIMARY KEY, kind text NOT NULL, weight float8)";

const USERS: i64 = 3000;
const ORDERS: i64 = 9000;
const COUNTRIES: [&str; 12] = ["ar", "br", "ca", "de", "es", "fr", "in", "it", "jp", "mx", "uk", "us"];

fn load_statements() -> Vec<String> {
    let mut out = Vec::new();
    let countries: Vec<String> = COUNTRIES
        .iter()
        .enumerate()
        .map(|(i, c)| format!("('{c}', 'country {c}', '{}')", ["north", "south", "east"][i % 3]))
        .collect();
    out.push(format!(
        "INSERT INTO countries (code, name, region) VALUES {}",
        countries.join(",")
    ));
    for chunk in (1..=USERS).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let country = if i % 23 == 0 {
                    "NULL".to_string()
                } else {
                    format!("'{}'", COUNTRIES[(i as usize * 7) % 12])
                };
                let score = if i % 17 == 0 {
                    "NULL".to_string()
                } else {
                    ((i * 37) % 101).to_string()
                };
                format!("({i}, 'user{:05}', {country}, {score})", (i * 7919) % 10007)
            })
            .collect();
        out.push(format!(
            "INSERT INTO users (id, name, country, score) VALUES {}",
            rows.join(",")
        ));
    }
    for chunk in (1..=ORDERS).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let status = ["new", "paid", "shipped", "void"][(i % 4) as usize];
                format!(
                    "({i}, {}, {}.{:02}, '{status}')",
                    (i * 7) % USERS + 1,
                    (i * 13) % 500,
                    i % 100
                )
            })
            .collect();
        out.push(format!(
            "INSERT INTO orders (id, user_id, amount, status) VALUES {}",
            rows.join(",")
        ));
    }
    let rows: Vec<String> = (0..3000)
        .map(|i| {
            format!(
                "({i}, 'kind{}', {})",
                i % 5,
                if i % 9 == 0 {
                    "NULL".into()
                } else {
                    format!("{}.5", i % 50)
                }
            )
        })
        .collect();
    out.push(format!(
        "INSERT INTO events (id, kind, weight) VALUES {}",
        rows.join(",")
    ));
    out
}

/// Read queries. Every ORDER BY is total, so those results compare in order.
fn read_corpus() -> Vec<String> {
    let mut q: Vec<String> = Vec::new();
    // Point lookups on the key, on both tables of the group.
    for k in [1, 2, 17, 42, 99, 500, 1234, 2999, 3000, 4000] {
        q.push(format!("SELECT id, name, country, score FROM users WHERE id = {k}"));
        q.push(format!(
            "SELECT id, amount, status FROM orders WHERE user_id = {k} ORDER BY id"
        ));
    }
    // IN lists, OR, AND.
    for list in [
        "1, 2, 3",
        "10, 20, 30, 40, 50, 60",
        "7",
        "2998, 2999, 3000, 3001",
        "5, 5, 5",
    ] {
        q.push(format!("SELECT id, name FROM users WHERE id IN ({list}) ORDER BY id"));
        q.push(format!(
            "SELECT user_id, count(*) FROM orders WHERE user_id IN ({list}) GROUP BY user_id ORDER BY user_id"
        ));
    }
    q.push("SELECT id FROM users WHERE id = 3 OR id = 300 ORDER BY id".into());
    q.push("SELECT id FROM users WHERE (id = 3 OR id = 300) AND score > 10 ORDER BY id".into());
    q.push("SELECT id FROM users WHERE id = 3 AND id = 4".into());
    q.push("SELECT id, score FROM users WHERE id = 8 AND score IS NOT NULL".into());
    // Ranges (scatter).
    for (a, b) in [(1, 50), (100, 180), (2900, 3100), (1500, 1500)] {
        q.push(format!(
            "SELECT id, name FROM users WHERE id BETWEEN {a} AND {b} ORDER BY id"
        ));
        q.push(format!(
            "SELECT id, kind FROM events WHERE id >= {a} AND id < {b} ORDER BY id"
        ));
    }
    q.push("SELECT id, kind FROM events WHERE id = 1500".into());
    q.push("SELECT id, kind FROM events WHERE id IN (5, 1005, 2005) ORDER BY id".into());
    // ORDER BY / LIMIT / OFFSET across shards.
    for (order, lim) in [
        ("id", "LIMIT 10"),
        ("id DESC", "LIMIT 10"),
        ("id", "LIMIT 5 OFFSET 100"),
        ("name, id", "LIMIT 20"),
        ("name DESC, id", "LIMIT 7 OFFSET 3"),
        ("score, id", "LIMIT 25"),
        ("score DESC, id", "LIMIT 25"),
        ("score NULLS FIRST, id", "LIMIT 30"),
        ("score DESC NULLS LAST, id DESC", "LIMIT 30"),
        ("country, score DESC, id", "LIMIT 40 OFFSET 10"),
        ("country NULLS FIRST, id", "LIMIT 15"),
        ("id", "OFFSET 2990"),
        ("id", "LIMIT 0"),
        ("score, name", ""),
    ] {
        q.push(format!(
            "SELECT id, name, country, score FROM users ORDER BY {order} {lim}"
        ));
    }
    q.push("SELECT id FROM users ORDER BY score DESC NULLS LAST, id LIMIT 10".into());
    q.push("SELECT name FROM users ORDER BY id LIMIT 10".into());
    q.push("SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, id LIMIT 25".into());
    q.push(
        "SELECT user_id, id, amount FROM orders WHERE status = 'paid' ORDER BY amount, user_id, id LIMIT 10 OFFSET 50"
            .into(),
    );
    q.push("SELECT id, weight FROM events ORDER BY weight DESC NULLS FIRST, id LIMIT 20".into());
    q.push("SELECT id, weight FROM events ORDER BY weight, id LIMIT 20".into());
    // Aggregates without GROUP BY.
    for a in [
        "count(*)",
        "count(score)",
        "sum(score)",
        "min(score)",
        "max(score)",
        "avg(score)",
        "min(name)",
        "max(name)",
        "count(*), sum(score), avg(score)",
        "min(id), max(id), count(country)",
    ] {
        q.push(format!("SELECT {a} FROM users"));
        q.push(format!("SELECT {a} FROM users WHERE id > 1000"));
    }
    for a in ["sum(amount)", "avg(amount)", "min(amount)", "max(amount)", "count(*)"] {
        q.push(format!("SELECT {a} FROM orders"));
        q.push(format!("SELECT {a} FROM orders WHERE status = 'void'"));
    }
    q.push("SELECT sum(weight), avg(weight), count(weight) FROM events".into());
    // Column names of merged aggregates: an average is asked of the shards as a sum and a count.
    q.push("SELECT avg(score) AS mean, AVG(score), avg(score) AS \"Mixed\" FROM users".into());
    q.push("SELECT country, avg(score) AS mean FROM users GROUP BY country ORDER BY country".into());
    q.push("SELECT count(*) FROM users WHERE id < 0".into());
    q.push("SELECT sum(score), avg(score), max(score) FROM users WHERE id < 0".into());
    // GROUP BY, HAVING.
    q.push("SELECT country, count(*) FROM users GROUP BY country ORDER BY country NULLS FIRST".into());
    q.push("SELECT country, count(*), sum(score), avg(score), min(score), max(score) FROM users GROUP BY country ORDER BY country".into());
    q.push("SELECT country, count(*) AS n FROM users GROUP BY country ORDER BY n DESC, country LIMIT 5".into());
    q.push("SELECT status, count(*), sum(amount), avg(amount) FROM orders GROUP BY status ORDER BY status".into());
    q.push("SELECT status, max(amount), min(amount) FROM orders WHERE amount > 100 GROUP BY status ORDER BY 1".into());
    q.push(
        "SELECT country, score, count(*) FROM users WHERE score < 5 GROUP BY country, score ORDER BY country, score"
            .into(),
    );
    q.push("SELECT kind, count(*), avg(weight) FROM events GROUP BY kind ORDER BY kind".into());
    q.push("SELECT country, count(*) FROM users GROUP BY country".into());
    // HAVING merged across shards (groups not on the key).
    q.push("SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > 240 ORDER BY country".into());
    q.push("SELECT country, sum(score) FROM users GROUP BY country HAVING sum(score) >= 12000 OR country IS NULL ORDER BY country NULLS FIRST".into());
    q.push("SELECT country FROM users GROUP BY country HAVING avg(score) > 50 ORDER BY country".into());
    q.push("SELECT status, count(*) FROM orders GROUP BY status HAVING max(amount) > 499 AND min(amount) < 1 ORDER BY status".into());
    q.push("SELECT country, count(*) AS n FROM users GROUP BY country HAVING NOT count(*) < 250 ORDER BY n DESC, country LIMIT 3".into());
    q.push("SELECT count(*) FROM users HAVING count(*) > 10".into());
    q.push("SELECT score, count(*) FROM users WHERE score < 10 GROUP BY score HAVING score <> 3 AND count(*) > 25 ORDER BY score".into());
    q.push(
        "SELECT user_id, count(*), sum(amount) FROM orders GROUP BY user_id HAVING count(*) > 3 ORDER BY user_id"
            .into(),
    );
    q.push("SELECT user_id, sum(amount) AS total FROM orders GROUP BY user_id HAVING sum(amount) > 1200 ORDER BY total DESC, user_id LIMIT 10".into());
    q.push("SELECT id, count(*) FROM users GROUP BY id HAVING id < 20 ORDER BY id".into());
    q.push(
        "SELECT user_id, max(id) FROM orders WHERE user_id BETWEEN 100 AND 200 GROUP BY user_id ORDER BY user_id"
            .into(),
    );
    // DISTINCT.
    q.push("SELECT DISTINCT country FROM users ORDER BY country".into());
    q.push("SELECT DISTINCT status FROM orders".into());
    q.push("SELECT DISTINCT country, score FROM users WHERE score > 95 ORDER BY country, score".into());
    q.push("SELECT DISTINCT kind FROM events ORDER BY kind DESC".into());
    q.push("SELECT DISTINCT score FROM users ORDER BY score NULLS FIRST LIMIT 5".into());
    // count(DISTINCT x) across shards: the shards group by x too, the merge counts values once.
    q.push("SELECT count(DISTINCT country) FROM users".into());
    q.push("SELECT count(DISTINCT score), count(*), sum(score), min(score), max(score), avg(score) FROM users".into());
    q.push(
        "SELECT country, count(DISTINCT score) AS scores FROM users GROUP BY country ORDER BY country NULLS FIRST"
            .into(),
    );
    q.push("SELECT status, count(DISTINCT amount), count(DISTINCT amount) FROM orders GROUP BY status ORDER BY 2 DESC, status".into());
    q.push("SELECT count(DISTINCT kind) FROM events WHERE weight > 1e9".into());
    q.push("SELECT count(DISTINCT user_id) FROM orders WHERE status = 'new'".into());
    q.push("SELECT score, count(DISTINCT country) FROM users WHERE score < 4 GROUP BY score ORDER BY count(DISTINCT country) DESC, score LIMIT 3".into());
    // UNION and UNION ALL over the group's tables: every shard runs the whole statement.
    q.push(
        "SELECT id FROM users WHERE score = 7 UNION ALL SELECT user_id FROM orders WHERE amount > 499.5 ORDER BY 1"
            .into(),
    );
    q.push("SELECT country FROM users UNION SELECT status FROM orders ORDER BY country NULLS FIRST".into());
    q.push("SELECT id AS n, name FROM users WHERE id < 5 UNION ALL SELECT id, status FROM orders WHERE user_id = 3 ORDER BY n DESC, name LIMIT 4 OFFSET 1".into());
    q.push("SELECT user_id, status FROM orders WHERE user_id = 10 UNION SELECT id, country FROM users WHERE id = 10 ORDER BY 1, 2".into());
    q.push("SELECT score FROM users WHERE score > 97 UNION SELECT score FROM users WHERE score < 2".into());
    q.push("SELECT u.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE o.amount > 499.8 UNION ALL SELECT id, 0 FROM users WHERE id = 1 ORDER BY 1, 2".into());
    q.push("SELECT DISTINCT country FROM users UNION SELECT DISTINCT status FROM orders".into());
    // Co-located joins.
    q.push("SELECT u.id, u.name, o.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 42 ORDER BY o.id".into());
    q.push(
        "SELECT u.id, o.id FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id IN (1, 2, 3) ORDER BY u.id, o.id"
            .into(),
    );
    q.push("SELECT u.id, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.id < 40 GROUP BY u.id ORDER BY u.id".into());
    q.push("SELECT u.country, count(*) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.country ORDER BY u.country".into());
    q.push("SELECT u.name, o.amount FROM users u JOIN orders o ON u.id = o.user_id ORDER BY o.amount DESC, o.user_id, o.id LIMIT 15".into());
    q.push("SELECT count(*) FROM users u JOIN orders o ON o.user_id = u.id WHERE o.status = 'new'".into());
    q.push("SELECT u.id, sum(o.amount) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.id HAVING sum(o.amount) > 1500 ORDER BY u.id".into());
    q.push("SELECT u.id, o.id FROM users u, orders o WHERE o.user_id = u.id AND u.id = 77 ORDER BY o.id".into());
    // Outer joins: a reference table kept beside a sharded one, on the one shard the key names.
    q.push("SELECT c.code, u.id FROM countries c LEFT JOIN users u ON u.country = c.code WHERE u.id = 5".into());
    q.push(
        "SELECT u.id, c.name FROM users u LEFT JOIN countries c ON c.code = u.country WHERE u.id < 30 ORDER BY u.id"
            .into(),
    );
    // Reference tables, alone and joined.
    q.push("SELECT code, name, region FROM countries ORDER BY code".into());
    q.push("SELECT count(*) FROM countries".into());
    q.push("SELECT u.id, c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.id = 5".into());
    q.push("SELECT c.region, count(*) FROM users u JOIN countries c ON c.code = u.country GROUP BY c.region ORDER BY c.region".into());
    q.push("SELECT u.id, c.region FROM users u JOIN countries c ON c.code = u.country ORDER BY u.id LIMIT 12".into());
    q.push("SELECT c.code, count(o.id) FROM orders o JOIN users u ON u.id = o.user_id JOIN countries c ON c.code = u.country WHERE u.id IN (10, 11, 12) GROUP BY c.code ORDER BY c.code".into());
    q.push("SELECT region, count(*) FROM countries GROUP BY region ORDER BY region".into());
    // Scatters planned from the text with its literals taken out, the literals put back for the
    // shards: quotes inside strings, exponents, LIMIT with OFFSET; and literals that shape the
    // result (a constant column, an ordinal, an expression in ORDER BY), planned from the text.
    q.push("SELECT id, name FROM users WHERE name <> 'o''k' AND score > 1e-1 ORDER BY id LIMIT 4 OFFSET 2".into());
    q.push(
        "SELECT id, kind FROM events WHERE kind IN ('kind1', 'kind3') AND weight < 2.5e+1 ORDER BY id DESC LIMIT 6"
            .into(),
    );
    q.push("SELECT 'tag' AS t, 7 AS n, id FROM users WHERE id > 2990 ORDER BY id".into());
    q.push("SELECT status, count(*) FROM orders WHERE amount > 250 GROUP BY 1 ORDER BY 1".into());
    q.push("SELECT id FROM users WHERE id > 2900 ORDER BY id % 7, id LIMIT 5".into());
    // WITH queries whose parts all meet on one shard.
    for k in [3, 42, 2999] {
        q.push(format!(
            "WITH mine AS (SELECT id, amount, status FROM orders WHERE user_id = {k}) \
             SELECT u.name, m.id, m.amount FROM users u JOIN mine m ON true WHERE u.id = {k} ORDER BY m.id"
        ));
        q.push(format!(
            "WITH big AS (SELECT user_id, sum(amount) AS total FROM orders WHERE user_id = {k} GROUP BY user_id), \
             c AS (SELECT code, region FROM countries) \
             SELECT b.total, c.region FROM big b, users u JOIN c ON c.code = u.country WHERE u.id = {k}"
        ));
    }
    // Co-located WITH queries: each keeps a shard key's rows together, so every shard answers
    // the whole statement for its own keys and the main query merges as over the tables.
    for sql in [
        "WITH a AS (SELECT * FROM orders) SELECT * FROM a",
        "WITH x AS (SELECT id FROM users) SELECT count(*) FROM x",
        "WITH a AS (SELECT id FROM users WHERE id = 1) SELECT o.id FROM orders o JOIN a ON a.id = o.user_id ORDER BY o.id",
        "WITH t AS (SELECT user_id, sum(amount) AS spent, count(*) AS n FROM orders GROUP BY user_id) \
         SELECT u.name, t.spent, t.n FROM users u JOIN t ON t.user_id = u.id ORDER BY t.spent DESC, u.id LIMIT 10",
        "WITH t AS (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) SELECT count(*), max(n), min(n), sum(n) FROM t",
        "WITH t AS (SELECT user_id, count(*) AS n FROM orders GROUP BY user_id) SELECT n, count(*) FROM t GROUP BY n ORDER BY n",
        "WITH t AS (SELECT user_id, avg(amount) AS mean FROM orders GROUP BY user_id) SELECT round(avg(mean), 6) FROM t",
        "WITH paid AS (SELECT user_id, amount FROM orders WHERE status = 'paid'), \
         big AS (SELECT id, name FROM users WHERE score > 50) \
         SELECT b.id, b.name, sum(p.amount) FROM big b JOIN paid p ON p.user_id = b.id GROUP BY b.id, b.name ORDER BY 3 DESC, 1 LIMIT 7",
        "WITH t AS (SELECT * FROM orders WHERE user_id IN (5, 6, 7)) SELECT u.id, t.id, t.amount FROM users u JOIN t ON t.user_id = u.id ORDER BY 1, 2",
        "WITH t AS (SELECT * FROM orders WHERE user_id = 42) SELECT u.id, t.id FROM users u LEFT JOIN t ON t.user_id = u.id WHERE u.id BETWEEN 40 AND 44 ORDER BY 1, 2",
        "WITH t AS (SELECT user_id, max(amount) AS top FROM orders GROUP BY user_id HAVING count(*) > 3) \
         SELECT count(*) FROM t WHERE top > 400",
        "WITH r AS (SELECT id, score, rank() OVER (PARTITION BY id ORDER BY score) AS k FROM users) SELECT count(*) FROM r WHERE k = 1",
        "WITH t (uid, total) AS (SELECT user_id, sum(amount) FROM orders GROUP BY user_id) \
         SELECT u.country, sum(t.total) FROM users u JOIN t ON t.uid = u.id GROUP BY u.country ORDER BY u.country NULLS LAST",
        "WITH d AS (SELECT DISTINCT user_id, status FROM orders) SELECT status, count(*) FROM d GROUP BY status ORDER BY status",
        "WITH t AS (SELECT user_id, sum(amount) AS s FROM orders GROUP BY user_id) SELECT * FROM t WHERE user_id = 77",
        "WITH t AS (SELECT user_id, sum(amount) AS s FROM orders GROUP BY user_id) \
         SELECT u.id FROM users u WHERE EXISTS (SELECT 1 FROM t WHERE t.user_id = u.id AND t.s > 1000) ORDER BY u.id LIMIT 20",
        "WITH c AS (SELECT code, region FROM countries), t AS (SELECT id, country FROM users) \
         SELECT c.region, count(*) FROM t JOIN c ON c.code = t.country GROUP BY c.region ORDER BY c.region",
    ] {
        q.push(sql.into());
    }
    // Subqueries in the select list, correlated on the shard key: each shard answers its rows'.
    for sql in [
        "SELECT u.id, (SELECT count(*) FROM orders o WHERE o.user_id = u.id) FROM users u",
        "SELECT u.id, u.name, (SELECT sum(amount) FROM orders o WHERE o.user_id = u.id) AS spent FROM users u \
         WHERE u.id < 50 ORDER BY spent DESC NULLS LAST, u.id LIMIT 10",
        "SELECT u.country, sum((SELECT count(*) FROM orders o WHERE o.user_id = u.id)) AS n FROM users u GROUP BY u.country ORDER BY 1 NULLS FIRST",
        "SELECT u.id, EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > 400) AS big FROM users u \
         WHERE u.id BETWEEN 100 AND 140 ORDER BY u.id",
        "SELECT u.id, (SELECT max(o.amount) FROM orders o WHERE o.user_id = u.id AND o.status = 'paid') FROM users u WHERE u.id IN (3, 30, 300, 3000)",
        "SELECT max((SELECT count(*) FROM orders o WHERE o.user_id = u.id)) FROM users u",
        "SELECT u.id, (SELECT code FROM countries c WHERE c.code = u.country) FROM users u WHERE u.id < 20 ORDER BY u.id",
    ] {
        q.push(sql.into());
    }
    // INTERSECT / EXCEPT with the shard key at one position in every branch.
    for sql in [
        "SELECT id FROM users INTERSECT SELECT user_id FROM orders",
        "SELECT id FROM users EXCEPT SELECT user_id FROM orders",
        "SELECT id FROM users WHERE score > 50 INTERSECT SELECT user_id FROM orders WHERE status = 'paid' ORDER BY 1 LIMIT 25",
        "SELECT user_id, status FROM orders WHERE amount > 300 EXCEPT ALL SELECT user_id, status FROM orders WHERE amount > 450 ORDER BY 1, 2",
        "SELECT id, country FROM users INTERSECT ALL SELECT id, country FROM users WHERE id % 3 = 0 EXCEPT SELECT id, country FROM users WHERE id % 2 = 0",
        "SELECT id FROM users WHERE id < 100 UNION SELECT user_id FROM orders WHERE amount > 490 EXCEPT SELECT id FROM users WHERE score < 20 ORDER BY 1",
    ] {
        q.push(sql.into());
    }
    // HAVING with expressions over aggregates, computed from the merged groups.
    for sql in [
        "SELECT country, count(*) FROM users GROUP BY country HAVING count(*) + 1 > 100 ORDER BY country NULLS FIRST",
        "SELECT status, sum(amount) FROM orders GROUP BY status HAVING sum(amount) / count(*) > 240 ORDER BY status",
        "SELECT country, avg(score) FROM users GROUP BY country HAVING round(avg(score), 1) >= 50 AND max(score) - min(score) > 90 ORDER BY 1 NULLS LAST",
        "SELECT user_id % 10 AS d, count(*) FROM orders GROUP BY 1 HAVING count(*) * 100 / 9000 > 9 ORDER BY 1",
        "SELECT status FROM orders GROUP BY status HAVING sum(amount) FILTER (WHERE amount > 400) > 2 * sum(amount) FILTER (WHERE amount < 100) ORDER BY 1",
        "SELECT country, count(*) FROM users GROUP BY country HAVING count(DISTINCT score) > 1 ORDER BY 1 NULLS LAST",
        "SELECT country, count(DISTINCT score) AS s FROM users GROUP BY country HAVING count(DISTINCT score) > 25 ORDER BY 1 NULLS LAST",
        "SELECT user_id % 7 AS d, sum(amount) FROM orders GROUP BY 1 HAVING count(DISTINCT status) = 4 AND count(DISTINCT user_id) FILTER (WHERE amount > 100) > 300 ORDER BY 1",
        "SELECT count(*) FROM orders HAVING count(DISTINCT user_id) > 10",
        "SELECT status, sum(amount) / count(DISTINCT user_id) FROM orders GROUP BY status ORDER BY status",
        "SELECT round(count(*)::numeric / count(DISTINCT user_id), 3) AS per_user, count(DISTINCT status) * 10 FROM orders",
        "SELECT country, count(DISTINCT score) FILTER (WHERE score > 50) * 100 / count(*) AS pct FROM users GROUP BY 1 ORDER BY 1 NULLS FIRST",
    ] {
        q.push(sql.into());
    }
    // Several count(DISTINCT) at once, and count(DISTINCT) with FILTER.
    for sql in [
        "SELECT count(DISTINCT country), count(DISTINCT score) FROM users",
        "SELECT count(DISTINCT user_id) FILTER (WHERE amount > 5) FROM orders",
        "SELECT status, count(DISTINCT user_id), count(DISTINCT amount), count(*), sum(amount) FROM orders GROUP BY status ORDER BY status",
        "SELECT country, count(DISTINCT score) AS scores, count(DISTINCT name) AS names, max(score) FROM users GROUP BY country ORDER BY country NULLS FIRST",
        "SELECT status, count(DISTINCT user_id) FILTER (WHERE amount > 250) AS big, count(DISTINCT user_id) AS all_users FROM orders GROUP BY status ORDER BY status",
        "SELECT count(DISTINCT score) FILTER (WHERE country IN ('fr', 'de')), count(DISTINCT country) FILTER (WHERE score > 90), avg(score) FROM users",
        "SELECT count(DISTINCT status), count(DISTINCT user_id) FROM orders WHERE amount > 10000",
    ] {
        q.push(sql.into());
    }
    // Expressions over aggregates, computed from the merged aggregates with PostgreSQL's types.
    q.push("SELECT sum(score) + 1 FROM users".into());
    // FILTER: each shard aggregates its own rows that pass it.
    q.push("SELECT status, count(*) FILTER (WHERE amount > 250) AS big, sum(amount) FILTER (WHERE user_id < 100) AS few, avg(amount) FILTER (WHERE amount < 50) AS small FROM orders GROUP BY status ORDER BY status".into());
    q.push("SELECT count(*) FILTER (WHERE score > 50) * 100 / count(*) AS pct, max(score) FILTER (WHERE country = 'fr') FROM users".into());
    q.push(
        "SELECT country FROM users GROUP BY country HAVING count(*) FILTER (WHERE score > 90) > 5 ORDER BY country"
            .into(),
    );
    // Shards without a matching row would divide by zero computing it themselves.
    q.push(
        "SELECT count(*) / count(*) AS one, sum(score) * 1.0 / count(*) AS mean FROM users WHERE id = 5 OR score = -1"
            .into(),
    );
    q.push("SELECT status, sum(amount) / count(*) AS mean, round(avg(amount), 2) AS r, max(amount) - min(amount) AS spread FROM orders GROUP BY status ORDER BY status".into());
    q.push("SELECT country, count(*) * 100 / 3000 AS pct_int, sum(score) / count(*) AS int_div FROM users GROUP BY country ORDER BY country".into());
    q.push("SELECT sum(amount)::float8 / count(*) AS f, round(sum(amount) * 1.5, 1) AS m, -max(score) AS neg FROM orders, users WHERE users.id = orders.user_id".into());
    q.push("SELECT kind, round(avg(weight)) AS r0, (sum(weight) + 1) / count(weight) AS per FROM events GROUP BY kind ORDER BY r0 DESC, kind".into());
    q.push("SELECT round(sum(amount) / count(*), 3), count(*)::float8 / 7 FROM orders WHERE id < 0".into());
    q.push("SELECT round(sum(amount) / count(*), 3) AS r3, (count(*) + 2)::float8 / 7 AS f FROM orders".into());
    // DISTINCT ON: the first row of each key over every shard.
    q.push("SELECT DISTINCT ON (status) status, id, amount FROM orders ORDER BY status, amount DESC, id".into());
    q.push(
        "SELECT DISTINCT ON (country) country, id, score FROM users ORDER BY country, score, id LIMIT 5 OFFSET 2"
            .into(),
    );
    q.push("SELECT DISTINCT ON (kind) kind, weight, id FROM events ORDER BY kind DESC, weight NULLS FIRST, id".into());
    // FETCH FIRST, as LIMIT.
    q.push("SELECT id, name FROM users ORDER BY id OFFSET 7 ROWS FETCH FIRST 12 ROWS ONLY".into());
    q.push("SELECT id FROM users WHERE score > 90 ORDER BY score DESC, id FETCH FIRST ROW ONLY".into());
    q.push("SELECT status, count(*) FROM orders GROUP BY status ORDER BY status FETCH NEXT 2 ROWS ONLY".into());
    // Window functions partitioned by the shard key: each partition is on one shard.
    q.push(
        "SELECT user_id, id, row_number() OVER (PARTITION BY user_id ORDER BY amount DESC, id) AS r FROM orders \
         WHERE user_id < 30 ORDER BY user_id, r"
            .into(),
    );
    q.push(
        "SELECT user_id, id, sum(amount) OVER (PARTITION BY user_id) AS total, count(*) OVER (PARTITION BY user_id, status) \
         FROM orders WHERE amount > 480 ORDER BY user_id, id"
            .into(),
    );
    // Subqueries each shard answers for its own rows: correlated on the key, or `key IN (SELECT key ...)`.
    q.push(
        "SELECT u.id, u.name FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > 400) ORDER BY u.id LIMIT 15"
            .into(),
    );
    q.push("SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.status = 'void')".into());
    q.push("SELECT id FROM users WHERE id IN (SELECT user_id FROM orders WHERE amount > 450) ORDER BY id".into());
    q.push(
        "SELECT id FROM users WHERE id IN (SELECT user_id FROM orders GROUP BY user_id HAVING count(*) > 3) AND score > 50 ORDER BY id"
            .into(),
    );
    q.push(
        "SELECT o.id, o.amount FROM orders o WHERE o.amount > (SELECT avg(o2.amount) FROM orders o2 WHERE o2.user_id = o.user_id) \
         AND o.user_id < 40 ORDER BY o.id"
            .into(),
    );
    q.push(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4) \
         SELECT n.i, o.id FROM n JOIN orders o ON o.user_id = 77 AND o.id % 5 = n.i ORDER BY n.i, o.id"
            .into(),
    );
    // Parts the shards cannot answer alone run first, and their rows stand in the statement.
    for sql in [
        // Uncorrelated subqueries over sharded tables.
        "SELECT * FROM users WHERE score IN (SELECT user_id FROM orders)",
        "SELECT * FROM users WHERE id IN (SELECT user_id FROM orders ORDER BY amount DESC, user_id, id LIMIT 5) ORDER BY id",
        "SELECT * FROM users WHERE id NOT IN (SELECT user_id FROM orders)",
        "SELECT count(*) FROM users WHERE score NOT IN (SELECT score FROM users WHERE id < 50)",
        "SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.amount > 499) ORDER BY id LIMIT 5",
        "SELECT count(*) FROM users u WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.amount > 1000)",
        "SELECT id, score FROM users WHERE score > (SELECT avg(score) FROM users) + 45 ORDER BY id",
        "SELECT id, (SELECT max(amount) FROM orders) AS top, (SELECT count(*) FROM events) FROM users WHERE id < 4 ORDER BY id",
        "SELECT user_id, amount FROM orders WHERE amount = (SELECT max(amount) FROM orders) ORDER BY user_id, id",
        "SELECT id FROM users WHERE score = ANY (SELECT score FROM users WHERE id BETWEEN 10 AND 12) ORDER BY id LIMIT 20",
        "SELECT id FROM events WHERE id IN (SELECT user_id FROM orders WHERE amount > 495) ORDER BY id",
        "SELECT u.id FROM users u WHERE u.score > (SELECT avg(weight) FROM events) AND EXISTS \
         (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > 450) ORDER BY u.id",
        "SELECT country, count(*) FROM users WHERE id IN (SELECT user_id FROM orders WHERE status = 'void' AND amount > 480) \
         GROUP BY country ORDER BY country NULLS FIRST",
        // WITH queries and derived tables neither co-located nor on one shard.
        "WITH t AS (SELECT status, count(*) AS n FROM orders GROUP BY status) SELECT sum(n) FROM t",
        "WITH t AS (SELECT * FROM orders ORDER BY amount, user_id, id LIMIT 5) SELECT * FROM t ORDER BY user_id, id",
        "WITH top AS (SELECT user_id, sum(amount) AS s FROM orders GROUP BY user_id ORDER BY s DESC, user_id LIMIT 3) \
         SELECT u.id, u.name, top.s FROM users u JOIN top ON top.user_id = u.id ORDER BY top.s DESC, u.id",
        "SELECT s.status, s.n, s.n * 100 / (SELECT count(*) FROM orders) AS pct FROM \
         (SELECT status, count(*) AS n FROM orders GROUP BY status) s ORDER BY s.status",
        "SELECT k.kind, k.total, c.n FROM (SELECT kind, sum(weight) AS total FROM events GROUP BY kind) k \
         CROSS JOIN (SELECT count(*) AS n FROM users) c ORDER BY k.kind",
        // Set operations over different groups, aggregates and reference tables.
        "SELECT count(*) FROM users UNION ALL SELECT count(*) FROM orders",
        "SELECT country FROM users INTERSECT SELECT status FROM orders",
        "SELECT code FROM countries UNION ALL SELECT country FROM users",
        "SELECT id FROM users UNION ALL SELECT id FROM events",
        "SELECT id FROM users WHERE id < 20 EXCEPT SELECT id FROM events WHERE id % 3 = 0 ORDER BY id",
        "SELECT 'users' AS t, count(*) AS n FROM users UNION ALL SELECT 'orders', count(*) FROM orders \
         UNION ALL SELECT 'events', count(*) FROM events ORDER BY n DESC",
        "SELECT country AS c FROM users WHERE score > 98 UNION SELECT code FROM countries WHERE region = 'east' ORDER BY c NULLS FIRST",
        // Whole tables read first: windows over every row, joins off the key or across groups,
        // outer joins keeping rows of reference tables or functions, what a merge cannot compute.
        "SELECT u.id, o.id FROM users u JOIN orders o ON o.id = u.id",
        "SELECT u.id, e.id FROM users u JOIN events e ON e.id = u.id",
        "SELECT sum(DISTINCT score) FROM users",
        "SELECT c.code, u.id FROM countries c LEFT JOIN users u ON u.country = c.code AND u.id < 3",
        "SELECT g, u.id FROM generate_series(1, 3) g LEFT JOIN users u ON u.id = g",
        "SELECT 'x' AS label, count(DISTINCT score) FROM users",
        "SELECT id, row_number() OVER (ORDER BY id) FROM users",
        "SELECT id FROM users ORDER BY rank() OVER (ORDER BY score), id LIMIT 3",
        "SELECT status, count(*), rank() OVER (PARTITION BY status ORDER BY count(*)) FROM orders GROUP BY status",
        "SELECT country FROM (SELECT DISTINCT ON (country) country, id FROM users) s ORDER BY country NULLS FIRST",
        "SELECT id, score, rank() OVER (ORDER BY score DESC NULLS LAST) FROM users WHERE id < 60 ORDER BY 3, id",
        "SELECT id, sum(score) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM users WHERE id > 2980 ORDER BY id",
        "SELECT country, avg(DISTINCT score) FROM users GROUP BY country ORDER BY 1 NULLS FIRST",
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY score) FROM users",
        "SELECT string_agg(code, ',' ORDER BY code) FROM countries c JOIN users u ON u.country = c.code WHERE u.id < 10",
        "SELECT e.kind, count(*) FROM events e JOIN users u ON u.id = e.id WHERE u.score > 90 GROUP BY e.kind ORDER BY 1",
        // Casts over aggregates apply to the merged value; a cast of the key is not the key.
        "SELECT sum(amount)::int FROM orders",
        "SELECT sum(amount / 7)::int, max(score)::numeric FROM orders o JOIN users u ON u.id = o.user_id",
        "SELECT max(score)::text, min(id)::text FROM users",
        "SELECT amount::int, count(*) FROM orders GROUP BY amount ORDER BY 1, 2 LIMIT 8",
        "SELECT id, score FROM users ORDER BY score::text, id LIMIT 7",
        "SELECT id AS score, score AS id FROM users ORDER BY id, score LIMIT 9",
        "SELECT count(*) FROM users WHERE id::text = '42'",
        // Aggregates the merge does not compute, HAVING without GROUP BY, WITH chains,
        // parenthesised joins: refused as written, answered by parts run first.
        "SELECT round(stddev_pop(score), 6), round(var_samp(score), 6) FROM users",
        "SELECT 1 AS one FROM users HAVING count(*) > 5",
        "SELECT 1 AS one FROM users HAVING count(*) > 500000",
        "WITH a AS (SELECT id FROM users WHERE score > 50), b AS (SELECT count(*) AS n FROM a) SELECT n FROM b",
        "SELECT u.id, o.id FROM (users u JOIN orders o ON o.user_id = u.id) WHERE u.id < 30 ORDER BY 1, 2",
    ] {
        q.push(sql.into());
    }
    q
}

/// Statements that must be refused with 0A000.
const REFUSED: &[&str] = &[
    "WITH users AS (SELECT 1 AS id) SELECT id FROM users",
    "UPDATE users SET id = id + 1 WHERE id = 5",
    "INSERT INTO users (name) VALUES ('nokey')",
];

/// Queries whose ORDER BY is not total but whose set of rows is: compared as sets.
const UNORDERED: &[&str] = &[
    "SELECT id FROM users ORDER BY score FETCH FIRST 3 ROWS WITH TIES",
    "SELECT id, score FROM users ORDER BY score DESC NULLS LAST FETCH FIRST 10 ROWS WITH TIES",
];

/// A cell of any type as text, decoded the way the merge decodes it.
struct Cell(Option<String>);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        use shardwire::exec::merge::Value;
        let v = shardwire::session::values::decode(ty.oid(), 1, Some(raw)).map_err(|e| e.to_string())?;
        Ok(Cell(Some(match v {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => shardwire::exec::merge::format_float(f),
            Value::Num(d) => d.to_string(),
            Value::Text(t) => String::from_utf8_lossy(&t).into_owned(),
            Value::Bool(b) => b.to_string(),
            Value::Null => return Ok(Cell(None)),
        })))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

type Rows = Vec<Vec<Option<String>>>;

/// The first row is the header: column names (and types, through the extended protocol), which
/// clients that read rows by name depend on as much as on the values.
async fn simple_rows(c: &Client, sql: &str) -> Result<Rows, tokio_postgres::Error> {
    let mut out = vec![Vec::new()];
    for m in c.simple_query(sql).await? {
        match m {
            SimpleQueryMessage::RowDescription(cols) if out.len() == 1 => {
                out[0] = cols.iter().map(|c| Some(c.name().to_owned())).collect();
            }
            SimpleQueryMessage::Row(r) => out.push((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => {}
        }
    }
    Ok(out)
}

async fn extended_rows(
    c: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Rows, tokio_postgres::Error> {
    let st = c.prepare(sql).await?;
    let header = st
        .columns()
        .iter()
        .map(|c| Some(format!("{}:{}", c.name(), c.type_())))
        .collect();
    let rows = c.query(&st, params).await?;
    Ok(std::iter::once(header)
        .chain(
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.get::<_, Cell>(i).0).collect()),
        )
        .collect())
}

/// A logged-in raw connection, to read what the simple protocol's RowDescription says.
async fn raw_session(port: u16, user: &str) -> Raw {
    let mut r = Raw::connect_port(port).await;
    r.send(&startup(user)).await;
    let m = r.messages_until(b"Z").await;
    assert_eq!(m.last().map(|(t, _)| *t), Some(b'Z'), "login: {m:?}");
    r
}

/// Each column's name, type OID, type modifier and format code in the RowDescription a simple
/// Query gets (psycopg and other text-mode clients pick their parsers by the OID); `None` when
/// the statement failed or described no rows.
async fn simple_header(r: &mut Raw, sql: &str) -> Option<Vec<(String, u32, i32, i16)>> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    r.send(&message(b'Q', &body)).await;
    let m = r.messages_until(b"Z").await;
    if m.iter().any(|(t, _)| *t == b'E') {
        return None;
    }
    let (_, d) = m.iter().find(|(t, _)| *t == b'T')?;
    let n = i16::from_be_bytes([d[0], d[1]]) as usize;
    let mut at = 2;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let end = at + d[at..].iter().position(|&b| b == 0)?;
        let name = String::from_utf8_lossy(&d[at..end]).into_owned();
        at = end + 1 + 6;
        let oid = u32::from_be_bytes(d[at..at + 4].try_into().ok()?);
        let typmod = i32::from_be_bytes(d[at + 6..at + 10].try_into().ok()?);
        let format = i16::from_be_bytes(d[at + 10..at + 12].try_into().ok()?);
        at += 12;
        cols.push((name, oid, typmod, format));
    }
    Some(cols)
}

/// Column names and types as a prepared statement's description gives them.
async fn described(c: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(c.prepare(sql)
        .await?
        .columns()
        .iter()
        .map(|c| format!("{}:{}", c.name(), c.type_()))
        .collect())
}

fn same(sql: &str, mut got: Rows, mut want: Rows) -> Result<(), String> {
    if !sql.to_ascii_uppercase().contains("ORDER BY") {
        // The header row stays first.
        got.get_mut(1..).map(<[_]>::sort);
        want.get_mut(1..).map(<[_]>::sort);
    }
    if got == want {
        Ok(())
    } else {
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        Err(format!(
            "{sql}\n  shardwire: {} rows, reference: {} rows; first difference at row {first:?}: {:?} vs {:?}",
            got.len(),
            want.len(),
            first.and_then(|i| got.get(i)),
            first.and_then(|i| want.get(i)),
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_rows_as_one_database() {
    let (topo, _guard) = sharded().await;
    let proxy = Proxy::start(&topo.config(MAP)).await;
    let sw = proxy.app().await;
    let reference = topo.reference().await;
    for s in SCHEMA.split(';') {
        sw.batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("through shardwire: {s}: {e:?}"));
        reference.batch_execute(s).await.unwrap();
    }
    for s in load_statements() {
        sw.batch_execute(&s)
            .await
            .unwrap_or_else(|e| panic!("load through shardwire: {e:?}"));
        reference.batch_execute(&s).await.unwrap();
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut headers = 0;
    let mut sw_raw = raw_session(proxy.port(), "trusted").await;
    let mut ref_raw = raw_session(topo.reference_port, "postgres").await;
    // Simple protocol, text results.
    for sql in read_corpus() {
        checked += 1;
        let want = simple_rows(&reference, &sql)
            .await
            .unwrap_or_else(|e| panic!("reference: {sql}: {e}"));
        match simple_rows(&sw, &sql).await {
            Ok(got) => {
                if let Err(e) = same(&sql, got, want) {
                    failures.push(e);
                }
                // The same columns, named and typed as one database gives them, in both protocols.
                let (got, want) = (
                    simple_header(&mut sw_raw, &sql).await,
                    simple_header(&mut ref_raw, &sql).await,
                );
                if got != want {
                    failures.push(format!("{sql}\n  simple RowDescription: {got:?} vs {want:?}"));
                }
                headers += usize::from(got.is_some());
                match (described(&sw, &sql).await, described(&reference, &sql).await) {
                    (Ok(got), Ok(want)) if got == want => {}
                    (got, want) => failures.push(format!("{sql}\n  described: {got:?} vs {want:?}")),
                }
            }
            Err(e) => failures.push(format!("{sql}\n  shardwire error: {e:?}")),
        }
    }
    for sql in UNORDERED {
        checked += 1;
        let sorted = |mut r: Rows| {
            r.get_mut(1..).map(<[_]>::sort);
            r
        };
        let want = sorted(simple_rows(&reference, sql).await.unwrap());
        match simple_rows(&sw, sql).await {
            Ok(got) => {
                if got.len() != want.len() || sorted(got) != want {
                    failures.push(format!("{sql}\n  rows differ as sets"));
                }
            }
            Err(e) => failures.push(format!("{sql}\n  shardwire error: {e:?}")),
        }
    }
    // DISTINCT ON without ORDER BY: any row of each group will do, as on one database.
    {
        checked += 1;
        let sql = "SELECT DISTINCT ON (country) country, id FROM users";
        let countries = simple_rows(&reference, "SELECT DISTINCT country FROM users")
            .await
            .unwrap();
        match simple_rows(&sw, sql).await {
            Ok(got) => {
                let mut seen: Vec<_> = got[1..].iter().map(|r| r[0].clone()).collect();
                seen.sort();
                let mut want: Vec<_> = countries[1..].iter().map(|r| r[0].clone()).collect();
                want.sort();
                let country_of = |id: &str| {
                    let i: i64 = id.parse().unwrap_or(0);
                    (i % 23 != 0).then(|| COUNTRIES[(i as usize * 7) % 12].to_string())
                };
                if seen != want
                    || got[1..]
                        .iter()
                        .any(|r| country_of(r[1].as_deref().unwrap_or("0")) != r[0])
                {
                    failures.push(format!("{sql}\n  not one row of each country: {got:?}"));
                }
            }
            Err(e) => failures.push(format!("{sql}\n  shardwire error: {e:?}")),
        }
    }
    // Extended protocol with parameters, binary results.
    let prepared: Vec<(&str, Vec<i64>)> = vec![
        (
            "SELECT id, name, country, score FROM users WHERE id = $1",
            vec![1, 42, 2500, 9999],
        ),
        (
            "SELECT id, amount FROM orders WHERE user_id = $1 ORDER BY id",
            vec![3, 77, 1500],
        ),
        (
            "SELECT country, count(DISTINCT score), sum(score) FROM users WHERE score::bigint < $1 GROUP BY country ORDER BY country",
            vec![0, 5, 50],
        ),
        (
            "SELECT count(DISTINCT amount) FROM orders WHERE user_id < $1",
            vec![0, 40],
        ),
        (
            "SELECT id FROM users WHERE id < 50 UNION ALL SELECT user_id FROM orders WHERE user_id < 20 ORDER BY 1 DESC LIMIT $1",
            vec![0, 3, 100],
        ),
        (
            "SELECT count(*), sum(amount), avg(amount) FROM orders WHERE user_id = $1",
            vec![5, 6],
        ),
        (
            "SELECT id, name FROM users WHERE id > $1 ORDER BY id LIMIT 5",
            vec![10, 2990],
        ),
        (
            "SELECT id, score FROM users WHERE score > $1::bigint ORDER BY score DESC, id LIMIT 8",
            vec![50, 99],
        ),
        (
            "SELECT country, count(*), avg(score) FROM users WHERE id < $1 GROUP BY country ORDER BY country",
            vec![500, 3000],
        ),
        (
            "SELECT u.id, o.id FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 ORDER BY o.id",
            vec![8, 9],
        ),
        ("SELECT id FROM users ORDER BY id LIMIT $1", vec![0, 3, 12]),
        (
            "SELECT avg(score) AS mean, avg(score), count(*) AS n FROM users WHERE id <= $1",
            vec![1, 3000],
        ),
        (
            "SELECT sum(score), min(score), max(score), count(*) FROM users WHERE id <= $1",
            vec![1, 100, 3000],
        ),
        (
            "SELECT id, kind, weight FROM events WHERE id = $1",
            vec![999, 1000, 2001],
        ),
        (
            "SELECT DISTINCT status FROM orders WHERE user_id < $1 ORDER BY status",
            vec![10],
        ),
        (
            "SELECT country, count(*) FROM users GROUP BY country HAVING count(*) > $1 ORDER BY country",
            vec![240, 260],
        ),
        // Parts that run first, with the Bind's values in them.
        (
            "SELECT id FROM users WHERE score IN (SELECT score FROM users WHERE id < $1) ORDER BY id LIMIT 20",
            vec![5, 100],
        ),
        (
            "SELECT count(*) AS n FROM users WHERE id < $1 UNION ALL SELECT count(*) FROM events WHERE id < $1",
            vec![10, 2500],
        ),
        (
            "SELECT id, row_number() OVER (ORDER BY score DESC NULLS LAST, id) FROM users WHERE id <= $1 ORDER BY 2",
            vec![7, 30],
        ),
        (
            "SELECT u.id, e.weight FROM users u JOIN events e ON e.id = u.id WHERE u.id < $1 ORDER BY 1",
            vec![12],
        ),
    ];
    for (sql, values) in &prepared {
        for v in values {
            checked += 1;
            let want = extended_rows(&reference, sql, &[v])
                .await
                .unwrap_or_else(|e| panic!("reference: {sql}: {e}"));
            match extended_rows(&sw, sql, &[v]).await {
                Ok(got) => {
                    if let Err(e) = same(&format!("{sql} [$1 = {v}]"), got, want) {
                        failures.push(e);
                    }
                }
                Err(e) => failures.push(format!("{sql} [$1 = {v}]\n  shardwire error: {e:?}")),
            }
        }
    }
    let text_param = "SELECT id, name FROM users WHERE country = $1 AND id < 200 ORDER BY id";
    for c in ["fr", "jp", "zz"] {
        checked += 1;
        let want = extended_rows(&reference, text_param, &[&c]).await.unwrap();
        match extended_rows(&sw, text_param, &[&c]).await {
            Ok(got) => {
                if let Err(e) = same(text_param, got, want) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{text_param}\n  shardwire error: {e:?}")),
        }
    }
    // Writes with RETURNING, then the tables compared in full.
    let writes = [
        "UPDATE users SET score = score + 1 WHERE id = 10 RETURNING id, score",
        "UPDATE users SET score = 0 WHERE id IN (11, 12, 13, 2000) RETURNING id, score",
        "UPDATE orders SET status = 'refunded' WHERE amount > 495 RETURNING user_id, id, status",
        "DELETE FROM orders WHERE user_id = 14 RETURNING id",
        "DELETE FROM orders WHERE status = 'void' AND amount < 3 RETURNING user_id, id",
        "INSERT INTO users (id, name, country, score) VALUES (5001, 'new1', 'fr', 1), (5002, 'new2', 'jp', 2), (5003, 'new3', NULL, NULL) RETURNING id, name",
        "INSERT INTO orders (id, user_id, amount, status) VALUES (90001, 5001, 1.50, 'new') RETURNING id, user_id, amount",
        "INSERT INTO countries (code, name, region) VALUES ('nz', 'country nz', 'south') RETURNING code",
        "UPDATE countries SET region = 'west' WHERE code = 'us' RETURNING code, region",
        "UPDATE events SET kind = 'moved' WHERE id BETWEEN 990 AND 1010 RETURNING id, kind",
        // Co-located INSERT ... SELECT: each shard copies its own rows.
        "INSERT INTO orders (id, user_id, amount, status) SELECT id + 100000, user_id, amount, 'copy' FROM orders \
         WHERE amount > 490 RETURNING user_id, id, status",
        "INSERT INTO orders (user_id, id, amount, status) SELECT u.id, 200000 + u.id, u.score, 'from-user' FROM users u \
         WHERE u.score > 95",
        // Uncorrelated subqueries of a write run first (their rows put into it).
        "UPDATE users SET score = score + 1 WHERE score < (SELECT avg(score) FROM users) - 45 RETURNING id, score",
        "UPDATE users SET score = (SELECT max(score) FROM users) WHERE id = 21 RETURNING id, score",
        // A count over every shard (one shard's count would differ), in SET and in RETURNING.
        "UPDATE users SET score = (SELECT count(*) FROM users WHERE score > 50) WHERE id = 22 RETURNING id, score",
        "DELETE FROM orders WHERE user_id = 15 RETURNING id, (SELECT count(*) FROM users WHERE score > 90)",
        // Correlated on the key: each shard answers for its own rows.
        "UPDATE users SET score = (SELECT count(*) FROM orders o WHERE o.user_id = users.id) WHERE id < 40 RETURNING id, score",
        "DELETE FROM orders WHERE amount > (SELECT max(amount) FROM orders) - 3 RETURNING user_id, id",
        "UPDATE events SET kind = 'late' WHERE id IN (SELECT id FROM events WHERE id > 2990) RETURNING id",
        "UPDATE orders SET status = 'scored' WHERE amount::int IN (SELECT score FROM users WHERE score > 90) RETURNING id",
    ];
    for sql in writes {
        checked += 1;
        let want = simple_rows(&reference, sql).await.unwrap();
        match simple_rows(&sw, sql).await {
            Ok(got) => {
                if let Err(e) = same(sql, got, want) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{sql}\n  shardwire error: {e:?}")),
        }
    }
    let ins = "INSERT INTO orders (id, user_id, amount, status) VALUES ($1, $2, $3::text::numeric, 'p'), ($4, $5, $6::text::numeric, 'p') RETURNING id, user_id";
    let p: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [&90010i64, &1i64, &"2.50", &90011i64, &2500i64, &"3.75"];
    let want = extended_rows(&reference, ins, &p).await.unwrap();
    match extended_rows(&sw, ins, &p).await {
        Ok(got) => {
            if let Err(e) = same(ins, got, want) {
                failures.push(e);
            }
        }
        Err(e) => failures.push(format!("{ins}\n  shardwire error: {e:?}")),
    }
    checked += 1;
    for table in [
        "users ORDER BY id",
        "orders ORDER BY user_id, id",
        "countries ORDER BY code",
        "events ORDER BY id",
    ] {
        let sql = format!("SELECT * FROM {table}");
        checked += 1;
        let want = simple_rows(&reference, &sql).await.unwrap();
        match simple_rows(&sw, &sql).await {
            Ok(got) => {
                if let Err(e) = same(&sql, got, want) {
                    failures.push(e);
                }
            }
            Err(e) => failures.push(format!("{sql}\n  shardwire error: {e:?}")),
        }
    }
    // Refusals.
    for sql in REFUSED {
        checked += 1;
        match sw.simple_query(sql).await {
            Ok(_) => failures.push(format!("{sql}\n  was not refused")),
            Err(e) => {
                let db = e.as_db_error();
                if db.map(|d| d.code().code()) != Some("0A000") || db.is_some_and(|d| d.message().len() < 20) {
                    failures.push(format!("{sql}\n  refused without 0A000 and a message: {e:?}"));
                }
            }
        }
    }
    eprintln!(
        "differential: {checked} checked, {} refused, {headers} row descriptions compared",
        REFUSED.len()
    );
    assert!(headers > 250, "row descriptions compared: {headers}");
    assert!(checked >= 150, "the corpus has {checked} queries");
    // Refusals stay rare: fewer than 3% of what the corpus checks.
    assert!(
        REFUSED.len() * 100 < checked * 3,
        "{} of {checked} refused",
        REFUSED.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
