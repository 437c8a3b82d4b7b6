//! The tables admin commands print, built from the shared handles. Shared by the console and
//! the metrics endpoint so both report the same numbers.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use crate::app::Shared;
use crate::health::HealthState;

/// A result table: column names and rows of optional text.
pub struct Table {
    /// Column names.
    pub columns: Vec<&'static str>,
    /// Rows.
    pub rows: Vec<Vec<Option<String>>>,
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// SHOW REPLICAS: every node with its health and lag.
pub fn replicas(shared: &Shared) -> Table {
    let rt = shared.runtime.load();
    let rows = super::nodes::nodes(&rt)
        .into_iter()
        .map(|n| {
            let h = &n.health;
            let state = match h.state {
                HealthState::Unknown => "unknown",
                HealthState::Up => "up",
                HealthState::Down => "down",
            };
            vec![
                s(&n.name),
                s(n.role),
                s(&n.address),
                s(state),
                s(if n.disabled {
                    "disabled"
                } else if h.in_rotation {
                    "yes"
                } else {
                    "no"
                }),
                h.lag_bytes.map(|b| b.to_string()),
                h.lag_secs.map(|v| format!("{v:.3}")),
                h.lsn.map(|l| format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)),
                h.checked
                    .map(|c| Instant::now().saturating_duration_since(c).as_millis().to_string()),
                s(&h.reason),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node",
            "role",
            "address",
            "state",
            "in_rotation",
            "lag_bytes",
            "lag_seconds",
            "lsn",
            "checked_ms_ago",
            "reason",
        ],
        rows,
    }
}

/// SHOW POOLS: connections per node.
pub fn pools(shared: &Shared) -> Table {
    let rt = shared.runtime.load();
    let rows = super::nodes::nodes(&rt)
        .into_iter()
        .map(|n| {
            vec![
                s(&n.name),
                s(n.role),
                s(n.connections),
                s(n.idle),
                s(n.in_use),
                s(n.max_size),
                s(n.checkouts),
                s(n.checkout_errors),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "node",
            "role",
            "connections",
            "idle",
            "in_use",
            "max_size",
            "checkouts",
            "checkout_errors",
        ],
        rows,
    }
}

/// SHOW CLIENTS: connected clients and the backend each uses right now.
pub fn clients(shared: &Shared) -> Table {
    let rows = shared
        .clients
        .all()
        .iter()
        .map(|c| {
            let age = SystemTime::now().duration_since(c.since).unwrap_or_default().as_secs();
            vec![
                s(c.pid),
                s(&c.user),
                s(&c.database),
                s(&c.application_name),
                s(c.addr),
                s(age),
                c.backend().map(|(n, _, _)| n.config.name.clone()),
                c.tls.clone(),
            ]
        })
        .collect();
    Table {
        columns: vec![
            "id",
            "user",
            "database",
            "application_name",
            "address",
            "connected_secs",
            "backend",
            "tls",
        ],
        rows,
    }
}

/// SHOW STATS: statements routed per node and role.
pub fn stats(shared: &Shared) -> Table {
    let rt = shared.runtime.load();
    let rows = rt
        .nodes()
        .map(|n| {
            vec![
                s(&n.config.name),
                s(n.role().as_str()),
                s(n.stats.statements.load(Ordering::Relaxed)),
                s(n.stats.checkouts.load(Ordering::Relaxed)),
                s(n.stats.checkout_errors.load(Ordering::Relaxed)),
            ]
        })
        .collect();
    Table {
        columns: vec!["node", "role", "statements", "checkouts", "checkout_errors"],
        rows,
    }
}

/// SHOW SHARDS: each shard with the node its writes go to (after a failover, the promoted
/// replica), its replica count and the failovers followed.
pub fn shards(shared: &Shared) -> Table {
    let rt = shared.runtime.load();
    let map = &rt.config.map;
    let default = |i: usize| s(if i == map.default_shard { "yes" } else { "no" });
    let rows = if rt.mysql.is_empty() {
        rt.clusters
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let w = c.writer();
                vec![
                    s(&c.name),
                    s(format!("{}:{}", w.config.host, w.config.port)),
                    s(c.replicas.len().to_string()),
                    default(i),
                    s(c.failovers.load(std::sync::atomic::Ordering::Relaxed).to_string()),
                ]
            })
            .collect()
    } else {
        rt.mysql
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    s(&c.name),
                    s(format!("{}:{}", c.primary.config.host, c.primary.config.port)),
                    s(c.replicas.len().to_string()),
                    default(i),
                    s("0"),
                ]
            })
            .collect()
    };
    Table {
        columns: vec!["shard", "primary", "replicas", "default", "failovers"],
        rows,
    }
}

