//! UNION and UNION ALL over sharded tables: every row of every branch lives on exactly one shard,
//! so each shard runs the whole statement and the results are concatenated (UNION ALL) or
//! de-duplicated once more across shards (UNION), ordered and windowed by the merge as one
//! database would. Each branch must be one a shard answers in full for its own rows: a plain
//! SELECT over the group's tables (joins on the key, reference tables beside them, GROUP BY on
//! the key), with no aggregate, DISTINCT, LIMIT or window of its own to merge. INTERSECT and
//! EXCEPT run the same way when every branch selects the shard key at the same position: equal
//! rows then have equal keys and so live on one shard, which compares them in full.

use sqlparser::ast::{SetOperator, SetQuantifier};

use super::*;

/// The shape of a query whose body is a UNION of SELECTs over group `group`.
pub(super) fn union_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    let (leaves, distinct, op) = match branches(q.body.as_ref()) {
        Ok(b) => b,
        Err(m) => return Shape::Refuse(m),
    };
    let mut conds = Vec::with_capacity(leaves.len());
    // Output positions holding the shard key in every branch so far (INTERSECT, EXCEPT).
    let mut key_positions: Option<Vec<usize>> = None;
    for sel in &leaves {
        let s = match scope(&sel.from, map) {
            Ok(s) => s,
            Err(m) => return Shape::Refuse(m),
        };
        if op != SetOperator::Union {
            let here: Vec<usize> = sel
                .projection
                .iter()
                .enumerate()
                .filter(|(_, item)| match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => s.key_of(e).is_some(),
                    _ => false,
                })
                .map(|(i, _)| i)
                .collect();
            let kept: Vec<usize> = match &key_positions {
                None => here,
                Some(k) => k.iter().copied().filter(|i| here.contains(i)).collect(),
            };
            if kept.is_empty() {
                return Shape::Refuse(
                    "INTERSECT, EXCEPT or a mix of set operations across shards compares rows of different shards \
                     unless every branch selects the shard key at the same position; add the key to each branch's \
                     select list"
                        .into(),
                );
            }
            key_positions = Some(kept);
        }
        if s.keys.is_empty() {
            // A branch over reference tables alone would come back once from every shard.
            return Shape::Refuse(
                "a UNION branch without a sharded table across shards is not supported: every shard would return its rows"
                    .into(),
            );
        }
        if let Err(m) = no_sharded_subqueries(*sel, map, s.keys.len()) {
            return Shape::Refuse(m);
        }
        match joined_cond(&sel.from, sel.selection.as_ref(), &s) {
            Ok(c) => conds.push(c),
            Err(m) => return Shape::Refuse(m),
        }
        let single = Query {
            body: Box::new(SetExpr::Select(Box::new((*sel).clone()))),
            order_by: None,
            limit_clause: None,
            ..q.clone()
        };
        match merge_plan(&single, sel, &s) {
            Ok(m) if m.cols.iter().all(|k| *k == ColKind::Plain) && !m.grouped => {}
            Ok(_) if distinct && is_plain_distinct(sel) => {}
            Ok(_) => {
                return Shape::Refuse(
                    "a UNION branch with aggregates, GROUP BY or DISTINCT across shards is not supported; group on the shard key or query the branches separately"
                        .into(),
                );
            }
            Err(m) => return Shape::Refuse(m),
        }
    }
    let merge = if leaves.iter().any(|sel| outer_join_keeps_unsharded_rows(&sel.from, map)) {
        Err(
            "a UNION branch whose outer join keeps the rows of a reference table (or function, subquery) returns \
             them from every shard; filter by the shard key"
                .to_string(),
        )
    } else {
        // Rows of an INTERSECT or EXCEPT are distinct per shard already, and shards share none.
        union_merge(q, leaves[0], distinct && op == SetOperator::Union)
    };
    Shape::Group {
        group,
        cond: KeyCond::Or(conds),
        write: false,
        merge: merge.map(Arc::new),
    }
}

