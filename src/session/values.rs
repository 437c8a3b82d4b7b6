//! PostgreSQL cells ↔ merge [`Value`]s (the PostgreSQL front end's codec for merged rows), by type OID and format code (0 text, 1 binary). Only the
//! types merging needs to compare or add; anything else is reported as not mergeable.

use bytes::Bytes;

use crate::exec::merge::{Decimal, Value, format_float};
use crate::exec::{Cells, Params};
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::{BindParts, Field};

/// The cells of a merged PostgreSQL result: the shards' columns in, the client's out (the same
/// but for aggregates, whose type and format the merge sets).
pub struct PgCells<'a> {
    /// The shards' RowDescription.
    pub input: &'a [Field],
    /// What the client is told.
    pub output: &'a [Field],
    /// Under an ICU collation, its collator and the text columns compared in its order.
    pub collated: Option<(&'static icu_collator::CollatorBorrowed<'static>, Vec<bool>)>,
}

impl Cells for PgCells<'_> {
    fn decode(&self, col: usize, cell: Option<&[u8]>) -> Result<Value, String> {
        let f = &self.input[col];
        let v = decode(f.type_oid, f.format, cell)?;
        Ok(match (&self.collated, v) {
            (Some((c, cols)), Value::Text(t)) if cols.get(col) == Some(&true) => {
                Value::Text(super::collation::icu_key(c, &t))
            }
            (_, v) => v,
        })
    }

    fn encode(&self, col: usize, value: &Value) -> Result<Option<Bytes>, String> {
        let f = &self.output[col];
        Ok(encode(f.type_oid, f.format, value)?.map(Bytes::from))
    }
}

/// A Bind's parameters as text, for HAVING comparisons made by the merge.
pub struct BindParams<'a>(pub &'a BindParts);

impl Params for BindParams<'_> {
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        let Some(raw) = self.0.values.get(i).and_then(|v| v.as_ref()) else {
            return Ok(None);
        };
        if self.0.param_format(i) == 0 {
            return Ok(Some(String::from_utf8_lossy(raw).into_owned()));
        }
        Ok(Some(match raw.len() {
            2 => i16::from_be_bytes([raw[0], raw[1]]).to_string(),
            4 => i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]).to_string(),
            8 => i64::from_be_bytes(raw[..8].try_into().unwrap_or_default()).to_string(),
            _ => return Err("a binary HAVING parameter of unknown type".into()),
        }))
    }
}

fn bad(oid: u32, why: &str) -> String {
    format!("cannot merge a value of type oid {oid} across shards: {why}")
}

/// Decodes one cell.
pub fn decode(type_oid: u32, format: i16, raw: Option<&[u8]>) -> Result<Value, String> {
    let Some(b) = raw else { return Ok(Value::Null) };
    if format == 0 {
        let s = std::str::from_utf8(b).map_err(|_| bad(type_oid, "not UTF-8"))?;
        return Ok(match type_oid {
            oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => Value::Int(s.parse().map_err(|_| bad(type_oid, s))?),
            oid::FLOAT4 | oid::FLOAT8 => Value::Float(match s {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                _ => s.parse().map_err(|_| bad(type_oid, s))?,
            }),
            oid::NUMERIC => match Decimal::parse(s) {
                Some(d) => Value::Num(d),
                None => return Err(bad(type_oid, &format!("numeric {s} is out of the mergeable range"))),
            },
            oid::BOOL => Value::Bool(s == "t"),
            oid::TEXT
            | oid::VARCHAR
            | oid::BPCHAR
            | oid::NAME
            | oid::CHAR
            | oid::UUID
            | oid::DATE
            | oid::TIMESTAMP
            | oid::TIMESTAMPTZ => Value::Text(b.to_vec()),
            _ => return Err(bad(type_oid, "no ordering known for it")),
        });
    }
    let int = |n: usize| -> Result<i64, String> {
        if b.len() != n {
            return Err(bad(type_oid, "wrong length"));
        }
        Ok(match n {
            2 => i16::from_be_bytes([b[0], b[1]]) as i64,
            4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => i64::from_be_bytes(b.try_into().map_err(|_| bad(type_oid, "wrong length"))?),
        })
    };
    Ok(match type_oid {
        oid::INT2 => Value::Int(int(2)?),
        oid::INT4 | oid::DATE => Value::Int(int(4)?),
        oid::OID => Value::Int(int(4)? as u32 as i64),
        oid::INT8 | oid::TIMESTAMP | oid::TIMESTAMPTZ => Value::Int(int(8)?),
        oid::FLOAT4 => Value::Float(f32::from_bits(int(4)? as u32) as f64),
        oid::FLOAT8 => Value::Float(f64::from_bits(int(8)? as u64)),
        oid::BOOL => Value::Bool(b.first() == Some(&1)),
        oid::NUMERIC => Value::Num(numeric_from_binary(b).ok_or_else(|| bad(type_oid, "numeric out of range"))?),
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR | oid::UUID | oid::BYTEA => {
            Value::Text(b.to_vec())
        }
        _ => return Err(bad(type_oid, "no ordering known for it")),
    })
}

