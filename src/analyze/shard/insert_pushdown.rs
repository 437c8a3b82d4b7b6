//! INSERT ... SELECT whose source is co-located with its target: the source keeps each shard
//! key's rows together (a query of the target's group, see `cte::key_local`) and gives the
//! target's key column the source's key, so every row it makes belongs on the shard it is made
//! on. Each shard then runs the whole statement for its own rows, as one write on several shards
//! (two-phase commit), instead of the rows passing through shardwire.

use super::cte::{KeyColumn, key_local};
use super::*;

/// The shape of the INSERT `ins` when it can run on each shard for its own rows; `None` when
/// its rows must be read first (or it is no INSERT ... SELECT into a sharded table).
pub(super) fn shape(ins: &sqlparser::ast::Insert, map: &ShardMap) -> Option<Shape> {
    let TableObject::TableName(n) = &ins.table else {
        return None;
    };
    let table = last_name(n);
    let Some(TableRule::Sharded { group, key }) = map.table(&table) else {
        return None;
    };
    let source = ins.source.as_ref()?;
    let SetExpr::Select(sel) = source.body.as_ref() else {
        return None;
    };
    if source.with.is_some() || source.order_by.is_some() {
        return None;
    }
    // IDs shardwire generates are made per row it sees.
    if let Some(idc) = map.id_columns.get(&table)
        && !ins.columns.iter().any(|c| last_name(c) == idc.column)
    {
        return None;
    }
    let lone_star = matches!(&sel.projection[..], [SelectItem::Wildcard(_)]);
    let aligned = if ins.columns.is_empty() {
        // `INSERT INTO t SELECT * FROM t ...`: the same columns in the same order.
        lone_star
            && matches!(&sel.from[..], [f] if f.joins.is_empty() && matches!(&f.relation, TableFactor::Table { name, .. } if last_name(name) == table))
    } else {
        let target = ins.columns.iter().position(|c| last_name(c) == *key)?;
        !lone_star && matches!(key_local(source, map, *group)?, KeyColumn::At(i, _) if i == target)
    };
    if !aligned || key_local(source, map, *group).is_none() {
        return None;
    }
    match select_shape(source, map, *group) {
        Shape::Group { cond, .. } => Some(Shape::Group {
            group: *group,
            cond,
            write: true,
            merge: Err("not a query".into()),
        }),
        _ => None,
    }
}
