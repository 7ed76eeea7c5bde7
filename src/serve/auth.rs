//! Who is calling: the workers' `X-Sync-API-Key` (a `Caller`, rate-limited per party) and the administrator's
//! Bearer token (an `AdminCaller`). Both are extractors, so a handler that serves either names it in its signature
//! and cannot forget to check it; the rate limit comes with the `Caller`.
//!
//! A key's state (revoked, expired, party disabled) is read from the store on every request, so a revoke takes effect
//! on the next one; argon2 is paid once per (key, secret) and then a SHA-256 of the secret is compared.

use super::error::ApiError;
use super::state::Shared;
use crate::access::KeyState;
use crate::policy::Policy;
use crate::secrets::{self, ADMIN_TOKEN_PREFIX, API_KEY_PREFIX};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
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

/// The caller of an admin route, once its Bearer token checked out.
pub struct AdminCaller(());

/// The service's authentication state: verified secrets, policies, rate buckets.
#[derive(Default)]
pub struct Auth {
    pub api_keys: VerifiedCache,
    pub admin_tokens: VerifiedCache,
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
        let caller = authenticate(state, &parts.headers).await?;
        state.auth.admit(&caller.party, caller.policy.uploads.requests_per_second)?;
        Ok(caller)
    }
}

impl FromRequestParts<Shared> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<AdminCaller, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(ApiError::NoAdminToken)?;
        let (id, secret) = secrets::parse(ADMIN_TOKEN_PREFIX, token).ok_or(ApiError::BadAdminToken)?;
        let hash = state.pool.with(|store| store.admin_token_hash(id))?.ok_or(ApiError::BadAdminToken)?;
        if !verify(&state.auth.admin_tokens, id, secret, hash).await? {
            return Err(ApiError::BadAdminToken);
        }
        Ok(AdminCaller(()))
    }
}

/// The API key's party, when the key may be used now.
async fn authenticate(state: &Shared, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers.get(API_KEY_HEADER).ok_or(ApiError::NoKey)?;
    let presented = presented.to_str().map_err(|_| ApiError::BadKey)?;
    let (id, secret) = secrets::parse(API_KEY_PREFIX, presented.trim()).ok_or(ApiError::BadKey)?;
    let (key, party_enabled) = state.pool.with(|store| store.api_key(id))?.ok_or(ApiError::BadKey)?;
    if !verify(&state.auth.api_keys, id, secret, key.secret_hash.clone()).await? {
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

/// Checks a secret against its argon2id hash; the slow hash runs on a blocking thread, once per (id, secret).
async fn verify(cache: &VerifiedCache, id: &str, secret: &str, hash: String) -> Result<bool, ApiError> {
    let digest = VerifiedCache::digest(secret);
    if cache.knows(id, &digest) {
        return Ok(true);
    }
    let secret = secret.to_owned();
    let ok = tokio::task::spawn_blocking(move || secrets::verify_secret(&secret, &hash)).await?;
    if ok {
        cache.remember(id, digest);
    }
    Ok(ok)
}

impl Auth {
    /// True when the key's last use is due to be written (at most once a minute per key).
    fn touch_due(&self, id: &str) -> bool {
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

/// Remembers which (id, secret) pairs argon2 has accepted, by a SHA-256 of the secret (never the secret).
#[derive(Default)]
pub struct VerifiedCache {
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl VerifiedCache {
    fn digest(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }

    fn knows(&self, id: &str, digest: &[u8; 32]) -> bool {
        self.verified.lock().map(|cache| cache.get(id) == Some(digest)).unwrap_or(false)
    }

    fn remember(&self, id: &str, digest: [u8; 32]) {
        if let Ok(mut cache) = self.verified.lock() {
            cache.insert(id.to_owned(), digest);
        }
    }

    /// Forgets a key (on revoke): its next use pays argon2 again.
    pub fn forget(&self, id: &str) {
        if let Ok(mut cache) = self.verified.lock() {
            cache.remove(id);
        }
    }
}
