//! The slow hash behind every presented API key and admin token (argon2id, ~19 MiB and tens of milliseconds each),
//! kept affordable whoever calls:
//!
//! - each verdict, success and failure alike, is remembered for `VERDICT_WINDOW`, keyed by a SHA-256 over the kind,
//!   the key id, the stored hash and the presented secret (never the secret itself), so one (key, secret) costs at
//!   most one slow hash per window; the memory is bounded (`MAX_SUCCESSES`, `MAX_FAILURES`), and failures live
//!   apart from successes so that a flood of wrong secrets cannot push a valid caller's verdict out;
//! - before a hash that is not remembered, a failure is reserved in two token buckets, one per key id and one per
//!   client address (IPv6 by /64): an empty bucket answers 429 with no hash at all (a success gives the token
//!   back); the bucket tables are bounded too (`MAX_BUCKETS`) and refuse rather than grow;
//! - at most as many hashes run at once as there are cores, and never more than 4 (a semaphore before
//!   `spawn_blocking`), each in one of as many memory areas that are allocated once and reused
//!   (`secrets::verify_secret`): hashing holds at most 4 x 19 MiB, whichever blocking threads run it.
//!
//! A remembered success is checked first, before any limit, so a valid caller stays fast while its key id is under
//! attack.

use super::error::ApiError;
use crate::secrets;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a verdict is remembered.
pub const VERDICT_WINDOW: Duration = Duration::from_secs(600);
/// Remembered successes: one per (key, secret) in use; more keys than this re-hash now and then.
const MAX_SUCCESSES: usize = 8192;
/// Remembered failures: the oldest is forgotten first.
const MAX_FAILURES: usize = 16384;
/// Failures per key id: a burst of this many, then one per `KEY_REFILL`.
const KEY_BURST: f64 = 5.0;
const KEY_REFILL: Duration = Duration::from_secs(5);
/// Failures per client address: a burst of this many, then one per `ADDRESS_REFILL`.
const ADDRESS_BURST: f64 = 10.0;
const ADDRESS_REFILL: Duration = Duration::from_secs(1);
/// Slow hashes at once: as many as there are cores, and never more than this, since each keeps its 19 MiB memory
/// area for the next (4 areas: 76 MiB at most, whatever the host).
const MAX_CONCURRENT_HASHES: usize = 4;
/// Key ids and addresses with a bucket that is not full; past it, new ones are refused with 429.
const MAX_BUCKETS: usize = 65536;

/// What a secret is presented as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ApiKey,
    AdminToken,
}

pub struct Verifier {
    successes: Mutex<Verdicts>,
    failures: Mutex<Verdicts>,
    by_key: Mutex<Buckets<(Kind, String)>>,
    by_address: Mutex<Buckets<IpAddr>>,
    hashing: Semaphore,
    /// argon2's memory, one area per permit, reused: allocated once, never handed back to the allocator.
    memory: Mutex<Vec<Vec<argon2::Block>>>,
    /// Slow hashes run so far (for `/metrics` and the tests).
    hashes: AtomicU64,
}

impl Default for Verifier {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let hashing = cores.min(MAX_CONCURRENT_HASHES);
        Verifier {
            successes: Mutex::new(Verdicts::new(MAX_SUCCESSES)),
            failures: Mutex::new(Verdicts::new(MAX_FAILURES)),
            by_key: Mutex::new(Buckets::new(KEY_BURST, KEY_REFILL)),
            by_address: Mutex::new(Buckets::new(ADDRESS_BURST, ADDRESS_REFILL)),
            hashing: Semaphore::new(hashing),
            memory: Mutex::new(Vec::new()),
            hashes: AtomicU64::new(0),
        }
    }
}

/// What a presented secret is checked against.
pub struct Presented<'a> {
    pub kind: Kind,
    pub id: &'a str,
    pub secret: &'a str,
    /// The argon2id hash in the store.
    pub stored_hash: &'a str,
    /// The client's address, when the request came over TCP.
    pub client: Option<IpAddr>,
}

