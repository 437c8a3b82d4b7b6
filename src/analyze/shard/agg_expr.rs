//! Expressions over aggregates in a SELECT merged across shards (`sum(a) / count(*)`,
//! `round(avg(x), 2)`, `max(x) - min(x)`, `sum(x)::float8 / count(*)`): each aggregate becomes a
//! hidden column merged as usual, and the merge computes the expression from the merged values
//! ([`AggExpr`], evaluated by `exec::merge`). The shards still compute the expression over their
//! own rows, so its column has the type one database gives; only the value is replaced. Arithmetic,
//! unary minus, `round` and casts to numeric, double precision and integers; anything else is
//! refused.

use super::*;

/// How deep an expression over aggregates may nest.
const MAX_DEPTH: usize = 32;

/// An expression over merged aggregate values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AggExpr {
    /// The merged value of a result column (a hidden aggregate).
    Col(usize),
    /// A numeric literal, as written.
    Lit(String),
    /// Unary minus.
    Neg(Box<AggExpr>),
    /// Arithmetic.
    Bin(Box<AggExpr>, Arith, Box<AggExpr>),
    /// `round(e)` or `round(e, digits)`.
    Round(Box<AggExpr>, Option<i32>),
    /// `e::type`.
    Cast(Box<AggExpr>, CastTo),
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// A type an expression is cast to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CastTo {
    /// numeric (without a precision).
    Numeric,
    /// double precision / float8.
    Float,
    /// bigint, integer or smallint.
    Int,
}

/// `e` as an [`AggExpr`]; `add` turns an aggregate call into the index of the hidden column that
/// carries it.
pub(super) fn agg_expr(e: &Expr, add: &mut dyn FnMut(&Function) -> Result<usize, String>) -> Result<AggExpr, String> {
    convert(e, 0, add)
}

fn convert(e: &Expr, depth: usize, add: &mut dyn FnMut(&Function) -> Result<usize, String>) -> Result<AggExpr, String> {
    let unsupported = || {
        Err(format!(
            "the expression {e} over aggregates across shards is not supported"
        ))
    };
    if depth > MAX_DEPTH {
        return Err("an expression over aggregates this deep is not supported across shards".into());
    }
    let sub =
        |x: &Expr, add: &mut dyn FnMut(&Function) -> Result<usize, String>| convert(x, depth + 1, add).map(Box::new);
    Ok(match e {
        Expr::Nested(x) => return convert(x, depth + 1, add),
        Expr::Function(f) if f.over.is_none() && is_aggregate_name(&func_name(f)) => AggExpr::Col(add(f)?),
        Expr::Function(f) if f.over.is_none() && func_name(f) == "round" => {
            let FunctionArguments::List(l) = &f.args else {
                return unsupported();
            };
            let arg = |i: usize| match l.args.get(i) {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(x))) => Some(x),
                _ => None,
            };
            let (Some(x), true) = (arg(0), l.args.len() <= 2 && l.clauses.is_empty()) else {
                return unsupported();
            };
            let digits = match arg(1) {
                None if l.args.len() == 1 => None,
                Some(d) => match operand(d) {
                    Some(Operand::Lit(n)) => Some(n.parse::<i32>().map_err(|_| format!("round() digits {n}"))?),
                    _ => return unsupported(),
                },
                None => return unsupported(),
            };
            AggExpr::Round(sub(x, add)?, digits)
        }
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) if n.bytes().all(|b| b.is_ascii_digit() || b == b'.') => AggExpr::Lit(n.clone()),
            _ => return unsupported(),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => AggExpr::Neg(sub(expr, add)?),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => return convert(expr, depth + 1, add),
        Expr::BinaryOp { left, op, right } => {
            let op = match op {
                BinaryOperator::Plus => Arith::Add,
                BinaryOperator::Minus => Arith::Sub,
                BinaryOperator::Multiply => Arith::Mul,
                BinaryOperator::Divide => Arith::Div,
                _ => return unsupported(),
            };
            AggExpr::Bin(sub(left, add)?, op, sub(right, add)?)
        }
        Expr::Cast {
            expr,
            data_type,
            format: None,
            ..
        } => {
            use sqlparser::ast::{DataType as T, ExactNumberInfo};
            let to = match data_type {
                T::Numeric(ExactNumberInfo::None) | T::Decimal(ExactNumberInfo::None) => CastTo::Numeric,
                T::DoublePrecision | T::Float8 | T::Double(_) => CastTo::Float,
                // MySQL's SIGNED is its 64-bit integer.
                T::BigInt(None)
                | T::Int8(None)
                | T::Int(None)
                | T::Integer(None)
                | T::Int4(None)
                | T::Signed
                | T::SignedInteger => CastTo::Int,
                _ => return unsupported(),
            };
            AggExpr::Cast(sub(expr, add)?, to)
        }
        _ => return unsupported(),
    })
}

