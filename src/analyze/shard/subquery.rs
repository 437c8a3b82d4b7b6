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
    let mut local: Vec<*const Query> = Vec::new();
    let mut refusal = None;
    // Subqueries in WHERE and in the select list (a correlated count per row, say).
    let mut consider = |e: &Expr| {
        let sub = match e {
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
    };
    let stopped = sel
        .selection
        .as_ref()
        .is_some_and(|w| sqlparser::ast::visit_expressions(w, &mut consider).is_break());
    if !stopped {
        let _ = sqlparser::ast::visit_expressions(&sel.projection, &mut consider);
    }
    if let Some(m) = refusal {
        return Err(m);
    }
    // Every sharded table is in the outer FROM or directly in the FROM of a qualifying subquery.
    struct V<'a> {
        map: &'a ShardMap,
        local: &'a [*const Query],
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
            let here = self.depth == 1 || self.inside.last() == Some(&self.depth);
            if !here && matches!(self.map.table(&last_name(r)), Some(TableRule::Sharded { .. })) {
                self.stray = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V {
        map,
        local: &local,
        depth: 0,
        inside: Vec::new(),
        stray: false,
    };
    let _ = q.visit(&mut v);
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
