//! Prepared statements (COM_STMT_*), kept per client and prepared again on whichever server
//! connection runs them: statement ids the client sees are the session's own; each server
//! connection keeps its statements by text (shared by every client that prepares the same
//! text), and an execute is rewritten to that connection's id, with the parameter types the
//! server needs when the client left them out (it sends them only on the first execute).
//! Long data (COM_STMT_SEND_LONG_DATA) is held until the execute and sent to the connection
//! that runs it, just before.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::ClientError;
use super::query::Route;
use super::session::Session;
use super::statements::Prepared;
use crate::analyze::{Need, TxEffect};
use crate::plan::shard::Params;
use crate::protocol::mysql::execute::{Layout, param_texts, rewrite};
use crate::protocol::mysql::response::Kind;
use crate::protocol::mysql::{cmd, code};

/// Statements one client may keep prepared (MySQL's default max_prepared_stmt_count).
const MAX_PER_CLIENT: usize = 16_382;

/// Server statements kept per connection before the least recently prepared is closed.
const MAX_PER_CONN: usize = 256;

impl Session {
    pub async fn prepare(&mut self, payload: BytesMut) -> Result<(), ClientError> {
        self.fresh_runtime();
        if self.stmts.by_id.len() >= MAX_PER_CLIENT {
            self.error(
                1461,
                "42000",
                &format!("Can't create more than {MAX_PER_CLIENT} prepared statements in one session: close some"),
            );
            return Ok(());
        }
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
            let mut seq = self.client.reply_seq;
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
            let key = conn_key(&h.conn.db, &sql);
            remember(&mut h.conn, key, (server_id, params, columns)).await;
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
        self.fresh_runtime();
        if self.tx_lost {
            self.error(
                code::TX_FAILED,
                "40001",
                "the transaction's server connection was lost and the transaction rolled back: ROLLBACK, then run it again",
            );
            return Ok(());
        }
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
        if long.iter().any(|(p, d)| *p == u16::MAX && d.is_empty()) {
            self.error(
                code::PACKET_TOO_LARGE,
                "08S01",
                "the statement's long data is over server.max_message_size",
            );
            return Ok(());
        }
        let long_ids: Vec<u16> = long.iter().map(|(p, _)| *p).collect();
        let route = if let Some(shape) = shape {
            let texts = param_texts(&payload, &layout, types.as_deref().unwrap_or_default(), n, &long_ids);
            let values: Vec<Option<&[u8]>> = texts.iter().map(|t| t.as_deref().map(str::as_bytes)).collect();
            let params = Params {
                formats: vec![0; n],
                values,
                types: &[],
                literals: &[],
            };
            self.route_shape(&String::from_utf8_lossy(&sql), &shape, &params)
        } else {
            Route::One(self.default_shard())
        };
        let refusal = match route {
            Route::One(s) => Ok(s),
            Route::Scatter(..) => Err("a prepared statement that reads over several shards is not merged on the MySQL front end yet: send it as a text query, or filter by the shard key".to_owned()),
            Route::Rewritten(..) => Err("generated IDs are filled in for text queries on the MySQL front end: send this INSERT as text, or give the ID column".to_owned()),
            Route::Write(..) => Err("a prepared statement that writes on several shards: send it as a text query (it runs as one XA transaction), or write the rows of one shard key per statement".to_owned()),
            Route::Broadcast(_) => Err("DDL for every shard as a prepared statement: send it as a text query".to_owned()),
            Route::Refuse(why) => Err(why),
        };
        let shard = match refusal {
            Ok(s) => s,
            Err(why) => {
                self.error(code::NOT_SUPPORTED, "0A000", &why);
                return Ok(());
            }
        };
        let primary = self.needs_primary(&facts);
        if !self.reach(shard, primary).await || !self.send_begin().await {
            return Ok(());
        }
        let Some(h) = self.held.as_mut() else { return Ok(()) };
        // A statement is prepared in the database current then: the key names it.
        let key = conn_key(&h.conn.db, &sql);
        let server_id = match h.conn.prepared.get(&key) {
            Some(&(sid, ..)) => sid,
            None => {
                let mut p = vec![cmd::STMT_PREPARE];
                p.extend_from_slice(&sql);
                match h.conn.run(&p, Kind::Prepare).await {
                    Ok(r) => match r.prepared {
                        Some(info) => {
                            remember(&mut h.conn, key, info).await;
                            info.0
                        }
                        None => {
                            self.error(code::SERVER_LOST, "HY000", "the server did not prepare the statement");
                            self.keep_state();
                            return Ok(());
                        }
                    },
                    Err(e) => {
                        if h.conn.broken {
                            self.lost();
                        }
                        self.backend_error(&e);
                        self.keep_state();
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
        let max = self.rt.config.server.max_message_size;
        if let Some(s) = self.stmts.by_id.get_mut(&id) {
            let held: usize = s.long.iter().map(|(_, d)| d.len()).sum();
            if held + payload.len() - 7 > max {
                // Over the limit: the execute is refused (a marker no real chunk has).
                s.long.clear();
                s.long.push((u16::MAX, Bytes::new()));
                return;
            }
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

/// The key of a statement on a server connection: the database it was prepared in and its text.
fn conn_key(db: &str, sql: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(db.len() + 1 + sql.len());
    k.extend_from_slice(db.as_bytes());
    k.push(0);
    k.extend_from_slice(sql);
    Bytes::from(k)
}

impl Session {
    /// After an error that reached no server: the connection's transaction state is as it was,
    /// and a connection not in one goes back to the pool.
    fn keep_state(&mut self) {
        let open = self.held.as_ref().is_some_and(|h| h.in_tx);
        let status = if open {
            crate::protocol::mysql::StatusFlags::SERVER_STATUS_IN_TRANS
        } else {
            crate::protocol::mysql::StatusFlags::empty()
        };
        self.after(status, false);
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
