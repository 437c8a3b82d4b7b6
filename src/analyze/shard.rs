//! Shard analysis: a statement's shape against a shard map. Which table group it touches, the
//! condition on the shard key (literals and `$n` parameters, combined with AND/OR), the key of
//! each inserted row, and for a SELECT that may run on several shards, how to merge: the
//! statement each shard runs (LIMIT pushed down, AVG split into SUM and COUNT, hidden columns for
//! ORDER BY) and how rows combine. Whatever cannot be answered correctly across shards is a
//! refusal naming the tables and the rule. Protocol-agnostic: values stay as text or parameter
//! numbers until planning.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, Distinct, Expr, FromTable, Function, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    Ident, LimitClause, ObjectName, ObjectNamePart, OrderByKind, Query, Select, SelectItem, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, UnaryOperator, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::shardmap::{ShardMap, TableRule};

/// A value in a statement: a literal (its text) or a parameter (0-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// Literal text (numbers as written, strings unquoted).
    Lit(String),
    /// `$n`, as index n-1.
    Param(usize),
    /// NULL.
    Null,
}

/// A condition on the shard key: which keys the rows can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCond {
    /// Any key.
    All,
    /// One of these keys.
    Values(Vec<Operand>),
    /// Both.
    And(Vec<KeyCond>),
    /// Either.
    Or(Vec<KeyCond>),
}

/// How one column of a shard's result combines across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColKind {
    /// A plain value: grouped by (when aggregating) or passed through.
    Plain,
    /// COUNT: summed.
    Count,
    /// SUM: summed.
    Sum,
    /// MIN.
    Min,
    /// MAX.
    Max,
    /// AVG, sent as SUM: divided by the COUNT in column `count_col`.
    Avg {
        /// Hidden column holding the count.
        count_col: usize,
    },
}

/// One ORDER BY key over the merged result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Column index in the shard result.
    pub col: usize,
    /// DESC.
    pub desc: bool,
    /// NULLS FIRST (PostgreSQL's default: first for DESC, last for ASC).
    pub nulls_first: bool,
}

/// How a SELECT run on several shards is merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The statement each shard runs.
    pub sql: String,
    /// For each parameter of `sql` ($1, $2, ...), the client's parameter it carries.
    pub params: Vec<usize>,
    /// Columns the client sees; the rest are hidden helpers. With a wildcard, the count before
    /// it expands (see [`Merge::resolve`]).
    pub visible: usize,
    /// How each column of the shard result combines.
    pub cols: Vec<ColKind>,
    /// Rows are combined by the Plain columns (GROUP BY, aggregates without GROUP BY, DISTINCT).
    pub grouped: bool,
    /// HAVING, evaluated on the merged groups (the shards run without it).
    pub having: Option<Having>,
    /// ORDER BY of the merged rows.
    pub order: Vec<SortKey>,
    /// LIMIT applied after merging.
    pub limit: Option<Operand>,
    /// OFFSET applied after merging.
    pub offset: Option<Operand>,
}

impl Merge {
    /// The merge for a result of `total` columns: a wildcard expanded to more columns than the
    /// select list has items, which shifts the hidden columns (always the last ones, and plain).
    pub fn resolve(&self, total: usize) -> Result<Merge, String> {
        if total == self.cols.len() {
            return Ok(self.clone());
        }
        if total < self.cols.len() {
            return Err(format!(
                "expected {} columns from each shard, got {total}",
                self.cols.len()
            ));
        }
        let extra = total - self.cols.len();
        let mut m = self.clone();
        m.visible += extra;
        m.cols = vec![ColKind::Plain; total];
        for k in &mut m.order {
            if k.col >= self.visible {
                k.col += extra;
            }
        }
        if m.order.iter().any(|k| k.col >= total) {
            return Err("ORDER BY position is not in the select list".into());
        }
        Ok(m)
    }
}

