//! Prepared statements (COM_STMT_*), kept per client and prepared again on whichever server
//! connection runs them: statement ids the client sees are the session's own; each server
//! connection keeps its statements by text (shared by every client that prepares the same
//! text), and an execute is rewritten to that connection's id, with the parameter types the
//! server needs when the client left them out (it sends them only on the first execute).
//! Long data (COM_STMT_SEND_LONG_DATA) is held until the execute and sent to the connection
//! that runs it, just before.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::ClientError;
use super::query::Route;
use super::session::Session;
use crate::analyze::mysql::MyFacts;
use crate::analyze::shard::Shape;
use crate::analyze::{Need, TxEffect};
use crate::plan::shard::Params;
use crate::protocol::mysql::response::Kind;
use crate::protocol::mysql::{cmd, code, lenenc_int};
use crate::shardmap::ShardMap;

/// A client's statement.
pub(super) struct Prepared {
    sql: Bytes,
    params: u16,
    facts: MyFacts,
    /// Parameter types (2 bytes each) from the last execute that sent them.
    types: Option<Bytes>,
    /// Long data per parameter, in the order sent.
    long: Vec<(u16, Bytes)>,
    /// `SELECT LAST_INSERT_ID()`: answered by the session, with this column name.
    last_id_column: Option<String>,
    /// Its shape under the map it was computed with (parsed once per map, not per execute).
    shape: Option<(Arc<ShardMap>, Arc<Shape>)>,
}

/// The client's statements by the ids it was given.
#[derive(Default)]
pub(super) struct Statements {
    next: u32,
    by_id: HashMap<u32, Prepared>,
}

/// Server statements kept per connection before the least recently prepared is closed.
const MAX_PER_CONN: usize = 256;

