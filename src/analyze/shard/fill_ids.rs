//! The ID-filling rewrite: an INSERT that leaves out its table's ID column gets the column and
//! generated IDs (as literals or as new parameters), and each row's key is then known.

use super::*;

/// How generated IDs enter a statement.
#[derive(Debug, Clone, Copy)]
pub enum IdValues<'a> {
    /// As literals (simple protocol).
    Literals(&'a [u64]),
    /// As parameters from `$first+1` on (extended protocol; the values are bound).
    Params {
        /// Index of the first new parameter.
        first: usize,
    },
}

/// An INSERT with the ID column added and filled: the statement and each row's key.
pub fn fill_ids(shape: &Shape, ids: IdValues) -> Option<(Statement, Vec<Operand>)> {
    let Shape::InsertFill {
        id_column,
        key_pos,
        stmt,
        ..
    } = shape
    else {
        return None;
    };
    let mut s = stmt.as_ref().clone();
    let Statement::Insert(ins) = &mut s else { return None };
    ins.columns.push(ObjectName(vec![ObjectNamePart::Identifier(Ident::new(
        id_column.clone(),
    ))]));
    let SetExpr::Values(values) = ins.source.as_mut()?.body.as_mut() else {
        return None;
    };
    let mut keys = Vec::with_capacity(values.rows.len());
    for (i, row) in values.rows.iter_mut().enumerate() {
        let (value, operand_of_id) = match ids {
            IdValues::Literals(v) => {
                let id = *v.get(i)?;
                (Value::Number(id.to_string(), false), Operand::Lit(id.to_string()))
            }
            IdValues::Params { first } => (
                Value::Placeholder(format!("${}", first + i + 1)),
                Operand::Param(first + i),
            ),
        };
        keys.push(match key_pos {
            None => operand_of_id,
            Some(p) => operand(row.content.get(*p)?)?,
        });
        row.content.push(Expr::Value(value.into()));
    }
    Some((s, keys))
}
