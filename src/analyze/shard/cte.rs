//! WITH queries over sharded tables. Each WITH query and the main query need the shards their own
//! key conditions allow; the statement runs where all of them meet, which must be one shard
//! (a tenant's or a user's rows, filtered by the key in every part). A WITH query's result would
//! otherwise need rows of other shards, so anything wider is refused. WITH queries nest one level
//! (a WITH inside a WITH query is refused), so the analysis does not recurse as deep as the input.

use super::*;

/// The names a query's WITH clause defines.
pub(super) fn names(q: &Query) -> impl Iterator<Item = String> + '_ {
    q.with
        .iter()
        .flat_map(|w| w.cte_tables.iter().map(|c| ident(&c.alias.name)))
}

/// A WITH query named like a table of the shard map: which of the two a name means depends on
/// where it stands, so such statements are refused rather than guessed.
pub(super) fn shadows_a_table(stmt: &Statement, map: &ShardMap) -> Option<String> {
    struct V<'a>(&'a ShardMap, Option<String>);
    impl Visitor for V<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            match names(q).find(|n| self.0.table(n).is_some()) {
                Some(n) => {
                    self.1 = Some(format!(
                        "WITH query {n} has the name of a table of the shard map; give it another name"
                    ));
                    ControlFlow::Break(())
                }
                None => ControlFlow::Continue(()),
            }
        }
    }
    let mut v = V(map, None);
    let _ = stmt.visit(&mut v);
    v.1
}

fn has_sharded(q: &Query, map: &ShardMap) -> bool {
    tables(q, map)
        .0
        .iter()
        .any(|(_, r)| matches!(r, TableRule::Sharded { .. }))
}

/// The shape of a query with a WITH clause over group `group`.
pub(super) fn with_shape(q: &Query, map: &ShardMap, group: usize) -> Shape {
    let Some(with) = &q.with else {
        return select_shape(q, map, group);
    };
    let mut conds = Vec::new();
    for cte in &with.cte_tables {
        let name = ident(&cte.alias.name);
        let body = cte.query.as_ref();
        if body.with.is_some() {
            return Shape::Refuse(format!(
                "WITH query {name} has a WITH clause of its own; over sharded tables only one level is supported"
            ));
        }
        if !matches!(body.body.as_ref(), SetExpr::Select(_) | SetExpr::SetOperation { .. }) {
            return Shape::Refuse(format!(
                "WITH query {name} is not a SELECT: data-modifying WITH queries on sharded tables are not supported; \
                 run the statements one at a time"
            ));
        }
        if !has_sharded(body, map) {
            // Reference tables only: every shard has them.
            continue;
        }
        match select_shape(body, map, group) {
            Shape::Group { cond, .. } => conds.push(cond),
            Shape::Refuse(m) => return Shape::Refuse(format!("in WITH query {name}: {m}")),
            _ => return Shape::Refuse(format!("WITH query {name} over sharded tables is not supported")),
        }
    }
    let main = Query {
        with: None,
        ..q.clone()
    };
    if has_sharded(&main, map) {
        match select_shape(&main, map, group) {
            Shape::Group { cond, .. } => conds.push(cond),
            refused @ Shape::Refuse(_) => return refused,
            _ => return Shape::Refuse("this WITH query over sharded tables is not supported".into()),
        }
    }
    let cond = if conds.len() == 1 {
        conds.pop().unwrap_or(KeyCond::All)
    } else {
        // Every part runs where the statement runs: it needs each part's shards.
        KeyCond::Or(conds)
    };
    Shape::Group {
        group,
        cond,
        write: false,
        merge: Err(
            "a query with WITH over sharded tables runs on one shard only: filter the WITH queries and the main query \
             by the shard key so that they all meet on one shard"
                .into(),
        ),
    }
}
