//! The accept loop both front ends share: one task per client, backing off when accept fails,
//! and at shutdown no new clients, a grace period for the open sessions, then the rest cut off.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts until `shutdown`, running `handle` per client (with nodelay set); then waits up to
/// `grace()` for the sessions and aborts those left.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: impl FnOnce() -> Duration,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // A JoinSet rather than a cancellation future beside each session: the hard stop aborts the
    // tasks, so a session's wake-ups poll nothing but the session itself.
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        sessions.spawn(handle(stream, addr));
    }
    // New connections are refused from here on, not left waiting in the backlog.
    drop(listener);
    let grace = grace();
    let drained = tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("shutdown: sessions still open after {grace:?}; closing them");
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
}