fn copy_format(
    options: &[sqlparser::ast::CopyOption],
    legacy: &[sqlparser::ast::CopyLegacyOption],
) -> Result<crate::copy_format::CopyFormat, String> {
    use crate::copy_format::CopyFormat;
    use sqlparser::ast::{CopyLegacyCsvOption as L, CopyLegacyOption as O, CopyOption as C};
    let csv = options
        .iter()
        .any(|o| matches!(o, C::Format(f) if f.value.eq_ignore_ascii_case("csv")))
        || legacy.iter().any(|o| matches!(o, O::Csv(_)));
    if options
        .iter()
        .any(|o| matches!(o, C::Format(f) if f.value.eq_ignore_ascii_case("binary")))
        || legacy.iter().any(|o| matches!(o, O::Binary))
    {
        return Err("the binary format cannot be split by key; use text or CSV".into());
    }
    let byte = |c: char| -> Result<u8, String> {
        u8::try_from(c)
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| format!("the character {c:?} is not supported"))
    };
    let mut f = CopyFormat::new(csv);
    for o in options {
        match o {
            C::Delimiter(c) => f.delimiter = byte(*c)?,
            C::Quote(c) => {
                f.quote = byte(*c)?;
                f.escape = f.quote;
            }
            C::Escape(c) => f.escape = byte(*c)?,
            C::Header(h) => f.header = *h,
            C::Null(n) => f.null = n.as_bytes().to_vec(),
            _ => {}
        }
    }
    for o in legacy {
        match o {
            O::Delimiter(c) => f.delimiter = byte(*c)?,
            O::Null(n) => f.null = n.as_bytes().to_vec(),
            O::Header => f.header = true,
            O::Csv(opts) => {
                for c in opts {
                    match c {
                        L::Header => f.header = true,
                        L::Quote(q) => f.quote = byte(*q)?,
                        L::Escape(e) => f.escape = byte(*e)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if f.csv && f.escape != f.quote {
        return Err("CSV with an ESCAPE other than the QUOTE character is not supported".into());
    }
    Ok(f)
}

/// How generated IDs enter a statement.
#[derive(Debug, Clone, Copy)]
pub enum IdValues<'a> {
    /// As literals (simple protocol).
    Literals(&'a [u64]),
    /// As parameters from `$first+1` on (extended protocol; the values are bound).
    Params {
        /// Index of the first new parameter.
        first: usize,
    },
}

/// An INSERT with the ID column added and filled: the statement and each row's key.
pub fn fill_ids(shape: &Shape, ids: IdValues) -> Option<(Statement, Vec<Operand>)> {
    let Shape::InsertFill {
        id_column,
        key_pos,
        stmt,
        ..
    } = shape
    else {
        return None;
    };
    let mut s = stmt.as_ref().clone();
    let Statement::Insert(ins) = &mut s else { return None };
    ins.columns.push(ObjectName(vec![ObjectNamePart::Identifier(Ident::new(
        id_column.clone(),
    ))]));
    let SetExpr::Values(values) = ins.source.as_mut()?.body.as_mut() else {
        return None;
    };
    let mut keys = Vec::with_capacity(values.rows.len());
    for (i, row) in values.rows.iter_mut().enumerate() {
        let (value, operand_of_id) = match ids {
            IdValues::Literals(v) => {
                let id = *v.get(i)?;
                (Value::Number(id.to_string(), false), Operand::Lit(id.to_string()))
            }
            IdValues::Params { first } => (
                Value::Placeholder(format!("${}", first + i + 1)),
                Operand::Param(first + i),
            ),
        };
        keys.push(match key_pos {
            None => operand_of_id,
            Some(p) => operand(row.content.get(*p)?)?,
        });
        row.content.push(Expr::Value(value.into()));
    }
    Some((s, keys))
}

/// Renumbers the `$n` parameters of a statement from $1 in order of first use; returns, for each
/// new number, the index of the original parameter.
pub fn renumber_params<T: sqlparser::ast::VisitMut>(stmt: &mut T) -> Vec<usize> {
    struct Renumber(HashMap<usize, usize>, Vec<usize>);
    impl sqlparser::ast::VisitorMut for Renumber {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &mut v.value
                && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
                && n > 0
            {
                let next = self.1.len();
                let new = *self.0.entry(n - 1).or_insert(next);
                if new == next {
                    self.1.push(n - 1);
                }
                *p = format!("${}", new + 1);
            }
            ControlFlow::Continue(())
        }
    }
    let mut r = Renumber(HashMap::new(), Vec::new());
    let _ = stmt.visit(&mut r);
    r.1
}

/// A HAVING condition over merged groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Having {
    /// Both.
    And(Box<Having>, Box<Having>),
    /// Either.
    Or(Box<Having>, Box<Having>),
    /// Negation.
    Not(Box<Having>),
    /// A comparison.
    Cmp(Term, CmpOp, Term),
    /// IS NULL (or IS NOT NULL when `false`).
    IsNull(Term, bool),
}

/// An operand of a HAVING comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// A column of the shard result (an aggregate or a GROUP BY column).
    Col(usize),
    /// A literal or parameter.
    Value(Operand),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// =
    Eq,
    /// <>
    Ne,
    /// <
    Lt,
    /// <=
    Le,
    /// >
    Gt,
    /// >=
    Ge,
}

/// Most AND/OR terms of a HAVING merged across shards: its tree is evaluated by recursion.
const MAX_HAVING_TERMS: usize = 256;

/// AND, OR and NOT nodes of a condition, counted without recursion.
fn logical_terms(e: &Expr) -> usize {
    let mut count = 0;
    let mut todo = vec![e];
    while let Some(e) = todo.pop() {
        match strip(e) {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And | BinaryOperator::Or,
                right,
            } => {
                count += 1;
                todo.push(left);
                todo.push(right);
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => {
                count += 1;
                todo.push(expr);
            }
            _ => {}
        }
    }
    count
}

/// HAVING → [`Having`] over result columns; aggregates not selected become hidden columns.
fn having_expr(e: &Expr, sel: &Select, hidden: &mut Vec<(SelectItem, ColKind)>, n: usize) -> Result<Having, String> {
    Ok(match strip(e) {
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And => {
                    return Ok(Having::And(
                        Box::new(having_expr(left, sel, hidden, n)?),
                        Box::new(having_expr(right, sel, hidden, n)?),
                    ));
                }
                BinaryOperator::Or => {
                    return Ok(Having::Or(
                        Box::new(having_expr(left, sel, hidden, n)?),
                        Box::new(having_expr(right, sel, hidden, n)?),
                    ));
                }
                BinaryOperator::Eq => CmpOp::Eq,
                BinaryOperator::NotEq => CmpOp::Ne,
                BinaryOperator::Lt => CmpOp::Lt,
                BinaryOperator::LtEq => CmpOp::Le,
                BinaryOperator::Gt => CmpOp::Gt,
                BinaryOperator::GtEq => CmpOp::Ge,
                other => return Err(format!("operator {other} is not supported")),
            };
            Having::Cmp(
                having_term(left, sel, hidden, n)?,
                cmp,
                having_term(right, sel, hidden, n)?,
            )
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Having::Not(Box::new(having_expr(expr, sel, hidden, n)?)),
        Expr::IsNull(t) => Having::IsNull(having_term(t, sel, hidden, n)?, true),
        Expr::IsNotNull(t) => Having::IsNull(having_term(t, sel, hidden, n)?, false),
        other => {
            return Err(format!(
                "the condition {other} is not supported; compare aggregates or grouped columns with values"
            ));
        }
    })
}

