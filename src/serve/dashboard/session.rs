//! Who is signed in to the dashboard: sessions in the service's memory (never in the store), each keyed by a
//! SHA-256 of a random 256-bit id that only the browser's cookie holds, each holding the id of the admin token it was
//! opened with and a CSRF token of its own. A session ends on sign-out, after `SESSION_LIFETIME`, after `IDLE_LIMIT`
//! without a request, and at the first request after its admin token was revoked or expired (the token's state is read
//! from the store on every request, as the admin API reads it). At most `MAX_SESSIONS` exist: opening one more ends
//! the one idle longest.
//!
//! The extractors: `SignedIn` (a page: without a session, the browser is sent to the sign-in form), `Action<F>` (a
//! change: a session, a same-origin request and the session's CSRF token in the form, else refused before anything is
//! done) and `SignInForm` (the sign-in itself, guarded by a double-submit token of its own).

use super::pages::PageError;
use crate::serve::auth;
use crate::serve::body::read_bounded;
use crate::serve::error::ApiError;
use crate::serve::state::Shared;
use crate::store::AdminToken;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie.
pub const SESSION_COOKIE: &str = "evosync_dashboard";
/// The sign-in form's double-submit cookie (set with the form, compared with its hidden field).
pub const SIGN_IN_COOKIE: &str = "evosync_sign_in";
/// The longest a session lives, whatever it does (and never past its admin token's expiry).
pub const SESSION_LIFETIME: i64 = 8 * 3600;
/// A session without a request for this long has ended.
pub const IDLE_LIMIT: i64 = 3600;
/// Sessions at once; an administrator's browser holds one, so this is many administrators.
pub const MAX_SESSIONS: usize = 256;
/// The most of a request's Cookie headers the dashboard reads; more is refused (431). Browsers send every cookie of
/// the host, other ports' included, so this leaves room for others' cookies.
pub const MAX_COOKIE_BYTES: usize = 8 * 1024;
/// The largest form an action or the sign-in may send.
pub const MAX_FORM_BYTES: usize = 8 * 1024;

/// Random ids are 32 bytes from the OS, in hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    crate::time::hex(&bytes)
}

fn is_random_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Equality whose time does not depend on where two tokens differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type SessionKey = [u8; 32];

fn key_of(id: &str) -> SessionKey {
    Sha256::digest(id.as_bytes()).into()
}

struct Session {
    token_id: String,
    csrf: String,
    expires_at: i64,
    last_seen: i64,
    /// One message for the next page (what an action did), shown once.
    flash: Option<String>,
}

/// The sessions table.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<HashMap<SessionKey, Session>>,
}

/// Why a session is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    Unknown,
    Expired,
    Idle,
}

impl Gone {
    pub fn why(self) -> &'static str {
        match self {
            Gone::Unknown => "not signed in",
            Gone::Expired => "the session expired",
            Gone::Idle => "the session ended after an hour without a request",
        }
    }
}

/// A session as a request sees it.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub token_id: String,
    pub csrf: String,
    key: SessionKey,
}

