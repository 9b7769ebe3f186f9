//! The accept loop and HTTP/1.1 connections, with the timeouts `axum::serve` does not have.
//!
//! A connection is always in one of three phases, and each phase has its own bound:
//! - reading a request head (from the accept, or from the first byte of a later request):
//!   closed after `server.header_timeout_ms` without a complete head;
//! - idle between keep-alive requests: closed after `server.keepalive_timeout_ms` without a
//!   byte;
//! - busy (a request is being handled): its body must arrive within
//!   `server.body_timeout_ms` (else 408); the handler's own backends are bounded by theirs.
//!
//! On shutdown, connections that are not busy are closed at once and busy ones after their
//! response, so neither an idle keep-alive nor a half-sent request holds the process open.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// The three connection timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub keepalive: Duration,
}

impl Timeouts {
    #[must_use]
    pub fn from_config(server: &ServerConfig) -> Timeouts {
        Timeouts {
            header: Duration::from_millis(server.header_timeout_ms),
            body: Duration::from_millis(server.body_timeout_ms),
            keepalive: Duration::from_millis(server.keepalive_timeout_ms),
        }
    }
}

/// How long the accept loop pauses after an error that is not about one connection (out of
/// file descriptors): the listener stays readable, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, closes idle
/// connections, lets busy ones finish, and returns once every connection is gone.
/// WebSocket upgrades leave this function's bookkeeping once switched: sessions have their
/// own shutdown.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    timeouts: Timeouts,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a receiver; `closed()` resolves when the last one ends.
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                metrics.accept_error();
                if !is_connection_error(&error) {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        // Frames are small and latency matters: no Nagle delay on any socket.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            timeouts,
            stop_rx.clone(),
            done_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;

/// The phase of one connection and when it began, shared by its I/O, its service and its
/// watchdog.
struct Clock {
    base: Instant,
    phase: AtomicU8,
    /// Milliseconds after `base` at which the phase began.
    since: AtomicU64,
    /// Wakes the watchdog when the phase changes, so it re-arms its timer.
    changed: Notify,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: Instant::now(),
            // A new connection owes its first request head at once.
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: u8) {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since.store(elapsed, Ordering::Release);
        self.phase.store(phase, Ordering::Release);
        self.changed.notify_one();
    }

    /// Bytes arrived: an idle connection is now reading a request head.
    fn bytes_read(&self) {
        // A plain load first: most reads (request bodies, WebSocket frames after an upgrade)
        // change nothing, and should not pay for a read-modify-write.
        if self.phase.load(Ordering::Acquire) == IDLE
            && self
                .phase
                .compare_exchange(IDLE, HEAD, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.since.store(elapsed, Ordering::Release);
            self.changed.notify_one();
        }
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// When the current phase runs out, if it has a bound here.
    fn deadline(&self, timeouts: &Timeouts) -> Option<Instant> {
        let limit = match self.phase() {
            IDLE => timeouts.keepalive,
            HEAD => timeouts.header,
            _ => return None,
        };
        let since = Duration::from_millis(self.since.load(Ordering::Acquire));
        Some(self.base + since + limit)
    }
}

/// The TCP stream, telling the clock when bytes arrive.
struct TimedIo {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for TimedIo {
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

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
) {
    let clock = Arc::new(Clock::new());
    let io = TokioIo::new(TimedIo {
        inner: tcp,
        clock: clock.clone(),
    });
    let service_clock = clock.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        service_clock.set(BUSY);
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, timeouts.body)));
        // What the client-address limits start from.
        request.extensions_mut().insert(ConnectInfo(peer));
        let clock = service_clock.clone();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await;
            // Busy until the response body has been sent, not merely produced.
            response.map(|response| response.map(|body| TrackedBody { inner: body, clock }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = clock.deadline(&timeouts);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = clock.changed.notified() => {}
            () = sleep_until_some(deadline) => {
                // The phase may have moved on while the timer ran.
                if clock.deadline(&timeouts).is_some_and(|d| d <= Instant::now()) {
                    return; // dropping the connection closes the socket
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                // Nothing is owed to a connection between requests or still sending its
                // head; a busy one gets its response, then hyper closes it.
                if clock.phase() != BUSY {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        // Busy: the phase change at the end of the request wakes the watchdog.
        None => std::future::pending().await,
    }
}

/// A response body that ends the connection's busy phase when it has been sent in full (or
/// dropped unsent).
struct TrackedBody {
    inner: Body,
    clock: Arc<Clock>,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        // hyper drops the body once it has written its last frame.
        self.clock.set(IDLE);
    }
}

/// The error a request body yields when it has not arrived within `server.body_timeout_ms`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes: a total bound
/// on the body, not a per-read one, so a byte every few seconds cannot keep it open.
struct DeadlineBody {
    inner: Incoming,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, limit: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit)))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
