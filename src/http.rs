//! `evosync serve`: the admin HTTP API under `/admin/…` (Bearer admin token, JSON in and out, every action audited)
//! and `/healthz`. Store work runs on blocking threads with pooled connections; the async side only moves bytes.

use crate::admin::{admin_token_ok, Admin, AdminError};
use crate::config::Config;
use crate::secrets::VerifiedCache;
use crate::store::{Store, StoreError};
use crate::sync_api;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("the HTTP service failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Open store connections, reused across requests.
pub struct StorePool {
    path: PathBuf,
    idle: Mutex<Vec<Store>>,
}

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
            if idle.len() < 16 {
                idle.push(store);
            }
        }
    }
}

pub struct AppState {
    pub config: Config,
    pub config_path: PathBuf,
    pub pool: StorePool,
    pub admin_tokens: VerifiedCache,
    pub api_keys: VerifiedCache,
    pub sync: crate::sync_api::SyncState,
}

pub type Shared = Arc<AppState>;

/// An error as the API answers it: a status and `{"error": "what to fix"}`.
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message, "status": self.status.as_u16() }));
        match self.retry_after {
            Some(seconds) => (self.status, [(header::RETRY_AFTER, seconds.to_string())], body).into_response(),
            None => (self.status, body).into_response(),
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::from(AdminError::from(error))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::new(
            rejection.status(),
            format!("the request body is not what this endpoint takes: {}", rejection.body_text()),
        )
    }
}

/// Runs `work` with an admin context on a blocking thread.
async fn with_admin<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Admin<'_>) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let store = state.pool.take()?;
        let admin = Admin::from_parts(&state.config, state.config_path.clone(), store, "http:admin".into());
        let result = work(&admin);
        state.pool.give_back(admin.into_store());
        result.map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
}

pub fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/admin/parties", get(list_parties).post(add_party))
        .route("/admin/parties/{name}", get(show_party))
        .route("/admin/parties/{name}/disable", post(disable_party))
        .route("/admin/parties/{name}/enable", post(enable_party))
        .route("/admin/ssh-keys", get(list_ssh_keys).post(add_ssh_key))
        .route("/admin/ssh-keys/{id}", axum::routing::delete(revoke_ssh_key))
        .route("/admin/api-keys", get(list_api_keys).post(issue_api_key))
        .route("/admin/api-keys/{id}", axum::routing::delete(revoke_api_key))
        .route("/admin/authorized-keys/write", post(write_authorized_keys))
        .route("/admin/authorized-keys/check", get(check_authorized_keys))
        .route("/admin/audit", get(audit))
        .route("/admin/runs", get(runs))
        .route("/admin/events", get(sync_api::events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let workers = Router::new()
        .route("/api/sync/register/{run}", post(sync_api::register))
        .route("/api/sync/analysis/{run}/list", get(sync_api::list))
        .route("/api/sync/analysis/{run}", post(sync_api::upload))
        .route("/api/sync/status/{run}", get(sync_api::status))
        // Uploads stream to disk under the policy's own per-file limit, so the framework's whole-body limit is off.
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .merge(admin)
        .merge(workers)
        .route("/healthz", get(healthz))
        .route("/metrics", get(sync_api::metrics))
        .route("/openapi.json", get(sync_api::openapi_json))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

async fn require_admin(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "send the admin token as: Authorization: Bearer TOKEN")
            .into_response();
    };
    let checker = state.clone();
    let ok = tokio::task::spawn_blocking(move || {
        checker.pool.take().map(|store| {
            let ok = admin_token_ok(&store, &checker.admin_tokens, &token);
            checker.pool.give_back(store);
            ok
        })
    })
    .await;
    match ok {
        Ok(Ok(true)) => next.run(request).await,
        Ok(Ok(false)) => ApiError::new(StatusCode::UNAUTHORIZED, "the admin token is not valid").into_response(),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the state store is unavailable").into_response(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParty {
    name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSshKey {
    party: String,
    public_key: String,
    expires: Option<String>,
    from: Option<String>,
    comment: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    party: String,
    name: Option<String>,
    expires: Option<String>,
}

#[derive(Deserialize)]
pub struct PartyFilter {
    party: Option<String>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<u32>,
}

type Answer = Result<Response, ApiError>;

fn created<T: serde::Serialize>(value: T) -> Answer {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn ok<T: serde::Serialize>(value: T) -> Answer {
    Ok(Json(value).into_response())
}

#[utoipa::path(get, path = "/admin/parties", responses((status = 200, description = "the parties"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn list_parties(State(state): State<Shared>) -> Answer {
    ok(with_admin(&state, |a| a.parties()).await?)
}

#[utoipa::path(post, path = "/admin/parties", request_body = NewParty, responses((status = 201, description = "added"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn add_party(State(state): State<Shared>, body: Result<Json<NewParty>, JsonRejection>) -> Answer {
    let Json(body) = body?;
    created(with_admin(&state, move |a| a.add_party(&body.name)).await?)
}

#[utoipa::path(get, path = "/admin/parties/{name}", params(("name" = String, Path)), responses((status = 200, description = "a party with its keys"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn show_party(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&state, move |a| a.show_party(&name)).await?)
}

