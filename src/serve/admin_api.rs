//! The admin HTTP API under `/admin/…`: Bearer admin token (an `AdminCaller` in every handler's signature), JSON in
//! and out, every action carried out by `admin` (the same operations as the command line) and audited there, all or
//! nothing; what the service's account may not do is refused with 403 before anything changes.

use super::auth::AdminCaller;
use super::body::JsonBody;
use super::error::ApiError;
use super::state::{blocking, Shared};
use crate::admin::{Admin, AdminError};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

/// Runs `work` with an admin context on a blocking thread; the `AdminCaller` is the proof the token checked out, and
/// its token id is the actor of every record `work` writes.
async fn with_admin<T: Send + 'static>(
    admin: &AdminCaller,
    state: &Shared,
    work: impl FnOnce(&Admin<'_>) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = admin.actor();
    blocking(state, move |state, store| {
        let admin = Admin::borrowing(&state.config, state.config_path.clone(), store, actor);
        Ok(work(&admin)?)
    })
    .await
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
pub async fn list_parties(admin: AdminCaller, State(state): State<Shared>) -> Answer {
    ok(with_admin(&admin, &state, |a| a.parties()).await?)
}

#[utoipa::path(post, path = "/admin/parties", request_body = NewParty, responses((status = 201, description = "added"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn add_party(admin: AdminCaller, State(state): State<Shared>, JsonBody(body): JsonBody<NewParty>) -> Answer {
    created(with_admin(&admin, &state, move |a| a.add_party(&body.name)).await?)
}

#[utoipa::path(get, path = "/admin/parties/{name}", params(("name" = String, Path)), responses((status = 200, description = "a party with its keys"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn show_party(admin: AdminCaller, State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.show_party(&name)).await?)
}

#[utoipa::path(post, path = "/admin/parties/{name}/disable", params(("name" = String, Path)), responses((status = 200, description = "disabled"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn disable_party(admin: AdminCaller, State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.set_party_enabled(&name, false)).await?)
}

#[utoipa::path(post, path = "/admin/parties/{name}/enable", params(("name" = String, Path)), responses((status = 200, description = "enabled"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn enable_party(admin: AdminCaller, State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.set_party_enabled(&name, true)).await?)
}

#[utoipa::path(get, path = "/admin/ssh-keys", responses((status = 200, description = "SSH keys"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn list_ssh_keys(
    admin: AdminCaller,
    State(state): State<Shared>,
    Query(filter): Query<PartyFilter>,
) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.ssh_keys(filter.party.as_deref())).await?)
}

#[utoipa::path(post, path = "/admin/ssh-keys", request_body = NewSshKey, responses((status = 201, description = "added, with its authorized_keys line"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn add_ssh_key(
    admin: AdminCaller,
    State(state): State<Shared>,
    JsonBody(body): JsonBody<NewSshKey>,
) -> Answer {
    created(
        with_admin(&admin, &state, move |a| {
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

#[utoipa::path(delete, path = "/admin/ssh-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn revoke_ssh_key(admin: AdminCaller, State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.revoke_ssh_key(&id)).await?)
}

#[utoipa::path(get, path = "/admin/api-keys", responses((status = 200, description = "API keys, without secrets"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn list_api_keys(
    admin: AdminCaller,
    State(state): State<Shared>,
    Query(filter): Query<PartyFilter>,
) -> Answer {
    ok(with_admin(&admin, &state, move |a| a.api_keys(filter.party.as_deref())).await?)
}

#[utoipa::path(post, path = "/admin/api-keys", request_body = NewApiKey, responses((status = 201, description = "issued; the key is in this answer only"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn issue_api_key(
    admin: AdminCaller,
    State(state): State<Shared>,
    JsonBody(body): JsonBody<NewApiKey>,
) -> Answer {
    created(
        with_admin(&admin, &state, move |a| {
            a.issue_api_key(&body.party, body.name.as_deref(), body.expires.as_deref())
        })
        .await?,
    )
}

#[utoipa::path(delete, path = "/admin/api-keys/{id}", params(("id" = String, Path)), responses((status = 200, description = "revoked"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn revoke_api_key(admin: AdminCaller, State(state): State<Shared>, UrlPath(id): UrlPath<String>) -> Answer {
    // The key's state is read on each request, so the revoke holds from the next one on.
    ok(with_admin(&admin, &state, move |a| a.revoke_api_key(&id)).await?)
}

#[utoipa::path(post, path = "/admin/authorized-keys/write", responses((status = 200, description = "lines written"), (status = 401), (status = 400), (status = 404), (status = 403, description = "this account may not write what it needs; nothing changed; the error names the command to run as root"), (status = 503, description = "another admin action holds the admin lock; nothing changed")), security(("admin_token" = [])))]
pub async fn write_authorized_keys(admin: AdminCaller, State(state): State<Shared>) -> Answer {
    ok(serde_json::json!({ "lines": with_admin(&admin, &state, |a| a.write_authorized_keys()).await? }))
}

#[utoipa::path(get, path = "/admin/authorized-keys/check", responses((status = 200, description = "drift between file and store"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn check_authorized_keys(admin: AdminCaller, State(state): State<Shared>) -> Answer {
    let drift = with_admin(&admin, &state, |a| a.check_authorized_keys()).await?;
    ok(serde_json::json!({ "clean": drift.is_clean(), "missing": drift.missing, "unexpected": drift.unexpected }))
}

#[utoipa::path(get, path = "/admin/audit", responses((status = 200, description = "audit records, oldest first"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn audit(admin: AdminCaller, State(state): State<Shared>, Query(query): Query<AuditQuery>) -> Answer {
    let limit = query.limit.unwrap_or(100).min(1000);
    ok(with_admin(&admin, &state, move |a| a.audit_records(query.after, limit)).await?)
}

#[utoipa::path(get, path = "/admin/runs", responses((status = 200, description = "runs with replica sizes and last pushes"), (status = 401), (status = 400), (status = 404)), security(("admin_token" = [])))]
pub async fn runs(admin: AdminCaller, State(state): State<Shared>) -> Answer {
    ok(with_admin(&admin, &state, |a| a.runs()).await?)
}

/// Checks a run's replicas again, each under its replica's lock, and publishes or withdraws the run.
#[utoipa::path(post, path = "/admin/runs/{run}/verify", params(("run" = String, Path)), responses((status = 200, description = "each replica's verdict"), (status = 401), (status = 404)), security(("admin_token" = [])))]
pub async fn reverify_run(admin: AdminCaller, State(state): State<Shared>, UrlPath(run): UrlPath<String>) -> Answer {
    let (party, verdicts) = super::catalog::reverify(&state, admin.actor(), &run).await?;
    let published = crate::catalog::is_published(&state.config, &run);
    ok(serde_json::json!({ "run": run, "party": party, "published": published,
        "verdicts": verdicts.into_iter().map(|(database, v)| serde_json::json!({ "database": database, "ok": v.ok,
            "seconds": v.seconds, "reason": v.reason })).collect::<Vec<_>>() }))
}
