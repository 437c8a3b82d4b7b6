//! The merge spec of a SELECT that may run on several shards: the statement each shard runs (LIMIT
//! pushed down, AVG split into SUM and COUNT, hidden columns for ORDER BY and HAVING) and how
//! rows combine ([`Merge`]). Whatever cannot be merged as one database would answer is refused.

use super::*;

/// How one column of a shard's result combines across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColKind {
    /// A plain value: grouped by (when aggregating) or passed through.
    Plain,
    /// COUNT: summed.
    Count,
    /// SUM: summed.
    Sum,
    /// MIN.
    Min,
    /// MAX.
    Max,
    /// AVG, sent as SUM: divided by the COUNT in column `count_col`.
    Avg {
        /// Hidden column holding the count.
        count_col: usize,
    },
    /// COUNT(DISTINCT x), sent as `x` with the shards grouping by it as well: the merge counts
    /// the distinct non-null values over every shard's groups.
    CountDistinct,
    /// An expression over aggregates ([`Merge::exprs`] at this index): computed by the merge
    /// from hidden aggregate columns; the shards' own value only gives the column its type.
    Expr(usize),
}

/// One ORDER BY key over the merged result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Column index in the shard result.
    pub col: usize,
    /// DESC.
    pub desc: bool,
    /// NULLS FIRST (PostgreSQL's default: first for DESC, last for ASC).
    pub nulls_first: bool,
    /// The key says `COLLATE "C"`: its text is ordered byte by byte on the shards too, so the
    /// merge agrees with them whatever the database's collation.
    pub byte_order: bool,
}

/// How a SELECT run on several shards is merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    /// The statement each shard runs.
    pub sql: String,
    /// For each parameter of `sql` ($1, $2, ...), the client's parameter it carries.
    pub params: Vec<usize>,
    /// Columns the client sees; the rest are hidden helpers. With a wildcard, the count before
    /// it expands (see [`Merge::resolve`]).
    pub visible: usize,
    /// How each column of the shard result combines.
    pub cols: Vec<ColKind>,
    /// Rows are combined by the Plain columns (GROUP BY, aggregates without GROUP BY, DISTINCT).
    pub grouped: bool,
    /// HAVING, evaluated on the merged groups (the shards run without it).
    pub having: Option<Having>,
    /// ORDER BY of the merged rows.
    pub order: Vec<SortKey>,
    /// Aggregates without GROUP BY whose shards group anyway (COUNT(DISTINCT)): with no rows at
    /// all, the merge still answers the one row one database gives.
    pub one_row: bool,
    /// LIMIT applied after merging.
    pub limit: Option<Operand>,
    /// OFFSET applied after merging.
    pub offset: Option<Operand>,
    /// Expressions over aggregates, for [`ColKind::Expr`] columns.
    pub exprs: Vec<AggExpr>,
    /// `DISTINCT ON` over the first this many ORDER BY keys (0: none): each shard sends its first
    /// row per key, and the merge keeps the first of each key over every shard.
    pub distinct_on: usize,
    /// Made from a text whose literals were taken out as parameters
    /// ([`crate::analyze::fingerprint::parameterize`]), and one of them stands where a literal
    /// decides the result's shape (the select list, GROUP BY, ORDER BY, HAVING, DISTINCT: a
    /// column's type, an ordinal): only the exact text's merge is right.
    pub literal_shaped: bool,
}

impl Merge {
    /// The merge for a result of `total` columns: a wildcard expanded to more columns than the
    /// select list has items, which shifts the hidden columns (always the last ones, and plain).
    pub fn resolve(&self, total: usize) -> Result<std::borrow::Cow<'_, Merge>, String> {
        if total == self.cols.len() {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        if total < self.cols.len() {
            return Err(format!(
                "expected {} columns from each shard, got {total}",
                self.cols.len()
            ));
        }
        let extra = total - self.cols.len();
        let mut m = self.clone();
        m.visible += extra;
        m.cols = vec![ColKind::Plain; total];
        for k in &mut m.order {
            if k.col >= self.visible {
                k.col += extra;
            }
        }
        if m.order.iter().any(|k| k.col >= total) {
            return Err("ORDER BY position is not in the select list".into());
        }
        Ok(std::borrow::Cow::Owned(m))
    }
}

