//! Expressions over merged aggregates ([`AggExpr`]) computed with PostgreSQL's rules: bigint
//! arithmetic with overflow errors and division truncating toward zero, numeric arithmetic exact
//! (a product's scale is the sum of the scales, a quotient's PostgreSQL's division scale),
//! double precision as soon as one side is, `round` half away from zero for numeric and to even
//! for double precision, NULL in, NULL out. Division by zero is an error, as on one database.

use super::decimal::Decimal;
use super::{MergeError, Value};
use crate::analyze::shard::{AggExpr, Arith, CastTo};

fn err(m: &str) -> MergeError {
    MergeError(m.into())
}

fn num(v: &Value) -> Option<Decimal> {
    match v {
        Value::Int(i) => Some(Decimal::int(*i as i128)),
        Value::Num(d) => Some(*d),
        _ => None,
    }
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Num(d) => Some(d.to_f64_exact()),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// The value of `e`, the merged value of column `c` given by `col(c)`.
pub(super) fn eval(e: &AggExpr, col: &mut dyn FnMut(usize) -> Result<Value, String>) -> Result<Value, MergeError> {
    let overflow = || err("value out of range while merging an expression over aggregates");
    Ok(match e {
        AggExpr::Col(c) => col(*c).map_err(MergeError)?,
        AggExpr::Lit(s) => match s.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Num(Decimal::parse(s).ok_or_else(|| err("a numeric literal shardwire cannot read"))?),
        },
        AggExpr::Neg(x) => match eval(x, col)? {
            Value::Int(i) => Value::Int(i.checked_neg().ok_or_else(overflow)?),
            Value::Num(d) => Value::Num(Decimal { mant: -d.mant, ..d }),
            Value::Float(f) => Value::Float(-f),
            Value::Null => Value::Null,
            other => return Err(MergeError(format!("cannot negate {other:?}"))),
        },
        AggExpr::Bin(a, op, b) => {
            let (a, b) = (eval(a, col)?, eval(b, col)?);
            arith(&a, *op, &b)?
        }
        AggExpr::Round(x, digits) => match (eval(x, col)?, digits) {
            (Value::Null, _) => Value::Null,
            (Value::Float(f), None) => Value::Float(f.round_ties_even()),
            (v, d) => {
                let n = num(&v).ok_or_else(|| err("round() of a value that is not a number"))?;
                Value::Num(n.round_to(d.unwrap_or(0)).map_err(|_| overflow())?)
            }
        },
        AggExpr::Cast(x, to) => match (eval(x, col)?, to) {
            (Value::Null, _) => Value::Null,
            (v @ Value::Int(_), CastTo::Int) => v,
            (Value::Num(d), CastTo::Int) => {
                let r = d.round_to(0).map_err(|_| overflow())?;
                Value::Int(i64::try_from(r.mant).map_err(|_| overflow())?)
            }
            (Value::Float(f), CastTo::Int) => {
                let r = f.round_ties_even();
                if !(r >= i64::MIN as f64 && r < i64::MAX as f64) {
                    return Err(overflow());
                }
                Value::Int(r as i64)
            }
            (Value::Float(_), CastTo::Numeric) => {
                return Err(err(
                    "a cast of double precision to numeric over aggregates across shards is not supported",
                ));
            }
            (v, CastTo::Numeric) => Value::Num(num(&v).ok_or_else(|| err("a cast to numeric of a non-number"))?),
            (v, CastTo::Float) => {
                Value::Float(float(&v).ok_or_else(|| err("a cast to double precision of a non-number"))?)
            }
            (_, CastTo::Int) => return Err(err("a cast to an integer of a non-number")),
        },
    })
}