impl Session {
    pub async fn prepare(&mut self, payload: BytesMut) -> Result<(), ClientError> {
        let sql = Bytes::copy_from_slice(&payload[1..]);
        let text = String::from_utf8_lossy(&sql).into_owned();
        let facts = crate::analyze::mysql::analyze(&text, &self.functions, &self.rt.config.server.limits);
        if let Some(e) = &facts.facts.too_complex {
            self.error(code::PARSE, "42000", &e.to_string());
            return Ok(());
        }
        if facts.facts.pins_session.is_some() || facts.autocommit.is_some() || facts.use_db.is_some() {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "SET of user variables or autocommit, USE, locks and PREPARE are not supported as prepared statements through shardwire: send them as text queries",
            );
            return Ok(());
        }
        if facts.facts.tx != TxEffect::None {
            // BEGIN, COMMIT, ROLLBACK (sysbench prepares them): no parameters, no columns; each
            // execute runs as the text would.
            self.stmts.next = self.stmts.next.wrapping_add(1).max(1);
            let id = self.stmts.next;
            let mut p = BytesMut::with_capacity(12);
            p.put_u8(0);
            p.put_u32_le(id);
            p.put_slice(&[0; 7]);
            let mut seq = 1;
            self.client.put(&mut seq, &p);
            self.stmts.by_id.insert(
                id,
                Prepared {
                    sql,
                    params: 0,
                    facts,
                    types: None,
                    long: Vec::new(),
                    last_id_column: None,
                    shape: None,
                },
            );
            return Ok(());
        }
        if crate::analyze::mysql::code_only(&text)
            .to_ascii_lowercase()
            .contains("last_insert_id")
        {
            let Some(column) = super::ids::lone_call(&text) else {
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "LAST_INSERT_ID() inside a prepared statement: the server connection that runs it may be another's; send the statement as text (the session's value is written in), or SELECT LAST_INSERT_ID() alone",
                );
                return Ok(());
            };
            self.stmts.next = self.stmts.next.wrapping_add(1).max(1);
            let id = self.stmts.next;
            self.prepare_last_id(id, &column);
            self.stmts.by_id.insert(
                id,
                Prepared {
                    sql,
                    params: 0,
                    facts,
                    types: None,
                    long: Vec::new(),
                    last_id_column: Some(column),
                    shape: None,
                },
            );
            return Ok(());
        }
        // The server checks the statement and describes it; any shard's answer is the same.
        let shard = self.default_shard();
        if !self.acquire(shard, self.held.is_some()).await {
            return Ok(());
        }
        self.stmts.next = self.stmts.next.wrapping_add(1).max(1);
        let id = self.stmts.next;
        let out = self.relay_as(&payload, Kind::Prepare, Some(id)).await?;
        if out.lost && !out.sent {
            self.lost_report();
            return Ok(());
        }
        if let (Some((server_id, params, columns)), Some(h)) = (out.prepared, self.held.as_mut()) {
            remember(&mut h.conn, sql.clone(), (server_id, params, columns)).await;
            self.stmts.by_id.insert(
                id,
                Prepared {
                    sql,
                    params,
                    facts,
                    types: None,
                    long: Vec::new(),
                    last_id_column: None,
                    shape: None,
                },
            );
        }
        self.after(out.status, false);
        Ok(())
    }

    pub async fn execute(&mut self, payload: BytesMut) -> Result<(), ClientError> {
        let Some(id) = payload.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])) else {
            self.error(code::MALFORMED, "HY000", "Malformed communication packet");
            return Ok(());
        };
        let Some(stmt) = self.stmts.by_id.get_mut(&id) else {
            self.error(
                code::UNKNOWN_STATEMENT,
                "HY000",
                &format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute"),
            );
            return Ok(());
        };
        if let Some(column) = stmt.last_id_column.clone() {
            self.execute_last_id(&column);
            return Ok(());
        }
        if stmt.facts.facts.tx != TxEffect::None {
            let mut text = BytesMut::with_capacity(stmt.sql.len() + 1);
            text.put_u8(cmd::QUERY);
            text.put_slice(&stmt.sql);
            return self.query(text).await;
        }
        let n = stmt.params as usize;
        let layout = match Layout::read(&payload, n) {
            Some(l) => l,
            None => {
                self.error(code::MALFORMED, "HY000", "Malformed communication packet");
                return Ok(());
            }
        };
        if let Some(t) = &layout.types {
            stmt.types = Some(Bytes::copy_from_slice(&payload[t.clone()]));
        }
        let types = stmt.types.clone();
        if n > 0 && types.is_none() {
            self.error(
                code::MALFORMED,
                "HY000",
                "an execute without parameter types before any with them",
            );
            return Ok(());
        }
        let map = self.rt.config.map.clone();
        let shape = match &stmt.shape {
            Some((m, s)) if Arc::ptr_eq(m, &map) => Some(s.clone()),
            _ if map.tables.is_empty() => None,
            _ => {
                let s = Arc::new(crate::analyze::shard::shape_mysql(
                    &String::from_utf8_lossy(&stmt.sql),
                    &map,
                ));
                stmt.shape = Some((map.clone(), s.clone()));
                Some(s)
            }
        };
        let sql = stmt.sql.clone();
        let facts = stmt.facts.clone();
        let long = std::mem::take(&mut stmt.long);
        let long_ids: Vec<u16> = long.iter().map(|(p, _)| *p).collect();
        let route = if let Some(shape) = shape {
            let texts = param_texts(&payload, &layout, types.as_deref().unwrap_or_default(), n, &long_ids);
            let values: Vec<Option<&[u8]>> = texts.iter().map(|t| t.as_deref().map(str::as_bytes)).collect();
            let params = Params {
                formats: vec![0; n],
                values,
                literals: &[],
            };
            self.route_shape(&String::from_utf8_lossy(&sql), &shape, &params)
        } else {
            Route::One(self.default_shard())
        };
        let shard = match route {
            Route::One(s) => s,
            Route::Scatter(..) => {
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "a prepared statement that reads over several shards is not merged on the MySQL front end yet: send it as a text query, or filter by the shard key",
                );
                return Ok(());
            }
            Route::Rewritten(..) => {
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "generated IDs are filled in for text queries on the MySQL front end: send this INSERT as text, or give the ID column",
                );
                return Ok(());
            }
            Route::Write(..) => {
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "a prepared statement that writes on several shards: send it as a text query (it runs as one XA transaction), or write the rows of one shard key per statement",
                );
                return Ok(());
            }
            Route::Broadcast(_) => {
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "DDL for every shard as a prepared statement: send it as a text query",
                );
                return Ok(());
            }
            Route::Refuse(why) => {
                self.error(code::NOT_SUPPORTED, "0A000", &why);
                return Ok(());
            }
        };
        let primary = self.needs_primary(&facts);
        if !self.reach(shard, primary).await || !self.send_begin().await {
            return Ok(());
        }
        let Some(h) = self.held.as_mut() else { return Ok(()) };
        let server_id = match h.conn.prepared.get(&sql) {
            Some(&(sid, ..)) => sid,
            None => {
                let mut p = vec![cmd::STMT_PREPARE];
                p.extend_from_slice(&sql);
                match h.conn.run(&p, Kind::Prepare).await {
                    Ok(r) => match r.prepared {
                        Some(info) => {
                            remember(&mut h.conn, sql.clone(), info).await;
                            info.0
                        }
                        None => {
                            self.error(code::SERVER_LOST, "HY000", "the server did not prepare the statement");
                            return Ok(());
                        }
                    },
                    Err(e) => {
                        if h.conn.broken {
                            self.lost();
                        }
                        self.backend_error(&e);
                        return Ok(());
                    }
                }
            }
        };
        for (param, data) in &long {
            let mut p = BytesMut::with_capacity(7 + data.len());
            p.put_u8(cmd::STMT_SEND_LONG_DATA);
            p.put_u32_le(server_id);
            p.put_u16_le(*param);
            p.put_slice(data);
            if h.conn.write_packet(0, &p).await.is_err() {
                self.lost();
                self.lost_report();
                return Ok(());
            }
        }
        let sent_types = h.conn.bound_types.get(&server_id).cloned();
        let packet = rewrite(&payload, &layout, server_id, types.as_ref(), sent_types.as_ref());
        if let Some(t) = &types {
            h.conn.bound_types.insert(server_id, t.clone());
        }
        let out = self.relay(&packet, Kind::Query).await?;
        if out.lost && !out.sent {
            self.lost_report();
            return Ok(());
        }
        if out.last_insert_id != 0 && !out.failed {
            self.last_insert_id = out.last_insert_id;
        }
        let wrote = facts.facts.need == Need::Primary && !out.failed;
        self.after(out.status, wrote);
        Ok(())
    }

    pub fn long_data(&mut self, payload: &[u8]) {
        // No response, even to a bad packet (as servers do); the execute reports it.
        if payload.len() < 7 {
            return;
        }
        let id = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
        let param = u16::from_le_bytes([payload[5], payload[6]]);
        if let Some(s) = self.stmts.by_id.get_mut(&id) {
            s.long.push((param, Bytes::copy_from_slice(&payload[7..])));
        }
    }

    pub fn close_statement(&mut self, payload: &[u8]) {
        if let Some(b) = payload.get(1..5) {
            self.stmts.by_id.remove(&u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        }
    }

    pub fn reset_statement(&mut self, payload: &[u8]) {
        let id = payload.get(1..5).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        match id.and_then(|id| self.stmts.by_id.get_mut(&id)) {
            Some(s) => {
                s.long.clear();
                self.ok();
            }
            None => self.error(
                code::UNKNOWN_STATEMENT,
                "HY000",
                "Unknown prepared statement handler given to mysqld_stmt_reset",
            ),
        }
    }
}

