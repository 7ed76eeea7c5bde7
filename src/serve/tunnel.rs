//! The SSH tunnel over HTTPS, for parties whose network lets only HTTPS out: `GET /api/sync/ssh` upgrades to a
//! WebSocket (RFC 6455, binary frames) and joins it to the local sshd that `tunnel_ssh` names, and nothing else.
//! SSH still authenticates end to end and the gate still decides everything; the tunnel only carries bytes.
//!
//! What holds a tunnel to its party, and bounds it:
//! - the `Caller` extractor (the party's API key, its rate) runs before anything, then the policy's `tunnel: true`,
//!   then `limits.max_tunnels` (a `Slot`, taken before sshd is dialled, given back when the tunnel ends);
//! - the book (`Tunnels`) records each tunnel's TCP connection to sshd (our address, sshd's) with the party, before
//!   the upgrade is answered, so before a byte of the worker reaches sshd. The gate reads `SSH_CONNECTION` and asks
//!   the service over the broker socket whose tunnel it came through (`transport_answer`); a session whose SSH key
//!   is another party's than the tunnel's API key is refused there (the one-party rule, `gate::transport`);
//! - a frame or message from the worker is at most `MAX_FRAME` bytes (1009 above it), text frames are refused
//!   (1003), a tunnel that carries no byte either way for `http.tunnel_idle_seconds` is closed (1008), and the
//!   upgraded connection keeps its place under `http.max_connections` until it ends;
//! - bytes in and out are counted per party in `/metrics`; each tunnel's end is one log line with its reason.

use super::auth::Caller;
use super::error::ApiError;
use super::listen::Upgradable;
use super::metrics;
use super::state::{AppState, Shared};
use crate::broker::Answer;
use crate::log::{Line, SERVE};
use axum::extract::rejection::ExtensionRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Extension, Router};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The endpoint's path.
pub const PATH: &str = "/api/sync/ssh";
/// The largest frame, and message, a worker may send (SSH packets are at most 256 KiB; the clients send 64 KiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Bytes read from sshd for one frame to the worker.
const READ_CHUNK: usize = 64 * 1024;
/// How long sshd may take to accept the tunnel's connection.
const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// How long the closing frame may take to reach a worker that does not read.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Bytes counted locally before they are added to the party's counters in `/metrics`.
const METRICS_EVERY: u64 = 1 << 20;

/// The endpoint, when `tunnel_ssh` turns it on (otherwise no route: 404 like any unknown path).
pub fn routes(state: &Shared) -> Router<Shared> {
    match state.config.tunnel_ssh() {
        Some(_) => Router::new()
            .route(PATH, get(open))
            .route_layer(middleware::from_fn_with_state(state.clone(), metrics::count_requests)),
        None => Router::new(),
    }
}

/// The open tunnels: how many each party holds, and whose each sshd connection is.
#[derive(Default)]
pub struct Tunnels {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    open: HashMap<String, u32>,
    /// (our end, sshd's end) of each tunnel's TCP connection, as sshd names them in `SSH_CONNECTION`.
    sessions: HashMap<(SocketAddr, SocketAddr), String>,
}

impl Tunnels {
    /// The party whose tunnel the SSH session from `client` to `server` came through, if any did.
    pub fn party_of(&self, client: SocketAddr, server: SocketAddr) -> Option<String> {
        let book = self.book.lock().ok()?;
        book.sessions.get(&(canonical(client), canonical(server))).cloned()
    }

    /// Tunnels open now, by party.
    pub fn open_by_party(&self) -> Vec<(String, u32)> {
        let Ok(book) = self.book.lock() else { return Vec::new() };
        let mut open: Vec<(String, u32)> = book.open.iter().map(|(party, n)| (party.clone(), *n)).collect();
        open.sort();
        open
    }
}

/// The broker's answer to a gate asking how a session came in (`broker::Request::Transport`). A party's own
/// account learns the tunnel's party only when it is its own.
pub fn transport_answer(
    state: &AppState,
    trusted: bool,
    account: Option<&str>,
    client: SocketAddr,
    server: SocketAddr,
) -> Answer {
    match state.tunnels.party_of(client, server) {
        None => Answer::Direct,
        Some(party) if trusted || account.and_then(|a| a.strip_prefix("evosync-")) == Some(party.as_str()) => {
            Answer::Tunnel { party: Some(party) }
        }
        Some(_) => Answer::Tunnel { party: None },
    }
}