fn arith(a: &Value, op: Arith, b: &Value) -> Result<Value, MergeError> {
    let overflow = || err("value out of range while merging an expression over aggregates");
    let zero = || MergeError("division by zero".into());
    Ok(match (a, b) {
        (Value::Null, _) | (_, Value::Null) => Value::Null,
        (Value::Int(x), Value::Int(y)) => Value::Int(
            match op {
                Arith::Add => x.checked_add(*y),
                Arith::Sub => x.checked_sub(*y),
                Arith::Mul => x.checked_mul(*y),
                Arith::Div if *y == 0 => return Err(zero()),
                Arith::Div => x.checked_div(*y),
            }
            .ok_or_else(overflow)?,
        ),
        (Value::Float(_), _) | (_, Value::Float(_)) => {
            let (x, y) = (
                float(a).ok_or_else(|| err("arithmetic on a non-number"))?,
                float(b).ok_or_else(|| err("arithmetic on a non-number"))?,
            );
            Value::Float(match op {
                Arith::Add => x + y,
                Arith::Sub => x - y,
                Arith::Mul => x * y,
                Arith::Div if y == 0.0 => return Err(zero()),
                Arith::Div => x / y,
            })
        }
        _ => {
            let (x, y) = (
                num(a).ok_or_else(|| err("arithmetic on a non-number"))?,
                num(b).ok_or_else(|| err("arithmetic on a non-number"))?,
            );
            Value::Num(match op {
                Arith::Add => x.checked_add(y).map_err(|_| overflow())?,
                Arith::Sub => x.checked_add(Decimal { mant: -y.mant, ..y }).map_err(|_| overflow())?,
                Arith::Mul => x.checked_mul(y).map_err(|_| overflow())?,
                Arith::Div => x.div_pg(y).map_err(|_| overflow())?.ok_or_else(zero)?,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Value {
        Value::Num(Decimal::parse(s).unwrap())
    }

    fn run(e: &AggExpr, cols: &[Value]) -> Result<Value, MergeError> {
        eval(e, &mut |c| Ok(cols[c].clone()))
    }

    fn bin(a: AggExpr, op: Arith, b: AggExpr) -> AggExpr {
        AggExpr::Bin(Box::new(a), op, Box::new(b))
    }

    #[test]
    fn arithmetic_follows_postgresql() {
        let (c0, c1) = (AggExpr::Col(0), AggExpr::Col(1));
        // bigint / bigint truncates toward zero.
        assert_eq!(
            run(
                &bin(c0.clone(), Arith::Div, c1.clone()),
                &[Value::Int(-7), Value::Int(2)]
            )
            .unwrap(),
            Value::Int(-3)
        );
        // numeric / bigint: PostgreSQL's division scale (10 / 4 = 2.5000000000000000).
        assert_eq!(
            run(&bin(c0.clone(), Arith::Div, c1.clone()), &[d("10"), Value::Int(4)]).unwrap(),
            d("2.5000000000000000")
        );
        // numeric * numeric: the scales add up.
        assert_eq!(
            run(&bin(c0.clone(), Arith::Mul, AggExpr::Lit("1.0".into())), &[d("2.50")]).unwrap(),
            d("2.500")
        );
        // Division by zero and overflow are errors; NULL propagates.
        assert!(
            run(
                &bin(c0.clone(), Arith::Div, c1.clone()),
                &[Value::Int(1), Value::Int(0)]
            )
            .is_err()
        );
        assert!(
            run(
                &bin(c0.clone(), Arith::Mul, c1.clone()),
                &[Value::Int(i64::MAX), Value::Int(2)]
            )
            .is_err()
        );
        assert_eq!(
            run(&bin(c0.clone(), Arith::Div, c1.clone()), &[Value::Null, Value::Int(0)]).unwrap(),
            Value::Null
        );
        // Double precision wins.
        assert_eq!(
            run(&bin(c0, Arith::Add, c1), &[Value::Float(0.5), Value::Int(1)]).unwrap(),
            Value::Float(1.5)
        );
    }

    #[test]
    fn round_and_casts_follow_postgresql() {
        let r = |v: Value, digits: Option<i32>| run(&AggExpr::Round(Box::new(AggExpr::Col(0)), digits), &[v]).unwrap();
        assert_eq!(r(d("2.345"), Some(2)), d("2.35"));
        assert_eq!(r(d("-2.345"), Some(2)), d("-2.35"));
        assert_eq!(r(d("2.5"), None), d("3"));
        assert_eq!(r(d("2.4"), Some(3)), d("2.400"));
        assert_eq!(r(d("1250"), Some(-2)), d("1300"));
        assert_eq!(r(Value::Float(2.5), None), Value::Float(2.0));
        let cast = |v: Value, to: CastTo| run(&AggExpr::Cast(Box::new(AggExpr::Col(0)), to), &[v]).unwrap();
        assert_eq!(cast(d("2.5"), CastTo::Int), Value::Int(3));
        assert_eq!(cast(Value::Float(2.5), CastTo::Int), Value::Int(2));
        assert_eq!(cast(Value::Int(3), CastTo::Float), Value::Float(3.0));
        assert_eq!(cast(d("0.1"), CastTo::Float), Value::Float(0.1));
    }
}