fn having_term(e: &Expr, sel: &Select, hidden: &mut Vec<(SelectItem, ColKind)>, n: usize) -> Result<Term, String> {
    if let Some(o) = operand(e) {
        return Ok(Term::Value(o));
    }
    let target = strip(e);
    if let Some(i) = sel.projection.iter().position(|item| match item {
        SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => strip(x) == target,
        _ => false,
    }) {
        return Ok(Term::Col(i));
    }
    if let Some(i) = hidden
        .iter()
        .position(|(item, _)| matches!(item, SelectItem::UnnamedExpr(x) if strip(x) == target))
    {
        return Ok(Term::Col(n + i));
    }
    let Expr::Function(f) = target else {
        return Err(format!("{e} must be a selected column or an aggregate"));
    };
    if matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment.is_some())
        || f.filter.is_some()
        || f.over.is_some()
    {
        return Err(format!("{e} cannot be merged"));
    }
    match mergeable(f)? {
        Mergeable::Kind(kind) => hidden.push((SelectItem::UnnamedExpr(target.clone()), kind)),
        Mergeable::Avg { sum, count } => {
            hidden.push((SelectItem::UnnamedExpr(*count), ColKind::Count));
            let count_col = n + hidden.len() - 1;
            hidden.push((SelectItem::UnnamedExpr(*sum), ColKind::Avg { count_col }));
        }
    }
    Ok(Term::Col(n + hidden.len() - 1))
}

/// How an aggregate call merges across shards.
enum Mergeable {
    /// Shards run it as is; the partial results combine by this kind.
    Kind(ColKind),
    /// AVG: shards run `sum` and `count` of the same argument; the merge divides.
    Avg {
        /// The call renamed to sum.
        sum: Box<Expr>,
        /// The call renamed to count.
        count: Box<Expr>,
    },
}

fn mergeable(f: &Function) -> Result<Mergeable, String> {
    let renamed = |name: &str| {
        let mut g = f.clone();
        g.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
        Expr::Function(g)
    };
    Ok(Mergeable::Kind(match func_name(f).as_str() {
        "count" => ColKind::Count,
        "sum" => ColKind::Sum,
        "min" => ColKind::Min,
        "max" => ColKind::Max,
        "avg" => {
            return Ok(Mergeable::Avg {
                sum: Box::new(renamed("sum")),
                count: Box::new(renamed("count")),
            });
        }
        other => return Err(format!("aggregate {other}() cannot be merged across shards")),
    }))
}

/// What a statement is, against a shard map.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Did not parse: the default shard reports the error.
    Unparsed,
    /// Touches no table at all (transaction control, SET, `SELECT 1`): runs wherever the session is.
    Neutral,
    /// Touches only tables the map does not name: runs on the default shard.
    Unsharded,
    /// Several statements in one query string: allowed when they all run on one shard.
    Several(Vec<Shape>),
    /// Reads reference tables only: any one shard.
    ReferenceRead,
    /// Writes a reference table: every shard.
    ReferenceWrite,
    /// DDL: every shard.
    Broadcast,
    /// Reads or writes tables of one group (and reference tables).
    Group {
        /// The group.
        group: usize,
        /// Keys the rows can have.
        cond: KeyCond,
        /// UPDATE or DELETE.
        write: bool,
        /// For a SELECT: how to merge when several shards answer, or why it cannot be.
        merge: Result<Box<Merge>, String>,
    },
    /// INSERT ... VALUES into a sharded table.
    Insert {
        /// The group.
        group: usize,
        /// The key of each row.
        keys: Vec<Operand>,
        /// The statement, to split by shard.
        stmt: Arc<Statement>,
    },
    /// INSERT ... VALUES into a sharded table that leaves out its ID column: shardwire generates
    /// one ID per row, adds the column, and routes on the result.
    InsertFill {
        /// The group.
        group: usize,
        /// The ID column.
        id_column: String,
        /// Position of the shard key among the INSERT's columns; `None`: the key is the ID column.
        key_pos: Option<usize>,
        /// Rows.
        rows: usize,
        /// Highest `$n` the statement uses.
        params: usize,
        /// The statement as written.
        stmt: Arc<Statement>,
    },
    /// `COPY table FROM STDIN` into a sharded table: rows split by key.
    CopyIn {
        /// The group.
        group: usize,
        /// The table.
        table: String,
        /// Its key column.
        key: String,
        /// The COPY's column list (empty: the table's columns in order).
        columns: Vec<String>,
        /// Data format.
        format: crate::copy_format::CopyFormat,
    },
    /// Cannot be run correctly across shards.
    Refuse(String),
}

/// Parses `sql` and finds its shape under `map`. Texts deeper than any configurable limit are
/// refused unparsed (sessions check their own limits first, through the facts).
pub fn shape(sql: &str, map: &ShardMap) -> Shape {
    let safe = super::Limits {
        max_bytes: usize::MAX,
        max_depth: super::limits::MAX_DEPTH,
    };
    if let Err(e) = super::limits::check(sql, &safe) {
        return Shape::Refuse(e.to_string());
    }
    let Ok(stmts) = Parser::parse_sql(&PostgreSqlDialect {}, sql) else {
        return Shape::Unparsed;
    };
    let mut shapes: Vec<Shape> = stmts.iter().map(|s| statement(s, map)).collect();
    match shapes.len() {
        0 => Shape::Neutral,
        1 => shapes.pop().unwrap_or(Shape::Neutral),
        _ if shapes.iter().all(|s| *s == Shape::Neutral) => Shape::Neutral,
        _ => Shape::Several(shapes),
    }
}

fn last_name(n: &ObjectName) -> String {
    match n.0.last() {
        Some(ObjectNamePart::Identifier(i)) => ident(i),
        _ => String::new(),
    }
}

fn ident(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    }
}

/// Every table name the statement mentions, by rule.
fn tables(stmt: &impl Visit, map: &ShardMap) -> (Vec<(String, TableRule)>, bool) {
    struct V<'a>(&'a ShardMap, Vec<(String, TableRule)>, bool);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let n = last_name(r);
            match self.0.table(&n) {
                Some(rule) => self.1.push((n, rule.clone())),
                None => self.2 = true,
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V(map, Vec::new(), false);
    let _ = stmt.visit(&mut v);
    (v.1, v.2)
}

