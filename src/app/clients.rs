//! Connected clients: their cancel keys, the backend each is using (for CancelRequest), and what
//! SHOW CLIENTS prints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rand::Rng;

use crate::backend::Node;

/// One connected client.
pub struct ClientHandle {
    /// BackendKeyData process id given to the client.
    pub pid: i32,
    /// BackendKeyData secret given to the client.
    pub secret: i32,
    /// Login name.
    pub user: String,
    /// Database name asked for.
    pub database: String,
    /// application_name from startup.
    pub application_name: String,
    /// Peer address.
    pub addr: SocketAddr,
    /// Connection time.
    pub since: SystemTime,
    /// TLS protocol version and cipher suite, when the client uses TLS.
    pub tls: Option<String>,
    // std Mutex: set and cleared on checkout and release, read by cancel; never held across an await.
    backend: Mutex<Option<(Arc<Node>, i32, i32)>>,
    /// Fired by `pg_terminate_backend` of this client's pid: its session ends with 57P01.
    pub kill: tokio_util::sync::CancellationToken,
    /// Wakes the PostgreSQL session's relay loop when `kill` fires while it waits. Cheaper to
    /// register on every wait than the token's own future (no lock).
    pub kill_waker: futures_util::task::AtomicWaker,
    users: Arc<BackendUsers>,
}

/// The client that last used each backend connection (by node and server pid): a NOTIFY is
/// delivered with the server pid of the connection that sent it, which listeners compare with
/// the pids the proxy gave its clients. Kept past the client's transaction (the notification
/// arrives after its commit) and bounded: past `BackendUsers::MAX` entries it starts over.
/// Recorded only once some client has listened: until then checkouts pay one atomic load.
#[derive(Default)]
struct BackendUsers {
    wanted: std::sync::atomic::AtomicBool,
    map: Mutex<HashMap<(usize, i32), i32>>,
}

impl BackendUsers {
    const MAX: usize = 1 << 16;

    fn note(&self, node: &Arc<Node>, backend_pid: i32, client_pid: i32) {
        if !self.wanted.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX {
            map.clear();
        }
        map.insert((Arc::as_ptr(node) as usize, backend_pid), client_pid);
    }

    fn get(&self, node: &Arc<Node>, backend_pid: i32) -> Option<i32> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(Arc::as_ptr(node) as usize, backend_pid)).copied()
    }
}

impl ClientHandle {
    /// Records the backend in use (node and its key), or none.
    pub fn set_backend(&self, b: Option<(Arc<Node>, i32, i32)>) {
        if let Some((node, pid, _)) = &b {
            self.users.note(node, *pid, self.pid);
        }
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }

    /// Terminates this client's session (`pg_terminate_backend` of its pid).
    pub fn terminate(&self) {
        self.kill.cancel();
        self.kill_waker.wake();
    }

    /// This client listens for notifications: from now on the registry records which client
    /// uses each server process, to name the senders of notifications.
    pub fn listening(&self) {
        self.users.wanted.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The pid the proxy gave the client that last used the server process `backend_pid` on
    /// `node`, if it knows one.
    pub fn client_of_backend(&self, node: &Arc<Node>, backend_pid: i32) -> Option<i32> {
        self.users.get(node, backend_pid)
    }

    /// The backend in use.
    pub fn backend(&self) -> Option<(Arc<Node>, i32, i32)> {
        self.backend.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// All connected clients by cancel key.
#[derive(Default)]
pub struct ClientRegistry {
    // std Mutex: inserts, removals and lookups only.
    clients: Mutex<HashMap<i32, Arc<ClientHandle>>>,
    users: Arc<BackendUsers>,
}

impl ClientRegistry {
    /// Registers a client under a fresh random key.
    pub fn register(
        &self,
        user: &str,
        database: &str,
        application_name: &str,
        addr: SocketAddr,
        tls: Option<String>,
    ) -> Arc<ClientHandle> {
        let mut rng = rand::rng();
        let mut map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let pid = loop {
            let pid = rng.random_range(1..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        let handle = Arc::new(ClientHandle {
            pid,
            secret: rng.random(),
            user: user.to_owned(),
            database: database.to_owned(),
            application_name: application_name.to_owned(),
            addr,
            since: SystemTime::now(),
            tls,
            backend: Mutex::new(None),
            kill: Default::default(),
            kill_waker: Default::default(),
            users: self.users.clone(),
        });
        map.insert(pid, handle.clone());
        handle
    }

    /// The client given this pid.
    pub fn get(&self, pid: i32) -> Option<Arc<ClientHandle>> {
        self.clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .cloned()
    }

    /// Forgets a client.
    pub fn remove(&self, pid: i32) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    }

    /// Every client, for admin views.
    pub fn all(&self) -> Vec<Arc<ClientHandle>> {
        let mut v: Vec<_> = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|c| c.since);
        v
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// No clients.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forwards a CancelRequest to the backend the client is using, if the key matches.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let target = {
            let map = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&pid).filter(|c| c.secret == secret).and_then(|c| c.backend())
        };
        match target {
            Some((node, bpid, bsecret)) => {
                if let Err(e) = crate::backend::conn::send_cancel(&node.config, bpid, bsecret).await {
                    tracing::warn!(node = %node.config.name, error = %e, "cancel request failed");
                }
            }
            None => tracing::debug!(pid, "cancel request for no running query"),
        }
    }
}
