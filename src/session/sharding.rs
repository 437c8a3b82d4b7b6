//! Shard routing of a simple Query: which shard it goes to (a BEGIN waits for the first
//! statement to pick the shard; a statement any shard answers runs where the session is), the
//! steps some INSERTs need first (columns, an INSERT ... SELECT's rows, generated IDs), waiting
//! out a fenced partition, and handing statements on several shards to `multi`. Binds are routed
//! in `bind_route`; transactions that span shards are `transaction`'s.

use std::sync::Arc;

use super::client::SessionError;
use super::insert_select::SelectFailure;
use super::multi::{Outcome, Source};
use super::state::Stmt;
use super::{Flow, Session};
use crate::analyze::fingerprint::LiteralFree;
use crate::analyze::shard::Shape;
use crate::analyze::{Facts, TxEffect};
use crate::plan::shard::{Params, ShardPlan};
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
    /// A read refused as written (the reason) whose parts may run first: run them, then route
    /// the Bind of the result again.
    Materialize(String),
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
            msg::ready_for_query(&mut b, self.local_tx_status());
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
    /// for every text of the same shape). One shard, or a scatter whose merge the literals do not
    /// shape (the literals are put back into the shards' statement), are taken from there;
    /// anything else is planned again from the exact text, so rewritten statements and messages
    /// carry the real literals.
    fn plan_simple(&mut self, sql: &str, literal_free: Option<LiteralFree>) -> (ShardPlan, bool) {
        let runtime = self.runtime.clone();
        let map = &runtime.config.map;
        if let Some(lf) = literal_free.or_else(|| crate::analyze::fingerprint::parameterize(sql)) {
            let shape = self.shared.shapes.get(&lf.text, map);
            if *shape != crate::analyze::shard::Shape::Unparsed {
                let params = Params {
                    literals: &lf.values,
                    ..Params::default()
                };
                match self.plan_checked(&shape, map, &params) {
                    p @ ShardPlan::One(_) => {
                        if *shape == Shape::Broadcast {
                            self.ddl_seen();
                        }
                        return (p, runs_anywhere(&shape));
                    }
                    ShardPlan::Scatter { shards, merge } => {
                        if let Some(merge) = merge.with_literals(sql, &lf) {
                            let merge = Arc::new(merge);
                            return (ShardPlan::Scatter { shards, merge }, false);
                        }
                    }
                    _ => {}
                }
            }
        }
        let shape = self.shared.shapes.get(sql, map);
        if *shape == Shape::Broadcast {
            self.ddl_seen();
        }
        (
            self.plan_checked(&shape, map, &Params::default()),
            runs_anywhere(&shape),
        )
    }

    /// DDL: a table's columns may change. Forgotten now, and again when the transaction it
    /// runs in ends (another session may read the old columns before it commits).
    pub(super) fn ddl_seen(&mut self) {
        self.shared.forget_columns();
        if self.in_transaction() {
            self.ddl_in_tx = true;
        }
    }

    /// Plans an exact text (one the proxy rewrote).
    fn plan_text(&self, sql: &str) -> ShardPlan {
        let map = &self.runtime.config.map;
        self.plan_checked(&self.shared.shapes.get(sql, map), map, &Params::default())
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
        literal_free: Option<LiteralFree>,
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
        // One statement, a `;` inside a literal or comment of it told apart by cutting the text
        // (only for refused ones: other strings are not cut here).
        if let ShardPlan::Refuse(why) = &plan
            && (single_statement || crate::analyze::script::split(sql).is_some_and(|s| s.statements.len() == 1))
            && let Some(planned) = self.may_materialize(sql, facts)
        {
            let why = why.clone();
            if let Some(flow) = self.clear_for_statement(f, false) {
                return Ok(Routed::Done(flow));
            }
            match Box::pin(self.materialized(Some(planned), sql, facts, &why)).await {
                None => {}
                Some(Ok(text)) => {
                    let map = self.runtime.config.map.clone();
                    let shape = crate::analyze::shard::shape(&text, &map);
                    plan = match self.plan_checked(&shape, &map, &Params::default()) {
                        ShardPlan::Refuse(_) => ShardPlan::Refuse(why),
                        // Not parsed, it would go to the default shard alone.
                        _ if shape == Shape::Unparsed => ShardPlan::Refuse(why),
                        other => other,
                    };
                    self.shared.stats.record_plan("materialized");
                    rewritten = Some(text);
                }
                Some(Err(SelectFailure::Proxy(code, m))) => {
                    self.fail_statement(code, false, &m);
                    return Ok(Routed::Done(Flow::Continue));
                }
                Some(Err(SelectFailure::Server(e))) => {
                    self.fail_with_frame(e.raw(), false);
                    return Ok(Routed::Done(Flow::Continue));
                }
            }
        }
        if matches!(plan, ShardPlan::Refuse(_)) && !single_statement && self.script_with_parts_first(sql) {
            plan = ShardPlan::Statements;
        }
        if let ShardPlan::InsertSelect { select } = &plan {
            if let Some(flow) = self.clear_for_statement(f, false) {
                return Ok(Routed::Done(flow));
            }
            let select = select.clone();
            match Box::pin(self.insert_select(sql, &select, None, facts)).await {
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
            let columns = match Box::pin(self.load_columns(table, false)).await {
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
                None => {
                    self.fail_statement(
                        SqlState::SYNTAX_ERROR,
                        false,
                        "INSERT has more expressions than target columns",
                    );
                    return Ok(Routed::Done(Flow::Continue));
                }
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
            plan = self.plan_checked(&filled, &map, &Params::default());
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
            ShardPlan::Statements => Ok(Routed::Done(self.start_script(f, sql))),
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
}

/// Statements of these shapes give the same answer on any shard.
pub(super) fn runs_anywhere(shape: &Shape) -> bool {
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
