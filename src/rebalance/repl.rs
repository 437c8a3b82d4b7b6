//! PostgreSQL's own logical replication, as a partition move uses it: a publication of the
//! partition's rows (a row filter with the partition hash, `sql::in_partition`) on the side that
//! serves, a subscription on the other that copies them from a consistent snapshot and then
//! applies every later change, and a barrier row that says when everything committed before it
//! has been applied. Built-in publications and subscriptions rather than a decoder of our own:
//! they copy, catch up and order changes exactly as PostgreSQL does, and need no extension.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::Client;

use super::sql::ident;
use crate::config::NodeConfig;

/// On both sides (made when a move starts): one row per replication stream, bumped to mark a
/// point in it.
pub const BARRIER_DDL: &str =
    "CREATE TABLE IF NOT EXISTS shardwire_move_barrier (name text PRIMARY KEY, token bigint NOT NULL)";

/// The names a move's two streams use for publication, subscription and slot: `forward`
/// (source to target, before the switch) or `back` (target to source, after it, until the move
/// completes or is rolled back).
pub fn stream_name(direction: &str, group: &str, partition: u32) -> String {
    let g: String = group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("shardwire_{direction}_{g}_{partition}")
}

/// A libpq connection string for a subscription to reach `node` (values quoted as libpq wants).
pub fn conninfo(node: &NodeConfig) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!(
        "host={} port={} user={} dbname={} application_name={}",
        q(&node.host),
        node.port,
        q(&node.user),
        q(&node.dbname),
        q("shardwire-move")
    );
    if let Some(p) = &node.password {
        s.push_str(&format!(" password={}", q(p)));
    }
    s
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Why logical replication cannot carry a move between these two servers, if it cannot:
/// `wal_level` below logical, a login without the rights a subscription needs, or a table whose
/// replica identity does not include the shard key (PostgreSQL would then refuse the table's
/// UPDATEs and DELETEs while the row-filtered publication exists: clients would see errors).
pub async fn unsupported(
    source: &Client,
    target: &Client,
    tables: &[(String, String, String)],
) -> Result<Option<String>> {
    for (side, c) in [("source", source), ("target", target)] {
        let r = c
            .query_one(
                "SELECT current_setting('wal_level'), (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                 current_setting('server_version_num')::int",
                &[],
            )
            .await?;
        let (wal, superuser, version): (String, bool, i32) = (r.get(0), r.get(1), r.get(2));
        if wal != "logical" {
            return Ok(Some(format!("the {side} has wal_level = {wal} (logical is needed)")));
        }
        if !superuser {
            return Ok(Some(format!(
                "the {side}'s login is not a superuser (needed for subscriptions before PostgreSQL 16)"
            )));
        }
        if version < 150000 {
            return Ok(Some(format!(
                "the {side} runs PostgreSQL {version}: row filters need 15 or later"
            )));
        }
    }
    let mut pairs = Vec::new();
    for side in [("source", source), ("target", target)] {
        pairs.extend(tables.iter().map(|t| (side, t)));
    }
    for ((side, c), (t, _, key)) in pairs {
        let r = c
            .query_one(
                "SELECT c.relreplident::text, coalesce((SELECT bool_or(a.attname = $2) FROM pg_index i \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                   WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))), false) \
                 FROM pg_class c WHERE c.oid = $1::text::regclass",
                &[&ident(t), key],
            )
            .await
            .with_context(|| format!("reading the replica identity of {t} on the {side}"))?;
        let (kind, has_key): (String, bool) = (r.get(0), r.get(1));
        if kind != "f" && !has_key {
            return Ok(Some(format!(
                "table {t}'s replica identity on the {side} does not include its shard key {key} (give it a primary key that does)"
            )));
        }
    }
    Ok(None)
}

/// On the serving side: a publication of the partition's rows of every table (inserts, updates,
/// deletes: a TRUNCATE would empty the other side's whole table) and of the stream's barrier row.
pub async fn create_publication(c: &Client, name: &str, tables: &[(String, String, String)]) -> Result<()> {
    c.execute("DELETE FROM shardwire_move_barrier WHERE name = $1", &[&name])
        .await?;
    drop_publication(c, name).await?;
    let mut list: Vec<String> = tables
        .iter()
        .map(|(t, filter, _)| format!("{} WHERE ({filter})", ident(t)))
        .collect();
    list.push(format!("shardwire_move_barrier WHERE (name = {})", literal(name)));
    c.batch_execute(&format!(
        "CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert, update, delete')",
        ident(name),
        list.join(", ")
    ))
    .await
    .context("creating the publication")?;
    Ok(())
}

/// Drops a publication if it exists. Its tables leave it first, in a transaction of their own:
/// dropping a row-filtered publication outright while other sessions write its tables can fail
/// one of their statements on PostgreSQL 15 ("cache lookup failed for publication"), since a
/// session rebuilding a table's publication list may still read the publication's row.
pub async fn drop_publication(c: &Client, name: &str) -> Result<()> {
    let tables: Vec<String> = c
        .query(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !tables.is_empty() {
        c.batch_execute(&format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            ident(name),
            tables.join(", ")
        ))
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(name)))
        .await?;
    Ok(())
}

