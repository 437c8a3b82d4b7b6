//! Statement analysis in MySQL's dialect: the same [`Facts`] as for PostgreSQL (read or primary,
//! transaction effect, settings to replay, session pins) from sqlparser's MySQL dialect, with
//! MySQL's own rules:
//!
//! - settings: `SET [SESSION] var = v`, `SET NAMES`, `SET autocommit`, `SET SESSION TRANSACTION`
//!   are replayed on every connection the session uses; `USE db` changes the database.
//! - user variables (`SET @v`, `@v := ...`, `SELECT ... INTO @v`), named locks (`GET_LOCK`),
//!   `LOCK TABLES`, temporary tables, SQL-level `PREPARE`, `SET TRANSACTION` (next transaction
//!   only) live on one connection: the session keeps it.
//! - locking reads, `SELECT ... INTO`, `CALL`, `LAST_INSERT_ID()` and the functions of
//!   [`PRIMARY_FUNCTIONS`] go to the primary; `START TRANSACTION READ ONLY` may use a replica.

use std::collections::HashSet;

use sqlparser::ast::{ContextModifier, Expr, ObjectName, Set, Statement, Visit};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

use super::{Facts, Limits, Need, SetOp, TxEffect};

/// MySQL functions with side effects or answers only the primary has.
pub const PRIMARY_FUNCTIONS: &[&str] = &[
    "get_lock",
    "release_lock",
    "release_all_locks",
    "is_free_lock",
    "is_used_lock",
    "last_insert_id",
    "found_rows",
    "row_count",
    "nextval",
    "lastval",
    "setval",
    "master_pos_wait",
    "source_pos_wait",
    "master_gtid_wait",
    "wait_for_executed_gtid_set",
    "sleep",
];

/// The analysis of a MySQL statement text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyFacts {
    /// What every front end learns.
    pub facts: Facts,
    /// `USE db`: the database the session switches to.
    pub use_db: Option<String>,
    /// `SET autocommit = 0|1`.
    pub autocommit: Option<bool>,
}

/// Analyzes a MySQL statement text (several statements separated by `;` when the client sent a
/// multi-statement query).
pub fn analyze(sql: &str, primary_functions: &HashSet<String>, limits: &Limits) -> MyFacts {
    let mut out = MyFacts {
        facts: Facts::unparsed(),
        use_db: None,
        autocommit: None,
    };
    if let Err(e) = super::limits::check(sql, limits) {
        out.facts.too_complex = Some(e);
        return out;
    }
    let code = code_only(sql);
    let assigns_variable = code.contains(":=");
    let statements = match Parser::parse_sql(&MySqlDialect {}, sql) {
        Ok(s) => s,
        Err(_) => {
            out.facts.hint_primary = super::has_primary_hint(sql);
            out.facts.pins_session = unparsed_pin(&code).or(assigns_variable.then_some("a user variable"));
            return out;
        }
    };
    let f = &mut out.facts;
    f.parsed = true;
    f.need = Need::Read;
    f.hint_primary = super::has_primary_hint(sql);
    for stmt in &statements {
        let (need, pin) = match stmt {
            Statement::Set(set) => setting(set, stmt, &mut out.autocommit, &mut f.set_ops),
            Statement::Use(u) => {
                out.use_db = Some(use_name(u));
                (Need::Read, None)
            }
            Statement::LockTables { .. } | Statement::UnlockTables => (Need::Primary, Some("LOCK TABLES")),
            Statement::Query(q) if into_variable(q) => (Need::Primary, Some("a user variable")),
            _ => {
                let s = super::statement(stmt, primary_functions);
                if f.tx == TxEffect::None {
                    f.tx = s.tx;
                }
                (s.need, s.pins_session)
            }
        };
        if need == Need::Primary {
            f.need = Need::Primary;
        }
        f.pins_session = f.pins_session.or(pin);
    }
    if named_lock(&statements) {
        f.pins_session = f.pins_session.or(Some("a named lock (GET_LOCK)"));
    }
    if assigns_variable {
        f.pins_session = f.pins_session.or(Some("a user variable"));
        f.need = Need::Primary;
    }
    if f.hint_primary {
        f.need = Need::Primary;
    }
    out
}

fn use_name(u: &sqlparser::ast::Use) -> String {
    use sqlparser::ast::Use;
    let name = match u {
        Use::Object(n) | Use::Database(n) | Use::Schema(n) | Use::Catalog(n) => n,
        _ => return u.to_string(),
    };
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .unwrap_or_default()
}