impl Sessions {
    /// Opens a session for `token`; returns the id for the cookie. Expired sessions go first; when the table is
    /// full, the one idle longest.
    pub fn open(&self, token: &AdminToken, now: i64) -> String {
        let id = random_hex();
        let expires_at = match token.expires_at {
            Some(token_expires) => token_expires.min(now + SESSION_LIFETIME),
            None => now + SESSION_LIFETIME,
        };
        let session =
            Session { token_id: token.id.clone(), csrf: random_hex(), expires_at, last_seen: now, flash: None };
        let mut table = self.lock();
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| s.expires_at > now && now - s.last_seen < IDLE_LIMIT);
        }
        if table.len() >= MAX_SESSIONS {
            if let Some(oldest) = table.iter().min_by_key(|(_, s)| s.last_seen).map(|(key, _)| *key) {
                table.remove(&oldest);
            }
        }
        table.insert(key_of(&id), session);
        id
    }

    /// The session `id` names, when it is still open; marks it seen.
    pub fn find(&self, id: &str, now: i64) -> Result<SignedIn, Gone> {
        let key = key_of(id);
        let mut table = self.lock();
        let session = table.get_mut(&key).ok_or(Gone::Unknown)?;
        let gone = if now >= session.expires_at {
            Some(Gone::Expired)
        } else if now - session.last_seen >= IDLE_LIMIT {
            Some(Gone::Idle)
        } else {
            None
        };
        if let Some(gone) = gone {
            table.remove(&key);
            return Err(gone);
        }
        session.last_seen = now;
        Ok(SignedIn { token_id: session.token_id.clone(), csrf: session.csrf.clone(), key })
    }

    /// True while the session is open; marks it seen. An open live feed asks this now and then: a page that is
    /// watched counts as a session in use, up to the session's lifetime.
    pub fn keep_open(&self, session: &SignedIn, now: i64) -> bool {
        let mut table = self.lock();
        match table.get_mut(&session.key) {
            Some(s) if now < s.expires_at && now - s.last_seen < IDLE_LIMIT => {
                s.last_seen = now;
                true
            }
            _ => false,
        }
    }

    pub fn close(&self, session: &SignedIn) {
        self.lock().remove(&session.key);
    }

    /// Ends every session opened with `token_id` (the token was revoked or expired).
    pub fn close_token(&self, token_id: &str) {
        self.lock().retain(|_, s| s.token_id != token_id);
    }

    pub fn set_flash(&self, session: &SignedIn, message: String) {
        if let Some(s) = self.lock().get_mut(&session.key) {
            s.flash = Some(message);
        }
    }

    pub fn take_flash(&self, session: &SignedIn) -> Option<String> {
        self.lock().get_mut(&session.key).and_then(|s| s.flash.take())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Session>> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The value of cookie `name`, from Cookie headers of at most `MAX_COOKIE_BYTES` together.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut total = 0;
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        total += value.len();
        if total > MAX_COOKIE_BYTES {
            return Err(ApiError::HeaderTooLarge { header: "Cookie", limit: MAX_COOKIE_BYTES });
        }
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=') {
                if key == name && found.is_none() {
                    found = Some(value);
                }
            }
        }
    }
    Ok(found)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the dashboard's paths only, Secure under TLS; `max_age` 0
/// deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// Cookies are `Secure` when browsers reach the service over TLS: with `tls_cert` set, the one listener that serves
/// the dashboard takes TLS connections only (`serve::tls`); with `allow_plain_http`, a TLS proxy stands in front
/// (the only use that setting has), so browsers speak HTTPS to it.
pub fn over_tls(state: &Shared) -> bool {
    state.config.tls_cert.is_some() || state.config.allow_plain_http
}

/// Refuses a request a browser says came from another site (`Sec-Fetch-Site`), or whose `Origin` is not this host.
/// Requests that carry neither (curl, older browsers) go on to the CSRF token, which they cannot have.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err(ApiError::CrossSite);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let matches = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host);
        if host.is_empty() || !matches {
            return Err(ApiError::CrossSite);
        }
    }
    Ok(())
}

/// The session of the request's cookie, when it is open and its admin token may still be used.
async fn signed_in(parts: &Parts, state: &Shared) -> Result<SignedIn, ApiError> {
    let id = cookie(&parts.headers, SESSION_COOKIE)?.filter(|id| is_random_hex(id));
    let Some(id) = id else { return Err(ApiError::NoSession { why: Gone::Unknown.why() }) };
    let now = crate::time::now();
    let session = state.dashboard.sessions.find(id, now).map_err(|gone| ApiError::NoSession { why: gone.why() })?;
    let token = state.pool.with(|store| store.admin_token(&session.token_id))?;
    let usable = match &token {
        Some(token) => auth::admin_token_usable(token),
        None => Err(ApiError::BadAdminToken),
    };
    if let Err(error) = usable {
        state.dashboard.sessions.close_token(&session.token_id);
        let why = match error {
            ApiError::ExpiredAdminToken => "the admin token it was opened with has expired",
            _ => "the admin token it was opened with was revoked",
        };
        return Err(ApiError::NoSession { why });
    }
    if state.auth.touch_due(&session.token_id) {
        state.records.admin_token_used(&session.token_id);
    }
    Ok(session)
}

