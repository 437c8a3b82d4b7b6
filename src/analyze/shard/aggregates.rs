//! Aggregate calls in a SELECT merged across shards: which aggregates exist, which can be split
//! into per-shard parts and combined (COUNT, SUM, MIN, MAX, AVG as SUM and COUNT), and where they
//! (and window functions) occur.

use super::*;

/// How an aggregate call merges across shards.
pub(super) enum Mergeable {
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

pub(super) fn mergeable(f: &Function) -> Result<Mergeable, String> {
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

pub(super) fn func_name(f: &Function) -> String {
    last_name(&f.name)
}

pub(super) fn is_aggregate_name(n: &str) -> bool {
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
            | "stddev_pop"
            | "stddev_samp"
            | "var_pop"
            | "var_samp"
            | "any_value"
            | "bit_xor"
            | "corr"
            | "covar_pop"
            | "covar_samp"
            | "regr_avgx"
            | "regr_avgy"
            | "regr_count"
            | "regr_intercept"
            | "regr_r2"
            | "regr_slope"
            | "regr_sxx"
            | "regr_sxy"
            | "regr_syy"
            | "json_object_agg"
            | "jsonb_object_agg"
            | "json_object_agg_strict"
            | "jsonb_object_agg_strict"
            | "json_object_agg_unique"
            | "jsonb_object_agg_unique"
            | "json_arrayagg"
            | "json_objectagg"
            | "xmlagg"
            | "range_agg"
            | "range_intersect_agg"
            | "rank"
            | "dense_rank"
            | "percent_rank"
            | "cume_dist"
    )
}

/// Aggregate calls and window functions anywhere in an expression, outside its subqueries (an
/// aggregate in a subquery is the subquery's own).
pub(super) fn calls(e: &impl Visit) -> (Vec<Function>, bool) {
    struct V(Vec<Function>, bool, usize);
    impl Visitor for V {
        type Break = ();
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.2 += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.2 -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if self.2 > 0 {
                return ControlFlow::Continue(());
            }
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
    let mut v = V(Vec::new(), false, 0);
    let _ = e.visit(&mut v);
    (v.0, v.1)
}

/// `CASE WHEN filter THEN arg END`: what `count(DISTINCT arg) FILTER (WHERE filter)` counts.
pub(super) fn filtered(filter: &Expr, arg: &Expr) -> Option<Expr> {
    let text = format!("CASE WHEN {filter} THEN {arg} END");
    Parser::new(&sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// A plain selected column is fine in a grouped merge when it is a GROUP BY expression.
pub(super) fn plain_is_grouped(item: &SelectItem, group: &[Expr], i: usize) -> bool {
    let e = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return false,
    };
    // Casts kept: `x::int` groups otherwise than `x`.
    group.iter().any(|g| {
        strip_parens(g) == strip_parens(e)
            || matches!(strip(g), Expr::Value(v) if matches!(&v.value, Value::Number(k, _) if k.parse::<usize>().ok() == Some(i + 1)))
    }) || calls(e).0.is_empty() && matches!(strip(e), Expr::Value(_))
}
