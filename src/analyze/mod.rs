//! Statement analysis: SQL text → [`Facts`] (read or primary-only, transaction effect, session
//! parameter changes, session pinning). Uses sqlparser's PostgreSQL dialect and its visitors;
//! knows nothing of protocols or nodes.
#![warn(missing_docs)]

pub mod cache;
pub mod facts;
pub mod fingerprint;
pub mod limits;
pub mod mysql;
pub mod script;
pub mod shard;

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ContextModifier, Expr, Query, Reset, SetExpr, Statement, TransactionAccessMode, TransactionMode, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use cache::AnalysisCache;
pub use facts::{Count, DEFAULT_PRIMARY_FUNCTIONS, Dealloc, Facts, Need, ProxyCall, SetOp, TxEffect};
pub use limits::{Limits, TooComplex};

/// Analyzes a statement text under the default [`Limits`]. `primary_functions` are lower-case
/// function names that force the primary.
pub fn analyze(sql: &str, primary_functions: &HashSet<String>) -> Facts {
    analyze_within(sql, primary_functions, &Limits::default())
}

/// Analyzes a statement text that passes `limits`; one that does not is not parsed and its
/// facts say why ([`Facts::too_complex`]).
pub fn analyze_within(sql: &str, primary_functions: &HashSet<String>, limits: &Limits) -> Facts {
    if let Err(e) = limits::check(sql, limits) {
        return Facts {
            too_complex: Some(e),
            ..Facts::unparsed()
        };
    }
    let hint_primary = has_primary_hint(sql);
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => {
            return Facts {
                hint_primary,
                ..Facts::unparsed()
            };
        }
    };
    let mut facts = Facts {
        need: Need::Read,
        tx: TxEffect::None,
        set_ops: Vec::new(),
        pins_session: None,
        parsed: true,
        hint_primary,
        proxy_call: None,
        dealloc: None,
        too_complex: None,
        setting_param: None,
    };
    for stmt in &statements {
        let f = statement(stmt, primary_functions);
        if f.need == Need::Primary {
            facts.need = Need::Primary;
        }
        if facts.tx == TxEffect::None {
            facts.tx = f.tx;
        }
        facts.set_ops.extend(f.set_ops);
        facts.pins_session = facts.pins_session.or(f.pins_session);
        facts.setting_param = facts.setting_param.or(f.setting_param);
        if facts.dealloc != Some(Dealloc::All) && f.dealloc.is_some() {
            facts.dealloc = f.dealloc;
        }
    }
    if statements.len() > 1 && matches!(facts.dealloc, Some(Dealloc::Named(_))) {
        // Answered by the proxy only alone: with other statements the text goes to the server.
        facts.dealloc = None;
    }
    if hint_primary {
        facts.need = Need::Primary;
    }
    if let [Statement::Query(q)] = &statements[..] {
        facts.proxy_call = proxy_call(q);
    }
    facts
}

/// `SELECT shardwire.next_id()`, `SELECT shardwire.next_ids(n)`, `SELECT pg_terminate_backend(pid)` or
/// `SELECT pg_cancel_backend(pid)`, alone.
fn proxy_call(q: &Query) -> Option<ProxyCall> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart, SelectItem};
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return None;
    };
    if !sel.from.is_empty() || sel.selection.is_some() || q.order_by.is_some() || q.limit_clause.is_some() {
        return None;
    }
    let [SelectItem::UnnamedExpr(Expr::Function(f))] = &sel.projection[..] else {
        return None;
    };
    let names: Vec<String> = f
        .name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.to_ascii_lowercase(),
            _ => String::new(),
        })
        .collect();
    let args: Vec<&FunctionArg> = match &f.args {
        FunctionArguments::List(l) => l.args.iter().collect(),
        FunctionArguments::None => Vec::new(),
        FunctionArguments::Subquery(_) => return None,
    };
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let one_arg = || match &args[..] {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => count_arg(e),
        _ => None,
    };
    match &names[..] {
        ["shardwire", "next_id"] if args.is_empty() => Some(ProxyCall::NextId),
        ["shardwire", "next_ids"] => one_arg().map(ProxyCall::NextIds),
        ["pg_terminate_backend"] | ["pg_catalog", "pg_terminate_backend"] => {
            one_arg().map(|pid| ProxyCall::Signal { terminate: true, pid })
        }
        ["pg_cancel_backend"] | ["pg_catalog", "pg_cancel_backend"] => {
            one_arg().map(|pid| ProxyCall::Signal { terminate: false, pid })
        }
        _ => None,
    }
}

/// A whole-number argument as written (`42`, `'42'`, either cast) or a parameter (`$1`, `$1::int`).
fn count_arg(e: &Expr) -> Option<Count> {
    use sqlparser::ast::Value;
    let e = match e {
        Expr::Cast { expr, .. } => expr.as_ref(),
        e => e,
    };
    let Expr::Value(v) = e else { return None };
    match &v.value {
        Value::Number(n, _) => n.parse().ok().map(Count::Lit),
        Value::SingleQuotedString(n) => n.trim().parse().ok().map(Count::Lit),
        Value::Placeholder(p) => p
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .map(|n| Count::Param(n - 1)),
        _ => None,
    }
}

