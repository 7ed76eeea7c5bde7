//! The listeners of `evosync serve`: an accept loop of our own over hyper's HTTP/1 connections, so that every bound
//! on a connection lives here, in one place:
//!
//! - at most `max_connections` open at once per listener (`http.max_connections` for the API): the loop takes a
//!   slot before it accepts, so the next client waits in the kernel's backlog until one closes;
//! - a request head within `http.header_timeout_seconds` (a new connection's first request from the moment it is
//!   accepted, a later one from its first byte), and no more than `MAX_HEAD_BYTES` of it;
//! - a kept-alive connection idle for `http.idle_timeout_seconds` between requests is closed;
//! - every request body is wrapped in `body::StallGuard` (`http.body_stall_seconds`), and a connection whose writes
//!   have been blocked that long (a client that does not read its answer) is closed;
//! - the client's address reaches the handlers as axum's `ConnectInfo<SocketAddr>`;
//! - a request body dropped before its end marks its connection: the answer says `Connection: close`, and the
//!   connection lingers when hyper shuts it down (`linger`: what the client still sends is read and discarded, within
//!   `http.linger_*`), so that a client that writes its whole body before it reads gets the answer, not a reset;
//! - on shutdown, no more accepts, idle connections close, requests in flight get `SHUTDOWN_GRACE` to finish.
//!
//! `serve_connection` takes any byte stream: a listener with TLS hands each connection to `tls::serve_connection`,
//! which shakes hands (within the header timeout) and then calls it. A connection that upgrades (the SSH tunnel's
//! WebSocket) keeps its place under the cap for as long as the upgraded stream lives: the request carries it as an
//! `Upgradable` extension, with the shutdown signal.

use super::body;
use super::linger::{Drain, Linger, Lingered};
use super::metrics::Metrics;
use crate::config::HttpLimits;
use crate::log::{Line, SERVE};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

/// The most a request's line and headers may hold (hyper answers 431 above it), and how many headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// How long shutdown waits for the requests in flight (an upload, an event stream) before the process exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Connections the metrics listener holds open at once (its own, so a flood of the API cannot shut scrapes out).
pub const METRICS_CONNECTIONS: usize = 16;
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound socket, the routes it serves, and how many connections it keeps open at once.
pub struct Listener {
    /// For the log lines: `api`, `metrics`.
    pub name: &'static str,
    pub tcp: TcpListener,
    pub router: Router,
    pub max_connections: usize,
    /// TLS on every connection (`tls_cert`, `tls_key`), else plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

/// How long a connection may take over each step, and what its lingering close may cost.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub body_stall: Duration,
    pub linger: Linger,
}

impl From<&HttpLimits> for Timeouts {
    fn from(limits: &HttpLimits) -> Timeouts {
        Timeouts {
            header: Duration::from_secs(limits.header_timeout_seconds),
            idle: Duration::from_secs(limits.idle_timeout_seconds),
            body_stall: Duration::from_secs(limits.body_stall_seconds),
            linger: Linger {
                time: Duration::from_secs(limits.linger_seconds),
                idle: Duration::from_secs(limits.linger_idle_seconds),
                bytes: limits.linger_bytes.0,
            },
        }
    }
}

/// What every connection of the service shares: its routes, its bounds, and the counters of its lingering closes.
#[derive(Clone)]
pub struct ConnSetup {
    pub router: Router,
    pub timeouts: Timeouts,
    pub metrics: Arc<Metrics>,
}

