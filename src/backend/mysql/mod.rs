//! MySQL and MariaDB backends: connections ([`conn`]), a pool per node (bb8), and the shards of a
//! MySQL cluster with their replicas' health (published by the MySQL monitor, `health::mysql`).

pub mod conn;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub use conn::{MyConn, MyError, TextResult};

use crate::backend::node_health::NodeHealth;
use crate::config::{NodeConfig, PoolConfig, ShardConfig};

/// bb8 manager: opens [`MyConn`]s to one node.
pub struct Manager {
    node: NodeConfig,
    connect_timeout: Duration,
    version: Arc<std::sync::OnceLock<String>>,
}

impl bb8::ManageConnection for Manager {
    type Connection = MyConn;
    type Error = MyError;

    async fn connect(&self) -> Result<MyConn, MyError> {
        let c = MyConn::connect(&self.node, self.connect_timeout).await?;
        let _ = self.version.set(c.server_version.clone());
        Ok(c)
    }

    async fn is_valid(&self, conn: &mut MyConn) -> Result<(), MyError> {
        conn.run(
            &[crate::protocol::mysql::cmd::PING],
            crate::protocol::mysql::response::Kind::Simple,
        )
        .await
        .map(|_| ())
    }

    fn has_broken(&self, conn: &mut MyConn) -> bool {
        conn.broken || conn.has_buffered()
    }
}

/// A checked-out connection.
pub type Pooled = bb8::PooledConnection<'static, Manager>;

/// Position of a replica as the monitor last saw it, for read-your-writes: at `primary_at` the
/// primary's GTID position was one this replica had applied by the check.
#[derive(Clone, Copy, Debug)]
pub struct Caught {
    /// When the primary's position was read.
    pub primary_at: Instant,
}

/// One MySQL server and its pool.
pub struct MyNode {
    /// Name, address, credentials.
    pub config: NodeConfig,
    /// The pool.
    pub pool: bb8::Pool<Manager>,
    /// Latest health.
    pub health: ArcSwap<NodeHealth>,
    /// The newest moment of which the replica is known to hold every commit (read-your-writes).
    pub caught_up: ArcSwap<Option<Caught>>,
    /// Taken out of the read rotation by a DBA.
    pub disabled: AtomicBool,
    /// Statements routed here.
    pub statements: AtomicU64,
    /// Checkouts that failed.
    pub checkout_errors: AtomicU64,
    version: Arc<std::sync::OnceLock<String>>,
    checkout_timeout: Duration,
}

impl MyNode {
    fn new(config: &NodeConfig, pool: &PoolConfig) -> Arc<MyNode> {
        let version = Arc::new(std::sync::OnceLock::new());
        let manager = Manager {
            node: config.clone(),
            connect_timeout: pool.connect_timeout,
            version: version.clone(),
        };
        let p = bb8::Pool::builder()
            .max_size(pool.max_size.get())
            .min_idle(Some(pool.min_size).filter(|n| *n > 0))
            .connection_timeout(pool.checkout_timeout)
            .idle_timeout(Some(pool.idle_timeout))
            // A ping per checkout would double the round trips of short statements; a dead
            // connection shows on first use and a read is retried elsewhere.
            .test_on_check_out(false)
            .build_unchecked(manager);
        Arc::new(MyNode {
            config: config.clone(),
            pool: p,
            health: ArcSwap::from_pointee(NodeHealth::initial()),
            caught_up: ArcSwap::from_pointee(None),
            disabled: AtomicBool::new(false),
            statements: AtomicU64::new(0),
            checkout_errors: AtomicU64::new(0),
            version,
            checkout_timeout: pool.checkout_timeout,
        })
    }

    /// A connection from the pool; an error names the node and why.
    pub async fn checkout(&self) -> Result<Pooled, MyError> {
        match self.pool.get_owned().await {
            Ok(c) => Ok(c),
            Err(bb8::RunError::User(e)) => {
                self.checkout_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            Err(bb8::RunError::TimedOut) => {
                self.checkout_errors.fetch_add(1, Ordering::Relaxed);
                // The pool retries connecting in the background: one direct try says why it fails.
                match MyConn::connect(&self.config, self.checkout_timeout.min(Duration::from_secs(2))).await {
                    Err(e) => Err(MyError::Protocol(format!(
                        "cannot connect to {}: {e}",
                        self.config.name
                    ))),
                    Ok(_) => Err(MyError::Timeout),
                }
            }
        }
    }

    /// The server's version string, once a connection was made.
    pub fn server_version(&self) -> Option<&str> {
        self.version.get().map(String::as_str)
    }
}

/// A primary and its replicas.
pub struct MyShard {
    /// Shard name.
    pub name: String,
    /// The primary.
    pub primary: Arc<MyNode>,
    /// Replicas.
    pub replicas: Vec<Arc<MyNode>>,
    rr: AtomicUsize,
}

impl MyShard {
    /// Builds the nodes (connections open lazily).
    pub fn new(s: &ShardConfig, pool: &PoolConfig) -> Arc<MyShard> {
        Arc::new(MyShard {
            name: s.name.clone(),
            primary: MyNode::new(&s.primary, pool),
            replicas: s.replicas.iter().map(|r| MyNode::new(r, pool)).collect(),
            rr: AtomicUsize::new(0),
        })
    }

    /// A replica in rotation (round robin) that, when `wrote_at` is given, is known to hold
    /// every commit made before it; `None` when there is none.
    pub fn replica(&self, wrote_at: Option<Instant>) -> Option<Arc<MyNode>> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find_map(|r| {
            let usable = r.health.load().in_rotation
                && !r.disabled.load(Ordering::Relaxed)
                && wrote_at.is_none_or(|w| r.caught_up.load().is_some_and(|c| c.primary_at > w));
            usable.then(|| r.clone())
        })
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<MyNode>> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }
}
