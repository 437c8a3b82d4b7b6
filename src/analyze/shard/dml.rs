//! Shapes of SELECT, INSERT, UPDATE and DELETE on a table group.

use super::*;

/// An UPDATE's or DELETE's shape: `from` its tables (the written one first), `values` the SET
/// values and RETURNING, where a subquery over sharded tables must be one each shard answers
/// for its own rows.
pub(super) fn write_shape(
    from: &[TableWithJoins],
    selection: Option<&Expr>,
    values: &impl Visit,
    returning: &impl Visit,
    map: &ShardMap,
    group: usize,
) -> Shape {
    let result = scope(from, map).and_then(|s| {
        if let Some(w) = selection {
            no_sharded_subqueries(w, map, 0)?;
        }
        super::subquery::check_write_exprs(values, map, &s)?;
        super::subquery::check_write_exprs(returning, map, &s)?;
        joined_cond(from, selection, &s)
    });
    match result {
        Ok(cond) => Shape::Group {
            group,
            cond,
            write: true,
            merge: Err("not a query".into()),
        },
        Err(m) => Shape::Refuse(m),
    }
}

pub(super) fn insert_shape(stmt: &Statement, ins: &sqlparser::ast::Insert, map: &ShardMap, group: usize) -> Shape {
    let TableObject::TableName(n) = &ins.table else {
        return Shape::Refuse("INSERT into a table function".into());
    };
    let table = last_name(n);
    let Some(TableRule::Sharded { key, .. }) = map.table(&table) else {
        return Shape::Refuse(format!(
            "INSERT into {table} reads sharded tables: rows would come from several shards"
        ));
    };
    let Some(source) = &ins.source else {
        return Shape::Refuse(format!("INSERT into sharded table {table} without VALUES"));
    };
    if let Some(sqlparser::ast::OnInsert::OnConflict(sqlparser::ast::OnConflict {
        action: sqlparser::ast::OnConflictAction::DoUpdate(u),
        ..
    })) = &ins.on
        && u.assignments.iter().any(|a| match &a.target {
            sqlparser::ast::AssignmentTarget::ColumnName(c) => last_name(c) == *key,
            sqlparser::ast::AssignmentTarget::Tuple(t) => t.iter().any(|c| last_name(c) == *key),
        })
    {
        return Shape::Refuse(format!(
            "INSERT ... ON CONFLICT DO UPDATE changes shard key {table}.{key}: the row would have to move to another shard"
        ));
    }
    let SetExpr::Values(values) = source.body.as_ref() else {
        return Shape::Refuse(format!(
            "INSERT ... SELECT into sharded table {table}: rows cannot be routed by key before they exist; insert VALUES"
        ));
    };
    if ins.columns.is_empty() {
        return Shape::InsertNoColumns { table: n.to_string() };
    }
    if let Some(idc) = map.id_columns.get(&table) {
        let supplied = ins.columns.iter().any(|c| last_name(c) == idc.column);
        if supplied && idc.refuse_supplied {
            return Shape::Refuse(format!(
                "INSERT into {table} gives {}, which shardwire generates (supplied_ids = \"refuse\"); leave the column out",
                idc.column
            ));
        }
        if !supplied {
            let key_pos = if *key == idc.column {
                None
            } else {
                match ins.columns.iter().position(|c| last_name(c) == *key) {
                    Some(p) => Some(p),
                    None => {
                        return Shape::Refuse(format!(
                            "INSERT into sharded table {table} must give shard key {key} in every row"
                        ));
                    }
                }
            };
            if let Some(p) = key_pos
                && values
                    .rows
                    .iter()
                    .any(|r| matches!(r.content.get(p).and_then(operand), None | Some(Operand::Null)))
            {
                return Shape::Refuse(format!(
                    "every row inserted into {table} needs its shard key {key} as a literal or parameter"
                ));
            }
            let mut max_param = 0;
            let mut probe = stmt.clone();
            for p in renumber_params(&mut probe) {
                max_param = max_param.max(p + 1);
            }
            return Shape::InsertFill {
                group,
                id_column: idc.column.clone(),
                key_pos,
                rows: values.rows.len(),
                params: max_param,
                stmt: Arc::new(stmt.clone()),
            };
        }
    }
    let Some(pos) = ins.columns.iter().position(|c| last_name(c) == *key) else {
        return Shape::Refuse(format!(
            "INSERT into sharded table {table} must give its shard key {key} in every row"
        ));
    };
    let mut keys = Vec::new();
    for row in &values.rows {
        match row.content.get(pos).and_then(operand) {
            Some(Operand::Null) | None => {
                return Shape::Refuse(format!(
                    "every row inserted into {table} needs its shard key {key} as a literal or parameter"
                ));
            }
            Some(o) => keys.push(o),
        }
    }
    Shape::Insert {
        group,
        keys,
        stmt: Arc::new(stmt.clone()),
    }
}

pub(super) fn select_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    if q.with.is_some() {
        return super::cte::with_shape(q, map, group);
    }
    select_body_shape(q, map, group)
}

/// [`select_shape`] of a query's body, its WITH clause (if any) kept in the shards' statement:
/// `map` names the WITH queries as tables where they stand for one (co-located WITH queries).
pub(super) fn select_body_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return super::union::union_shape(q, map, group);
    };
    let s = match scope(&sel.from, map) {
        Ok(s) => s,
        Err(m) => return Shape::Refuse(m),
    };
    if let Err(m) = super::subquery::check(q, sel, map, &s) {
        return Shape::Refuse(m);
    }
    let cond = match joined_cond(&sel.from, sel.selection.as_ref(), &s) {
        Ok(c) => c,
        Err(m) => return Shape::Refuse(m),
    };
    let merge = if outer_join_keeps_unsharded_rows(&sel.from, map) {
        Err("an outer join keeping the rows of a reference table (or function, subquery) beside sharded tables \
             returns those rows from every shard; filter the sharded table by its shard key, or join the other way round"
            .to_string())
    } else {
        merge_plan(q, sel, &s)
    };
    Shape::Group {
        group,
        cond,
        write: false,
        merge: merge.map(Arc::new),
    }
}
