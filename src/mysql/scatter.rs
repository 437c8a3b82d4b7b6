//! A read over several shards: the rewritten statement runs on every shard (a replica each
//! when one is usable), the text rows are merged by [`crate::exec::merge`] and sent as one
//! result with the first shard's column definitions.
//!
//! Only columns the merge computes with are decoded ([`MyCells`]). MySQL compares text by its
//! collation (most are case- and accent-insensitive), which a byte comparison would not
//! reproduce: ORDER BY, GROUP BY, MIN and MAX over text are merged only for binary collations
//! and refused otherwise. AVG, whose scale MySQL derives from `div_precision_increment`, is
//! refused with the way out.

use bytes::Bytes;

use super::ClientError;
use super::session::Session;
use crate::analyze::shard::{ColKind, Merge, Operand};
use crate::backend::mysql::{MyError, Pooled};
use crate::exec::merge::{Decimal, Value};
use crate::exec::{Cells, Failure, NoParams, Row, RowSink, RowSource, Window};
use crate::protocol::mysql::{
    ColumnInfo, ColumnType, UNSIGNED_FLAG, code, column_info, eof, err, parse_err, put_lenenc_int, text_cells, text_row,
};
use crate::shardmap::ShardId;

/// Collation id of `binary`.
const BINARY: u16 = 63;
/// Column flag: BINARY (a binary collation).
const BINARY_FLAG: u16 = 0x80;

struct Leg {
    conn: Pooled,
    columns: usize,
    done: bool,
}

impl RowSource for Leg {
    type Error = MyError;

    async fn next_row(&mut self) -> Result<Option<Row>, MyError> {
        if self.done {
            return Ok(None);
        }
        let (_, p) = self.conn.frame().await?;
        match p.first() {
            Some(0xFE) if p.len() < 9 => {
                self.done = true;
                Ok(None)
            }
            Some(0xFF) => {
                self.done = true;
                let (code, state, message) = parse_err(&p).unwrap_or((0, "HY000".into(), "error".into()));
                Err(MyError::Server { code, state, message })
            }
            _ => {
                let p = p.freeze();
                let cells = text_cells(&p, self.columns)
                    .ok_or_else(|| MyError::Protocol("a row that does not match its columns".into()))?;
                Ok(Some(cells.into_iter().map(|c| c.map(|c| p.slice_ref(c))).collect()))
            }
        }
    }
}

/// Text cells of a MySQL result, decoded by column type.
pub(super) struct MyCells<'a>(pub &'a [ColumnInfo]);

/// Whether a column's values order and group as their bytes do.
fn byte_comparable(c: &ColumnInfo) -> bool {
    !is_text(c.kind) || c.charset == BINARY || c.flags & BINARY_FLAG != 0
}

fn is_text(kind: u8) -> bool {
    use ColumnType::*;
    [
        MYSQL_TYPE_VARCHAR,
        MYSQL_TYPE_VAR_STRING,
        MYSQL_TYPE_STRING,
        MYSQL_TYPE_TINY_BLOB,
        MYSQL_TYPE_MEDIUM_BLOB,
        MYSQL_TYPE_LONG_BLOB,
        MYSQL_TYPE_BLOB,
        MYSQL_TYPE_ENUM,
        MYSQL_TYPE_SET,
        MYSQL_TYPE_JSON,
    ]
    .iter()
    .any(|t| *t as u8 == kind)
}

