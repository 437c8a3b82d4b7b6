//! COM_QUERY: transaction control and `autocommit` answered by the proxy while no connection
//! is held, then the statement planned against the shard map and run on one shard (relayed),
//! merged over several (reads), or refused with ER_NOT_SUPPORTED_YET naming the rule.

use bytes::BytesMut;

use super::ClientError;
use super::session::Session;
use crate::analyze::mysql::{MyFacts, code_only};
use crate::analyze::shard::{Shape, shape_mysql};
use crate::analyze::{Need, SetOp, TxEffect};
use crate::plan::shard::{Params, ShardPlan, plan};
use crate::protocol::mysql::code;
use crate::protocol::mysql::response::Kind;
use crate::shardmap::ShardId;

/// Where a statement runs.
pub(super) enum Route {
    /// One shard.
    One(ShardId),
    /// Several shards, merged (reads).
    Scatter(Vec<ShardId>, std::sync::Arc<crate::analyze::shard::Merge>),
    /// A write on several shards, atomic by XA: each shard's statement; `replicated` when every
    /// shard holds the same rows (one shard's count is the answer); the first generated ID.
    Write(Vec<(ShardId, String)>, bool, u64),
    /// One shard, with a text the proxy rewrote (generated IDs written in) and the first ID.
    Rewritten(ShardId, String, u64),
    /// DDL on every shard (MySQL commits DDL as it runs: there is no transaction to join).
    Broadcast(Vec<ShardId>),
    /// Refused; the message.
    Refuse(String),
}

impl Session {
    pub async fn query(&mut self, mut payload: BytesMut) -> Result<(), ClientError> {
        self.fresh_runtime();
        let mut text = String::from_utf8_lossy(&payload[1..]).into_owned();
        let mut a = self
            .shared
            .my_facts
            .get(&text, &self.functions, &self.rt.config.server.limits);
        // The text without literals and comments, lexed once: what the checks below look at.
        let code = code_only(&text);
        let first_word = code.split_whitespace().next().unwrap_or("");
        let single = !code.trim().trim_end_matches(';').contains(';');
        if !single && !self.multi_statements {
            // As the server does for a client that did not ask for multi-statements.
            self.error(
                code::PARSE,
                "42000",
                "You have an error in your SQL syntax: several statements in one query, and the client did not enable CLIENT_MULTI_STATEMENTS",
            );
            return Ok(());
        }
        if first_word.eq_ignore_ascii_case("kill") {
            self.error(
                code::NOT_SUPPORTED,
                "0A000",
                "KILL through shardwire: the id is the proxy's, not a server's thread; close the connection instead (its statement is stopped with it)",
            );
            return Ok(());
        }
        // In a multi-statement the server's own value is the right one (one connection runs it).
        let calls_last_id = code
            .as_bytes()
            .windows(14)
            .any(|w| w.eq_ignore_ascii_case(b"last_insert_id"));
        if single && a.facts.too_complex.is_none() && calls_last_id {
            if let Some(column) = super::ids::lone_call(&text) {
                self.answer_last_insert_id(&column);
                return Ok(());
            }
            if let Some(sql) = super::ids::substitute(&text, self.last_insert_id) {
                // The session's value written in: the server's connection may be another's.
                text = sql;
                payload = BytesMut::with_capacity(text.len() + 1);
                payload.extend_from_slice(&[crate::protocol::mysql::cmd::QUERY]);
                payload.extend_from_slice(text.as_bytes());
                a = self
                    .shared
                    .my_facts
                    .get(&text, &self.functions, &self.rt.config.server.limits);
            }
        }
        if let Some(e) = &a.facts.too_complex {
            self.error(code::PARSE, "42000", &e.to_string());
            return Ok(());
        }
        if self.tx_lost {
            if a.facts.tx == TxEffect::End {
                self.tx_lost = false;
                self.begin = None;
                self.ok();
            } else {
                self.error(
                    code::TX_FAILED,
                    "40001",
                    "the transaction's server connection was lost and the transaction rolled back: ROLLBACK, then run it again",
                );
            }
            return Ok(());
        }
        if self.xid.is_some() && single && a.facts.parsed {
            match a.facts.tx {
                TxEffect::End => return self.end_xa(!first_word.eq_ignore_ascii_case("rollback")).await,
                TxEffect::Begin { read_only } => {
                    // A BEGIN commits what is open, as on one server.
                    if self.finish_xa(true).await {
                        self.begin = Some((text, read_only));
                        self.ok();
                    }
                    return Ok(());
                }
                TxEffect::None => {}
            }
        }
        if self.held.is_none() && single && self.answer_locally(&a, &text) {
            return Ok(());
        }
        let route = self.route(&text, &Params::default());
        let shard = match route {
            Route::One(s) => s,
            Route::Refuse(why) => {
                self.error(code::NOT_SUPPORTED, "0A000", &why);
                return Ok(());
            }
            _ if !single => {
                // Only a statement that runs on one shard as it is may share a query string.
                self.error(
                    code::NOT_SUPPORTED,
                    "0A000",
                    "a statement over several shards (a read, a write, DDL) or with generated IDs in a multi-statement query: send it on its own",
                );
                return Ok(());
            }
            Route::Scatter(shards, merge) => return self.scatter(&shards, &merge).await,
            Route::Broadcast(shards) => return self.broadcast(&shards, &payload).await,
            Route::Write(parts, replicated, first) => return self.multi_write(parts, replicated, first).await,
            Route::Rewritten(shard, sql, first) => return self.run_rewritten(shard, &sql, first).await,
        };
        let primary = self.needs_primary(&a);
        tracing::debug!(sql = %text, shard, primary, pinned = ?self.pinned, "MySQL statement");
        if !self.reach(shard, primary).await || !self.send_begin().await {
            return Ok(());
        }
        if let Some(why) = a.facts.pins_session {
            self.pinned = self.pinned.or(Some(why));
        }
        let mut out = self.relay(&payload, Kind::Query).await?;
        if out.lost && !out.sent {
            let retry = a.facts.need == Need::Read && !self.in_tx() && self.pinned.is_none() && !primary;
            if retry {
                if !self.acquire(shard, true).await {
                    // Reported by acquire.
                    return Ok(());
                }
                out = self.relay(&payload, Kind::Query).await?;
            }
            if out.lost && !out.sent {
                self.lost_report();
                return Ok(());
            }
        }
        if !out.lost {
            self.record_state(&a, out.failed);
        }
        if out.last_insert_id != 0 && !out.failed {
            self.last_insert_id = out.last_insert_id;
        }
        let wrote = a.facts.need == Need::Primary && !out.failed;
        self.after(out.status, wrote);
        Ok(())
    }