/// IPv4-mapped IPv6 addresses as the IPv4 ones they are, so either way of naming a session matches.
fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// A party's place among its `max_tunnels`, and its sshd connection in the book; both given back on drop.
struct Slot {
    state: Shared,
    party: String,
    session: Option<(SocketAddr, SocketAddr)>,
}

impl Slot {
    fn take(state: &Shared, party: &str, max: u32) -> Result<Slot, ApiError> {
        let mut book =
            state.tunnels.book.lock().map_err(|_| ApiError::Internal("the tunnel book is poisoned".into()))?;
        let open = book.open.entry(party.to_owned()).or_insert(0);
        if *open >= max {
            return Err(ApiError::TooManyTunnels { party: party.to_owned(), max });
        }
        *open += 1;
        Ok(Slot { state: state.clone(), party: party.to_owned(), session: None })
    }

    fn record(&mut self, ours: SocketAddr, sshd: SocketAddr) {
        let session = (canonical(ours), canonical(sshd));
        if let Ok(mut book) = self.state.tunnels.book.lock() {
            book.sessions.insert(session, self.party.clone());
            self.session = Some(session);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut book) = self.state.tunnels.book.lock() {
            if let Some(session) = self.session {
                book.sessions.remove(&session);
            }
            if let Some(open) = book.open.get_mut(&self.party) {
                *open = open.saturating_sub(1);
                if *open == 0 {
                    book.open.remove(&self.party);
                }
            }
        }
    }
}

/// `GET /api/sync/ssh`: the party's API key, its policy's `tunnel: true`, a free slot, sshd's connection; then the
/// upgrade, and the bytes flow until either side closes or the tunnel idles.
#[utoipa::path(get, path = "/api/sync/ssh", tag = "sync",
    params(("X-Sync-API-Key" = String, Header, description = "the party's API key")),
    responses(
        (status = 101, description = "WebSocket (RFC 6455), binary frames: the SSH connection to this host's sshd"),
        (status = 401, description = "missing or invalid API key"),
        (status = 403, description = "the party's policy does not say tunnel: true, or the party is disabled"),
        (status = 429, description = "the party holds limits.max_tunnels tunnels already, or its request rate is spent"),
        (status = 502, description = "the central host's sshd does not answer"),
    ))]
pub async fn open(
    State(state): State<Shared>,
    caller: Caller,
    client: Result<ConnectInfo<SocketAddr>, ExtensionRejection>,
    upgradable: Result<Extension<Upgradable>, ExtensionRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let sshd = state.config.tunnel_ssh().ok_or(ApiError::NoEndpoint)?;
    if !caller.policy.tunnel {
        return Err(ApiError::TunnelNotAllowed { party: caller.party });
    }
    let upgrade = upgrade.map_err(|rejection| ApiError::NotWebSocket(rejection.body_text()))?;
    let Ok(Extension(upgradable)) = upgradable else {
        return Err(ApiError::Internal("this connection cannot be upgraded".into()));
    };
    let client = client.ok().map(|ConnectInfo(address)| address);
    let mut slot = Slot::take(&state, &caller.party, caller.policy.limits.max_tunnels)?;
    let ssh = match tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(sshd)).await {
        Ok(Ok(ssh)) => ssh,
        failed => {
            let error = match failed {
                Ok(Err(error)) => error.to_string(),
                _ => format!("no answer within {} s", CONNECT_WAIT.as_secs()),
            };
            Line::of(SERVE)
                .field("event", "tunnel-error")
                .field("party", &caller.party)
                .field("tunnel_ssh", sshd)
                .field("error", error)
                .to_stderr();
            return Err(ApiError::TunnelUnavailable);
        }
    };
    let _ = ssh.set_nodelay(true);
    let (ours, theirs) = (ssh.local_addr(), ssh.peer_addr());
    let (Ok(ours), Ok(theirs)) = (ours, theirs) else {
        return Err(ApiError::Internal("the tunnel's connection to sshd has no address".into()));
    };
    // In the book before the upgrade is answered: no byte of the worker reaches sshd before the gate can ask.
    slot.record(ours, theirs);
    Line::of(SERVE)
        .field("event", "tunnel-open")
        .field("party", &caller.party)
        .field("key", &caller.key_id)
        .field_opt("client", client)
        .field("ssh_from", ours)
        .to_stderr();
    state.metrics.add(&format!("evosync_tunnels_total{{party=\"{}\"}}", metrics::label(&caller.party)), 1);
    let idle = Duration::from_secs(state.config.http.tunnel_idle_seconds);
    let party = caller.party.clone();
    Ok(upgrade
        .max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .on_failed_upgrade(move |error| {
            Line::of(SERVE).field("event", "tunnel-error").field("party", party).field("error", error).to_stderr();
        })
        .on_upgrade(move |socket| relay(socket, ssh, slot, idle, upgradable))
        .into_response())
}