impl FromRequestParts<Shared> for SignedIn {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<SignedIn, PageError> {
        match signed_in(parts, state).await {
            Ok(session) => Ok(session),
            // A page asked for without a session: to the sign-in form.
            Err(ApiError::NoSession { .. }) if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(PageError::SignIn)
            }
            Err(error) => Err(error.into()),
        }
    }
}

/// An action's form: the session's CSRF token and the action's own fields.
#[derive(Deserialize)]
struct WithCsrf<F> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: F,
}

/// A form without fields of its own.
#[derive(Deserialize, Default)]
pub struct NoFields {}

/// A change asked for from a dashboard page: same origin, an open session, and the session's CSRF token in a form of
/// at most `MAX_FORM_BYTES`. Checked in that order, the session before any body byte is read.
pub struct Action<F> {
    pub session: SignedIn,
    pub form: F,
    /// The request came over TLS (cookies set in the answer are `Secure`).
    pub secure: bool,
}

impl<F: DeserializeOwned + Send> FromRequest<Shared> for Action<F> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &Shared) -> Result<Action<F>, PageError> {
        same_origin(request.headers())?;
        let (parts, body) = request.into_parts();
        let session = signed_in(&parts, state).await?;
        let form: WithCsrf<F> = read_form(&parts.headers, body).await?;
        if !same_token(&form.csrf, &session.csrf) {
            return Err(ApiError::Csrf.into());
        }
        Ok(Action { session, form: form.fields, secure: over_tls(state) })
    }
}

/// An `application/x-www-form-urlencoded` body of at most `MAX_FORM_BYTES`.
async fn read_form<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::BadForm("a dashboard form is sent as application/x-www-form-urlencoded".into()));
    }
    let mut request = Request::new(body);
    *request.headers_mut() = headers.clone();
    let body = read_bounded(request, MAX_FORM_BYTES).await?;
    serde_urlencoded::from_bytes(&body).map_err(|e| ApiError::BadForm(format!("the form does not parse: {e}")))
}

#[derive(Deserialize)]
struct SignInFields {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

/// The sign-in form: same origin, its hidden token equal to the sign-in cookie set with the form, and the admin
/// token typed into it. The token is checked afterwards, by `auth::admin_token`.
pub struct SignInForm {
    pub token: String,
    /// A session the browser still had, to end when the new one opens.
    pub previous: Option<SignedIn>,
    pub secure: bool,
    pub client: Option<std::net::IpAddr>,
}

impl FromRequest<Shared> for SignInForm {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &Shared) -> Result<SignInForm, PageError> {
        same_origin(request.headers())?;
        let (parts, body) = request.into_parts();
        let expected = cookie(&parts.headers, SIGN_IN_COOKIE)?.filter(|v| is_random_hex(v)).map(str::to_owned);
        let previous = signed_in(&parts, state).await.ok();
        let secure = over_tls(state);
        let client = auth::client_address(&parts);
        let fields: SignInFields = read_form(&parts.headers, body).await?;
        match expected {
            Some(expected) if same_token(&expected, &fields.csrf) => {}
            _ => return Err(ApiError::Csrf.into()),
        }
        Ok(SignInForm { token: fields.token.trim().to_owned(), previous, secure, client })
    }
}