/// Encodes a merged aggregate for the client, as type `type_oid` in `format`.
pub fn encode(type_oid: u32, format: i16, v: &Value) -> Result<Option<Vec<u8>>, String> {
    if *v == Value::Null {
        return Ok(None);
    }
    // A merged value computed for an integer column of a narrower type (an expression over
    // aggregates): out of its range is PostgreSQL's error, never a truncated number.
    if let Value::Int(i) = v
        && ((type_oid == oid::INT4 && i32::try_from(*i).is_err())
            || (type_oid == oid::INT2 && i16::try_from(*i).is_err()))
    {
        return Err(format!("integer out of range ({i}) for type oid {type_oid}"));
    }
    if format == 0 {
        return Ok(Some(
            match v {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => format_float(*f),
                Value::Num(d) => d.to_string(),
                Value::Bool(b) => if *b { "t" } else { "f" }.to_string(),
                Value::Text(t) => return Ok(Some(t.clone())),
                Value::Null => unreachable!("handled above"),
            }
            .into_bytes(),
        ));
    }
    Ok(Some(match (type_oid, v) {
        (oid::INT8, Value::Int(i)) => i.to_be_bytes().to_vec(),
        (oid::INT4, Value::Int(i)) => (*i as i32).to_be_bytes().to_vec(),
        (oid::FLOAT8, Value::Float(f)) => f.to_bits().to_be_bytes().to_vec(),
        (oid::FLOAT4, Value::Float(f)) => (*f as f32).to_bits().to_be_bytes().to_vec(),
        (oid::NUMERIC, Value::Num(d)) => numeric_to_binary(*d),
        (oid::NUMERIC, Value::Int(i)) => numeric_to_binary(Decimal::int(*i as i128)),
        (t, v) => return Err(format!("cannot encode {v:?} as binary type oid {t}")),
    }))
}

/// numeric's binary form: ndigits, weight, sign, dscale, then base-10000 digits.
fn numeric_from_binary(b: &[u8]) -> Option<Decimal> {
    let rd = |i: usize| -> Option<i64> { Some(i16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]) as i64) };
    let ndigits = rd(0)?;
    let weight = rd(2)?;
    let sign = rd(4)? as u16;
    let dscale = rd(6)? as u32;
    if matches!(sign, 0xC000 | 0xD000 | 0xF000) {
        return None; // NaN, Infinity, -Infinity: not decimals (an error, never a 0)
    }
    let mut mant: i128 = 0;
    // Value = sum digit[i] * 10000^(weight - i); scaled by 10^dscale.
    for i in 0..ndigits {
        let d = rd(8 + 2 * i as usize)? as i128;
        mant = mant.checked_mul(10000)?.checked_add(d)?;
    }
    // mant now is value * 10000^(ndigits - 1 - weight).
    let frac_groups = ndigits - 1 - weight;
    let have_scale = 4 * frac_groups; // decimal digits after the point in mant
    let scale = dscale as i64;
    let mant = if have_scale >= scale {
        mant / 10i128.checked_pow((have_scale - scale) as u32)?
    } else {
        mant.checked_mul(10i128.checked_pow((scale - have_scale) as u32)?)?
    };
    Some(Decimal {
        mant: if sign == 0x4000 { -mant } else { mant },
        scale: dscale,
    })
}

fn numeric_to_binary(d: Decimal) -> Vec<u8> {
    let neg = d.mant < 0;
    let mut m = d.mant.unsigned_abs();
    // Align the fraction to whole base-10000 groups.
    let pad = (4 - d.scale % 4) % 4;
    m *= 10u128.pow(pad);
    let frac_groups = (d.scale + pad) / 4;
    let mut groups = Vec::new();
    while m > 0 {
        groups.push((m % 10000) as i16);
        m /= 10000;
    }
    groups.reverse();
    let mut weight = groups.len() as i16 - 1 - frac_groups as i16;
    // Strip leading and trailing zero groups.
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let mut out = Vec::with_capacity(8 + 2 * groups.len());
    out.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if neg { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&(d.scale as u16).to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_round_trips() {
        for s in [
            "0",
            "1",
            "-1",
            "12345.6789",
            "0.00012",
            "100000000",
            "-98765.4",
            "2.5000000000000000",
        ] {
            let d = Decimal::parse(s).unwrap();
            assert_eq!(numeric_from_binary(&numeric_to_binary(d)), Some(d), "{s}");
        }
        // NaN, Infinity and -Infinity (no digits, a special sign) are not read as 0.
        for sign in [0xC000u16, 0xD000, 0xF000] {
            let mut b = vec![0, 0, 0, 0];
            b.extend_from_slice(&sign.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            assert_eq!(numeric_from_binary(&b), None, "{sign:x}");
        }
    }

    #[test]
    fn decodes_text_and_binary() {
        assert_eq!(decode(oid::INT4, 0, Some(b"-42")), Ok(Value::Int(-42)));
        assert_eq!(decode(oid::INT4, 1, Some(&(-42i32).to_be_bytes())), Ok(Value::Int(-42)));
        assert_eq!(decode(oid::INT8, 1, Some(&7i64.to_be_bytes())), Ok(Value::Int(7)));
        assert_eq!(
            decode(oid::FLOAT8, 0, Some(b"NaN")).map(|v| matches!(v, Value::Float(f) if f.is_nan())),
            Ok(true)
        );
        assert_eq!(decode(oid::TEXT, 1, None), Ok(Value::Null));
        assert!(decode(600, 0, Some(b"(1,2)")).is_err());
        assert_eq!(
            encode(oid::INT8, 1, &Value::Int(5)).unwrap(),
            Some(5i64.to_be_bytes().to_vec())
        );
        assert_eq!(
            encode(oid::NUMERIC, 0, &Value::Num(Decimal::parse("2.50").unwrap())).unwrap(),
            Some(b"2.50".to_vec())
        );
    }
}