/// Records a statement prepared on a connection, closing the oldest past the limit and an
/// earlier id of the same text.
async fn remember(conn: &mut crate::backend::mysql::Pooled, sql: Bytes, info: (u32, u16, u16)) {
    let mut close = Vec::new();
    if let Some((old, ..)) = conn.prepared.insert(sql, info)
        && old != info.0
    {
        close.push(old);
    }
    if conn.prepared.len() > MAX_PER_CONN
        && let Some(k) = conn
            .prepared
            .iter()
            .find(|(_, v)| v.0 != info.0)
            .map(|(k, _)| k.clone())
        && let Some((id, ..)) = conn.prepared.remove(&k)
    {
        close.push(id);
    }
    for id in close {
        conn.bound_types.remove(&id);
        let mut p = vec![cmd::STMT_CLOSE];
        p.extend_from_slice(&id.to_le_bytes());
        // COM_STMT_CLOSE has no response.
        let _ = conn.write_packet(0, &p).await;
    }
}

/// Where the parts of an execute packet are.
struct Layout {
    /// The NULL bitmap.
    nulls: std::ops::Range<usize>,
    /// The new-params-bound flag's offset (none without parameters).
    bound_at: Option<usize>,
    /// Parameter types, when the client sent them.
    types: Option<std::ops::Range<usize>>,
    /// Where the values start.
    values: usize,
}

impl Layout {
    fn read(p: &[u8], n: usize) -> Option<Layout> {
        // command, id (4), flags (1), iteration count (4)
        let mut at = 10;
        if p.len() < at {
            return None;
        }
        if n == 0 {
            return Some(Layout {
                nulls: at..at,
                bound_at: None,
                types: None,
                values: at,
            });
        }
        let nulls = at..at + n.div_ceil(8);
        at = nulls.end;
        let bound = *p.get(at)?;
        let bound_at = Some(at);
        at += 1;
        let types = if bound == 1 {
            let t = at..at + 2 * n;
            p.get(t.clone())?;
            at = t.end;
            Some(t)
        } else {
            None
        };
        Some(Layout {
            nulls,
            bound_at,
            types,
            values: at,
        })
    }
}

/// The execute for the server: its statement id, and the parameter types when the server has
/// not seen these for that statement.
fn rewrite(p: &[u8], l: &Layout, server_id: u32, types: Option<&Bytes>, sent: Option<&Bytes>) -> BytesMut {
    let mut out = BytesMut::with_capacity(p.len() + types.map_or(0, |t| t.len()));
    out.put_u8(cmd::STMT_EXECUTE);
    out.put_u32_le(server_id);
    match (l.bound_at, l.types.is_some(), types) {
        (Some(at), false, Some(t)) if sent != Some(t) => {
            out.put_slice(&p[5..at]);
            out.put_u8(1);
            out.put_slice(t);
            out.put_slice(&p[l.values..]);
        }
        _ => out.put_slice(&p[5..]),
    }
    out
}