    /// BEGIN, COMMIT/ROLLBACK and `SET autocommit` while no connection is held: nothing to send
    /// yet. True when answered.
    fn answer_locally(&mut self, a: &MyFacts, text: &str) -> bool {
        match a.facts.tx {
            TxEffect::Begin { read_only } if a.facts.parsed => {
                self.begin = Some((text.to_owned(), read_only));
                self.ok();
                return true;
            }
            TxEffect::End if a.facts.parsed => {
                self.begin = None;
                self.ok();
                return true;
            }
            _ => {}
        }
        if let Some(v) = a.autocommit
            && a.facts.set_ops.is_empty()
            && a.facts.pins_session.is_none()
            && a.use_db.is_none()
        {
            if v {
                // Turning autocommit on commits what is open: nothing ran.
                self.begin = None;
            }
            self.state.autocommit = v;
            self.ok();
            return true;
        }
        false
    }

    /// The primary is needed for writes and locks, for anything in a transaction that may
    /// write, under `autocommit = 0` (each statement opens one), for settings and pins.
    pub fn needs_primary(&self, a: &MyFacts) -> bool {
        if a.facts.tx == TxEffect::End
            || a.facts.set_ops.iter().all(|o| {
                matches!(
                    o,
                    SetOp::Savepoint { .. } | SetOp::RollbackTo { .. } | SetOp::Release { .. }
                )
            }) && !a.facts.set_ops.is_empty()
        {
            // COMMIT, ROLLBACK and savepoints run wherever the transaction runs.
            return false;
        }
        a.facts.need == Need::Primary
            || !self.state.autocommit
            || self.pinned.is_some()
            || a.facts.pins_session.is_some()
            || !a.facts.set_ops.is_empty()
            || a.use_db.is_some()
            || a.autocommit.is_some()
            || self.begin.as_ref().is_some_and(|(_, read_only)| !read_only)
            || matches!(a.facts.tx, TxEffect::Begin { read_only: false })
    }

