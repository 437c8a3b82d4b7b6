//! Statements that run on several shards. A scatter read runs on every shard concerned at once
//! and is merged as it streams (ORDER BY keeps one row per shard, LIMIT stops early; GROUP BY
//! keeps one row per group). A write on several shards (an UPDATE or DELETE without the key, a
//! split INSERT, DDL, a reference-table write) runs in one transaction per shard and commits with
//! two-phase commit: every shard but one prepares, the last commits with a decision record in the
//! same transaction, then the prepared ones commit. `crate::backend::twophase` finishes what a
//! crash leaves prepared.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::Session;
use super::client::SessionError;
use super::state::Stmt;
use super::values;
use crate::analyze::Facts;
use crate::analyze::shard::{ColKind, Having, Merge, Operand, Term};
use crate::backend::Checkout;
use crate::merge::{self, Value};
use crate::plan::shard::{InsertPart, ShardPlan};
use crate::plan::{self, Target};
use crate::protocol::pg::Frame;
use crate::protocol::pg::codec::decode_frame;
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

/// One shard's connection for the statement.
pub(super) struct LegHandle {
    co: Checkout,
    /// Responses of a session-parameter replay sent ahead, to skip.
    replay: bool,
}

/// What one shard answered to a write.
pub(super) struct Collected {
    /// RowDescription (RETURNING).
    pub description: Option<Frame>,
    /// DataRows.
    pub rows: Vec<Frame>,
    /// CommandComplete tag.
    pub tag: Option<String>,
    /// The first error.
    pub error: Option<Frame>,
}

impl LegHandle {
    pub(super) fn new(co: Checkout) -> LegHandle {
        co.node.stats.statements.fetch_add(1, Ordering::Relaxed);
        LegHandle { co, replay: false }
    }

    pub(super) fn mark_broken(&mut self) {
        self.co.conn.broken = true;
    }

