//! Merging at the executor level: shard rows from memory, a text codec, rows collected. Each
//! case is what one database would answer for the same data.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Decimal, Value, format_float, run};
use crate::analyze::shard::{CmpOp, ColKind, Having, Merge, Operand, SortKey, Term};
use crate::exec::{Cells, Failure, NoParams, Params, Row, RowSink, RowSource, Window};

mod groups;

/// A shard's rows; `fail_after` rows, then an error. Counts the rows read.
struct Shard {
    rows: VecDeque<Row>,
    read: usize,
    fail_after: Option<usize>,
}

fn shard(rows: &[&[Option<&str>]]) -> Shard {
    Shard {
        rows: rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|c| c.map(|s| Bytes::copy_from_slice(s.as_bytes())))
                    .collect()
            })
            .collect(),
        read: 0,
        fail_after: None,
    }
}

impl RowSource for Shard {
    type Error = &'static str;

    async fn next_row(&mut self) -> Result<Option<Row>, &'static str> {
        if self.fail_after == Some(self.read) {
            return Err("shard lost");
        }
        let r = self.rows.pop_front();
        self.read += r.is_some() as usize;
        Ok(r)
    }
}

/// The client: rows as text.
#[derive(Default)]
struct Client {
    rows: Vec<Vec<Option<String>>>,
    gone_after: Option<usize>,
}

impl RowSink for Client {
    type Error = &'static str;

    async fn row(&mut self, cells: &[Option<Bytes>], visible: usize) -> Result<(), &'static str> {
        if self.gone_after == Some(self.rows.len()) {
            return Err("client gone");
        }
        let r = cells[..visible]
            .iter()
            .map(|c| c.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
            .collect();
        self.rows.push(r);
        Ok(())
    }
}

