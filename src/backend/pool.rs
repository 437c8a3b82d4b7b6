//! Pools of backend connections, one per node, on bb8.
//!
//! bb8 owns the connections (opening, counting, health checks, idle timeouts). In front of it
//! each node keeps a small stack of connections a session has just released: the next checkout
//! takes the top one with one uncontended lock, instead of bb8's checkout (a timeout future, its
//! own lock and bookkeeping, about a seventh of the proxy's user-space work per transaction).
//! While any checkout waits inside bb8, released connections go back to bb8 so they reach it; the
//! health monitor returns connections that sat on the stack for a whole check interval, so bb8's
//! idle timeout still applies to them.
//!
//! bb8 opens connections in the background and its `get()` only ever reports a timeout: a node
//! that refuses connections would make every client wait the whole checkout timeout. The error
//! sink below records connect failures on the node and wakes waiting checkouts, so they fail at
//! once with the real reason.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::conn::{BackendConn, BackendError};
use crate::backend::node_health::NodeHealth;
use crate::config::{NodeConfig, PoolConfig};

/// What a node is for now: the monitor changes it when it follows a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Streaming replica: reads only.
    Replica,
    /// A former primary that a promoted replica replaced: neither reads nor writes go to it (it
    /// may have come back with writes the new primary never saw) until the configuration says
    /// otherwise.
    Fenced,
}

impl Role {
    /// Lower-case name for admin views and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Fenced => "fenced",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            0 => Role::Primary,
            1 => Role::Replica,
            _ => Role::Fenced,
        }
    }
}

/// Counters per node, read by SHOW STATS and /metrics.
#[derive(Default)]
pub struct NodeStats {
    /// Statements and extended-protocol executions routed here.
    pub statements: AtomicU64,
    /// Backend connections checked out (transactions, in transaction pooling).
    pub checkouts: AtomicU64,
    /// Checkouts that failed (connect error or timeout).
    pub checkout_errors: AtomicU64,
}

/// One backend server and its pool.
pub struct Node {
    /// Name, URL and credentials.
    pub config: NodeConfig,
    /// Primary, replica or fenced ([`Role`]), read with [`Node::role`].
    role: std::sync::atomic::AtomicU8,
    /// The pool.
    pub pool: bb8::Pool<BackendManager>,
    /// Latest result of the health monitor.
    pub health: ArcSwap<NodeHealth>,
    /// Connections checked out right now, for least-outstanding balancing.
    pub outstanding: AtomicUsize,
    /// Taken out of the read rotation by a DBA (`DISABLE REPLICA`), whatever its health.
    pub disabled: std::sync::atomic::AtomicBool,
    /// Counters.
    pub stats: NodeStats,
    /// Pool size.
    pub max_size: u32,
    checkout_timeout: std::time::Duration,
    failures: Arc<ConnectFailures>,
    // std Mutex: a push or a pop, never held across an await.
    hot: Mutex<Hot>,
    // std Mutex: a few field updates, never held across an await.
    breaker: Mutex<super::breaker::Breaker>,
    /// Shared with the pool's manager: see [`Node::retire`].
    retired: Arc<std::sync::atomic::AtomicBool>,
}

/// Connections just released, most recent last, checked out out of bb8's sight.
#[derive(Default)]
struct Hot {
    conns: Vec<(bb8::PooledConnection<'static, BackendManager>, u64)>,
    /// Checkouts waiting inside bb8: while any does, released connections go to bb8.
    waiting: usize,
    /// Advanced by the health monitor; a connection pushed in an earlier one has idled a whole
    /// check interval and goes back to bb8.
    epoch: u64,
}

/// The last connect failure of a node and a way to wake checkouts waiting on it.
#[derive(Default)]
struct ConnectFailures {
    notify: Notify,
    // std Mutex: held only to swap a String, never across an await.
    last: Mutex<Option<String>>,
}

#[derive(Clone)]
struct FailureSink(Arc<ConnectFailures>);

impl std::fmt::Debug for FailureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailureSink")
    }
}

impl bb8::ErrorSink<BackendError> for FailureSink {
    fn sink(&self, error: BackendError) {
        if matches!(error, BackendError::Stale) {
            return;
        }
        tracing::warn!(%error, "backend connect failed");
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        self.0.notify.notify_waiters();
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<BackendError>> {
        Box::new(self.clone())
    }
}

/// bb8 manager: opens [`BackendConn`]s to one node.
pub struct BackendManager {
    node: NodeConfig,
    connect_timeout: std::time::Duration,
    max_prepared: usize,
    /// The node left the configuration: no new connections, and none goes back to the pool.
    retired: Arc<std::sync::atomic::AtomicBool>,
}

impl bb8::ManageConnection for BackendManager {
    type Connection = BackendConn;
    type Error = BackendError;

