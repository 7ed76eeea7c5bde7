//! TLS on the service's listener (`tls_cert`, `tls_key` in `evosync.yaml`): loading the PEM pair, the checks that
//! make a bad pair an error at start rather than at the first handshake, the reload on SIGHUP, and the handshake of
//! each accepted connection before `listen::serve_connection` takes it over.
//!
//! The certificate is chosen per handshake by `Reloadable`, so a reload swaps it for the handshakes that follow and
//! leaves every open connection as it is. A reload that fails (a missing file, a key that does not match) keeps
//! the certificate in use and says why in the log.

use super::listen::{self, ConnSetup};
use crate::log::{Line, SERVE};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

/// The largest PEM file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is over {} KiB; is it the right file?", MAX_PEM_BYTES / 1024)]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("tls_cert {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("tls_cert {path}: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("tls_key {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("tls_key {path} is not a key this service can use: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("tls_key {key} does not belong to the certificate in tls_cert {cert} (their public keys differ)")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// The certificate every handshake gets, swapped whole on reload.
#[derive(Debug)]
pub struct Reloadable {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloadable {
    /// Loads and checks the pair: an error names the file and what is wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Reloadable, TlsError> {
        let loaded = load_pair(cert, key)?;
        Ok(Reloadable { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(Arc::new(loaded)) })
    }

    /// Reads the files again; on success the next handshakes get the new pair, on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = Arc::new(load_pair(&self.cert, &self.key)?);
        if let Ok(mut current) = self.current.write() {
            *current = loaded;
        }
        Ok(())
    }

    /// The acceptor for the listener: TLS 1.2 and 1.3, HTTP/1.1 by ALPN, this certificate.
    pub fn acceptor(self: &Arc<Self>) -> TlsAcceptor {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| current.clone())
    }
}

/// The one crypto provider of the service and of the worker's tunnel.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_owned(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(read)?.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { what, path: path.to_owned() });
    }
    Ok(bytes)
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = read_pem("tls_cert", cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate { path: cert_path.to_owned(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path.to_owned() });
    }
    let pem = read_pem("tls_key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: key_path.to_owned() },
        e => TlsError::BadKey { path: key_path.to_owned(), message: e.to_string() },
    })?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey { path: key_path.to_owned(), message: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::Mismatch { cert: cert_path.to_owned(), key: key_path.to_owned() })
        }
        Err(e) => Err(TlsError::BadCertificate { path: cert_path.to_owned(), message: e.to_string() }),
    }
}

/// Reloads the pair on every SIGHUP, until the service stops; each attempt is one log line.
pub async fn reload_on_hangup(tls: Option<Arc<Reloadable>>) {
    let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
    while hangups.recv().await.is_some() {
        let line = Line::of(SERVE).field("event", "reload");
        let Some(tls) = &tls else {
            line.field("tls", "off")
                .field("message", "nothing to reload: no tls_cert in the configuration")
                .to_stderr();
            continue;
        };
        let tls = tls.clone();
        match tokio::task::spawn_blocking(move || tls.reload()).await {
            Ok(Ok(())) => line.field("tls", "reloaded").to_stderr(),
            Ok(Err(error)) => {
                line.field("tls", "kept").field("error", format!("{error}; the previous certificate stays")).to_stderr()
            }
            Err(error) => line.field("tls", "kept").field("error", error).to_stderr(),
        }
    }
}

/// One accepted connection: the handshake within the header timeout, then HTTP over it.
pub async fn serve_connection(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    setup: ConnSetup,
    stop: watch::Receiver<bool>,
    slot: OwnedSemaphorePermit,
) {
    let refuse = |reason: &str, message: String| {
        Line::of(SERVE)
            .field("event", "refuse")
            .field("reason", reason)
            .field("message", message)
            .field("client", peer)
            .to_stderr();
    };
    let header = setup.timeouts.header;
    match tokio::time::timeout(header, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => listen::serve_connection(tls, Some(peer), setup, stop, slot).await,
        // A client that went away before a word (a port probe) is no refusal.
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Ok(Err(error)) => refuse("tls-handshake", format!("the TLS handshake failed: {error}")),
        Err(_) => refuse("header-timeout", format!("no complete TLS handshake within {} s", header.as_secs())),
    }
}