#[utoipa::path(post, path = "/admin/parties/{name}/disable", params(("name" = String, Path)), responses((status = 200, description = "disabled"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn disable_party(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&state, move |a| a.set_party_enabled(&name, false)).await?)
}

#[utoipa::path(post, path = "/admin/parties/{name}/enable", params(("name" = String, Path)), responses((status = 200, description = "enabled"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn enable_party(State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&state, move |a| a.set_party_enabled(&name, true)).await?)
}

#[utoipa::path(get, path = "/admin/ssh-keys", responses((status = 200, description = "SSH keys"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn list_ssh_keys(State(state): State<Shared>, Query(filter): Query<PartyFilter>) -> Answer {
    ok(with_admin(&state, move |a| a.ssh_keys(filter.party.as_deref())).await?)
}

#[utoipa::path(post, path = "/admin/ssh-keys", request_body = NewSshKey, responses((status = 201, description = "added, with its authorized_keys line"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn add_ssh_key(State(state): State<Shared>, body: Result<Json<NewSshKey>, JsonRejection>) -> Answer {
    let Json(body) = body?;
    created(
        with_admin(&state, move |a| {
            a.add_ssh_key(
                &body.party,
                &body.public_key,
                body.expires.as_deref(),
                body.from.as_deref(),
                body.comment.as_deref(),
            )
        })
        .await?,
    )
}

#[utoipa::path(delete, path = "/admin/ssh-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn revoke_ssh_key(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Answer {
    ok(with_admin(&state, move |a| a.revoke_ssh_key(&id)).await?)
}

#[utoipa::path(get, path = "/admin/api-keys", responses((status = 200, description = "API keys, without secrets"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn list_api_keys(State(state): State<Shared>, Query(filter): Query<PartyFilter>) -> Answer {
    ok(with_admin(&state, move |a| a.api_keys(filter.party.as_deref())).await?)
}

#[utoipa::path(post, path = "/admin/api-keys", request_body = NewApiKey, responses((status = 201, description = "issued; the key is in this answer only"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn issue_api_key(State(state): State<Shared>, body: Result<Json<NewApiKey>, JsonRejection>) -> Answer {
    let Json(body) = body?;
    created(
        with_admin(&state, move |a| a.issue_api_key(&body.party, body.name.as_deref(), body.expires.as_deref()))
            .await?,
    )
}

#[utoipa::path(delete, path = "/admin/api-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn revoke_api_key(State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Answer {
    let answer = with_admin(&state, {
        let id = id.clone();
        move |a| a.revoke_api_key(&id)
    })
    .await?;
    state.api_keys.forget(&id);
    ok(answer)
}

#[utoipa::path(post, path = "/admin/authorized-keys/write", responses((status = 200, description = "lines written"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn write_authorized_keys(State(state): State<Shared>) -> Answer {
    ok(serde_json::json!({ "lines": with_admin(&state, |a| a.write_authorized_keys()).await? }))
}

#[utoipa::path(get, path = "/admin/authorized-keys/check", responses((status = 200, description = "drift between file and store"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn check_authorized_keys(State(state): State<Shared>) -> Answer {
    let drift = with_admin(&state, |a| a.check_authorized_keys()).await?;
    ok(serde_json::json!({ "clean": drift.is_clean(), "missing": drift.missing, "unexpected": drift.unexpected }))
}

#[utoipa::path(get, path = "/admin/audit", responses((status = 200, description = "audit records, oldest first"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn audit(State(state): State<Shared>, Query(query): Query<AuditQuery>) -> Answer {
    let limit = query.limit.unwrap_or(100).min(1000);
    ok(with_admin(&state, move |a| a.audit_records(query.after, limit)).await?)
}

#[utoipa::path(get, path = "/admin/runs", responses((status = 200, description = "runs with replica sizes and last pushes"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn runs(State(state): State<Shared>) -> Answer {
    ok(with_admin(&state, |a| a.runs()).await?)
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
        let pool = StorePool::new(config.store_path());
        let config_store_path = config.store_path();
        let state = Arc::new(AppState {
            config,
            config_path,
            pool,
            admin_tokens: VerifiedCache::default(),
            api_keys: VerifiedCache::default(),
            sync: sync_api::SyncState::new(config_store_path),
        });
        tokio::spawn(sync_api::follow_ledger(state.clone()));
        eprintln!("evosync: serving on http://{}", listener.local_addr()?);
        axum::serve(listener, router(state)).with_graceful_shutdown(shutdown_signal()).await?;
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