fn statement(stmt: &Statement, map: &ShardMap) -> Shape {
    if let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = stmt
        && let sqlparser::ast::CopySource::Table { table_name, columns } = source
    {
        let table = last_name(table_name);
        return match map.table(&table) {
            None => Shape::Unsharded,
            Some(TableRule::Reference) => Shape::Refuse(format!(
                "COPY of reference table {table} through shardwire is not supported; load it with INSERT (every shard gets the rows)"
            )),
            Some(TableRule::Sharded { group, key }) => {
                if *to || !matches!(target, sqlparser::ast::CopyTarget::Stdin) {
                    return Shape::Refuse(format!(
                        "COPY {table} TO STDOUT or from a file is not supported on a sharded table; SELECT the rows, or COPY FROM STDIN to load"
                    ));
                }
                match copy_format(options, legacy_options) {
                    Ok(format) => Shape::CopyIn {
                        group: *group,
                        table,
                        key: key.clone(),
                        columns: columns.iter().map(ident).collect(),
                        format,
                    },
                    Err(m) => Shape::Refuse(format!("COPY {table} FROM STDIN: {m}")),
                }
            }
        };
    }
    let (named, unsharded) = tables(stmt, map);
    if named.is_empty() {
        return if is_ddl(stmt) {
            Shape::Broadcast
        } else if unsharded {
            Shape::Unsharded
        } else {
            Shape::Neutral
        };
    }
    if is_ddl(stmt) {
        return Shape::Broadcast;
    }
    let sharded: Vec<&(String, TableRule)> = named
        .iter()
        .filter(|(_, r)| matches!(r, TableRule::Sharded { .. }))
        .collect();
    let write_target = match stmt {
        Statement::Insert(i) => match &i.table {
            TableObject::TableName(n) => Some(last_name(n)),
            _ => None,
        },
        Statement::Update(u) => match &u.table.relation {
            TableFactor::Table { name, .. } => Some(last_name(name)),
            _ => None,
        },
        Statement::Delete(d) => d.tables.first().map(last_name).or_else(|| match &d.from {
            FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f.first().and_then(|t| match &t.relation {
                TableFactor::Table { name, .. } => Some(last_name(name)),
                _ => None,
            }),
        }),
        _ => None,
    };
    let target_rule = write_target.as_ref().and_then(|t| map.table(t));
    if unsharded {
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        if !sharded.is_empty() || matches!(target_rule, Some(TableRule::Reference)) {
            return Shape::Refuse(format!(
                "the statement mixes tables the shard map does not name (they live on the default shard) with sharded or reference tables ({}); \
                 add those tables to the shard map as reference tables or query them separately",
                names.join(", ")
            ));
        }
        // Reference tables read alongside unsharded ones: every shard has them, so the default one will do.
        return Shape::Unsharded;
    }
    if let Some(TableRule::Reference) = target_rule {
        if !sharded.is_empty() {
            return Shape::Refuse(format!(
                "writing reference table {} from sharded tables: each shard would write different rows",
                write_target.unwrap_or_default()
            ));
        }
        return Shape::ReferenceWrite;
    }
    if sharded.is_empty() {
        return match stmt {
            Statement::Query(_) => Shape::ReferenceRead,
            _ => Shape::Refuse("this statement on reference tables is not supported across shards".into()),
        };
    }
    let groups: BTreeSet<usize> = sharded
        .iter()
        .filter_map(|(_, r)| match r {
            TableRule::Sharded { group, .. } => Some(*group),
            _ => None,
        })
        .collect();
    if groups.len() > 1 {
        let names: Vec<String> = sharded.iter().map(|(n, _)| n.clone()).collect();
        return Shape::Refuse(format!(
            "tables {} are in different table groups, so their rows are not co-located: a join or subquery across them would need rows from other shards",
            names.join(" and ")
        ));
    }
    let group = *groups.iter().next().unwrap_or(&0);
    match stmt {
        Statement::Query(q) => select_shape(q, map, group),
        Statement::Insert(ins) => insert_shape(stmt, ins, map, group),
        Statement::Update(u) => {
            let Some(TableRule::Sharded { key, .. }) = target_rule else {
                return Shape::Refuse("UPDATE of a sharded table through a join is not supported".into());
            };
            for a in &u.assignments {
                let cols: Vec<&ObjectName> = match &a.target {
                    sqlparser::ast::AssignmentTarget::ColumnName(c) => vec![c],
                    sqlparser::ast::AssignmentTarget::Tuple(t) => t.iter().collect(),
                };
                if cols.iter().any(|c| last_name(c) == *key) {
                    return Shape::Refuse(format!(
                        "UPDATE changes shard key {}.{key}: the row would have to move to another shard; delete and insert it instead",
                        write_target.unwrap_or_default()
                    ));
                }
            }
            let mut from = vec![u.table.clone()];
            if let Some(
                sqlparser::ast::UpdateTableFromKind::BeforeSet(f) | sqlparser::ast::UpdateTableFromKind::AfterSet(f),
            ) = &u.from
            {
                from.extend(f.iter().cloned());
            }
            write_shape(&from, u.selection.as_ref(), map, group)
        }
        Statement::Delete(d) => {
            let mut from = match &d.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f.clone(),
            };
            from.extend(d.using.iter().flatten().cloned());
            write_shape(&from, d.selection.as_ref(), map, group)
        }
        _ => Shape::Refuse("this kind of statement is not supported on sharded tables".into()),
    }
}

fn is_ddl(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateTable(_)
            | Statement::AlterTable(_)
            | Statement::Drop { .. }
            | Statement::CreateIndex(_)
            | Statement::Truncate(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateView(_)
            | Statement::CreateSequence { .. }
            | Statement::CreateExtension(_)
            | Statement::AlterIndex { .. }
            | Statement::Comment { .. }
    )
}

/// Tables in a FROM list with their aliases.
struct Scope {
    /// alias or name → (table, rule)
    by_alias: HashMap<String, (String, TableRule)>,
    /// Sharded tables' key columns: (alias, key).
    keys: Vec<(String, String)>,
}

