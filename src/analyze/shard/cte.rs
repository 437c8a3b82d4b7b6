//! WITH queries over sharded tables. Two cases run:
//! - *co-located*: every WITH query over sharded tables keeps the rows of each shard key together
//!   (plain rows of one group's tables, or groups that include the key; no LIMIT, no window
//!   across keys). Each shard then answers the whole statement for its own keys, so the WITH
//!   names stand in the main query for sharded tables of the group (key: the WITH query's key
//!   column), and the main query merges as it would over the tables themselves.
//! - *one shard*: each WITH query and the main query need the shards their own key conditions
//!   allow; the statement runs where all of them meet, which must be one shard.
//!
//! Anything else would need rows of other shards and is refused. WITH queries nest one level (a
//! WITH inside a WITH query is refused), so the analysis does not recurse as deep as the input.

use super::*;
use sqlparser::ast::JoinOperator;

/// The names a query's WITH clause defines.
pub(super) fn names(q: &Query) -> impl Iterator<Item = String> + '_ {
    q.with
        .iter()
        .flat_map(|w| w.cte_tables.iter().map(|c| ident(&c.alias.name)))
}

/// A WITH query named like a table of the shard map: which of the two a name means depends on
/// where it stands, so such statements are refused rather than guessed.
pub(super) fn shadows_a_table(stmt: &Statement, map: &ShardMap) -> Option<String> {
    struct V<'a>(&'a ShardMap, Option<String>);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            match names(q).find(|n| self.0.table(n).is_some()) {
                Some(n) => {
                    self.1 = Some(format!(
                        "WITH query {n} has the name of a table of the shard map; give it another name"
                    ));
                    ControlFlow::Break(())
                }
                None => ControlFlow::Continue(()),
            }
        }
    }
    let mut v = V(map, None);
    let _ = stmt.visit(&mut v);
    v.1
}

fn has_sharded(q: &Query, map: &ShardMap) -> bool {
    tables(q, map)
        .0
        .iter()
        .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
}

/// The first of `names` (WITH queries) that `q` reads as a relation.
fn reads_one_of(q: &Query, names: &[String]) -> Option<String> {
    struct V<'a>(&'a [String], Option<String>);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let n = last_name(r);
            if r.0.len() == 1 && self.0.contains(&n) {
                self.1 = Some(n);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    if names.is_empty() {
        return None;
    }
    let mut v = V(names, None);
    let _ = q.visit(&mut v);
    v.1
}

/// The shape of a query with a WITH clause over group `group`.
pub(super) fn with_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    let Some(with) = &q.with else {
        return select_shape(q, map, group);
    };
    let mut conds = Vec::new();
    // WITH queries over sharded tables so far: one that reads another is over them too.
    let mut sharded: Vec<String> = Vec::new();
    for cte in &with.cte_tables {
        let name = ident(&cte.alias.name);
        let body = cte.query.as_ref();
        if let Some(read) = reads_one_of(body, &sharded) {
            return Shape::Refuse(format!(
                "WITH query {name} reads WITH query {read}, which reads sharded tables: across shards each WITH query \
                 must read the tables themselves"
            ));
        }
        if has_sharded(body, map) {
            sharded.push(name.clone());
        }
        if body.with.is_some() {
            return Shape::Refuse(format!(
                "WITH query {name} has a WITH clause of its own; over sharded tables only one level is supported"
            ));
        }
        if !matches!(body.body.as_ref(), SetExpr::Select(_) | SetExpr::SetOperation { .. }) {
            return Shape::Refuse(format!(
                "WITH query {name} is not a SELECT: data-modifying WITH queries on sharded tables are not supported; \
                 run the statements one at a time"
            ));
        }
        if !has_sharded(body, map) {
            // Reference tables only: every shard has them.
            continue;
        }
        match select_shape(body, map, group) {
            Shape::Group { cond, .. } => conds.push(cond),
            Shape::Refuse(m) => return Shape::Refuse(format!("in WITH query {name}: {m}")),
            _ => return Shape::Refuse(format!("WITH query {name} over sharded tables is not supported")),
        }
    }
    let mut colocated_refusal = None;
    if let Some(colocated) = colocated_map(q, map, group) {
        match select_body_shape(q, &colocated, group) {
            Shape::Group { cond, merge, .. } => {
                // Each shard answers for its own keys. A WITH query whose condition leaves a shard
                // no rows leaves that shard nothing to answer when the main query needs its rows
                // (an inner join): the conditions meet as WHERE conditions do. Otherwise (an outer
                // join, NOT EXISTS over it) the statement runs on every shard any part needs.
                conds.push(cond);
                let cond = match needs_every_with_row(q, &colocated, map) {
                    true => KeyCond::And(conds),
                    false => KeyCond::Or(conds),
                };
                return Shape::Group {
                    group,
                    cond,
                    write: false,
                    merge,
                };
            }
            // Perhaps all its parts meet on one shard (a join the co-located reading cannot
            // follow, such as one on a WITH query without its key column).
            Shape::Refuse(m) => colocated_refusal = Some(m),
            _ => {}
        }
    }
    let main = Query {
        with: None,
        ..q.clone()
    };
    if has_sharded(&main, map) {
        match select_shape(&main, map, group) {
            Shape::Group { cond, .. } => conds.push(cond),
            refused @ Shape::Refuse(_) => return colocated_refusal.map_or(refused, Shape::Refuse),
            _ => return Shape::Refuse("this WITH query over sharded tables is not supported".into()),
        }
    }
    let cond = if conds.len() == 1 {
        conds.pop().unwrap_or(KeyCond::All)
    } else {
        // Every part runs where the statement runs: it needs each part's shards.
        KeyCond::Or(conds)
    };
    Shape::Group {
        group,
        cond,
        write: false,
        merge: Err(colocated_refusal.unwrap_or_else(|| {
            "a query with WITH over sharded tables runs across shards when each WITH query keeps the rows of a shard \
             key together (select the key, group by it if grouping, no LIMIT), or else on one shard: filter the WITH \
             queries and the main query by the shard key so that they all meet on one shard"
                .into()
        })),
    }
}