    async fn connect(&self) -> Result<BackendConn, BackendError> {
        if self.retired.load(Ordering::Relaxed) {
            return Err(BackendError::Refused {
                node: self.node.name.clone(),
                message: "the node was removed from the configuration".into(),
            });
        }
        let mut conn = BackendConn::connect(&self.node, self.connect_timeout).await?;
        conn.prepared.set_limit(self.max_prepared);
        Ok(conn)
    }

    async fn is_valid(&self, conn: &mut BackendConn) -> Result<(), BackendError> {
        conn.check_idle()
    }

    fn has_broken(&self, conn: &mut BackendConn) -> bool {
        conn.broken || self.retired.load(Ordering::Relaxed)
    }
}

/// A checked-out connection that counts itself in `Node::outstanding` until dropped.
pub struct Checkout {
    /// The pooled connection; returns to the pool on drop unless marked broken.
    pub conn: Pooled,
    /// The node it belongs to.
    pub node: Arc<Node>,
}

/// The connection inside a [`Checkout`]; empty only while the checkout is being dropped.
pub struct Pooled(Option<bb8::PooledConnection<'static, BackendManager>>);

impl std::ops::Deref for Pooled {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        // Taken only in `Checkout::drop`, after which nothing can reach it.
        self.0.as_ref().expect("checked-out connection present")
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.0.as_mut().expect("checked-out connection present")
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        self.node.outstanding.fetch_sub(1, Ordering::Relaxed);
        let Some(conn) = self.conn.0.take() else { return };
        if conn.broken || self.node.retired.load(Ordering::Relaxed) {
            // bb8 discards it (`has_broken`).
            return;
        }
        let mut hot = self.node.hot.lock().unwrap_or_else(|e| e.into_inner());
        if hot.waiting == 0 && hot.conns.len() < self.node.max_size as usize {
            let epoch = hot.epoch;
            hot.conns.push((conn, epoch));
            return;
        }
        drop(hot);
        // To bb8, where a waiting checkout gets it.
        drop(conn);
    }
}

/// Counts a checkout as waiting inside bb8 for as long as it does (also when it is abandoned).
struct Waiting<'a>(&'a Node);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut hot = self.0.hot.lock().unwrap_or_else(|e| e.into_inner());
        hot.waiting = hot.waiting.saturating_sub(1);
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    /// The node could not be reached or refused the login.
    #[error("{0}")]
    Connect(String),
    /// The pool stayed full for the whole checkout timeout.
    #[error("timed out after {timeout:?} waiting for a connection to {node} (pool of {max} is busy)")]
    Timeout {
        /// Node name.
        node: String,
        /// The checkout timeout.
        timeout: std::time::Duration,
        /// Pool size.
        max: u32,
    },
}

