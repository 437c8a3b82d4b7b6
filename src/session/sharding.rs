//! Shard routing in the session: which shard a client message goes to, the transaction rules
//! across shards (a BEGIN waits for the first statement to pick the shard; a statement that
//! would cross to another shard inside a transaction is refused and the transaction fails, as
//! in PostgreSQL after an error), and handing statements on several shards to `multi`.

use std::sync::Arc;

use super::client::SessionError;
use super::insert_select::SelectFailure;
use super::multi::{MultiPortal, Outcome, Source};
use super::state::Stmt;
use super::{Flow, Session};
use crate::analyze::shard::Shape;
use crate::analyze::{Facts, TxEffect};
use crate::plan::shard::{self, Params, ShardPlan};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages::{self as msg, Severity};
use crate::protocol::pg::rows::BindParts;
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// Where a client message goes.
pub(super) enum Routed {
    /// Handled here (answered, refused, stalled or run on several shards).
    Done(Flow),
    /// Forward to this shard.
    Shard(ShardId),
    /// Send this text instead of the client's (generated IDs added) to this shard.
    Rewrite(ShardId, String),
    /// Bind this statement (generated IDs added, or its columns named) with these parameters on
    /// this shard.
    BindFilled(ShardId, Arc<Stmt>, BindParts),
    /// The INSERT needs its table's columns: read them, then route the Bind again.
    NeedColumns(String),
    /// An INSERT ... SELECT: read the SELECT's rows (this query), then route the INSERT of them.
    InsertSelect(String),
    /// It touches a fenced partition (group, partition): wait, then route the Bind again.
    Fenced(String, u32),
}

impl Session {
    /// The map has sharded or reference tables (otherwise everything is on the default shard).
    pub(super) fn sharded(&self) -> bool {
        !self.runtime.config.map.tables.is_empty()
    }

    pub(super) fn default_shard(&self) -> ShardId {
        self.runtime.config.map.default_shard
    }

    pub(super) fn in_transaction(&self) -> bool {
        self.pending_begin.is_some()
            || !self.parked.is_empty()
            || self.implicit_multi
            || self.held.as_ref().is_some_and(|h| h.in_transaction())
    }

    pub(super) fn cross_shard_message(&self, shard: ShardId) -> String {
        let map = &self.runtime.config.map;
        let held = self.held.as_ref().map_or("another shard".to_string(), |h| {
            format!("shard {}", map.shards[h.shard])
        });
        format!(
            "this statement needs shard {} but the session is pinned to its connection on {held} ({}): session state (temporary tables, \
             LISTEN, session advisory locks, session pooling) lives on one shard; the transaction, if any, is aborted",
            map.shards[shard],
            self.pinned.unwrap_or("session state")
        )
    }

    /// A refusal (0A000). Inside a transaction the transaction fails: only ROLLBACK is accepted.
    pub(super) fn refuse(&mut self, extended: bool, message: &str) {
        self.shared.stats.record_plan("refused");
        self.fail_statement(SqlState::FEATURE_NOT_SUPPORTED, extended, message);
    }

    /// A statement the proxy fails itself: an error in order, and inside a transaction block the
    /// transaction fails as on the server (25P02 until it ends).
    pub(super) fn fail_statement(&mut self, code: SqlState, extended: bool, message: &str) {
        let in_tx = self.in_transaction();
        if in_tx {
            self.tx_refused = true;
        }
        if extended {
            self.local_error(code, message);
        } else {
            let mut b = bytes::BytesMut::new();
            msg::error_response(&mut b, Severity::Error, code, message);
            msg::ready_for_query(&mut b, if in_tx { b'E' } else { b'I' });
            self.respond_synth(b.freeze());
        }
    }

    /// Transaction status the proxy reports when no backend answers for it.
    pub(super) fn local_tx_status(&self) -> u8 {
        if self.tx_refused {
            b'E'
        } else if self.in_transaction() {
            b'T'
        } else {
            b'I'
        }
    }

