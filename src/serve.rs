//! Serving: the tokio runtime shardwire runs on, and binding the listeners (PostgreSQL, MySQL,
//! HTTP) around one [`Shared`] until shutdown. The composition root: the only module that starts
//! the front ends, so none of them imports another's startup.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::{Shared, watch};
use crate::config::Config;

/// A tokio runtime whose threads, the blocking pool's included, have the stack statement
/// analysis needs ([`crate::analyze::limits::STACK_SIZE`]). One worker runs on a current-thread
/// runtime: no work stealing and no cross-thread wake-ups, which is what a proxy sharing two cores
/// with its database needs most.
pub fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.thread_stack_size(crate::analyze::limits::STACK_SIZE)
        .enable_all()
        .build()
}

/// Runs `fut` to completion on [`build_runtime`], from a thread of its own with the same stack
/// (a current-thread runtime runs its tasks on the thread that blocks on it, whose stack the
/// process's caller chose).
pub fn block_on<F>(workers: usize, fut: F) -> std::io::Result<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = build_runtime(workers)?;
    std::thread::Builder::new()
        .name("shardwire-main".into())
        .stack_size(crate::analyze::limits::STACK_SIZE)
        .spawn(move || runtime.block_on(fut))?
        .join()
        .map_err(|_| std::io::Error::other("the runtime thread panicked"))
}

/// Addresses a running server listens on.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// PostgreSQL clients.
    pub pg: std::net::SocketAddr,
    /// MySQL clients, when the shards are MySQL servers.
    pub mysql: Option<std::net::SocketAddr>,
    /// HTTP metrics and health, if configured.
    pub http: Option<std::net::SocketAddr>,
}

/// Binds the configured addresses and serves until `shutdown` fires. `on_bound` learns the
/// actual addresses (port 0 in the config picks a free port).
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound, Arc<Shared>),
) -> std::io::Result<()> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let mysql = match config.server.mysql_listen {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let http = match config.server.admin_http {
        Some(a) => Some(TcpListener::bind(a).await?),
        None => None,
    };
    let lease = match config.ids.as_ref().map(|i| &i.worker) {
        Some(crate::config::WorkerId::Leased { store, ttl }) => Some(crate::ids::lease::LeaseSettings {
            store: store.pg_config(*ttl / 3),
            ttl: *ttl,
            holder: format!("{}:{:016x}", std::process::id(), rand::random::<u64>()),
        }),
        _ => None,
    };
    let shared = Shared::new(config, config_path);
    if let (Some(settings), Some(g)) = (lease, &shared.ids) {
        tokio::spawn(crate::ids::lease::run(g.clone(), settings, shutdown.clone()));
    }
    let bound = Bound {
        pg: listener.local_addr()?,
        mysql: mysql.as_ref().map(|l| l.local_addr()).transpose()?,
        http: http.as_ref().map(|l| l.local_addr()).transpose()?,
    };
    tracing::info!(pg = %bound.pg, mysql = ?bound.mysql, http = ?bound.http, "shardwire listening");
    if let Some(every) = shared.runtime.load().config.server.watch_files
        && shared.config_path.is_some()
    {
        // Before anyone learns the server is up: the files as they are now are the baseline.
        tokio::spawn(watch::run(
            shared.clone(),
            watch::fingerprint(&shared),
            every,
            shutdown.clone(),
        ));
    }
    let etcd_ids = match shared.runtime.load().config.ids.as_ref().map(|i| &i.worker) {
        Some(crate::config::WorkerId::Etcd { ttl }) => Some(*ttl),
        _ => None,
    };
    if let (Some(ttl), Some(g), Some(c)) = (etcd_ids, &shared.ids, shared.runtime.load().config.cluster.clone()) {
        let at = crate::ids::etcd_lease::EtcdLease {
            endpoints: c.etcd,
            prefix: c.prefix,
            name: c.name,
            ttl,
        };
        tokio::spawn(crate::ids::etcd_lease::run(g.clone(), at, shutdown.clone()));
    }
    if let Some(c) = shared.runtime.load().config.cluster.clone() {
        tokio::spawn(crate::app::cluster_sync::run(
            shared.clone(),
            c,
            bound.pg.to_string(),
            shutdown.clone(),
        ));
        // Clients get the cluster's map from the start when etcd answers soon; otherwise the
        // file's until it does.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
        while shared.cluster.status() != "connected" && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    tokio::spawn(crate::app::moves_watch::run(shared.clone(), shutdown.clone()));
    on_bound(bound, shared.clone());
    if let Some(h) = http {
        tokio::spawn(crate::admin::http::serve(h, shared.clone(), shutdown.clone()));
    }

    if let Some(m) = mysql {
        tokio::spawn(crate::mysql::serve(m, shared.clone(), shutdown.clone()));
    }
    crate::session::listener::serve(listener, shared, shutdown).await;
    Ok(())
}
