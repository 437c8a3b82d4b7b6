//! `COPY table FROM STDIN` into a sharded table: the COPY starts on every shard's primary inside
//! a transaction, the client's rows are split at line ends (text or CSV, however the client
//! chunked them), each row goes to the shard of its key, and the shards commit together with
//! two-phase commit. A row without a valid key fails the whole COPY; nothing is committed.

use bytes::{BufMut, BytesMut};

use super::Session;
use super::client::SessionError;
use super::multi::Outcome;
use super::multi_write::Part;
use crate::analyze::shard::Shape;
use crate::backend::leg::Leg;
use crate::copy_format::{self as copy, RowSplitter};
use crate::plan::Target;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::{KeyValue, ShardId};

/// Send a shard its rows once this much is buffered for it.
const SEND_AT: usize = 64 * 1024;

impl Session {
    pub(super) async fn copy_split(&mut self, sql: &str, shards: &[ShardId]) -> Result<Outcome, SessionError> {
        let map = self.runtime.config.map.clone();
        let shape = self.shared.shapes.get(sql, &map);
        let Shape::CopyIn {
            group,
            table,
            key,
            columns,
            format,
        } = shape.as_ref()
        else {
            return Ok(self.report_error(SqlState::SYSTEM_ERROR, "internal error: COPY plan without a COPY"));
        };
        let mut parts = Vec::new();
        for &s in shards {
            match self.checkout_on(Target::Primary, s).await {
                Ok(co) => parts.push(Part {
                    leg: Leg::new(co),
                    shard: s,
                }),
                Err((code, m)) => return Ok(self.report_error(code, &m)),
            }
        }
        // The key's position: in the column list, or in the table's columns.
        let key_idx = if columns.is_empty() {
            let q = format!(
                "SELECT attname FROM pg_attribute WHERE attrelid = {}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                crate::session::state::quote_literal(table)
            );
            match parts[0].leg.rows(&q).await {
                Ok(names) => names.iter().position(|n| n == key),
                Err(e) => return Ok(self.report_error(SqlState::CONNECTION_FAILURE, &e)),
            }
        } else {
            columns.iter().position(|c| c == key)
        };
        let Some(key_idx) = key_idx else {
            for p in &mut parts {
                p.leg.mark_broken();
            }
            return Ok(self.report_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                &format!("COPY into sharded table {table} must include its shard key column {key}"),
            ));
        };
        if parts.len() > 1 {
            let c = &mut parts[0].leg;
            c.simple(super::multi_write::DECISION_TABLE_DDL).await;
        }
        // BEGIN and the COPY everywhere; every shard must enter COPY mode.
        let mut copy_in = None;
        let mut failure = None;
        for p in &mut parts {
            let mut out = BytesMut::new();
            self.write_prelude(&mut p.leg, &mut out);
            msg::query(&mut out, "BEGIN");
            msg::query_bytes(&mut out, &self.wire(sql));
            match p.leg.start_copy(&out).await {
                Ok(Ok(g)) => {
                    copy_in.get_or_insert(g);
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    p.leg.mark_broken();
                    failure.get_or_insert(crate::protocol::pg::Frame::from_raw({
                        let mut b = BytesMut::new();
                        msg::error_response(
                            &mut b,
                            msg::Severity::Error,
                            SqlState::CONNECTION_FAILURE,
                            &format!("shard connection failed: {e}"),
                        );
                        b.freeze()
                    }));
                }
            }
        }
        if let Some(f) = failure {
            for p in &mut parts {
                p.leg.abort_copy().await;
            }
            self.client.wbuf.extend_from_slice(f.raw());
            return Ok(Outcome::Failed);
        }
        if let Some(g) = copy_in {
            self.client.wbuf.extend_from_slice(g.raw());
        }
        self.flush_client().await?;
        // Rows from the client, each to the shard of its key.
        let g = &map.groups[*group];
        let mut splitter = RowSplitter::default();
        let mut bufs: Vec<BytesMut> = parts.iter().map(|_| BytesMut::new()).collect();
        let index: Vec<usize> = {
            let mut v = vec![usize::MAX; map.shards.len()];
            for (i, p) in parts.iter().enumerate() {
                v[p.shard] = i;
            }
            v
        };
        let mut header_pending = format.header;
        let mut error: Option<String> = None;
        let mut ended = false;
        let mut route = |row: &[u8], bufs: &mut Vec<BytesMut>, error: &mut Option<String>| {
            if error.is_some() {
                return;
            }
            if header_pending {
                header_pending = false;
                for b in bufs.iter_mut() {
                    b.extend_from_slice(row);
                }
                return;
            }
            if !format.csv && (row == b"\\.\n" || row == b"\\.\r\n" || row == b"\\.") {
                return;
            }
            let placed = copy::field(format, row, key_idx).and_then(|v| {
                let v = v.ok_or_else(|| format!("a row has no shard key {key} (NULL)"))?;
                let k = KeyValue::parse(g.key_type, &v)
                    .ok_or_else(|| format!("{v:?} is not a valid {} key for {key}", g.key_type))?;
                g.locate(&k)
            });
            match placed {
                Ok(p) => bufs[index[p.shard]].extend_from_slice(row),
                Err(e) => *error = Some(format!("COPY {table}: {e}; nothing was copied")),
            }
        };
        while !ended {
            let f = self.client.read_frame().await?;
            match f.tag() {
                b'd' => splitter.push(format, f.body(), |row| route(row, &mut bufs, &mut error)),
                b'c' => {
                    if let Some(rest) = splitter.finish() {
                        route(&rest, &mut bufs, &mut error);
                    }
                    ended = true;
                }
                b'f' => {
                    let why = String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned();
                    error.get_or_insert(format!("COPY from stdin failed: {why}"));
                    ended = true;
                }
                // Flush and Sync mean nothing during COPY.
                b'H' | b'S' => {}
                other => {
                    error.get_or_insert(format!(
                        "unexpected message type {:?} during COPY from stdin",
                        other as char
                    ));
                    ended = true;
                }
            }
            if error.is_none() {
                for (i, b) in bufs.iter_mut().enumerate() {
                    if b.len() >= SEND_AT || (ended && !b.is_empty()) {
                        let mut out = BytesMut::with_capacity(b.len() + 5);
                        msg::copy_data(&mut out, b);
                        b.clear();
                        if let Err(e) = parts[i].leg.send(&out).await {
                            parts[i].leg.mark_broken();
                            error = Some(format!("a shard failed during COPY: {e}"));
                        }
                    }
                }
            }
        }
        if let Some(e) = error {
            for p in &mut parts {
                p.leg.abort_copy().await;
            }
            return Ok(self.report_error(SqlState::BAD_COPY_FILE_FORMAT, &e));
        }
        let mut total = 0u64;
        let mut failed = None;
        for p in &mut parts {
            let mut out = BytesMut::new();
            out.put_u8(b'c');
            out.put_i32(4);
            let done = match p.leg.send(&out).await {
                Ok(()) => p.leg.collect_tail().await,
                Err(e) => Err(e),
            };
            match done {
                Ok((Some(tag), None)) => {
                    total += tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
                }
                Ok((_, Some(e))) => {
                    failed.get_or_insert(msg::error_message(e.body()));
                }
                Ok((None, None)) => {}
                Err(e) => {
                    p.leg.mark_broken();
                    failed.get_or_insert(e.to_string());
                }
            }
        }
        if let Some(why) = failed {
            for p in &mut parts {
                p.leg.simple("ROLLBACK").await;
            }
            return Ok(self.report_error(
                SqlState::TRANSACTION_ROLLBACK,
                &format!("COPY {table} failed on a shard and was rolled back everywhere: {why}"),
            ));
        }
        if let Err(m) = self.commit_parts(&mut parts).await {
            return Ok(self.report_error(SqlState::TRANSACTION_ROLLBACK, &m));
        }
        msg::command_complete(&mut self.client.wbuf, &format!("COPY {total}"));
        Ok(Outcome::Ok)
    }
}