/// The parameters as text, for routing by the shard key (`None`: NULL, or a value that is not
/// a number or a string).
fn param_texts(p: &[u8], l: &Layout, types: &[u8], n: usize, long: &[u16]) -> Vec<Option<String>> {
    let mut out = Vec::with_capacity(n);
    let mut at = l.values;
    for i in 0..n {
        let null = p.get(l.nulls.start + i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0);
        if null || long.contains(&(i as u16)) {
            out.push(None);
            continue;
        }
        let (kind, unsigned) = match types.get(2 * i..2 * i + 2) {
            Some(t) => (t[0], t[1] & 0x80 != 0),
            None => break,
        };
        let fixed = |len: usize, at: usize| p.get(at..at + len);
        let (text, len) = match kind {
            0x01 => (
                fixed(1, at).map(|b| {
                    if unsigned {
                        b[0].to_string()
                    } else {
                        (b[0] as i8).to_string()
                    }
                }),
                1,
            ),
            0x02 | 0x0d => (
                fixed(2, at).map(|b| {
                    let v = u16::from_le_bytes([b[0], b[1]]);
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i16).to_string()
                    }
                }),
                2,
            ),
            0x03 | 0x09 => (
                fixed(4, at).map(|b| {
                    let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i32).to_string()
                    }
                }),
                4,
            ),
            0x08 => (
                fixed(8, at).map(|b| {
                    let v = u64::from_le_bytes(b.try_into().unwrap_or_default());
                    if unsigned {
                        v.to_string()
                    } else {
                        (v as i64).to_string()
                    }
                }),
                8,
            ),
            0x04 => (None, 4),
            0x05 => (None, 8),
            0x06 => (None, 0),
            0x07 | 0x0a | 0x0b | 0x0c => (None, 1 + p.get(at).copied().unwrap_or(0) as usize),
            _ => match lenenc_int(p.get(at..).unwrap_or_default()) {
                Some((len, size)) => {
                    let end = at + size + len as usize;
                    (
                        p.get(at + size..end).map(|b| String::from_utf8_lossy(b).into_owned()),
                        size + len as usize,
                    )
                }
                None => break,
            },
        };
        out.push(text);
        at += len;
    }
    out.resize(n, None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_packets_are_read_and_rewritten() {
        // Two parameters: BIGINT 7 and VARCHAR "ab"; the second execute leaves the types out.
        let mut p = vec![cmd::STMT_EXECUTE, 5, 0, 0, 0, 0, 1, 0, 0, 0, 0b00, 1, 0x08, 0, 0x0f, 0];
        p.extend_from_slice(&7i64.to_le_bytes());
        p.extend_from_slice(&[2, b'a', b'b']);
        let l = Layout::read(&p, 2).unwrap();
        let types = Bytes::copy_from_slice(&p[l.types.clone().unwrap()]);
        assert_eq!(
            param_texts(&p, &l, &types, 2, &[]),
            vec![Some("7".into()), Some("ab".into())]
        );
        let mut again = p[..11].to_vec();
        again.push(0);
        again.extend_from_slice(&p[16..]);
        let l2 = Layout::read(&again, 2).unwrap();
        assert!(l2.types.is_none());
        assert_eq!(
            param_texts(&again, &l2, &types, 2, &[]),
            vec![Some("7".into()), Some("ab".into())]
        );
        // A connection that never saw the types gets them; one that did does not.
        let r = rewrite(&again, &l2, 99, Some(&types), None);
        assert_eq!(&r[1..5], &99u32.to_le_bytes());
        assert_eq!(
            &r[..],
            &[&[cmd::STMT_EXECUTE][..], &99u32.to_le_bytes(), &p[5..]].concat()[..]
        );
        let same = rewrite(&again, &l2, 99, Some(&types), Some(&types));
        assert_eq!(same.len(), again.len());
        // NULL in the bitmap, long data skipped.
        let mut n = p.clone();
        n[10] = 0b01;
        let l3 = Layout::read(&n, 2).unwrap();
        let mut short = n[..16].to_vec();
        short.extend_from_slice(&[2, b'a', b'b']);
        assert_eq!(param_texts(&short, &l3, &types, 2, &[]), vec![None, Some("ab".into())]);
        assert_eq!(param_texts(&short, &l3, &types, 2, &[1]), vec![None, None]);
        assert!(Layout::read(&p[..11], 2).is_none(), "truncated");
    }
}
