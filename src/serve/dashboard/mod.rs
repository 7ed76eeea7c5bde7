//! The administrator's dashboard, `GET /dashboard/` in `evosync serve`: pages rendered on the server from templates
//! (`templates/`, compiled into the binary by askama, every value HTML-escaped), with a small script (`assets/`,
//! embedded too) only for the live feed. Read views work with JavaScript off; charts are SVG drawn on the server.
//! No page loads anything from elsewhere, and every answer carries `Content-Security-Policy: default-src 'self'`.
//!
//! Who may see it: whoever signs in with an admin token (`session`), which opens a session in the service's memory;
//! every change is a form carrying the session's CSRF token, carried out and audited by the same `admin::Admin`
//! operations as the admin API (`actions`). The pages: `views`; the live feed and its event stream: `feed`; charts:
//! `chart`; what every page shares (error page, headers, formats): `pages`.

mod actions;
mod assets;
mod chart;
mod feed;
mod pages;
mod session;
mod views;

#[cfg(test)]
mod tests;

pub use feed::Feed;
pub use session::Sessions;

use crate::serve::state::Shared;
use axum::middleware;
use axum::response::Redirect;
use axum::routing::{any, get, post};
use axum::Router;

/// What the dashboard keeps while the service runs.
#[derive(Default)]
pub struct Dashboard {
    pub sessions: Sessions,
    pub feed: Feed,
    /// The audit page's chain check reads the whole trail: one at a time.
    chain_check: tokio::sync::Mutex<()>,
}

/// The dashboard's routes, all under `/dashboard`.
pub fn router() -> Router<Shared> {
    Router::new()
        .route("/dashboard", get(|| async { Redirect::permanent("/dashboard/") }))
        .route("/dashboard/", get(views::overview))
        .route("/dashboard/parties", get(views::parties))
        .route("/dashboard/runs", get(views::runs))
        .route("/dashboard/runs/{run}", get(views::run))
        .route("/dashboard/feed", get(views::live_feed))
        .route("/dashboard/audit", get(views::audit))
        .route("/dashboard/events", get(feed::events))
        .route("/dashboard/sign-in", get(actions::sign_in_page).post(actions::sign_in))
        .route("/dashboard/sign-out", post(actions::sign_out))
        .route("/dashboard/parties/{name}/disable", post(actions::disable_party))
        .route("/dashboard/parties/{name}/enable", post(actions::enable_party))
        .route("/dashboard/parties/{name}/api-keys", post(actions::issue_api_key))
        .route("/dashboard/ssh-keys/{id}/revoke", post(actions::revoke_ssh_key))
        .route("/dashboard/api-keys/{id}/revoke", post(actions::revoke_api_key))
        .route("/dashboard/runs/{run}/reverify", post(actions::reverify))
        .route("/dashboard/assets/{name}", get(assets::asset))
        // Any other path under /dashboard: the error page, with the security headers like every dashboard answer
        // (the service's fallback would answer JSON without them).
        .route("/dashboard/{*rest}", any(|| async { pages::PageError::Api(crate::serve::error::ApiError::NoEndpoint) }))
        .layer(middleware::map_response(pages::security_headers))
}
