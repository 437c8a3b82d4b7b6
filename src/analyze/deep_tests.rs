//! Hostile statement texts: long chains, deep nesting, huge lists and random token soup, at and
//! far beyond the limits, analyzed on a thread with shardwire's stack ([`STACK_SIZE`]) by
//! every path a session takes: the facts, the shard shape of the exact text and of the text with
//! its literals as parameters (the extended protocol's form), and printing and dropping the tree;
//! and the MySQL front end's (its dialect's facts, its `?` template, their shapes).
//! Each must give an answer or a refusal; a stack overflow aborts the test process.

use std::collections::HashSet;

use super::limits::STACK_SIZE;
use super::{Limits, analyze_within, fingerprint::parameterize, shard::shape};
use crate::shardmap::ShardMap;

fn map() -> ShardMap {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shard-maps/example.toml");
    crate::shardmap::load(&path).expect("example map loads")
}

/// Runs every analysis of `texts` on a thread with shardwire's stack; the number refused.
fn analyze_all(texts: Vec<String>) -> usize {
    let map = map();
    std::thread::Builder::new()
        .stack_size(STACK_SIZE)
        .spawn(move || {
            let mut refused = 0;
            for sql in &texts {
                let facts = analyze_within(sql, &HashSet::new(), &Limits::default());
                // The MySQL front end's paths: its dialect's facts, the text with its literals
                // as `?` (the prepared form), and the shard shape of both.
                let my = super::mysql::analyze(sql, &HashSet::new(), &Limits::default());
                assert_eq!(
                    my.facts.too_complex.is_some(),
                    facts.too_complex.is_some(),
                    "both front ends refuse the same texts"
                );
                if facts.too_complex.is_some() {
                    refused += 1;
                    continue;
                }
                drop(super::shard::shape_mysql(sql, &map));
                // Parts that run first are looked for in statements refused as written.
                drop(super::shard::materialize::plan(sql, &map));
                drop(super::shard::materialize::inline_params(sql, &[]));
                if let Some(text) = super::mysql::template(sql) {
                    drop(super::shard::shape_mysql(&text, &map));
                }
                drop(shape(sql, &map));
                if let Some(lf) = parameterize(sql) {
                    drop(shape(&lf.text, &map));
                }
                if let Ok(stmts) = sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, sql)
                {
                    for s in &stmts {
                        let _ = s.to_string();
                    }
                }
            }
            refused
        })
        .expect("spawn")
        .join()
        .expect("analysis finished without overflowing its stack")
}

/// `prefix` + `n` times `unit` + `suffix`.
fn rep(prefix: &str, unit: &str, n: usize, suffix: &str) -> String {
    format!("{prefix}{}{suffix}", unit.repeat(n))
}

fn shapes(n: usize) -> Vec<String> {
    vec![
        rep("SELECT 1", "+1", n, ""),
        rep("SELECT * FROM customers WHERE id = 0", " OR id = 1", n, ""),
        rep("SELECT * FROM customers WHERE id = 0", " AND name <> 'x'", n, ""),
        rep("SELECT * FROM customers WHERE id = ", "$1 + ", n, "1"),
        rep("SELECT 'a'", "::text", n, ""),
        rep("SELECT '{}'::jsonb", "->'a'", n, ""),
        rep("SELECT a", "[1]", n, " FROM t"),
        rep("SELECT 1, 2", " UNION ALL SELECT 1, 2", n, ""),
        rep("SELECT * FROM customers WHERE ", "NOT ", n, "true"),
        rep("SELECT ", "- ", n, "1"),
        rep("SELECT ", "(", n, &")".repeat(n)),
        rep("SELECT ", "abs(", n, "1") + &")".repeat(n),
        rep("SELECT ", "(SELECT ", n, "1") + &")".repeat(n),
        rep("SELECT CASE ", "WHEN a = 1 THEN 2 ", n, "END FROM t"),
        rep("INSERT INTO customers (id, name) VALUES (1, 'a'", " || 'b'", n, ")"),
        rep("UPDATE customers SET name = 'x' WHERE id = 1", " OR id = 2", n, ""),
        rep("DELETE FROM orders WHERE customer_id = 3", " AND id > 1", n, ""),
        rep(
            "SELECT count(*) FROM customers GROUP BY 1 HAVING count(*) > 1",
            " + 1",
            n,
            "",
        ),
        // Lists are never deep; their length only costs parse time.
        format!(
            "SELECT * FROM customers WHERE id IN ({})",
            vec!["7"; n.min(2_000) * 10].join(",")
        ),
        format!(
            "INSERT INTO customers (id, name) VALUES {}",
            vec!["(1, 'a')"; n.min(2_000)].join(",")
        ),
    ]
}

#[test]
fn chains_and_nesting_under_over_and_far_over_the_limit() {
    for n in [300, 1_300, 2_600, 3_990, 4_001, 200_000] {
        let refused = analyze_all(shapes(n));
        if n > 4_000 {
            // Everything but the lists, which are siblings and never deep.
            assert_eq!(refused, shapes(n).len() - 2, "n = {n}");
        }
    }
}

/// A small xorshift, so the soup is the same on every run and a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as usize
    }
}

#[test]
fn random_token_soup() {
    const WORDS: &[&str] = &[
        "SELECT",
        "FROM",
        "customers",
        "orders",
        "WHERE",
        "id",
        "customer_id",
        "=",
        "1",
        "$1",
        "'x'",
        "+",
        "-",
        "*",
        "OR",
        "AND",
        "NOT",
        "(",
        ")",
        ",",
        "::int",
        "->",
        "[",
        "]",
        "UNION",
        "CASE",
        "WHEN",
        "THEN",
        "END",
        "IN",
        "abs(",
        "IS",
        "NULL",
        "||",
        "JOIN",
        "ON",
        ";",
        "INSERT INTO customers (id) VALUES (",
        "--\n",
        "/* */",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut texts = Vec::new();
    for _ in 0..150 {
        let len = 1 + rng.next() % 12_000;
        // Runs of one token build the longest chains: mostly repeat the last one.
        let mut last = WORDS[0];
        let mut s = String::from("SELECT ");
        for _ in 0..len {
            if rng.next().is_multiple_of(8) {
                last = WORDS[rng.next() % WORDS.len()];
            }
            s.push_str(last);
            s.push(' ');
        }
        texts.push(s);
    }
    analyze_all(texts);
}