    /// Runs one simple query to its ReadyForQuery: `None` if the connection failed, else the
    /// error it reported, if any.
    pub(super) async fn simple(&mut self, sql: &str) -> Option<Option<Frame>> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        if self.send(&out).await.is_err() {
            self.mark_broken();
            return None;
        }
        match self.until_ready().await {
            Ok(e) => Some(e),
            Err(_) => {
                self.mark_broken();
                None
            }
        }
    }

    /// The first column of a query's rows.
    pub(super) async fn rows(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let mut out = BytesMut::new();
        msg::query(&mut out, sql);
        let r = async {
            self.send(&out).await?;
            let mut rows = Vec::new();
            let mut err = None;
            loop {
                let f = self.frame().await?;
                match f.tag() {
                    b'D' => {
                        if let Ok(cells) = rows::parse_data_row(&f.raw().slice(5..)) {
                            rows.push(
                                cells
                                    .first()
                                    .cloned()
                                    .flatten()
                                    .map(|c| String::from_utf8_lossy(&c).into_owned())
                                    .unwrap_or_default(),
                            );
                        }
                    }
                    b'E' => err = Some(msg::error_message(f.body())),
                    b'Z' => return Ok::<_, std::io::Error>((rows, err)),
                    _ => {}
                }
            }
        }
        .await;
        match r {
            Ok((rows, None)) => Ok(rows),
            Ok((_, Some(e))) => Err(e),
            Err(e) => {
                self.mark_broken();
                Err(format!("shard connection failed: {e}"))
            }
        }
    }

    /// Sends a replay, BEGIN and a COPY FROM STDIN; returns the CopyInResponse, or the error.
    pub(super) async fn start_copy(&mut self, out: &[u8]) -> std::io::Result<Result<Frame, Frame>> {
        self.send(out).await?;
        if let Some(e) = self.skip_replay().await? {
            return Ok(Err(e));
        }
        if let Some(e) = self.until_ready().await? {
            return Ok(Err(e));
        }
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'G' => return Ok(Ok(f)),
                b'E' => {
                    self.until_ready().await?;
                    return Ok(Err(f));
                }
                _ => {}
            }
        }
    }

    /// Abandons a COPY or transaction in progress: the connection is closed, so the server rolls
    /// back whatever it held.
    pub(super) async fn abort_copy(&mut self) {
        self.mark_broken();
    }

    /// After CopyDone: the command tag or the error, through ReadyForQuery.
    pub(super) async fn collect_tail(&mut self) -> std::io::Result<(Option<String>, Option<Frame>)> {
        let mut tag = None;
        let mut err = None;
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'C' => {
                    tag = Some(String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned())
                }
                b'E' => {
                    err.get_or_insert(f);
                }
                b'Z' => return Ok((tag, err)),
                _ => {}
            }
        }
    }

    /// Reads a write's answers: the replay and BEGIN, then the statement through ReadyForQuery.
    pub(super) async fn collect(&mut self) -> std::io::Result<Collected> {
        let mut c = Collected {
            description: None,
            rows: Vec::new(),
            tag: None,
            error: self.skip_replay().await?,
        };
        if let Some(e) = self.until_ready().await? {
            c.error.get_or_insert(e);
        }
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'T' => c.description = Some(f),
                b'D' => c.rows.push(f),
                b'C' => {
                    c.tag = Some(String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body())).into_owned())
                }
                b'E' => {
                    c.error.get_or_insert(f);
                }
                b'Z' => return Ok(c),
                _ => {}
            }
        }
    }

    pub(super) async fn send(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.co.conn.stream.write_all(buf).await
    }

    pub(super) async fn frame(&mut self) -> std::io::Result<Frame> {
        loop {
            match decode_frame(&mut self.co.conn.rbuf, 1 << 30) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let conn = &mut *self.co.conn;
            if conn.stream.read_some(&mut conn.rbuf, 16 * 1024).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads through the next ReadyForQuery; returns the first error, if any.
    pub(super) async fn until_ready(&mut self) -> std::io::Result<Option<Frame>> {
        let mut err = None;
        loop {
            let f = self.frame().await?;
            match f.tag() {
                b'Z' => return Ok(err),
                b'E' if err.is_none() => err = Some(f),
                _ => {}
            }
        }
    }

    /// Skips the replay's responses if one was sent.
    pub(super) async fn skip_replay(&mut self) -> std::io::Result<Option<Frame>> {
        if std::mem::take(&mut self.replay) {
            self.until_ready().await
        } else {
            Ok(None)
        }
    }
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

/// A row with its decoded sort keys.
type KeyedRow = (Vec<Value>, Vec<Option<Bytes>>);

/// Rows merged by group: key cells → accumulated row.
struct Groups {
    index: HashMap<Vec<Option<Bytes>>, usize>,
    rows: Vec<(Vec<Option<Bytes>>, Vec<Value>)>,
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
            ShardPlan::One(_) | ShardPlan::Refuse(_) | ShardPlan::GenerateIds { .. } => Ok(Outcome::Failed),
        };
        self.shared.stats.record_plan(plan.kind());
        tracing::debug!(kind = plan.kind(), elapsed = ?started.elapsed(), "multi-shard statement");
        result
    }

    fn report(&mut self, code: SqlState, message: &str) -> Outcome {
        self.report_error(code, message)
    }

    async fn legs(&mut self, shards: &[ShardId], target: Target) -> Result<Vec<LegHandle>, (SqlState, String)> {
        let mut legs = Vec::with_capacity(shards.len());
        for &s in shards {
            legs.push(LegHandle::new(self.checkout_on(target, s).await?));
        }
        Ok(legs)
    }

    /// Session parameters first, so every shard sees the client's settings.
    pub(super) fn write_prelude(&self, leg: &mut LegHandle, out: &mut BytesMut) {
        self.prelude(leg, out)
    }

    fn prelude(&self, leg: &mut LegHandle, out: &mut BytesMut) {
        let sig = self.vars.sig();
        if leg.co.conn.vars_sig != sig {
            msg::query(out, &self.vars.replay_sql(leg.co.conn.vars_sig));
            leg.co.conn.vars_sig = sig;
            leg.replay = true;
        }
        leg.co.conn.unnamed = None;
    }

    async fn flush_if_big(&mut self) -> Result<(), SessionError> {
        if self.client.wbuf.len() >= FLUSH_AT {
            self.client.flush().await.map_err(|_| SessionError::Gone)?;
        }
        Ok(())
    }

    async fn scatter(
        &mut self,
        shards: &[ShardId],
        m: &Merge,
        src: Source<'_>,
        facts: &Facts,
        describe: bool,
    ) -> Result<Outcome, SessionError> {
        let target = match self.runtime.config.server.pool_mode {
            crate::config::PoolMode::Session => Target::Primary,
            _ => plan::route(facts, &self.route_context()),
        };
        let mut legs = match self.legs(shards, target).await {
            Ok(l) => l,
            Err((code, message)) => return Ok(self.report(code, &message)),
        };
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
        for leg in &mut legs {
            let mut out = BytesMut::new();
            self.prelude(leg, &mut out);
            match &src {
                Source::Simple => msg::query(&mut out, &m.sql),
                Source::Extended { param_types, bind } => {
                    msg::parse(
                        &mut out,
                        "",
                        &m.sql,
                        &super::multi_write::pick_types(param_types, &m.params),
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
        for leg in &mut legs {
            match Self::head(leg).await {
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
            Self::abandon(&mut legs).await;
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
            Self::abandon(&mut legs).await;
            msg::command_complete(&mut self.client.wbuf, "SELECT 0");
            return Ok(Outcome::Ok);
        };
        let resolved = match m.resolve(shard_fields.len()) {
            Ok(r) => r,
            Err(e) => {
                Self::abandon(&mut legs).await;
                return Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &e));
            }
        };
        let m = &resolved;
        let mut out_fields: Vec<Field> = shard_fields.iter().take(m.visible).cloned().collect();
        for (i, f) in out_fields.iter_mut().enumerate() {
            match m.cols[i] {
                ColKind::Count | ColKind::Sum => f.format = client_format(i),
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
        let limit = limit_value(&m.limit, bind);
        let offset = limit_value(&m.offset, bind).unwrap_or(0);
        let result = if m.grouped {
            self.merge_groups(&mut legs, m, &shard_fields, &out_fields, (limit, offset), bind)
                .await
        } else {
            self.merge_stream(&mut legs, m, &shard_fields, limit, offset).await
        };
        match result {
            Ok(Ok(n)) => {
                Self::finish(&mut legs).await;
                msg::command_complete(&mut self.client.wbuf, &format!("SELECT {n}"));
                Ok(Outcome::Ok)
            }
            Ok(Err(e)) => {
                Self::abandon(&mut legs).await;
                Ok(self.report(SqlState::FEATURE_NOT_SUPPORTED, &e))
            }
            Err(RowError::Backend(f)) => {
                Self::abandon(&mut legs).await;
                self.client.wbuf.extend_from_slice(f.raw());
                Ok(Outcome::Failed)
            }
            Err(RowError::Io(e)) => {
                Self::abandon(&mut legs).await;
                Ok(self.report(
                    SqlState::CONNECTION_FAILURE,
                    &format!("a shard failed during the query: {e}"),
                ))
            }
            Err(RowError::Client(e)) => {
                Self::abandon(&mut legs).await;
                Err(e)
            }
        }
    }

    async fn head(leg: &mut LegHandle) -> std::io::Result<Head> {
        if let Some(e) = leg.skip_replay().await? {
            leg.until_ready().await?;
            return Ok(Head::Error(e));
        }
        loop {
            let f = leg.frame().await?;
            match f.tag() {
                b'T' => return Ok(Head::Rows(f)),
                b'n' | b'C' | b'I' => return Ok(Head::NoRows),
                b'E' => {
                    leg.until_ready().await?;
                    return Ok(Head::Error(f));
                }
                _ => {}
            }
        }
    }

    /// The next row of a leg, or `None` at its CommandComplete.
    async fn next_row(leg: &mut LegHandle) -> Result<Option<Vec<Option<Bytes>>>, RowError> {
        loop {
            let f = leg.frame().await.map_err(RowError::Io)?;
            match f.tag() {
                b'D' => {
                    return rows::parse_data_row(&f.raw().slice(5..))
                        .map(Some)
                        .map_err(|e| RowError::Io(std::io::Error::other(e.to_string())));
                }
                b'C' | b's' => return Ok(None),
                b'E' => return Err(RowError::Backend(f)),
                _ => {}
            }
        }
    }

    /// Every leg ran to completion: read through ReadyForQuery so the connections go back clean.
    async fn finish(legs: &mut [LegHandle]) {
        for leg in legs {
            if leg.until_ready().await.is_err() {
                leg.co.conn.broken = true;
            }
        }
    }

    /// Legs stopped early (an error, a LIMIT reached): their connections are not reused.
    async fn abandon(legs: &mut [LegHandle]) {
        for leg in legs {
            leg.co.conn.broken = true;
        }
    }

    fn sort_values(m: &Merge, fields: &[Field], cells: &[Option<Bytes>]) -> Result<Vec<Value>, String> {
        m.order
            .iter()
            .map(|k| values::decode(fields[k.col].type_oid, fields[k.col].format, cells[k.col].as_deref()))
            .collect()
    }

    /// Concatenates or merges sorted streams; returns the number of rows sent.
    async fn merge_stream(
        &mut self,
        legs: &mut [LegHandle],
        m: &Merge,
        fields: &[Field],
        limit: Option<u64>,
        offset: u64,
    ) -> Result<Result<u64, String>, RowError> {
        let mut sent = 0u64;
        let mut skipped = 0u64;
        let done = |sent: u64| limit.is_some_and(|l| sent >= l);
        if done(0) {
            return Ok(Ok(0));
        }
        if m.order.is_empty() {
            for leg in legs.iter_mut() {
                while let Some(row) = Self::next_row(leg).await? {
                    if skipped < offset {
                        skipped += 1;
                        continue;
                    }
                    rows::data_row(&mut self.client.wbuf, &row, m.visible);
                    sent += 1;
                    self.flush_if_big().await.map_err(RowError::Client)?;
                    if done(sent) {
                        return Ok(Ok(sent));
                    }
                }
            }
            return Ok(Ok(sent));
        }
        let mut heads: Vec<Option<KeyedRow>> = Vec::with_capacity(legs.len());
        for leg in legs.iter_mut() {
            heads.push(match Self::next_row(leg).await? {
                Some(r) => match Self::sort_values(m, fields, &r) {
                    Ok(k) => Some((k, r)),
                    Err(e) => return Ok(Err(e)),
                },
                None => None,
            });
        }
        loop {
            let mut best: Option<usize> = None;
            for (i, h) in heads.iter().enumerate() {
                let Some((k, _)) = h else { continue };
                best = match best {
                    None => Some(i),
                    Some(b) => {
                        let bk = &heads[b].as_ref().map(|x| &x.0).cloned().unwrap_or_default();
                        match merge::cmp_keys(k, bk, &m.order) {
                            Ok(std::cmp::Ordering::Less) => Some(i),
                            Ok(_) => Some(b),
                            Err(e) => return Ok(Err(e.to_string())),
                        }
                    }
                };
            }
            let Some(b) = best else { return Ok(Ok(sent)) };
            let (_, row) = heads[b].take().unwrap_or_default();
            if skipped < offset {
                skipped += 1;
            } else {
                rows::data_row(&mut self.client.wbuf, &row, m.visible);
                sent += 1;
                self.flush_if_big().await.map_err(RowError::Client)?;
                if done(sent) {
                    return Ok(Ok(sent));
                }
            }
            heads[b] = match Self::next_row(&mut legs[b]).await? {
                Some(r) => match Self::sort_values(m, fields, &r) {
                    Ok(k) => Some((k, r)),
                    Err(e) => return Ok(Err(e)),
                },
                None => None,
            };
        }
    }

    /// Combines rows by group (GROUP BY, aggregates, DISTINCT), then sorts and limits.
    async fn merge_groups(
        &mut self,
        legs: &mut [LegHandle],
        m: &Merge,
        fields: &[Field],
        out_fields: &[Field],
        (limit, offset): (Option<u64>, u64),
        bind: Option<&BindParts>,
    ) -> Result<Result<u64, String>, RowError> {
        let mut groups = Groups {
            index: HashMap::new(),
            rows: Vec::new(),
        };
        let key_cols: Vec<usize> = (0..m.visible).filter(|&i| m.cols[i] == ColKind::Plain).collect();
        for leg in legs.iter_mut() {
            while let Some(row) = Self::next_row(leg).await? {
                let mut vals = Vec::with_capacity(m.cols.len());
                for (i, k) in m.cols.iter().enumerate() {
                    vals.push(match k {
                        ColKind::Plain => Value::Null,
                        _ => match values::decode(fields[i].type_oid, fields[i].format, row[i].as_deref()) {
                            Ok(v) => v,
                            Err(e) => return Ok(Err(e)),
                        },
                    });
                }
                let key: Vec<Option<Bytes>> = key_cols.iter().map(|&i| row[i].clone()).collect();
                match groups.index.get(&key) {
                    None => {
                        groups.index.insert(key, groups.rows.len());
                        groups.rows.push((row, vals));
                    }
                    Some(&g) => {
                        let (cells, acc) = &mut groups.rows[g];
                        for (i, k) in m.cols.iter().enumerate() {
                            if *k == ColKind::Plain {
                                continue;
                            }
                            match merge::combine(*k, &acc[i], &vals[i]) {
                                Ok((v, replaced)) => {
                                    acc[i] = v;
                                    if replaced {
                                        cells[i] = row[i].clone();
                                    }
                                }
                                Err(e) => return Ok(Err(e.to_string())),
                            }
                        }
                    }
                }
            }
        }
        // HAVING, on the merged groups.
        if let Some(h) = &m.having {
            let mut kept = Vec::with_capacity(groups.rows.len());
            for (cells, acc) in groups.rows {
                match eval_having(h, m, fields, &cells, &acc, bind) {
                    Ok(Some(true)) => kept.push((cells, acc)),
                    Ok(_) => {}
                    Err(e) => return Ok(Err(e)),
                }
            }
            groups.rows = kept;
        }
        // Final values: sums and counts encoded for the client, averages divided.
        let mut finished: Vec<(Vec<Value>, Vec<Option<Bytes>>)> = Vec::with_capacity(groups.rows.len());
        for (mut cells, acc) in groups.rows {
            for i in 0..m.visible {
                let v = match m.cols[i] {
                    ColKind::Count | ColKind::Sum => acc[i].clone(),
                    ColKind::Avg { count_col } => match merge::average(&acc[i], &acc[count_col]) {
                        Ok(v) => v,
                        Err(e) => return Ok(Err(e.to_string())),
                    },
                    _ => continue,
                };
                match values::encode(out_fields[i].type_oid, out_fields[i].format, &v) {
                    Ok(c) => cells[i] = c.map(Bytes::from),
                    Err(e) => return Ok(Err(e)),
                }
            }
            let keys: Result<Vec<Value>, String> = m
                .order
                .iter()
                .map(|k| match m.cols.get(k.col) {
                    Some(ColKind::Count | ColKind::Sum) => Ok(acc[k.col].clone()),
                    Some(ColKind::Avg { count_col }) => {
                        merge::average(&acc[k.col], &acc[*count_col]).map_err(|e| e.to_string())
                    }
                    _ => {
                        let f = if k.col < out_fields.len() {
                            &out_fields[k.col]
                        } else {
                            &fields[k.col]
                        };
                        values::decode(f.type_oid, f.format, cells[k.col].as_deref())
                    }
                })
                .collect();
            match keys {
                Ok(k) => finished.push((k, cells)),
                Err(e) => return Ok(Err(e)),
            }
        }
        if !m.order.is_empty() {
            let mut err = None;
            finished.sort_by(|a, b| {
                merge::cmp_keys(&a.0, &b.0, &m.order).unwrap_or_else(|e| {
                    err.get_or_insert(e.to_string());
                    std::cmp::Ordering::Equal
                })
            });
            if let Some(e) = err {
                return Ok(Err(e));
            }
        }
        let mut sent = 0;
        for (_, cells) in finished.into_iter().skip(offset as usize) {
            if limit.is_some_and(|l| sent >= l) {
                break;
            }
            rows::data_row(&mut self.client.wbuf, &cells, m.visible);
            sent += 1;
            self.flush_if_big().await.map_err(RowError::Client)?;
        }
        Ok(Ok(sent))
    }
}

/// The value of result column `i` of a merged group.
fn group_value(m: &Merge, fields: &[Field], cells: &[Option<Bytes>], acc: &[Value], i: usize) -> Result<Value, String> {
    match m.cols.get(i) {
        Some(ColKind::Count | ColKind::Sum | ColKind::Min | ColKind::Max) => Ok(acc[i].clone()),
        Some(ColKind::Avg { count_col }) => merge::average(&acc[i], &acc[*count_col]).map_err(|e| e.to_string()),
        _ => values::decode(
            fields[i].type_oid,
            fields[i].format,
            cells.get(i).and_then(|c| c.as_deref()),
        ),
    }
}

fn term_value(
    t: &Term,
    like: Option<&Value>,
    m: &Merge,
    fields: &[Field],
    cells: &[Option<Bytes>],
    acc: &[Value],
    bind: Option<&BindParts>,
) -> Result<Value, String> {
    let text = match t {
        Term::Col(i) => return group_value(m, fields, cells, acc, *i),
        Term::Value(Operand::Null) => return Ok(Value::Null),
        Term::Value(Operand::Lit(l)) => l.clone(),
        Term::Value(Operand::Param(p)) => {
            let b = bind.ok_or("a parameter without values")?;
            let Some(raw) = b.values.get(*p).and_then(|v| v.as_ref()) else {
                return Ok(Value::Null);
            };
            if b.param_format(*p) == 0 {
                String::from_utf8_lossy(raw).into_owned()
            } else {
                match raw.len() {
                    2 => i16::from_be_bytes([raw[0], raw[1]]).to_string(),
                    4 => i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]).to_string(),
                    8 => i64::from_be_bytes(raw[..8].try_into().unwrap_or_default()).to_string(),
                    _ => return Err("a binary HAVING parameter of unknown type".into()),
                }
            }
        }
    };
    let like = like.ok_or("HAVING compares two values")?;
    merge::coerce_literal(&text, like).ok_or_else(|| format!("cannot compare {text} with {like:?}"))
}

/// Three-valued evaluation of HAVING for one merged group.
fn eval_having(
    h: &Having,
    m: &Merge,
    fields: &[Field],
    cells: &[Option<Bytes>],
    acc: &[Value],
    bind: Option<&BindParts>,
) -> Result<Option<bool>, String> {
    Ok(match h {
        Having::And(a, b) => match (
            eval_having(a, m, fields, cells, acc, bind)?,
            eval_having(b, m, fields, cells, acc, bind)?,
        ) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Having::Or(a, b) => match (
            eval_having(a, m, fields, cells, acc, bind)?,
            eval_having(b, m, fields, cells, acc, bind)?,
        ) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Having::Not(a) => eval_having(a, m, fields, cells, acc, bind)?.map(|v| !v),
        Having::IsNull(t, is_null) => {
            let v = term_value(t, None, m, fields, cells, acc, bind)?;
            Some((v == Value::Null) == *is_null)
        }
        Having::Cmp(l, op, r) => {
            // Resolve columns first so a literal can take the column's type.
            let (lv, rv) = match (l, r) {
                (Term::Col(_), _) => {
                    let lv = term_value(l, None, m, fields, cells, acc, bind)?;
                    let rv = term_value(r, Some(&lv), m, fields, cells, acc, bind)?;
                    (lv, rv)
                }
                _ => {
                    let rv = term_value(r, None, m, fields, cells, acc, bind)?;
                    let lv = term_value(l, Some(&rv), m, fields, cells, acc, bind)?;
                    (lv, rv)
                }
            };
            if lv == Value::Null || rv == Value::Null {
                None
            } else {
                merge::compare(&lv, *op, &rv).map_err(|e| e.to_string())?
            }
        }
    })
}

enum Head {
    Rows(Frame),
    NoRows,
    Error(Frame),
}

enum RowError {
    Backend(Frame),
    Io(std::io::Error),
    Client(SessionError),
}
