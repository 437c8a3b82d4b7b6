//! Writing rows and values back into statement text: a part's rows as VALUES or as an IN list
//! in the place of its mark, and a Bind's parameters as typed literals.

use super::*;

/// The rows a part gave, as text.
#[derive(Debug, Clone, Default)]
pub struct PartRows {
    /// Column names, as a database names them.
    pub names: Vec<String>,
    /// Each column's SQL type (`numeric(10,2)`, `text`), for the casts.
    pub types: Vec<String>,
    /// Values in PostgreSQL's text form; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

/// Why rows could not be written into the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritten {
    /// The text would pass this many bytes.
    TooLong(usize),
    /// No columns, or their number differs from the names or the parts'.
    Unfit,
}

/// Types whose values route by key as written: an IN list of them is routed like one written
/// by hand (a `character(n)` value's padding, or a numeric's scale, would not be).
fn listable(ty: &str) -> bool {
    matches!(ty, "smallint" | "integer" | "bigint" | "text" | "uuid") || ty.starts_with("character varying")
}

impl Materialize {
    /// The statement with every part's rows in its place, at most `max_len` bytes long.
    pub fn text(&self, rows: &[PartRows], max_len: usize) -> Result<String, Unwritten> {
        let out = self.write(rows, max_len).ok_or(Unwritten::Unfit)?;
        match out.len() > max_len {
            true => Err(Unwritten::TooLong(max_len)),
            false => Ok(out),
        }
    }

    fn write(&self, rows: &[PartRows], max_len: usize) -> Option<String> {
        if rows.len() != self.parts.len() {
            return None;
        }
        // Marks in the order they stand in the text (visiting order may differ).
        let mut at: Vec<(usize, usize, usize)> = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mark = format!("(SELECT \"{MARK}{i}\")");
            at.push((self.marked.find(&mark)?, mark.len(), i));
        }
        at.sort_unstable();
        let mut out = String::with_capacity(self.marked.len());
        let mut done = 0;
        for (pos, len, i) in at {
            let (part, r) = (&self.parts[i], &rows[i]);
            out.push_str(self.marked.get(done..pos)?);
            out.push('(');
            if out.len() > max_len {
                // Stop early; `text` reports the length.
                return Some(out);
            }
            if part.list && r.names.len() == 1 && !r.rows.is_empty() && r.types.first().is_some_and(|t| listable(t)) {
                let ty = &r.types[0];
                let values: Vec<String> = r
                    .rows
                    .iter()
                    .map(|row| literal(row.first().and_then(|v| v.as_deref()), ty))
                    .collect();
                out.push_str(&values.join(", "));
            } else {
                out.push_str(&values_query(r)?);
            }
            out.push(')');
            done = pos + len;
        }
        let rest = self.marked.get(done..)?;
        out.push_str(rest);
        Some(out)
    }
}

/// A Bind's parameter as a literal: its value in text form, and the SQL type the client
/// declared for it (`None`: left to the server to infer, as for an untyped literal).
pub struct ParamText {
    /// The value; `None` is NULL.
    pub value: Option<String>,
    /// The declared type.
    pub ty: Option<String>,
}

/// `sql` with every `$n` replaced by parameter n as a literal, so that its parts can run on
/// their own and the rest without a Bind. `None` when it does not parse or names a parameter
/// the Bind does not carry.
pub fn inline_params(sql: &str, params: &[ParamText]) -> Option<String> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let mut missing = false;
    let _ = sqlparser::ast::visit_expressions_mut(&mut stmts, |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
        {
            let param = p
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| params.get(n.checked_sub(1)?));
            let Some(param) = param else {
                missing = true;
                return ControlFlow::Break(());
            };
            let text = match &param.ty {
                Some(ty) => literal(param.value.as_deref(), ty),
                None => match &param.value {
                    None => "NULL".to_owned(),
                    Some(s) => literal(Some(s), "").trim_end_matches("::").to_owned(),
                },
            };
            match Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .and_then(|mut p| p.parse_expr())
            {
                Ok(lit) => *e = Expr::Nested(Box::new(lit)),
                Err(_) => {
                    missing = true;
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    });
    if missing {
        return None;
    }
    Some(stmts.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; "))
}

/// `SELECT c1 AS "name", ... FROM (VALUES ...) AS shardwire_rows(c1, ...)`: the rows with the
/// names and types the part gave them (positional names inside, so equal names do not clash).
fn values_query(r: &PartRows) -> Option<String> {
    let n = r.names.len();
    if n == 0 || r.types.len() != n || r.rows.iter().any(|row| row.len() != n) {
        return None;
    }
    let select: Vec<String> = r
        .names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("c{} AS \"{}\"", i + 1, name.replace('"', "\"\"")))
        .collect();
    let cols: Vec<String> = (1..=n).map(|i| format!("c{i}")).collect();
    let typed_nulls = || r.types.iter().map(|t| literal(None, t)).collect::<Vec<_>>().join(", ");
    let (values, filter) = if r.rows.is_empty() {
        (format!("({})", typed_nulls()), " WHERE false")
    } else {
        let rows: Vec<String> = r
            .rows
            .iter()
            .map(|row| {
                let cells: Vec<String> = row
                    .iter()
                    .zip(&r.types)
                    .map(|(v, t)| literal(v.as_deref(), t))
                    .collect();
                format!("({})", cells.join(", "))
            })
            .collect();
        (rows.join(", "), "")
    };
    Some(format!(
        "SELECT {} FROM (VALUES {values}) AS shardwire_rows({}){filter}",
        select.join(", "),
        cols.join(", ")
    ))
}

/// A value in its text form as a typed literal. `E'...'` when it holds a backslash, so the text
/// reads the same whatever `standard_conforming_strings` says.
fn literal(v: Option<&str>, ty: &str) -> String {
    match v {
        None => format!("NULL::{ty}"),
        Some(s) if s.contains('\\') => format!("E'{}'::{ty}", s.replace('\\', "\\\\").replace('\'', "''")),
        Some(s) => format!("'{}'::{ty}", s.replace('\'', "''")),
    }
}
