//! Client messages: each is routed (a backend is checked out when none is held), rewritten where
//! prepared statements need it, and queued with the response it expects.

use std::sync::Arc;

use super::client::SessionError;
use super::sharding::Routed;
use super::state::{ExtKind, Op, Stmt};
use super::{Flow, Session};
use crate::analyze::{Facts, TxEffect};
use crate::protocol::pg::Frame;
use crate::protocol::pg::messages as msg;
use crate::protocol::pg::rows;
use crate::protocol::pg::sqlstate::SqlState;

impl Session {
    pub(super) async fn on_client(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let tag = f.tag();
        tracing::trace!(client = self.handle.pid, tag = %(tag as char), held = self.held.is_some(), "client message");
        if self.ignore_till_sync && !matches!(tag, b'S' | b'X') {
            return Ok(Flow::Continue);
        }
        match tag {
            b'Q' => self.on_query(f).await,
            b'P' => self.on_parse(f).await,
            b'B' => self.on_bind(f).await,
            b'D' => self.on_describe(f).await,
            b'E' => self.on_execute(f).await,
            b'C' => self.on_close(f),
            b'H' => self.on_flush(f),
            b'S' => self.on_sync(f).await,
            b'F' => self.on_function_call(f).await,
            b'd' | b'c' | b'f' => {
                // Copy data for a COPY FROM STDIN in progress; outside one, ignored as the server does.
                if let Some(h) = self.held.as_mut() {
                    h.wbuf.extend_from_slice(f.raw());
                    if tag != b'd' {
                        if h.copy_in {
                            h.copy_in = false;
                        } else {
                            h.ops.push_back(Op::CopyEnd);
                        }
                    }
                }
                Ok(Flow::Continue)
            }
            b'X' => Ok(Flow::Terminate),
            other => Err(SessionError::Fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "invalid frontend message type {other} ('{}')",
                    (other as char).escape_default()
                ),
            )),
        }
    }

    async fn on_query(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let first_try = !std::mem::take(&mut self.retrying);
        let text = match self.client_text(msg::parse_query(f.body())?) {
            Ok(t) => t,
            Err(m) => return Ok(self.fail_unread(super::local::text_error_code(&m), &m, false)),
        };
        let sql: &str = &text;
        if self.held.is_none() {
            self.flush_early();
        }
        // With a shard map, the text with its literals as parameters keys both analyses.
        let literal_free = if self.sharded() && sql.len() <= 4096 {
            crate::analyze::fingerprint::parameterize(sql)
        } else {
            None
        };
        let facts = if sql.len() > super::heavy::INLINE_LEN {
            // Boxed: rare, and its future would otherwise be part of every Query's.
            Box::pin(self.facts_off_runtime(sql)).await
        } else {
            self.facts_keyed(sql, literal_free.as_ref().map(|lf| lf.text.as_str()))
        };
        if let Some(e) = &facts.too_complex {
            return Ok(self.refuse_too_complex(e, false));
        }
        if let Some(call) = &facts.proxy_call
            && self.answer_proxy_call(call)
        {
            return Ok(Flow::Continue);
        }
        if let Some(flow) = self.on_dealloc(&facts) {
            return Ok(flow);
        }
        let (shard, rewritten) = match self.route_query(&f, sql, &facts, literal_free).await? {
            Routed::Done(flow) => return Ok(flow),
            Routed::Shard(s) => (s, None),
            Routed::Rewrite(s, text) => (s, Some(text)),
            Routed::BindFilled(..)
            | Routed::NeedColumns(_)
            | Routed::InsertSelect(_)
            | Routed::Fenced(..)
            | Routed::Materialize(_) => {
                unreachable!("only Binds are filled")
            }
        };
        if let Some(flow) = self.hold_for(&facts, false, &f, shard).await? {
            return Ok(flow);
        }
        let rewritten = rewritten.map(|text| self.wire(&text).into_owned());
        let held = self.held.as_ref().expect("ensure_backend holds one");
        if first_try
            && rewritten.is_none()
            && held.checkout.node.role() == crate::backend::Role::Replica
            && !held.in_transaction()
            && held.ops.iter().all(|o| matches!(o, Op::SyncVars))
        {
            self.arm_query(f.clone());
        } else {
            // Behind other answers still owed, or not a read on a replica: nothing is tried again.
            self.drop_retry();
        }
        let held = self.held.as_mut().expect("ensure_backend holds one");
        match &rewritten {
            Some(text) => msg::query_bytes(&mut held.wbuf, text),
            None => held.wbuf.extend_from_slice(f.raw()),
        }
        // A simple Query destroys the backend's unnamed statement.
        held.checkout.conn.unnamed = None;
        if facts.dealloc == Some(crate::analyze::Dealloc::All) {
            // The server forgets every statement, those other clients' statements left there too:
            // whoever uses this connection next prepares again.
            held.checkout.conn.prepared.clear();
        }
        held.ops.push_back(Op::Query {
            set_ops: facts.set_ops.clone(),
            failed: false,
        });
        if held.only_read && facts.tx != TxEffect::None && sql.trim().trim_end_matches(';').contains(';') {
            // Several statements (`BEGIN; INSERT ...`): the facts summarise them; count it as a write.
            held.only_read = false;
        }
        self.note_statement(&facts);
        Ok(Flow::Continue)
    }

    async fn on_parse(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let p = msg::parse_parse(f.body())?;
        if !p.name.is_empty() && self.stmts.contains_key(p.name) {
            let m = format!("prepared statement \"{}\" already exists", p.name);
            self.local_error(SqlState::DUPLICATE_PREPARED_STATEMENT, &m);
            return Ok(Flow::Continue);
        }
        let text = match self.client_text(p.query) {
            Ok(t) => t,
            Err(m) => return Ok(self.fail_unread(super::local::text_error_code(&m), &m, true)),
        };
        let query: &str = &text;
        let facts = if query.len() > super::heavy::INLINE_LEN {
            Box::pin(self.facts_off_runtime(query)).await
        } else {
            self.facts_of(query)
        };
        if let Some(e) = &facts.too_complex {
            return Ok(self.refuse_too_complex(e, true));
        }
        if self.held.is_none() {
            self.runtime = self.shared.runtime.load_full();
        }
        if self.sharded() || facts.proxy_call.is_some() {
            // The shard is known only at Bind, from the parameters: the Parse goes to whichever
            // backend then needs it. A proxy call never reaches a backend.
            let stmt = match &self.unnamed {
                Some(u) if p.name.is_empty() && u.query == query && u.param_types[..] == *p.param_types => u.clone(),
                _ => Arc::new(Stmt::new(query, p.param_types, facts)),
            };
            if p.name.is_empty() {
                self.unnamed = Some(stmt);
            } else {
                self.stmts.insert(p.name.to_owned(), stmt);
            }
            match self.held.as_mut() {
                Some(h) => h.ops.push_back(Op::Synth(msg::empty(b'1'))),
                None => self.early.extend_from_slice(&msg::empty(b'1')),
            }
            return Ok(Flow::Continue);
        }
        let shard = self.default_shard();
        if let Some(flow) = self.hold_for(&facts, true, &f, shard).await? {
            return Ok(flow);
        }
        // Clients such as pgbench -M extended send the same unnamed statement every time: keep it.
        let stmt = match &self.unnamed {
            Some(u) if p.name.is_empty() && u.query == query && u.param_types[..] == *p.param_types => u.clone(),
            _ => Arc::new(Stmt::new(query, p.param_types, facts)),
        };
        let converted = if stmt.ascii { None } else { self.converted(&stmt.query) };
        let held = self.held.as_mut().expect("ensure_backend holds one");
        held.needs_sync = true;
        if p.name.is_empty() {
            self.unnamed = Some(stmt.clone());
            held.checkout.conn.unnamed = Some(stmt.hash);
            held.wbuf.extend_from_slice(f.raw());
            held.ops.push_back(Op::Ext(ExtKind::Parse {
                forget: None,
                client_name: None,
            }));
        } else {
            self.stmts.insert(p.name.to_owned(), stmt.clone());
            if held.checkout.conn.prepared.touch(stmt.hash) {
                held.ops.push_back(Op::Synth(msg::empty(b'1')));
            } else {
                super::prepared::make_room(held, stmt.hash);
                let text = converted.as_deref().unwrap_or(stmt.query.as_bytes());
                msg::parse_bytes(&mut held.wbuf, &stmt.backend_name(), text, &stmt.param_types);
                let client_name = Some(p.name.to_owned());
                held.ops.push_back(Op::Ext(ExtKind::Parse {
                    forget: Some(stmt.hash),
                    client_name,
                }));
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_bind(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let b = msg::parse_bind(f.body())?;
        let Some(stmt) = self.lookup_statement(b.statement) else {
            return Ok(Flow::Continue);
        };
        if let Some(call) = &stmt.facts.proxy_call
            && self.bind_proxy_call(b.portal, call, &rows::split_bind(&f.raw().slice_ref(b.rest))?)
        {
            return Ok(Flow::Continue);
        }
        if self.multi_tx() {
            let single = !stmt.query.trim().trim_end_matches(';').contains(';');
            if let Some(flow) = self
                .multi_tx_control(&f, &stmt.query, &stmt.facts, single, Some(b.portal))
                .await?
            {
                return Ok(flow);
            }
        }
        // Without a shard map the Bind goes to the default shard as it came: no need to look inside.
        let routed = if self.route_start() {
            self.route_bind(&f, b.portal, &stmt, rows::split_bind(&f.raw().slice_ref(b.rest))?)?
        } else {
            Routed::Shard(self.default_shard())
        };
        // The steps some statements need before they can be routed, in a future of their own:
        // its state would otherwise be part of (and moved with) every Bind's.
        let (stmt, routed) = match routed {
            Routed::NeedColumns(_) | Routed::InsertSelect(_) | Routed::Fenced(..) | Routed::Materialize(_) => {
                match Box::pin(self.route_bind_steps(&f, stmt, routed)).await? {
                    Ok(r) => r,
                    Err(flow) => return Ok(flow),
                }
            }
            routed => (stmt, routed),
        };
        let shard = match routed {
            Routed::Done(flow) => return Ok(flow),
            Routed::Shard(s) => s,
            Routed::Rewrite(..) => unreachable!("only Queries are rewritten"),
            Routed::Materialize(why) => {
                self.refuse(true, &why);
                return Ok(Flow::Continue);
            }
            Routed::NeedColumns(_) | Routed::InsertSelect(_) | Routed::Fenced(..) => {
                let m = "the statement's table or partition changed while it was routed; send it again";
                self.fail_statement(crate::protocol::pg::sqlstate::SqlState::TRANSACTION_ROLLBACK, true, m);
                return Ok(Flow::Continue);
            }
            Routed::BindFilled(s, filled, parts) => {
                // The statement with generated IDs: prepared under its own name, bound with the
                // client's parameters plus one per ID.
                if let Some(flow) = self.hold_for(&filled.facts, true, &f, s).await? {
                    return Ok(flow);
                }
                let name = self.ensure_prepared(&filled, !b.statement.is_empty());
                let held = self.held.as_mut().expect("ensure_backend holds one");
                held.needs_sync = true;
                rows::bind_named(&mut held.wbuf, b.portal, &name, &parts, None, &parts.result_formats);
                held.ops.push_back(Op::Ext(ExtKind::Bind));
                self.portals.insert(b.portal, filled);
                return Ok(Flow::Continue);
            }
        };
        let at_bind = super::bind_route::facts_at_bind(&stmt, &f, b.rest)?;
        if let Some(flow) = self
            .hold_for(at_bind.as_ref().unwrap_or(&stmt.facts), true, &f, shard)
            .await?
        {
            return Ok(flow);
        }
        let name = self.ensure_prepared(&stmt, !b.statement.is_empty());
        let held = self.held.as_mut().expect("ensure_backend holds one");
        held.needs_sync = true;
        if b.statement.is_empty() {
            // The unnamed statement keeps its name on the backend: the message goes as it came.
            held.wbuf.extend_from_slice(f.raw());
        } else {
            msg::bind(&mut held.wbuf, b.portal, &name, b.rest);
        }
        held.ops.push_back(Op::Ext(ExtKind::Bind));
        self.portals.insert(b.portal, stmt);
        Ok(Flow::Continue)
    }

    async fn on_describe(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let (kind, name) = msg::parse_target(f.body(), "Describe")?;
        if kind == b'P' {
            if self.on_local_portal(b'D', name) {
                return Ok(Flow::Continue);
            }
            if let Some(p) = self.multi_portal.as_mut().filter(|p| p.name == name) {
                p.describe = true;
                return Ok(Flow::Continue);
            }
            return Ok(self.forward_portal_op(&f, name, ExtKind::Describe));
        }
        let Some(stmt) = self.lookup_statement(name) else {
            return Ok(Flow::Continue);
        };
        if let Some(call) = &stmt.facts.proxy_call {
            self.describe_proxy_statement(call, &stmt.param_types);
            return Ok(Flow::Continue);
        }
        if self.pending_begin.is_some() && self.held.is_none() {
            Box::pin(self.describe_aside(&stmt)).await?;
            return Ok(Flow::Continue);
        }
        // Every shard has the same tables: the held one, or the default, can describe it.
        let shard = self.held.as_ref().map_or(self.default_shard(), |h| h.shard);
        if let Some(flow) = self.hold_for(&stmt.facts, true, &f, shard).await? {
            return Ok(flow);
        }
        let backend_name = self.ensure_prepared(&stmt, !name.is_empty());
        let held = self.held.as_mut().expect("ensure_backend holds one");
        held.needs_sync = true;
        msg::describe_or_close(&mut held.wbuf, b'D', b'S', &backend_name);
        held.ops.push_back(Op::Ext(ExtKind::Describe));
        Ok(Flow::Continue)
    }

    async fn on_execute(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let portal = msg::parse_execute(f.body())?;
        if self.multi_portal.as_ref().is_some_and(|p| p.name == portal) {
            // Runs on other connections and writes to the client itself: not replayable.
            self.drop_retry();
            return Box::pin(self.execute_multi(&f)).await;
        }
        if self.local_portal.as_ref().is_some_and(|(p, _)| p == portal) {
            // IDs handed out, a signal sent: done once.
            self.drop_retry();
        }
        if self.on_local_portal(b'E', portal) {
            return Ok(Flow::Continue);
        }
        let facts = self.portals.get(portal).map(|s| s.facts.clone());
        let set_ops = facts.as_ref().map(|f| f.set_ops.clone()).unwrap_or_default();
        let flow = self.forward_portal_op(&f, portal, ExtKind::Execute { set_ops });
        if let (Some(facts), Some(_)) = (facts, self.held.as_ref()) {
            self.note_statement(&facts);
        }
        Ok(flow)
    }

    /// Describe or Execute of a portal: portals live on the held backend only.
    fn forward_portal_op(&mut self, f: &Frame, portal: &str, kind: ExtKind) -> Flow {
        match self.held.as_mut() {
            Some(h) => {
                h.wbuf.extend_from_slice(f.raw());
                h.ops.push_back(Op::Ext(kind));
                h.needs_sync = true;
            }
            None => self.local_error(
                SqlState::INVALID_CURSOR_NAME,
                &format!("portal \"{portal}\" does not exist"),
            ),
        }
        Flow::Continue
    }

    fn on_close(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let (kind, name) = msg::parse_target(f.body(), "Close")?;
        if kind == b'S' {
            // The backend keeps its copy: another client, or this one again, may prepare the same text.
            if name.is_empty() {
                self.unnamed = None;
            } else {
                self.stmts.remove(name);
            }
            self.respond_local(msg::empty(b'3'));
        } else {
            self.portals.remove(name);
            if self.multi_portal.as_ref().is_some_and(|p| p.name == name) {
                self.multi_portal = None;
            }
            if self.on_local_portal(b'C', name) {
                return Ok(Flow::Continue);
            }
            match self.held.as_mut() {
                Some(h) => {
                    h.wbuf.extend_from_slice(f.raw());
                    h.ops.push_back(Op::Ext(ExtKind::Close));
                    h.needs_sync = true;
                }
                None => self.respond_local(msg::empty(b'3')),
            }
        }
        Ok(Flow::Continue)
    }

    fn on_flush(&mut self, f: Frame) -> Result<Flow, SessionError> {
        if let Some(h) = self.held.as_mut() {
            h.wbuf.extend_from_slice(f.raw());
        }
        Ok(Flow::Continue)
    }

    async fn on_sync(&mut self, f: Frame) -> Result<Flow, SessionError> {
        self.ignore_till_sync = false;
        // An unnamed portal ends at Sync; a multi-shard or local one never outlives it.
        self.multi_portal = None;
        self.local_portal = None;
        if self.implicit_multi {
            return Box::pin(self.sync_multi(&f)).await;
        }
        if std::mem::take(&mut self.rollback_at_sync)
            && let Some(h) = self.held.as_mut()
            && !h.copy_in
        {
            h.wbuf.extend_from_slice(f.raw());
            h.ops.push_back(Op::Hidden);
            msg::query(&mut h.wbuf, "ROLLBACK");
            h.checkout.conn.unnamed = None;
            h.ops.push_back(Op::Hidden);
            let mut ready = bytes::BytesMut::new();
            msg::ready_for_query(&mut ready, b'I');
            h.ops.push_back(Op::Synth(ready.freeze()));
            h.needs_sync = false;
            self.tx_begin = None;
            self.tx_read_only = false;
            return Ok(Flow::Continue);
        }
        match self.held.as_mut() {
            // The server ignores Sync during COPY FROM STDIN: nothing will answer it.
            Some(h) if h.copy_in => h.wbuf.extend_from_slice(f.raw()),
            Some(h) => {
                h.wbuf.extend_from_slice(f.raw());
                h.ops.push_back(Op::Sync);
                h.needs_sync = false;
            }
            None => {
                self.flush_early();
                let status = self.local_tx_status();
                msg::ready_for_query(&mut self.client.wbuf, status);
            }
        }
        Ok(Flow::Continue)
    }

    async fn on_function_call(&mut self, f: Frame) -> Result<Flow, SessionError> {
        let facts = Facts::unparsed();
        let shard = self.held.as_ref().map_or(self.default_shard(), |h| h.shard);
        if let Some(flow) = self.hold_for(&facts, false, &f, shard).await? {
            return Ok(flow);
        }
        let held = self.held.as_mut().expect("ensure_backend holds one");
        held.wbuf.extend_from_slice(f.raw());
        held.ops.push_back(Op::Query {
            set_ops: Vec::new(),
            failed: false,
        });
        // A function call may write anything.
        held.only_read = false;
        Ok(Flow::Continue)
    }
}
