//! `/openapi.json`: the OpenAPI document of every route, generated from the handlers' annotations (utoipa).

use super::{admin_api, events, metrics, sync_api, upload};
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "evosync", description = "Central side of kromosynth run sync: the workers' sync API and the admin API."),
    paths(sync_api::register, sync_api::list, upload::upload, sync_api::status, metrics::metrics, events::events,
        admin_api::list_parties, admin_api::add_party, admin_api::show_party, admin_api::disable_party,
        admin_api::enable_party, admin_api::list_ssh_keys, admin_api::add_ssh_key, admin_api::revoke_ssh_key,
        admin_api::list_api_keys, admin_api::issue_api_key, admin_api::revoke_api_key,
        admin_api::write_authorized_keys, admin_api::check_authorized_keys, admin_api::audit, admin_api::runs, admin_api::reverify_run,
        super::healthz, openapi_json, super::tunnel::open),
    components(schemas(sync_api::Registration, sync_api::Listed, admin_api::NewParty, admin_api::NewSshKey,
        admin_api::NewApiKey)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Sync-API-Key"))));
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    Json(<ApiDoc as utoipa::OpenApi>::openapi()).into_response()
}
