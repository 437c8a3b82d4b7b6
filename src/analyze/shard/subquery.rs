//! Subqueries over sharded tables in a WHERE clause that each shard answers for its own rows:
//! rows of one key live on one shard for every table of the group, so a subquery that only
//! looks at the outer row's key sees, on that row's shard, every row it can see on one database.
//! Two forms qualify:
//! - correlated on the key: the subquery's WHERE has `inner.key = outer.key` (EXISTS, NOT
//!   EXISTS, IN, scalar comparisons; anywhere in WHERE);
//! - `outer.key IN (SELECT inner.key FROM ...)`, a condition of WHERE's top-level AND, with no
//!   LIMIT in the subquery (its set of keys splits by shard the way the outer rows do).
//!
//! Any other subquery over sharded tables (in the select list, HAVING, ON; uncorrelated; nested
//! in a qualifying subquery) is refused: its rows would come from other shards too.

use super::*;

const REFUSAL: &str = "subqueries over sharded tables are supported only in WHERE, correlated on the shard key \
     (`WHERE inner.key = outer.key`) or as `key IN (SELECT key FROM ...)`; join co-located tables on the shard key instead";

const WRITE_REFUSAL: &str = "subqueries over sharded tables in an UPDATE's SET or a RETURNING are supported when correlated on the \
     shard key (`WHERE inner.key = outer.key`), or when they run on their own first (no reference to the written table)";

/// Checks the subqueries of `q`, whose top-level SELECT `sel` has the tables of `outer` in FROM.
pub(super) fn check(q: &Query, sel: &Select, map: &ShardMap, outer: &Scope) -> Result<(), String> {
    if q.with.is_some() {
        // WITH queries are checked on their own (`cte`): only the main query's subqueries here.
        let bare = Query {
            with: None,
            ..q.clone()
        };
        let SetExpr::Select(bare_sel) = bare.body.as_ref() else {
            return Err(REFUSAL.into());
        };
        return check(&bare, bare_sel, map, outer);
    }
    let key_in: Vec<*const Query> = sel.selection.as_ref().map_or_else(Vec::new, |selection| {
        chain(selection, &BinaryOperator::And)
            .into_iter()
            .filter_map(|c| match c {
                Expr::InSubquery {
                    expr,
                    subquery,
                    negated: false,
                } if outer.key_of(expr).is_some() => Some(&**subquery as *const Query),
                _ => None,
            })
            .collect()
    });
    // Subqueries in WHERE and in the select list (a correlated count per row, say).
    let mut local = Vec::new();
    let stopped = sel
        .selection
        .as_ref()
        .is_some_and(|w| collect_local(w, map, outer, &key_in, &mut local).is_err());
    if stopped {
        return Err(REFUSAL.into());
    }
    collect_local(&sel.projection, map, outer, &key_in, &mut local)?;
    only_in_local(q, map, &local, 1)
}

/// Subqueries over sharded tables in a write's SET values and RETURNING: each shard answers one
/// for the rows it changes when it is correlated on the key with the written table (`outer`);
/// any other is refused (an uncorrelated one can then run first, `materialize`). Without this, a
/// shard would compute `SET x = (SELECT max(x) FROM t)` over its own rows only.
pub(super) fn check_write_exprs(e: &impl Visit, map: &ShardMap, outer: &Scope) -> Result<(), String> {
    let mut local = Vec::new();
    collect_local(e, map, outer, &[], &mut local)
        .and_then(|()| only_in_local(e, map, &local, 0))
        .map_err(|_| WRITE_REFUSAL.to_owned())
}