/// A fresh double-submit value for the sign-in form.
pub fn sign_in_nonce() -> String {
    random_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: Option<i64>) -> AdminToken {
        AdminToken {
            id: "t1".into(),
            name: String::new(),
            secret_hash: String::new(),
            created_at: 0,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn sessions_end_when_expired_idle_or_closed_and_never_outlive_their_token() {
        let sessions = Sessions::default();
        let id = sessions.open(&token(None), 1000);
        assert!(is_random_hex(&id));
        let found = sessions.find(&id, 1000 + IDLE_LIMIT - 1).unwrap();
        assert_eq!(found.token_id, "t1");
        assert!(is_random_hex(&found.csrf) && found.csrf != id);
        assert_eq!(sessions.find(&id, 1000 + 2 * IDLE_LIMIT).unwrap_err(), Gone::Idle);
        assert_eq!(sessions.find(&id, 1000).unwrap_err(), Gone::Unknown, "an ended session is gone");

        let short = sessions.open(&token(Some(1100)), 1000);
        assert_eq!(sessions.find(&short, 1100).unwrap_err(), Gone::Expired, "the token's expiry ends it");
        let mut last = 1000;
        let long = sessions.open(&token(None), last);
        while last < 1000 + SESSION_LIFETIME - 60 {
            last += 60;
            sessions.find(&long, last).unwrap();
        }
        assert_eq!(sessions.find(&long, 1000 + SESSION_LIFETIME).unwrap_err(), Gone::Expired);

        let a = sessions.open(&token(None), 1000);
        let b = sessions.open(&AdminToken { id: "t2".into(), ..token(None) }, 1000);
        sessions.close_token("t1");
        assert!(sessions.find(&a, 1001).is_err() && sessions.find(&b, 1001).is_ok());
        let watched = sessions.find(&b, 1002).unwrap();
        assert!(sessions.keep_open(&watched, 1002 + IDLE_LIMIT - 1), "a watched feed keeps its session in use");
        assert!(sessions.find(&b, 1002 + 2 * IDLE_LIMIT - 2).is_ok());
        assert!(!sessions.keep_open(&watched, 1002 + 4 * IDLE_LIMIT), "an idle one ends");
        sessions.close(&watched);
        assert!(sessions.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_gives_up_the_longest_idle_session() {
        let sessions = Sessions::default();
        let first = sessions.open(&token(None), 1000);
        let ids: Vec<String> = (0..MAX_SESSIONS).map(|n| sessions.open(&token(None), 1001 + n as i64)).collect();
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert!(sessions.find(&first, 2000).is_err(), "the longest idle went");
        assert!(sessions.find(&ids[0], 2000).is_ok());
    }

    #[test]
    fn flash_messages_are_shown_once() {
        let sessions = Sessions::default();
        let id = sessions.open(&token(None), 1000);
        let session = sessions.find(&id, 1000).unwrap();
        sessions.set_flash(&session, "done".into());
        assert_eq!(sessions.take_flash(&session).as_deref(), Some("done"));
        assert_eq!(sessions.take_flash(&session), None);
    }

    #[test]
    fn cookies_are_read_within_their_bound_and_compared_in_constant_time() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("other=1; evosync_dashboard=abc; x=y"));
        assert_eq!(cookie(&headers, SESSION_COOKIE).unwrap(), Some("abc"));
        assert_eq!(cookie(&headers, "missing").unwrap(), None);
        headers.append(header::COOKIE, HeaderValue::from_str(&"z".repeat(MAX_COOKIE_BYTES)).unwrap());
        assert!(matches!(cookie(&headers, SESSION_COOKIE), Err(ApiError::HeaderTooLarge { .. })));
        assert!(same_token("abcd", "abcd"));
        assert!(!same_token("abcd", "abce") && !same_token("abc", "abcd") && !same_token("", "a"));
        let cookie = set_cookie(SESSION_COOKIE, "v", 60, true);
        assert_eq!(
            cookie.to_str().unwrap(),
            "evosync_dashboard=v; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=60; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "v", 60, false).to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        assert!(same_origin(&headers(&[])).is_ok(), "no browser headers: the CSRF token decides");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:4004"), ("origin", "http://127.0.0.1:4004")])).is_ok());
        assert!(same_origin(&headers(&[("host", "127.0.0.1:4004"), ("origin", "http://evil.example")])).is_err());
        assert!(same_origin(&headers(&[("origin", "null")])).is_err());
    }
}
