//! HAVING evaluated on merged groups (the shards run the statement without it: a group's
//! aggregate is only known once every shard's part is combined). Three-valued, as SQL.
//! The condition's depth is bounded by the analysis (at most 256 terms), so the recursion is too.

use super::groups::{Group, group_value};
use super::{Value, coerce_literal, compare};
use crate::analyze::shard::{Having, Merge, Operand, Term};
use crate::exec::{Cells, Params};

fn term_value(
    t: &Term,
    like: Option<&Value>,
    m: &Merge,
    cells: &impl Cells,
    g: &Group,
    params: &impl Params,
) -> Result<Value, String> {
    let text = match t {
        Term::Col(i) => return group_value(m, cells, g, *i),
        Term::Expr(k) => {
            let e = m.exprs.get(*k).ok_or("an expression over aggregates is missing")?;
            return super::expr::eval(e, &mut |c| group_value(m, cells, g, c)).map_err(|e| e.to_string());
        }
        Term::Value(Operand::Null) => return Ok(Value::Null),
        Term::Value(Operand::Lit(l)) => l.clone(),
        Term::Value(Operand::Param(p)) => match params.text(*p)? {
            Some(t) => t,
            None => return Ok(Value::Null),
        },
    };
    let like = like.ok_or("HAVING compares two values")?;
    coerce_literal(&text, like).ok_or_else(|| format!("cannot compare {text} with {like:?}"))
}

/// Whether group `g` passes `h` (`None` is SQL's unknown).
pub(super) fn eval_having(
    h: &Having,
    m: &Merge,
    cells: &impl Cells,
    g: &Group,
    params: &impl Params,
) -> Result<Option<bool>, String> {
    Ok(match h {
        Having::And(a, b) => match (
            eval_having(a, m, cells, g, params)?,
            eval_having(b, m, cells, g, params)?,
        ) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Having::Or(a, b) => match (
            eval_having(a, m, cells, g, params)?,
            eval_having(b, m, cells, g, params)?,
        ) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Having::Not(a) => eval_having(a, m, cells, g, params)?.map(|v| !v),
        Having::IsNull(t, is_null) => {
            let v = term_value(t, None, m, cells, g, params)?;
            Some((v == Value::Null) == *is_null)
        }
        Having::Cmp(l, op, r) => {
            // Columns first, so a literal can take the column's type.
            let (lv, rv) = match (l, r) {
                (Term::Col(_) | Term::Expr(_), _) => {
                    let lv = term_value(l, None, m, cells, g, params)?;
                    (lv.clone(), term_value(r, Some(&lv), m, cells, g, params)?)
                }
                _ => {
                    let rv = term_value(r, None, m, cells, g, params)?;
                    (term_value(l, Some(&rv), m, cells, g, params)?, rv)
                }
            };
            compare(&lv, *op, &rv).map_err(|e| e.to_string())?
        }
    })
}
