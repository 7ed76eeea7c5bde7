//! `evosync serve`: the HTTP service. The workers' sync API (`sync_api`, `upload`), the admin API (`admin_api`),
//! `/metrics`, `/admin/events`, `/openapi.json` and `/healthz`. Who is calling is settled by extractors (`auth`),
//! every failure is an `error::ApiError`, store and file-system work runs on blocking threads (`state::blocking`);
//! the async side only moves bytes.

pub mod admin_api;
pub mod auth;
pub mod broker;
pub mod error;
pub mod events;
pub mod metrics;
pub mod openapi;
pub mod records;
pub mod state;
pub mod sync_api;
pub mod upload;

#[cfg(test)]
mod tests;

use crate::config::Config;
use crate::store::{Store, StoreError};
use axum::routing::{delete, get, post};
use axum::{middleware, Json, Router};
use error::ApiError;
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
}

/// Every route of the service.
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
        .route("/admin/events", get(events::events));
    let workers = Router::new()
        .route("/api/sync/register/{run}", post(sync_api::register))
        .route("/api/sync/analysis/{run}/list", get(sync_api::list))
        .route("/api/sync/analysis/{run}", post(upload::upload))
        .route("/api/sync/status/{run}", get(sync_api::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), metrics::count_requests))
        // Uploads stream to disk under the policy's own per-file limit, so the framework's whole-body limit is off.
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .merge(admin)
        .merge(workers)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async { ApiError::NoEndpoint })
        .layer(middleware::from_fn_with_state(state.clone(), error::log_refusals))
        .with_state(state)
}

/// Liveness: answers while the service runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "{\"ok\": true}")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true }))
}

/// Runs the service until SIGTERM or SIGINT.
pub fn serve(config: Config, config_path: PathBuf) -> Result<(), ServeError> {
    // Fail early, before binding, when the store cannot be opened.
    Store::open(&config.store_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let address = config.listen.clone();
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|source| ServeError::Listen { address: address.clone(), source })?;
        let socket = config.gate_socket();
        let gates = broker::bind(&socket)
            .map_err(|source| ServeError::Listen { address: socket.display().to_string(), source })?;
        let state = AppState::new(config, config_path);
        tokio::spawn(events::follow_ledger(state.clone()));
        tokio::spawn(broker::serve(state.clone(), gates));
        let address = format!("http://{}", listener.local_addr()?);
        crate::log::Line::of(crate::log::SERVE).field("event", "listening").field("address", address).to_stderr();
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
        let _ = std::fs::remove_file(&socket);
        Ok(())
    })
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}