/// Serves every listener until `shutdown` completes, then shuts down gracefully; lingering closes count in `metrics`.
pub async fn serve(
    listeners: Vec<Listener>,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopped) = watch::channel(false);
    let mut running = Vec::new();
    for listener in listeners {
        let slots = Arc::new(Semaphore::new(listener.max_connections));
        let all = listener.max_connections as u32;
        let setup = ConnSetup { router: listener.router.clone(), timeouts, metrics: metrics.clone() };
        running.push((tokio::spawn(accept_loop(listener, setup, slots.clone(), stopped.clone())), slots, all));
    }
    shutdown.await;
    let _ = stop.send(true);
    let drained = async {
        for (accepting, slots, all) in running {
            let _ = accepting.await;
            // Every connection holds a slot until it ends: all of them back means all connections closed.
            let _ = slots.acquire_many(all).await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        Line::of(SERVE).field("event", "shutdown").field("unfinished", "requests still in flight were cut").to_stderr();
    }
}

async fn accept_loop(listener: Listener, setup: ConnSetup, slots: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.tcp.accept() => accepted,
            _ = stop.wait_for(|stopping| *stopping) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let setup = setup.clone();
                match &listener.tls {
                    Some(tls) => {
                        let (tls, stop) = (tls.clone(), stop.clone());
                        tokio::spawn(super::tls::serve_connection(tls, stream, peer, setup, stop, slot));
                    }
                    None => {
                        tokio::spawn(serve_connection(stream, Some(peer), setup, stop.clone(), slot));
                    }
                }
            }
            Err(error) => {
                drop(slot);
                Line::of(SERVE)
                    .field("event", "accept-error")
                    .field("listener", listener.name)
                    .field("error", error)
                    .to_stderr();
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection until it ends, times out, or shutdown closes it; `slot` is its place under the cap.
pub async fn serve_connection<IO>(
    io: IO,
    peer: Option<SocketAddr>,
    setup: ConnSetup,
    mut stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnSetup { router, timeouts, metrics } = setup;
    let clock = Arc::new(ConnClock::new());
    let io = TokioIo::new(Watched::new(io, clock.clone(), timeouts.linger));
    let upgradable = Upgradable { _slot: Arc::new(slot), stop: stop.clone() };
    let service = ConnService { router, peer, clock: clock.clone(), body_stall: timeouts.body_stall, upgradable };
    let mut builder = http1::Builder::new();
    // No hyper timer: its header timeout would also cut idle kept-alive connections; `ConnClock` keeps both apart.
    builder.max_header_size(MAX_HEAD_BYTES).max_headers(MAX_HEADERS).header_read_timeout(None::<Duration>);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    refused_head(&error, peer);
                }
                if let Some(lingered) = clock.take_lingered() {
                    lingered.record(&metrics, timeouts.linger, peer);
                }
                return;
            }
            _ = stop.wait_for(|stopping| *stopping), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            expiry = clock.expired(timeouts) => {
                let (reason, message) = match expiry {
                    Expiry::Idle => return, // an ordinary end of a kept-alive connection; dropping it closes it
                    Expiry::Header => ("header-timeout", format!("no complete request head within {} s", timeouts.header.as_secs())),
                    Expiry::WriteStall => ("write-stalled", format!("the client read nothing of its answer for {} s", timeouts.body_stall.as_secs())),
                };
                Line::of(SERVE)
                    .field("event", "refuse")
                    .field("reason", reason)
                    .field("message", message)
                    .field_opt("client", peer)
                    .to_stderr();
                return;
            }
        }
    }
}

/// One log line for a request head hyper refused (too large, malformed); a client that just went away says nothing.
fn refused_head(error: &hyper::Error, peer: Option<SocketAddr>) {
    let reason = if error.is_parse_too_large() {
        "head-too-large"
    } else if error.is_parse() {
        "bad-head"
    } else {
        return;
    };
    Line::of(SERVE)
        .field("event", "refuse")
        .field("reason", reason)
        .field("message", error)
        .field_opt("client", peer)
        .to_stderr();
}

/// Why a connection was closed by its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// A request head did not arrive whole in time.
    Header,
    /// Kept alive with nothing asked for too long.
    Idle,
    /// The client has not read what was written to it for `body_stall`.
    WriteStall,
}