/// A SET: settings to replay, or what pins the session.
fn setting(
    set: &Set,
    stmt: &Statement,
    autocommit: &mut Option<bool>,
    ops: &mut Vec<SetOp>,
) -> (Need, Option<&'static str>) {
    let assignments: Vec<(Option<&ContextModifier>, &ObjectName, Option<&Expr>)> = match set {
        Set::SingleAssignment {
            scope,
            variable,
            values,
            ..
        } => vec![(scope.as_ref(), variable, values.first())],
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .map(|a| (a.scope.as_ref(), &a.name, Some(&a.value)))
            .collect(),
        Set::SetNames { .. } | Set::SetNamesDefault {} => {
            ops.push(SetOp::Set {
                name: "names".into(),
                sql: stmt.to_string(),
            });
            return (Need::Read, None);
        }
        Set::SetTransaction { session: true, .. } => {
            ops.push(SetOp::Set {
                name: "session transaction".into(),
                sql: stmt.to_string(),
            });
            return (Need::Read, None);
        }
        Set::SetTransaction { .. } => return (Need::Primary, Some("SET TRANSACTION (the next transaction only)")),
        _ => return (Need::Primary, Some("a SET form that cannot be replayed")),
    };
    for (scope, name, value) in assignments {
        let name = name.to_string().to_ascii_lowercase();
        if name.starts_with('@') && !name.starts_with("@@") {
            return (Need::Primary, Some("a user variable"));
        }
        if matches!(scope, Some(ContextModifier::Global)) || name.starts_with("@@global.") {
            return (Need::Primary, None);
        }
        let bare = name
            .trim_start_matches("@@session.")
            .trim_start_matches("@@local.")
            .trim_start_matches("@@")
            .to_owned();
        if bare == "autocommit" {
            *autocommit = value.and_then(flag);
            if autocommit.is_none() {
                return (Need::Primary, Some("SET autocommit to an expression"));
            }
            continue;
        }
        let v = value.map(|v| v.to_string()).unwrap_or_else(|| "DEFAULT".into());
        ops.push(SetOp::Set {
            sql: format!("SET SESSION {bare} = {v}"),
            name: bare,
        });
    }
    (Need::Read, None)
}

fn flag(e: &Expr) -> Option<bool> {
    let s = e.to_string().to_ascii_lowercase();
    match s.trim_matches(|c| c == '\'' || c == '"') {
        "1" | "on" | "true" => Some(true),
        "0" | "off" | "false" => Some(false),
        _ => None,
    }
}

fn into_variable(q: &sqlparser::ast::Query) -> bool {
    // SELECT ... INTO @v (or INTO OUTFILE): primary, and the variable stays on that connection.
    q.to_string().to_ascii_lowercase().contains(" into @")
}

fn named_lock(statements: &[Statement]) -> bool {
    let mut found = false;
    for s in statements {
        let _ = s.visit(&mut LockFinder(&mut found));
    }
    found
}

struct LockFinder<'a>(&'a mut bool);

impl sqlparser::ast::Visitor for LockFinder<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> std::ops::ControlFlow<()> {
        if let Expr::Function(f) = e
            && super::function_name(&f.name) == "get_lock"
        {
            *self.0 = true;
            return std::ops::ControlFlow::Break(());
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// A statement the parser did not take that keeps state on its connection.
fn unparsed_pin(code: &str) -> Option<&'static str> {
    let first = code.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
    match first.as_str() {
        "PREPARE" | "EXECUTE" | "DEALLOCATE" => Some("PREPARE (SQL-level prepared statement)"),
        "LOCK" | "UNLOCK" => Some("LOCK TABLES"),
        "HANDLER" => Some("HANDLER"),
        "SET" => Some("a SET form that cannot be replayed"),
        "XA" => Some("XA (the client's own distributed transaction)"),
        _ => None,
    }
}

/// The text with its literals (quoted strings, numbers) replaced by `?`: statements that differ
/// only in their values share it, and share their facts (the cache keys MySQL texts by it).
/// `None` when the text has nothing to replace or holds what this lexer does not take apart
/// with certainty (`?`, executable comments `/*! */`, prefixed strings like `_utf8'x'` or
/// `X'0F'`).
pub fn template(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut replaced = false;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'?' => return None,
            b'\'' | b'"' => {
                if i > 0 && ident(b[i - 1]) {
                    return None;
                }
                i += 1;
                loop {
                    match b.get(i) {
                        None => return None,
                        Some(b'\\') => i += 2,
                        Some(&q) if q == c && b.get(i + 1) == Some(&c) => i += 2,
                        Some(&q) if q == c => break,
                        Some(_) => i += 1,
                    }
                }
                i += 1;
                out.push('?');
                replaced = true;
            }
            b'`' => {
                let end = sql[i + 1..].find('`').map(|e| i + 1 + e + 1)?;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'#' => {
                let end = sql[i..].find('\n').map_or(b.len(), |e| i + e);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) => {
                let end = sql[i..].find('\n').map_or(b.len(), |e| i + e);
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                if b.get(i + 2) == Some(&b'!') {
                    return None;
                }
                let end = sql[i + 2..].find("*/").map(|e| i + 2 + e + 2)?;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'0'..=b'9' if i == 0 || !ident(b[i - 1]) => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                    // An exponent's sign belongs to the number.
                    if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
                        i += 1;
                    }
                    i += 1;
                }
                let _ = start;
                out.push('?');
                replaced = true;
            }
            _ if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    replaced.then_some(out)
}

