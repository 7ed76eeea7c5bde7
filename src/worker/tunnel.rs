//! `evosync tunnel --url wss://HOST/api/sync/ssh --api-key-file FILE [--ca-file PEM]`: a `ProxyCommand` for ssh on
//! a worker whose network lets only HTTPS out. It opens the WebSocket of the central host's SSH tunnel with the
//! party's API key and carries stdin to it and it to stdout, as binary frames, until either side closes. ssh (and
//! so sqlite3_rsync) runs unchanged over it: the worker's `~/.ssh/config` names this command, nothing else moves.
//!
//! Every way it can fail ends in one line on stderr (which ssh shows) saying what to fix: a URL that is not ws:// or
//! wss://, an unreadable or empty key file, a certificate the trust roots do not vouch for, the service's own
//! refusal (401, 403, 404, 429, 502, with its message), or the closing frame's reason (an idle tunnel, say).

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// The header that carries the party's API key (as on every route of the workers' sync API).
const API_KEY_HEADER: &str = "X-Sync-API-Key";
/// How long reaching the service may take: TCP, TLS and the upgrade together.
const OPEN_WAIT: Duration = Duration::from_secs(30);
/// Bytes read from stdin for one frame.
const READ_CHUNK: usize = 64 * 1024;
/// The largest frame taken from the service (it sends 64 KiB ones).
const MAX_FRAME: usize = 1 << 20;
/// The largest key or CA file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// What `evosync tunnel` was given.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub api_key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("--url {url}: {why}")]
    Url { url: String, why: String },
    #[error("cannot read {what} {path}: {why}")]
    File { what: &'static str, path: PathBuf, why: String },
    #[error(
        "no trust roots: the system has no CA certificates; pass --ca-file with the CA of the service's certificate"
    )]
    NoRoots,
    #[error("cannot reach {address}: {why}")]
    Connect { address: String, why: String },
    #[error("TLS with {host} failed: {why}")]
    Tls { host: String, why: String },
    #[error("the service refused the tunnel ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the WebSocket upgrade failed: {0}")]
    Upgrade(String),
    #[error("no answer from {0} within 30 s")]
    Timeout(String),
    #[error("the service closed the tunnel: {reason} (WebSocket close code {code})")]
    Closed { code: u16, reason: String },
    #[error("the tunnel broke: {0}")]
    Broken(String),
    #[error("stdin or stdout failed: {0}")]
    Local(std::io::Error),
}

/// Where to connect, read off the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// As TLS names it: a DNS name or an IP address (without brackets).
    host: String,
    port: u16,
}

impl Target {
    fn of(url: &str) -> Result<Target, TunnelError> {
        let bad = |why: &str| TunnelError::Url { url: url.to_owned(), why: why.to_owned() };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL (wss://HOST/api/sync/ssh)"))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(bad("the scheme must be wss:// (or ws:// to a service on this machine)")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target { tls, host, port })
    }
}

/// Runs the tunnel until either side closes; the error is the one line to print.
pub fn run(options: &Options) -> Result<(), TunnelError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TunnelError::Broken(format!("cannot start: {e}")))?;
    let result = runtime.block_on(tunnel(options));
    // A read of stdin may still be waiting on its blocking thread; the process ends here either way.
    runtime.shutdown_background();
    result
}

async fn tunnel(options: &Options) -> Result<(), TunnelError> {
    let target = Target::of(&options.url)?;
    let key = read_key(&options.api_key_file)?;
    let tls = match target.tls {
        true => Some(client_config(options.ca_file.as_deref())?),
        false => None,
    };
    let mut request = options
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| TunnelError::Url { url: options.url.clone(), why: e.to_string() })?;
    let value = HeaderValue::from_str(&key).map_err(|_| TunnelError::File {
        what: "--api-key-file",
        path: options.api_key_file.clone(),
        why: "the key holds characters no HTTP header may".into(),
    })?;
    request.headers_mut().insert(API_KEY_HEADER, value);
    let address = format!("{}:{}", target.host, target.port);
    let opening = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| TunnelError::Connect { address: address.clone(), why: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Io> = match tls {
            Some(config) => {
                let name = ServerName::try_from(target.host.clone())
                    .map_err(|e| TunnelError::Url { url: options.url.clone(), why: e.to_string() })?;
                let connector = tokio_rustls::TlsConnector::from(config);
                Box::new(connector.connect(name, tcp).await.map_err(|e| tls_error(&target.host, e))?)
            }
            None => Box::new(tcp),
        };
        upgrade(request, stream).await
    };
    // Only the opening is timed: the pump runs as long as the session does.
    let socket = tokio::time::timeout(OPEN_WAIT, opening).await.map_err(|_| TunnelError::Timeout(address))??;
    pump(socket).await
}

/// The byte stream under the WebSocket: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The WebSocket upgrade, with the service's refusal read off a failed one.
async fn upgrade<S>(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    stream: S,
) -> Result<WebSocketStream<S>, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default().max_frame_size(Some(MAX_FRAME)).max_message_size(Some(MAX_FRAME));
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let said = response
                .body()
                .as_deref()
                .and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok())
                .and_then(|json| json["error"].as_str().map(str::to_owned));
            let message = match (status, said) {
                (404, _) => "there is no tunnel at this URL: the central host has no tunnel_ssh configured, or the \
                             path is not /api/sync/ssh"
                    .to_owned(),
                (401, Some(said)) => format!("{said} (check --api-key-file)"),
                (_, Some(said)) => said,
                (_, None) => response.status().canonical_reason().unwrap_or("no reason given").to_owned(),
            };
            Err(TunnelError::Refused { status, message })
        }
        Err(error) => Err(TunnelError::Upgrade(error.to_string())),
    }
}