/// On the other side: a subscription to `publisher`'s publication `name`. With `copy`, it copies
/// the rows from a snapshot first and makes its own slot; without, it streams from the slot
/// `name` already made (see [`create_slot`]).
pub async fn create_subscription(c: &Client, name: &str, publisher: &NodeConfig, copy: bool) -> Result<()> {
    c.execute("DELETE FROM shardwire_move_barrier WHERE name = $1", &[&name])
        .await?;
    // Commits flushed at once, so the publisher learns promptly how far the subscriber is.
    let with = if copy {
        "copy_data = true, synchronous_commit = 'on'".to_owned()
    } else {
        format!(
            "copy_data = false, create_slot = false, slot_name = {}, synchronous_commit = 'on'",
            literal(name)
        )
    };
    c.batch_execute(&format!(
        "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH ({with})",
        ident(name),
        literal(&conninfo(publisher)),
        ident(name)
    ))
    .await
    .context("creating the subscription")?;
    Ok(())
}

/// Whether subscription `name` exists on `c`.
pub async fn has_subscription(c: &Client, name: &str) -> Result<bool> {
    Ok(c
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await?
        .is_some())
}

/// Drops subscription `name` (and its slot on the publisher) if it exists.
pub async fn drop_subscription(c: &Client, name: &str) -> Result<()> {
    if has_subscription(c, name).await? {
        c.batch_execute(&format!("DROP SUBSCRIPTION {}", ident(name))).await?;
    }
    Ok(())
}

/// A logical slot `name` on `c` (the future publisher of the way back), unless it exists.
pub async fn create_slot(c: &Client, name: &str) -> Result<()> {
    let exists = c
        .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        c.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&name])
            .await
            .context("creating the slot for the way back")?;
    }
    Ok(())
}

/// Moves slot `name` past everything before `lsn`: those changes are already on the other side.
pub async fn advance_slot(c: &Client, name: &str, lsn: &str) -> Result<()> {
    let behind: Option<bool> = c
        .query_opt(
            "SELECT confirmed_flush_lsn < $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&name, &lsn],
        )
        .await?
        .map(|r| r.get(0));
    match behind {
        None => bail!("slot {name} is gone: the way back cannot start where it must"),
        Some(true) => {
            c.execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&name, &lsn],
            )
            .await?;
        }
        Some(false) => {}
    }
    Ok(())
}

/// Drops slot `name` on `c` if it exists and nothing uses it.
pub async fn drop_slot(c: &Client, name: &str) -> Result<()> {
    c.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        &[&name],
    )
    .await?;
    Ok(())
}

/// Copy progress of subscription `name`, per table of `tables` (in that order): whether its
/// copy is done, and the rows its running copy has written so far.
pub async fn sync_state(c: &Client, name: &str, tables: &[(String, String, String)]) -> Result<Vec<(bool, i64)>> {
    let mut out = Vec::with_capacity(tables.len());
    for (t, _, _) in tables {
        let r = c
            .query_one(
                "SELECT coalesce((SELECT r.srsubstate IN ('r', 's') FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
                   WHERE s.subname = $1 AND r.srrelid = $2::text::regclass), false), \
                 coalesce((SELECT sum(p.tuples_processed)::int8 FROM pg_stat_progress_copy p \
                   JOIN pg_stat_subscription w ON w.pid = p.pid WHERE w.subname = $1 AND p.relid = $2::text::regclass), 0)",
                &[&name, &ident(t)],
            )
            .await?;
        out.push((r.get(0), r.get(1)));
    }
    Ok(out)
}

/// How often the workers of subscription `name` failed (applying a change, copying a table):
/// PostgreSQL retries them forever, so a move must notice and stop.
pub async fn errors(c: &Client, name: &str) -> Result<i64> {
    Ok(c.query_opt(
        "SELECT (apply_error_count + sync_error_count)::int8 FROM pg_stat_subscription_stats WHERE subname = $1",
        &[&name],
    )
    .await?
    .map_or(0, |r| r.get(0)))
}

/// Marks a point in stream `name` on the publisher and waits, at most `within`, until the
/// subscriber has applied it: then every change committed on the publisher before this call is
/// on the subscriber. The time it took.
pub async fn barrier(publisher: &Client, subscriber: &Client, name: &str, within: Duration) -> Result<Duration> {
    let started = Instant::now();
    let token: i64 = publisher
        .query_one(
            "INSERT INTO shardwire_move_barrier (name, token) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET token = shardwire_move_barrier.token + 1 RETURNING token",
            &[&name],
        )
        .await?
        .get(0);
    loop {
        let seen: Option<i64> = subscriber
            .query_opt("SELECT token FROM shardwire_move_barrier WHERE name = $1", &[&name])
            .await?
            .map(|r| r.get(0));
        if seen.is_some_and(|s| s >= token) {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= within {
            return Err(anyhow!(
                "the subscriber had not applied changes made {} ms ago (replication lag)",
                within.as_millis()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The server's current WAL position, as text.
pub async fn current_lsn(c: &Client) -> Result<String> {
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[]).await?.get(0))
}