impl Node {
    /// What the node is for now.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// Changes what the node is for (failover).
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Relaxed);
    }

    /// A node with a pool that opens connections lazily (and keeps `min_size` idle ones).
    pub fn new(config: NodeConfig, role: Role, pool: &PoolConfig) -> Arc<Node> {
        let failures = Arc::new(ConnectFailures::default());
        let retired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let manager = BackendManager {
            node: config.clone(),
            connect_timeout: pool.connect_timeout,
            max_prepared: pool.max_prepared,
            retired: retired.clone(),
        };
        let (max_size, checkout_timeout) = (pool.max_size.get(), pool.checkout_timeout);
        let pool = bb8::Pool::builder()
            .max_size(pool.max_size.get())
            .min_idle(Some(pool.min_size).filter(|&n| n > 0))
            .connection_timeout(pool.checkout_timeout)
            .idle_timeout(Some(pool.idle_timeout))
            .retry_connection(false)
            // The most recently used connection first, as PgBouncer does by default: the database
            // keeps fewer, warmer backends busy, and the ones left idle can time out.
            .queue_strategy(bb8::QueueStrategy::Lifo)
            .error_sink(Box::new(FailureSink(failures.clone())))
            .build_unchecked(manager);
        Arc::new(Node {
            config,
            role: std::sync::atomic::AtomicU8::new(role as u8),
            pool,
            health: ArcSwap::from_pointee(NodeHealth::initial()),
            outstanding: AtomicUsize::new(0),
            disabled: std::sync::atomic::AtomicBool::new(false),
            stats: NodeStats::default(),
            max_size,
            checkout_timeout,
            failures,
            hot: Mutex::new(Hot::default()),
            breaker: Mutex::new(super::breaker::Breaker::default()),
            retired,
        })
    }

    /// The node left the configuration (a reload removed it or rebuilt its pool): its idle
    /// connections close now, those in use close when released, and it opens no new one.
    /// Sessions still on an older snapshot may hold it until their next statement; without this
    /// its connections would stay open as long as any idle session kept that snapshot.
    pub fn retire(self: &Arc<Self>) {
        tracing::info!(node = %self.config.name, "node left the configuration: its connections close");
        self.retired.store(true, Ordering::Relaxed);
        let hot = std::mem::take(&mut self.hot.lock().unwrap_or_else(|e| e.into_inner()).conns);
        drop(hot);
        let idle = self.pool.state().idle_connections;
        if idle == 0 {
            return;
        }
        // bb8 has no call that closes its idle connections: take each one out and discard it.
        let node = self.clone();
        tokio::spawn(async move {
            for _ in 0..idle {
                match tokio::time::timeout(std::time::Duration::from_millis(100), node.pool.get_owned()).await {
                    Ok(Ok(conn)) => drop(conn),
                    _ => break,
                }
            }
        });
    }

    /// The most recently released connection that is still open and silent, if any; otherwise,
    /// with `or_wait`, the caller is counted as waiting in bb8 (see the module doc).
    fn take_hot(&self, or_wait: bool) -> Option<bb8::PooledConnection<'static, BackendManager>> {
        loop {
            let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
            let Some((mut conn, _)) = hot.conns.pop() else {
                hot.waiting += usize::from(or_wait);
                return None;
            };
            drop(hot);
            if conn.check_idle().is_ok() {
                return Some(conn);
            }
            conn.broken = true;
        }
    }

    /// Called on every health check: connections released before the previous check have idled
    /// a whole interval and go back to bb8 (which closes them after `idle_timeout`).
    pub fn cool_down(&self) {
        let idle = {
            let mut hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
            let before = hot.epoch;
            hot.epoch += 1;
            let keep = hot
                .conns
                .iter()
                .position(|(_, e)| *e >= before)
                .unwrap_or(hot.conns.len());
            hot.conns.drain(..keep).collect::<Vec<_>>()
        };
        drop(idle);
    }

    /// Open connections not in use: bb8's idle ones and the released ones on the stack.
    pub fn idle_connections(&self) -> u32 {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner()).conns.len() as u32;
        self.pool.state().idle_connections + hot
    }

    /// A just-released connection, without waiting or allocating; `None` when there is none and
    /// [`Node::checkout`] must go to bb8.
    pub fn checkout_now(self: &Arc<Self>) -> Option<Checkout> {
        let conn = self.take_hot(false)?;
        Some(self.checked_out(conn))
    }

    fn checked_out(self: &Arc<Self>, conn: bb8::PooledConnection<'static, BackendManager>) -> Checkout {
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Checkout {
            conn: Pooled(Some(conn)),
            node: self.clone(),
        }
    }

    /// Checks out a connection, failing fast when the node cannot be reached.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, CheckoutError> {
        if let Some(conn) = self.take_hot(true) {
            return Ok(self.checked_out(conn));
        }
        if let Err(last) = self.lock_breaker().admit(std::time::Instant::now()) {
            self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
            self.stats.checkout_errors.fetch_add(1, Ordering::Relaxed);
            return Err(CheckoutError::Connect(format!(
                "{} is not reachable (not tried again for up to {:?}): {last}",
                self.config.name,
                super::breaker::OPEN_FOR
            )));
        }
        let _waiting = Waiting(self);
        // A Notified sees `notify_waiters` calls made after it was created even before it is
        // polled, so it needs no registration up front; and with `biased` it is never polled
        // (never joins the waiter list) when bb8 has an idle connection at once.
        let failed = self.failures.notify.notified();
        let result = tokio::select! {
            biased;
            r = self.pool.get_owned() => r.map_err(|e| match e {
                bb8::RunError::User(e) => CheckoutError::Connect(e.to_string()),
                bb8::RunError::TimedOut => self.timeout_error(),
            }),
            () = failed => Err(CheckoutError::Connect(
                self.failures.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
                    .unwrap_or_else(|| format!("could not connect to {}", self.config.name)),
            )),
        };
        match &result {
            Ok(_) => self.lock_breaker().success(),
            Err(CheckoutError::Connect(m)) => self.lock_breaker().failure(std::time::Instant::now(), m),
            Err(CheckoutError::Timeout { .. }) => {}
        }
        match result {
            Ok(conn) => Ok(self.checked_out(conn)),
            Err(e) => {
                self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
                self.stats.checkout_errors.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn lock_breaker(&self) -> std::sync::MutexGuard<'_, super::breaker::Breaker> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts are still usable.
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The circuit breaker is open: checkouts fail without trying the node.
    pub fn breaker_open(&self) -> bool {
        self.lock_breaker().is_open(std::time::Instant::now())
    }

    fn timeout_error(&self) -> CheckoutError {
        let s = self.pool.state();
        // A timeout with free slots means connecting itself failed or hung.
        if s.connections < self.max_size
            && let Some(last) = self.failures.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
        {
            return CheckoutError::Connect(last);
        }
        CheckoutError::Timeout {
            node: self.config.name.clone(),
            timeout: self.checkout_timeout,
            max: self.max_size,
        }
    }
}
