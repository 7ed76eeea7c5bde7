//! What the dashboard changes: signing in and out, and the administrator's actions (disable or enable a party,
//! revoke an SSH or API key, issue an API key, re-verify a run). Each action arrives as an `Action` (an open session,
//! the same origin, the session's CSRF token) and is carried out by the same `admin::Admin` operation the command line
//! and the admin API use, audited there with the actor `dashboard:ADMIN_TOKEN_ID`. Then the browser is sent back to
//! the page it came from, which shows what was done once (Post/Redirect/Get), except for an issued API key, whose page
//! is the only place it is ever shown.

use super::pages::{page, Frame, PageError, SIGN_IN_PATH};
use super::session::{
    set_cookie, sign_in_nonce, Action, NoFields, SignInForm, SignedIn, SESSION_COOKIE, SESSION_LIFETIME, SIGN_IN_COOKIE,
};
use crate::admin::{Admin, AdminError};
use crate::names::{is_party_name, is_plain_segment, MAX_SEGMENT_BYTES};
use crate::serve::auth;
use crate::serve::error::ApiError;
use crate::serve::state::{blocking, Shared};
use askama::Template;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

type Answer = Result<Response, PageError>;

/// How long the sign-in form's double-submit cookie lives: time enough to paste a token.
const SIGN_IN_FORM_SECONDS: i64 = 600;
/// The longest name an API key may be given here.
const MAX_KEY_NAME: usize = 64;

// ---- signing in and out ----

#[derive(Template)]
#[template(path = "sign_in.html", config = "src/serve/dashboard/askama.toml")]
struct SignInPage {
    csrf: String,
    error: Option<String>,
}

/// The sign-in form, with a fresh double-submit token (in a cookie and in the form).
fn sign_in_form(status: StatusCode, error: Option<String>, secure: bool) -> Answer {
    let nonce = sign_in_nonce();
    let mut response = page(status, &SignInPage { csrf: nonce.clone(), error })?;
    let cookie = set_cookie(SIGN_IN_COOKIE, &nonce, SIGN_IN_FORM_SECONDS, secure);
    response.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(response)
}

pub async fn sign_in_page(State(state): State<Shared>) -> Answer {
    sign_in_form(StatusCode::OK, None, super::session::over_tls(&state))
}

/// Checks the admin token (argon2 at most once per token and secret in the verifier's window, failures limited per
/// token id and per address before any hash) and opens a session.
pub async fn sign_in(State(state): State<Shared>, form: SignInForm) -> Answer {
    let token = match auth::admin_token(&state, &form.token, form.client).await {
        Ok(token) => token,
        Err(error) => {
            // The page is the form again, saying why; the error's own answer lends it what the refusal middleware
            // logs and counts, and its Retry-After.
            let (status, message) = (error.status(), error.to_string());
            let refused = error.into_response();
            let mut response = sign_in_form(status, Some(message), form.secure)?;
            if let Some(retry_after) = refused.headers().get(header::RETRY_AFTER) {
                response.headers_mut().insert(header::RETRY_AFTER, retry_after.clone());
            }
            *response.extensions_mut() = refused.into_parts().0.extensions;
            return Ok(response);
        }
    };
    if let Some(previous) = &form.previous {
        state.dashboard.sessions.close(previous);
    }
    let id = state.dashboard.sessions.open(&token, crate::time::now());
    let mut response = Redirect::to("/dashboard/").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, SESSION_LIFETIME, form.secure));
    headers.append(header::SET_COOKIE, set_cookie(SIGN_IN_COOKIE, "", 0, form.secure));
    Ok(response)
}

pub async fn sign_out(State(state): State<Shared>, action: Action<NoFields>) -> Answer {
    state.dashboard.sessions.close(&action.session);
    let mut response = Redirect::to(SIGN_IN_PATH).into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0, action.secure));
    Ok(response)
}

// ---- actions ----

/// Runs `work` as this session's administrator on a blocking thread.
async fn act<T: Send + 'static>(
    state: &Shared,
    session: &SignedIn,
    work: impl FnOnce(&Admin<'_>) -> Result<T, AdminError> + Send + 'static,
) -> Result<T, ApiError> {
    let actor = format!("dashboard:{}", session.token_id);
    blocking(state, move |state, store| {
        let admin = Admin::borrowing(&state.config, state.config_path.clone(), store, actor);
        Ok(work(&admin)?)
    })
    .await
}

/// Back to `to`, with `message` shown there once.
fn done(state: &Shared, session: &SignedIn, message: String, to: &str) -> Answer {
    state.dashboard.sessions.set_flash(session, message);
    Ok(Redirect::to(to).into_response())
}

fn party_name(name: &str) -> Result<(), ApiError> {
    if is_party_name(name) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("there is no party '{}'", super::pages::clip(name, 40))).into())
    }
}