/// Why a tunnel ended.
#[derive(Debug)]
enum Ending {
    /// The worker sent its closing frame, or its connection ended.
    WorkerClosed,
    /// sshd closed its connection (the SSH session is over).
    SshClosed,
    SshFailed(std::io::Error),
    /// No byte either way for the idle timeout.
    Idle(u64),
    TextFrame,
    TooLarge,
    /// The worker broke RFC 6455 (unmasked frames, bad opcodes, …).
    Protocol(String),
    Shutdown,
}

impl Ending {
    fn label(&self) -> &'static str {
        match self {
            Ending::WorkerClosed => "worker-closed",
            Ending::SshClosed => "ssh-closed",
            Ending::SshFailed(_) => "ssh-failed",
            Ending::Idle(_) => "idle",
            Ending::TextFrame => "text-frame",
            Ending::TooLarge => "frame-too-large",
            Ending::Protocol(_) => "protocol",
            Ending::Shutdown => "shutdown",
        }
    }

    /// The closing frame the worker reads (its reason at most 123 bytes, as RFC 6455 allows), if it is still there.
    fn close_frame(&self) -> Option<CloseFrame> {
        let (code, reason) = match self {
            Ending::WorkerClosed => return None,
            Ending::SshClosed => (close_code::NORMAL, "the SSH server closed the connection".to_owned()),
            Ending::SshFailed(_) => (close_code::ERROR, "the SSH server's connection failed".to_owned()),
            Ending::Idle(seconds) => {
                (close_code::POLICY, format!("no byte either way for {seconds} s (http.tunnel_idle_seconds)"))
            }
            Ending::TextFrame => (close_code::UNSUPPORTED, "binary frames only: the tunnel carries SSH".to_owned()),
            Ending::TooLarge => (close_code::SIZE, format!("a frame over {} KiB, the limit", MAX_FRAME / 1024)),
            Ending::Protocol(_) => (close_code::PROTOCOL, "not a valid WebSocket frame (RFC 6455)".to_owned()),
            Ending::Shutdown => (close_code::AWAY, "the service is shutting down".to_owned()),
        };
        Some(CloseFrame { code, reason: reason.into() })
    }

    /// From an error reading the worker's frames.
    fn of_worker_error(error: axum::Error) -> Ending {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match error.into_inner().downcast::<WsError>().map(|e| *e) {
            Ok(WsError::Capacity(_)) => Ending::TooLarge,
            Ok(WsError::Protocol(error)) => Ending::Protocol(error.to_string()),
            Ok(WsError::Utf8(error)) => Ending::Protocol(error.to_string()),
            _ => Ending::WorkerClosed,
        }
    }
}

/// Bytes each way, and when the last one moved.
struct Traffic<'a> {
    state: &'a AppState,
    party: &'a str,
    born: Instant,
    /// Milliseconds after `born` of the last byte either way.
    last: AtomicU64,
    from_worker: Counter,
    to_worker: Counter,
}

#[derive(Default)]
struct Counter {
    total: AtomicU64,
    reported: AtomicU64,
}

