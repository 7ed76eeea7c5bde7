//! `evosync serve`: the HTTP service. The workers' sync API (`sync_api`, `upload`), the SSH tunnel over WebSocket
//! (`tunnel`), the admin API (`admin_api`), the administrator's web dashboard (`dashboard`), `/metrics`,
//! `/admin/events`, `/openapi.json` and `/healthz`; TLS on the listener when the configuration names a certificate
//! (`tls`). Connections are accepted and bounded by `listen`;
//! who is calling is settled by extractors (`auth`, with `verifier` behind them) before any body is read; bodies
//! are bounded by `body` and `multipart`; every failure is an `error::ApiError`; store and file-system work runs on
//! blocking threads (`state::blocking`); the async side only moves bytes.

pub mod admin_api;
pub mod auth;
pub mod body;
pub mod broker;
pub mod catalog;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod linger;
pub mod listen;
pub mod metrics;
pub mod multipart;
pub mod openapi;
pub mod records;
pub mod state;
pub mod sync_api;
pub mod tls;
pub mod tunnel;
pub mod upload;
pub mod verifier;

#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use error::ApiError;
use listen::Listener;
use state::{AppState, Shared};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("the HTTP service failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}; fix the file, or set tls_cert and tls_key to another pair")]
    Tls(#[from] tls::TlsError),
    #[error(
        "listen {0} is not a loopback address, and without tls_cert and tls_key API keys would cross the network in \
         clear: set tls_cert and tls_key (see the README, TLS), or allow_plain_http: true when a TLS proxy on a \
         network of its own stands in front"
    )]
    PlainHttp(String),
    #[error("{0}")]
    Catalog(#[from] crate::catalog::home::HomeError),
    #[error("the catalog's pipeline cannot start: {0}")]
    Pipeline(#[from] crate::catalog::pipeline::PipelineError),
    #[error("cannot take the service's lock in state_dir: {0}")]
    Lock(#[from] crate::fs::locks::LockFileError),
    #[error("`evosync restore` is putting a backup in the store's place (it holds {0}); start the service when it has ended")]
    Restoring(String),
}

/// Every route of the service. With `metrics_listen` set, `/metrics` is left out here (404) and served by
/// `metrics_router` on its own listener.
pub fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/admin/parties", get(admin_api::list_parties).post(admin_api::add_party))
        .route("/admin/parties/{name}", get(admin_api::show_party))
        .route("/admin/parties/{name}/disable", post(admin_api::disable_party))
        .route("/admin/parties/{name}/enable", post(admin_api::enable_party))
        .route("/admin/ssh-keys", get(admin_api::list_ssh_keys).post(admin_api::add_ssh_key))
        .route("/admin/ssh-keys/{id}", delete(admin_api::revoke_ssh_key))
        .route("/admin/api-keys", get(admin_api::list_api_keys).post(admin_api::issue_api_key))
        .route("/admin/api-keys/{id}", delete(admin_api::revoke_api_key))
        .route("/admin/authorized-keys/write", post(admin_api::write_authorized_keys))
        .route("/admin/authorized-keys/check", get(admin_api::check_authorized_keys))
        .route("/admin/audit", get(admin_api::audit))
        .route("/admin/runs", get(admin_api::runs))
        .route("/admin/runs/{run}/verify", post(admin_api::reverify_run))
        .route("/admin/events", get(events::events));
    let workers = Router::new()
        .route("/api/sync/register/{run}", post(sync_api::register))
        .route("/api/sync/analysis/{run}/list", get(sync_api::list))
        .route("/api/sync/analysis/{run}", post(upload::upload))
        .route("/api/sync/status/{run}", get(sync_api::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), metrics::count_requests));
    let mut router = Router::new()
        .merge(admin)
        .merge(workers)
        .merge(tunnel::routes(&state))
        .merge(dashboard::router())
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi::openapi_json));
    if state.config.metrics_listen.is_none() {
        router = router.route("/metrics", get(metrics::metrics));
    }
    finish(router, state)
}

/// The routes of the `metrics_listen` listener: `/metrics` alone.
pub fn metrics_router(state: Shared) -> Router {
    finish(Router::new().route("/metrics", get(metrics::metrics)), state)
}

/// What every listener's routes share: 404 for the rest, the refusal log, and a body limit for any extractor that
/// reads a whole body (ours read through `body::read_bounded` and `upload`, with limits of their own).
fn finish(router: Router<Shared>, state: Shared) -> Router {
    router
        .fallback(|| async { ApiError::NoEndpoint })
        .layer(axum::extract::DefaultBodyLimit::max(body::JSON_BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), error::log_refusals))
        .with_state(state)
}

