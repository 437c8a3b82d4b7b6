//! `SELECT shardwire.next_id()` and `SELECT shardwire.next_ids(n)`, answered by the proxy in the
//! simple and the extended protocol: one bigint column, one row per ID.

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::analyze::{Count, ProxyCall};
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::{self, BindParts};
use crate::protocol::pg::sqlstate::SqlState;

/// Most IDs one `next_ids` call hands out.
pub const MAX_IDS_PER_CALL: u64 = 100_000;

fn column(call: &ProxyCall) -> &'static str {
    match call {
        ProxyCall::NextId => "next_id",
        ProxyCall::NextIds(_) => "next_ids",
        ProxyCall::Signal { terminate, .. } => super::signal::column(*terminate),
    }
}

/// RowDescription of the one bigint column.
pub fn describe(out: &mut BytesMut, column: &'static str, format: i16) {
    rows::one_column(out, column, oid::INT8, 8, format);
}

/// DataRows and CommandComplete.
pub fn write_rows(out: &mut BytesMut, ids: &[u64], format: i16) {
    for id in ids {
        let cell = if format == 1 {
            Bytes::copy_from_slice(&(*id as i64).to_be_bytes())
        } else {
            Bytes::from(id.to_string())
        };
        rows::data_row(out, &[Some(cell)], 1);
    }
    msg::command_complete(out, &format!("SELECT {}", ids.len()));
}

impl Session {
    /// IDs for a call, with the Bind's parameters for `next_ids($1)`.
    pub(super) fn issue_ids(&self, call: &ProxyCall, bind: Option<&BindParts>) -> Result<Vec<u64>, (SqlState, String)> {
        let Some(g) = &self.shared.ids else {
            return Err((
                SqlState::FEATURE_NOT_SUPPORTED,
                "shardwire.next_id() needs an [ids] section with this instance's worker_id in the configuration".into(),
            ));
        };
        let n = match call {
            ProxyCall::NextId => 1,
            // Answered by `signal`, never here.
            ProxyCall::Signal { .. } => return Ok(Vec::new()),
            ProxyCall::NextIds(Count::Lit(n)) => *n,
            ProxyCall::NextIds(Count::Param(i)) => {
                let raw = bind.and_then(|b| b.values.get(*i).cloned().flatten());
                let format = bind.map_or(0, |b| b.param_format(*i));
                match raw {
                    Some(r) if format == 0 => std::str::from_utf8(&r)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(u64::MAX),
                    Some(r) if r.len() == 8 => i64::from_be_bytes(r[..].try_into().unwrap_or_default()).max(0) as u64,
                    Some(r) if r.len() == 4 => i32::from_be_bytes(r[..].try_into().unwrap_or_default()).max(0) as u64,
                    _ => u64::MAX,
                }
            }
        };
        if n > MAX_IDS_PER_CALL {
            return Err((
                SqlState::INVALID_PARAMETER_VALUE,
                format!("shardwire.next_ids(n) takes n from 0 to {MAX_IDS_PER_CALL}"),
            ));
        }
        g.next_n(n as usize)
            .map_err(|e| (SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()))
    }

    /// `n` IDs for the rows of an INSERT.
    pub(super) fn issue_count(&self, n: u64) -> Result<Vec<u64>, (SqlState, String)> {
        match &self.shared.ids {
            None => Err((
                SqlState::FEATURE_NOT_SUPPORTED,
                "the shard map gives this table an id_column, but shardwire has no [ids] section with a worker id; \
                 configure one or give the column's values"
                    .into(),
            )),
            Some(g) => g
                .next_n(n as usize)
                .map_err(|e| (SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string())),
        }
    }

    /// A simple Query that is a proxy call: answered here, in order with anything owed.
    pub(super) fn answer_ids_query(&mut self, call: &ProxyCall) {
        let mut b = BytesMut::new();
        match self.issue_ids(call, None) {
            Ok(ids) => {
                describe(&mut b, column(call), 0);
                write_rows(&mut b, &ids, 0);
            }
            Err((code, m)) => msg::error_response(&mut b, msg::Severity::Error, code, &m),
        }
        let status = match &self.held {
            Some(h) if h.in_transaction() => b'T',
            Some(_) => b'I',
            None => self.local_tx_status(),
        };
        msg::ready_for_query(&mut b, status);
        self.respond_synth(b.freeze());
    }

    /// Describe of a prepared proxy call: its parameter (as the Parse declared it, or the
    /// function's argument type) and its column.
    pub(super) fn describe_proxy_statement(&mut self, call: &ProxyCall, declared: &[u8]) {
        let mut b = BytesMut::new();
        let param = match call {
            ProxyCall::NextIds(Count::Param(_)) => Some(oid::INT8),
            ProxyCall::Signal {
                pid: Count::Param(_), ..
            } => Some(oid::INT4),
            _ => None,
        };
        let declared = declared
            .get(2..6)
            .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            .filter(|&o| o != 0);
        let mut t = Vec::with_capacity(6);
        match param {
            Some(p) => {
                t.extend_from_slice(&1i16.to_be_bytes());
                t.extend_from_slice(&declared.unwrap_or(p).to_be_bytes());
            }
            None => t.extend_from_slice(&0i16.to_be_bytes()),
        }
        msg::put_raw(&mut b, b't', &t);
        match call {
            ProxyCall::Signal { terminate, .. } => {
                super::signal::describe(&mut b, super::signal::column(*terminate), 0)
            }
            _ => describe(&mut b, column(call), 0),
        }
        self.answer_local(&b);
    }

    /// Bind of a prepared proxy call: the IDs are issued now, returned at Execute.
    pub(super) fn bind_ids(&mut self, portal: &str, call: &ProxyCall, parts: &BindParts) {
        match self.issue_ids(call, Some(parts)) {
            Ok(ids) => {
                let format = rows::format_at(&parts.result_formats, 0);
                self.local_portal = Some((
                    portal.to_owned(),
                    super::local_portal::LocalPortal::Ids {
                        column: column(call),
                        ids,
                        format,
                    },
                ));
                self.answer_local(&msg::empty(b'2'));
            }
            Err((code, m)) => self.local_error(code, &m),
        }
    }
}