/// `/* shardwire: primary */` anywhere in a block comment.
fn has_primary_hint(sql: &str) -> bool {
    let mut rest = sql;
    while let Some(start) = rest.find("/*") {
        let Some(len) = rest[start + 2..].find("*/") else {
            return false;
        };
        let body = rest[start + 2..start + 2 + len].trim();
        if let Some(v) = body.strip_prefix("shardwire:")
            && v.trim().eq_ignore_ascii_case("primary")
        {
            return true;
        }
        rest = &rest[start + 2 + len + 2..];
    }
    false
}

fn statement(stmt: &Statement, primary_functions: &HashSet<String>) -> Facts {
    let mut f = Facts {
        need: Need::Primary,
        tx: TxEffect::None,
        set_ops: Vec::new(),
        pins_session: None,
        parsed: true,
        hint_primary: false,
        proxy_call: None,
        dealloc: None,
        too_complex: None,
        setting_param: None,
    };
    match stmt {
        Statement::Query(q) => (f.need, f.setting_param) = query_need(q, primary_functions),
        Statement::Explain {
            analyze,
            statement: inner,
            ..
        } => {
            f.need = if *analyze {
                self::statement(inner, primary_functions).need
            } else {
                Need::Read
            };
        }
        // `transaction_read_only` is always on on a hot standby: the client asks about its database.
        Statement::ShowVariable { variable }
            if variable.len() == 1 && variable[0].value.eq_ignore_ascii_case("transaction_read_only") =>
        {
            f.need = Need::Primary
        }
        Statement::ShowVariable { .. } | Statement::ShowVariables { .. } => f.need = Need::Read,
        Statement::Copy {
            to: true,
            source: sqlparser::ast::CopySource::Query(q),
            ..
        } => (f.need, f.setting_param) = query_need(q, primary_functions),
        Statement::Copy { to: true, .. } => f.need = Need::Read,
        Statement::StartTransaction { modes, .. } => {
            let read_only = modes.contains(&TransactionMode::AccessMode(TransactionAccessMode::ReadOnly));
            f.tx = TxEffect::Begin { read_only };
            if read_only {
                f.need = Need::Read;
            }
        }
        // ROLLBACK TO SAVEPOINT keeps the transaction open; what it undoes of SETs is tracked.
        Statement::Rollback {
            savepoint: Some(name), ..
        } => f.set_ops.push(SetOp::RollbackTo {
            name: savepoint_name(name),
        }),
        Statement::Commit { .. } | Statement::Rollback { .. } => f.tx = TxEffect::End,
        Statement::Savepoint { name } => f.set_ops.push(SetOp::Savepoint {
            name: savepoint_name(name),
        }),
        Statement::ReleaseSavepoint { name } => f.set_ops.push(SetOp::Release {
            name: savepoint_name(name),
        }),
        Statement::Set(set) => set_op(set, stmt, &mut f),
        Statement::Reset(r) => f.set_ops.push(match &r.reset {
            Reset::ALL => SetOp::ResetAll,
            Reset::SessionAuthorization => SetOp::Reset {
                name: "session_authorization".into(),
            },
            Reset::ConfigurationParameter(p) => SetOp::Reset {
                name: p.to_string().to_ascii_lowercase(),
            },
        }),
        Statement::Discard {
            object_type: sqlparser::ast::DiscardObject::ALL,
        } => {
            f.set_ops.push(SetOp::ResetAll);
            f.dealloc = Some(Dealloc::All);
        }
        Statement::Deallocate { name, .. } => {
            f.dealloc = Some(
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                    Dealloc::All
                } else {
                    Dealloc::Named(savepoint_name(name))
                },
            );
        }
        Statement::Prepare { .. } => f.pins_session = Some("PREPARE (SQL-level prepared statement)"),
        Statement::LISTEN { .. } => f.pins_session = Some("LISTEN"),
        Statement::Declare { stmts } if stmts.iter().any(|d| d.hold == Some(true)) => {
            f.pins_session = Some("cursor WITH HOLD")
        }
        Statement::CreateTable(t) if t.temporary => f.pins_session = Some("temporary table"),
        _ => {}
    }
    if session_lock(stmt) {
        f.pins_session = Some("session-level advisory lock");
    }
    f
}

/// A savepoint name as the server knows it: unquoted names are folded to lower case.
fn savepoint_name(name: &sqlparser::ast::Ident) -> String {
    match name.quote_style {
        Some(_) => name.value.clone(),
        None => name.value.to_lowercase(),
    }
}