impl Verifier {
    /// True when the secret matches its stored hash. `Err(AuthRateLimited)` when it would need a slow hash that the
    /// failure limits do not allow now.
    pub async fn verify(&self, presented: Presented<'_>) -> Result<bool, ApiError> {
        let fingerprint = fingerprint(&presented);
        if let Some(verdict) = self.remembered(&fingerprint) {
            return Ok(verdict);
        }
        let key = (presented.kind, presented.id.to_owned());
        let address = presented.client.map(address_block);
        let reservation = self.reserve(&key, address)?;
        let _permit = self.hashing.acquire().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        // Another request with the same secret may have paid for it while this one waited.
        if let Some(verdict) = self.remembered(&fingerprint) {
            if verdict {
                self.give_back(reservation);
            }
            return Ok(verdict);
        }
        self.hashes.fetch_add(1, Ordering::Relaxed);
        let (secret, hash) = (presented.secret.to_owned(), presented.stored_hash.to_owned());
        // One of at most `cores` memory areas: the permit guarantees one is free.
        let mut memory = self.memory.lock().ok().and_then(|mut spare| spare.pop()).unwrap_or_default();
        let (verdict, memory) = tokio::task::spawn_blocking(move || {
            let verdict = secrets::verify_secret(&secret, &hash, &mut memory);
            (verdict, memory)
        })
        .await?;
        if let Ok(mut spare) = self.memory.lock() {
            spare.push(memory);
        }
        let verdicts = if verdict { &self.successes } else { &self.failures };
        if let Ok(mut verdicts) = verdicts.lock() {
            verdicts.insert(fingerprint, Instant::now());
        }
        if verdict {
            self.give_back(reservation);
        }
        Ok(verdict)
    }

    /// Slow hashes run since the service started.
    pub fn slow_hashes(&self) -> u64 {
        self.hashes.load(Ordering::Relaxed)
    }

    fn remembered(&self, fingerprint: &[u8; 32]) -> Option<bool> {
        let now = Instant::now();
        if self.successes.lock().ok()?.knows(fingerprint, now) {
            return Some(true);
        }
        if self.failures.lock().ok()?.knows(fingerprint, now) {
            return Some(false);
        }
        None
    }

    /// Takes one failure token from the key's bucket and the address's, or neither.
    fn reserve(&self, key: &(Kind, String), address: Option<IpAddr>) -> Result<Reservation, ApiError> {
        let now = Instant::now();
        let limited = |wait: Duration| ApiError::AuthRateLimited { retry_after: wait.as_secs().max(1) };
        let mut by_key = self.by_key.lock().map_err(|_| limited(KEY_REFILL))?;
        let mut by_address = self.by_address.lock().map_err(|_| limited(ADDRESS_REFILL))?;
        if let Some(address) = address {
            by_address.check(&address, now).map_err(limited)?;
        }
        by_key.check(key, now).map_err(limited)?;
        if let Some(address) = address {
            by_address.take(address, now);
        }
        by_key.take(key.clone(), now);
        Ok(Reservation { key: key.clone(), address })
    }

    fn give_back(&self, reservation: Reservation) {
        if let Ok(mut by_key) = self.by_key.lock() {
            by_key.give_back(&reservation.key);
        }
        if let (Some(address), Ok(mut by_address)) = (reservation.address, self.by_address.lock()) {
            by_address.give_back(&address);
        }
    }
}

/// The failure tokens one slow hash took.
struct Reservation {
    key: (Kind, String),
    address: Option<IpAddr>,
}

