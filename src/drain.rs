//! Graceful drain: every accepted connection is tracked so that, on shutdown, connections can be
//! closed a batch at a time over a period instead of all at once.
//!
//! A drained connection is closed at the TCP level (shutdown of both directions), not with a
//! Socket.IO disconnect packet: to the stock `socket.io-client` that is a lost transport, which
//! it reconnects by itself (through the load balancer, to another gateway), whereas after a
//! server-sent disconnect ("io server disconnect") it would stay offline until the application
//! called `connect()` again.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Open connections of one listener.
pub struct Connections {
    /// Most connections held at once; more are closed as soon as they are accepted.
    max: usize,
    /// Set when a drain starts closing connections: from then on new ones are refused, so a
    /// client that was cut reconnects elsewhere instead of coming back here.
    closing: std::sync::atomic::AtomicBool,
    next: AtomicU64,
    /// Id → the connection's socket, shared with its [`TrackedStream`]: the socket stays open
    /// while either holds it, so a drain can shut down any registered connection.
    open: Mutex<HashMap<u64, Arc<TcpStream>>>,
}

impl Connections {
    /// An empty registry that holds at most `max` connections.
    pub fn with_limit(max: usize) -> Self {
        Self {
            max,
            closing: std::sync::atomic::AtomicBool::new(false),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Whether new connections are refused: the limit is reached or a drain is closing.
    pub fn is_full(&self) -> bool {
        self.closing.load(Ordering::SeqCst) || self.len() >= self.max
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// Shuts down up to `n` connections (both directions); returns how many.
    pub fn close_some(&self, n: usize) -> usize {
        let taken: Vec<Arc<TcpStream>> = {
            let mut open = self.open.lock();
            let ids: Vec<u64> = open.keys().take(n).copied().collect();
            ids.iter().filter_map(|id| open.remove(id)).collect()
        };
        for tcp in &taken {
            shutdown(tcp);
        }
        taken.len()
    }
}

/// Accepts connections on `inner`, registers them in `connections` and hands each to
/// `on_accept`. Connections past the limit (or during a drain) are refused at once.
pub async fn accept_loop(
    inner: TcpListener,
    connections: Arc<Connections>,
    mut on_accept: impl FnMut(TrackedStream, SocketAddr),
) {
    loop {
        match inner.accept().await {
            Ok((stream, addr)) => {
                if connections.is_full() {
                    // Refuse at once (the client sees a reset and tries elsewhere) rather
                    // than run out of descriptors and leave clients hanging.
                    ::metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
                    tracing::debug!(%addr, "connection refused: the gateway is full");
                    drop(stream);
                    continue;
                }
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                let id = connections.next.fetch_add(1, Ordering::Relaxed);
                let stream = Arc::new(stream);
                connections.open.lock().insert(id, stream.clone());
                let io = TrackedStream {
                    inner: stream,
                    id,
                    connections: connections.clone(),
                };
                on_accept(io, addr);
            }
            Err(e) => {
                // Out of descriptors or similar: back off instead of spinning.
                ::metrics::counter!(crate::metrics::ACCEPT_ERRORS).increment(1);
                tracing::warn!(error = %e, "accept failed; set GATEWAY_MAX_CONNECTIONS below the open-file limit");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An accepted connection that deregisters itself when dropped.
pub struct TrackedStream {
    inner: Arc<TcpStream>,
    id: u64,
    connections: Arc<Connections>,
}

impl TrackedStream {
    /// The TCP stream itself.
    pub fn tcp(&self) -> &TcpStream {
        &self.inner
    }

    /// Shuts the connection down (both directions) and deregisters it, now, even while others
    /// still hold the stream (a cut, or the end of a session others may still write to).
    pub fn close(&self) {
        self.connections.open.lock().remove(&self.id);
        shutdown(&self.inner);
    }
}

/// Shuts a connection down in both directions.
fn shutdown(tcp: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Both) {
        tracing::debug!(error = %e, "shutdown of a connection that is gone already");
    }
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.connections.open.lock().remove(&self.id);
    }
}

// The socket is shared with the registry, so reads and writes go through `&TcpStream`:
// readiness (`ready`), then a non-blocking attempt (`op`), again until it does not block.
fn poll_io<T>(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    ready: fn(&TcpStream, &mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut(&TcpStream) -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        std::task::ready!(ready(tcp, cx))?;
        match op(tcp) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = |tcp: &TcpStream| tcp.try_read(buf.initialize_unfilled());
        let n = std::task::ready!(poll_io(&self.inner, cx, TcpStream::poll_read_ready, read))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        poll_io(&self.inner, cx, TcpStream::poll_write_ready, |tcp| {
            tcp.try_write(buf)
        })
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        poll_io(&self.inner, cx, TcpStream::poll_write_ready, |tcp| {
            tcp.try_write_vectored(bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.inner).shutdown(std::net::Shutdown::Write))
    }
}

/// How often a drain closes a batch.
const STEP: Duration = Duration::from_millis(100);

/// Closes every connection in even batches over `period` (connections opened meanwhile are
/// included in later batches). Returns how many were closed.
pub async fn close_gradually(connections: &Connections, period: Duration) -> usize {
    connections.closing.store(true, Ordering::SeqCst);
    let steps = (period.as_millis() / STEP.as_millis()).max(1) as usize;
    let mut closed = 0;
    for step in 0..steps {
        let open = connections.len();
        if open == 0 {
            break;
        }
        let batch = open.div_ceil(steps - step);
        closed += connections.close_some(batch);
        if step + 1 < steps {
            tokio::time::sleep(STEP).await;
        }
    }
    closed + connections.close_some(usize::MAX)
}
