//! Statements that run on several shards. A scatter read runs on every shard concerned at once
//! and is merged as it streams (ORDER BY keeps one row per shard, LIMIT stops early; GROUP BY
//! keeps one row per group). A write on several shards (an UPDATE or DELETE without the key, a
//! split INSERT, DDL, a reference-table write) runs in one transaction per shard and commits with
//! two-phase commit: every shard but one prepares, the last commits with a decision record in the
//! same transaction, then the prepared ones commit. `crate::backend::twophase` finishes what a
//! crash leaves prepared.

use bytes::{Bytes, BytesMut};

use super::Session;
use super::client::SessionError;
use super::state::Stmt;
use super::values;
use crate::analyze::Facts;
use crate::analyze::shard::{ColKind, Merge, Operand};
use crate::backend::leg::{Head, Leg, RowError};
use crate::exec::{self, Failure, RowSink, RowSource};
use crate::plan::shard::{InsertPart, ShardPlan};
use crate::plan::{self, Target};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::{self, BindParts, Field, format_at};
use crate::protocol::pg::sqlstate::SqlState;
use crate::shardmap::ShardId;

/// Flush to the client once this much output is waiting.
const FLUSH_AT: usize = 64 * 1024;

/// A bound extended-protocol portal that runs on several shards at Execute.
pub struct MultiPortal {
    /// Portal name.
    pub name: String,
    /// What runs where.
    pub plan: ShardPlan,
    /// The statement.
    pub stmt: std::sync::Arc<Stmt>,
    /// The client's parameters and result formats.
    pub bind: BindParts,
    /// The client asked to describe the portal.
    pub describe: bool,
    /// The configuration and map it was planned under: its shard ids index this map's shards,
    /// so it runs under it even when a message between Bind and Execute took a newer one.
    pub runtime: std::sync::Arc<crate::app::Runtime>,
}

/// The statement as the client sent it.
pub enum Source<'a> {
    /// Simple protocol: SQL text only.
    Simple,
    /// Extended protocol.
    Extended {
        /// Parameter types of the client's Parse, raw (count and oids).
        param_types: &'a [u8],
        /// The client's Bind.
        bind: &'a BindParts,
    },
}

/// Whether the statement succeeded (its error already went to the client if not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// Failed; reported.
    Failed,
}

fn limit_value(op: &Option<Operand>, bind: Option<&BindParts>) -> Option<u64> {
    match op {
        None | Some(Operand::Null) => None,
        Some(Operand::Lit(l)) => l.parse::<i64>().ok().map(|v| v.max(0) as u64),
        Some(Operand::Param(i)) => {
            let b = bind?;
            let raw = b.values.get(*i)?.as_ref()?;
            let v = if b.param_format(*i) == 0 {
                std::str::from_utf8(raw).ok()?.trim().parse::<i64>().ok()?
            } else {
                match raw.len() {
                    4 => i32::from_be_bytes(raw[..].try_into().ok()?) as i64,
                    8 => i64::from_be_bytes(raw[..].try_into().ok()?),
                    _ => return None,
                }
            };
            Some(v.max(0) as u64)
        }
    }
}

impl Session {
    /// Runs `plan` (not a single-shard one). Output goes to the client: RowDescription when
    /// `describe`, rows, CommandComplete; or the error.
    pub(super) async fn run_multi(
        &mut self,
        plan: &ShardPlan,
        sql: &str,
        src: Source<'_>,
        facts: &Facts,
        describe: bool,
    ) -> Result<Outcome, SessionError> {
        self.flush_early();
        let started = std::time::Instant::now();
        let result = match plan {
            ShardPlan::Scatter { shards, merge } => self.scatter(shards, merge, src, facts, describe).await,
            ShardPlan::Write { shards, replicated } => {
                let parts: Vec<InsertPart> = shards
                    .iter()
                    .map(|&shard| InsertPart {
                        shard,
                        sql: sql.to_owned(),
                        params: Vec::new(),
                    })
                    .collect();
                self.write_all_shards(&parts, false, *replicated, src, describe).await
            }
            ShardPlan::InsertSplit { parts } => self.write_all_shards(parts, true, false, src, describe).await,
            ShardPlan::CopySplit { shards } => self.copy_split(sql, shards).await,
            ShardPlan::CopyOut { shards, header, binary } => {
                if describe && matches!(src, Source::Extended { .. }) {
                    // Describe of a COPY portal: no rows description, as the server answers.
                    self.client.wbuf.extend_from_slice(&msg::empty(b'n'));
                }
                self.copy_out(sql, shards, *header, *binary, facts).await
            }
            ShardPlan::One(_)
            | ShardPlan::Refuse(_)
            | ShardPlan::GenerateIds { .. }
            | ShardPlan::NeedColumns { .. }
            | ShardPlan::InsertSelect { .. }
            | ShardPlan::Statements
            | ShardPlan::Fenced { .. } => Ok(Outcome::Failed),
        };
        self.shared.stats.record_plan(plan.kind());
        tracing::debug!(kind = plan.kind(), elapsed = ?started.elapsed(), "multi-shard statement");
        result
    }

