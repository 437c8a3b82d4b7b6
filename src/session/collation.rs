//! Text order across shards. The merge compares text byte by byte, which is PostgreSQL's order
//! only under the C collation (or C.UTF-8, or an explicit `COLLATE "C"`). Under another collation
//! (`en_US.UTF-8`, an ICU locale) a cross-shard ORDER BY, MIN/MAX or HAVING comparison of text
//! would come out in another order than one database gives: such a statement is refused with the
//! way out, never answered differently. Each shard's collation is read once, the first time a
//! merge needs it.

use super::Session;
use crate::analyze::shard::{CmpOp, ColKind, Having, Merge, Term};
use crate::backend::leg::Leg;
use crate::protocol::pg::oid;
use crate::protocol::pg::rows::Field;
use crate::shardmap::ShardId;

/// The database's collation, its provider named when it is not libc (`icu:en-US`,
/// `builtin:C.UTF-8`); columns in `to_jsonb` so the query runs before PostgreSQL 15 too.
const COLLATION_SQL: &str = "SELECT CASE coalesce(to_jsonb(d)->>'datlocprovider', 'c') \
     WHEN 'c' THEN d.datcollate \
     WHEN 'i' THEN 'icu:' || coalesce(to_jsonb(d)->>'daticulocale', to_jsonb(d)->>'datlocale', '') \
     ELSE 'builtin:' || coalesce(to_jsonb(d)->>'datlocale', '') END \
     FROM pg_database d WHERE d.datname = current_database()";

/// Whether a collation orders text as its bytes (UTF-8 byte order is code point order).
pub(super) fn byte_order(collation: &str) -> bool {
    matches!(
        collation,
        "C" | "POSIX" | "C.UTF-8" | "C.utf8" | "builtin:C" | "builtin:C.UTF-8" | "builtin:PG_C_UTF8"
    )
}

/// Types whose order depends on the collation.
fn collatable(f: &Field) -> bool {
    matches!(f.type_oid, oid::TEXT | oid::VARCHAR | oid::BPCHAR)
}

/// Why merging `m` over the shards' columns `fields` would order or compare text otherwise than
/// the shards' `collation` does, if it would.
/// `client_utf8`: the rows come in UTF-8, whose byte order is the server's C order; in another
/// client encoding no text order can be merged from bytes.
pub(super) fn refusal(m: &Merge, fields: &[Field], collation: &str, client_utf8: bool) -> Option<String> {
    if byte_order(collation) && client_utf8 {
        return None;
    }
    let text = |col: usize| fields.get(col).is_some_and(collatable);
    let why = if m.order.iter().any(|k| !(k.byte_order && client_utf8) && text(k.col)) {
        "ORDER BY on text"
    } else if m
        .cols
        .iter()
        .enumerate()
        .any(|(i, k)| matches!(k, ColKind::Min | ColKind::Max) && text(i))
    {
        "min()/max() of text"
    } else if m.having.as_ref().is_some_and(|h| orders_text(h, &text)) {
        "HAVING comparing text by order"
    } else {
        return None;
    };
    if !client_utf8 {
        return Some(format!(
            "{why} across shards would be merged from text in the client's encoding, whose byte order is not the server's; \
             use client_encoding UTF8, or run the statement on one shard (a condition on the shard key)"
        ));
    }
    Some(format!(
        "{why} across shards would follow byte order, but the shards' collation is {collation}, whose order differs; \
         write COLLATE \"C\" after the ORDER BY expression to get byte order, run the statement on one shard (a condition on the shard key), \
         or use databases with the C collation"
    ))
}

/// Whether a HAVING condition compares a text column with <, <=, > or >=. Iterative: the
/// condition's depth is bounded by the analysis, but a stack costs nothing here.
fn orders_text(h: &Having, text: &dyn Fn(usize) -> bool) -> bool {
    let mut stack = vec![h];
    while let Some(h) = stack.pop() {
        match h {
            Having::And(a, b) | Having::Or(a, b) => {
                stack.push(a);
                stack.push(b);
            }
            Having::Not(a) => stack.push(a),
            Having::IsNull(..) => {}
            Having::Cmp(l, op, r) => {
                let col = |t: &Term| matches!(t, Term::Col(i) if text(*i));
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) && (col(l) || col(r)) {
                    return true;
                }
            }
        }
    }
    false
}

