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

mod agg_expr;
mod aggregates;
mod columns;
mod copy_options;
mod copy_query;
mod cte;
mod ddl;
mod dml;
mod fill_ids;
mod having;
mod insert_pushdown;
mod literals;
mod locality;
pub mod materialize;
mod merge_spec;
mod order;
mod owned;
mod scope;
mod subquery;
mod tables;
mod union;
mod unparsed;

pub use agg_expr::{AggExpr, Arith, CastTo};
use agg_expr::{agg_expr, column_name, hidden_aggregate, never_evaluated, order_keeping_casts};
use aggregates::*;
pub use columns::{with_columns, with_rows};
use copy_options::*;
use copy_query::copy_query;
use ddl::{during_move, is_ddl};
use dml::*;
pub use fill_ids::*;
pub use having::*;
use locality::*;
pub use merge_spec::*;
use order::*;
pub use owned::{any_copies, copy_without_columns, own_rows_each, own_rows_only};
use scope::*;
use tables::tables;

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
        merge: Result<Arc<Merge>, String>,
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
    /// INSERT ... VALUES into a sharded table without a column list: planned again once the
    /// table's columns are known, with them named ([`with_columns`]).
    InsertNoColumns {
        /// The table as the statement names it (for the catalog lookup).
        table: String,
    },
    /// `COPY table TO STDOUT` of a sharded table (text or CSV): every shard holding part of the
    /// group streams its rows, one after another.
    CopyOut {
        /// The group.
        group: usize,
        /// CSV HEADER: only the first shard's header line is kept.
        header: bool,
        /// Binary format: one header and one trailer around every shard's rows.
        binary: bool,
    },
    /// `COPY (SELECT ...) TO STDOUT` over a group's tables (text or CSV): on the one shard its key
    /// conditions allow, or, for a plain selection of rows, each shard's rows in turn.
    CopyQuery {
        /// The group.
        group: usize,
        /// The SELECT's key condition.
        cond: KeyCond,
        /// CSV HEADER: only the first shard's header line is kept.
        header: bool,
        /// Binary format: one header and one trailer around every shard's rows.
        binary: bool,
        /// Rows as each shard selects them make the answer (no ORDER BY, LIMIT, DISTINCT or
        /// aggregate to merge): the shards' outputs can be concatenated.
        plain: bool,
    },
    /// INSERT ... SELECT into a sharded table: the SELECT (planned on its own) is read first,
    /// and its rows inserted as VALUES, split by key ([`with_rows`]).
    InsertSelect {
        /// The source query's text.
        select: String,
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
        return unparsed::shape(sql, map);
    };
    shape_of(&stmts, map)
}

/// [`shape`] in MySQL's dialect: `?` placeholders are numbered in the order they appear and
/// stand for parameters `$1`, `$2`, ... of the shape, as the binary protocol sends them.
pub fn shape_mysql(sql: &str, map: &ShardMap) -> Shape {
    let safe = super::Limits {
        max_bytes: usize::MAX,
        max_depth: super::limits::MAX_DEPTH,
    };
    if let Err(e) = super::limits::check(sql, &safe) {
        return Shape::Refuse(e.to_string());
    }
    // String literals keep their escapes as written (`'it\'s'`, `'a\\b'`): statements the
    // proxy rewrites for the shards print them back exactly. sqlparser would otherwise unescape
    // them and print `'a\b'`, which MySQL reads as another string.
    let parsed = Parser::new(&sqlparser::dialect::MySqlDialect {})
        .with_options(sqlparser::parser::ParserOptions::new().with_unescape(false))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements());
    let Ok(mut stmts) = parsed else {
        return Shape::Unparsed;
    };
    number_placeholders(&mut stmts);
    let shape = shape_of(&stmts, map);
    if escaped_key(&shape) {
        return Shape::Refuse(
            "a shard key written as a string literal with escapes (\\ or '') is not routed: pass the key as a prepared statement's parameter".into(),
        );
    }
    shape
}

/// A key given as a literal that still holds MySQL escapes: its value is not its text.
fn escaped_key(shape: &Shape) -> bool {
    let escaped = |o: &Operand| matches!(o, Operand::Lit(s) if s.contains('\\') || s.contains('\''));
    fn cond(c: &KeyCond, f: &dyn Fn(&Operand) -> bool) -> bool {
        let mut stack = vec![c];
        while let Some(c) = stack.pop() {
            match c {
                KeyCond::All => {}
                KeyCond::Values(v) => {
                    if v.iter().any(f) {
                        return true;
                    }
                }
                KeyCond::And(cs) | KeyCond::Or(cs) => stack.extend(cs),
            }
        }
        false
    }
    match shape {
        Shape::Group { cond: c, .. } => cond(c, &escaped),
        Shape::Insert { keys, .. } => keys.iter().any(escaped),
        Shape::Several(shapes) => shapes.iter().any(escaped_key),
        _ => false,
    }
}

/// Renames `?` placeholders `$1`, `$2`, ... in the order the parser visits them, which is the
/// order they appear in the text.
pub fn number_placeholders(stmts: &mut [Statement]) {
    let mut n = 0;
    for s in stmts {
        let _ = sqlparser::ast::visit_expressions_mut(s, |e| {
            if let Expr::Value(v) = e
                && let sqlparser::ast::Value::Placeholder(p) = &mut v.value
                && p == "?"
            {
                n += 1;
                *p = format!("${n}");
            }
            ControlFlow::<()>::Continue(())
        });
    }
}

fn shape_of(stmts: &[Statement], map: &ShardMap) -> Shape {
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

fn statement(stmt: &Statement, map: &ShardMap) -> Shape {
    if let Statement::Insert(ins) = stmt
        && let Some(shape) = insert_pushdown::shape(ins, map)
    {
        return shape;
    }
    if let Some(select) = columns::insert_select_source(stmt, map) {
        return Shape::InsertSelect { select };
    }
    if let Some(shape) = copy_query(stmt, map) {
        return shape;
    }
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
                if *to && matches!(target, sqlparser::ast::CopyTarget::Stdout) {
                    return match copy_out_format(options, legacy_options) {
                        Ok((header, binary)) => Shape::CopyOut {
                            group: *group,
                            header,
                            binary,
                        },
                        Err(m) => Shape::Refuse(format!("COPY {table} TO STDOUT: {m}")),
                    };
                }
                if *to || !matches!(target, sqlparser::ast::CopyTarget::Stdin) {
                    return Shape::Refuse(format!(
                        "COPY {table} to or from a file is not supported on a sharded table (the files are on the shards); \
                         use COPY ... TO STDOUT / FROM STDIN (psql's \\copy)"
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
    if let Some(refusal) = cte::shadows_a_table(stmt, map) {
        return Shape::Refuse(refusal);
    }
    let (named, unsharded) = tables(stmt, map);
    if is_ddl(stmt)
        && let Some(refusal) = during_move(stmt, &named, map)
    {
        return Shape::Refuse(refusal);
    }
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
            write_shape(&from, u.selection.as_ref(), &u.assignments, &u.returning, map, group)
        }
        Statement::Delete(d) => {
            let mut from = match &d.from {
                FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f.clone(),
            };
            from.extend(d.using.iter().flatten().cloned());
            write_shape(&from, d.selection.as_ref(), &None::<Expr>, &d.returning, map, group)
        }
        // pg_dump locks every table it dumps: in a transaction, on every shard it then reads.
        Statement::Lock(_) => Shape::ReferenceWrite,
        _ => Shape::Refuse("this kind of statement is not supported on sharded tables".into()),
    }
}