/// Whether every cast around `e` keeps the order of values (numbers to numbers, to dates or
/// timestamps): a maximum cast is then the cast maximum. Text (`'9' > '10'`) and times of day
/// (`max(ts)::time`) do not.
pub(super) fn order_keeping_casts(mut e: &Expr) -> bool {
    use sqlparser::ast::DataType as T;
    loop {
        match e {
            Expr::Nested(x) => e = x,
            Expr::Cast { expr, data_type, .. } => {
                let keeps = matches!(
                    data_type,
                    T::SmallInt(_)
                        | T::Int(_)
                        | T::Integer(_)
                        | T::BigInt(_)
                        | T::Int2(_)
                        | T::Int4(_)
                        | T::Int8(_)
                        | T::Numeric(_)
                        | T::Decimal(_)
                        | T::Real
                        | T::Float4
                        | T::Float8
                        | T::Float(_)
                        | T::Double(_)
                        | T::DoublePrecision
                        | T::Date
                        | T::Timestamp(..)
                );
                if !keeps {
                    return false;
                }
                e = expr;
            }
            _ => return true,
        }
    }
}

/// `CASE WHEN false THEN e END`: `e`'s type, never evaluated.
pub(super) fn never_evaluated(e: &Expr) -> Expr {
    Expr::Case {
        case_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        end_token: sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        operand: None,
        conditions: vec![sqlparser::ast::CaseWhen {
            condition: Expr::value(Value::Boolean(false)),
            result: e.clone(),
        }],
        else_result: None,
    }
}

/// The name PostgreSQL gives an unnamed result column of expression `e`, and how strongly
/// (`FigureColnameInternal`): a column's or function's name (2), a cast's type or CASE (1), else
/// `?column?` (0).
pub(super) fn column_name(e: &Expr) -> (String, u8) {
    use sqlparser::ast::DataType as T;
    match e {
        Expr::Nested(x) => column_name(x),
        Expr::Identifier(i) => (ident(i), 2),
        Expr::CompoundIdentifier(p) => (p.last().map(ident).unwrap_or_default(), 2),
        Expr::Function(f) => (func_name(f), 2),
        Expr::Cast { expr, data_type, .. } => {
            let inner = column_name(expr);
            if inner.1 > 1 {
                return inner;
            }
            let name = match data_type {
                T::DoublePrecision | T::Float8 | T::Double(_) => "float8".to_string(),
                T::Int(_) | T::Integer(_) | T::Int4(_) => "int4".to_string(),
                T::BigInt(_) | T::Int8(_) => "int8".to_string(),
                other => other.to_string().to_lowercase(),
            };
            (name, 1)
        }
        Expr::Case { .. } => ("case".into(), 1),
        _ => ("?column?".into(), 0),
    }
}

/// An aggregate inside an expression over aggregates as hidden columns (AVG as its sum and
/// count); the index of the column whose merged value is the aggregate's.
pub(super) fn hidden_aggregate(
    f: &Function,
    n: usize,
    hidden: &mut Vec<(SelectItem, ColKind)>,
) -> Result<usize, String> {
    let distinct = matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment.is_some());
    if distinct
        && f.within_group.is_empty()
        && func_name(f) == "count"
        && let FunctionArguments::List(l) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(x))] = &l.args[..]
        && l.clauses.is_empty()
    {
        // count(DISTINCT x): a hidden column of x, which the shards also group by (merge_spec).
        let x = match &f.filter {
            Some(c) => super::aggregates::filtered(c, x).ok_or("this count(DISTINCT ...) FILTER is not supported")?,
            None => x.clone(),
        };
        let at = n + hidden.len();
        hidden.push((SelectItem::UnnamedExpr(x), ColKind::CountDistinct));
        return Ok(at);
    }
    if distinct || !f.within_group.is_empty() {
        return Err(
            "an expression over aggregates with DISTINCT (other than count(DISTINCT x)) or WITHIN GROUP across shards \
             is not supported"
                .into(),
        );
    }
    if let FunctionArguments::List(l) = &f.args
        && l.args.len() != 1
    {
        return Err("aggregates with several arguments across shards are not supported".into());
    }
    let at = n + hidden.len();
    match mergeable(f)? {
        Mergeable::Kind(kind) => hidden.push((SelectItem::UnnamedExpr(Expr::Function(f.clone())), kind)),
        Mergeable::Avg { sum, count } => {
            hidden.push((SelectItem::UnnamedExpr(*sum), ColKind::Avg { count_col: at + 1 }));
            hidden.push((SelectItem::UnnamedExpr(*count), ColKind::Count));
        }
    }
    Ok(at)
}