impl Cells for MyCells<'_> {
    fn decode(&self, col: usize, cell: Option<&[u8]>) -> Result<Value, String> {
        use ColumnType::*;
        let Some(b) = cell else { return Ok(Value::Null) };
        let c = &self.0[col];
        let s = || std::str::from_utf8(b).map_err(|_| format!("column {} is not UTF-8 text", c.name));
        let k = c.kind;
        let is = |t: ColumnType| t as u8 == k;
        if is(MYSQL_TYPE_TINY)
            || is(MYSQL_TYPE_SHORT)
            || is(MYSQL_TYPE_LONG)
            || is(MYSQL_TYPE_INT24)
            || is(MYSQL_TYPE_YEAR)
        {
            return s()?.parse().map(Value::Int).map_err(|e| e.to_string());
        }
        if is(MYSQL_TYPE_LONGLONG) {
            let t = s()?;
            return match t.parse::<i64>() {
                Ok(v) => Ok(Value::Int(v)),
                Err(_) if c.flags & UNSIGNED_FLAG != 0 => Decimal::parse(t).map(Value::Num).ok_or_else(|| t.to_owned()),
                Err(e) => Err(e.to_string()),
            };
        }
        if is(MYSQL_TYPE_FLOAT) || is(MYSQL_TYPE_DOUBLE) {
            return s()?.parse().map(Value::Float).map_err(|e| e.to_string());
        }
        if is(MYSQL_TYPE_DECIMAL) || is(MYSQL_TYPE_NEWDECIMAL) {
            let t = s()?;
            return Decimal::parse(t)
                .map(Value::Num)
                .ok_or_else(|| format!("bad decimal {t}"));
        }
        if byte_comparable(c) {
            return Ok(Value::Text(b.to_vec()));
        }
        Err(format!(
            "column {} compares by its collation, which shardwire does not reproduce across shards",
            c.name
        ))
    }

    fn encode(&self, _col: usize, value: &Value) -> Result<Option<Bytes>, String> {
        Ok(match value {
            Value::Null => None,
            Value::Int(i) => Some(Bytes::from(i.to_string())),
            Value::Float(f) => Some(Bytes::from(crate::exec::merge::format_float(*f))),
            Value::Num(d) => Some(Bytes::from(d.to_string())),
            Value::Text(t) => Some(Bytes::from(t.clone())),
            Value::Bool(b) => Some(Bytes::from(if *b { "1" } else { "0" })),
        })
    }
}

struct ClientRows<'a> {
    session: &'a mut Session,
    seq: u8,
}

impl RowSink for ClientRows<'_> {
    type Error = ClientError;

    async fn row(&mut self, cells: &[Option<Bytes>], visible: usize) -> Result<(), ClientError> {
        let row = text_row(cells[..visible].iter().map(|c| c.as_deref()));
        self.session.client.put(&mut self.seq, &row);
        if self.session.client.wbuf.len() >= 256 * 1024 {
            self.session.client.flush().await?;
        }
        Ok(())
    }
}

fn limit(o: &Option<Operand>) -> Option<u64> {
    match o {
        Some(Operand::Lit(s)) => s.parse().ok(),
        _ => None,
    }
}