/// What a connection is doing, as far as its timeouts care.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No request in flight since `since`; `first` on a new connection; `head_began` once a byte of the next request
    /// has arrived.
    AwaitingHead { since: Instant, first: bool, head_began: Option<Instant> },
    /// Requests in flight: their bodies have the stall guard, and handlers take the time they need.
    Busy { requests: usize },
    /// The last answer is out and the connection closes, lingering: its drain keeps bounds of its own.
    Lingering,
}

struct ConnClock {
    phase: Mutex<Phase>,
    /// True while waiting for the first byte of a request head (read on every read, so kept apart from the lock).
    awaiting_first_byte: AtomicBool,
    born: Instant,
    /// Since when the socket has refused our writes, in milliseconds after `born`, plus one; 0 while it takes them.
    write_blocked_since: AtomicU64,
    /// A request's body was dropped before its end since the last request began: its rest may still be on its way.
    body_unread: AtomicBool,
    /// How the lingering close went, once it is over.
    lingered: Mutex<Option<Lingered>>,
}

impl ConnClock {
    fn new() -> ConnClock {
        let born = Instant::now();
        let phase = Phase::AwaitingHead { since: born, first: true, head_began: None };
        ConnClock {
            phase: Mutex::new(phase),
            awaiting_first_byte: AtomicBool::new(true),
            born,
            write_blocked_since: AtomicU64::new(0),
            body_unread: AtomicBool::new(false),
            lingered: Mutex::new(None),
        }
    }

    /// A request's body was dropped before its end: the client may still be sending it.
    fn body_left_unread(&self) {
        self.body_unread.store(true, Ordering::Release);
    }

    fn body_is_unread(&self) -> bool {
        self.body_unread.load(Ordering::Acquire)
    }

    /// The connection closes: whether it lingers (a body was left unread), in which case its own clock stops.
    fn closing_lingers(&self) -> bool {
        let linger = self.body_is_unread();
        if linger {
            if let Ok(mut phase) = self.phase.lock() {
                *phase = Phase::Lingering;
            }
        }
        linger
    }

    fn linger_ended(&self, lingered: Lingered) {
        if let Ok(mut slot) = self.lingered.lock() {
            *slot = Some(lingered);
        }
    }

    fn take_lingered(&self) -> Option<Lingered> {
        self.lingered.lock().ok()?.take()
    }

    /// A write found the socket full (the client is not reading); the clock starts unless it runs already.
    fn write_blocked(&self) {
        let since = self.born.elapsed().as_millis() as u64 + 1;
        let _ = self.write_blocked_since.compare_exchange(0, since, Ordering::AcqRel, Ordering::Acquire);
    }

    fn write_went_through(&self) {
        if self.write_blocked_since.load(Ordering::Acquire) != 0 {
            self.write_blocked_since.store(0, Ordering::Release);
        }
    }

    fn bytes_arrived(&self) {
        if self.awaiting_first_byte.swap(false, Ordering::AcqRel) {
            if let Ok(mut phase) = self.phase.lock() {
                if let Phase::AwaitingHead { head_began: head_began @ None, .. } = &mut *phase {
                    *head_began = Some(Instant::now());
                }
            }
        }
    }

    fn begin_request(self: &Arc<Self>) -> InFlight {
        self.awaiting_first_byte.store(false, Ordering::Release);
        // hyper reads a new request only once the last one's body is over: read, or drained by hyper itself.
        self.body_unread.store(false, Ordering::Release);
        if let Ok(mut phase) = self.phase.lock() {
            *phase = match *phase {
                Phase::Busy { requests } => Phase::Busy { requests: requests + 1 },
                Phase::AwaitingHead { .. } | Phase::Lingering => Phase::Busy { requests: 1 },
            };
        }
        InFlight(self.clone())
    }

