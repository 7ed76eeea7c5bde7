//! Who is calling: the workers' `X-Sync-API-Key` (a `Caller`, rate-limited per party) and the administrator's
//! Bearer token (an `AdminCaller`). Both are extractors, so a handler that serves either names it in its signature
//! and cannot forget to check it; the rate limit comes with the `Caller`.
//!
//! A key's state (revoked, expired, party disabled; an admin token's revoked or expired) is read from the store on
//! every request, so a revoke takes effect on the next one. The secret is checked by `verifier`: argon2 at most once
//! per (key, secret) in a window, failures limited per key id and per client address before any hash.
//!
//! Both extractors take only the request's head: a handler's body extractor runs after them, so a caller without a
//! valid key never has its body read by a handler (the connection then closes after the answer, with the bounded
//! lingering drain of `listen`, so that a client that writes its whole body first still reads the refusal).

use super::error::ApiError;
use super::state::Shared;
use super::verifier::{Kind, Presented, Verifier};
use crate::access::KeyState;
use crate::policy::Policy;
use crate::secrets::{self, ADMIN_TOKEN_PREFIX, API_KEY_PREFIX};
use crate::store::AdminToken;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub const API_KEY_HEADER: &str = "x-sync-api-key";

/// A key's last use is written at most this often.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The caller of a worker route, once its API key checked out and the party's rate allowed the request.
pub struct Caller {
    pub party: String,
    pub key_id: String,
    pub policy: Arc<Policy>,
}

/// The caller of an admin route, once its Bearer token checked out: the token's id, which every audit record of
/// its actions names (`http:admin:ID`, as the dashboard's name `dashboard:ID`).
pub struct AdminCaller {
    pub token_id: String,
}

impl AdminCaller {
    /// The actor the audit trail records for this caller.
    pub fn actor(&self) -> String {
        format!("http:admin:{}", self.token_id)
    }
}

/// The service's authentication state: the secret verifier, policies, rate buckets.
#[derive(Default)]
pub struct Auth {
    pub verifier: Verifier,
    policies: Mutex<HashMap<String, CachedPolicy>>,
    key_touched: Mutex<HashMap<String, Instant>>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// A policy with the modification time of the file it came from.
type CachedPolicy = (Option<SystemTime>, Arc<Policy>);

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl FromRequestParts<Shared> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Caller, ApiError> {
        let caller = authenticate(state, &parts.headers, client_address(parts)).await?;
        state.auth.admit(&caller.party, caller.policy.uploads.requests_per_second)?;
        Ok(caller)
    }
}

impl FromRequestParts<Shared> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<AdminCaller, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::NoAdminToken)?;
        let token = admin_token(state, presented, client_address(parts)).await?;
        Ok(AdminCaller { token_id: token.id })
    }
}

/// The admin token `presented` names, when its secret checks out and it may be used now. A malformed token or an
/// unknown id costs no hash; a known id meets the verifier's failure limits before any. The dashboard's sign-in
/// checks tokens through here too.
pub async fn admin_token(state: &Shared, presented: &str, client: Option<IpAddr>) -> Result<AdminToken, ApiError> {
    let (id, secret) = secrets::parse(ADMIN_TOKEN_PREFIX, presented).ok_or(ApiError::BadAdminToken)?;
    let token = state.pool.with(|store| store.admin_token(id))?.ok_or(ApiError::BadAdminToken)?;
    let presented = Presented { kind: Kind::AdminToken, id, secret, stored_hash: &token.secret_hash, client };
    if !state.auth.verifier.verify(presented).await? {
        return Err(ApiError::BadAdminToken);
    }
    admin_token_usable(&token)?;
    if state.auth.touch_due(&token.id) {
        state.records.admin_token_used(&token.id);
    }
    Ok(token)
}

/// `Ok` while the token is neither revoked nor expired.
pub fn admin_token_usable(token: &AdminToken) -> Result<(), ApiError> {
    match KeyState::of_admin_token(token, crate::time::now()) {
        KeyState::Active => Ok(()),
        KeyState::Revoked => Err(ApiError::RevokedAdminToken),
        KeyState::Expired => Err(ApiError::ExpiredAdminToken),
        KeyState::PartyDisabled => Err(ApiError::BadAdminToken),
    }
}

/// The client's address, when the request came over TCP (the listener puts it in the request's extensions).
pub fn client_address(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// The API key's party, when the key may be used now.
async fn authenticate(state: &Shared, headers: &HeaderMap, client: Option<IpAddr>) -> Result<Caller, ApiError> {
    let presented = headers.get(API_KEY_HEADER).ok_or(ApiError::NoKey)?;
    let presented = presented.to_str().map_err(|_| ApiError::BadKey)?;
    let (id, secret) = secrets::parse(API_KEY_PREFIX, presented.trim()).ok_or(ApiError::BadKey)?;
    let (key, party_enabled) = state.pool.with(|store| store.api_key(id))?.ok_or(ApiError::BadKey)?;
    let presented = Presented { kind: Kind::ApiKey, id, secret, stored_hash: &key.secret_hash, client };
    if !state.auth.verifier.verify(presented).await? {
        return Err(ApiError::BadKey);
    }
    match KeyState::of_api_key(&key, party_enabled, crate::time::now()) {
        KeyState::Active => {}
        KeyState::Revoked => return Err(ApiError::RevokedKey),
        KeyState::Expired => return Err(ApiError::ExpiredKey),
        KeyState::PartyDisabled => return Err(ApiError::PartyDisabled { party: key.party }),
    }
    if state.auth.touch_due(&key.id) {
        state.records.key_used(&key.id);
    }
    let policy = state.auth.policy(state, &key.party)?;
    Ok(Caller { party: key.party, key_id: key.id, policy })
}

impl Auth {
    /// True when the key's (or token's) last use is due to be written (at most once a minute per key).
    pub fn touch_due(&self, id: &str) -> bool {
        let Ok(mut touched) = self.key_touched.lock() else { return false };
        let now = Instant::now();
        let due = touched.get(id).is_none_or(|at| now.duration_since(*at) > TOUCH_EVERY);
        if due {
            touched.insert(id.to_owned(), now);
        }
        due
    }

    /// The party's policy, re-read when its file changes.
    pub fn policy(&self, state: &Shared, party: &str) -> Result<Arc<Policy>, ApiError> {
        let path = state.config.policy_path(party);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Ok(cache) = self.policies.lock() {
            if let Some((at, policy)) = cache.get(party) {
                if *at == modified && modified.is_some() {
                    return Ok(policy.clone());
                }
            }
        }
        let policy = Policy::load(&path, party).map_err(|error| {
            crate::log::Line::of(crate::log::SERVE)
                .field("event", "policy-error")
                .field("party", party)
                .field("error", error)
                .to_stderr();
            ApiError::NoPolicy { party: party.to_owned() }
        })?;
        let policy = Arc::new(policy);
        if let Ok(mut cache) = self.policies.lock() {
            cache.insert(party.to_owned(), (modified, policy.clone()));
        }
        Ok(policy)
    }

    /// A token bucket per party: `requests_per_second`, with as many in reserve.
    fn admit(&self, party: &str, per_second: u32) -> Result<(), ApiError> {
        let rate = f64::from(per_second);
        let mut buckets = self.buckets.lock().map_err(|_| ApiError::RateLimited { retry_after: 1 })?;
        let now = Instant::now();
        let bucket = match buckets.get_mut(party) {
            Some(bucket) => bucket,
            None => buckets.entry(party.to_owned()).or_insert(Bucket { tokens: rate, at: now }),
        };
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(ApiError::RateLimited { retry_after: ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64 })
        }
    }
}