/// The text with string literals, quoted identifiers and comments blanked out, so that a
/// search for `:=` or a first keyword sees only code.
pub fn code_only(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') && b.get(i + 2).is_none_or(|c| c.is_ascii_whitespace()) => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
                out.push(' ');
            }
            _ => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(sql: &str) -> MyFacts {
        let funcs = PRIMARY_FUNCTIONS.iter().map(|s| s.to_string()).collect();
        analyze(sql, &funcs, &Limits::default())
    }

    #[test]
    fn reads_and_writes() {
        assert_eq!(a("SELECT * FROM t WHERE id = 1").facts.need, Need::Read);
        assert_eq!(a("select `a` from `t` where b = \"x\"").facts.need, Need::Read);
        for sql in [
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "SELECT LAST_INSERT_ID()",
            "SELECT GET_LOCK('x', 1)",
            "CALL p()",
            "SELECT 1 /* shardwire: primary */",
            "SELECT * FROM t LOCK IN SHARE MODE",
            "SELECT @a := 1",
        ] {
            assert_eq!(a(sql).facts.need, Need::Primary, "{sql}");
        }
    }

    #[test]
    fn transactions() {
        assert_eq!(
            a("START TRANSACTION READ ONLY").facts.tx,
            TxEffect::Begin { read_only: true }
        );
        assert_eq!(a("BEGIN").facts.tx, TxEffect::Begin { read_only: false });
        assert_eq!(a("COMMIT").facts.tx, TxEffect::End);
        assert_eq!(a("SET autocommit = 0").autocommit, Some(false));
        assert_eq!(a("SET @@session.autocommit=ON").autocommit, Some(true));
        assert_eq!(a("set autocommit=1").facts.pins_session, None);
    }

    #[test]
    fn session_state() {
        let f = a("SET NAMES utf8mb4");
        assert!(matches!(&f.facts.set_ops[..], [SetOp::Set { name, .. }] if name == "names"));
        assert_eq!(f.facts.pins_session, None);
        let f = a("SET SESSION sql_mode = 'ANSI', time_zone = '+00:00'");
        assert_eq!(f.facts.set_ops.len(), 2, "{f:?}");
        assert!(a("SET @x = 1").facts.pins_session.is_some());
        assert!(a("SELECT id INTO @x FROM t LIMIT 1").facts.pins_session.is_some());
        assert!(a("SELECT GET_LOCK('a', 0)").facts.pins_session.is_some());
        assert!(a("LOCK TABLES t WRITE").facts.pins_session.is_some());
        assert!(a("CREATE TEMPORARY TABLE x (a int)").facts.pins_session.is_some());
        assert!(a("PREPARE s FROM 'SELECT 1'").facts.pins_session.is_some());
        assert_eq!(a("SELECT ':=' FROM t").facts.pins_session, None, "inside a string");
        assert_eq!(a("USE app2").use_db.as_deref(), Some("app2"));
        assert!(a("SET GLOBAL max_connections = 10").facts.set_ops.is_empty());
    }

    #[test]
    fn templates_replace_values_only() {
        let t = |s| template(s);
        assert_eq!(
            t("SELECT c FROM t1 WHERE id = 42 AND n = 'a\\'b' LIMIT 10").as_deref(),
            Some("SELECT c FROM t1 WHERE id = ? AND n = ? LIMIT ?")
        );
        assert_eq!(
            t("select 1.5e-3, -7, 0x1F, \"x\"\"y\"").as_deref(),
            Some("select ?, -?, ?, ?")
        );
        assert_eq!(
            t("SELECT `col 1` FROM t /* shardwire: primary */ WHERE a = 'x' -- c 5\n").as_deref(),
            Some("SELECT `col 1` FROM t /* shardwire: primary */ WHERE a = ? -- c 5\n")
        );
        assert_eq!(t("SELECT a FROM t"), None, "nothing to replace");
        assert_eq!(t("SELECT _utf8mb4'x'"), None);
        assert_eq!(t("SELECT X'0F'"), None);
        assert_eq!(t("SELECT /*! STRAIGHT_JOIN */ 1"), None);
        assert_eq!(t("SELECT 'open"), None);
        assert_eq!(t("SELECT ? FROM t"), None);
        // Two statements share a template only if they differ in values.
        assert_ne!(t("SELECT 1 FROM t FOR UPDATE"), t("SELECT 1 FROM t"));
        assert_eq!(t("SELECT 'a' FROM t"), t("SELECT 'it''s' FROM t"));
    }

    #[test]
    fn code_only_blanks_literals_and_comments() {
        assert_eq!(code_only("a 'x:=y' b -- c\nd # e\nf /* g */ h"), "a   b \nd \nf   h");
        assert_eq!(code_only("'it\\'s' x"), "  x");
    }
}
