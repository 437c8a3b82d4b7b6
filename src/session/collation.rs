//! Text order across shards. The merge compares text byte by byte, which is PostgreSQL's order
//! only under the C collation (or C.UTF-8, or an explicit `COLLATE "C"`). Under an ICU collation
//! (`icu:en-US`) ORDER BY and MIN/MAX of text are merged with ICU4X's collator for that locale:
//! text columns the merge orders are compared by their ICU sort key, ties broken by bytes, as
//! PostgreSQL breaks them for deterministic collations. Under a libc collation (`en_US.UTF-8`),
//! whose order is the C library's, and for HAVING comparing text by order, the statement is
//! refused with the way out, never answered in another order. Each shard's collation is read
//! once, the first time a merge needs it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use icu_collator::CollatorBorrowed;
use icu_collator::options::CollatorOptions;

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
    let icu = client_utf8 && icu(collation).is_some();
    let ordered_both_ways = m
        .order
        .iter()
        .any(|k| k.byte_order && m.order.iter().any(|o| o.col == k.col && !o.byte_order));
    let min_max_collated = m.sql.to_ascii_lowercase().contains("collate");
    let why = if m.order.iter().any(|k| !(k.byte_order && client_utf8) && text(k.col)) && (!icu || ordered_both_ways) {
        "ORDER BY on text"
    } else if m
        .cols
        .iter()
        .enumerate()
        .any(|(i, k)| matches!(k, ColKind::Min | ColKind::Max) && text(i))
        && (!icu || min_max_collated)
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

/// The columns of the shards' result that the merge must compare in the collation's order (text
/// ordered without `COLLATE "C"`, MIN/MAX of text), when that order is an ICU collator's.
pub(super) fn icu_columns(
    m: &Merge,
    fields: &[Field],
    collation: &str,
) -> Option<(&'static CollatorBorrowed<'static>, Vec<bool>)> {
    let collator = icu(collation)?;
    let mut cols = vec![false; fields.len()];
    for k in m.order.iter().filter(|k| !k.byte_order) {
        if let Some(c) = cols.get_mut(k.col) {
            *c = fields.get(k.col).is_some_and(collatable);
        }
    }
    for (i, k) in m.cols.iter().enumerate() {
        if matches!(k, ColKind::Min | ColKind::Max) && fields.get(i).is_some_and(collatable) {
            cols[i] = true;
        }
    }
    cols.contains(&true).then_some((collator, cols))
}

/// ICU4X's collator for an ICU collation reported as `icu:<language tag>` (PostgreSQL's
/// `daticulocale`), with the default strength as PostgreSQL opens it; `None` for other
/// collations and for tags with extensions (`-u-ks-level2` and the like), whose options would
/// have to be read as ICU reads them. Made once per tag.
pub(super) fn icu(collation: &str) -> Option<&'static CollatorBorrowed<'static>> {
    type Cache = Mutex<HashMap<String, Option<&'static CollatorBorrowed<'static>>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let tag = collation.strip_prefix("icu:")?;
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = cache.get(tag) {
        return *c;
    }
    let made = icu_locale_core::Locale::try_from_str(&tag.replace('_', "-"))
        .ok()
        .filter(|l| l.extensions.is_empty())
        .and_then(|l| CollatorBorrowed::try_new((&l).into(), CollatorOptions::default()).ok())
        // One collator per locale for the life of the process (a handful at most).
        .map(|c| &*Box::leak(Box::new(c)));
    cache.insert(tag.to_owned(), made);
    made
}

/// `text` as the merge compares it under `collator`: the ICU sort key, a zero byte, then the
/// text itself (PostgreSQL breaks ties of a deterministic collation by bytes).
pub(crate) fn icu_key(collator: &CollatorBorrowed<'static>, text: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(text.len() * 3 + 8);
    let Ok(()) = collator.write_sort_key_utf8_to(text, &mut key);
    key.push(0);
    key.extend_from_slice(text);
    key
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
        // An ICU locale: merged in ICU's order; in a non-UTF-8 client encoding, refused.
        assert!(refusal(&by_text, &fields, "icu:en-US", true).is_none());
        assert!(refusal(&by_text, &fields, "icu:en-US", false).is_some());
        assert!(refusal(&by_text, &fields, "icu:en-US-u-ks-level2", true).is_some());
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

    #[test]
    fn icu_keys_order_as_icu_then_by_bytes() {
        let c = icu("icu:en-US").expect("ICU4X knows en-US");
        let mut words = ["b", "B", "a", "A", "é", "e", "Z", "z", "ab", "a b", ""];
        words.sort_by_key(|w| icu_key(c, w.as_bytes()));
        assert_eq!(words, ["", "a", "A", "a b", "ab", "b", "B", "e", "é", "z", "Z"]);
        // No zero byte inside a sort key: the separator keeps a shorter key first.
        for w in words {
            let k = icu_key(c, w.as_bytes());
            let sep = k.iter().position(|b| *b == 0).unwrap();
            assert_eq!(&k[sep + 1..], w.as_bytes());
        }
        assert!(icu("icu:en_US").is_some());
        assert!(icu("en_US.UTF-8").is_none());
    }
}