/// Column types by letter: i integer, n numeric, f float, t text; all in text form.
struct Text(&'static str);

impl Cells for Text {
    fn decode(&self, col: usize, cell: Option<&[u8]>) -> Result<Value, String> {
        let Some(b) = cell else { return Ok(Value::Null) };
        let s = std::str::from_utf8(b).map_err(|e| e.to_string())?;
        Ok(match self.0.as_bytes()[col] {
            b'i' => Value::Int(s.parse().map_err(|_| format!("bad int {s}"))?),
            b'n' => Value::Num(Decimal::parse(s).ok_or("bad numeric")?),
            b'f' => Value::Float(s.parse().map_err(|_| "bad float")?),
            b't' => Value::Text(b.to_vec()),
            _ => return Err(format!("no ordering known for column {col}")),
        })
    }

    fn encode(&self, _: usize, v: &Value) -> Result<Option<Bytes>, String> {
        Ok(Some(Bytes::from(match v {
            Value::Null => return Ok(None),
            Value::Int(i) => i.to_string(),
            Value::Num(d) => d.to_string(),
            Value::Float(f) => format_float(*f),
            Value::Text(t) => String::from_utf8_lossy(t).into_owned(),
            Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        })))
    }
}

struct Texts(Vec<Option<&'static str>>);

impl Params for Texts {
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        Ok(self.0.get(i).ok_or("no such parameter")?.map(str::to_owned))
    }
}

fn merge(visible: usize, cols: Vec<ColKind>, grouped: bool, order: Vec<SortKey>) -> Merge {
    Merge {
        sql: String::new(),
        params: Vec::new(),
        visible,
        cols,
        grouped,
        one_row: false,
        having: None,
        order,
        limit: None,
        offset: None,
        exprs: Vec::new(),
        distinct_on: 0,
        literal_shaped: false,
    }
}

fn key(col: usize, desc: bool, nulls_first: bool) -> SortKey {
    SortKey {
        col,
        desc,
        nulls_first,
        byte_order: false,
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn texts(c: &Client) -> Vec<Vec<&str>> {
    c.rows
        .iter()
        .map(|r| r.iter().map(|c| c.as_deref().unwrap_or("NULL")).collect())
        .collect()
}

#[test]
fn ordered_streams_interleave_with_nulls_and_mixed_directions() {
    // ORDER BY a DESC NULLS LAST, b ASC NULLS FIRST; each shard's rows arrive in that order.
    let m = merge(
        2,
        vec![ColKind::Plain, ColKind::Plain],
        false,
        vec![key(0, true, false), key(1, false, true)],
    );
    let mut shards = vec![
        shard(&[
            &[Some("3"), None],
            &[Some("3"), Some("b")],
            &[Some("1"), Some("a")],
            &[None, Some("z")],
        ]),
        shard(&[&[Some("3"), Some("a")], &[Some("2"), None], &[None, None]]),
        shard(&[]),
    ];
    let mut client = Client::default();
    let n = block_on(run(
        &mut shards,
        &m,
        &Text("it"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    assert_eq!(n, 7);
    assert_eq!(
        texts(&client),
        [
            ["3", "NULL"],
            ["3", "a"],
            ["3", "b"],
            ["2", "NULL"],
            ["1", "a"],
            ["NULL", "NULL"],
            ["NULL", "z"]
        ]
    );
}

#[test]
fn limit_and_offset_apply_after_merging_and_stop_reading_early() {
    let m = merge(1, vec![ColKind::Plain], false, vec![key(0, false, false)]);
    let rows: Vec<Vec<Option<String>>> = (0..100).map(|i| vec![Some((i * 2).to_string())]).collect();
    let as_refs = |rows: &Vec<Vec<Option<String>>>| -> Shard {
        let r: Vec<Vec<Option<&str>>> = rows.iter().map(|r| r.iter().map(|c| c.as_deref()).collect()).collect();
        let r: Vec<&[Option<&str>]> = r.iter().map(|r| r.as_slice()).collect();
        shard(&r)
    };
    let odd: Vec<Vec<Option<String>>> = (0..100).map(|i| vec![Some((i * 2 + 1).to_string())]).collect();
    let mut shards = vec![as_refs(&rows), as_refs(&odd)];
    let mut client = Client::default();
    let window = Window {
        limit: Some(2),
        offset: 3,
    };
    block_on(run(&mut shards, &m, &Text("i"), &NoParams, window, &mut client)).unwrap();
    assert_eq!(texts(&client), [["3"], ["4"]]);
    assert!(
        shards.iter().all(|s| s.read <= 4),
        "read past the limit: {:?}",
        shards.iter().map(|s| s.read).collect::<Vec<_>>()
    );

    // Unordered: shards concatenated, the window over the concatenation.
    let m = merge(1, vec![ColKind::Plain], false, vec![]);
    let mut shards = vec![
        shard(&[&[Some("a")], &[Some("b")]]),
        shard(&[&[Some("c")], &[Some("d")]]),
    ];
    let mut client = Client::default();
    let window = Window {
        limit: Some(2),
        offset: 1,
    };
    block_on(run(&mut shards, &m, &Text("t"), &NoParams, window, &mut client)).unwrap();
    assert_eq!(texts(&client), [["b"], ["c"]]);
    assert_eq!(shards[1].rows.len(), 1, "the last row is never read");
}

#[test]
fn failures_say_whose_they_are() {
    let m = merge(1, vec![ColKind::Plain], false, vec![key(0, false, false)]);
    let mut shards = vec![shard(&[&[Some("1")], &[Some("2")]]), shard(&[&[Some("3")]])];
    shards[0].fail_after = Some(1);
    let mut client = Client::default();
    let r = block_on(run(
        &mut shards,
        &m,
        &Text("i"),
        &NoParams,
        Window::default(),
        &mut client,
    ));
    assert!(matches!(r, Err(Failure::Source("shard lost"))), "{r:?}");

    let mut shards = vec![shard(&[&[Some("1")], &[Some("2")]])];
    let mut client = Client {
        gone_after: Some(1),
        ..Client::default()
    };
    let r = block_on(run(
        &mut shards,
        &m,
        &Text("i"),
        &NoParams,
        Window::default(),
        &mut client,
    ));
    assert!(matches!(r, Err(Failure::Sink("client gone"))), "{r:?}");

    // A type whose order is unknown is refused, not sorted some other way.
    let mut shards = vec![shard(&[&[Some("x")]]), shard(&[&[Some("y")]])];
    let mut client = Client::default();
    let r = block_on(run(
        &mut shards,
        &m,
        &Text("?"),
        &NoParams,
        Window::default(),
        &mut client,
    ));
    assert!(matches!(r, Err(Failure::Unmergeable(_))), "{r:?}");
    assert!(client.rows.is_empty());
}

#[test]
fn distinct_on_keeps_the_first_row_of_each_key_over_every_shard() {
    // SELECT DISTINCT ON (a) a, b ... ORDER BY a, b: each shard sends its first row per a.
    let mut m = merge(
        2,
        vec![ColKind::Plain, ColKind::Plain],
        false,
        vec![key(0, false, false), key(1, false, false)],
    );
    m.distinct_on = 1;
    let shards = || {
        vec![
            shard(&[
                &[Some("1"), Some("5")],
                &[Some("2"), Some("1")],
                &[Some("3"), Some("9")],
                &[None, Some("7")],
            ]),
            shard(&[
                &[Some("1"), Some("2")],
                &[Some("3"), Some("4")],
                &[Some("4"), Some("0")],
                &[None, Some("3")],
            ]),
        ]
    };
    let mut all = shards();
    let mut client = Client::default();
    block_on(run(
        &mut all,
        &m,
        &Text("ii"),
        &NoParams,
        Window::default(),
        &mut client,
    ))
    .unwrap();
    // NULL keys are one key, as in DISTINCT ON; NULLs sort last ascending.
    assert_eq!(
        texts(&client),
        [["1", "2"], ["2", "1"], ["3", "4"], ["4", "0"], ["NULL", "3"]]
    );
    let mut all = shards();
    let mut client = Client::default();
    let window = Window {
        limit: Some(2),
        offset: 1,
    };
    block_on(run(&mut all, &m, &Text("ii"), &NoParams, window, &mut client)).unwrap();
    assert_eq!(
        texts(&client),
        [["2", "1"], ["3", "4"]],
        "the window counts keys, not rows"
    );
}
