//! Key conditions: the tables in scope with their aliases, the condition WHERE and ON put on the
//! shard key (without recursion over AND/OR chains, which input makes as long as it likes), and
//! the rule that sharded tables join on the key.

use super::*;

/// Tables in a FROM list with their aliases.
pub(super) struct Scope {
    /// alias or name → (table, rule)
    pub(super) by_alias: HashMap<String, (String, TableRule)>,
    /// Sharded tables' key columns: (alias, key).
    pub(super) keys: Vec<(String, String)>,
}

pub(super) fn scope(from: &[TableWithJoins], map: &ShardMap) -> Result<Scope, String> {
    let mut s = Scope {
        by_alias: HashMap::new(),
        keys: Vec::new(),
    };
    let mut add = |f: &TableFactor| -> Result<(), String> {
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let n = last_name(name);
                let a = alias.as_ref().map_or(n.clone(), |a| ident(&a.name));
                let rule = map.table(&n).cloned();
                if let Some(r) = rule {
                    if let TableRule::Sharded { key, .. } = &r {
                        s.keys.push((a.clone(), key.clone()));
                    }
                    s.by_alias.insert(a, (n, r));
                }
                Ok(())
            }
            TableFactor::NestedJoin { table_with_joins, .. } => {
                // Its tables and their join conditions are not looked into: refused rather than
                // taken for a join on the key.
                if tables(table_with_joins.as_ref(), map)
                    .0
                    .iter()
                    .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
                {
                    Err("joins in parentheses over sharded tables are not supported across shards; write the joins without parentheses".into())
                } else {
                    Ok(())
                }
            }
            TableFactor::Derived { subquery, .. } => {
                if tables(subquery.as_ref(), map)
                    .0
                    .iter()
                    .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
                {
                    Err("subqueries in FROM over sharded tables are not supported across shards".into())
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    };
    for t in from {
        add(&t.relation)?;
        for j in &t.joins {
            add(&j.relation)?;
        }
    }
    Ok(s)
}

impl Scope {
    /// The alias of the sharded table whose key column `e` is, if it is one.
    pub(super) fn key_of(&self, e: &Expr) -> Option<&str> {
        // A cast of the key is not the key: `k::int = 1` matches '01' too, on other shards.
        match strip_parens(e) {
            Expr::Identifier(i) => {
                let c = ident(i);
                let matching: Vec<&(String, String)> = self.keys.iter().filter(|(_, k)| *k == c).collect();
                match matching[..] {
                    [(a, _)] => Some(a),
                    // Several sharded tables have a column by this name: PostgreSQL itself would call it ambiguous.
                    _ => None,
                }
            }
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let a = ident(&parts[parts.len() - 2]);
                let c = ident(&parts[parts.len() - 1]);
                self.keys
                    .iter()
                    .find(|(al, k)| *al == a && *k == c)
                    .map(|(al, _)| al.as_str())
            }
            _ => None,
        }
    }
}

/// `e` without its parentheses (casts kept: a cast can change what equals what, or the order).
pub(super) fn strip_parens(mut e: &Expr) -> &Expr {
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

pub(super) fn strip(mut e: &Expr) -> &Expr {
    // A loop: cast chains (`x::int::text...`) are as deep as they are long.
    loop {
        match e {
            Expr::Nested(inner) => e = inner,
            Expr::Cast { expr, .. } => e = expr,
            other => return other,
        }
    }
}

/// The operands of a chain of `op` (`a OR b OR c`, which the parser nests to the left), in
/// order, without recursion: such chains are as deep as they are long.
pub(super) fn chain<'a>(mut e: &'a Expr, op: &BinaryOperator) -> Vec<&'a Expr> {
    let mut rights = Vec::new();
    loop {
        match strip(e) {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                rights.push(right.as_ref());
                e = left;
            }
            other => {
                rights.push(other);
                rights.reverse();
                return rights;
            }
        }
    }
}