/// SHOW MAP: the map version and, per group, partitioning, partitions per shard and tables.
pub fn map(shared: &Shared) -> Table {
    let rt = shared.runtime.load();
    let map = &rt.config.map;
    let mut rows: Vec<Vec<Option<String>>> = crate::shardmap::describe(map)
        .into_iter()
        .map(|(group, kind, per_shard, tables)| {
            let states: Vec<String> = map
                .groups
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.states.iter().map(|(p, st)| format!("{p}={st}")).collect())
                .unwrap_or_default();
            vec![
                s(map.version.to_string()),
                s(&group),
                s(&kind),
                s(&per_shard),
                s(&tables),
                s(states.join(" ")),
            ]
        })
        .collect();
    let mut reference: Vec<&str> = map
        .tables
        .iter()
        .filter(|(_, r)| **r == crate::shardmap::TableRule::Reference)
        .map(|(t, _)| t.as_str())
        .collect();
    reference.sort();
    rows.push(vec![
        s(map.version.to_string()),
        s("(reference)"),
        s("every shard"),
        s(map.shards.join(" ")),
        s(reference.join(",")),
        s(""),
    ]);
    rows.push(vec![
        s(map.version.to_string()),
        s("(unsharded)"),
        s("default shard"),
        s(&map.shards[map.default_shard]),
        s("tables the map does not name"),
        s(""),
    ]);
    Table {
        columns: vec![
            "version",
            "group",
            "partitioning",
            "partitions_per_shard",
            "tables",
            "states",
        ],
        rows,
    }
}

/// SHOW MAP HISTORY: map changes applied since start, oldest first.
pub fn map_history(shared: &Shared) -> Table {
    Table {
        columns: vec!["at", "from_version", "to_version", "by", "change"],
        rows: shared
            .map_history()
            .into_iter()
            .map(|c| {
                vec![
                    s(c.at.to_string()),
                    s(c.from.to_string()),
                    s(c.to.to_string()),
                    s(c.by),
                    s(c.what),
                ]
            })
            .collect(),
    }
}

/// SHOW CLUSTER: the instances sharing the shard map through etcd (this one alone without
/// `[cluster]`), the map version each serves and how long ago it last reported.
pub async fn cluster(shared: &Shared) -> Result<Table, String> {
    let rt = shared.runtime.load_full();
    let columns = vec!["name", "map_version", "heartbeat_age_ms", "listen", "pid", "this"];
    let Some(c) = &rt.config.cluster else {
        return Ok(Table {
            columns,
            rows: vec![vec![
                s("(single instance: no [cluster])"),
                s(rt.config.map.version.to_string()),
                s("0"),
                s(rt.config.server.listen.to_string()),
                s(std::process::id().to_string()),
                s("yes"),
            ]],
        });
    };
    let now = crate::etcd::now_ms();
    let instances = shared
        .cluster_instances()
        .await
        .map_err(|e| format!("cannot list the cluster's instances: {e}"))?;
    Ok(Table {
        columns,
        rows: instances
            .into_iter()
            .map(|i| {
                let this = if i.name == c.name { "yes" } else { "no" };
                vec![
                    s(&i.name),
                    s(i.version.to_string()),
                    s(now.saturating_sub(i.heartbeat_ms).to_string()),
                    s(&i.listen),
                    s(i.pid.to_string()),
                    s(this),
                ]
            })
            .collect(),
    })
}