fn scope(from: &[TableWithJoins], map: &ShardMap) -> Result<Scope, String> {
    let mut s = Scope {
        by_alias: HashMap::new(),
        keys: Vec::new(),
    };
    let mut add = |f: &TableFactor| -> Result<(), String> {
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let n = last_name(name);
                let a = alias.as_ref().map_or(n.clone(), |a| ident(&a.name));
                let rule = map.table(&n).cloned();
                if let Some(r) = rule {
                    if let TableRule::Sharded { key, .. } = &r {
                        s.keys.push((a.clone(), key.clone()));
                    }
                    s.by_alias.insert(a, (n, r));
                }
                Ok(())
            }
            TableFactor::Derived { subquery, .. } => {
                if tables(subquery.as_ref(), map)
                    .0
                    .iter()
                    .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
                {
                    Err("subqueries in FROM over sharded tables are not supported across shards".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    };
    for t in from {
        add(&t.relation)?;
        for j in &t.joins {
            add(&j.relation)?;
        }
    }
    Ok(s)
}

impl Scope {
    /// The alias of the sharded table whose key column `e` is, if it is one.
    fn key_of(&self, e: &Expr) -> Option<&str> {
        match strip(e) {
            Expr::Identifier(i) => {
                let c = ident(i);
                let matching: Vec<&(String, String)> = self.keys.iter().filter(|(_, k)| *k == c).collect();
                match matching[..] {
                    [(a, _)] => Some(a),
                    // Several sharded tables have a column by this name: PostgreSQL itself would call it ambiguous.
                    _ => None,
                }
            }
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let a = ident(&parts[parts.len() - 2]);
                let c = ident(&parts[parts.len() - 1]);
                self.keys
                    .iter()
                    .find(|(al, k)| *al == a && *k == c)
                    .map(|(al, _)| al.as_str())
            }
            _ => None,
        }
    }
}

fn strip(mut e: &Expr) -> &Expr {
    // A loop: cast chains (`x::int::text...`) are as deep as they are long.
    loop {
        match e {
            Expr::Nested(inner) => e = inner,
            Expr::Cast { expr, .. } => e = expr,
            other => return other,
        }
    }
}

/// The operands of a chain of `op` (`a OR b OR c`, which the parser nests to the left), in
/// order, without recursion: such chains are as deep as they are long.
fn chain<'a>(mut e: &'a Expr, op: &BinaryOperator) -> Vec<&'a Expr> {
    let mut rights = Vec::new();
    loop {
        match strip(e) {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                rights.push(right.as_ref());
                e = left;
            }
            other => {
                rights.push(other);
                rights.reverse();
                return rights;
            }
        }
    }
}

