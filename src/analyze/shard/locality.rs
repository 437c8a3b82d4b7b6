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
