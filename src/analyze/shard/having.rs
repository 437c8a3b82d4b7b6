//! HAVING across shards: the condition over result columns ([`Having`]), evaluated after the
//! groups of every shard are combined; aggregates it needs that are not selected become hidden
//! columns.

use super::*;

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
    /// An expression over aggregates ([`Merge::exprs`] at this index), computed by the merge.
    Expr(usize),
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
pub(super) const MAX_HAVING_TERMS: usize = 256;

/// AND, OR and NOT nodes of a condition, counted without recursion.
pub(super) fn logical_terms(e: &Expr) -> usize {
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
pub(super) fn having_expr(
    e: &Expr,
    sel: &Select,
    hidden: &mut Vec<(SelectItem, ColKind)>,
    exprs: &mut Vec<AggExpr>,
    n: usize,
) -> Result<Having, String> {
    Ok(match strip(e) {
        Expr::BinaryOp { left, op, right } => {
            let cmp = match op {
                BinaryOperator::And => {
                    return Ok(Having::And(
                        Box::new(having_expr(left, sel, hidden, exprs, n)?),
                        Box::new(having_expr(right, sel, hidden, exprs, n)?),
                    ));
                }
                BinaryOperator::Or => {
                    return Ok(Having::Or(
                        Box::new(having_expr(left, sel, hidden, exprs, n)?),
                        Box::new(having_expr(right, sel, hidden, exprs, n)?),
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
                having_term(left, sel, hidden, exprs, n)?,
                cmp,
                having_term(right, sel, hidden, exprs, n)?,
            )
        }
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Having::Not(Box::new(having_expr(expr, sel, hidden, exprs, n)?)),
        Expr::IsNull(t) => Having::IsNull(having_term(t, sel, hidden, exprs, n)?, true),
        Expr::IsNotNull(t) => Having::IsNull(having_term(t, sel, hidden, exprs, n)?, false),
        other => {
            return Err(format!(
                "the condition {other} is not supported; compare aggregates or grouped columns with values"
            ));
        }
    })
}

pub(super) fn having_term(
    e: &Expr,
    sel: &Select,
    hidden: &mut Vec<(SelectItem, ColKind)>,
    exprs: &mut Vec<AggExpr>,
    n: usize,
) -> Result<Term, String> {
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
    let f = match target {
        Expr::Function(f) if f.over.is_none() && is_aggregate_name(&func_name(f)) => f,
        // `count(*) + 1`, `sum(a) / count(*)`, `round(avg(x), 2)`: computed from the merged
        // aggregates, carried in hidden columns.
        _ => {
            let e = agg_expr(target, &mut |f| hidden_aggregate(f, n, hidden))
                .map_err(|_| format!("{e} must be a selected column, an aggregate or an expression over aggregates"))?;
            exprs.push(e);
            return Ok(Term::Expr(exprs.len() - 1));
        }
    };
    if matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment == Some(sqlparser::ast::DuplicateTreatment::Distinct))
        && f.over.is_none()
        && func_name(f) == "count"
    {
        // count(DISTINCT x) not selected: a hidden column of x, which the shards group by too.
        let arg = match &f.args {
            FunctionArguments::List(l) if l.args.len() == 1 && l.clauses.is_empty() => match &l.args[0] {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => x.clone(),
                _ => return Err(format!("{e} cannot be merged")),
            },
            _ => return Err(format!("{e} cannot be merged")),
        };
        let arg = match &f.filter {
            Some(c) => filtered(c, &arg).ok_or_else(|| format!("{e} cannot be merged"))?,
            None => arg,
        };
        if let Some(i) = hidden.iter().position(
            |(item, kind)| matches!((item, kind), (SelectItem::UnnamedExpr(x), ColKind::CountDistinct) if strip(x) == strip(&arg)),
        ) {
            return Ok(Term::Col(n + i));
        }
        hidden.push((SelectItem::UnnamedExpr(arg), ColKind::CountDistinct));
        return Ok(Term::Col(n + hidden.len() - 1));
    }
    if matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment.is_some()) || f.over.is_some() {
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
