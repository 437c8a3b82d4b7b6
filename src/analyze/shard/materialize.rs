//! Reads refused as written that become answerable once some of their parts have run first, as
//! Citus's recursive planning does: an uncorrelated subquery over sharded tables, a WITH query
//! or a derived table that is neither co-located nor on one shard, a branch of a set operation
//! over other groups, and at last the sharded tables themselves. Each such part is a query of
//! its own (planned and merged as if sent alone); its rows come back as text and go into the
//! statement as VALUES (or, for `x IN (subquery)`, as a list of literals, which routes by key
//! like any IN list). What is left runs like any statement, most often on one shard.
//!
//! Three levels, each tried only when the one before leaves the statement refused: subqueries in
//! expressions (usually few rows), then WITH queries, derived tables and set-operation branches,
//! then whole sharded tables (their WHERE pushed into the part when the table stands alone in
//! FROM). A part must be self-contained (no reference to a table or WITH query outside it),
//! read-only and free of row locks; anything else keeps the statement's refusal. The rows pass
//! through shardwire, so the session bounds their size. An UPDATE or DELETE gets the first level
//! only: its uncorrelated subqueries, which one database also computes once before changing rows.

use super::*;
use sqlparser::ast::{SelectItem as Item, VisitMut, VisitorMut};

/// Where a part's rows go, printed as a quoted identifier: `(SELECT "__shardwire_rows_N")`.
const MARK: &str = "__shardwire_rows_";

/// A read refused as written, with the parts that run first.
#[derive(Debug, Clone)]
pub struct Materialize {
    /// The statement printed with a mark where each part was.
    marked: String,
    /// The parts, in the order their marks appear in `marked`.
    pub parts: Vec<Part>,
    /// The tables of the shard map the parts read (their columns' collations must be the
    /// database's: the rows come back as literals of the default collation).
    pub tables: Vec<String>,
    /// The statement is an UPDATE or DELETE (only its expressions' subqueries are parts).
    pub write: bool,
}

/// A query run on its own before the statement.
#[derive(Debug, Clone)]
pub struct Part {
    /// Its text.
    pub sql: String,
    /// `x [NOT] IN (subquery)`: one column of rows goes in as a list of literals.
    list: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Expressions,
    Relations,
    Tables,
}

/// The parts to run first for `sql`, a read refused as written, or `None` when none make it
/// answerable (the refusal stands).
pub fn plan(sql: &str, map: &ShardMap) -> Option<Materialize> {
    let safe = crate::analyze::Limits {
        max_bytes: usize::MAX,
        max_depth: crate::analyze::limits::MAX_DEPTH,
    };
    if sql.contains(MARK) || crate::analyze::limits::check(sql, &safe).is_err() {
        return None;
    }
    let parse = || Parser::parse_sql(&PostgreSqlDialect {}, sql).ok();
    let stmts = parse()?;
    // An UPDATE or DELETE: its uncorrelated subqueries run first, as one database computes them
    // once before changing rows; the rest of it is a write like any.
    let write = match stmts.as_slice() {
        [Statement::Query(q)] if q.locks.is_empty() && read_only(q) => false,
        [Statement::Update(_) | Statement::Delete(_)] => true,
        _ => return None,
    };
    // A mark's text inside a string literal of the statement (written with escapes, it is not
    // in `sql` as such) would be taken for the mark.
    if stmts[0].to_string().contains(MARK) {
        return None;
    }
    // `schema.table.column` no longer names a column once the table is a derived table.
    let three_part_names = has_three_part_names(&stmts[0]);
    drop(stmts);
    for level in [Level::Expressions, Level::Relations, Level::Tables] {
        if (level == Level::Tables && three_part_names) || (write && level > Level::Expressions) {
            break;
        }
        // Parsed again rather than cloned: a clone recurses deeper per level than a parse.
        let mut stmt = parse()?.pop()?;
        let mut finder = Finder {
            map,
            level,
            ctes: all_cte_names(&stmt),
            parts: Vec::new(),
        };
        let _ = VisitMut::visit(&mut stmt, &mut finder);
        if finder.parts.is_empty() || !answerable(&statement(&stmt, map), map) {
            continue;
        }
        let marked = stmt.to_string();
        if marked.matches(MARK).count() != finder.parts.len() {
            return None;
        }
        let mut read_tables: Vec<String> = Vec::new();
        for part in &finder.parts {
            let read = Parser::parse_sql(&PostgreSqlDialect {}, &part.sql).ok();
            for (name, _) in read.map(|s| tables(&s, map).0).unwrap_or_default() {
                if !read_tables.contains(&name) {
                    read_tables.push(name);
                }
            }
        }
        return Some(Materialize {
            marked,
            parts: finder.parts,
            tables: read_tables,
            write,
        });
    }
    None
}

/// Whether a shape can run (on one shard at least): the dry run of the statement with its parts
/// taken out. A merge that fails is still fine when the key condition may name one shard.
fn answerable(shape: &Shape, map: &ShardMap) -> bool {
    match shape {
        Shape::Refuse(_) | Shape::Unparsed | Shape::Several(_) => false,
        // A write runs where its key condition says, on every shard without one (unless the map
        // refuses those).
        Shape::Group { write: true, cond, .. } => !(map.refuse_scatter_writes && *cond == KeyCond::All),
        Shape::Group {
            merge: Err(_), cond, ..
        } => *cond != KeyCond::All,
        _ => true,
    }
}