/// Key ids are the store's: hex, short.
fn key_id(id: &str) -> Result<(), ApiError> {
    if (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("there is no key '{}'", super::pages::clip(id, 40))).into())
    }
}

fn party_anchor(party: &str) -> String {
    format!("/dashboard/parties#party-{party}")
}

pub async fn disable_party(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    action: Action<NoFields>,
) -> Answer {
    set_party_enabled(state, name, action, false).await
}

pub async fn enable_party(
    State(state): State<Shared>,
    UrlPath(name): UrlPath<String>,
    action: Action<NoFields>,
) -> Answer {
    set_party_enabled(state, name, action, true).await
}

async fn set_party_enabled(state: Shared, name: String, action: Action<NoFields>, enabled: bool) -> Answer {
    party_name(&name)?;
    let party = act(&state, &action.session, move |admin| admin.set_party_enabled(&name, enabled)).await?;
    let message = if enabled {
        format!("Party {} is enabled: its active keys work again.", party.name)
    } else {
        format!("Party {} is disabled: none of its keys works any more.", party.name)
    };
    done(&state, &action.session, message, &party_anchor(&party.name))
}

pub async fn revoke_ssh_key(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    action: Action<NoFields>,
) -> Answer {
    key_id(&id)?;
    let key = act(&state, &action.session, move |admin| admin.revoke_ssh_key(&id)).await?;
    let message = format!("SSH key {} of party {} is revoked: its next login is refused.", key.fingerprint, key.party);
    done(&state, &action.session, message, &party_anchor(&key.party))
}

pub async fn revoke_api_key(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    action: Action<NoFields>,
) -> Answer {
    key_id(&id)?;
    let key = act(&state, &action.session, move |admin| admin.revoke_api_key(&id)).await?;
    let message = format!("API key {} of party {} is revoked: its next request is refused.", key.id, key.party);
    done(&state, &action.session, message, &party_anchor(&key.party))
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct NewApiKey {
    name: String,
    expires: String,
}

#[derive(Template)]
#[template(path = "issued.html", config = "src/serve/dashboard/askama.toml")]
struct IssuedPage {
    frame: Frame,
    party: String,
    id: String,
    name: String,
    expires: String,
    api_key: String,
}

pub async fn issue_api_key(
    State(state): State<Shared>,
    UrlPath(party): UrlPath<String>,
    action: Action<NewApiKey>,
) -> Answer {
    party_name(&party)?;
    let NewApiKey { name, expires } = action.form;
    let name = name.trim().to_owned();
    if name.chars().count() > MAX_KEY_NAME || name.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!("a key's name is at most {MAX_KEY_NAME} printable characters")).into());
    }
    let expires = expires.trim().to_owned();
    if expires.len() > 40 {
        return Err(AdminError::Invalid("write the expiry as 2027-01-31".into()).into());
    }
    let issued = act(&state, &action.session, move |admin| {
        let name = (!name.is_empty()).then_some(name.as_str());
        let expires = (!expires.is_empty()).then_some(expires.as_str());
        admin.issue_api_key(&party, name, expires)
    })
    .await?;
    let frame = Frame::new(&state, &action.session, "parties");
    let issued_page = IssuedPage {
        frame,
        expires: issued.key.expires_at.map(super::pages::when).unwrap_or_else(|| "never".into()),
        party: issued.key.party,
        id: issued.key.id,
        name: issued.key.name,
        api_key: issued.api_key,
    };
    page(StatusCode::CREATED, &issued_page)
}

/// Verifies a run's replicas again now (the catalog's check, each under its replica's lock), and publishes or
/// withdraws the run by the verdicts: `serve::catalog::reverify`, as the admin API's `/admin/runs/{run}/verify`.
pub async fn reverify(State(state): State<Shared>, UrlPath(run): UrlPath<String>, action: Action<NoFields>) -> Answer {
    if run.len() > MAX_SEGMENT_BYTES || !is_plain_segment(&run) {
        return Err(ApiError::NoSuchRun { run: super::pages::clip(&run, 64) }.into());
    }
    let actor = format!("dashboard:{}", action.session.token_id);
    let (_, verdicts) = crate::serve::catalog::reverify(&state, actor, &run).await?;
    let published = crate::catalog::is_published(&state.config, &run);
    let message = if verdicts.is_empty() {
        format!("Run {run} has no replica to verify yet.")
    } else {
        let each: Vec<String> = verdicts
            .iter()
            .map(|(database, verdict)| match (verdict.ok, &verdict.reason) {
                (true, _) => format!("{database} passed"),
                (false, reason) => format!("{database} failed: {}", reason.clone().unwrap_or_default()),
            })
            .collect();
        let catalog = if published { "it is published" } else { "it is not published" };
        format!("Run {run} was verified again: {}; {catalog}.", each.join("; "))
    };
    done(&state, &action.session, message, &format!("/dashboard/runs/{run}"))
}