/// `map` with each WITH query of `q` over sharded tables named as a sharded table of `group`,
/// when every one of them keeps each shard key's rows together (see the module docs) and the
/// main query is a plain SELECT; `None` otherwise.
fn colocated_map(q: &Query, map: &ShardMap, group: usize) -> Option<ShardMap> {
    let with = q.with.as_ref()?;
    if with.recursive || !matches!(q.body.as_ref(), SetExpr::Select(_)) {
        return None;
    }
    let mut extended: Option<ShardMap> = None;
    for cte in &with.cte_tables {
        let body = cte.query.as_ref();
        if !has_sharded(body, map) {
            continue;
        }
        let key = key_local(body, map, group)?;
        // Output columns renamed by the WITH query's column list (`WITH t (a, b) AS ...`).
        let key = match key {
            KeyColumn::At(i, name) => match cte.alias.columns.get(i) {
                Some(c) => ident(&c.name),
                None => name,
            },
            KeyColumn::Hidden => "\0no key column".to_owned(),
        };
        let m = extended.get_or_insert_with(|| map.clone());
        m.tables
            .insert(ident(&cte.alias.name), TableRule::Sharded { group, key });
    }
    extended
}

/// Where a key-local query has the shard key among its output columns.
pub(super) enum KeyColumn {
    /// Output column `i`, named so.
    At(usize, String),
    /// Not selected: rows stay with their key's shard, but nothing can join on it.
    Hidden,
}

/// Whether `body` keeps each shard key's rows on that key's shard, and where its key column is.
pub(super) fn key_local(body: &Query, map: &ShardMap, group: usize) -> Option<KeyColumn> {
    let SetExpr::Select(sel) = body.body.as_ref() else {
        return None;
    };
    if body.limit_clause.is_some() || body.fetch.is_some() || sel.top.is_some() {
        return None;
    }
    let (named, unsharded) = tables(body, map);
    let one_group = named.iter().all(|(_, r)| match r {
        TableRule::Sharded { group: g, .. } => *g == group,
        TableRule::Reference => true,
    });
    if unsharded || !one_group || !matches!(select_body_shape(body, map, group), Shape::Group { .. }) {
        return None;
    }
    let s = scope(&sel.from, map).ok()?;
    let mut key = None;
    for (i, item) in sel.projection.iter().enumerate() {
        let (found, name) = match item {
            SelectItem::UnnamedExpr(e) => (s.key_of(e), column_name(e).0),
            SelectItem::ExprWithAlias { expr, alias } => (s.key_of(expr), ident(alias)),
            SelectItem::Wildcard(_) if s.keys.len() == 1 && sel.projection.len() == 1 => {
                (Some(s.keys[0].0.as_str()), s.keys[0].1.clone())
            }
            _ => return None,
        };
        if found.is_some() && key.is_none() {
            key = Some(KeyColumn::At(i, name));
        }
    }
    let group_exprs: &[Expr] = match &sel.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => e,
        _ => return None,
    };
    let (aggs, windows) = calls(&sel.projection);
    let grouped = !group_exprs.is_empty() || !aggs.is_empty() || sel.having.is_some();
    if grouped && !group_exprs.iter().any(|g| s.key_of(g).is_some()) {
        return None;
    }
    if matches!(sel.distinct, Some(Distinct::On(_))) || (sel.distinct.is_some() && key.is_none()) {
        return None;
    }
    if windows && !windows_by_key(&sel.projection, &s) {
        return None;
    }
    Some(key.unwrap_or(KeyColumn::Hidden))
}

/// Whether every row of the main query needs a row of each co-located WITH query: each is in the
/// main query's FROM, every join there is inner, and no subquery could read one.
fn needs_every_with_row(q: &Query, colocated: &ShardMap, map: &ShardMap) -> bool {
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return false;
    };
    let mut in_from = Vec::new();
    for t in &sel.from {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            match f {
                TableFactor::Table { name, .. } => in_from.push(last_name(name)),
                _ => return false,
            }
        }
        let inner = t.joins.iter().all(|j| {
            matches!(
                j.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            )
        });
        if !inner {
            return false;
        }
    }
    let with_names = colocated.tables.keys().filter(|n| map.table(n).is_none());
    let all_in_from = with_names.into_iter().all(|n| in_from.contains(n));
    let mut subquery = false;
    let _ = sqlparser::ast::visit_expressions(sel.as_ref(), |e| {
        subquery |= matches!(e, Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. });
        ControlFlow::<()>::Continue(())
    });
    all_in_from && !subquery
}
