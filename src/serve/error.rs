//! Every way a request to `evosync serve` can fail, in one enum: its HTTP status, the label it is counted and logged
//! under, and the message the caller reads (`{"error": "…", "status": N}`). Handlers return `Result<_, ApiError>` and
//! use `?`; `log_refusals` writes one log line and counts one refusal per failed request, so no handler can forget.

use super::multipart::MultipartError;
use super::state::Shared;
use crate::admin::AdminError;
use crate::fs::confine::ConfineError;
use crate::fs::landing::FinishError;
use crate::log::{Line, SERVE};
use crate::names::NameError;
use crate::size::ByteSize;
use crate::store::{StoreError, StoreErrorKind};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::fmt;
use std::net::SocketAddr;

#[derive(Debug)]
pub enum ApiError {
    // ---- who is calling ----
    NoKey,
    BadKey,
    RevokedKey,
    ExpiredKey,
    PartyDisabled {
        party: String,
    },
    NoPolicy {
        party: String,
    },
    NoAdminToken,
    BadAdminToken,
    RevokedAdminToken,
    ExpiredAdminToken,
    RateLimited {
        retry_after: u64,
    },
    /// Too many failed key checks for this key id or from this address: refused before any slow hash.
    AuthRateLimited {
        retry_after: u64,
    },
    /// The dashboard: no session, or one that ended (why).
    NoSession {
        why: &'static str,
    },
    /// The dashboard: an action whose form does not carry the session's CSRF token.
    Csrf,
    /// The dashboard: an action sent from another site (`Sec-Fetch-Site`).
    CrossSite,
    // ---- which run ----
    RunName {
        run: String,
        pattern: String,
    },
    RunTooLong {
        len: usize,
        max: usize,
    },
    NoSuchRun {
        run: String,
    },
    /// Another party's run: answered as a missing one (404), or as taken (409) to a party that tries to register it.
    OtherPartysRun {
        run: String,
        registering: bool,
    },
    NoTree,
    Confine(ConfineError),
    /// The run's home in the catalog could not be used.
    Home(crate::catalog::home::HomeError),
    // ---- what was sent ----
    Name(NameError),
    BadRegistration(String),
    BadJson(String),
    /// A JSON body over its limit: refused on its Content-Length, or as soon as more arrived.
    BodyTooLarge {
        limit: usize,
    },
    /// A request header over the limit the dashboard keeps (the Cookie header).
    HeaderTooLarge {
        header: &'static str,
        limit: usize,
    },
    /// A query string over its limit, or one that does not parse.
    QueryTooLong {
        limit: usize,
    },
    BadQuery(String),
    /// A registration field over its limit.
    FieldTooLong {
        field: &'static str,
        limit: usize,
    },
    BadForm(String),
    /// The multipart body is malformed, or holds a part header or a preamble over its limit.
    Form(MultipartError),
    /// A text field of the form over its limit.
    TextFieldTooLong {
        field: String,
        limit: usize,
    },
    /// More file parts (or text fields) than `uploads.max_parts_per_request`.
    TooManyParts {
        limit: u32,
        stored: usize,
    },
    BrokenOff(String),
    /// The body delivered nothing for `http.body_stall_seconds`.
    BodyStalled {
        seconds: u64,
    },
    BadDigestHeader(String),
    Digest(String),
    TooLarge {
        name: String,
        limit: String,
    },
    /// An analysis file readers must not be given (`catalog::files`): gzip that inflates past its limit.
    File(crate::catalog::files::FileProblem),
    OverQuota {
        party: String,
    },
    AtQuota {
        party: String,
        quota: String,
    },
    TooManyFiles {
        party: String,
        max: u64,
    },
    NoEndpoint,
    // ---- the SSH tunnel (`tunnel`) ----
    /// The party's policy does not say `tunnel: true`.
    TunnelNotAllowed {
        party: String,
    },
    /// The party holds `limits.max_tunnels` tunnels already.
    TooManyTunnels {
        party: String,
        max: u32,
    },
    /// `GET /api/sync/ssh` without a WebSocket upgrade (RFC 6455) in its headers.
    NotWebSocket(String),
    /// The local sshd did not take the tunnel's connection (the detail is in the service's log).
    TunnelUnavailable,
    // ---- the host ----
    FolderConflict(String),
    Storage(String),
    Admin(AdminError),
    /// The state store refused or failed (counted under `store`, whichever door asked).
    Store(StoreError),
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            NoKey
            | BadKey
            | RevokedKey
            | ExpiredKey
            | NoAdminToken
            | BadAdminToken
            | RevokedAdminToken
            | ExpiredAdminToken
            | NoSession { .. } => StatusCode::UNAUTHORIZED,
            PartyDisabled { .. } | NoPolicy { .. } | Csrf | CrossSite => StatusCode::FORBIDDEN,
            HeaderTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            QueryTooLong { .. } => StatusCode::URI_TOO_LONG,
            RateLimited { .. } | AuthRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTooLarge { .. } | TextFieldTooLong { .. } | TooManyParts { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Form(error) if error.is_limit() => StatusCode::PAYLOAD_TOO_LARGE,
            BodyStalled { .. } => StatusCode::REQUEST_TIMEOUT,
            RunName { .. }
            | RunTooLong { .. }
            | Name(_)
            | BadRegistration(_)
            | BadJson(_)
            | BadQuery(_)
            | FieldTooLong { .. }
            | Form(_)
            | BadForm(_)
            | BrokenOff(_)
            | BadDigestHeader(_)
            | Digest(_) => StatusCode::BAD_REQUEST,
            NoSuchRun { .. } | NoEndpoint => StatusCode::NOT_FOUND,
            TunnelNotAllowed { .. } => StatusCode::FORBIDDEN,
            TooManyTunnels { .. } => StatusCode::TOO_MANY_REQUESTS,
            NotWebSocket(_) => StatusCode::BAD_REQUEST,
            TunnelUnavailable => StatusCode::BAD_GATEWAY,
            OtherPartysRun { registering: true, .. } => StatusCode::CONFLICT,
            OtherPartysRun { registering: false, .. } => StatusCode::NOT_FOUND,
            Confine(ConfineError::RunMissing { .. } | ConfineError::TooManyRuns { .. }) => StatusCode::FORBIDDEN,
            Confine(ConfineError::NotAFolder { .. } | ConfineError::NotRegular { .. }) | FolderConflict(_) => {
                StatusCode::CONFLICT
            }
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            File(_) => StatusCode::PAYLOAD_TOO_LARGE,
            OverQuota { .. } | AtQuota { .. } | TooManyFiles { .. } | Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
            Admin(error) => StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Store(error) => match error.kind() {
                StoreErrorKind::NotFound => StatusCode::NOT_FOUND,
                StoreErrorKind::Conflict => StatusCode::CONFLICT,
                StoreErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
                StoreErrorKind::Broken => StatusCode::INTERNAL_SERVER_ERROR,
            },
            NoTree | Confine(_) | Home(_) | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `reason=` of the log line and the label of `evosync_refusals_total`.
    pub fn label(&self) -> &'static str {
        use ApiError::*;
        match self {
            NoKey => "no-key",
            BadKey => "bad-key",
            RevokedKey => "revoked-key",
            ExpiredKey => "expired-key",
            PartyDisabled { .. } => "party-disabled",
            NoPolicy { .. } => "policy",
            NoAdminToken | BadAdminToken | RevokedAdminToken | ExpiredAdminToken => "admin-token",
            RateLimited { .. } => "rate",
            AuthRateLimited { .. } => "auth-rate",
            NoSession { .. } => "session",
            Csrf | CrossSite => "csrf",
            HeaderTooLarge { .. } | QueryTooLong { .. } => "head-limit",
            BadQuery(_) => "bad-query",
            RunName { .. } | RunTooLong { .. } => "run-name",
            NoSuchRun { .. } => "no-run",
            OtherPartysRun { .. } => "other-party",
            NoTree | Confine(_) => "confine",
            Name(_) => "name",
            BadRegistration(_) | BadJson(_) => "bad-body",
            BodyTooLarge { .. } | FieldTooLong { .. } | TextFieldTooLong { .. } | TooManyParts { .. } => "body-limit",
            Form(error) if error.is_limit() => "body-limit",
            BadForm(_) | Form(_) => "bad-form",
            BrokenOff(_) => "broken-off",
            BodyStalled { .. } => "body-stalled",
            BadDigestHeader(_) | Digest(_) => "digest",
            TooLarge { .. } => "too-large",
            File(_) => "inflates",
            Home(_) => "catalog",
            OverQuota { .. } | AtQuota { .. } | TooManyFiles { .. } => "quota",
            NoEndpoint => "no-endpoint",
            TunnelNotAllowed { .. } => "tunnel-off",
            TooManyTunnels { .. } => "tunnel-limit",
            NotWebSocket(_) => "not-websocket",
            TunnelUnavailable => "tunnel-ssh",
            FolderConflict(_) => "folder",
            Storage(_) => "storage",
            Admin(_) => "admin",
            Store(_) => "store",
            Internal(_) => "internal",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ApiError::*;
        match self {
            NoKey => f.write_str("send the party's API key in the X-Sync-API-Key header"),
            BadKey => f.write_str("the X-Sync-API-Key is not a valid key"),
            RevokedKey => f.write_str("this API key was revoked"),
            ExpiredKey => f.write_str("this API key has expired"),
            PartyDisabled { party } => write!(f, "party '{party}' is disabled on this host"),
            NoPolicy { party } => {
                write!(f, "party '{party}' has no usable policy on this host; tell the administrator")
            }
            NoAdminToken => f.write_str("send the admin token as: Authorization: Bearer TOKEN"),
            BadAdminToken => f.write_str("the admin token is not valid"),
            RevokedAdminToken => f.write_str("this admin token was revoked"),
            ExpiredAdminToken => f.write_str("this admin token has expired; issue another (evosync admin-token)"),
            RateLimited { retry_after } => write!(f, "too many requests; retry in {retry_after} s"),
            AuthRateLimited { retry_after } => write!(
                f,
                "too many failed key checks for this key or from this address; nothing was checked; retry in \
                 {retry_after} s"
            ),
            NoSession { why } => write!(f, "sign in to the dashboard ({why})"),
            Csrf => f.write_str(
                "the form does not carry this session's CSRF token; nothing was done (reload the page and try again)",
            ),
            CrossSite => f.write_str("the request came from another site; nothing was done"),
            HeaderTooLarge { header, limit } => {
                write!(f, "the {header} header is over the {} limit here", ByteSize(*limit as u64))
            }
            QueryTooLong { limit } => write!(f, "the query string is over the {} limit", ByteSize(*limit as u64)),
            BadQuery(message) => write!(f, "the query string was refused: {message}"),
            RunName { run, pattern } => write!(f, "'{run}' is not an allowed run name (pattern: {pattern})"),
            RunTooLong { len, max } => {
                write!(f, "a run folder name is at most {max} bytes; this one is {len} (shorten its label)")
            }
            NoSuchRun { run } | OtherPartysRun { run, registering: false } => write!(f, "there is no run '{run}'"),
            OtherPartysRun { run, registering: true } => write!(f, "run '{run}' belongs to another party"),
            NoTree => f.write_str("the party has no tree on this host; tell the administrator"),
            Confine(error) => error.fmt(f),
            Name(error) => error.fmt(f),
            BadRegistration(error) => write!(f, "the body is not the registration JSON: {error}"),
            BadJson(error) => write!(f, "the request body is not what this endpoint takes: {error}"),
            BodyTooLarge { limit } => write!(
                f,
                "the request body is over the {} limit of this endpoint; it was not read",
                ByteSize(*limit as u64)
            ),
            FieldTooLong { field, limit } => {
                write!(f, "{field} is over the {} limit for a registration field", ByteSize(*limit as u64))
            }
            Form(error) => write!(f, "the multipart form was refused: {error}; nothing more was read"),
            TextFieldTooLong { field, limit } => {
                write!(f, "form field '{field}' is over the {} limit for a text field", ByteSize(*limit as u64))
            }
            TooManyParts { limit, stored } => write!(
                f,
                "a request may carry at most {limit} file parts and {limit} text fields \
                 (uploads.max_parts_per_request); the {stored} files before the refused part were stored"
            ),
            BodyStalled { seconds } => write!(
                f,
                "the request body delivered nothing for {seconds} s (http.body_stall_seconds); nothing of it was \
                 stored"
            ),
            BadForm(message) | BadDigestHeader(message) | Digest(message) | Storage(message) | Internal(message) => {
                f.write_str(message)
            }
            BrokenOff(error) => write!(f, "the upload broke off: {error}"),
            TooLarge { name, limit } => write!(f, "'{name}' is over the {limit} limit per file; nothing was stored"),
            File(problem) => write!(f, "{problem}; nothing was stored"),
            Home(error) => error.fmt(f),
            OverQuota { party } => {
                write!(f, "party '{party}' would go over its quota (max_party_bytes); nothing was stored")
            }
            AtQuota { party, quota } => {
                write!(f, "party '{party}' is at its quota (max_party_bytes {quota}); free space first")
            }
            TooManyFiles { party, max } => write!(
                f,
                "party '{party}' has {max} files and folders, its limit (max_party_files); nothing was stored"
            ),
            NoEndpoint => f.write_str("no such endpoint"),
            TunnelNotAllowed { party } => write!(
                f,
                "party '{party}' may not use the SSH tunnel (its policy does not say tunnel: true); push over SSH, or \
                 ask the administrator"
            ),
            TooManyTunnels { party, max } => {
                write!(f, "party '{party}' has {max} SSH tunnels open, its limit (limits.max_tunnels); close one first")
            }
            NotWebSocket(reason) => {
                write!(f, "this endpoint takes a WebSocket upgrade (RFC 6455, binary frames): {reason}")
            }
            TunnelUnavailable => {
                f.write_str("the central host's SSH server does not answer the tunnel; tell the administrator")
            }
            FolderConflict(message) => f.write_str(message),
            Admin(error) => error.fmt(f),
            Store(error) => error.fmt(f),
        }
    }
}

/// What `log_refusals` reads off a response that carries an error.
#[derive(Clone)]
struct Refused {
    label: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.answer(serde_json::Map::new())
    }
}