    fn end_request(&self) {
        if let Ok(mut phase) = self.phase.lock() {
            *phase = match *phase {
                Phase::Busy { requests } if requests > 1 => Phase::Busy { requests: requests - 1 },
                Phase::Lingering => Phase::Lingering,
                _ => {
                    self.awaiting_first_byte.store(true, Ordering::Release);
                    Phase::AwaitingHead { since: Instant::now(), first: false, head_began: None }
                }
            };
        }
    }

    /// When the connection expires as things stand, and why; `None` while a request is in flight and its answer
    /// goes out.
    fn deadline(&self, timeouts: Timeouts) -> Option<(Instant, Expiry)> {
        let phase = match *self.phase.lock().ok()? {
            Phase::Busy { .. } | Phase::Lingering => None,
            Phase::AwaitingHead { since, first: true, .. } => Some((since + timeouts.header, Expiry::Header)),
            Phase::AwaitingHead { head_began: Some(began), .. } => Some((began + timeouts.header, Expiry::Header)),
            Phase::AwaitingHead { since, .. } => Some((since + timeouts.idle, Expiry::Idle)),
        };
        let write = match self.write_blocked_since.load(Ordering::Acquire) {
            0 => None,
            since => Some((self.born + Duration::from_millis(since - 1) + timeouts.body_stall, Expiry::WriteStall)),
        };
        match (phase, write) {
            (Some(phase), Some(write)) => Some(if write.0 < phase.0 { write } else { phase }),
            (phase, write) => phase.or(write),
        }
    }

    /// Completes once the connection has expired.
    async fn expired(&self, timeouts: Timeouts) -> Expiry {
        loop {
            match self.deadline(timeouts) {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => tokio::time::sleep_until(at).await,
                // Look again later: the request may end and the connection idle, or its writes block (a lingering
                // close ends by its own bounds).
                None => tokio::time::sleep(timeouts.header.min(timeouts.idle).min(timeouts.body_stall)).await,
            }
        }
    }
}

/// A request in flight on a connection, until its response body has gone out (or was dropped).
struct InFlight(Arc<ConnClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// The byte stream of a connection, telling its clock when bytes arrive, and lingering when hyper shuts it down
/// after an answer that left a body unread.
struct Watched<IO> {
    inner: IO,
    clock: Arc<ConnClock>,
    linger: Linger,
    closing: Closing,
}

/// Where a connection's shutdown stands.
enum Closing {
    Open,
    /// Our half is shut (the answer is out, then FIN); what the client still sends is read and discarded.
    Draining(Drain),
    Closed,
}

impl<IO> Watched<IO> {
    fn new(inner: IO, clock: Arc<ConnClock>, linger: Linger) -> Watched<IO> {
        Watched { inner, clock, linger, closing: Closing::Open }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.bytes_arrived();
        }
        polled
    }
}

impl<IO> Watched<IO> {
    /// Tells the clock whether the socket took the write.
    fn wrote<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.clock.write_blocked(),
            Poll::Ready(_) => self.clock.write_went_through(),
        }
        polled
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, slices);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// hyper shuts the connection down once its last answer is out. Our half is shut first (the client reads the
    /// answer, then the end of the stream); then, if a body was left unread, the drain runs to its end.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.closing = if this.clock.closing_lingers() {
                        Closing::Draining(Drain::new(this.linger))
                    } else {
                        Closing::Closed
                    };
                }
                Closing::Draining(drain) => {
                    let lingered = ready!(drain.poll_drain(&mut this.inner, cx));
                    this.clock.linger_ended(lingered);
                    this.closing = Closing::Closed;
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// What an upgraded connection (the tunnel) keeps of the connection it came from: its place under the cap, until
/// the last clone is dropped, and the shutdown signal.
#[derive(Clone)]
pub struct Upgradable {
    _slot: Arc<OwnedSemaphorePermit>,
    pub stop: watch::Receiver<bool>,
}

/// The router as hyper calls it on one connection: each request gets the stall guard on its body and the client's
/// address, and counts as in flight until its response body is done.
struct ConnService {
    router: Router,
    peer: Option<SocketAddr>,
    clock: Arc<ConnClock>,
    body_stall: Duration,
    upgradable: Upgradable,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Tracked>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, request: Request<Incoming>) -> Answer {
        let in_flight = self.clock.begin_request();
        let clock = self.clock.clone();
        let mut request = request
            .map(|incoming| body::guarded(NoticedBody { inner: incoming, clock, ended: false }, self.body_stall));
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        request.extensions_mut().insert(self.upgradable.clone());
        let answer = self.router.clone().oneshot(request);
        let clock = self.clock.clone();
        Box::pin(async move {
            let mut response = answer.await?;
            // The connection will close after this answer (and linger): say so, so that a client keeping connections
            // alive sends its next request on a new one rather than into the drain.
            if clock.body_is_unread() {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Tracked { body, _in_flight: in_flight }))
        })
    }
}

