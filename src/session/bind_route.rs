//! Routing of an extended-protocol Bind: by the statement's shape and the Bind's parameters
//! (generated IDs filled in, an INSERT's columns named, an INSERT ... SELECT's rows read first),
//! and running a portal bound to several shards at its Execute.

use std::sync::Arc;

use super::client::SessionError;
use super::multi::{MultiPortal, Outcome, Source};
use super::sharding::{Routed, end_tag, runs_anywhere};
use super::state::Stmt;
use super::{Flow, Session};
use crate::analyze::TxEffect;
use crate::analyze::shard::Shape;
use crate::plan::shard::{Params, ShardPlan};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows::BindParts;
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    /// Routes a Bind (the caller checked [`Session::route_start`]): by its parameters. `Done`
    /// when it was answered here.
    pub(super) fn route_bind(
        &mut self,
        f: &Frame,
        portal: &str,
        stmt: &Arc<Stmt>,
        parts: BindParts,
    ) -> Result<Routed, SessionError> {
        if self.tx_refused && stmt.facts.tx == TxEffect::End {
            // As PostgreSQL answers ROLLBACK (or COMMIT) of a failed transaction. The held
            // connection skips everything until a Sync: it rolls back at the client's.
            self.tx_refused = false;
            self.pending_begin = None;
            self.rollback_at_sync = self.held.is_some();
            self.local_portal = Some((portal.to_owned(), super::local_portal::LocalPortal::Tag("ROLLBACK")));
            self.answer_local(&msg::empty(b'2'));
            return Ok(Routed::Done(Flow::Continue));
        }
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
                self.local_portal = Some((portal.to_owned(), super::local_portal::LocalPortal::Tag(tag)));
                self.answer_local(&msg::empty(b'2'));
                return Ok(Routed::Done(Flow::Continue));
            }
        }
        let params = Params {
            formats: (0..parts.values.len()).map(|i| parts.param_format(i)).collect(),
            values: parts.values.iter().map(|v| v.as_deref()).collect(),
            types: &stmt.param_types,
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
            self.ddl_seen();
        }
        let mut plan = self.plan_checked(&shape, &map, &params);
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
                    plan = self.plan_checked(&shape, &map, &params);
                    filled_bind = true;
                }
                None => {
                    self.fail_statement(
                        SqlState::SYNTAX_ERROR,
                        true,
                        "INSERT has more expressions than target columns",
                    );
                    return Ok(Routed::Done(Flow::Continue));
                }
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
                types: &stmt.param_types,
                literals: &[],
            };
            let insert = Shape::Insert {
                group: *group,
                keys,
                stmt: filled_ast,
            };
            plan = self.plan_checked(&insert, &map, &params);
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
            ShardPlan::Refuse(m) if single_statement && self.may_materialize(&stmt.query, &stmt.facts).is_some() => {
                Ok(Routed::Materialize(m))
            }
            ShardPlan::Refuse(m) => {
                self.refuse(true, &m);
                Ok(Routed::Done(Flow::Continue))
            }
            ShardPlan::Fenced { group, partition } => Ok(Routed::Fenced(group, partition)),
            ShardPlan::Statements => {
                // As the server answers a Parse of several statements.
                self.fail_statement(
                    SqlState::SYNTAX_ERROR,
                    true,
                    "cannot insert multiple commands into a prepared statement",
                );
                Ok(Routed::Done(Flow::Continue))
            }
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
                    runtime: self.runtime.clone(),
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
        self.runtime = p.runtime.clone();
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
    pub(super) fn refuse_in_transaction(&mut self, plan: &ShardPlan, extended: bool) -> Option<Flow> {
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

    /// A Bind that needs steps first (its INSERT's columns read, an INSERT ... SELECT's rows
    /// selected, a fence waited out), each at most once or twice, then routed again. `Err`:
    /// answered here.
    pub(super) async fn route_bind_steps(
        &mut self,
        f: &Frame,
        mut stmt: Arc<Stmt>,
        mut routed: Routed,
    ) -> Result<Result<(Arc<Stmt>, Routed), Flow>, SessionError> {
        let b = msg::parse_bind(f.body())?;
        // The statement the proxy made of the client's (an INSERT ... SELECT's rows as VALUES),
        // bound without parameters.
        let mut own: Option<BindParts> = None;
        let parts = |own: &Option<BindParts>| match own {
            Some(p) => Ok(p.clone()),
            None => crate::protocol::pg::rows::split_bind(&f.raw().slice_ref(b.rest)),
        };
        for _ in 0..5 {
            match &routed {
                Routed::Fenced(group, partition) => {
                    let (group, partition) = (group.clone(), *partition);
                    if let Err((code, m)) = Box::pin(self.wait_unfenced(&group, partition)).await {
                        self.fail_statement(code, true, &m);
                        return Ok(Err(Flow::Continue));
                    }
                }
                Routed::NeedColumns(table) => {
                    if let Err((code, m)) = Box::pin(self.load_columns(table, false)).await {
                        self.fail_statement(code, true, &m);
                        return Ok(Err(Flow::Continue));
                    }
                }
                Routed::InsertSelect(select) if own.is_none() => {
                    if let Some(flow) = self.clear_for_statement(f, true) {
                        return Ok(Err(flow));
                    }
                    let select = select.clone();
                    let client = parts(&own)?;
                    let (text, none) = match Box::pin(self.insert_select(
                        &stmt.query,
                        &select,
                        Some((&stmt.param_types, &client)),
                        &stmt.facts,
                    ))
                    .await
                    {
                        Ok(t) => t,
                        Err(super::insert_select::SelectFailure::Proxy(code, m)) => {
                            self.fail_statement(code, true, &m);
                            return Ok(Err(Flow::Continue));
                        }
                        Err(super::insert_select::SelectFailure::Server(e)) => {
                            self.fail_with_frame(e.raw(), true);
                            return Ok(Err(Flow::Continue));
                        }
                    };
                    stmt = Arc::new(Stmt::new(&text, &[0, 0], stmt.facts.clone()));
                    own = Some(BindParts {
                        param_formats: Vec::new(),
                        values: Vec::new(),
                        result_formats: client.result_formats,
                    });
                    if none {
                        // Nothing to insert: any shard answers it, with RETURNING's columns.
                        routed = Routed::Shard(self.here_or(self.default_shard(), true));
                        break;
                    }
                }
                Routed::Materialize(why) if own.is_none() => {
                    let why = why.clone();
                    if let Some(flow) = self.clear_for_statement(f, true) {
                        return Ok(Err(flow));
                    }
                    let client = parts(&own)?;
                    let done = match self.with_bind_inlined(&stmt, &client).await {
                        Some(inlined) => Box::pin(self.materialized(None, &inlined, &stmt.facts, &why)).await,
                        None => None,
                    };
                    let map = self.runtime.config.map.clone();
                    let text = match done {
                        Some(Ok(text)) => text,
                        None => {
                            self.refuse(true, &why);
                            return Ok(Err(Flow::Continue));
                        }
                        Some(Err(super::insert_select::SelectFailure::Proxy(code, m))) => {
                            self.fail_statement(code, true, &m);
                            return Ok(Err(Flow::Continue));
                        }
                        Some(Err(super::insert_select::SelectFailure::Server(e))) => {
                            self.fail_with_frame(e.raw(), true);
                            return Ok(Err(Flow::Continue));
                        }
                    };
                    // Planned here, not through the shared cache: the text is this Bind's alone.
                    let shape = Arc::new(crate::analyze::shard::shape(&text, &map));
                    if *shape == Shape::Unparsed {
                        self.refuse(true, &why);
                        return Ok(Err(Flow::Continue));
                    }
                    self.shared.stats.record_plan("materialized");
                    stmt = Arc::new(Stmt::new(&text, &[0, 0], stmt.facts.clone()));
                    let _ = stmt.shape.set((map, shape));
                    own = Some(BindParts {
                        param_formats: Vec::new(),
                        values: Vec::new(),
                        result_formats: client.result_formats,
                    });
                }
                _ => break,
            }
            routed = self.route_bind(f, b.portal, &stmt, parts(&own)?)?;
        }
        if let (Some(p), Routed::Shard(s)) = (&own, &routed) {
            routed = Routed::BindFilled(*s, stmt.clone(), p.clone());
        }
        Ok(Ok((stmt, routed)))
    }
}

/// The facts of a statement once its Bind is known, when they differ from those of its text: a
/// `current_setting($n)` whose parameter is `transaction_read_only` is the primary's to answer
/// (always `on` on a hot standby).
pub(super) fn facts_at_bind(
    stmt: &Stmt,
    bind: &Frame,
    rest: &[u8],
) -> Result<Option<crate::analyze::Facts>, crate::protocol::pg::ProtocolError> {
    let Some(i) = stmt.facts.setting_param else {
        return Ok(None);
    };
    let parts = crate::protocol::pg::rows::split_bind(&bind.raw().slice_ref(rest))?;
    let read_only = parts
        .values
        .get(i)
        .and_then(|v| v.as_deref())
        .is_some_and(|v| v.eq_ignore_ascii_case(b"transaction_read_only"));
    Ok(read_only.then(|| crate::analyze::Facts {
        need: crate::analyze::Need::Primary,
        ..(*stmt.facts).clone()
    }))
}
