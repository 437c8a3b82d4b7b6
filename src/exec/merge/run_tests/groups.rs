//! Grouped merges over in-memory shard rows: partial aggregates, count(DISTINCT), exact
//! decimals, HAVING on the merged groups.

use super::*;

#[test]
fn groups_combine_partial_aggregates_then_sort() {
    // SELECT g, count(*), sum(x), min(t), max(t), avg(x) ... GROUP BY g ORDER BY sum DESC;
    // avg travels as sum(x) with a hidden count in column 6.
    let m = merge(
        6,
        vec![
            ColKind::Plain,
            ColKind::Count,
            ColKind::Sum,
            ColKind::Min,
            ColKind::Max,
            ColKind::Avg { count_col: 6 },
            ColKind::Count,
        ],
        true,
        vec![key(2, true, true)],
    );
    let mut shards = vec![
        shard(&[
            &[
                Some("a"),
                Some("2"),
                Some("10"),
                Some("m"),
                Some("m"),
                Some("10"),
                Some("2"),
            ],
            &[
                Some("b"),
                Some("1"),
                Some("1"),
                Some("x"),
                Some("x"),
                Some("1"),
                Some("1"),
            ],
        ]),
        shard(&[
            &[
                Some("a"),
                Some("1"),
                Some("5"),
                Some("c"),
                Some("z"),
                Some("5"),
                Some("1"),
            ],
            &[None, Some("3"), None, None, None, None, Some("0")],
        ]),
    ];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("iinttni"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    // avg(a) = 15 / 3 = 5 exactly, as numeric: PostgreSQL prints 5.0000000000000000.
    assert_eq!(
        texts(&client),
        [
            vec!["NULL", "3", "NULL", "NULL", "NULL", "NULL"],
            vec!["a", "3", "15", "c", "z", "5.0000000000000000"],
            vec!["b", "1", "1", "x", "x", "1.00000000000000000000"],
        ]
    );
}

#[test]
fn count_distinct_counts_values_over_every_shards_groups() {
    // SELECT g, count(DISTINCT x), count(*), sum(y) ... GROUP BY g ORDER BY g; the shards ran
    // SELECT g, x, count(*), sum(y) ... GROUP BY g, x: a value on two shards counts once, NULL
    // not at all, and numerics equal whatever their scale.
    let m = merge(
        4,
        vec![ColKind::Plain, ColKind::CountDistinct, ColKind::Count, ColKind::Sum],
        true,
        vec![key(0, false, false)],
    );
    let mut shards = vec![
        shard(&[
            &[Some("a"), Some("1.0"), Some("2"), Some("5")],
            &[Some("a"), Some("2"), Some("1"), Some("1")],
            &[Some("b"), None, Some("4"), Some("4")],
        ]),
        shard(&[
            &[Some("a"), Some("1.00"), Some("1"), Some("2")],
            &[Some("a"), Some("3"), Some("1"), Some("1")],
            &[Some("b"), Some("7"), Some("1"), Some("1")],
        ]),
    ];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("tnii"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [vec!["a", "3", "5", "9"], vec!["b", "1", "5", "5"]]);

    // Two count(DISTINCT) columns: the shards grouped by both; each counts its own values.
    // SELECT g, count(DISTINCT x), count(DISTINCT y) ... GROUP BY g.
    let m = merge(
        3,
        vec![ColKind::Plain, ColKind::CountDistinct, ColKind::CountDistinct],
        true,
        vec![key(0, false, false)],
    );
    let mut shards = vec![
        shard(&[&[Some("a"), Some("1"), Some("7")], &[Some("a"), Some("1"), Some("8")]]),
        shard(&[&[Some("a"), Some("2"), Some("7")], &[Some("a"), None, Some("9")]]),
    ];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("tii"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [vec!["a", "2", "3"]]);

    // Groups are matched as the database compares them: 1.5 and 1.50 are one group.
    let m = merge(2, vec![ColKind::Plain, ColKind::Count], true, vec![]);
    let mut shards = vec![
        shard(&[&[Some("1.5"), Some("2")], &[None, Some("1")]]),
        shard(&[&[Some("1.50"), Some("3")], &[None, Some("1")]]),
    ];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("ni"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [vec!["1.5", "5"], vec!["NULL", "2"]]);

    // Without GROUP BY, over no rows at all: one row, as one database answers (count 0).
    let mut m = merge(2, vec![ColKind::CountDistinct, ColKind::Count], true, vec![]);
    m.one_row = true;
    let mut empty = vec![shard(&[]), shard(&[])];
    let mut client = Client::default();
    block_on(run(
        &mut empty,
        &m,
        &Text("ii"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [vec!["0", "0"]]);
}

#[test]
fn decimals_add_exactly() {
    // sum(numeric) over shards: 0.1 + 0.2 is 0.3, not a float's 0.30000000000000004.
    let m = merge(1, vec![ColKind::Sum], true, vec![]);
    let mut shards = vec![
        shard(&[&[Some("0.1")]]),
        shard(&[&[Some("0.2")]]),
        shard(&[&[Some("12345678901234567890.000000001")]]),
    ];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("n"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [["12345678901234567890.300000001"]]);
}

#[test]
fn having_filters_merged_groups_with_parameters() {
    // SELECT g, sum(x) ... GROUP BY g HAVING sum(x) > $1 AND NOT g IS NULL ORDER BY g
    let mut m = merge(2, vec![ColKind::Plain, ColKind::Sum], true, vec![key(0, false, false)]);
    m.having = Some(Having::And(
        Box::new(Having::Cmp(Term::Col(1), CmpOp::Gt, Term::Value(Operand::Param(0)))),
        Box::new(Having::Not(Box::new(Having::IsNull(Term::Col(0), true)))),
    ));
    // Each shard alone has no group above 5; merged, a and c are.
    let mut shards = vec![
        shard(&[
            &[Some("a"), Some("4")],
            &[Some("b"), Some("1")],
            &[Some("c"), Some("5")],
            &[None, Some("9")],
        ]),
        shard(&[
            &[Some("a"), Some("3")],
            &[Some("b"), Some("2")],
            &[Some("c"), Some("1")],
        ]),
    ];
    let mut client = Client::default();
    let params = Texts(vec![Some("5")]);
    block_on(run(
        &mut shards,
        &m,
        &Text("ti"),
        &params,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(texts(&client), [["a", "7"], ["c", "6"]]);

    // A NULL parameter makes the comparison unknown: no group passes.
    let mut shards = vec![shard(&[&[Some("a"), Some("4")]])];
    let mut client = Client::default();
    block_on(run(
        &mut shards,
        &m,
        &Text("ti"),
        &Texts(vec![None]),
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert!(client.rows.is_empty());
}