/// stdin as the reactor's own when it is a pipe, as ssh's `ProxyCommand` makes it: tokio's `stdin()` would hand
/// each read to a thread of its blocking pool and copy it once more. Anything else (a socket, a file, a terminal)
/// goes through `stdin()`.
fn standard_input() -> Box<dyn AsyncRead + Unpin> {
    let pipe = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_file(std::fs::File::from(fd)));
    match pipe {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    }
}

/// stdout likewise.
fn standard_output() -> Box<dyn AsyncWrite + Unpin> {
    let pipe = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_file(std::fs::File::from(fd)));
    match pipe {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdout()),
    }
}

/// stdin to the service, the service to stdout, until either ends.
async fn pump<S>(socket: WebSocketStream<S>) -> Result<(), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut to_service, mut from_service) = socket.split();
    let upstream = async {
        let mut stdin = standard_input();
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buffer.reserve(READ_CHUNK);
            match stdin.read_buf(&mut buffer).await {
                // ssh closed its side: say goodbye and stop.
                Ok(0) => {
                    let _ = to_service.send(Message::Close(None)).await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(error) => return Err(TunnelError::Local(error)),
            }
            let frame = Message::Binary(buffer.split().freeze());
            to_service.send(frame).await.map_err(|e| TunnelError::Broken(e.to_string()))?;
        }
    };
    let downstream = async {
        let mut stdout = standard_output();
        while let Some(message) = from_service.next().await {
            match message.map_err(|e| TunnelError::Broken(e.to_string()))? {
                Message::Binary(data) => {
                    stdout.write_all(&data).await.map_err(TunnelError::Local)?;
                    stdout.flush().await.map_err(TunnelError::Local)?;
                }
                Message::Close(frame) => return closed(frame),
                Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok(())
    };
    tokio::select! {
        done = upstream => done,
        done = downstream => done,
    }
}

/// The service's closing frame: a normal close ends quietly, any other says why.
fn closed(frame: Option<CloseFrame>) -> Result<(), TunnelError> {
    match frame {
        Some(frame) if frame.code != CloseCode::Normal => {
            Err(TunnelError::Closed { code: frame.code.into(), reason: frame.reason.to_string() })
        }
        _ => Ok(()),
    }
}

fn read_bounded(what: &'static str, path: &Path) -> Result<Vec<u8>, TunnelError> {
    let failed = |why: String| TunnelError::File { what, path: path.to_owned(), why };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(failed(format!("it is over {} KiB; is it the right file?", MAX_FILE_BYTES / 1024)));
    }
    Ok(bytes)
}

/// The API key: the file's one line (as `evosync api-key issue` printed it).
fn read_key(path: &Path) -> Result<String, TunnelError> {
    let bytes = read_bounded("--api-key-file", path)?;
    let key = String::from_utf8_lossy(&bytes).trim().to_owned();
    if key.is_empty() {
        return Err(TunnelError::File { what: "--api-key-file", path: path.to_owned(), why: "it is empty".into() });
    }
    Ok(key)
}

/// TLS as a browser does it: the service's certificate must chain to a trusted root and name the URL's host. The
/// roots are `--ca-file`'s, else the system's (so a CA the worker's organisation installed works too).
fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_bounded("--ca-file", path)?;
            let bad = |why: String| TunnelError::File { what: "--ca-file", path: path.to_owned(), why };
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("it holds no PEM certificate".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TunnelError::NoRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TunnelError::Broken(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A failed handshake, with the hint that fits it.
fn tls_error(host: &str, error: std::io::Error) -> TunnelError {
    let why = match error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(problem)) => format!(
            "the service's certificate is not trusted: {problem:?} (if a private CA signed it, pass it with --ca-file; \
             the certificate must name '{host}')"
        ),
        Some(error) => error.to_string(),
        None => error.to_string(),
    };
    TunnelError::Tls { host: host.to_owned(), why }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_scheme_host_and_port() {
        let target = Target::of("wss://central.example.org/api/sync/ssh").unwrap();
        assert_eq!(target, Target { tls: true, host: "central.example.org".into(), port: 443 });
        let target = Target::of("ws://127.0.0.1:4004/api/sync/ssh").unwrap();
        assert_eq!(target, Target { tls: false, host: "127.0.0.1".into(), port: 4004 });
        assert_eq!(Target::of("wss://[::1]:8443/api/sync/ssh").unwrap().host, "::1");
        for bad in ["https://h/api/sync/ssh", "h/api/sync/ssh", "", "wss://"] {
            assert!(matches!(Target::of(bad), Err(TunnelError::Url { .. })), "{bad}");
        }
    }

    #[test]
    fn a_close_says_why_unless_it_is_normal() {
        assert!(closed(None).is_ok());
        assert!(closed(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).is_ok());
        let idle = closed(Some(CloseFrame { code: CloseCode::Policy, reason: "no byte either way for 2 s".into() }));
        assert_eq!(
            idle.unwrap_err().to_string(),
            "the service closed the tunnel: no byte either way for 2 s (WebSocket close code 1008)"
        );
    }
}
