//! What the service holds while it runs: the configuration, pooled store connections, the authentication caches, the
//! counters, the event stream, the record writer, the upload state and the dashboard's sessions and feed. And the one way
//! to run blocking work.

use super::auth::Auth;
use super::dashboard::Dashboard;
use super::error::ApiError;
use super::metrics::Metrics;
use super::records::Records;
use super::upload::Uploads;
use crate::access::UsageBook;
use crate::catalog::home::{HomeError, Homes};
use crate::catalog::pipeline::Pipeline;
use crate::config::Config;
use crate::fs::confine::{ConfineError, ReplicaRoot};
use crate::store::{Store, StoreError};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::broadcast;

/// Open store connections, reused across requests.
pub struct StorePool {
    path: PathBuf,
    idle: Mutex<Vec<Store>>,
}

/// Idle connections kept; more are opened when requests need them, and closed after.
const IDLE_CONNECTIONS: usize = 16;

impl StorePool {
    pub fn new(path: PathBuf) -> StorePool {
        StorePool { path, idle: Mutex::new(Vec::new()) }
    }

    pub fn take(&self) -> Result<Store, StoreError> {
        if let Some(store) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(store);
        }
        Store::open(&self.path)
    }

    pub fn give_back(&self, store: Store) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < IDLE_CONNECTIONS {
                idle.push(store);
            }
        }
    }

    /// Runs `work` with a pooled connection on the calling thread (short reads only: this may be an async thread).
    pub fn with<T>(&self, work: impl FnOnce(&Store) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let store = self.take()?;
        let result = work(&store);
        self.give_back(store);
        result
    }
}

pub struct AppState {
    pub config: Config,
    pub config_path: PathBuf,
    pub pool: StorePool,
    pub auth: Auth,
    /// Shared with the listeners, which count their lingering closes in it.
    pub metrics: Arc<Metrics>,
    /// Pushes and uploads as they happen, for `/admin/events`.
    pub events: broadcast::Sender<String>,
    pub records: Records,
    pub uploads: Uploads,
    /// Every party's usage and what uploads and pushes in flight have reserved.
    pub quota: UsageBook,
    /// The SSH tunnels open now (`tunnel`): how many per party, and whose each sshd connection is.
    pub tunnels: super::tunnel::Tunnels,
    /// The dashboard's sessions and live feed.
    pub dashboard: Dashboard,
    /// The catalog's flow from a finished push to publication (`evosync serve` starts it; the router's tests have
    /// none).
    pub pipeline: OnceLock<Pipeline>,
    /// The replica root, opened on first use and kept (moving it needs a restart).
    replica_root: OnceLock<Arc<ReplicaRoot>>,
    /// The catalog's roots (runs' homes), opened on first use and kept.
    homes: OnceLock<Arc<Homes>>,
    /// Pushes whose gate reserved room and has not reported their end yet (a shutdown waits for them).
    pub pushes_in_flight: std::sync::atomic::AtomicUsize,
}

pub type Shared = Arc<AppState>;

impl AppState {
    pub fn new(config: Config, config_path: PathBuf) -> Shared {
        let store_path = config.store_path();
        Arc::new(AppState {
            pool: StorePool::new(store_path.clone()),
            records: Records::start(store_path),
            config,
            config_path,
            auth: Auth::default(),
            metrics: Arc::default(),
            events: broadcast::channel(1024).0,
            uploads: Uploads::default(),
            quota: UsageBook::default(),
            tunnels: Default::default(),
            dashboard: Dashboard::default(),
            pipeline: OnceLock::new(),
            replica_root: OnceLock::new(),
            homes: OnceLock::new(),
            pushes_in_flight: Default::default(),
        })
    }

    pub fn replica_root(&self) -> Result<Arc<ReplicaRoot>, ConfineError> {
        if let Some(root) = self.replica_root.get() {
            return Ok(root.clone());
        }
        let root = Arc::new(ReplicaRoot::open(&self.config.replica_root)?);
        Ok(self.replica_root.get_or_init(|| root).clone())
    }

    /// The runs' homes (`catalog::home`).
    pub fn homes(&self) -> Result<Arc<Homes>, HomeError> {
        if let Some(homes) = self.homes.get() {
            return Ok(homes.clone());
        }
        let homes = Arc::new(Homes::open(&self.config)?);
        Ok(self.homes.get_or_init(|| homes).clone())
    }

    /// Sends an event to `/admin/events` listeners, if any.
    pub fn announce(&self, event: &serde_json::Value) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event.to_string());
        }
    }
}

/// Runs blocking store and file-system work off the async threads, with a pooled store connection.
pub async fn blocking<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Shared, &Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let store = state.pool.take()?;
        let result = work(&state, &store);
        state.pool.give_back(store);
        result
    })
    .await?
}

/// Blocking file-system work that needs no store connection, off the async threads.
pub async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await?
}
