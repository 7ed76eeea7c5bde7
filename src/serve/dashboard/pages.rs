//! What every dashboard page shares: the frame around it (navigation, the sign-out form with its CSRF token, the
//! flash message), rendering a template into a response, the error page (any `ApiError`, counted and logged by the
//! service's middleware like every other refusal), the security headers every dashboard answer carries, bounded
//! query strings, and the formats numbers and times are shown in.

use super::session::SignedIn;
use crate::admin::AdminError;
use crate::serve::error::ApiError;
use crate::serve::state::Shared;
use crate::store::StoreError;
use askama::Template;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;

/// Every page's policy: only this origin's own scripts, styles, images and forms; inline scripts and styles do not
/// run; no page may frame the dashboard.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The longest query string a page takes.
pub const MAX_QUERY_BYTES: usize = 1024;

pub const SIGN_IN_PATH: &str = "/dashboard/sign-in";

/// The navigation, the sign-out form and the flash message around every signed-in page.
pub struct Frame {
    /// Which tab is lit: `overview`, `parties`, `runs`, `feed`, `audit`.
    pub active: &'static str,
    pub csrf: String,
    pub flash: Option<String>,
    pub generated_at: String,
}

impl Frame {
    pub fn new(state: &Shared, session: &SignedIn, active: &'static str) -> Frame {
        Frame {
            active,
            csrf: session.csrf.clone(),
            flash: state.dashboard.sessions.take_flash(session),
            generated_at: crate::time::rfc3339(crate::time::now()),
        }
    }

    /// The class of a navigation link: lit when it is this page's.
    pub fn tab(&self, name: &str) -> &'static str {
        if self.active == name {
            "active"
        } else {
            ""
        }
    }
}

/// Why a page is not shown: the sign-in form instead, or an error page.
#[derive(Debug)]
pub enum PageError {
    SignIn,
    Api(ApiError),
}

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        PageError::Api(error)
    }
}

impl From<AdminError> for PageError {
    fn from(error: AdminError) -> Self {
        PageError::Api(ApiError::Admin(error))
    }
}

impl From<StoreError> for PageError {
    fn from(error: StoreError) -> Self {
        PageError::Api(error.into())
    }
}

#[derive(Template)]
#[template(path = "error.html", config = "src/serve/dashboard/askama.toml")]
struct ErrorPage {
    status: u16,
    reason: &'static str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::SignIn => Redirect::to(SIGN_IN_PATH).into_response(),
            PageError::Api(error) => {
                let page = ErrorPage {
                    status: error.status().as_u16(),
                    reason: error.status().canonical_reason().unwrap_or("Error"),
                    message: error.to_string(),
                };
                let html = page.render().unwrap_or_else(|_| page.message.clone());
                // The error's own answer carries what the refusal middleware logs and counts; only its body changes.
                with_html_body(error.into_response(), html)
            }
        }
    }
}

fn with_html_body(mut response: Response, html: String) -> Response {
    *response.body_mut() = Body::from(html);
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// A page: the template rendered, with `status`.
pub fn page(status: StatusCode, template: &impl Template) -> Result<Response, PageError> {
    let html = template.render().map_err(|e| ApiError::Internal(format!("a dashboard page failed to render: {e}")))?;
    Ok(with_html_body(status.into_response(), html))
}

/// Middleware on every dashboard route: the Content-Security-Policy and the other headers that keep a page from
/// being framed, sniffed, or cached (the pages show keys once, and who did what).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not `no-referrer`: under it a browser sends `Origin: null` with the dashboard's own forms, which the origin
    // check refuses. `same-origin` keeps the address from other sites and the origin on the dashboard's own requests.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The query string as `T`, when it is at most `MAX_QUERY_BYTES`.
pub fn query<T: DeserializeOwned + Default>(uri: &Uri) -> Result<T, ApiError> {
    let Some(text) = uri.query() else { return Ok(T::default()) };
    if text.len() > MAX_QUERY_BYTES {
        return Err(ApiError::QueryTooLong { limit: MAX_QUERY_BYTES });
    }
    serde_urlencoded::from_str(text).map_err(|e| ApiError::BadQuery(e.to_string()))
}

// ---- how things are shown ----

/// `1.2 MiB`, `512 B`: sizes as people read them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// `0.41 s`, `12 s`, `3 min 5 s`, `2 h 10 min`.
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return String::new();
    }
    if s < 10.0 {
        return format!("{s:.2} s");
    }
    let whole = s.round() as u64;
    match whole {
        0..=119 => format!("{whole} s"),
        120..=7199 => format!("{} min {} s", whole / 60, whole % 60),
        _ => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
    }
}

/// `2026-11-26 14:03:21 UTC`.
pub fn when(unix: i64) -> String {
    crate::time::rfc3339(unix).replacen('T', " ", 1).replace('Z', " UTC")
}

/// `5 min ago`, `in 3 days`.
pub fn ago(now: i64, at: i64) -> String {
    let (span, past) = if at <= now { (now - at, true) } else { (at - now, false) };
    let text = match span {
        0..=59 => format!("{span} s"),
        60..=3599 => format!("{} min", span / 60),
        3600..=172_799 => format!("{} h", span / 3600),
        _ => format!("{} days", span / 86_400),
    };
    if past {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

/// At most `max` characters of `text`, with an ellipsis when cut (messages quote what callers sent).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_times_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(200 << 20), "200 MiB");
        assert_eq!(bytes(u64::MAX), "16384 PiB");
        assert_eq!(seconds(0.412), "0.41 s");
        assert_eq!(seconds(75.0), "75 s");
        assert_eq!(seconds(185.0), "3 min 5 s");
        assert_eq!(seconds(7800.0), "2 h 10 min");
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(ago(100, 40), "1 min ago");
        assert_eq!(ago(0, 3 * 86_400), "in 3 days");
        assert_eq!(clip("abcdef", 3), "abc…");
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ééé", 2), "éé…");
    }

    #[test]
    fn query_strings_are_bounded() {
        #[derive(serde::Deserialize, Default, Debug)]
        struct Q {
            party: Option<String>,
        }
        let q: Q = query(&"/x?party=acme".parse().unwrap()).unwrap();
        assert_eq!(q.party.as_deref(), Some("acme"));
        let long: Uri = format!("/x?party={}", "a".repeat(MAX_QUERY_BYTES)).parse().unwrap();
        assert!(matches!(query::<Q>(&long), Err(ApiError::QueryTooLong { .. })));
        assert!(query::<Q>(&"/x".parse().unwrap()).unwrap().party.is_none());
    }
}
