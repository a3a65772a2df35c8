//! The HTTP server loop: hyper under our own accept loop, so that idle, slow or
//! half-open connections cannot starve the others, and shutdown is bounded.
//!
//! `axum::serve` sets no header timeout and no connection cap: 1,124 connections that
//! never sent a byte once held every file descriptor, and a client holding the SSE
//! stream open kept SIGTERM from ever completing. Here:
//! - a connection must send a request's headers within `header_timeout` (hyper starts
//!   the clock as soon as it waits for a head, so one that sends nothing is closed
//!   too), and a request's body within `body_timeout`;
//! - at most `max_connections` are open; at the cap, new ones wait in the kernel's
//!   accept queue until a slot frees (the header timeout frees slots held by idle
//!   connections);
//! - on shutdown, the listener closes, streams are told to end (see
//!   [`crate::AppState::close_streams`]), in-flight requests finish, and whatever is
//!   still open after `grace` is dropped.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;

/// What the server allows a connection. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send a request's headers (also the idle time allowed
    /// between keep-alive requests).
    pub header_timeout: Duration,
    /// Time a request has to send its body.
    pub body_timeout: Duration,
    /// Time in-flight requests get to finish after shutdown begins.
    pub grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains as described
/// in the module documentation and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ServeLimits,
) -> std::io::Result<()> {
    let router = router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_timeout,
    ));
    // HTTP/1.1 only. hyper-util's HTTP/1-or-2 builder first waits, without any
    // timeout, for the bytes that tell the versions apart: a connection that sends
    // nothing would never reach the header timeout.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut shutdown => break,
        };
        let Ok(slot) = slot else { break }; // the semaphore is never closed
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not
                    // fatal. Back off a moment instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // A connection that ends in error (reset, timeout) concerns only itself.
            let _ = conn.await;
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.grace) => {
            tracing::warn!(grace = ?limits.grace, "connections still open after the grace period are dropped");
        }
    }
    Ok(())
}