/// Renumbers the `$n` parameters of a statement from $1 in order of first use; returns, for each
/// new number, the index of the original parameter.
pub fn renumber_params<T: sqlparser::ast::VisitMut>(stmt: &mut T) -> Vec<usize> {
    struct Renumber(HashMap<usize, usize>, Vec<usize>);
    impl sqlparser::ast::VisitorMut for Renumber {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = e
                && let Value::Placeholder(p) = &mut v.value
                && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
                && n > 0
            {
                let next = self.1.len();
                let new = *self.0.entry(n - 1).or_insert(next);
                if new == next {
                    self.1.push(n - 1);
                }
                *p = format!("${}", new + 1);
            }
            ControlFlow::Continue(())
        }
    }
    let mut r = Renumber(HashMap::new(), Vec::new());
    let _ = stmt.visit(&mut r);
    r.1
}

pub(super) fn merge_plan(q: &Query, sel: &Select, scope: &Scope) -> Result<Merge, String> {
    let tables: Vec<String> = {
        let mut t: Vec<String> = scope.by_alias.values().map(|(n, _)| n.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    let refuse = |rule: &str| Err(format!("{rule} (tables {})", tables.join(", ")));
    let mut shard_sel = sel.clone();
    let mut cols: Vec<ColKind> = Vec::new();
    let mut hidden: Vec<(SelectItem, ColKind)> = Vec::new();
    let mut aliases: Vec<Option<String>> = Vec::new();
    let mut any_agg = false;
    let group_exprs: Vec<Expr> = match &sel.group_by {
        GroupByExpr::Expressions(e, m) if m.is_empty() => e.clone(),
        GroupByExpr::Expressions(..) => return refuse("GROUP BY modifiers across shards are not supported"),
        GroupByExpr::All(_) => return refuse("GROUP BY ALL across shards is not supported"),
    };
    // A GROUP BY on the shard key puts every group on one shard: the shards' rows are final.
    let group_on_key = group_exprs.iter().any(|e| scope.key_of(e).is_some());
    let mut having = None;
    // The arguments of COUNT(DISTINCT ...): the shards group by them too.
    let mut distinct_args: Vec<Expr> = Vec::new();
    let mut exprs: Vec<AggExpr> = Vec::new();
    let any_aggregate = sel.projection.iter().any(|i| !calls(i).0.is_empty()) || sel.having.is_some();
    if let Some(o) = &q.order_by
        && calls(o).1
        && !(windows_by_key(o, scope) && (group_on_key || (group_exprs.is_empty() && !any_aggregate)))
    {
        return refuse(WINDOWS);
    }
    let n = sel.projection.len();
    for (i, item) in sel.projection.iter().enumerate() {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(ident(alias))),
            _ => {
                if !group_exprs.is_empty() {
                    return refuse("SELECT * with GROUP BY across shards is not supported; name the columns");
                }
                // A wildcard expands to an unknown number of columns: only plain concatenation or
                // ORDER BY on columns added behind it works, which needs the count. Refuse ordering.
                aliases.push(None);
                cols.push(ColKind::Plain);
                continue;
            }
        };
        aliases.push(alias.or_else(|| match strip(expr) {
            Expr::Identifier(id) => Some(ident(id)),
            Expr::CompoundIdentifier(p) => p.last().map(ident),
            Expr::Function(f) => Some(func_name(f)),
            _ => None,
        }));
        let (aggs, window) = calls(expr);
        // A window partitioned by the shard key has each partition on one shard, which computes
        // it as one database would, unless rows are grouped across shards first.
        if window && !(windows_by_key(expr, scope) && (group_on_key || (group_exprs.is_empty() && !any_aggregate))) {
            return refuse(WINDOWS);
        }
        if aggs.is_empty() || group_on_key {
            any_agg |= !aggs.is_empty();
            cols.push(ColKind::Plain);
            continue;
        }
        any_agg = true;
        // A bare aggregate; min or max also under casts that keep the order (each shard's cast
        // value merges as the aggregate does). Any other cast applies to the merged value: an
        // expression over aggregates (each shard's `sum(x)::int` would round before adding).
        let bare = strip_parens(expr);
        let f = match (bare, strip(expr)) {
            (Expr::Function(f), _) | (Expr::Cast { .. }, Expr::Function(f))
                if f.over.is_none()
                    && is_aggregate_name(&func_name(f))
                    && (matches!(bare, Expr::Function(_))
                        || (matches!(func_name(f).as_str(), "min" | "max") && order_keeping_casts(expr))) =>
            {
                f
            }
            _ => {
                // The shards compute the expression over their rows (for its type); the merge
                // recomputes it from the aggregates, carried in hidden columns.
                let mut add = |f: &Function| hidden_aggregate(f, n, &mut hidden);
                match agg_expr(expr, &mut add) {
                    Ok(e) => {
                        // Computed on the shards only for its type and name: under a CASE that
                        // never runs it, so a shard whose own rows would make it fail (a count of
                        // zero divided by) cannot fail the statement.
                        let alias = match &sel.projection[i] {
                            SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                            _ => Ident::with_quote('"', column_name(expr).0),
                        };
                        shard_sel.projection[i] = SelectItem::ExprWithAlias {
                            expr: never_evaluated(expr),
                            alias,
                        };
                        cols.push(ColKind::Expr(exprs.len()));
                        exprs.push(e);
                        continue;
                    }
                    Err(why) => return refuse(&why),
                }
            }
        };

        let distinct = matches!(&f.args, FunctionArguments::List(l) if l.duplicate_treatment == Some(sqlparser::ast::DuplicateTreatment::Distinct));
        // FILTER restricts the rows each shard aggregates, which merge as unfiltered ones do.
        if distinct {
            let arg = match (&f.args, func_name(f).as_str()) {
                (FunctionArguments::List(l), "count") if l.args.len() == 1 && l.clauses.is_empty() => {
                    match &l.args[0] {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e.clone(),
                        _ => return refuse("count(DISTINCT ...) across shards takes one expression"),
                    }
                }
                _ => {
                    return refuse(
                        "aggregates with DISTINCT across shards other than count(DISTINCT x) are not supported unless grouped by the shard key",
                    );
                }
            };
            // count(DISTINCT x) FILTER (WHERE c) counts the distinct non-null values of
            // `CASE WHEN c THEN x END`.
            let arg = match &f.filter {
                Some(c) => match filtered(c, &arg) {
                    Some(e) => e,
                    None => return refuse("this count(DISTINCT ...) FILTER across shards is not supported"),
                },
                None => arg,
            };
            // Named as one database names the count: its alias, or `count`.
            let alias = match &sel.projection[i] {
                SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                _ => Ident::with_quote('"', "count"),
            };
            shard_sel.projection[i] = SelectItem::ExprWithAlias {
                expr: arg.clone(),
                alias,
            };
            if !distinct_args.iter().any(|d| strip(d) == strip(&arg)) {
                distinct_args.push(arg);
            }
            cols.push(ColKind::CountDistinct);
            continue;
        }
        let kind = match mergeable(f) {
            Ok(Mergeable::Kind(kind)) => kind,
            Ok(Mergeable::Avg { sum, count }) => {
                // The shards return the sum under the name the average has on one database: its
                // alias, or the function's name.
                let alias = match &sel.projection[i] {
                    SelectItem::ExprWithAlias { alias, .. } => alias.clone(),
                    _ => Ident::with_quote('"', func_name(f)),
                };
                shard_sel.projection[i] = SelectItem::ExprWithAlias { expr: *sum, alias };
                hidden.push((SelectItem::UnnamedExpr(*count), ColKind::Count));
                ColKind::Avg {
                    count_col: n + hidden.len() - 1,
                }
            }
            Err(why) => return refuse(&why),
        };
        if let FunctionArguments::List(l) = &f.args
            && l.args.len() != 1
            && !matches!(l.args.first(), Some(FunctionArg::Unnamed(FunctionArgExpr::Wildcard)))
        {
            return refuse("aggregates with several arguments across shards are not supported");
        }
        cols.push(kind);
    }
    // HAVING alone groups the whole table into one group, as an aggregate does.
    let grouped_merge = !group_on_key && (any_agg || !group_exprs.is_empty() || sel.having.is_some());
    if !distinct_args.is_empty() && group_exprs.is_empty() && cols.contains(&ColKind::Plain) {
        // Over no rows the merge makes the one row up: it knows no value for a constant.
        return refuse("constants beside count(DISTINCT ...) without GROUP BY across shards are not supported");
    }
    if grouped_merge {
        // Every GROUP BY expression must be a selected plain column, so groups can be matched.
        for g in &group_exprs {
            let found = sel.projection.iter().enumerate().any(|(i, item)| {
                cols[i] == ColKind::Plain
                    && match item {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                            strip_parens(e) == strip_parens(g)
                        }
                        _ => false,
                    }
                    || matches!(strip(g), Expr::Value(v) if matches!(&v.value, Value::Number(k, _) if k.parse::<usize>().ok() == Some(i + 1)))
            });
            if !found {
                return refuse(&format!("GROUP BY {g} across shards needs {g} in the select list"));
            }
        }
        if let Some(h) = &sel.having {
            if logical_terms(h) > MAX_HAVING_TERMS {
                return refuse(&format!(
                    "HAVING across shards: more than {MAX_HAVING_TERMS} conditions joined by AND/OR are not supported"
                ));
            }
            match having_expr(h, sel, &mut hidden, &mut exprs, n) {
                Ok(e) => having = Some(e),
                Err(why) => return refuse(&format!("HAVING across shards: {why}")),
            }
            shard_sel.having = None;
        }
        if cols
            .iter()
            .enumerate()
            .any(|(i, c)| *c == ColKind::Plain && !plain_is_grouped(&sel.projection[i], &group_exprs, i))
        {
            return refuse("a selected column that is neither aggregated nor in GROUP BY");
        }
    }
    // count(DISTINCT x) in HAVING only: counted from a hidden column of x, as in the select list.
    for (item, kind) in &hidden {
        if let (SelectItem::UnnamedExpr(arg), ColKind::CountDistinct) = (item, kind)
            && !distinct_args.iter().any(|d| strip(d) == strip(arg))
        {
            distinct_args.push(arg.clone());
        }
    }
    if !distinct_args.is_empty() {
        // Each shard gives one row per group and combination of distinct values; the other
        // aggregates (COUNT, SUM, MIN, MAX, AVG's parts) combine over those rows as over whole
        // groups, and each COUNT(DISTINCT) counts its own column's values over them.
        match &mut shard_sel.group_by {
            GroupByExpr::Expressions(e, _) => e.extend(distinct_args.iter().cloned()),
            GroupByExpr::All(_) => return refuse("GROUP BY ALL across shards is not supported"),
        }
    }
    let distinct = matches!(sel.distinct, Some(Distinct::Distinct));
    // ORDER BY: each key must be an output column (by position, alias or same expression), or is
    // added as a hidden column.
    let mut order = Vec::new();
    if let Some(ob) = &q.order_by {
        let OrderByKind::Expressions(exprs) = &ob.kind else {
            return refuse("ORDER BY ALL across shards is not supported");
        };
        for o in exprs {
            let (desc, nulls_first) = match direction(o) {
                Ok(d) => d,
                Err(why) => return refuse(&why),
            };
            let star = sel
                .projection
                .iter()
                .any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }));
            let col = match strip(&o.expr) {
                e @ Expr::Value(v) if matches!(&v.value, Value::Number(..)) => ordinal(e, n, star),
                // Items after a wildcard move when it expands: order by a hidden copy instead.
                _ if star => None,
                // A plain name is an output column's name before an input column's, as
                // PostgreSQL reads it (`SELECT a AS b, b AS a ... ORDER BY a` sorts by t.b).
                _ => match strip_parens(&o.expr) {
                    Expr::Identifier(id) => aliases.iter().position(|a| a.as_deref() == Some(ident(id).as_str())),
                    _ => None,
                }
                .or_else(|| {
                    sel.projection.iter().position(|item| match item {
                        SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => {
                            strip_parens(x) == strip_parens(&o.expr)
                        }
                        _ => false,
                    })
                }),
            };
            let col = match col {
                Some(c) => c,
                None if grouped_merge || distinct => {
                    return refuse(&format!(
                        "ORDER BY {} across shards must name a selected column when grouping",
                        o.expr
                    ));
                }
                None => {
                    hidden.push((SelectItem::UnnamedExpr(o.expr.clone()), ColKind::Plain));
                    n + hidden.len() - 1
                }
            };
            if col < cols.len()
                && cols[col] != ColKind::Plain
                && !matches!(
                    cols[col],
                    ColKind::Count
                        | ColKind::Sum
                        | ColKind::Min
                        | ColKind::Max
                        | ColKind::Avg { .. }
                        | ColKind::CountDistinct
                        | ColKind::Expr(_)
                )
            {
                return refuse("ORDER BY on this column across shards is not supported");
            }
            let selected = sel.projection.get(col).and_then(|item| match item {
                SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => Some(x),
                _ => None,
            });
            let byte_order = byte_collation(&o.expr) || selected.is_some_and(byte_collation);
            order.push(SortKey {
                col,
                desc,
                nulls_first,
                byte_order,
            });
        }
    }
    if sel
        .projection
        .iter()
        .any(|i| !matches!(i, SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }))
        && (grouped_merge || distinct)
    {
        return refuse("SELECT * with DISTINCT or aggregates across shards: name the columns");
    }
    cols.extend(hidden.iter().map(|(_, k)| *k));
    let (limit, offset) = match window_of(q) {
        Ok(w) => w,
        Err(why) => return refuse(&why),
    };
    // The statement each shard runs: hidden columns appended, no OFFSET, LIMIT raised by OFFSET
    // (rows before the offset may come from any shard). With merging by group, every group row is
    // needed, so no LIMIT at all.
    shard_sel.projection.extend(hidden.into_iter().map(|(i, _)| i));
    let mut shard_q = q.clone();
    *shard_q.body = SetExpr::Select(Box::new(shard_sel));
    shard_q.limit_clause = None;
    shard_q.fetch = None;
    // The shard statement may use fewer parameters than the client's (HAVING stays behind):
    // number the ones it keeps from $1.
    let mut params = renumber_params(&mut shard_q);
    let mut sql = shard_q.to_string();
    if !grouped_merge && !distinct {
        push_limit(&mut sql, &limit, &offset, &mut params);
    }
    let distinct_on = match distinct_on_keys(q, sel, grouped_merge) {
        Ok(n) => n,
        Err(why) => return refuse(why),
    };
    Ok(Merge {
        sql,
        params,
        visible: n,
        cols,
        grouped: grouped_merge || distinct,
        one_row: !distinct_args.is_empty() && group_exprs.is_empty(),
        having,
        order,
        limit,
        offset,
        exprs,
        distinct_on,
        literal_shaped: literal_in(&sel.projection)
            || literal_in(&sel.group_by)
            || literal_in(&q.order_by)
            || literal_in(&sel.having)
            || literal_in(&sel.distinct),
    })
}