/// No INSERT, UPDATE, DELETE or MERGE inside (a data-modifying WITH query).
fn read_only(q: &impl Visit) -> bool {
    struct V(bool);
    impl Visitor for V {
        type Break = ();
        fn pre_visit_statement(&mut self, _: &Statement) -> ControlFlow<()> {
            self.0 = false;
            ControlFlow::Break(())
        }
    }
    let mut v = V(true);
    let _ = q.visit(&mut v);
    v.0
}

/// Every WITH name anywhere in the statement.
fn all_cte_names(stmt: &Statement) -> BTreeSet<String> {
    struct V(BTreeSet<String>);
    impl Visitor for V {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.0.extend(cte::names(q));
            ControlFlow::Continue(())
        }
    }
    let mut v = V(BTreeSet::new());
    let _ = stmt.visit(&mut v);
    v.0
}

/// Whether `q` runs on its own as it runs inside the statement: every qualified column names a
/// table of `q` itself, and no relation is a WITH query defined outside it. (An unqualified name
/// of an outer column makes the part fail on the shard with "column does not exist", never give
/// another answer: inside, a name means the innermost column first, as on its own.)
fn self_contained(q: &impl Visit, outer_ctes: &BTreeSet<String>) -> bool {
    struct V<'a> {
        outer_ctes: &'a BTreeSet<String>,
        inner_ctes: Vec<String>,
        defined: BTreeSet<String>,
        qualifiers: Vec<String>,
        outside: bool,
    }
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.inner_ctes.extend(cte::names(q));
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            match t {
                TableFactor::Table { name, alias, .. } => {
                    self.defined.insert(last_name(name));
                    if let Some(a) = alias {
                        self.defined.insert(ident(&a.name));
                    }
                    let n = last_name(name);
                    if name.0.len() == 1 && self.outer_ctes.contains(&n) && !self.inner_ctes.contains(&n) {
                        self.outside = true;
                    }
                }
                TableFactor::Derived { alias: Some(a), .. }
                | TableFactor::Function { alias: Some(a), .. }
                | TableFactor::UNNEST { alias: Some(a), .. } => {
                    self.defined.insert(ident(&a.name));
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = e
                && parts.len() >= 2
            {
                self.qualifiers.push(ident(&parts[parts.len() - 2]));
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V {
        outer_ctes,
        inner_ctes: Vec::new(),
        defined: BTreeSet::new(),
        qualifiers: Vec::new(),
        outside: false,
    };
    let _ = q.visit(&mut v);
    if v.outside {
        return false;
    }
    // Qualified wildcards (`t.*`) name tables too.
    let mut wildcards = Vec::new();
    struct W<'a>(&'a mut Vec<String>);
    impl Visitor for W<'_> {
        type Break = ();
        fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
            for item in &s.projection {
                if let Item::QualifiedWildcard(sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(n), _) = item
                {
                    self.0.push(last_name(n));
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = q.visit(&mut W(&mut wildcards));
    v.qualifiers.iter().chain(&wildcards).all(|t| v.defined.contains(t))
}

/// Finds the parts of one level and puts a mark in their place.
struct Finder<'a> {
    map: &'a ShardMap,
    level: Level,
    ctes: BTreeSet<String>,
    parts: Vec<Part>,
}

impl Finder<'_> {
    /// Whether `q` is a part: over sharded tables, self-contained, read-only, no row locks.
    fn candidate(&self, q: &Query) -> bool {
        q.locks.is_empty() && self.candidate_body(q)
    }

    fn candidate_body(&self, q: &impl Visit) -> bool {
        !has_collate(q)
            && tables(q, self.map)
                .0
                .iter()
                .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
            && read_only(q)
            && self_contained(q, &self.ctes)
    }

    /// Records `sql` as the next part and returns its mark.
    fn mark(&mut self, sql: String, list: bool) -> Option<Box<Query>> {
        let n = self.parts.len();
        let mark = parse_query(&format!("SELECT \"{MARK}{n}\""))?;
        self.parts.push(Part { sql, list });
        Some(mark)
    }

    fn take(&mut self, q: &mut Box<Query>, list: bool) {
        if self.candidate(q)
            && let Some(mark) = self.mark(q.to_string(), list)
        {
            *q = mark;
        }
    }
}

impl VisitorMut for Finder<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        if self.level < Level::Relations {
            return ControlFlow::Continue(());
        }
        if let Some(with) = &mut q.with
            && !with.recursive
        {
            for cte in &mut with.cte_tables {
                self.take(&mut cte.query, false);
            }
        }
        if matches!(q.body.as_ref(), SetExpr::SetOperation { .. }) {
            // Branches left to right, without recursion: set operations chain as deep as long.
            let mut stack: Vec<&mut SetExpr> = vec![q.body.as_mut()];
            while let Some(b) = stack.pop() {
                match b {
                    SetExpr::SetOperation { left, right, .. } => {
                        stack.push(right.as_mut());
                        stack.push(left.as_mut());
                    }
                    SetExpr::Query(inner) => self.take(inner, false),
                    SetExpr::Select(_) => {
                        if self.candidate_body(b)
                            && let Some(mark) = self.mark(b.to_string(), false)
                        {
                            *b = SetExpr::Query(mark);
                        }
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &mut Select) -> ControlFlow<()> {
        if self.level < Level::Tables {
            return ControlFlow::Continue(());
        }
        // A sharded table alone in FROM: its part is its rows that pass the WHERE (which has
        // no subquery), so only those come through; the WHERE stays and passes them again.
        let [TableWithJoins { relation, joins }] = s.from.as_mut_slice() else {
            return ControlFlow::Continue(());
        };
        if !joins.is_empty() || s.selection.as_ref().is_some_and(has_subquery) {
            return ControlFlow::Continue(());
        }
        if let Some(alias) = self.sharded_table(relation) {
            let mut sql = format!("SELECT * FROM {relation}");
            // Not a WHERE that names an outer query's table (a correlated subquery's): the
            // part runs on its own, and the WHERE still applies where it stands.
            let pushed = s
                .selection
                .as_ref()
                .is_some_and(|w| qualifiers(w).iter().all(|q| *q == ident(&alias.name)));
            if pushed && let Some(w) = &s.selection {
                sql.push_str(&format!(" WHERE {w}"));
            }
            if let Some(mark) = self.mark(sql, false) {
                *relation = derived(mark, alias);
                // Evaluated once, in the part, as one database evaluates it once per row
                // (a volatile function in it would otherwise filter twice).
                if pushed {
                    s.selection = None;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
        if self.level < Level::Relations {
            return ControlFlow::Continue(());
        }
        if let TableFactor::Derived {
            lateral: false,
            subquery,
            ..
        } = t
        {
            self.take(subquery, false);
        } else if self.level == Level::Tables
            && let Some(alias) = self.sharded_table(t)
            && let Some(mark) = self.mark(format!("SELECT * FROM {t}"), false)
        {
            *t = derived(mark, alias);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        match e {
            Expr::InSubquery { subquery, .. } => self.take(subquery, true),
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => self.take(q, false),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl Finder<'_> {
    /// A sharded table (not a WITH query of that name, no column aliases): the alias its rows
    /// take when they stand in for it.
    fn sharded_table(&self, t: &TableFactor) -> Option<sqlparser::ast::TableAlias> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            ..
        } = t
        else {
            return None;
        };
        let n = last_name(name);
        if !with_hints.is_empty()
            || (name.0.len() == 1 && self.ctes.contains(&n))
            || !matches!(self.map.table(&n), Some(TableRule::Sharded { .. }))
            || alias.as_ref().is_some_and(|a| !a.columns.is_empty())
        {
            return None;
        }
        let alias = alias
            .clone()
            .map(|a| sqlparser::ast::TableAlias { explicit: true, ..a });
        Some(alias.unwrap_or(sqlparser::ast::TableAlias {
            explicit: true,
            name: match name.0.last() {
                Some(ObjectNamePart::Identifier(i)) => i.clone(),
                _ => Ident::new(n),
            },
            columns: Vec::new(),
            at: None,
        }))
    }
}

fn derived(subquery: Box<Query>, alias: sqlparser::ast::TableAlias) -> TableFactor {
    TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(alias),
        sample: None,
    }
}

fn parse_query(text: &str) -> Option<Box<Query>> {
    match Parser::parse_sql(&PostgreSqlDialect {}, text).ok()?.pop()? {
        Statement::Query(q) => Some(q),
        _ => None,
    }
}

/// The table names columns are qualified with in `e`.
fn qualifiers(e: &Expr) -> Vec<String> {
    let mut out = Vec::new();
    let _ = sqlparser::ast::visit_expressions(e, |x| {
        if let Expr::CompoundIdentifier(parts) = x
            && parts.len() >= 2
        {
            out.push(ident(&parts[parts.len() - 2]));
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// Whether any expression in `v` is one `pred` picks.
fn any_expr(v: &impl Visit, pred: impl Fn(&Expr) -> bool) -> bool {
    sqlparser::ast::visit_expressions(v, |x| match pred(x) {
        true => ControlFlow::Break(()),
        false => ControlFlow::Continue(()),
    })
    .is_break()
}

/// A `COLLATE` anywhere: a value collated so would come back in the default collation.
fn has_collate(q: &impl Visit) -> bool {
    any_expr(q, |x| matches!(x, Expr::Collate { .. }))
}

/// A column named with its schema (`public.users.id`).
fn has_three_part_names(stmt: &Statement) -> bool {
    any_expr(stmt, |x| matches!(x, Expr::CompoundIdentifier(p) if p.len() >= 3))
}

fn has_subquery(e: &Expr) -> bool {
    any_expr(e, |x| {
        matches!(x, Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. })
    })
}

mod write;
pub use write::{ParamText, PartRows, Unwritten, inline_params};

#[cfg(test)]
mod tests;
