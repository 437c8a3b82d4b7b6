//! The schema step of a move: a table of the group that the target lacks (a shard added after
//! the tables were made) is created there from the source's catalog: columns with their types,
//! NOT NULL and defaults, primary key, unique and check constraints, and the other indexes.
//! Foreign keys are left out (what they point at may not be on the target), and so are defaults
//! drawing from a sequence (a sequence per shard would hand out the same numbers on every
//! shard: sharded tables take their keys from shardwire's IDs or the application).

use anyhow::{Context, Result};
use tokio_postgres::Client;

use super::sql::ident;

/// The `CREATE` statements that make `table` on another server as it is on `source`.
async fn definition(source: &Client, table: &str) -> Result<Vec<String>> {
    let name = ident(table);
    let columns = source
        .query(
            "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.attnotnull, \
               pg_get_expr(d.adbin, d.adrelid) \
             FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name],
        )
        .await
        .with_context(|| format!("reading {table}'s columns on the source"))?;
    let mut parts: Vec<String> = columns
        .iter()
        .map(|r| {
            let (col, ty, not_null, default): (String, String, bool, Option<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let mut c = format!("{col} {ty}");
            if let Some(d) = default.filter(|d| !d.contains("nextval(")) {
                c.push_str(&format!(" DEFAULT {d}"));
            }
            if not_null {
                c.push_str(" NOT NULL");
            }
            c
        })
        .collect();
    let constraints = source
        .query(
            "SELECT quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1::text::regclass AND contype IN ('p', 'u', 'c') ORDER BY contype, conname",
            &[&name],
        )
        .await?;
    parts.extend(
        constraints
            .iter()
            .map(|r| format!("CONSTRAINT {} {}", r.get::<_, String>(0), r.get::<_, String>(1))),
    );
    let mut out = vec![format!("CREATE TABLE IF NOT EXISTS {name} ({})", parts.join(", "))];
    let indexes = source
        .query(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = $1::text::regclass \
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            &[&name],
        )
        .await?;
    out.extend(
        indexes
            .iter()
            .map(|r| {
                r.get::<_, String>(0)
                    .replacen("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1)
            })
            .map(|s| s.replacen("CREATE UNIQUE INDEX", "CREATE UNIQUE INDEX IF NOT EXISTS", 1)),
    );
    Ok(out)
}

/// One lock on a server for the moves' own DDL there: two moves at once would otherwise race
/// in `CREATE TABLE IF NOT EXISTS` (PostgreSQL then fails one of them on a duplicate type).
const DDL_LOCK: &str = "SELECT pg_advisory_xact_lock(7230523505)";

/// Runs `ddl` on `c` in one transaction under the moves' DDL lock.
pub(super) async fn locked(c: &Client, ddl: &str) -> Result<()> {
    if let Err(e) = c.batch_execute(&format!("BEGIN; {DDL_LOCK}; {ddl}; COMMIT")).await {
        let _ = c.batch_execute("ROLLBACK").await;
        return Err(e.into());
    }
    Ok(())
}

/// Creates on `target` the tables of `tables` it lacks; the names of those it created.
pub(super) async fn ensure(
    source: &Client,
    target: &Client,
    tables: &[(String, String, String)],
) -> Result<Vec<String>> {
    let mut ddl = Vec::new();
    let mut created = Vec::new();
    for (t, _, _) in tables {
        let exists: bool = target
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&ident(t)])
            .await?
            .get(0);
        if !exists {
            ddl.extend(definition(source, t).await?);
            created.push(t.clone());
        }
    }
    if !ddl.is_empty() {
        // Another move may have made them meanwhile: its statements all say IF NOT EXISTS.
        locked(target, &ddl.join("; "))
            .await
            .with_context(|| format!("creating on the target: {}", ddl.join("; ")))?;
    }
    Ok(created)
}