/// SHA-256 over everything the verdict depends on; the secret itself is never kept.
fn fingerprint(presented: &Presented<'_>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([presented.kind as u8]);
    for part in [presented.id, presented.stored_hash, presented.secret] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// The block an address is limited by: IPv4 alone, IPv6 by its /64 (one host usually holds a whole /64).
fn address_block(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Verdicts remembered for `VERDICT_WINDOW`, at most `capacity`, the oldest forgotten first.
struct Verdicts {
    at: HashMap<[u8; 32], Instant>,
    order: VecDeque<([u8; 32], Instant)>,
    capacity: usize,
}

impl Verdicts {
    fn new(capacity: usize) -> Verdicts {
        Verdicts { at: HashMap::new(), order: VecDeque::new(), capacity }
    }

    fn knows(&self, fingerprint: &[u8; 32], now: Instant) -> bool {
        self.at.get(fingerprint).is_some_and(|at| now.duration_since(*at) < VERDICT_WINDOW)
    }

    fn insert(&mut self, fingerprint: [u8; 32], now: Instant) {
        self.at.insert(fingerprint, now);
        self.order.push_back((fingerprint, now));
        // Forget what expired, and the oldest while over capacity. A fingerprint inserted again has a newer entry
        // in `order`; its older ones are skipped.
        while let Some((oldest, at)) = self.order.front().copied() {
            let current = self.at.get(&oldest) == Some(&at);
            let expired = now.duration_since(at) >= VERDICT_WINDOW;
            if current && !expired && self.at.len() <= self.capacity {
                break;
            }
            self.order.pop_front();
            if current {
                self.at.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }
}

/// Token buckets of failures, by key id or by address. A bucket that has refilled is forgotten, so the table holds
/// only those with recent failures.
struct Buckets<K> {
    tokens: HashMap<K, (f64, Instant)>,
    burst: f64,
    refill: Duration,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(burst: f64, refill: Duration) -> Buckets<K> {
        Buckets { tokens: HashMap::new(), burst, refill }
    }

    fn level(&self, key: &K, now: Instant) -> f64 {
        match self.tokens.get(key) {
            None => self.burst,
            Some((tokens, at)) => {
                (tokens + now.duration_since(*at).as_secs_f64() / self.refill.as_secs_f64()).min(self.burst)
            }
        }
    }

    /// `Err(wait)` when the bucket is empty, or when it is new and the table is full.
    fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let level = self.level(key, now);
        if level < 1.0 {
            return Err(self.refill.mul_f64(1.0 - level));
        }
        if !self.tokens.contains_key(key) && self.tokens.len() >= MAX_BUCKETS {
            let (burst, refill) = (self.burst, self.refill);
            self.tokens.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() / refill.as_secs_f64() < burst
            });
            if self.tokens.len() >= MAX_BUCKETS {
                return Err(self.refill);
            }
        }
        Ok(())
    }

    fn take(&mut self, key: K, now: Instant) {
        let level = self.level(&key, now);
        self.tokens.insert(key, (level - 1.0, now));
    }

    fn give_back(&mut self, key: &K) {
        let burst = self.burst;
        if let Some((tokens, _)) = self.tokens.get_mut(key) {
            *tokens = (*tokens + 1.0).min(burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_expire_and_stay_within_their_capacity() {
        let mut verdicts = Verdicts::new(3);
        let start = Instant::now();
        for n in 0..10u8 {
            verdicts.insert([n; 32], start);
        }
        assert_eq!(verdicts.len(), 3);
        assert!(verdicts.knows(&[9; 32], start) && !verdicts.knows(&[0; 32], start));
        verdicts.insert([9; 32], start + Duration::from_secs(1));
        assert!(!verdicts.knows(&[9; 32], start + VERDICT_WINDOW + Duration::from_secs(1)));
        verdicts.insert([20; 32], start + VERDICT_WINDOW + Duration::from_secs(2));
        assert_eq!(verdicts.len(), 1, "the expired ones went");
        assert!(verdicts.order.len() <= 2);
    }

    #[test]
    fn buckets_refuse_when_empty_and_refill() {
        let mut buckets: Buckets<&str> = Buckets::new(2.0, Duration::from_secs(5));
        let start = Instant::now();
        for _ in 0..2 {
            buckets.check(&"k", start).unwrap();
            buckets.take("k", start);
        }
        let wait = buckets.check(&"k", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(5));
        buckets.give_back(&"k");
        assert!(buckets.check(&"k", start).is_ok(), "a success gives its token back");
        buckets.take("k", start);
        assert!(buckets.check(&"k", start + Duration::from_secs(5)).is_ok(), "one token per refill");
        assert!(buckets.check(&"other", start).is_ok(), "each key has its own bucket");
    }

    #[test]
    fn addresses_are_limited_by_block() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(address_block(a), address_block(b));
        assert_eq!(address_block("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn one_slow_hash_per_secret_and_wrong_secrets_meet_the_limit_before_any_hash() {
        let verifier = Verifier::default();
        let hash = secrets::hash_secret("right");
        let client = Some("192.0.2.1".parse().unwrap());
        fn presented<'a>(secret: &'a str, stored_hash: &'a str, client: Option<IpAddr>) -> Presented<'a> {
            Presented { kind: Kind::ApiKey, id: "k1", secret, stored_hash, client }
        }
        assert!(verifier.verify(presented("right", &hash, client)).await.unwrap());
        let mut limited = 0;
        for n in 0..20 {
            let wrong = format!("wrong{n}");
            match verifier.verify(presented(&wrong, &hash, client)).await {
                Ok(verdict) => assert!(!verdict),
                Err(ApiError::AuthRateLimited { .. }) => limited += 1,
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(limited, 20 - KEY_BURST as usize, "the key's bucket holds {KEY_BURST} failures");
        assert_eq!(verifier.slow_hashes(), 1 + KEY_BURST as u64);
        // The valid caller is remembered, and answered before any limit, without a hash; so is a failure (no 429).
        assert!(verifier.verify(presented("right", &hash, client)).await.unwrap());
        assert!(!verifier.verify(presented("wrong0", &hash, client)).await.unwrap());
        assert_eq!(verifier.slow_hashes(), 1 + KEY_BURST as u64);
    }
}
