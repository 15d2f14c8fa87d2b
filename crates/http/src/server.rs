//! The HTTP server: an accept loop that bounds what clients can hold.
//!
//! A station's file descriptors are shared by its web clients and its sticks
//! (a hub's by its clients and its database connections). Without a bound, a
//! thousand idle TCP connections used them all up: the health check timed out,
//! and sticks that could not be opened were recorded as failed. So:
//!
//! - at most [`ServerLimits::max_connections`] connections are served at once.
//!   When all are taken, a new connection pushes out the oldest one that has
//!   not sent a byte yet (an idle flood cannot starve the operator's requests);
//!   if every connection is busy, the next one waits in the kernel's backlog
//!   (holding no descriptor of ours) until one closes;
//! - a connection must send a request's headers within
//!   [`ServerLimits::header_timeout`], the first request and every next one on a
//!   kept-alive connection alike (hyper's header read timeout);
//! - an accept that fails (`EMFILE`, `ENFILE`, `ENOMEM`) is retried after a
//!   short pause instead of spinning;
//! - on shutdown no new connection is taken, idle ones are closed, requests in
//!   flight get [`ServerLimits::shutdown_grace`] to finish (uploads and imports end
//!   at once: they watch the shutdown), and what is left after that is closed.
//!
//! The binary keeps descriptors for the sticks: it raises its soft
//! `RLIMIT_NOFILE` to the hard limit and keeps `max_connections` well below it.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

/// The bounds of the accept loop.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection must send a request's headers within this time.
    pub header_timeout: Duration,
    /// After shutdown is asked, how long requests in flight may take before
    /// their connections are closed.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` within `limits` until `stopped` turns true.
/// Endless responses (event streams) must end by themselves when `stopped`
/// turns true, or they are closed after the grace.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let registry = Arc::new(Registry::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let (stream, remote) = tokio::select! {
            _ = until_stopped(&mut stopped) => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or memory (or a connection reset before
                    // it was accepted): pause rather than spin; connections that
                    // close meanwhile give descriptors back.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = tokio::select! {
            _ = until_stopped(&mut stopped) => break,
            slot = registry.admit() => slot,
        };
        connections.spawn(serve_connection(
            stream,
            remote,
            app.clone(),
            slot,
            limits.header_timeout,
            stopped.clone(),
        ));
        // Reap the connections that ended, so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "requests still running after the shutdown grace: closing their connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Completes once `stopped` is true (or its sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not across an
    // await of the caller.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

/// One connection, from its first byte to its end (or its eviction, or the
/// end of the shutdown grace).
async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    slot: Slot,
    header_timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Heard {
        inner: stream,
        heard: Arc::clone(&slot.state),
    });
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(remote));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let state = Arc::clone(&slot.state);
    let evicted = state.evict.notified();
    tokio::pin!(evicted);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%remote, %error, "connection ended with an error");
                }
                break;
            }
            _ = until_stopped(&mut stopped), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = &mut evicted => {
                tracing::debug!(%remote, "closing an idle connection to make room");
                break;
            }
        }
    }
    drop(slot);
}

/// What the registry and a connection's task share about it.
struct ConnectionState {
    /// Set once the client sent a byte: from then on the connection is not
    /// pushed out to make room.
    heard: AtomicBool,
    /// Set once the connection was chosen to make room (chosen once).
    evicting: AtomicBool,
    /// Wakes the connection's task to close it.
    evict: Notify,
}

/// The open connections, oldest first, and how many may be open.
struct Registry {
    max: usize,
    open: Mutex<Open>,
    /// Wakes the accept loop when a connection closed.
    freed: Notify,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By id, so by age: the first is the oldest.
    connections: BTreeMap<u64, Arc<ConnectionState>>,
}

impl Registry {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(Open::default()),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for a new connection: at once below the limit; otherwise after
    /// the oldest silent connection was pushed out, or after any closed.
    async fn admit(self: &Arc<Self>) -> Slot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a close in between is not missed.
            freed.as_mut().enable();
            {
                let mut open = self.lock();
                if open.connections.len() < self.max {
                    let id = open.next_id;
                    open.next_id += 1;
                    let state = Arc::new(ConnectionState {
                        heard: AtomicBool::new(false),
                        evicting: AtomicBool::new(false),
                        evict: Notify::new(),
                    });
                    open.connections.insert(id, Arc::clone(&state));
                    return Slot {
                        id,
                        state,
                        registry: Arc::clone(self),
                    };
                }
                let victim = open.connections.values().find(|c| {
                    !c.heard.load(Ordering::Relaxed) && !c.evicting.load(Ordering::Relaxed)
                });
                if let Some(victim) = victim {
                    victim.evicting.store(true, Ordering::Relaxed);
                    // `notify_one` keeps the wake-up if the task is not waiting yet.
                    victim.evict.notify_one();
                }
            }
            freed.await;
        }
    }
}

/// A connection's place in the registry; freed when dropped.
struct Slot {
    id: u64,
    state: Arc<ConnectionState>,
    registry: Arc<Registry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.registry.lock().connections.remove(&self.id);
        self.registry.freed.notify_one();
    }
}

/// The connection's socket, noting when the client first sends something.
struct Heard {
    inner: TcpStream,
    heard: Arc<ConnectionState>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.heard.store(true, Ordering::Relaxed);
        }
        result
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