    fn report(&mut self, code: SqlState, message: &str) -> Outcome {
        self.report_error(code, message)
    }

    /// Connections for a read on `shards`, each on the node routing picks for that shard (its
    /// read-your-writes position is its own).
    pub(super) async fn legs(&mut self, shards: &[ShardId], facts: &Facts) -> Result<Vec<Leg>, (SqlState, String)> {
        let mut legs = Vec::with_capacity(shards.len());
        for &s in shards {
            let target = match self.runtime.config.server.pool_mode {
                crate::config::PoolMode::Session => Target::Primary,
                _ => plan::route(facts, &self.route_context(s)),
            };
            legs.push(Leg::new(self.checkout_on(target, s).await?));
        }
        Ok(legs)
    }

    /// The texts each of `shards` runs for `sql`: without the rows a shard holds only as the copy
    /// of a moving partition (`analyze::shard::own_rows_each`), so a statement over several
    /// shards sees each row once while a partition moves. The same text everywhere otherwise.
    /// `copy_columns`: what `COPY t TO` without a column list writes, when it needs them.
    pub(super) fn own_texts<'a>(
        &self,
        sql: &'a str,
        shards: &[ShardId],
        copy_columns: Option<&[String]>,
    ) -> Result<Vec<std::borrow::Cow<'a, str>>, String> {
        let map = &self.runtime.config.map;
        if !crate::analyze::shard::any_copies(map) {
            return Ok(vec![std::borrow::Cow::Borrowed(sql); shards.len()]);
        }
        let own = crate::analyze::shard::own_rows_each(sql, map, shards, copy_columns).map_err(|e| {
            format!("a partition is moving and the statement could not be limited to each shard's own rows: {e}")
        })?;
        Ok(own
            .into_iter()
            .map(|t| t.map_or(std::borrow::Cow::Borrowed(sql), std::borrow::Cow::Owned))
            .collect())
    }

    /// Session parameters first, so every shard sees the client's settings.
    pub(super) fn write_prelude(&self, leg: &mut Leg, out: &mut BytesMut) {
        self.prelude(leg, out)
    }

    fn prelude(&self, leg: &mut Leg, out: &mut BytesMut) {
        let sig = self.vars.sig();
        if leg.co.conn.vars_sig != sig {
            msg::query(out, &self.vars.replay_sql(leg.co.conn.vars_sig));
            leg.co.conn.vars_sig = sig;
            leg.replay = true;
        }
        leg.co.conn.unnamed = None;
    }

    /// A read on several shards: inside a transaction on the transaction's connections (shards
    /// it has not touched yet join it), otherwise on connections of its own.
    pub(super) async fn scatter(
        &mut self,
        shards: &[ShardId],
        m: &Merge,
        src: Source<'_>,
        facts: &Facts,
        describe: bool,
    ) -> Result<Outcome, SessionError> {
        if !self.in_transaction() {
            let mut legs = match self.legs(shards, facts).await {
                Ok(l) => l,
                Err((code, message)) => return Ok(self.report(code, &message)),
            };
            return self.scatter_on(&mut legs, shards, m, src, describe).await;
        }
        let (mut legs, wrote) = match self.tx_legs(shards, Some(facts)).await {
            Ok(l) => l,
            Err((code, message)) => return Ok(self.report(code, &message)),
        };
        let outcome = self.scatter_on(&mut legs, shards, m, src, describe).await;
        self.give_back(legs, shards, wrote, false);
        outcome
    }

    async fn scatter_on(
        &mut self,
        legs: &mut [Leg],
        shards: &[ShardId],
        m: &Merge,
        src: Source<'_>,
        describe: bool,
    ) -> Result<Outcome, SessionError> {
        let collation = self.shards_collation(shards, legs).await;
        let bind = match &src {
            Source::Extended { bind, .. } => Some(*bind),
            Source::Simple => None,
        };
        // Columns merging computes are asked for as text; the rest in the client's format.
        let client_format = |i: usize| bind.map_or(0, |b| format_at(&b.result_formats, i));
        let all_plain = m.cols.iter().all(|k| *k == ColKind::Plain);
        let shard_formats: Vec<i16> = match bind {
            // One code for every column, however many a wildcard expands to (hidden ones
            // included: they decode in either format).
            Some(b) if all_plain && b.result_formats.len() <= 1 => b.result_formats.clone(),
            _ => m
                .cols
                .iter()
                .enumerate()
                .map(|(i, k)| match k {
                    ColKind::Plain | ColKind::Min | ColKind::Max if i < m.visible => client_format(i),
                    _ => 0,
                })
                .collect(),
        };
        let texts = match self.own_texts(&m.sql, shards, None) {
            Ok(t) => t,
            Err(e) => return Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &e)),
        };
        for (leg, text) in legs.iter_mut().zip(&texts) {
            let mut out = BytesMut::new();
            self.prelude(leg, &mut out);
            match &src {
                Source::Simple => msg::query_bytes(&mut out, &self.wire(text)),
                Source::Extended { param_types, bind } => {
                    msg::parse_bytes(
                        &mut out,
                        "",
                        &self.wire(text),
                        &rows::pick_types(param_types, &m.params),
                    );
                    rows::bind_with(&mut out, bind, Some(&m.params), &shard_formats);
                    msg::describe_or_close(&mut out, b'D', b'P', "");
                    rows::execute_all(&mut out);
                    rows::sync(&mut out);
                }
            }
            if let Err(e) = leg.send(&out).await {
                leg.co.conn.broken = true;
                return Ok(self.report(SqlState::CONNECTION_FAILURE, &format!("shard connection failed: {e}")));
            }
        }
        // Heads: every shard's RowDescription (or its error).
        let mut fields: Option<Vec<Field>> = None;
        let mut failure: Option<Frame> = None;
        let mut io_failure = None;
        for leg in legs.iter_mut() {
            match leg.head().await {
                Ok(Head::Rows(f)) => {
                    if fields.is_none() {
                        fields = rows::parse_row_description(f.body()).ok();
                    }
                }
                Ok(Head::NoRows) => {}
                Ok(Head::Error(e)) => {
                    failure.get_or_insert(e);
                }
                Err(e) => {
                    leg.co.conn.broken = true;
                    io_failure.get_or_insert(e.to_string());
                }
            }
        }
        if failure.is_some() || io_failure.is_some() {
            Leg::abandon(legs).await;
            return Ok(match failure {
                Some(f) => {
                    self.client.wbuf.extend_from_slice(f.raw());
                    Outcome::Failed
                }
                None => self.report(
                    SqlState::CONNECTION_FAILURE,
                    &format!("a shard failed during the query: {}", io_failure.unwrap_or_default()),
                ),
            });
        }
        let Some(shard_fields) = fields else {
            // A statement without rows (should not happen for a SELECT).
            Leg::abandon(legs).await;
            msg::command_complete(&mut self.client.wbuf, "SELECT 0");
            return Ok(Outcome::Ok);
        };
        let resolved = match m.resolve(shard_fields.len()) {
            Ok(r) => r,
            Err(e) => {
                Leg::abandon(legs).await;
                return Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &e));
            }
        };
        let m = &resolved;
        let client_utf8 = self.client_is_utf8();
        if let Some(why) = collation
            .as_ref()
            .and_then(|c| super::collation::refusal(m, &shard_fields, c, client_utf8))
        {
            Leg::abandon(legs).await;
            return Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &why));
        }
        let mut out_fields: Vec<Field> = shard_fields.iter().take(m.visible).cloned().collect();
        for (i, f) in out_fields.iter_mut().enumerate() {
            match m.cols[i] {
                // An expression over aggregates keeps the type the shards gave it.
                ColKind::Count | ColKind::Sum | ColKind::Expr(_) => f.format = client_format(i),
                // The shards sent the counted expression itself: the client sees count's bigint.
                ColKind::CountDistinct => {
                    f.format = client_format(i);
                    f.type_oid = oid::INT8;
                    f.size = 8;
                    f.modifier = -1;
                    f.table = 0;
                    f.column = 0;
                }
                ColKind::Avg { .. } => {
                    f.format = client_format(i);
                    if !matches!(f.type_oid, oid::FLOAT4 | oid::FLOAT8) {
                        f.type_oid = oid::NUMERIC;
                        f.size = -1;
                    } else {
                        f.type_oid = oid::FLOAT8;
                        f.size = 8;
                    }
                    f.modifier = -1;
                }
                _ => {}
            }
        }
        if describe {
            rows::row_description(&mut self.client.wbuf, &out_fields);
        }
        let window = exec::Window {
            limit: limit_value(&m.limit, bind),
            offset: limit_value(&m.offset, bind).unwrap_or(0),
        };
        let collated = match (&collation, client_utf8) {
            (Some(c), true) => super::collation::icu_columns(m, &shard_fields, c),
            _ => None,
        };
        let cells = values::PgCells {
            input: &shard_fields,
            output: &out_fields,
            collated,
        };
        let mut sink = ClientRows {
            client: &mut self.client,
            script: self.script.as_deref_mut(),
            capture: self.capture,
        };
        let result = match bind {
            Some(b) => exec::merge::run(legs, m, &cells, &values::BindParams(b), window, &mut sink).await,
            None => exec::merge::run(legs, m, &cells, &exec::NoParams, window, &mut sink).await,
        };
        match result {
            Ok(n) => {
                Leg::finish(legs).await;
                msg::command_complete(&mut self.client.wbuf, &format!("SELECT {n}"));
                Ok(Outcome::Ok)
            }
            Err(Failure::Unmergeable(e)) => {
                Leg::abandon(legs).await;
                Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &e))
            }
            Err(Failure::Source(RowError::Backend(f))) => {
                Leg::abandon(legs).await;
                self.client.wbuf.extend_from_slice(f.raw());
                Ok(Outcome::Failed)
            }
            Err(Failure::Source(RowError::Io(e))) => {
                Leg::abandon(legs).await;
                Ok(self.report(
                    SqlState::CONNECTION_FAILURE,
                    &format!("a shard failed during the query: {e}"),
                ))
            }
            Err(Failure::Sink(e)) => {
                Leg::abandon(legs).await;
                Err(e)
            }
        }
    }
}

impl RowSource for Leg {
    type Error = RowError;

    async fn next_row(&mut self) -> Result<Option<exec::Row>, RowError> {
        self.read_row().await
    }
}

/// Merged rows into the client's buffer, flushed as it fills.
struct ClientRows<'a> {
    client: &'a mut super::client::ClientConn,
    /// A query string run statement by statement: it looks at the output before it is sent.
    script: Option<&'a mut super::script::Script>,
    /// Kept back for shardwire itself, up to this size.
    capture: Option<usize>,
}

impl RowSink for ClientRows<'_> {
    type Error = SessionError;

    async fn row(&mut self, cells: &[Option<Bytes>], visible: usize) -> Result<(), SessionError> {
        rows::data_row(&mut self.client.wbuf, cells, visible);
        if let Some(limit) = self.capture {
            if self.client.wbuf.len() > limit {
                return Err(super::select_rows::over_limit(limit));
            }
        } else if self.client.wbuf.len() >= FLUSH_AT {
            super::script::flush(self.client, self.script.as_deref_mut()).await?;
        }
        Ok(())
    }
}
