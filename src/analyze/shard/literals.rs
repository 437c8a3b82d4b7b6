//! A simple-protocol text's merge made from its literal-free analysis: every text of one shape
//! shares a cached [`Merge`], and the literals of this text are put back, as written, into the
//! statement each shard runs. The shards get what planning the exact text gives them, without
//! parsing it (the scatter path's largest cost after the round trips).

use super::order::push_limit;
use super::{Merge, Operand};
use crate::analyze::fingerprint::{LITERAL_PARAM_BASE, LiteralFree};

impl Merge {
    /// This merge, made from `lf.text` (the literals of `sql` as parameters), as the exact text's
    /// merge; `None` when only the exact text's analysis gives it: a literal shapes the result
    /// ([`Merge::literal_shaped`]), or the shards' statement has a parameter that is not one of
    /// the text's literals.
    pub fn with_literals(&self, sql: &str, lf: &LiteralFree) -> Option<Merge> {
        if self.literal_shaped {
            return None;
        }
        let literal = |p: usize| p.checked_sub(LITERAL_PARAM_BASE).filter(|&k| k < lf.values.len());
        let raw: Vec<&str> = self
            .params
            .iter()
            .map(|&p| sql.get(lf.spans[literal(p)?].clone()))
            .collect::<Option<_>>()?;
        // The LIMIT pushed down with parameters comes off, to be pushed again with the values as
        // the exact text's merge has it (LIMIT + OFFSET folded into one number).
        let mut body: &str = &self.sql;
        if !self.grouped {
            let mut suffix = String::new();
            push_limit(&mut suffix, &self.limit, &self.offset, &mut self.params.clone());
            body = body.strip_suffix(suffix.as_str())?;
        }
        let value = |op: &Option<Operand>| -> Option<Option<Operand>> {
            Some(match op {
                Some(Operand::Param(p)) => Some(Operand::Lit(lf.values[literal(*p)?].clone())),
                other => other.clone(),
            })
        };
        let (limit, offset) = (value(&self.limit)?, value(&self.offset)?);
        let mut text = put_back(body, &raw)?;
        if !self.grouped {
            push_limit(&mut text, &limit, &offset, &mut Vec::new());
        }
        Some(Merge {
            sql: text,
            params: Vec::new(),
            visible: self.visible,
            cols: self.cols.clone(),
            grouped: self.grouped,
            having: self.having.clone(),
            order: self.order.clone(),
            one_row: self.one_row,
            limit,
            offset,
            exprs: self.exprs.clone(),
            distinct_on: self.distinct_on,
            literal_shaped: false,
        })
    }
}

/// `sql` (as sqlparser prints a statement) with each parameter `$n` replaced by `values[n - 1]`.
/// Quoted strings and identifiers are copied as they are; `None` for a parameter without a value.
fn put_back(sql: &str, values: &[&str]) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len() + values.iter().map(|v| v.len()).sum::<usize>());
    let (mut i, mut last) = (0, 0);
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' if (i == 0 || !ident(b[i - 1])) && b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let end = b[i + 1..]
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .map_or(b.len(), |n| i + 1 + n);
                let n: usize = sql[i + 1..end].parse().ok()?;
                out.push_str(&sql[last..i]);
                out.push_str(values.get(n.checked_sub(1)?)?);
                (i, last) = (end, end);
            }
            _ => i += 1,
        }
    }
    out.push_str(&sql[last.min(sql.len())..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::put_back;

    #[test]
    fn parameters_are_replaced_outside_quotes_only() {
        assert_eq!(
            put_back(
                "SELECT a$1, \"$1\", '$1''$2' FROM t WHERE x = $1 AND y IN ($2, $1)",
                &["5", "'s'"]
            )
            .as_deref(),
            Some("SELECT a$1, \"$1\", '$1''$2' FROM t WHERE x = 5 AND y IN ('s', 5)")
        );
        assert_eq!(put_back("SELECT $3", &["1"]), None);
        assert_eq!(put_back("SELECT $0", &["1"]), None);
    }
}
