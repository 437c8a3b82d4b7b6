//! The window and order of a query merged across shards: LIMIT and OFFSET (applied after merging,
//! pushed down to the shards as LIMIT + OFFSET), and the parts of an ORDER BY key every merge
//! reads the same way (direction, NULLS, output-column ordinals, byte-order collations).

use super::*;

/// An ORDER BY key's direction and NULLS placement (PostgreSQL's default: NULLS FIRST for DESC).
pub(super) fn direction(o: &sqlparser::ast::OrderByExpr) -> Result<(bool, bool), String> {
    if matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Using(_))) {
        return Err("ORDER BY ... USING across shards is not supported".into());
    }
    let desc = matches!(o.options.sort, Some(sqlparser::ast::OrderBySort::Desc));
    Ok((desc, o.options.nulls_first.unwrap_or(desc)))
}

/// `ORDER BY k` naming output column k (from 1) of `n`: its index. With a wildcard the ordinal
/// counts expanded columns, checked when rows arrive.
pub(super) fn ordinal(e: &Expr, n: usize, star: bool) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(k, _) => k
                .parse::<usize>()
                .ok()
                .filter(|&k| k >= 1 && (star || k <= n))
                .map(|k| k - 1),
            _ => None,
        },
        _ => None,
    }
}

/// LIMIT and OFFSET of a query run on several shards (applied after merging): numbers or
/// parameters.
pub(super) fn window_of(q: &Query) -> Result<(Option<Operand>, Option<Operand>), String> {
    let value = |e: Option<&Expr>, what: &str| match e.map(operand) {
        None | Some(Some(Operand::Null)) => Ok(None),
        Some(Some(o)) => Ok(Some(o)),
        Some(None) => Err(format!("{what} across shards must be a number or a parameter")),
    };
    let (mut limit, offset) = match &q.limit_clause {
        None => (None, None),
        Some(LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) if limit_by.is_empty() => (
            value(limit.as_ref(), "LIMIT")?,
            value(offset.as_ref().map(|o| &o.value), "OFFSET")?,
        ),
        Some(_) => return Err("this LIMIT form across shards is not supported".into()),
    };
    // FETCH FIRST n ROWS ONLY is LIMIT n (one row when n is left out).
    if let Some(f) = &q.fetch {
        if f.with_ties || f.percent {
            return Err("FETCH FIRST ... WITH TIES or PERCENT across shards is not supported; use LIMIT".into());
        }
        if limit.is_some() {
            return Err("LIMIT and FETCH FIRST together are not supported".into());
        }
        limit = match &f.quantity {
            None => Some(Operand::Lit("1".into())),
            Some(e) => value(Some(e), "FETCH FIRST")?,
        };
    }
    Ok((limit, offset))
}

/// The shards' LIMIT: the client's LIMIT raised by its OFFSET (the rows before the offset may
/// come from any shard); `params` (the shard statement's parameters, as the client's indexes)
/// gains those it uses.
pub(super) fn push_limit(sql: &mut String, limit: &Option<Operand>, offset: &Option<Operand>, params: &mut Vec<usize>) {
    let mut param = |p: usize| {
        params.iter().position(|&x| x == p).unwrap_or_else(|| {
            params.push(p);
            params.len() - 1
        })
    };
    let negative = |op: &Option<Operand>| matches!(op, Some(Operand::Lit(x)) if x.parse::<i64>().is_ok_and(|v| v < 0));
    if negative(limit) || negative(offset) {
        // As written: each shard then refuses it as one database does ("OFFSET must not be
        // negative"), where a sum would have run it.
        for (word, op) in [("LIMIT", limit), ("OFFSET", offset)] {
            if let Some(Operand::Lit(x)) = op {
                sql.push_str(&format!(" {word} {x}"));
            }
        }
        return;
    }
    match (limit, offset) {
        (Some(Operand::Lit(l)), None) => sql.push_str(&format!(" LIMIT {l}")),
        (Some(Operand::Lit(l)), Some(Operand::Lit(o))) => {
            if let (Ok(l), Ok(o)) = (l.parse::<i64>(), o.parse::<i64>()) {
                sql.push_str(&format!(" LIMIT {}", l.saturating_add(o)));
            }
        }
        (Some(Operand::Param(l)), None) => sql.push_str(&format!(" LIMIT ${}", param(*l) + 1)),
        (Some(Operand::Param(l)), Some(o)) => {
            let l = param(*l) + 1;
            let o = match o {
                Operand::Param(p) => format!("${}", param(*p) + 1),
                Operand::Lit(x) => x.clone(),
                Operand::Null => "0".into(),
            };
            sql.push_str(&format!(" LIMIT (${l} + {o})"));
        }
        _ => {}
    }
}

/// `expr COLLATE "C"` (or "POSIX"): text compared byte by byte, whatever the database's collation.
pub(super) fn byte_collation(e: &Expr) -> bool {
    matches!(e, Expr::Collate { collation, .. } if matches!(last_name(collation).to_ascii_lowercase().as_str(), "c" | "posix"))
}