/// A request body that tells its connection when it is dropped before its end: the client may still be sending the
/// rest, and the connection then lingers when it closes.
struct NoticedBody {
    inner: Incoming,
    clock: Arc<ConnClock>,
    ended: bool,
}

impl HttpBody for NoticedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for NoticedBody {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            self.clock.body_left_unread();
        }
    }
}

/// A response body that keeps its request in flight until it is done.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        body_stall: Duration::from_secs(30),
        linger: Linger { time: Duration::from_secs(5), idle: Duration::from_secs(2), bytes: 1 << 20 },
    };

    #[tokio::test(start_paused = true)]
    async fn each_phase_of_a_connection_has_its_deadline() {
        let clock = Arc::new(ConnClock::new());
        let born = Instant::now();
        assert_eq!(clock.deadline(TIMEOUTS), Some((born + TIMEOUTS.header, Expiry::Header)), "the first head");
        tokio::time::advance(Duration::from_secs(3)).await;
        clock.bytes_arrived();
        assert_eq!(clock.deadline(TIMEOUTS), Some((born + TIMEOUTS.header, Expiry::Header)), "counted from accept");
        let request = clock.begin_request();
        assert_eq!(clock.deadline(TIMEOUTS), None, "a request in flight takes its time");
        tokio::time::advance(Duration::from_secs(100)).await;
        let answered = Instant::now();
        drop(request);
        assert_eq!(clock.deadline(TIMEOUTS), Some((answered + TIMEOUTS.idle, Expiry::Idle)), "kept alive");
        tokio::time::advance(Duration::from_secs(5)).await;
        clock.bytes_arrived();
        let next = Instant::now();
        assert_eq!(clock.deadline(TIMEOUTS), Some((next + TIMEOUTS.header, Expiry::Header)), "from its first byte");

        let request = clock.begin_request();
        clock.write_blocked();
        let blocked = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.write_blocked();
        assert_eq!(clock.deadline(TIMEOUTS), Some((blocked + TIMEOUTS.body_stall, Expiry::WriteStall)));
        clock.write_went_through();
        assert_eq!(clock.deadline(TIMEOUTS), None);
        drop(request);
        tokio::time::advance(TIMEOUTS.idle).await;
        assert_eq!(clock.expired(TIMEOUTS).await, Expiry::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_lingers_only_after_a_body_left_unread_and_its_own_clock_stops() {
        let clock = Arc::new(ConnClock::new());
        let request = clock.begin_request();
        drop(request);
        assert!(!clock.closing_lingers(), "nothing was left unread");
        let request = clock.begin_request();
        clock.body_left_unread();
        drop(request);
        let next = clock.begin_request();
        assert!(!clock.body_is_unread(), "a new request means the last body is over");
        clock.body_left_unread();
        drop(next);
        assert!(clock.closing_lingers());
        clock.bytes_arrived();
        assert_eq!(clock.deadline(TIMEOUTS), None, "the drain keeps its own bounds, not the header timeout");
    }
}