/// The SELECTs of a chain of set operations, left to right, whether duplicates are removed, and
/// the operation (INTERSECT for a mix, which needs the key in every branch as INTERSECT does). Walked with a stack: the chain's length is
/// the input's.
fn branches(body: &SetExpr) -> Result<(Vec<&Select>, bool, SetOperator), String> {
    let mut leaves = Vec::new();
    let mut distinct = None;
    let mut operator = None;
    let mut mixed = false;
    let mut stack = vec![body];
    while let Some(e) = stack.pop() {
        match e {
            SetExpr::Select(s) => leaves.push(s.as_ref()),
            SetExpr::SetOperation {
                op: op @ (SetOperator::Union | SetOperator::Intersect | SetOperator::Except),
                set_quantifier,
                left,
                right,
            } => {
                let d = match set_quantifier {
                    SetQuantifier::All => false,
                    SetQuantifier::None | SetQuantifier::Distinct => true,
                    _ => return Err(format!("this {op} form across shards is not supported")),
                };
                if distinct.is_some_and(|x| x != d) || operator.is_some_and(|o| o != *op) {
                    // Mixed: each shard computes it whole, which is right only if every branch
                    // selects the key (checked by the caller, as for INTERSECT).
                    mixed = true;
                }
                distinct = Some(d);
                operator = Some(*op);
                // Right first: popped last, so branches come out left to right.
                stack.push(right);
                stack.push(left);
            }
            SetExpr::SetOperation { op, .. } => {
                return Err(format!("{op} over sharded tables is not supported across shards"));
            }
            _ => return Err("a UNION branch in parentheses, VALUES or TABLE across shards is not supported".into()),
        }
    }
    // A mixed chain is compared on the shards like an INTERSECT.
    let op = match mixed {
        true => SetOperator::Intersect,
        false => operator.unwrap_or(SetOperator::Union),
    };
    Ok((leaves, distinct.unwrap_or(false), op))
}

/// A branch whose only merge work is its own DISTINCT, which the UNION's repeats anyway.
fn is_plain_distinct(sel: &Select) -> bool {
    let plain = Select {
        distinct: None,
        ..sel.clone()
    };
    matches!(sel.distinct, Some(Distinct::Distinct))
        && calls(&plain).0.is_empty()
        && matches!(&sel.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
}

/// How the shards' results of the UNION combine: every column plain, de-duplicated for UNION,
/// ordered by output columns (by position or by the first branch's names), LIMIT raised by
/// OFFSET on the shards (numbers or parameters) and applied after merging.
fn union_merge(q: &Query, first: &Select, distinct: bool) -> Result<Merge, String> {
    let n = first.projection.len();
    let star = first
        .projection
        .iter()
        .any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }));
    if star && distinct {
        return Err("UNION of SELECT * across shards is not supported; name the columns".into());
    }
    let names: Vec<Option<String>> = first
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(ident(alias)),
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => Some(ident(id)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => p.last().map(ident),
            _ => None,
        })
        .collect();
    let mut order = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return Err("ORDER BY ALL across shards is not supported".into());
        };
        for o in exprs {
            let (desc, nulls_first) = direction(o)?;
            let col = match strip(&o.expr) {
                e @ Expr::Value(_) => ordinal(e, n, star),
                Expr::Identifier(id) if !star => {
                    let name = ident(id);
                    let mut at = names
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.as_deref() == Some(name.as_str()));
                    match (at.next(), at.next()) {
                        (Some((i, _)), None) => Some(i),
                        (Some(_), Some(_)) => return Err(format!("ORDER BY \"{name}\" is ambiguous")),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(col) = col else {
                return Err(format!(
                    "ORDER BY {} of a UNION across shards must name an output column (by name or position)",
                    o.expr
                ));
            };
            order.push(SortKey {
                col,
                desc,
                nulls_first,
                byte_order: byte_collation(&o.expr),
            });
        }
    }
    let (limit, offset) = window_of(q)?;
    let mut shard_q = q.clone();
    shard_q.limit_clause = None;
    shard_q.fetch = None;
    let mut params = renumber_params(&mut shard_q);
    let mut sql = shard_q.to_string();
    if !distinct {
        push_limit(&mut sql, &limit, &offset, &mut params);
    }
    Ok(Merge {
        sql,
        params,
        visible: n,
        cols: vec![ColKind::Plain; n],
        grouped: distinct,
        one_row: false,
        having: None,
        order,
        limit,
        offset,
        // Each branch's select list shapes the result: any literal taken out of the text
        // sends the statement to the exact text's plan.
        exprs: Vec::new(),
        distinct_on: 0,
        literal_shaped: super::locality::literal_in(q),
    })
}