    /// Plans a simple-protocol text: first with its literals as parameters (one cached analysis
    /// for every text of the same shape); anything but a single shard is planned again from the
    /// exact text, so rewritten statements and messages carry the real literals.
    fn plan_simple(&self, sql: &str, literal_free: Option<(String, Vec<String>)>) -> (ShardPlan, bool) {
        let map = &self.runtime.config.map;
        if let Some((text, literals)) = literal_free.or_else(|| crate::analyze::fingerprint::parameterize(sql)) {
            let shape = self.shared.shapes.get(&text, map);
            if *shape != crate::analyze::shard::Shape::Unparsed {
                let params = Params {
                    literals: &literals,
                    ..Params::default()
                };
                if let p @ ShardPlan::One(_) = shard::plan(&shape, map, &params) {
                    if *shape == Shape::Broadcast {
                        self.shared.forget_columns();
                    }
                    return (p, runs_anywhere(&shape));
                }
            }
        }
        let shape = self.shared.shapes.get(sql, map);
        if *shape == Shape::Broadcast {
            // DDL: a table's columns may change.
            self.shared.forget_columns();
        }
        (shard::plan(&shape, map, &Params::default()), runs_anywhere(&shape))
    }

    /// Plans an exact text (one the proxy rewrote).
    fn plan_text(&self, sql: &str) -> ShardPlan {
        let map = &self.runtime.config.map;
        shard::plan(&self.shared.shapes.get(sql, map), map, &Params::default())
    }

    /// A statement any shard can answer runs where the session already is.
    pub(super) fn here_or(&self, shard: ShardId, anywhere: bool) -> ShardId {
        match &self.held {
            Some(h) if anywhere => h.shard,
            _ => shard,
        }
    }

    /// Takes a fresh configuration snapshot when no backend is held; whether shard routing applies.
    pub(super) fn route_start(&mut self) -> bool {
        if self.held.is_none() {
            self.runtime = self.shared.runtime.load_full();
        }
        self.sharded()
    }

