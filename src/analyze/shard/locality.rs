//! What in a SELECT decides whether shards can compute it alone: window functions partitioned by
//! the shard key, and literals (taken out of the text as parameters) standing where they shape
//! the result.

use super::*;

pub(super) const WINDOWS: &str = "window functions across shards are supported only partitioned by the shard key \
     (PARTITION BY key) and without GROUP BY off the key; filter on the shard key to stay on one shard";

/// Every window function in `node` has the shard key of a table in scope in its PARTITION BY.
pub(super) fn windows_by_key(node: &impl sqlparser::ast::Visit, scope: &Scope) -> bool {
    sqlparser::ast::visit_expressions(node, |e| match e {
        Expr::Function(f) => match &f.over {
            None => ControlFlow::Continue(()),
            Some(sqlparser::ast::WindowType::WindowSpec(spec))
                if spec.partition_by.iter().any(|p| scope.key_of(p).is_some()) =>
            {
                ControlFlow::Continue(())
            }
            Some(_) => ControlFlow::Break(()),
        },
        _ => ControlFlow::Continue(()),
    })
    .is_continue()
}

/// A literal taken out of the text as a parameter stands somewhere in `node`.
pub(super) fn literal_in<T: sqlparser::ast::Visit>(node: &T) -> bool {
    let base = crate::analyze::fingerprint::LITERAL_PARAM_BASE;
    sqlparser::ast::visit_expressions(node, |e| match e {
        Expr::Value(v)
            if matches!(&v.value, Value::Placeholder(p)
                if p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).is_some_and(|n| n > base)) =>
        {
            ControlFlow::Break(())
        }
        _ => ControlFlow::Continue(()),
    })
    .is_break()
}

/// DISTINCT ON across shards: the number of leading ORDER BY keys it names (0 without it). The
/// merge keeps the first row of each key in the merged order, which is one database's answer when
/// the ORDER BY starts with the DISTINCT ON expressions (PostgreSQL requires it) and rows are not
/// grouped across shards first.
pub(super) fn distinct_on_keys(q: &Query, sel: &Select, grouped: bool) -> Result<usize, &'static str> {
    let Some(Distinct::On(on)) = &sel.distinct else {
        return Ok(0);
    };
    if grouped {
        return Err("DISTINCT ON with aggregates or GROUP BY across shards is not supported");
    }
    let leading = match q.order_by.as_ref().map(|o| &o.kind) {
        Some(OrderByKind::Expressions(e)) => e,
        _ => return Err("DISTINCT ON across shards needs an ORDER BY that starts with its expressions"),
    };
    if leading.len() < on.len() || on.iter().zip(leading).any(|(a, b)| strip(a) != strip(&b.expr)) {
        return Err("DISTINCT ON across shards needs an ORDER BY that starts with its expressions");
    }
    Ok(on.len())
}
