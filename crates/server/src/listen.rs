//! The HTTP listener: hyper's HTTP/1 under the routes, with what `axum::serve` leaves out.
//!
//! - **A header-read timeout** ([`Limits::header_timeout`], 30 s): a client must send a
//!   request's head (request line and headers) within it, or the connection is closed. It also
//!   bounds how long an idle keep-alive connection is kept. `axum::serve` sets no timer, so
//!   without this a client that opens connections and never finishes a header (slowloris) holds
//!   each one forever.
//! - **A connection cap** ([`Limits::connections`], 4096): beyond it the listener waits for a
//!   connection to close before it accepts another (the kernel queues the rest), so that open
//!   sockets never use up the file descriptors the queue database, model files and images need.
//! - **Accept errors** (out of file descriptors, say) are logged and retried after a pause,
//!   never the end of the server.
//!
//! Request bodies have their own deadline, checked where they are read
//! ([`crate::routes::read_limited`]). WebSocket upgrades work as with `axum::serve`.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::Limits;

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets every
/// open connection finish its request in flight, and returns when all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    // `stop_tx` tells connections to finish; every connection holds a `closed_rx`, so
    // `closed_tx.closed()` completes when the last one ends.
    let (stop_tx, stop_rx) = watch::channel(());
    let (closed_tx, closed_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = shutdown.as_mut() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionRefused
                    ) {
                        // Out of file descriptors, most likely: wait for some to be freed.
                        tracing::error!("cannot accept a connection: {e}; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let closed = closed_rx.clone();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut connection = pin!(builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades());
            let mut stopping = false;
            loop {
                tokio::select! {
                    result = connection.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!("connection ended: {e}");
                        }
                        break;
                    }
                    changed = stop.changed(), if !stopping => {
                        stopping = true;
                        if changed.is_ok() {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(slot);
            drop(closed);
        });
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(closed_rx);
    closed_tx.closed().await;
}

/// Raises this process's soft limit on open files to its hard limit (as Go's runtime does at
/// start), so that thousands of connections fit; the limits after, `(soft, hard)`.
#[cfg(unix)]
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let soft = limit.current?;
    if limit.maximum.is_none_or(|hard| hard > soft) {
        // An unlimited hard limit is not a valid soft one on every system: cap it.
        let wanted = limit.maximum.unwrap_or(1 << 20).min(1 << 20).max(soft);
        let raised = rustix::process::Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!("cannot raise the open-file limit above {soft}: {e}"),
        }
    }
    Some((limit.current?, limit.maximum.unwrap_or(u64::MAX)))
}

/// Raises this process's soft limit on open files (only on Unix).
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    None
}