    /// Routes a simple Query.
    pub(super) async fn route_query(
        &mut self,
        f: &Frame,
        sql: &str,
        facts: &Arc<Facts>,
        literal_free: Option<(String, Vec<String>)>,
    ) -> Result<Routed, SessionError> {
        if !self.route_start() {
            return Ok(Routed::Shard(self.default_shard()));
        }
        let single_statement = !sql.trim().trim_end_matches(';').contains(';');
        if self.multi_tx()
            && let Some(flow) = self.multi_tx_control(f, sql, facts, single_statement, None).await?
        {
            return Ok(Routed::Done(flow));
        }
        if self.tx_refused {
            return Ok(Routed::Done(self.in_refused_transaction(facts, false)));
        }
        if facts.pins_session.is_some() || self.pinned.is_some() {
            // Session state (temporary tables, LISTEN, ...) lives on one connection: keep it there.
            return Ok(Routed::Shard(
                self.held.as_ref().map_or(self.default_shard(), |h| h.shard),
            ));
        }
        if let TxEffect::Begin { read_only } = facts.tx
            && single_statement
        {
            self.tx_begin = Some(sql.to_owned());
            self.tx_read_only = read_only;
        }
        if self.held.is_none() && single_statement {
            match facts.tx {
                TxEffect::Begin { .. } if self.pending_begin.is_none() => {
                    self.pending_begin = Some(sql.to_owned());
                    msg::command_complete(&mut self.client.wbuf, "BEGIN");
                    msg::ready_for_query(&mut self.client.wbuf, b'T');
                    return Ok(Routed::Done(Flow::Continue));
                }
                TxEffect::End if self.pending_begin.is_some() => {
                    self.pending_begin = None;
                    msg::command_complete(&mut self.client.wbuf, end_tag(sql));
                    msg::ready_for_query(&mut self.client.wbuf, b'I');
                    return Ok(Routed::Done(Flow::Continue));
                }
                _ => {}
            }
        }
        if let Some(h) = &self.held
            && (h.in_transaction() || self.pinned.is_some())
            && matches!(facts.tx, TxEffect::End | TxEffect::Begin { .. })
        {
            return Ok(Routed::Shard(h.shard));
        }
        let (mut plan, anywhere) = self.plan_simple(sql, literal_free);
        let mut rewritten: Option<String> = None;
        if let ShardPlan::InsertSelect { select } = &plan {
            if let Some(flow) = self.clear_for_statement(f) {
                return Ok(Routed::Done(flow));
            }
            let select = select.clone();
            match Box::pin(self.insert_select(sql, &select, None)).await {
                Ok((text, none)) => {
                    plan = match none {
                        // Nothing to insert: any shard answers it, with RETURNING's columns.
                        true => ShardPlan::One(self.here_or(self.default_shard(), true)),
                        false => self.plan_text(&text),
                    };
                    rewritten = Some(text);
                }
                Err(SelectFailure::Proxy(code, m)) => {
                    self.fail_statement(code, false, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
                Err(SelectFailure::Server(e)) => {
                    self.fail_with_frame(e.raw(), false);
                    return Ok(Routed::Done(Flow::Continue));
                }
            }
        }
        if let ShardPlan::NeedColumns { table } = &plan {
            let columns = match Box::pin(self.load_columns(table)).await {
                Ok(c) => c,
                Err((code, m)) => {
                    self.fail_statement(code, false, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
            };
            match crate::analyze::shard::with_columns(rewritten.as_deref().unwrap_or(sql), &columns) {
                Some(text) => {
                    plan = self.plan_text(&text);
                    rewritten = Some(text);
                }
                // More values than columns: the server says so.
                None => plan = ShardPlan::One(self.default_shard()),
            }
        }
        if let ShardPlan::GenerateIds { rows, .. } = plan {
            // Generate the IDs, add them to the statement, and route the result.
            let map = self.runtime.config.map.clone();
            let shape = self.shared.shapes.get(rewritten.as_deref().unwrap_or(sql), &map);
            let ids = match self.issue_count(rows as u64) {
                Ok(ids) => ids,
                Err((code, m)) => {
                    let mut b = bytes::BytesMut::new();
                    msg::error_response(&mut b, Severity::Error, code, &m);
                    msg::ready_for_query(&mut b, self.local_tx_status());
                    self.respond_synth(b.freeze());
                    return Ok(Routed::Done(Flow::Continue));
                }
            };
            let Some((stmt, keys)) =
                crate::analyze::shard::fill_ids(&shape, crate::analyze::shard::IdValues::Literals(&ids))
            else {
                self.refuse(false, "internal error: the INSERT could not be given IDs");
                return Ok(Routed::Done(Flow::Continue));
            };
            let Shape::InsertFill { group, .. } = shape.as_ref() else {
                return Ok(Routed::Done(Flow::Continue));
            };
            rewritten = Some(stmt.to_string());
            let filled = Shape::Insert {
                group: *group,
                keys,
                stmt: Arc::new(stmt),
            };
            plan = shard::plan(&filled, &map, &Params::default());
        }
        let sql = rewritten.as_deref().unwrap_or(sql);
        match plan {
            ShardPlan::One(s) => {
                self.shared.stats.record_plan("single-shard");
                let s = self.here_or(s, anywhere);
                Ok(match rewritten {
                    Some(text) => Routed::Rewrite(s, text),
                    None => Routed::Shard(s),
                })
            }
            ShardPlan::Refuse(m) => {
                self.refuse(false, &m);
                Ok(Routed::Done(Flow::Continue))
            }
            ShardPlan::Fenced { group, partition } => {
                if let Err((code, m)) = Box::pin(self.wait_unfenced(&group, partition)).await {
                    self.fail_statement(code, false, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
                // Handled again from the start, under the map that lifted the fence.
                self.switch_wait = true;
                Ok(Routed::Done(Flow::Stall(f.clone())))
            }
            multi => {
                if self.pinned.is_some() {
                    let m = format!(
                        "this statement runs on several shards ({}) but the session is pinned to one shard ({}); the transaction, if any, is aborted",
                        multi.kind(),
                        self.pinned.unwrap_or("session state")
                    );
                    self.refuse(false, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
                if self.in_transaction() {
                    if let Some(flow) = self.refuse_in_transaction(&multi, false) {
                        return Ok(Routed::Done(flow));
                    }
                    if let Some(flow) = self.wait_quiet(f) {
                        return Ok(Routed::Done(flow));
                    }
                } else if self.held.is_some() {
                    return Ok(Routed::Done(Flow::Stall(f.clone())));
                }
                // Boxed, as every multi-shard path: its future is large and rare, and would otherwise be
                // part of (and moved with) every message's future.
                let outcome = Box::pin(self.run_multi(&multi, sql, Source::Simple, facts, true)).await?;
                if outcome == Outcome::Failed && self.in_transaction() {
                    // As on one database, an error fails the transaction.
                    self.tx_refused = true;
                }
                let status = self.local_tx_status();
                msg::ready_for_query(&mut self.client.wbuf, status);
                Ok(Routed::Done(Flow::Continue))
            }
        }
    }

    /// Transaction control in a transaction spanning shards: COMMIT and ROLLBACK end it on every
    /// shard, savepoint commands run on every shard, and what cannot be done across shards is
    /// refused. `None`: the statement goes on to be routed. `portal`: a Bind's.
    pub(super) async fn multi_tx_control(
        &mut self,
        f: &Frame,
        sql: &str,
        facts: &Facts,
        single_statement: bool,
        portal: Option<&str>,
    ) -> Result<Option<Flow>, SessionError> {
        let extended = portal.is_some();
        let savepoint = super::transaction::is_savepoint_command(facts);
        let prepare = sql
            .trim_start()
            .get(..19)
            .is_some_and(|p| p.eq_ignore_ascii_case("prepare transaction"));
        if !single_statement && (facts.tx != TxEffect::None || savepoint) {
            self.refuse(
                extended,
                "transaction control in a query string with several statements, in a transaction spanning shards: send \
                 COMMIT, ROLLBACK and savepoint commands on their own",
            );
            return Ok(Some(Flow::Continue));
        }
        if prepare {
            self.refuse(
                extended,
                "PREPARE TRANSACTION in a transaction spanning shards: shardwire commits it across shards with its own \
                 two-phase commit; send COMMIT",
            );
            return Ok(Some(Flow::Continue));
        }
        if facts.tx == TxEffect::End {
            return Ok(Some(Box::pin(self.end_multi(f, sql, portal)).await?));
        }
        if savepoint && !self.tx_refused {
            return Ok(Box::pin(self.savepoint_everywhere(f, sql, extended)).await);
        }
        Ok(None)
    }

    /// After a refusal inside a transaction: ROLLBACK (or COMMIT, which then rolls back) ends it;
    /// anything else fails as PostgreSQL fails it.
    fn in_refused_transaction(&mut self, facts: &Facts, extended: bool) -> Flow {
        if facts.tx != TxEffect::End {
            let m = "current transaction is aborted, commands ignored until end of transaction block";
            if extended {
                self.local_error(SqlState::IN_FAILED_SQL_TRANSACTION, m);
            } else {
                let mut b = bytes::BytesMut::new();
                msg::error_response(&mut b, Severity::Error, SqlState::IN_FAILED_SQL_TRANSACTION, m);
                msg::ready_for_query(&mut b, b'E');
                self.respond_synth(b.freeze());
            }
            return Flow::Continue;
        }
        self.tx_refused = false;
        self.pending_begin = None;
        match self.held.as_mut() {
            Some(h) => {
                msg::query(&mut h.wbuf, "ROLLBACK");
                h.checkout.conn.unnamed = None;
                h.ops.push_back(super::state::Op::Query {
                    set_ops: Vec::new(),
                    failed: false,
                });
                if extended {
                    // The client's Execute still expects its own answers: the ROLLBACK above
                    // answers as a simple query, so its completion is all the client sees.
                    self.ignore_till_sync = true;
                }
            }
            None => {
                msg::command_complete(&mut self.client.wbuf, "ROLLBACK");
                if !extended {
                    msg::ready_for_query(&mut self.client.wbuf, b'I');
                }
            }
        }
        Flow::Continue
    }

    /// Routes a Bind (the caller checked [`Session::route_start`]): by its parameters. `Done`
    /// when it was answered here.
    pub(super) fn route_bind(
        &mut self,
        f: &Frame,
        portal: &str,
        stmt: &Arc<Stmt>,
        parts: BindParts,
    ) -> Result<Routed, SessionError> {
        if self.tx_refused {
            self.local_error(
                SqlState::IN_FAILED_SQL_TRANSACTION,
                "current transaction is aborted, commands ignored until end of transaction block",
            );
            return Ok(Routed::Done(Flow::Continue));
        }
        if let Some(h) = &self.held
            && (h.in_transaction() || self.pinned.is_some())
            && matches!(stmt.facts.tx, TxEffect::End | TxEffect::Begin { .. })
        {
            return Ok(Routed::Shard(h.shard));
        }
        let single_statement = !stmt.query.trim().trim_end_matches(';').contains(';');
        if let TxEffect::Begin { read_only } = stmt.facts.tx
            && single_statement
        {
            self.tx_begin = Some(stmt.query.clone());
            self.tx_read_only = read_only;
        }
        // A BEGIN waits for the shard of the transaction's first statement, as in the simple
        // protocol (JDBC sends BEGIN this way); an empty transaction ends without a shard.
        if self.held.is_none() && self.multi_portal.is_none() && single_statement {
            let tag = match stmt.facts.tx {
                TxEffect::Begin { .. } if self.pending_begin.is_none() => {
                    self.pending_begin = Some(stmt.query.clone());
                    Some("BEGIN")
                }
                TxEffect::End if self.pending_begin.is_some() => {
                    self.pending_begin = None;
                    Some(end_tag(&stmt.query))
                }
                _ => None,
            };
            if let Some(tag) = tag {
                self.local_portal = Some((portal.to_owned(), super::ids::LocalPortal::Tag(tag)));
                self.answer_local(&msg::empty(b'2'));
                return Ok(Routed::Done(Flow::Continue));
            }
        }
        let params = Params {
            formats: (0..parts.values.len()).map(|i| parts.param_format(i)).collect(),
            values: parts.values.iter().map(|v| v.as_deref()).collect(),
            literals: &[],
        };
        let map = self.runtime.config.map.clone();
        let mut shape = match stmt.shape.get() {
            Some((m, s)) if Arc::ptr_eq(m, &map) => s.clone(),
            _ => {
                let s = self.shared.shapes.get(&stmt.query, &map);
                let _ = stmt.shape.set((map.clone(), s.clone()));
                s
            }
        };
        if *shape == Shape::Broadcast {
            self.shared.forget_columns();
        }
        let mut plan = shard::plan(&shape, &map, &params);
        let mut stmt = stmt.clone();
        let mut filled_bind = false;
        if let ShardPlan::NeedColumns { table } = &plan {
            // The statement with its columns named, prepared under a name of its own.
            let Some(columns) = self.cached_columns(table) else {
                return Ok(Routed::NeedColumns(table.clone()));
            };
            match crate::analyze::shard::with_columns(&stmt.query, &columns) {
                Some(text) => {
                    let named = stmt
                        .named
                        .get_or_init(|| Arc::new(Stmt::new(&text, &stmt.param_types, stmt.facts.clone())))
                        .clone();
                    stmt = named;
                    shape = self.shared.shapes.get(&stmt.query, &map);
                    plan = shard::plan(&shape, &map, &params);
                    filled_bind = true;
                }
                None => plan = ShardPlan::One(self.default_shard()),
            }
        }
        if let ShardPlan::InsertSelect { select } = &plan {
            return Ok(Routed::InsertSelect(select.clone()));
        }
        let mut parts = parts;
        if let ShardPlan::GenerateIds { rows, .. } = plan {
            let Shape::InsertFill {
                group, params: used, ..
            } = shape.as_ref()
            else {
                return Ok(Routed::Done(Flow::Continue));
            };
            let first = (*used).max(parts.values.len());
            let ids = match self.issue_count(rows as u64) {
                Ok(ids) => ids,
                Err((code, m)) => {
                    self.local_error(code, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
            };
            let (filled_ast, filled_stmt) = stmt
                .filled
                .get_or_init(|| {
                    let (ast, _) =
                        crate::analyze::shard::fill_ids(&shape, crate::analyze::shard::IdValues::Params { first })
                            .expect("an InsertFill shape fills");
                    let given = stmt
                        .param_types
                        .get(..2)
                        .map_or(0, |b| i16::from_be_bytes([b[0], b[1]]).max(0) as usize);
                    let mut types = ((first + rows) as i16).to_be_bytes().to_vec();
                    for i in 0..first {
                        match stmt.param_types.get(2 + 4 * i..6 + 4 * i) {
                            Some(t) if i < given => types.extend_from_slice(t),
                            _ => types.extend_from_slice(&0u32.to_be_bytes()),
                        }
                    }
                    for _ in 0..rows {
                        types.extend_from_slice(&crate::protocol::pg::oid::INT8.to_be_bytes());
                    }
                    let text = ast.to_string();
                    (Arc::new(ast), Arc::new(Stmt::new(&text, &types, stmt.facts.clone())))
                })
                .clone();
            let Some((_, keys)) =
                crate::analyze::shard::fill_ids(&shape, crate::analyze::shard::IdValues::Params { first })
            else {
                return Ok(Routed::Done(Flow::Continue));
            };
            let mut formats: Vec<i16> = (0..first).map(|i| parts.param_format(i)).collect();
            formats.extend(std::iter::repeat_n(1, rows));
            let mut values = parts.values.clone();
            values.resize(first, None);
            values.extend(
                ids.iter()
                    .map(|id| Some(bytes::Bytes::copy_from_slice(&(*id as i64).to_be_bytes()))),
            );
            parts = BindParts {
                param_formats: formats,
                values,
                result_formats: parts.result_formats.clone(),
            };
            let params = Params {
                formats: parts.param_formats.clone(),
                values: parts.values.iter().map(|v| v.as_deref()).collect(),
                literals: &[],
            };
            let insert = Shape::Insert {
                group: *group,
                keys,
                stmt: filled_ast,
            };
            plan = shard::plan(&insert, &map, &params);
            stmt = filled_stmt;
            filled_bind = true;
        }
        let stmt = &stmt;
        match plan {
            ShardPlan::One(s) => {
                self.shared.stats.record_plan("single-shard");
                let s = self.here_or(s, runs_anywhere(&shape));
                if filled_bind {
                    return Ok(Routed::BindFilled(s, stmt.clone(), parts));
                }
                Ok(Routed::Shard(s))
            }
            ShardPlan::Refuse(m) => {
                self.refuse(true, &m);
                Ok(Routed::Done(Flow::Continue))
            }
            ShardPlan::Fenced { group, partition } => Ok(Routed::Fenced(group, partition)),
            multi => {
                if self.pinned.is_some() {
                    self.refuse(
                        true,
                        "this statement runs on several shards but the session is pinned to one shard",
                    );
                    return Ok(Routed::Done(Flow::Continue));
                }
                if self.in_transaction() {
                    // It runs at Execute, on the transaction's connections.
                    if let Some(flow) = self.refuse_in_transaction(&multi, true) {
                        return Ok(Routed::Done(flow));
                    }
                } else if let Some(h) = self.held.as_mut() {
                    if !(h.needs_sync && h.wrote && !h.copy_in) {
                        // Nothing to commit with it: the pipeline's part there ends, then the
                        // statement runs on its own connections.
                        if h.needs_sync && !h.copy_in {
                            crate::protocol::pg::rows::sync(&mut h.wbuf);
                            h.ops.push_back(super::state::Op::PipelineSync { failed: false });
                            h.needs_sync = false;
                        }
                        return Ok(Routed::Done(Flow::Stall(f.clone())));
                    }
                    // The pipeline wrote on one shard: it becomes one transaction with this
                    // statement, committed on every shard at the client's Sync.
                    self.pipeline_becomes_transaction();
                }
                self.multi_portal = Some(MultiPortal {
                    name: portal.to_owned(),
                    plan: multi,
                    stmt: stmt.clone(),
                    bind: parts,
                    describe: false,
                });
                self.portals.insert(portal, stmt.clone());
                self.respond_synth(msg::empty(b'2'));
                Ok(Routed::Done(Flow::Continue))
            }
        }
    }

    /// Execute of a portal bound to several shards: runs it now (inside a transaction once the
    /// held connection is quiet).
    pub(super) async fn execute_multi(&mut self, f: &Frame) -> Result<Flow, SessionError> {
        if self.in_transaction()
            && let Some(flow) = self.wait_quiet(f)
        {
            return Ok(flow);
        }
        let Some(p) = self.multi_portal.take() else {
            return Ok(Flow::Continue);
        };
        if self.held.is_some() && !self.in_transaction() {
            self.local_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "a multi-shard portal cannot run while another statement holds a shard",
            );
            return Ok(Flow::Continue);
        }
        if self.held.is_none()
            && !self.in_transaction()
            && matches!(p.plan, ShardPlan::Write { .. } | ShardPlan::InsertSplit { .. })
        {
            // The pipeline's implicit transaction: the write commits with the rest of the
            // pipeline at the client's Sync (two-phase across shards), or not at all.
            self.implicit_multi = true;
        }
        let src = Source::Extended {
            param_types: &p.stmt.param_types,
            bind: &p.bind,
        };
        let facts = p.stmt.facts.clone();
        let outcome = Box::pin(self.run_multi(&p.plan, &p.stmt.query, src, &facts, p.describe)).await?;
        if outcome == Outcome::Failed {
            self.ignore_till_sync = true;
            if self.in_transaction() {
                self.tx_refused = true;
            }
        }
        Ok(Flow::Continue)
    }

    /// What of a statement on several shards cannot run inside a transaction block: refused,
    /// and the transaction fails.
    fn refuse_in_transaction(&mut self, plan: &ShardPlan, extended: bool) -> Option<Flow> {
        if !matches!(plan, ShardPlan::CopySplit { .. }) {
            return None;
        }
        self.refuse(
            extended,
            "COPY into a sharded table inside a transaction block is not supported: run it outside one (it commits on every \
             shard with two-phase commit); the transaction is aborted",
        );
        Some(Flow::Continue)
    }

    /// Describe of a statement while a BEGIN waits for its shard: answered on the default shard
    /// without starting the transaction there.
    pub(super) async fn describe_aside(&mut self, stmt: &Stmt) -> Result<(), SessionError> {
        let co = match self
            .checkout_on(crate::plan::Target::Primary, self.default_shard())
            .await
        {
            Ok(c) => c,
            Err((code, m)) => {
                self.local_error(code, &m);
                return Ok(());
            }
        };
        self.flush_early();
        let mut leg = crate::backend::leg::Leg::new(co);
        let mut out = bytes::BytesMut::new();
        self.write_prelude(&mut leg, &mut out);
        msg::parse_bytes(&mut out, "", &self.wire(&stmt.query), &stmt.param_types);
        msg::describe_or_close(&mut out, b'D', b'S', "");
        crate::protocol::pg::rows::sync(&mut out);
        let answer = async {
            leg.send(&out).await?;
            leg.skip_replay().await?;
            let mut frames = Vec::new();
            loop {
                let f = leg.frame().await?;
                match f.tag() {
                    b'Z' => return Ok::<_, std::io::Error>(frames),
                    b't' | b'T' | b'n' | b'E' => frames.push(f),
                    _ => {}
                }
            }
        }
        .await;
        match answer {
            Ok(frames) => {
                for f in frames {
                    if f.tag() == b'E' {
                        self.ignore_till_sync = true;
                    }
                    self.client.wbuf.extend_from_slice(f.raw());
                }
            }
            Err(e) => {
                leg.mark_broken();
                self.local_error(
                    SqlState::CONNECTION_FAILURE,
                    &format!("describing the statement failed: {e}"),
                );
            }
        }
        Ok(())
    }

    /// A local answer in an extended-protocol batch: queued behind what the held backend owes,
    /// or kept for the next write when none is held.
    pub(super) fn answer_local(&mut self, b: &[u8]) {
        match self.held.as_mut() {
            Some(h) => h
                .ops
                .push_back(super::state::Op::Synth(bytes::Bytes::copy_from_slice(b))),
            None => self.early.extend_from_slice(b),
        }
    }

    /// Describe, Execute or Close of the portal the proxy answers itself; `false` if `name` is
    /// another portal.
    pub(super) fn on_local_portal(&mut self, kind: u8, name: &str) -> bool {
        use super::ids::LocalPortal;
        let Some((p, local)) = &mut self.local_portal else {
            return false;
        };
        if p != name {
            return false;
        }
        let mut b = bytes::BytesMut::new();
        match (kind, local) {
            (b'D', LocalPortal::Tag(_)) => b.extend_from_slice(&msg::empty(b'n')),
            (b'D', LocalPortal::Ids { column, format, .. }) => super::ids::describe(&mut b, column, *format),
            (b'E', LocalPortal::Tag(tag)) => msg::command_complete(&mut b, tag),
            // A portal runs once: executing it again gives no rows, never the same IDs twice.
            (b'E', LocalPortal::Ids { ids, format, .. }) => {
                super::ids::write_rows(&mut b, &std::mem::take(ids), *format)
            }
            _ => {
                b.extend_from_slice(&msg::empty(b'3'));
                self.local_portal = None;
            }
        }
        self.answer_local(&b);
        true
    }

    /// An answer in order with whatever the held backend still owes (or at once without one).
    pub(super) fn respond_synth(&mut self, b: bytes::Bytes) {
        match self.held.as_mut() {
            // Queued answers go out when the backend answers what precedes them; with nothing
            // owed, nothing would come to carry them.
            Some(h) if !h.ops.is_empty() => h.ops.push_back(super::state::Op::Synth(b)),
            Some(_) => self.client.wbuf.extend_from_slice(&b),
            None => {
                self.flush_early();
                self.client.wbuf.extend_from_slice(&b);
            }
        }
    }
}

/// Statements of these shapes give the same answer on any shard.
fn runs_anywhere(shape: &Shape) -> bool {
    matches!(shape, Shape::Neutral | Shape::ReferenceRead)
}

/// The command tag of a statement that ends a transaction: ROLLBACK for ROLLBACK and ABORT,
/// COMMIT for COMMIT and END. Its first keyword decides, after comments and whitespace
/// (`/* app */ rollback;` is a ROLLBACK).
pub(super) fn end_tag(sql: &str) -> &'static str {
    let word = first_keyword(sql).to_ascii_lowercase();
    if word == "rollback" || word == "abort" {
        "ROLLBACK"
    } else {
        "COMMIT"
    }
}

/// The first word of a statement, past whitespace, `--` comments and (nested) `/* */` comments.
fn first_keyword(sql: &str) -> &str {
    let b = sql.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0usize;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else {
            break;
        }
    }
    let end = b[i..]
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .map_or(b.len(), |n| i + n);
    &sql[i..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_end_tag_reads_past_comments_and_punctuation() {
        for (sql, tag) in [
            ("ROLLBACK;", "ROLLBACK"),
            ("rollback", "ROLLBACK"),
            ("  /* app /* nested */ */ -- x\n abort;", "ROLLBACK"),
            ("ROLLBACK AND NO CHAIN", "ROLLBACK"),
            ("COMMIT;", "COMMIT"),
            ("end", "COMMIT"),
            ("/* unterminated", "COMMIT"),
        ] {
            assert_eq!(super::end_tag(sql), tag, "{sql}");
        }
    }
}