impl ApiError {
    /// The error's answer, with `extra` fields in its JSON body (the listing's `"files": []`, say).
    pub fn answer(self, mut extra: serde_json::Map<String, serde_json::Value>) -> Response {
        let status = self.status();
        let message = self.to_string();
        extra.insert("error".into(), message.clone().into());
        extra.insert("status".into(), status.as_u16().into());
        let body = Json(serde_json::Value::Object(extra));
        let mut response = match self {
            ApiError::RateLimited { retry_after } | ApiError::AuthRateLimited { retry_after } => {
                (status, [(header::RETRY_AFTER, retry_after.to_string())], body).into_response()
            }
            _ => (status, body).into_response(),
        };
        response.extensions_mut().insert(Refused { label: self.label(), message });
        response
    }
}

/// Middleware: one log line and one count for every request that failed, written before the answer goes out.
pub async fn log_refusals(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let client = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0);
    let response = next.run(request).await;
    if let Some(refused) = response.extensions().get::<Refused>() {
        let status = response.status();
        let (event, metric) = if status.is_server_error() {
            ("error", "evosync_errors_total")
        } else {
            ("refuse", "evosync_refusals_total")
        };
        state.metrics.add(&format!("{metric}{{reason=\"{}\"}}", refused.label), 1);
        let line = Line::of(SERVE)
            .field("event", event)
            .field("reason", refused.label)
            .field("status", status.as_u16())
            .field("message", &refused.message)
            .field_opt("client", client);
        line.to_stderr();
        state.dashboard.feed.refused(refused.label, status.as_u16(), &refused.message, client);
    }
    response
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Store(error) => ApiError::Store(error),
            other => ApiError::Admin(other),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::Store(error)
    }
}

impl From<MultipartError> for ApiError {
    fn from(error: MultipartError) -> Self {
        ApiError::Form(error)
    }
}

impl From<crate::catalog::home::HomeError> for ApiError {
    fn from(error: crate::catalog::home::HomeError) -> Self {
        ApiError::Home(error)
    }
}

impl From<NameError> for ApiError {
    fn from(error: NameError) -> Self {
        ApiError::Name(error)
    }
}

impl From<FinishError> for ApiError {
    fn from(error: FinishError) -> Self {
        match error {
            FinishError::DigestMismatch { .. } => ApiError::Digest(error.to_string()),
            FinishError::Io(_) => ApiError::Storage(error.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        ApiError::Internal(format!("internal error: {error}"))
    }
}
