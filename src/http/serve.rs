//! The public HTTP server: HTTP/1.1 on the connections the acceptor hands over (those that are
//! not a WebSocket handshake on their first request), with upgrades, so that a WebSocket
//! handshake arriving on a kept-alive connection can be taken back (as the gateway's own
//! stream, see `wire::polling`) and served by the gateway's own transport.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

use crate::drain::TrackedStream;

/// How long a connection may take to send a request head, idle keep-alive time included: longer
/// than a proxy keeps its idle upstream connections (nginx template: 60 s), so the proxy, not
/// the gateway, closes them; short enough that a browser's polling connection left idle after
/// its session upgraded does not hold its buffers for minutes.
const HEAD_TIMEOUT: Duration = Duration::from_secs(75);

/// Serves `app` on every connection from `incoming` until `stop` completes, then lets each
/// connection finish its request in flight and waits for all of them.
pub async fn serve(
    mut incoming: mpsc::Receiver<(TrackedStream, SocketAddr)>,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    let connections = tokio_util::task::TaskTracker::new();
    let (stopping, stopped) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            next = incoming.recv() => match next {
                Some((stream, _addr)) => {
                    connections.spawn(connection(stream, app.clone(), stopped.clone()));
                }
                None => break,
            },
            () = &mut stop => break,
        }
    }
    let _ = stopping.send(true);
    connections.close();
    connections.wait().await;
}

async fn connection(stream: TrackedStream, app: Router, mut stopped: watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => {
            if let Err(e) = done {
                tracing::trace!(error = %e, "HTTP connection ended with an error");
            }
            return;
        }
        _ = stopped.wait_for(|s| *s) => {}
    }
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::trace!(error = %e, "HTTP connection ended with an error");
    }
}
