//! `COPY (SELECT ...) TO STDOUT` over a group's tables: the SELECT's key conditions decide the
//! shards, and only a selection of plain rows may be copied from several (each shard's output
//! concatenated, as `COPY table TO STDOUT` is).

use super::*;

/// The shape of `COPY (SELECT ...) TO STDOUT` when the SELECT reads sharded tables.
pub(super) fn copy_query(stmt: &Statement, map: &ShardMap) -> Option<Shape> {
    let Statement::Copy {
        source: sqlparser::ast::CopySource::Query(q),
        to: true,
        target: sqlparser::ast::CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = stmt
    else {
        return None;
    };
    let (named, unsharded) = tables(q.as_ref(), map);
    let groups: BTreeSet<usize> = named
        .iter()
        .filter_map(|(_, r)| match r {
            TableRule::Sharded { group, .. } => Some(*group),
            _ => None,
        })
        .collect();
    let group = *groups.iter().next()?;
    if groups.len() > 1 || unsharded {
        return Some(Shape::Refuse(
            "COPY (SELECT ...) over tables of different groups or tables the shard map does not name is not supported"
                .into(),
        ));
    }
    let (header, binary) = match copy_out_format(options, legacy_options) {
        Ok(f) => f,
        Err(m) => return Some(Shape::Refuse(format!("COPY (SELECT ...) TO STDOUT: {m}"))),
    };
    Some(match select_shape(q, map, group) {
        Shape::Group {
            cond,
            merge,
            write: false,
            ..
        } => Shape::CopyQuery {
            group,
            cond,
            header,
            binary,
            plain: merge.as_ref().is_ok_and(|m| {
                m.cols.iter().all(|k| *k == ColKind::Plain)
                    && !m.grouped
                    && m.order.is_empty()
                    && m.limit.is_none()
                    && m.offset.is_none()
                    && m.distinct_on == 0
            }),
        },
        Shape::Refuse(m) => Shape::Refuse(m),
        _ => Shape::Refuse("this COPY (SELECT ...) over sharded tables is not supported".into()),
    })
}