/// Records in `local` each subquery over sharded tables in `e` that every shard answers for its
/// own outer rows; the first that is not is the error.
fn collect_local(
    e: &impl Visit,
    map: &ShardMap,
    outer: &Scope,
    key_in: &[*const Query],
    local: &mut Vec<*const Query>,
) -> Result<(), String> {
    let mut refusal = None;
    let _ = sqlparser::ast::visit_expressions(e, |x: &Expr| {
        let sub = match x {
            Expr::Exists { subquery, .. } | Expr::InSubquery { subquery, .. } | Expr::Subquery(subquery) => subquery,
            _ => return ControlFlow::Continue(()),
        };
        if !tables(sub.as_ref(), map)
            .0
            .iter()
            .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
        {
            return ControlFlow::Continue(());
        }
        let ptr = &**sub as *const Query;
        match answered_locally(sub, map, outer, key_in.contains(&ptr)) {
            Ok(()) => {
                local.push(ptr);
                ControlFlow::Continue(())
            }
            Err(m) => {
                refusal = Some(m);
                ControlFlow::Break(())
            }
        }
    });
    refusal.map_or(Ok(()), Err)
}

/// Every sharded table in `e` is in its outer FROM (query depth `base`; 0 when `e` has none) or
/// directly in the FROM of a qualifying subquery of `local`.
fn only_in_local(e: &impl Visit, map: &ShardMap, local: &[*const Query], base: usize) -> Result<(), String> {
    struct V<'a> {
        map: &'a ShardMap,
        local: &'a [*const Query],
        base: usize,
        depth: usize,
        /// Depths of the qualifying subqueries being visited.
        inside: Vec<usize>,
        stray: bool,
    }
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.depth += 1;
            if self.local.contains(&(q as *const Query)) {
                self.inside.push(self.depth);
            }
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if self.local.contains(&(q as *const Query)) {
                self.inside.pop();
            }
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            let here = (self.base > 0 && self.depth == self.base) || self.inside.last() == Some(&self.depth);
            if !here && matches!(self.map.table(&last_name(r)), Some(TableRule::Sharded { .. })) {
                self.stray = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V {
        map,
        local,
        base,
        depth: 0,
        inside: Vec::new(),
        stray: false,
    };
    let _ = e.visit(&mut v);
    if v.stray { Err(REFUSAL.into()) } else { Ok(()) }
}

/// Whether each shard answers `sub` for its own outer rows; `key_in`: it is the right side of
/// `outer.key IN (...)` in WHERE's top-level AND.
fn answered_locally(sub: &Query, map: &ShardMap, outer: &Scope, key_in: bool) -> Result<(), String> {
    let SetExpr::Select(s) = sub.body.as_ref() else {
        return Err(REFUSAL.into());
    };
    if sub.with.is_some() {
        return Err(REFUSAL.into());
    }
    let inner = scope(&s.from, map)?;
    if inner.keys.is_empty() {
        return Err(REFUSAL.into());
    }
    // Its own sharded tables join on the key, as any statement's must.
    joined_cond(&s.from, s.selection.as_ref(), &inner)?;
    let correlated = s.selection.as_ref().is_some_and(|w| {
        chain(w, &BinaryOperator::And).into_iter().any(|c| match c {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => {
                (inner.key_of(left).is_some() && outer_key(right, outer, &inner))
                    || (inner.key_of(right).is_some() && outer_key(left, outer, &inner))
            }
            _ => false,
        })
    });
    if correlated {
        return Ok(());
    }
    let keys_only = key_in
        && sub.limit_clause.is_none()
        && sub.fetch.is_none()
        && matches!(&s.projection[..], [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }]
            if inner.key_of(e).is_some() && !calls(e).1)
        && match &s.group_by {
            GroupByExpr::Expressions(g, m) => {
                m.is_empty() && (g.is_empty() || g.iter().any(|e| inner.key_of(e).is_some()))
            }
            GroupByExpr::All(_) => false,
        };
    if keys_only { Ok(()) } else { Err(REFUSAL.into()) }
}

/// `e` names the key of a table of the outer FROM, qualified by an alias the subquery does not
/// define (an unqualified name could be the subquery's own column).
fn outer_key(e: &Expr, outer: &Scope, inner: &Scope) -> bool {
    match strip(e) {
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            !inner.by_alias.contains_key(&ident(&parts[parts.len() - 2])) && outer.key_of(e).is_some()
        }
        _ => false,
    }
}