    /// Sends a deferred BEGIN on the connection just acquired. False when it failed (reported).
    pub async fn send_begin(&mut self) -> bool {
        let Some((text, read_only)) = self.begin.take() else {
            return true;
        };
        let text = if self.starts_xa(read_only) {
            let xid = super::xa::new_xid();
            let start = format!("XA START '{xid}'");
            self.xid = Some(xid);
            start
        } else {
            text
        };
        let Some(h) = self.held.as_mut() else { return true };
        match h.conn.query(&text).await {
            Ok(r) => {
                h.in_tx = r
                    .status
                    .contains(crate::protocol::mysql::StatusFlags::SERVER_STATUS_IN_TRANS);
                true
            }
            Err(e) => {
                self.xid = None;
                if h.conn.broken {
                    self.lost();
                } else if self.pinned.is_none() && self.parked.is_empty() {
                    // Nothing began: the connection goes back.
                    self.held = None;
                }
                self.backend_error(&e);
                false
            }
        }
    }

    /// A connection lost before any answer: the client hears it.
    pub fn lost_report(&mut self) {
        let msg = if self.tx_lost {
            "Lost connection to the server: the open transaction rolled back (ROLLBACK to go on)"
        } else {
            "Lost connection to the server before it answered"
        };
        self.error(code::SERVER_LOST, "HY000", msg);
    }

    /// Settings, `autocommit` and database changed by a statement that ran.
    fn record_state(&mut self, a: &MyFacts, failed: bool) {
        let Some(h) = self.held.as_mut() else { return };
        if failed {
            if !a.facts.set_ops.is_empty() || a.autocommit.is_some() || a.use_db.is_some() {
                // Part of a multi-statement may have run: the connection's state is unknown,
                // so it is reset before anyone uses it again.
                h.conn.settings = u64::MAX;
            }
            return;
        }
        for op in &a.facts.set_ops {
            if let SetOp::Set { name, sql } = op {
                self.state.set(name, sql);
            }
        }
        self.sig = self.state.signature();
        h.conn.settings = self.sig;
        if let Some(v) = a.autocommit {
            self.state.autocommit = v;
            h.conn.autocommit = v;
        }
        if let Some(db) = &a.use_db {
            self.state.db = db.clone();
            h.conn.db = db.clone();
        }
    }

    /// An INSERT given generated IDs, planned again on its keys.
    fn with_ids(&self, shape: &Shape, rows: usize, params: &Params) -> Route {
        if !params.values.is_empty() {
            return Route::Refuse(
                "generated IDs are filled in for text queries on the MySQL front end: send this INSERT as text, or give the ID column".into(),
            );
        }
        let ids = match self.generate_ids(rows) {
            Ok(ids) => ids,
            Err(m) => return Route::Refuse(m),
        };
        let filled = crate::analyze::shard::fill_ids(shape, crate::analyze::shard::IdValues::Literals(&ids));
        let (Some((stmt, keys)), Shape::InsertFill { group, .. }) = (filled, shape) else {
            return Route::Refuse("this INSERT could not be given generated IDs".into());
        };
        let sql = stmt.to_string();
        let insert = Shape::Insert {
            group: *group,
            keys,
            stmt: std::sync::Arc::new(stmt),
        };
        let map = &self.rt.config.map;
        match plan(&insert, map, params) {
            ShardPlan::One(s) => Route::Rewritten(s, sql, ids[0]),
            ShardPlan::InsertSplit { parts } => {
                Route::Write(parts.into_iter().map(|p| (p.shard, p.sql)).collect(), false, ids[0])
            }
            ShardPlan::Refuse(m) => Route::Refuse(m),
            _ => Route::Refuse("this INSERT with generated IDs cannot be routed".into()),
        }
    }

    /// Plans a statement text with its parameters.
    pub fn route(&self, text: &str, params: &Params) -> Route {
        if self.rt.config.map.tables.is_empty() {
            return Route::One(self.default_shard());
        }
        self.route_shape(text, &shape_mysql(text, &self.rt.config.map), params)
    }