/// A literal or parameter operand.
pub(super) fn operand(e: &Expr) -> Option<Operand> {
    match strip(e) {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Some(Operand::Lit(n.clone())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(Operand::Lit(s.clone())),
            Value::Placeholder(p) => p
                .strip_prefix('$')?
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .map(|n| Operand::Param(n - 1)),
            Value::Null => Some(Operand::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match strip(expr) {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(Operand::Lit(format!("-{n}"))),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The key condition an expression puts on rows, and key equalities between tables (joins).
pub(super) fn key_cond(e: &Expr, scope: &Scope, joins: &mut Vec<(String, String)>) -> KeyCond {
    match strip(e) {
        Expr::BinaryOp {
            op: BinaryOperator::And,
            ..
        } => KeyCond::And(
            chain(e, &BinaryOperator::And)
                .into_iter()
                .map(|t| key_cond(t, scope, joins))
                .collect(),
        ),
        Expr::BinaryOp {
            op: BinaryOperator::Or, ..
        } => {
            // Join equalities under OR do not hold for every row.
            let mut ignore = Vec::new();
            KeyCond::Or(
                chain(e, &BinaryOperator::Or)
                    .into_iter()
                    .map(|t| key_cond(t, scope, &mut ignore))
                    .collect(),
            )
        }
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => match (scope.key_of(left), scope.key_of(right)) {
            (Some(a), Some(b)) => {
                joins.push((a.to_owned(), b.to_owned()));
                KeyCond::All
            }
            (Some(_), None) => operand(right).map_or(KeyCond::All, |o| KeyCond::Values(vec![o])),
            (None, Some(_)) => operand(left).map_or(KeyCond::All, |o| KeyCond::Values(vec![o])),
            _ => KeyCond::All,
        },
        Expr::InList {
            expr,
            list,
            negated: false,
        } if scope.key_of(expr).is_some() => {
            let ops: Option<Vec<Operand>> = list.iter().map(operand).collect();
            ops.map_or(KeyCond::All, KeyCond::Values)
        }
        _ => KeyCond::All,
    }
}

/// Checks that every sharded table in scope is joined to the others on the key, and returns the
/// key condition of WHERE and the ON clauses.
pub(super) fn joined_cond(from: &[TableWithJoins], selection: Option<&Expr>, scope: &Scope) -> Result<KeyCond, String> {
    let mut joins = Vec::new();
    let mut conds = Vec::new();
    for t in from {
        for j in &t.joins {
            use sqlparser::ast::{JoinConstraint, JoinOperator as J};
            let c = match &j.join_operator {
                J::Join(c)
                | J::Inner(c)
                | J::Left(c)
                | J::LeftOuter(c)
                | J::Right(c)
                | J::RightOuter(c)
                | J::FullOuter(c)
                | J::Semi(c)
                | J::LeftSemi(c)
                | J::Anti(c)
                | J::LeftAnti(c) => Some(c),
                _ => None,
            };
            match c {
                Some(JoinConstraint::On(e)) => {
                    let inner = matches!(j.join_operator, J::Join(_) | J::Inner(_));
                    let c = key_cond(e, scope, &mut joins);
                    if inner {
                        conds.push(c);
                    }
                }
                Some(JoinConstraint::Using(cols)) => {
                    let cols: Vec<String> = cols.iter().map(last_name).collect();
                    // USING (key) joins every table having that key column.
                    if let TableFactor::Table { name, alias, .. } = &j.relation {
                        let a = alias.as_ref().map_or(last_name(name), |a| ident(&a.name));
                        if let Some((_, k)) = scope.keys.iter().find(|(al, _)| *al == a)
                            && cols.contains(k)
                        {
                            for (other, ok) in &scope.keys {
                                if ok == k && *other != a {
                                    joins.push((a.clone(), other.clone()));
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(w) = selection {
        conds.push(key_cond(w, scope, &mut joins));
    }
    // Every sharded table must be connected to the first by key equalities.
    if let Some((first, _)) = scope.keys.first() {
        let mut reached: BTreeSet<&str> = BTreeSet::from([first.as_str()]);
        loop {
            let before = reached.len();
            for (a, b) in &joins {
                if reached.contains(a.as_str()) || reached.contains(b.as_str()) {
                    reached.insert(a);
                    reached.insert(b);
                }
            }
            if reached.len() == before {
                break;
            }
        }
        if let Some((missing, _)) = scope.keys.iter().find(|(a, _)| !reached.contains(a.as_str())) {
            let t = |a: &str| scope.by_alias.get(a).map_or(a.to_owned(), |(n, _)| n.clone());
            return Err(format!(
                "the join of {} and {} is not on their shard keys, so matching rows may be on different shards; join on the shard key columns",
                t(first),
                t(missing)
            ));
        }
    }
    Ok(match conds.len() {
        0 => KeyCond::All,
        1 => conds.pop().unwrap_or(KeyCond::All),
        _ => KeyCond::And(conds),
    })
}

pub(super) fn no_sharded_subqueries(e: &impl Visit, map: &ShardMap, outer_tables: usize) -> Result<(), String> {
    // The visitor sees the outer FROM tables too: any more sharded ones come from subqueries.
    struct V<'a>(&'a ShardMap, usize);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            let _ = q;
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            if matches!(self.0.table(&last_name(r)), Some(TableRule::Sharded { .. })) {
                self.1 += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = V(map, 0);
    let _ = e.visit(&mut v);
    if v.1 > outer_tables {
        Err("subqueries over sharded tables are not supported; join co-located tables on the shard key instead".into())
    } else {
        Ok(())
    }
}

/// Whether an outer join keeps rows of tables that are not sharded (reference tables, functions,
/// subqueries: the same rows on every shard) beside a side with sharded tables: each shard then
/// returns those rows, NULL-extended where it holds no match, so a statement run on several shards
/// would return them several times. On one shard the answer is one database's.
pub(super) fn outer_join_keeps_unsharded_rows(from: &[TableWithJoins], map: &ShardMap) -> bool {
    let sharded = |f: &TableFactor| match f {
        TableFactor::Table { name, .. } => matches!(map.table(&last_name(name)), Some(TableRule::Sharded { .. })),
        // Whatever a nested join or subquery holds, it may carry sharded rows: not the case looked for.
        TableFactor::NestedJoin { .. } | TableFactor::Derived { .. } => true,
        _ => false,
    };
    from.iter().any(|t| {
        let mut left_sharded = sharded(&t.relation);
        for j in &t.joins {
            let right_sharded = sharded(&j.relation);
            use sqlparser::ast::JoinOperator;
            let (keeps_left, keeps_right) = match &j.join_operator {
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => (true, false),
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => (false, true),
                JoinOperator::FullOuter(_) => (true, true),
                JoinOperator::OuterApply => (true, false),
                _ => (false, false),
            };
            if (keeps_left && !left_sharded && right_sharded) || (keeps_right && !right_sharded && left_sharded) {
                return true;
            }
            left_sharded |= right_sharded;
        }
        false
    })
}
