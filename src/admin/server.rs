//! The admin API's HTTP server: its own accept loop around hyper, so that what
//! a local client can hold is bounded.
//!
//! - At most [`MAX_CONNECTIONS`] connections are open at once. The loop takes
//!   a slot before it accepts, so past the bound new connections wait in the
//!   kernel's listen backlog (128 deep, as tokio binds; once that is full their
//!   SYNs go unanswered and the clients retry) until a connection closes:
//!   nothing is allocated for them and no file descriptor is taken.
//! - A connection must deliver each request's headers within
//!   [`HEADER_TIMEOUT`] of when the server starts waiting for them (an idle
//!   keep-alive connection included), each request must be answered within
//!   [`REQUEST_TIMEOUT`] (a body that trickles in gets 408), and no connection
//!   lives longer than [`MAX_CONNECTION_AGE`]: a slow or silent client frees
//!   its slot on its own.
//!
//! `masternode_admin_connections` is the number open now;
//! `masternode_admin_connection_waits_total` counts the times the bound was
//! reached and the loop waited for a slot.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use super::guard::Refusal;

/// Connections open at once, at most. Operators' tools (the CLI, curl, one or
/// two scrapers) use a handful; 64 leaves room for bursts while a flood of idle
/// connections costs at most 64 descriptors and their buffers.
pub const MAX_CONNECTIONS: usize = 64;
/// Time for a request's headers to arrive, counted from when the server starts
/// waiting for them.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for one request, its body read and the answer made.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection is closed after this long (once its request in flight, if any,
/// is answered): a client cannot keep a slot forever by never reading.
pub(crate) const MAX_CONNECTION_AGE: Duration = Duration::from_secs(60);
/// What a connection in flight gets to finish at shutdown or at its age limit.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The address a connection was accepted on, put into every request's
/// extensions (beside axum's `ConnectInfo<SocketAddr>`, the client's address).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalAddr(pub SocketAddr);

/// The admin API's own counters, read by `/metrics`, and which refusals have
/// been logged at warn already.
#[derive(Debug, Default)]
pub(crate) struct AdminStats {
    connections: AtomicU64,
    connection_waits: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    warned: [AtomicBool; Refusal::ALL.len()],
    warned_waits: AtomicBool,
}

impl AdminStats {
    /// Connections open now.
    pub(crate) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Times the connection bound was reached.
    pub(crate) fn connection_waits(&self) -> u64 {
        self.connection_waits.load(Ordering::Relaxed)
    }

    /// Requests refused for `reason` so far.
    pub(crate) fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Counts a refusal; true the first time for its reason (log that one at
    /// warn, later ones at debug: a page can retry in a loop).
    pub(crate) fn refuse(&self, reason: Refusal) -> bool {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
        !self.warned[reason.index()].swap(true, Ordering::Relaxed)
    }

    fn waited(&self) -> bool {
        self.connection_waits.fetch_add(1, Ordering::Relaxed);
        !self.warned_waits.swap(true, Ordering::Relaxed)
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<AdminStats>);

impl Open {
    fn new(stats: Arc<AdminStats>) -> Open {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Open(stats)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets the connections in
/// flight finish (for at most a second) and returns.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    stats: Arc<AdminStats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let mut warned_accept = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if stats.waited() {
                    tracing::warn!(
                        "admin API: {MAX_CONNECTIONS} connections open, the most it serves at once; \
                         new ones wait until one closes"
                    );
                } else {
                    tracing::debug!("admin API: connection bound reached");
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        // The semaphore is never closed.
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors or memory: wait a little rather than spin.
                if !warned_accept {
                    tracing::warn!("admin API: accept failed: {e}");
                    warned_accept = true;
                } else {
                    tracing::debug!("admin API: accept failed: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else { continue };
        let open = Open::new(stats.clone());
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_connection(stream, local, remote, router, shutdown).await;
            drop(open);
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        request.extensions_mut().insert(LocalAddr(local));
        let mut router = router.clone();
        async move {
            // A Router is always ready (axum documents it); its error is Infallible.
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, router.call(request)).await;
            Ok::<_, Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => super::error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs()),
                ),
            })
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, "admin connection ended: {e}");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_reason_is_reported_at_warn_once_and_always_counted() {
        let stats = AdminStats::default();
        assert!(stats.refuse(Refusal::HostName), "the first of its reason");
        assert!(!stats.refuse(Refusal::HostName));
        assert!(!stats.refuse(Refusal::HostName));
        assert!(stats.refuse(Refusal::TokenWrong), "another reason is reported on its own");
        assert_eq!(stats.refused(Refusal::HostName), 3);
        assert_eq!(stats.refused(Refusal::TokenWrong), 1);
        assert_eq!(stats.refused(Refusal::ContentType), 0);
        assert!(stats.waited());
        assert!(!stats.waited());
        assert_eq!(stats.connection_waits(), 2);
    }
}