impl Traffic<'_> {
    fn moved(&self, counter: &Counter, direction: &str, bytes: usize) {
        self.last.store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        let total = counter.total.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        if total - counter.reported.load(Ordering::Relaxed) >= METRICS_EVERY {
            self.report(counter, direction);
        }
    }

    /// Adds what was not counted in `/metrics` yet.
    fn report(&self, counter: &Counter, direction: &str) {
        let total = counter.total.load(Ordering::Relaxed);
        let delta = total - counter.reported.swap(total, Ordering::Relaxed);
        if delta > 0 {
            let party = metrics::label(self.party);
            let name = format!("evosync_tunnel_bytes_total{{party=\"{party}\",direction=\"{direction}\"}}");
            self.state.metrics.add(&name, delta);
        }
    }

    /// Completes once no byte has moved for `idle`.
    async fn idle(&self, idle: Duration) -> Ending {
        loop {
            let last = self.born + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if last + idle <= Instant::now() {
                return Ending::Idle(idle.as_secs());
            }
            tokio::time::sleep_until(last + idle).await;
        }
    }
}

/// Carries bytes both ways until one side closes, the tunnel idles, a bound is passed, or the service stops.
async fn relay(socket: WebSocket, ssh: TcpStream, slot: Slot, idle: Duration, upgradable: Upgradable) {
    let (mut to_worker, mut from_worker) = socket.split();
    let (mut ssh_read, mut ssh_write) = ssh.into_split();
    let traffic = Traffic {
        state: &slot.state,
        party: &slot.party,
        born: Instant::now(),
        last: AtomicU64::new(0),
        from_worker: Counter::default(),
        to_worker: Counter::default(),
    };
    let mut stop = upgradable.stop.clone();
    let worker_to_ssh = async {
        while let Some(message) = from_worker.next().await {
            match message {
                Ok(Message::Binary(data)) => {
                    traffic.moved(&traffic.from_worker, "in", data.len());
                    if let Err(error) = ssh_write.write_all(&data).await {
                        return Ending::SshFailed(error);
                    }
                }
                Ok(Message::Text(_)) => return Ending::TextFrame,
                Ok(Message::Ping(_) | Message::Pong(_)) => {}
                Ok(Message::Close(_)) => return Ending::WorkerClosed,
                Err(error) => return Ending::of_worker_error(error),
            }
        }
        Ending::WorkerClosed
    };
    let ssh_to_worker = async {
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buffer.reserve(READ_CHUNK);
            match ssh_read.read_buf(&mut buffer).await {
                Ok(0) => return Ending::SshClosed,
                Ok(read) => traffic.moved(&traffic.to_worker, "out", read),
                Err(error) => return Ending::SshFailed(error),
            }
            if to_worker.send(Message::Binary(buffer.split().freeze())).await.is_err() {
                return Ending::WorkerClosed;
            }
        }
    };
    let ending = tokio::select! {
        ending = worker_to_ssh => ending,
        ending = ssh_to_worker => ending,
        ending = traffic.idle(idle) => ending,
        _ = stop.wait_for(|stopping| *stopping) => Ending::Shutdown,
    };
    let _ = ssh_write.shutdown().await;
    drop((ssh_read, ssh_write));
    let goodbye = async {
        match ending.close_frame() {
            Some(frame) => to_worker.send(Message::Close(Some(frame))).await,
            // The worker's own closing frame is answered by the WebSocket layer on the way out.
            None => to_worker.close().await,
        }
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, goodbye).await;
    traffic.report(&traffic.from_worker, "in");
    traffic.report(&traffic.to_worker, "out");
    let mut line = Line::of(SERVE)
        .field("event", "tunnel-close")
        .field("party", &slot.party)
        .field("reason", ending.label())
        .field("bytes_in", traffic.from_worker.total.load(Ordering::Relaxed))
        .field("bytes_out", traffic.to_worker.total.load(Ordering::Relaxed))
        .field("seconds", format!("{:.3}", traffic.born.elapsed().as_secs_f64()));
    match &ending {
        Ending::SshFailed(error) => line = line.field("error", error),
        Ending::Protocol(error) => line = line.field("error", error),
        _ => {}
    }
    line.to_stderr();
    drop(upgradable);
}

/// `/metrics` lines of the tunnels open now, by party.
pub fn render_open(state: &AppState, out: &mut String) {
    let _ = writeln!(out, "# TYPE evosync_tunnels_open gauge");
    for (party, open) in state.tunnels.open_by_party() {
        let _ = writeln!(out, "evosync_tunnels_open{{party=\"{}\"}} {open}", metrics::label(&party));
    }
}