/// SHOW MOVES: the partition moves recorded on the shards (open ones and the last finished
/// ones), with their step, progress and lag, read now.
pub async fn moves(shared: &Shared) -> Result<Table, String> {
    let rt = shared.runtime.load_full();
    let (moves, errors) = crate::rebalance::status::read(&rt.config.shards).await;
    if !errors.is_empty() && moves.is_empty() {
        return Err(format!("cannot read the moves: {}", errors.join("; ")));
    }
    shared.set_moves(moves.clone());
    let opt = |v: Option<i64>| v.map(|v| v.to_string());
    Ok(Table {
        columns: vec![
            "group",
            "partition",
            "source",
            "target",
            "step",
            "mode",
            "rows_total",
            "rows_copied",
            "lag_ms",
            "step_secs",
            "eta_secs",
            "detail",
        ],
        rows: moves
            .iter()
            .map(|m| {
                vec![
                    s(&m.group),
                    s(m.partition),
                    s(&m.source),
                    s(&m.target),
                    s(&m.step),
                    s(&m.mode),
                    opt(m.rows_total),
                    opt(m.rows_copied),
                    opt(m.lag_ms),
                    s(format!("{:.1}", m.step_secs)),
                    m.eta_secs().map(|e| format!("{e:.0}")),
                    s(&m.detail),
                ]
            })
            .chain(errors.iter().map(|e| {
                let mut row = vec![None; 12];
                row[11] = s(format!("unreadable: {e}"));
                row
            }))
            .collect(),
    })
}

/// SHOW ROUTES: statements per shard plan kind.
pub fn routes(shared: &Shared) -> Table {
    let rows = crate::app::PLAN_KINDS
        .iter()
        .zip(&shared.stats.plans)
        .map(|(k, n)| vec![s(k), s(n.load(Ordering::Relaxed).to_string())])
        .collect();
    Table {
        columns: vec!["plan", "statements"],
        rows,
    }
}

/// SHOW ROUTE FOR: the plan of a statement under the current map (parameters unknown).
pub fn route(shared: &Shared, sql: &str) -> Table {
    let rt = shared.runtime.load();
    let map = &rt.config.map;
    let shape = crate::analyze::shard::shape(sql, map);
    let params = crate::plan::shard::Params::default();
    let plan = crate::plan::shard::plan(&shape, map, &params);
    let mut text = crate::plan::shard::explain(&plan, map);
    if let crate::plan::shard::ShardPlan::Refuse(why) = &plan
        && rt.config.routing.max_intermediate_bytes > 0
        && let Some(m) = crate::analyze::shard::materialize::plan(sql, map)
    {
        text = format!("materialized: its parts run first and their rows go into it (as written: {why})");
        for (i, part) in m.parts.iter().enumerate() {
            let part_plan = crate::plan::shard::plan(&crate::analyze::shard::shape(&part.sql, map), map, &params);
            let how = crate::plan::shard::explain(&part_plan, map);
            text.push_str(&format!(
                "\npart {}: {} -- {}",
                i + 1,
                part.sql,
                how.lines().next().unwrap_or_default()
            ));
        }
    }
    Table {
        columns: vec!["plan"],
        rows: text.lines().map(|l| vec![s(l)]).collect(),
    }
}

/// SHOW IDS: worker id, lease, issued, clock-backwards events, refusals, state.
pub fn ids(shared: &Shared) -> Table {
    let rows = match &shared.ids {
        None => vec![vec![
            s("-"),
            s("-"),
            s("0"),
            s("0"),
            s("0"),
            s("not configured: add [ids] worker_id"),
        ]],
        Some(g) => vec![vec![
            s(g.worker()),
            s(match g.lease_left() {
                None if g.status().is_err() => "waiting for a lease".to_string(),
                None => "fixed in config".to_string(),
                Some(left) => format!("leased, {} ms left without renewal", left.as_millis()),
            }),
            s(g.stats.issued.load(Ordering::Relaxed)),
            s(g.stats.clock_backwards.load(Ordering::Relaxed)),
            s(g.stats.refused.load(Ordering::Relaxed)),
            s(match g.status() {
                Ok(()) => "issuing".to_string(),
                Err(why) => format!("not issuing: {why}"),
            }),
        ]],
    };
    Table {
        columns: vec!["worker_id", "lease", "issued", "clock_backwards", "refused", "state"],
        rows,
    }
}