/// A literal or parameter operand.
fn operand(e: &Expr) -> Option<Operand> {
    match strip(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(Operand::Lit(n.clone())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(Operand::Lit(s.clone())),
            Value::Placeholder(p) => p
                .strip_prefix('$')?
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| Operand::Param(n - 1)),
            Value::Null => Some(Operand::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match strip(expr) {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(Operand::Lit(format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The key condition an expression puts on rows, and key equalities between tables (joins).
fn key_cond(e: &Expr, scope: &Scope, joins: &mut Vec<(String, String)>) -> KeyCond {
    match strip(e) {
        Expr::BinaryOp {
            op: BinaryOperator::And,
            ..
        } => KeyCond::And(
            chain(e, &BinaryOperator::And)
                .into_iter()
                .map(|t| key_cond(t, scope, joins))
                .collect(),
        ),
        Expr::BinaryOp {
            op: BinaryOperator::Or, ..
        } => {
            // Join equalities under OR do not hold for every row.
            let mut ignore = Vec::new();
            KeyCond::Or(
                chain(e, &BinaryOperator::Or)
                    .into_iter()
                    .map(|t| key_cond(t, scope, &mut ignore))
                    .collect(),
            )
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (scope.key_of(left), scope.key_of(right)) {
            (Some(a), Some(b)) => {
                joins.push((a.to_owned(), b.to_owned()));
                KeyCond::All
            }
            (Some(_), None) => operand(right).map_or(KeyCond::All, |o| KeyCond::Values(vec![o])),
            (None, Some(_)) => operand(left).map_or(KeyCond::All, |o| KeyCond::Values(vec![o])),
            _ => KeyCond::All,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } if scope.key_of(expr).is_some() => {
            let ops: Option<Vec<Operand>> = list.iter().map(operand).collect();
            ops.map_or(KeyCond::All, KeyCond::Values)
        }
        _ => KeyCond::All,
    }
}

/// Checks that every sharded table in scope is joined to the others on the key, and returns the
/// key condition of WHERE and the ON clauses.
fn joined_cond(from: &[TableWithJoins], selection: Option<&Expr>, scope: &Scope) -> Result<KeyCond, String> {
    let mut joins = Vec::new();
    let mut conds = Vec::new();
    for t in from {
        for j in &t.joins {
            use sqlparser::ast::{JoinConstraint, JoinOperator as J};
            let c = match &j.join_operator {
                J::Join(c)
                | J::Inner(c)
                | J::Left(c)
                | J::LeftOuter(c)
                | J::Right(c)
                | J::RightOuter(c)
                | J::FullOuter(c)
                | J::Semi(c)
                | J::LeftSemi(c)
                | J::Anti(c)
                | J::LeftAnti(c) => Some(c),
                _ => None,
            };
            match c {
                Some(JoinConstraint::On(e)) => {
                    let inner = matches!(j.join_operator, J::Join(_) | J::Inner(_));
                    let c = key_cond(e, scope, &mut joins);
                    if inner {
                        conds.push(c);
                    }
                }
                Some(JoinConstraint::Using(cols)) => {
                    let cols: Vec<String> = cols.iter().map(last_name).collect();
                    // USING (key) joins every table having that key column.
                    if let TableFactor::Table { name, alias, .. } = &j.relation {
                        let a = alias.as_ref().map_or(last_name(name), |a| ident(&a.name));
                        if let Some((_, k)) = scope.keys.iter().find(|(al, _)| *al == a)
                            && cols.contains(k)
                        {
                            for (other, ok) in &scope.keys {
                                if ok == k && *other != a {
                                    joins.push((a.clone(), other.clone()));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(w) = selection {
        conds.push(key_cond(w, scope, &mut joins));
    }
    // Every sharded table must be connected to the first by key equalities.
    if let Some((first, _)) = scope.keys.first() {
        let mut reached: BTreeSet<&str> = BTreeSet::from([first.as_str()]);
        loop {
            let before = reached.len();
            for (a, b) in &joins {
                if reached.contains(a.as_str()) || reached.contains(b.as_str()) {
                    reached.insert(a);
                    reached.insert(b);
                }
            }
            if reached.len() == before {
                break;
            }
        }
        if let Some((missing, _)) = scope.keys.iter().find(|(a, _)| !reached.contains(a.as_str())) {
            let t = |a: &str| scope.by_alias.get(a).map_or(a.to_owned(), |(n, _)| n.clone());
            return Err(format!(
                "the join of {} and {} is not on their shard keys, so matching rows may be on different shards; join on the shard key columns",
                t(first),
                t(missing)
            ));
        }
    }
    Ok(match conds.len() {
        0 => KeyCond::All,
        1 => conds.pop().unwrap_or(KeyCond::All),
        _ => KeyCond::And(conds),
    })
}

fn no_sharded_subqueries(e: &impl Visit, map: &ShardMap, outer_tables: usize) -> Result<(), String> {
    // The visitor sees the outer FROM tables too: any more sharded ones come from subqueries.
    struct V<'a>(&'a ShardMap, usize);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            let _ = q;
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            if matches!(self.0.table(&last_name(r)), Some(TableRule::Sharded { .. })) {
                self.1 += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V(map, 0);
    let _ = e.visit(&mut v);
    if v.1 > outer_tables {
        Err("subqueries over sharded tables are not supported; join co-located tables on the shard key instead".into())
    } else {
        Ok(())
    }
}

fn write_shape(from: &[TableWithJoins], selection: Option<&Expr>, map: &ShardMap, group: usize) -> Shape {
    let result = scope(from, map).and_then(|s| {
        if let Some(w) = selection {
            no_sharded_subqueries(w, map, 0)?;
        }
        joined_cond(from, selection, &s)
    });
    match result {
        Ok(cond) => Shape::Group {
            group,
            cond,
            write: true,
            merge: Err("not a query".into()),
        },
        Err(m) => Shape::Refuse(m),
    }
}

fn insert_shape(stmt: &Statement, ins: &sqlparser::ast::Insert, map: &ShardMap, group: usize) -> Shape {
    let TableObject::TableName(n) = &ins.table else {
        return Shape::Refuse("INSERT into a table function".into());
    };
    let table = last_name(n);
    let Some(TableRule::Sharded { key, .. }) = map.table(&table) else {
        return Shape::Refuse(format!(
            "INSERT into {table} reads sharded tables: rows would come from several shards"
        ));
    };
    let Some(source) = &ins.source else {
        return Shape::Refuse(format!("INSERT into sharded table {table} without VALUES"));
    };
    let SetExpr::Values(values) = source.body.as_ref() else {
        return Shape::Refuse(format!(
            "INSERT ... SELECT into sharded table {table}: rows cannot be routed by key before they exist; insert VALUES"
        ));
    };
    if let Some(idc) = map.id_columns.get(&table) {
        let supplied = ins.columns.iter().any(|c| last_name(c) == idc.column);
        if supplied && idc.refuse_supplied {
            return Shape::Refuse(format!(
                "INSERT into {table} gives {}, which shardwire generates (supplied_ids = \"refuse\"); leave the column out",
                idc.column
            ));
        }
        if !supplied {
            if ins.columns.is_empty() {
                return Shape::Refuse(format!(
                    "INSERT into {table} must name its columns (shardwire adds {})",
                    idc.column
                ));
            }
            let key_pos = if *key == idc.column {
                None
            } else {
                match ins.columns.iter().position(|c| last_name(c) == *key) {
                    Some(p) => Some(p),
                    None => {
                        return Shape::Refuse(format!(
                            "INSERT into sharded table {table} must give shard key {key} in every row"
                        ));
                    }
                }
            };
            if let Some(p) = key_pos
                && values
                    .rows
                    .iter()
                    .any(|r| matches!(r.content.get(p).and_then(operand), None | Some(Operand::Null)))
            {
                return Shape::Refuse(format!(
                    "every row inserted into {table} needs its shard key {key} as a literal or parameter"
                ));
            }
            let mut max_param = 0;
            let mut probe = stmt.clone();
            for p in renumber_params(&mut probe) {
                max_param = max_param.max(p + 1);
            }
            return Shape::InsertFill {
                group,
                id_column: idc.column.clone(),
                key_pos,
                rows: values.rows.len(),
                params: max_param,
                stmt: Arc::new(stmt.clone()),
            };
        }
    }
    let Some(pos) = ins.columns.iter().position(|c| last_name(c) == *key) else {
        return Shape::Refuse(format!(
            "INSERT into sharded table {table} must name its columns and give shard key {key} in every row"
        ));
    };
    let mut keys = Vec::new();
    for row in &values.rows {
        match row.content.get(pos).and_then(operand) {
            Some(Operand::Null) | None => {
                return Shape::Refuse(format!(
                    "every row inserted into {table} needs its shard key {key} as a literal or parameter"
                ));
            }
            Some(o) => keys.push(o),
        }
    }
    Shape::Insert {
        group,
        keys,
        stmt: Arc::new(stmt.clone()),
    }
}

fn select_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    if q.with.is_some() {
        return Shape::Refuse("WITH queries over sharded tables are not supported across shards".into());
    }
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return Shape::Refuse("UNION, INTERSECT and EXCEPT over sharded tables are not supported across shards".into());
    };
    let s = match scope(&sel.from, map) {
        Ok(s) => s,
        Err(m) => return Shape::Refuse(m),
    };
    let outer = s.keys.len();
    if let Err(m) = no_sharded_subqueries(q, map, outer) {
        return Shape::Refuse(m);
    }
    let cond = match joined_cond(&sel.from, sel.selection.as_ref(), &s) {
        Ok(c) => c,
        Err(m) => return Shape::Refuse(m),
    };
    Shape::Group {
        group,
        cond,
        write: false,
        merge: merge_plan(q, sel, &s).map(Box::new),
    }
}

fn func_name(f: &Function) -> String {
    last_name(&f.name)
}

fn is_aggregate_name(n: &str) -> bool {
    matches!(
        n,
        "count"
            | "sum"
            | "min"
            | "max"
            | "avg"
            | "array_agg"
            | "string_agg"
            | "bool_and"
            | "bool_or"
            | "every"
            | "stddev"
            | "variance"
            | "json_agg"
            | "jsonb_agg"
            | "bit_and"
            | "bit_or"
            | "percentile_cont"
            | "percentile_disc"
            | "mode"
    )
}

/// Aggregate calls and window functions anywhere in an expression.
fn calls(e: &impl Visit) -> (Vec<Function>, bool) {
    struct V(Vec<Function>, bool);
    impl Visitor for V {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                if f.over.is_some() {
                    self.1 = true;
                } else if is_aggregate_name(&func_name(f)) {
                    self.0.push(f.clone());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V(Vec::new(), false);
    let _ = e.visit(&mut v);
    (v.0, v.1)
}

fn merge_plan(q: &Query, sel: &Select, scope: &Scope) -> Result<Merge, String> {
    let tables: Vec<String> = {
        let mut t: Vec<String> = scope.by_alias.values().map(|(n, _)| n.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    let refuse = |rule: &str| Err(format!("{rule} (tables {})", tables.join(", ")));
    if q.fetch.is_some() {
        return refuse("FETCH FIRST across shards is not supported; use LIMIT");
    }
    if matches!(sel.distinct, Some(Distinct::On(_))) {
        return refuse("DISTINCT ON across shards is not supported");
    }
    let mut shard_sel = sel.clone();
    let mut cols: Vec<ColKind> = Vec::new();
    let mut hidden: Vec<(SelectItem, ColKind)> = Vec::new();
    let mut aliases: Vec<Option<String>> = Vec::new();
    let mut any_agg = false;
    let group_exprs: Vec<Expr> = match &sel.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => e.clone(),
        GroupByExpr::Expressions(..) => return refuse("GROUP BY modifiers across shards are not supported"),
        GroupByExpr::All(_) => return refuse("GROUP BY ALL across shards is not supported"),
    };
    // A GROUP BY on the shard key puts every group on one shard: the shards' rows are final.
    let group_on_key = group_exprs.iter().any(|e| scope.key_of(e).is_some());
    let mut having = None;
    let n = sel.projection.len();
    for (i, item) in sel.projection.iter().enumerate() {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(ident(alias))),
            _ => {
                if !group_exprs.is_empty() {
                    return refuse("SELECT * with GROUP BY across shards is not supported; name the columns");
                }
                // A wildcard expands to an unknown number of columns: only plain concatenation or
                // ORDER BY on columns added behind it works, which needs the count. Refuse ordering.
                aliases.push(None);
                cols.push(ColKind::Plain);
                continue;
            }
        };
        aliases.push(alias.or_else(|| match strip(expr) {
            Expr::Identifier(id) => Some(ident(id)),
            Expr::CompoundIdentifier(p) => p.last().map(ident),
            Expr::Function(f) => Some(func_name(f)),
            _ => None,
        }));
        let (aggs, window) = calls(expr);
        if window {
            return refuse(
                "window functions across shards are not supported; filter on the shard key to stay on one shard",
            );
        }
        if aggs.is_empty() || group_on_key {
            any_agg |= !aggs.is_empty();
            cols.push(ColKind::Plain);
            continue;
        }
        any_agg = true;
        let Expr::Function(f) = strip(expr) else {
            return refuse(
                "an expression over aggregates across shards is not supported; select the aggregates and compute in the application",
            );
        };
        let distinct = matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment == Some(sqlparser::ast::DuplicateTreatment::Distinct));
        if distinct || f.filter.is_some() {
            return refuse(
                "aggregates with DISTINCT or FILTER across shards are not supported unless grouped by the shard key",
            );
        }
        let kind = match mergeable(f) {
            Ok(Mergeable::Kind(kind)) => kind,
            Ok(Mergeable::Avg { sum, count }) => {
                // The shards return the sum under the name the average has on one database: its
                // alias, or the function's name.
                let alias = match &sel.projection[i] {
                    SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                    _ => Ident::with_quote('"', func_name(f)),
                };
                shard_sel.projection[i] = SelectItem::ExprWithAlias { expr: *sum, alias };
                hidden.push((SelectItem::UnnamedExpr(*count), ColKind::Count));
                ColKind::Avg {
                    count_col: n + hidden.len() - 1,
                }
            }
            Err(why) => return refuse(&why),
        };
        if let FunctionArguments::List(l) = &f.args
            && l.args.len() != 1
            && !matches!(l.args.first(), Some(FunctionArg::Unnamed(FunctionArgExpr::Wildcard)))
        {
            return refuse("aggregates with several arguments across shards are not supported");
        }
        cols.push(kind);
    }
    let grouped_merge = !group_on_key && (any_agg || !group_exprs.is_empty());
    if grouped_merge {
        // Every GROUP BY expression must be a selected plain column, so groups can be matched.
        for g in &group_exprs {
            let found = sel.projection.iter().enumerate().any(|(i, item)| {
                cols[i] == ColKind::Plain
                    && match item {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => strip(e) == strip(g),
                        _ => false,
                    }
                    || matches!(strip(g), Expr::Value(v) if matches!(&v.value, Value::Number(k, _) if k.parse::<usize>().ok() == Some(i + 1)))
            });
            if !found {
                return refuse(&format!("GROUP BY {g} across shards needs {g} in the select list"));
            }
        }
        if let Some(h) = &sel.having {
            if logical_terms(h) > MAX_HAVING_TERMS {
                return refuse(&format!(
                    "HAVING across shards: more than {MAX_HAVING_TERMS} conditions joined by AND/OR are not supported"
                ));
            }
            match having_expr(h, sel, &mut hidden, n) {
                Ok(e) => having = Some(e),
                Err(why) => return refuse(&format!("HAVING across shards: {why}")),
            }
            shard_sel.having = None;
        }
        if cols
            .iter()
            .enumerate()
            .any(|(i, c)| *c == ColKind::Plain && !plain_is_grouped(&sel.projection[i], &group_exprs, i))
        {
            return refuse("a selected column that is neither aggregated nor in GROUP BY");
        }
    }
    let distinct = matches!(sel.distinct, Some(Distinct::Distinct));
    // ORDER BY: each key must be an output column (by position, alias or same expression), or is
    // added as a hidden column.
    let mut order = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return refuse("ORDER BY ALL across shards is not supported");
        };
        for o in exprs {
            let desc = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
            if matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Using(_))) {
                return refuse("ORDER BY ... USING across shards is not supported");
            }
            let nulls_first = o.options.nulls_first.unwrap_or(desc);
            let star = sel
                .projection
                .iter()
                .any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }));
            let col = match strip(&o.expr) {
                Expr::Value(v) if matches!(&v.value, Value::Number(..)) => match &v.value {
                    // With a wildcard the ordinal counts expanded columns; checked when rows arrive.
                    Value::Number(k, _) => k
                        .parse::<usize>()
                        .ok()
                        .filter(|&k| k >= 1 && (star || k <= n))
                        .map(|k| k - 1),
                    _ => None,
                },
                // Items after a wildcard move when it expands: order by a hidden copy instead.
                _ if star => None,
                e => sel
                    .projection
                    .iter()
                    .position(|item| match item {
                        SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => strip(x) == e,
                        _ => false,
                    })
                    .or_else(|| match e {
                        Expr::Identifier(id) => aliases.iter().position(|a| a.as_deref() == Some(ident(id).as_str())),
                        _ => None,
                    }),
            };
            let col = match col {
                Some(c) => c,
                None if grouped_merge || distinct => {
                    return refuse(&format!(
                        "ORDER BY {} across shards must name a selected column when grouping",
                        o.expr
                    ));
                }
                None => {
                    hidden.push((SelectItem::UnnamedExpr(o.expr.clone()), ColKind::Plain));
                    n + hidden.len() - 1
                }
            };
            if col < cols.len()
                && cols[col] != ColKind::Plain
                && !matches!(
                    cols[col],
                    ColKind::Count | ColKind::Sum | ColKind::Min | ColKind::Max | ColKind::Avg { .. }
                )
            {
                return refuse("ORDER BY on this column across shards is not supported");
            }
            order.push(SortKey { col, desc, nulls_first });
        }
    }
    if sel
        .projection
        .iter()
        .any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }))
        && (grouped_merge || distinct)
    {
        return refuse("SELECT * with DISTINCT or aggregates across shards: name the columns");
    }
    cols.extend(hidden.iter().map(|(_, k)| *k));
    let (limit, offset) = match &q.limit_clause {
        None => (None, None),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => {
            let l = match limit {
                None => None,
                Some(e) => match operand(e) {
                    Some(Operand::Null) => None,
                    Some(o) => Some(o),
                    None => return refuse("LIMIT across shards must be a number or a parameter"),
                },
            };
            let o = match offset {
                None => None,
                Some(off) => match operand(&off.value) {
                    Some(Operand::Null) => None,
                    Some(o) => Some(o),
                    None => return refuse("OFFSET across shards must be a number or a parameter"),
                },
            };
            (l, o)
        }
        Some(_) => return refuse("this LIMIT form across shards is not supported"),
    };
    // The statement each shard runs: hidden columns appended, no OFFSET, LIMIT raised by OFFSET
    // (rows before the offset may come from any shard). With merging by group, every group row is
    // needed, so no LIMIT at all.
    shard_sel.projection.extend(hidden.into_iter().map(|(i, _)| i));
    let mut shard_q = q.clone();
    *shard_q.body = SetExpr::Select(Box::new(shard_sel));
    shard_q.limit_clause = None;
    // The shard statement may use fewer parameters than the client's (HAVING stays behind):
    // number the ones it keeps from $1.
    let mut params = renumber_params(&mut shard_q);
    let mut param = |p: usize| {
        params.iter().position(|&x| x == p).unwrap_or_else(|| {
            params.push(p);
            params.len() - 1
        })
    };
    let mut sql = shard_q.to_string();
    if !grouped_merge && !distinct {
        match (&limit, &offset) {
            (Some(Operand::Lit(l)), None) => sql.push_str(&format!(" LIMIT {l}")),
            (Some(Operand::Lit(l)), Some(Operand::Lit(o))) => {
                if let (Ok(l), Ok(o)) = (l.parse::<i64>(), o.parse::<i64>()) {
                    sql.push_str(&format!(" LIMIT {}", l.saturating_add(o)));
                }
            }
            (Some(Operand::Param(l)), None) => sql.push_str(&format!(" LIMIT ${}", param(*l) + 1)),
            (Some(Operand::Param(l)), Some(o)) => {
                let l = param(*l) + 1;
                let o = match o {
                    Operand::Param(p) => format!("${}", param(*p) + 1),
                    Operand::Lit(x) => x.clone(),
                    Operand::Null => "0".into(),
                };
                sql.push_str(&format!(" LIMIT (${l} + {o})"));
            }
            _ => {}
        }
    }
    Ok(Merge {
        sql,
        params,
        visible: n,
        cols,
        grouped: grouped_merge || distinct,
        having,
        order,
        limit,
        offset,
    })
}

/// A plain selected column is fine in a grouped merge when it is a GROUP BY expression.
fn plain_is_grouped(item: &SelectItem, group: &[Expr], i: usize) -> bool {
    let e = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    group.iter().any(|g| {
        strip(g) == strip(e)
            || matches!(strip(g), Expr::Value(v) if matches!(&v.value, Value::Number(k, _) if k.parse::<usize>().ok() == Some(i + 1)))
    }) || calls(e).0.is_empty() && matches!(strip(e), Expr::Value(_))
}