/// Liveness: answers while the service runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "{\"ok\": true}")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

/// How long a shutdown waits for the pushes in flight to report their end (the HTTP requests in flight get as long,
/// `listen::SHUTDOWN_GRACE`); systemd's stop timeout is longer.
const SHUTDOWN_GRACE: std::time::Duration = listen::SHUTDOWN_GRACE;

/// Runs the service until SIGTERM or SIGINT.
pub fn serve(config: Config, config_path: PathBuf) -> Result<(), ServeError> {
    // Held until the service ends: `evosync restore` refuses while it is held, and holds it while it works.
    let _running = crate::fs::locks::service_running(&config.state_dir)?.ok_or_else(|| {
        ServeError::Restoring(config.state_dir.join(crate::fs::locks::SERVICE_LOCK).display().to_string())
    })?;
    // Fail early, before binding, when the store or the catalog cannot be opened or the certificate cannot be used.
    Store::open(&config.store_path())?;
    undo_interrupted_admin_actions(&config, &config_path);
    crate::catalog::home::Homes::open(&config).map_err(ServeError::Catalog)?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(std::sync::Arc::new(tls::Reloadable::load(cert, key)?)),
        _ => None,
    };
    let loopback = config.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
    if tls.is_none() && !loopback && !config.allow_plain_http {
        return Err(ServeError::PlainHttp(config.listen.clone()));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let api = bind(&config.listen).await?;
        let metrics = match &config.metrics_listen {
            Some(address) => Some(bind(address).await?),
            None => None,
        };
        let socket = config.gate_socket();
        let gates = broker::bind(&socket)
            .map_err(|source| ServeError::Listen { address: socket.display().to_string(), source })?;
        let timeouts = listen::Timeouts::from(&config.http);
        let max_connections = config.http.max_connections;
        let state = AppState::new(config, config_path);
        catalog::start(&state)?;
        tokio::spawn(events::follow_ledger(state.clone()));
        // One signal stops both doors: the HTTP listeners drain their requests, the broker lets the pushes in flight
        // report their end, each within the grace period.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopping.wait_for(|stopped| *stopped).await;
        };
        let gates = tokio::spawn(broker::serve(state.clone(), gates, stopped(stopping.clone()), SHUTDOWN_GRACE));
        tokio::spawn(tls::reload_on_hangup(tls.clone()));
        let acceptor = tls.as_ref().map(tls::Reloadable::acceptor);
        let api = Listener { name: "api", tcp: api, router: router(state.clone()), max_connections, tls: acceptor };
        let mut listeners = vec![api];
        if let Some(tcp) = metrics {
            let router = metrics_router(state.clone());
            let max_connections = listen::METRICS_CONNECTIONS;
            listeners.push(Listener { name: "metrics", tcp, router, max_connections, tls: None });
        }
        for listener in &listeners {
            let scheme = if listener.tls.is_some() { "https" } else { "http" };
            crate::log::Line::of(crate::log::SERVE)
                .field("event", "listening")
                .field("listener", listener.name)
                .field("address", format!("{scheme}://{}", listener.tcp.local_addr()?))
                .to_stderr();
        }
        listen::serve(listeners, timeouts, state.metrics.clone(), stopped(stopping)).await;
        let _ = gates.await;
        catalog::stop(&state);
        let _ = std::fs::remove_file(&socket);
        Ok(())
    })
}

/// Undoes what admin actions killed half-way left (`admin::atomic`), before the service answers anyone; logs what
/// it undid and what its account could not (left for root's next admin command).
fn undo_interrupted_admin_actions(config: &Config, config_path: &std::path::Path) {
    let line = |event: &str| crate::log::Line::of(crate::log::SERVE).field("event", event);
    let recovery = crate::admin::Admin::open(config, config_path, "serve".into()).and_then(|admin| admin.recover());
    match recovery {
        Ok(recovery) => {
            for intent in recovery.undone {
                line("admin-undo")
                    .field("outcome", "undone")
                    .field("action", &intent.action)
                    .field("party", &intent.party)
                    .field("actor", &intent.actor)
                    .to_stderr();
            }
            for stuck in recovery.stuck {
                line("admin-undo")
                    .field("outcome", "failed")
                    .field("action", &stuck.intent.action)
                    .field("party", &stuck.intent.party)
                    .field("actor", &stuck.intent.actor)
                    .field("error", &stuck.error)
                    .to_stderr();
            }
        }
        Err(error) => line("admin-undo").field("outcome", "failed").field("error", error).to_stderr(),
    }
}

async fn bind(address: &str) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Listen { address: address.to_owned(), source })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}
