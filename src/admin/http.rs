//! HTTP `/metrics` (Prometheus text format, via prometheus-client) and `/health`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::Shared;
use crate::health::HealthState;

/// Serves until `shutdown` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&req, &shared)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(shared),
        ),
        "/health" => {
            let rt = shared.runtime.load();
            let down: Vec<String> = super::nodes::nodes(&rt)
                .into_iter()
                .filter(|n| n.role == "primary" && n.health.state == HealthState::Down)
                .map(|n| format!("primary {} down: {}\n", n.name, n.health.reason))
                .collect();
            if down.is_empty() {
                (StatusCode::OK, "text/plain", "ok\n".to_string())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", down.concat())
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /health\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

/// Labels of one partition move.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MoveLabels {
    group: String,
    partition: String,
    source: String,
    target: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
    role: String,
}

/// Renders the current counters and gauges. A registry is filled per scrape from the atomics the
/// data path already keeps, so the hot path pays nothing for metrics.
pub fn metrics(shared: &Shared) -> String {
    let mut reg = Registry::with_prefix("shardwire");
    let statements = Family::<NodeLabels, Counter>::default();
    let checkouts = Family::<NodeLabels, Counter>::default();
    let checkout_errors = Family::<NodeLabels, Counter>::default();
    let pool_conns = Family::<NodeLabels, Gauge>::default();
    let pool_in_use = Family::<NodeLabels, Gauge>::default();
    let in_rotation = Family::<NodeLabels, Gauge>::default();
    let lag_bytes = Family::<NodeLabels, Gauge>::default();
    let lag_secs = Family::<NodeLabels, Gauge<f64, AtomicU64>>::default();
    let rt = shared.runtime.load();
    for n in super::nodes::nodes(&rt) {
        let l = NodeLabels {
            node: n.name.clone(),
            role: n.role.into(),
        };
        statements.get_or_create(&l).inc_by(n.statements);
        checkouts.get_or_create(&l).inc_by(n.checkouts);
        checkout_errors.get_or_create(&l).inc_by(n.checkout_errors);
        pool_conns.get_or_create(&l).set(n.connections.into());
        pool_in_use.get_or_create(&l).set(n.in_use.into());
        let h = &n.health;
        in_rotation.get_or_create(&l).set(i64::from(h.in_rotation));
        if let Some(b) = h.lag_bytes {
            lag_bytes.get_or_create(&l).set(b as i64);
        }
        if let Some(s) = h.lag_secs {
            lag_secs.get_or_create(&l).set(s);
        }
    }
    reg.register("statements", "Statements routed to a node", statements);
    reg.register("backend_checkouts", "Backend connections checked out", checkouts);
    reg.register("backend_checkout_errors", "Checkouts that failed", checkout_errors);
    reg.register("pool_connections", "Open backend connections", pool_conns);
    reg.register("pool_in_use", "Backend connections in use", pool_in_use);
    reg.register(
        "node_in_rotation",
        "1 if the node may serve (replicas: reads)",
        in_rotation,
    );
    reg.register("replica_lag_bytes", "WAL bytes not yet replayed", lag_bytes);
    reg.register("replica_lag_seconds", "Seconds behind the primary", lag_secs);
    let moves = shared.moves();
    let move_step = Family::<MoveLabels, Gauge>::default();
    let move_copied = Family::<MoveLabels, Gauge>::default();
    let move_total = Family::<MoveLabels, Gauge>::default();
    let move_lag = Family::<MoveLabels, Gauge>::default();
    for m in moves.iter().filter(|m| m.open()) {
        let l = MoveLabels {
            group: m.group.clone(),
            partition: m.partition.to_string(),
            source: m.source.clone(),
            target: m.target.clone(),
            step: m.step.clone(),
        };
        move_step.get_or_create(&l).set(1);
        if let Some(v) = m.rows_copied {
            move_copied.get_or_create(&l).set(v);
        }
        if let Some(v) = m.rows_total {
            move_total.get_or_create(&l).set(v);
        }
        if let Some(v) = m.lag_ms {
            move_lag.get_or_create(&l).set(v);
        }
    }
    reg.register("move", "Partition moves under way, by step (1 per move)", move_step);
    reg.register("move_rows_copied", "Rows a partition move has copied", move_copied);
    reg.register(
        "move_rows_total",
        "Rows of the partition when its move began",
        move_total,
    );
    reg.register(
        "move_lag_ms",
        "A partition move's replication lag at its last check",
        move_lag,
    );
    let clients = Gauge::<i64>::default();
    clients.set(shared.clients.len() as i64);
    reg.register("clients", "Connected clients", clients);
    let cache = Gauge::<i64>::default();
    cache.set(shared.cache.len() as i64);
    reg.register("analysis_cache_entries", "Statement texts with cached analysis", cache);
    let map_version = Gauge::<i64>::default();
    map_version.set(shared.runtime.load().config.map.version as i64);
    reg.register("map_version", "Version of the shard map served", map_version);
    let reloads = Counter::<u64>::default();
    reloads.inc_by(shared.stats.reloads.load(Ordering::Relaxed));
    reg.register("config_reloads", "Successful configuration reloads", reloads);
    let rejected = Counter::<u64>::default();
    rejected.inc_by(shared.stats.rejected_reloads.load(Ordering::Relaxed));
    reg.register(
        "config_reloads_rejected",
        "Reloads refused (invalid file, or a map moving keys without RELOAD DATA IN PLACE)",
        rejected,
    );
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct PlanLabels {
        plan: String,
    }
    let plans = Family::<PlanLabels, Counter>::default();
    for (kind, n) in crate::app::PLAN_KINDS.iter().zip(&shared.stats.plans) {
        plans
            .get_or_create(&PlanLabels { plan: kind.to_string() })
            .inc_by(n.load(Ordering::Relaxed));
    }
    reg.register("shard_plans", "Statements by shard plan kind", plans);
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct ShardLabels {
        shard: String,
    }
    let failovers = Family::<ShardLabels, Counter>::default();
    for c in &rt.clusters {
        failovers
            .get_or_create(&ShardLabels { shard: c.name.clone() })
            .inc_by(c.failovers.load(Ordering::Relaxed));
    }
    reg.register(
        "failovers",
        "Promotions of a replica followed (writes moved to it)",
        failovers,
    );
    if let Some(g) = &shared.ids {
        for (name, help, v) in [
            ("ids_issued", "Globally unique IDs issued", &g.stats.issued),
            (
                "ids_clock_backwards",
                "Backward clock steps seen by the ID generator",
                &g.stats.clock_backwards,
            ),
            (
                "ids_refused",
                "ID requests refused (clock stepped back, lease lost)",
                &g.stats.refused,
            ),
        ] {
            let c = Counter::<u64>::default();
            c.inc_by(v.load(Ordering::Relaxed));
            reg.register(name, help, c);
        }
        let issuing = Gauge::<i64>::default();
        issuing.set(i64::from(g.status().is_ok()));
        reg.register("ids_issuing", "1 while the ID generator issues IDs", issuing);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String cannot fail");
    out
}