impl Session {
    /// The collation of the shards of a merge, read on a leg of each shard not asked before
    /// (before the statement is sent on it). The first shard that is not in byte order is the
    /// one reported; `None` if a shard could not say (the merge then goes on as before).
    pub(super) async fn shards_collation(&self, shards: &[ShardId], legs: &mut [Leg]) -> Option<String> {
        let mut found: Option<&String> = None;
        for (&s, leg) in shards.iter().zip(legs.iter_mut()) {
            let cluster = self.runtime.clusters.get(s)?;
            let c = match cluster.collation.get() {
                Some(c) => c,
                None => {
                    let c = leg.rows(COLLATION_SQL).await.ok()?.into_iter().next()?;
                    cluster.collation.get_or_init(|| c)
                }
            };
            if found.is_none_or(|f| byte_order(f)) {
                found = Some(c);
            }
        }
        found.cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::shard::{Operand, SortKey};

    fn field(type_oid: u32) -> Field {
        Field {
            name: bytes::Bytes::from_static(b"x"),
            table: 0,
            column: 0,
            type_oid,
            size: -1,
            modifier: -1,
            format: 0,
        }
    }

    fn merge(order: Vec<SortKey>, cols: Vec<ColKind>, having: Option<Having>) -> Merge {
        Merge {
            sql: String::new(),
            params: Vec::new(),
            visible: cols.len(),
            cols,
            grouped: having.is_some(),
            one_row: false,
            having,
            order,
            limit: None,
            offset: None,
            exprs: Vec::new(),
            distinct_on: 0,
            literal_shaped: false,
        }
    }

    fn key(col: usize, byte_order: bool) -> SortKey {
        SortKey {
            col,
            desc: false,
            nulls_first: false,
            byte_order,
        }
    }

    #[test]
    fn text_order_is_refused_only_where_the_collation_differs_from_bytes() {
        let fields = [field(oid::TEXT), field(oid::INT8)];
        let by_text = merge(vec![key(0, false)], vec![ColKind::Plain, ColKind::Plain], None);
        assert!(refusal(&by_text, &fields, "C", true).is_none());
        assert!(refusal(&by_text, &fields, "C.UTF-8", true).is_none());
        let why = refusal(&by_text, &fields, "en_US.UTF-8", true).unwrap();
        assert!(
            why.starts_with("ORDER BY on text") && why.contains("COLLATE \"C\""),
            "{why}"
        );
        assert!(refusal(&by_text, &fields, "icu:en-US", true).is_some());
        // COLLATE "C" in the statement, or a key that is not text: fine.
        let explicit = merge(vec![key(0, true)], vec![ColKind::Plain, ColKind::Plain], None);
        assert!(refusal(&explicit, &fields, "en_US.UTF-8", true).is_none());
        let by_int = merge(vec![key(1, false)], vec![ColKind::Plain, ColKind::Plain], None);
        assert!(refusal(&by_int, &fields, "en_US.UTF-8", true).is_none());
        // min() of text; HAVING comparing text by order (equality is fine).
        let min = merge(vec![], vec![ColKind::Min, ColKind::Plain], None);
        assert!(
            refusal(&min, &fields, "de_DE.UTF-8", true)
                .unwrap()
                .starts_with("min()/max()")
        );
        let cmp = |op| Some(Having::Cmp(Term::Col(0), op, Term::Value(Operand::Lit("m".into()))));
        let gt = merge(vec![], vec![ColKind::Plain, ColKind::Count], cmp(CmpOp::Gt));
        assert!(
            refusal(&gt, &fields, "en_US.UTF-8", true)
                .unwrap()
                .starts_with("HAVING")
        );
        let eq = merge(vec![], vec![ColKind::Plain, ColKind::Count], cmp(CmpOp::Eq));
        assert!(refusal(&eq, &fields, "en_US.UTF-8", true).is_none());
        // A LATIN9 client: even byte order under C is not the server's order of those bytes.
        assert!(
            refusal(&by_text, &fields, "C", false)
                .unwrap()
                .contains("client_encoding UTF8")
        );
        assert!(refusal(&explicit, &fields, "C", false).is_some());
        assert!(refusal(&by_int, &fields, "C", false).is_none());
    }
}