    /// As [`Session::route`], with the statement's shape under the current map already known.
    pub fn route_shape(&self, text: &str, shape: &Shape, params: &Params) -> Route {
        let map = &self.rt.config.map;
        if *shape == Shape::Unparsed
            && let Some(t) = code_only(text)
                .to_ascii_lowercase()
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
                .find(|w| map.tables.contains_key(*w))
        {
            return Route::Refuse(format!(
                "shardwire could not parse this statement, so it cannot tell which shard holds the rows of {t}: rewrite it in a form the parser takes, or run it on a shard directly"
            ));
        }
        let anywhere = matches!(shape, Shape::Neutral | Shape::ReferenceRead | Shape::Unparsed);
        let ddl = *shape == Shape::Broadcast;
        let planned = plan(shape, map, params);
        if let Some(why) = copies_in_the_way(shape, map, &planned) {
            return Route::Refuse(why);
        }
        match planned {
            ShardPlan::One(s) if anywhere => Route::One(self.held.as_ref().map_or(s, |h| h.shard)),
            ShardPlan::One(s) => Route::One(s),
            ShardPlan::Scatter { shards, merge } => Route::Scatter(shards, merge),
            ShardPlan::Write { shards, .. } if shards.len() == 1 => Route::One(shards[0]),
            ShardPlan::Write { shards, .. } if ddl => Route::Broadcast(shards),
            ShardPlan::Refuse(why) => Route::Refuse(why),
            ShardPlan::Write { shards, replicated } => {
                Route::Write(shards.into_iter().map(|s| (s, text.to_owned())).collect(), replicated, 0)
            }
            ShardPlan::InsertSplit { parts } if parts.iter().all(|p| p.params.is_empty()) => {
                Route::Write(parts.into_iter().map(|p| (p.shard, p.sql)).collect(), false, 0)
            }
            ShardPlan::InsertSplit { .. } => Route::Refuse(
                "a prepared INSERT whose rows belong to several shards: insert the rows of one shard key per statement".into(),
            ),
            ShardPlan::GenerateIds { rows, .. } => self.with_ids(shape, rows, params),
            ShardPlan::NeedColumns { table } => Route::Refuse(format!(
                "INSERT into sharded table {table} without a column list: name the columns"
            )),
            ShardPlan::InsertSelect { .. } => Route::Refuse(
                "INSERT ... SELECT on sharded tables is not supported on the MySQL front end yet: select the rows, then insert them".into(),
            ),
            ShardPlan::Fenced { group, partition } => Route::Refuse(format!(
                "partition {partition} of group {group} is being moved: retry in a moment"
            )),
            ShardPlan::CopySplit { .. } | ShardPlan::CopyOut { .. } => Route::Refuse("COPY is PostgreSQL's".into()),
            ShardPlan::Statements => Route::Refuse(
                "a query string with several statements for different shards: send the statements one at a time".into(),
            ),
        }
    }
}

/// While a partition moves, the shard that does not serve it may hold a copy of its rows; the
/// PostgreSQL front end leaves the copy out of each shard's text with PostgreSQL's partition
/// hash, which MySQL does not have. A statement over several shards of such a group (or of a
/// shape that does not say its group) is refused rather than read a row twice.
fn copies_in_the_way(shape: &Shape, map: &crate::shardmap::ShardMap, planned: &ShardPlan) -> Option<String> {
    let several = match planned {
        ShardPlan::Scatter { .. } | ShardPlan::CopyOut { .. } => true,
        ShardPlan::Write { shards, replicated } => shards.len() > 1 && !replicated,
        _ => false,
    };
    if !several || !crate::analyze::shard::any_copies(map) {
        return None;
    }
    let moving = match shape {
        Shape::Group { group, .. } => map.groups.get(*group).filter(|g| !g.states.is_empty()),
        _ => map.groups.iter().find(|g| !g.states.is_empty()),
    }?;
    Some(format!(
        "a partition of group {} is moving, and the shard that does not serve it may hold a copy of its rows, which \
         a statement over several shards would read twice; the MySQL front end cannot leave the copy out: run it \
         once the partition serves again, or filter by the shard key",
        moving.name
    ))
}