impl Session {
    /// Runs a merged read on `shards`.
    pub async fn scatter(&mut self, shards: &[ShardId], m: &Merge) -> Result<(), ClientError> {
        if self.held.is_some() || self.begin.is_some() || !self.state.autocommit || self.pinned.is_some() {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "a read over several shards inside a transaction (or a pinned session) is not supported on the MySQL front end yet: run it outside the transaction, or filter by the shard key",
            );
            return Ok(());
        }
        let wrote = self.wrote_at;
        let mut legs = Vec::with_capacity(shards.len());
        let mut header: Option<(Vec<ColumnInfo>, Vec<Bytes>)> = None;
        let mut failure: Option<MyError> = None;
        for &s in shards {
            let shard = self.rt.mysql[s].clone();
            let node = shard.replica(wrote).unwrap_or_else(|| shard.primary.clone());
            let mut conn = match node.checkout().await {
                Ok(c) => c,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if let Err(e) = super::sync::sync(&mut conn, &self.state, self.sig).await {
                failure = Some(e);
                break;
            }
            match read_header(&mut conn, &m.sql).await {
                Ok((cols, packets)) => {
                    let columns = cols.len();
                    header.get_or_insert((cols, packets));
                    legs.push(Leg {
                        conn,
                        columns,
                        done: false,
                    });
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let abandon = |legs: &mut Vec<Leg>| {
            for l in legs.iter_mut().filter(|l| !l.done) {
                l.conn.broken = true;
            }
        };
        if let Some(e) = failure {
            abandon(&mut legs);
            self.backend_error(&e);
            return Ok(());
        }
        let Some((cols, packets)) = header else {
            self.ok();
            return Ok(());
        };
        let refused = match m.resolve(cols.len()) {
            Err(e) => Err(e),
            Ok(r) => check(&r, &cols).map(|()| r),
        };
        let mut m = match refused {
            Ok(r) => r.into_owned(),
            Err(why) => {
                abandon(&mut legs);
                self.error(code::NOT_SUPPORTED, "0A000", &why);
                return Ok(());
            }
        };
        // MySQL has no NULLS FIRST/LAST: NULLs sort before every value, ascending.
        for k in &mut m.order {
            k.nulls_first = !k.desc;
        }
        let mut seq = self.client.reply_seq;
        let mut count = bytes::BytesMut::new();
        put_lenenc_int(&mut count, m.visible as u64);
        self.client.put(&mut seq, &count);
        for p in packets.iter().take(m.visible) {
            self.client.put(&mut seq, p);
        }
        let status = self.status();
        self.client.put(&mut seq, &eof(0, status));
        let window = Window {
            limit: limit(&m.limit),
            offset: limit(&m.offset).unwrap_or(0),
        };
        let cells = MyCells(&cols);
        let mut sink = ClientRows { session: self, seq };
        let result = crate::exec::merge::run(&mut legs, &m, &cells, &NoParams, window, &mut sink).await;
        let mut seq = sink.seq;
        abandon(&mut legs);
        match result {
            Ok(_) => self.client.put(&mut seq, &eof(0, status)),
            Err(Failure::Sink(e)) => return Err(e),
            Err(Failure::Source(e)) => {
                let (c, st, msg) = match &e {
                    MyError::Server { code, state, message } => (*code, state.clone(), message.clone()),
                    other => (code::SERVER_LOST, "HY000".into(), other.to_string()),
                };
                self.client.put(&mut seq, &err(c, &st, &msg));
            }
            Err(Failure::Unmergeable(why)) => self.client.put(&mut seq, &err(code::NOT_SUPPORTED, "0A000", &why)),
        }
        Ok(())
    }
}

/// What cannot be merged as one MySQL server would answer, found before any row is sent.
fn check(m: &Merge, cols: &[ColumnInfo]) -> Result<(), String> {
    if m.cols.iter().any(|k| matches!(k, ColKind::Expr(_))) {
        return Err(
            "expressions over aggregates over several shards are not merged on the MySQL front end yet: select the aggregates and compute in the application"
                .into(),
        );
    }
    if m.cols.iter().any(|k| matches!(k, ColKind::Avg { .. })) {
        return Err(
            "AVG over several shards is not merged on the MySQL front end yet: select SUM(x) and COUNT(x) and divide"
                .into(),
        );
    }
    if m.cols.contains(&ColKind::CountDistinct) {
        return Err(
            "COUNT(DISTINCT) over several shards is not merged on the MySQL front end yet: filter by the shard key"
                .into(),
        );
    }
    let mut keys: Vec<usize> = m.order.iter().map(|k| k.col).collect();
    if m.grouped {
        keys.extend(
            m.cols
                .iter()
                .enumerate()
                .filter(|(_, k)| matches!(k, ColKind::Plain | ColKind::Min | ColKind::Max))
                .map(|(i, _)| i),
        );
    }
    for i in keys {
        if let Some(c) = cols.get(i)
            && !byte_comparable(c)
        {
            return Err(format!(
                "ORDER BY, GROUP BY, DISTINCT, MIN or MAX over several shards on text column {} with a case-insensitive collation: shardwire does not reproduce collations; order by a binary expression (`{} COLLATE utf8mb4_bin`) or filter by the shard key",
                c.name, c.name
            ));
        }
    }
    Ok(())
}

/// Sends a text query and reads the result's column definitions.
async fn read_header(conn: &mut Pooled, sql: &str) -> Result<(Vec<ColumnInfo>, Vec<Bytes>), MyError> {
    let mut cmd = Vec::with_capacity(sql.len() + 1);
    cmd.push(crate::protocol::mysql::cmd::QUERY);
    cmd.extend_from_slice(sql.as_bytes());
    conn.write_packet(0, &cmd).await?;
    let (_, first) = conn.frame().await?;
    if let Some((code, state, message)) = parse_err(&first) {
        return Err(MyError::Server { code, state, message });
    }
    let (n, _) = crate::protocol::mysql::lenenc_int(&first)
        .filter(|(n, _)| *n > 0 && first[0] != 0)
        .ok_or_else(|| {
            conn.broken = true;
            MyError::Protocol("a read over several shards returned no rows".into())
        })?;
    let mut cols = Vec::new();
    let mut packets = Vec::new();
    for _ in 0..n {
        let (_, p) = conn.frame().await?;
        let c = column_info(&p).ok_or_else(|| MyError::Protocol("bad column definition".into()))?;
        cols.push(c);
        packets.push(p.freeze());
    }
    let (_, e) = conn.frame().await?;
    if e.first() != Some(&0xFE) {
        conn.broken = true;
        return Err(MyError::Protocol("no EOF after the column definitions".into()));
    }
    Ok((cols, packets))
}