fn set_op(set: &sqlparser::ast::Set, stmt: &Statement, f: &mut Facts) {
    use sqlparser::ast::Set;
    let name = match set {
        Set::SingleAssignment {
            scope: Some(ContextModifier::Local),
            ..
        } => return,
        Set::SingleAssignment { variable, .. } => variable.to_string().to_ascii_lowercase(),
        Set::SetTimeZone { local: true, .. } => return,
        Set::SetTimeZone { .. } => "timezone".into(),
        Set::SetRole {
            context_modifier: Some(ContextModifier::Local),
            ..
        } => return,
        Set::SetRole { .. } => "role".into(),
        Set::SetSessionAuthorization(_) => "session_authorization".into(),
        Set::SetTransaction { session: false, .. } => return,
        _ => {
            f.pins_session = Some("a SET form that cannot be replayed");
            return;
        }
    };
    f.set_ops.push(SetOp::Set {
        name,
        sql: stmt.to_string(),
    });
}

/// Reads and locks: `FOR UPDATE/SHARE`, `SELECT INTO`, data-modifying CTEs and side-effect functions
/// all need the primary.
/// System views whose answer only the primary has: on a hot standby they are empty or describe
/// the standby itself (a driver's `tpc_recover()` reads `pg_prepared_xacts`).
const PRIMARY_RELATIONS: &[&str] = &[
    "pg_prepared_xacts",
    "pg_stat_replication",
    "pg_replication_slots",
    "pg_stat_replication_slots",
    "pg_stat_activity",
    "pg_locks",
    "pg_stat_subscription",
    "pg_stat_progress_basebackup",
];

/// The setting a `current_setting(...)` call reads.
enum SettingArg {
    /// `current_setting('transaction_read_only')`: always `on` on a hot standby, while the client
    /// asks whether its database accepts writes (libpq's `target_session_attrs=read-write` and
    /// drivers do): the primary answers.
    ReadOnly,
    /// `current_setting($n)`: known at Bind (index n-1).
    Param(usize),
    /// Another setting, or not a `current_setting` call.
    Other,
}

fn setting_arg(f: &sqlparser::ast::Function) -> SettingArg {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments, Value};
    if function_name(&f.name) != "current_setting" {
        return SettingArg::Other;
    }
    let FunctionArguments::List(l) = &f.args else {
        return SettingArg::Other;
    };
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) = l.args.first() else {
        return SettingArg::Other;
    };
    let e = match e {
        Expr::Cast { expr, .. } => expr.as_ref(),
        e => e,
    };
    let Expr::Value(v) = e else { return SettingArg::Other };
    match &v.value {
        Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("transaction_read_only") => SettingArg::ReadOnly,
        Value::Placeholder(p) => match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) if n > 0 => SettingArg::Param(n - 1),
            _ => SettingArg::Other,
        },
        _ => SettingArg::Other,
    }
}

/// Where a query may run, and the parameter naming the setting of a `current_setting($n)` in it.
fn query_need(q: &Query, primary_functions: &HashSet<String>) -> (Need, Option<usize>) {
    struct V<'a> {
        functions: &'a HashSet<String>,
        setting_param: Option<usize>,
    }
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if !q.locks.is_empty() {
                return ControlFlow::Break(());
            }
            match q.body.as_ref() {
                SetExpr::Select(s) if s.into.is_some() => ControlFlow::Break(()),
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
            match s {
                Statement::Query(_) => ControlFlow::Continue(()),
                _ => ControlFlow::Break(()),
            }
        }
        fn pre_visit_relation(&mut self, r: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
            let name = function_name(r);
            if PRIMARY_RELATIONS.contains(&name.as_str()) {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let Expr::Function(func) = e else {
                return ControlFlow::Continue(());
            };
            if self.functions.contains(&function_name(&func.name)) {
                return ControlFlow::Break(());
            }
            match setting_arg(func) {
                SettingArg::ReadOnly => return ControlFlow::Break(()),
                SettingArg::Param(i) => self.setting_param = self.setting_param.or(Some(i)),
                SettingArg::Other => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V {
        functions: primary_functions,
        setting_param: None,
    };
    match q.visit(&mut v) {
        ControlFlow::Break(()) => (Need::Primary, None),
        ControlFlow::Continue(()) => (Need::Read, v.setting_param),
    }
}

fn function_name(name: &sqlparser::ast::ObjectName) -> String {
    let full = name.to_string();
    let last = full.rsplit('.').next().unwrap_or(&full);
    last.trim_matches('"').to_ascii_lowercase()
}

/// Session-level advisory locks outlive the transaction, so the backend must stay with the client.
fn session_lock(stmt: &Statement) -> bool {
    let mut found = false;
    let _ = sqlparser::ast::visit_expressions(stmt, |e| {
        if let Expr::Function(func) = e {
            let n = function_name(&func.name);
            if n.starts_with("pg_advisory_lock") || n.starts_with("pg_try_advisory_lock") {
                found = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    found
}

#[cfg(test)]
mod deep_tests;
#[cfg(test)]
mod tests;
