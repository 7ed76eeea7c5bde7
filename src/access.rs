//! The rules both front doors apply the same way, the gate over SSH and the service over HTTP, written once:
//! whether a key may be used now, whose a run is, and how many bytes a party may still store.
//!
//! Each door turns the answers into its own refusals (`gate::refusal`, `serve::error`), with its own words and status.

use crate::policy::Limits;
use crate::store::{AdminToken, ApiKey, SshKey, Store, StoreError};

/// Whether a key (SSH or API) may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked,
    Expired,
    /// The key is fine; its party is disabled, which stops every key of it at once.
    PartyDisabled,
}

impl KeyState {
    /// Revocation first, then expiry, then the party: the most specific reason wins.
    pub fn of(revoked_at: Option<i64>, expires_at: Option<i64>, party_enabled: bool, now: i64) -> KeyState {
        if revoked_at.is_some() {
            KeyState::Revoked
        } else if expires_at.is_some_and(|at| at <= now) {
            KeyState::Expired
        } else if !party_enabled {
            KeyState::PartyDisabled
        } else {
            KeyState::Active
        }
    }

    pub fn of_ssh_key(key: &SshKey, party_enabled: bool, now: i64) -> KeyState {
        KeyState::of(key.revoked_at, key.expires_at, party_enabled, now)
    }

    pub fn of_api_key(key: &ApiKey, party_enabled: bool, now: i64) -> KeyState {
        KeyState::of(key.revoked_at, key.expires_at, party_enabled, now)
    }

    /// An admin token belongs to no party: revoked, expired or active.
    pub fn of_admin_token(token: &AdminToken, now: i64) -> KeyState {
        KeyState::of(token.revoked_at, token.expires_at, true, now)
    }

    pub fn is_active(self) -> bool {
        self == KeyState::Active
    }

    /// As listings show it.
    pub fn label(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
            KeyState::PartyDisabled => "party disabled",
        }
    }
}

/// The SSH keys that may log in now, in the order the managed authorized_keys block lists them.
pub fn active_ssh_keys(store: &Store, now: i64) -> Result<Vec<SshKey>, StoreError> {
    Ok(store
        .ssh_keys_with_party()?
        .into_iter()
        .filter(|(key, party_enabled)| KeyState::of_ssh_key(key, *party_enabled, now).is_active())
        .map(|(key, _)| key)
        .collect())
}

/// Whose a run is, as seen by the party asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOwner {
    /// Nobody has claimed it yet.
    Nobody,
    /// The asking party.
    Asker,
    /// Another party: the asker must not learn more than that it cannot have it.
    Another,
}

/// A run is one party's, across all parties.
pub fn run_owner(store: &Store, party: &str, run: &str) -> Result<RunOwner, StoreError> {
    Ok(match store.run(run)? {
        None => RunOwner::Nobody,
        Some(found) if found.party == party => RunOwner::Asker,
        Some(_) => RunOwner::Another,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("run '{0}' belongs to another party")]
    Owned(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Claims `run` for `party` once its folder exists (a party that races another for a name loses cleanly).
pub fn claim_run(store: &Store, party: &str, run: &str) -> Result<(), ClaimError> {
    match store.claim_run(party, run) {
        Ok(_) => Ok(()),
        Err(StoreError::RunOwned { run, .. }) => Err(ClaimError::Owned(run)),
        Err(error) => Err(error.into()),
    }
}

/// How much a party may still store (replicas and analysis files count alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headroom {
    /// The policy sets no `max_party_bytes`.
    Unlimited,
    Left(u64),
    /// At or over the quota.
    Full {
        used: u64,
        max: u64,
    },
}

impl Headroom {
    /// The headroom under `limits` for a party that stores `used` bytes; `used` is only asked for when there is a
    /// quota, since measuring a tree costs a walk.
    pub fn of<E>(limits: &Limits, used: impl FnOnce() -> Result<u64, E>) -> Result<Headroom, E> {
        let Some(max) = limits.max_party_bytes else { return Ok(Headroom::Unlimited) };
        let used = used()?;
        Ok(if used >= max.0 { Headroom::Full { used, max: max.0 } } else { Headroom::Left(max.0 - used) })
    }

    /// Bytes that may still be added; `None` without a quota.
    pub fn left(self) -> Option<u64> {
        match self {
            Headroom::Unlimited => None,
            Headroom::Left(left) => Some(left),
            Headroom::Full { .. } => Some(0),
        }
    }

    /// The size a replica that holds `current_bytes` now may grow to: `max_db_bytes`, or less where the party has
    /// less left.
    pub fn replica_size_limit(self, limits: &Limits, current_bytes: u64) -> u64 {
        match self.left() {
            None => limits.max_db_bytes.0,
            Some(left) => limits.max_db_bytes.0.min(left.saturating_add(current_bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::ByteSize;

    #[test]
    fn the_most_specific_reason_wins() {
        assert_eq!(KeyState::of(Some(1), Some(1), false, 10), KeyState::Revoked);
        assert_eq!(KeyState::of(None, Some(10), false, 10), KeyState::Expired);
        assert_eq!(KeyState::of(None, Some(11), false, 10), KeyState::PartyDisabled);
        assert_eq!(KeyState::of(None, None, true, 10), KeyState::Active);
        assert_eq!(KeyState::of(None, None, true, 10).label(), "active");
    }

    #[test]
    fn headroom_and_the_replica_limit() {
        let limits = Limits { max_db_bytes: ByteSize(100), max_party_bytes: Some(ByteSize(1000)), ..Limits::default() };
        let asked = std::cell::Cell::new(false);
        let unlimited = Limits::default();
        let none = Headroom::of(&unlimited, || -> Result<u64, ()> {
            asked.set(true);
            Ok(5)
        });
        assert_eq!(none, Ok(Headroom::Unlimited));
        assert!(!asked.get(), "no quota, no walk");
        assert_eq!(Headroom::of(&limits, || Ok::<_, ()>(1000)), Ok(Headroom::Full { used: 1000, max: 1000 }));
        let left = Headroom::of(&limits, || Ok::<_, ()>(950)).unwrap();
        assert_eq!(left, Headroom::Left(50));
        assert_eq!(left.replica_size_limit(&limits, 30), 80);
        assert_eq!(Headroom::Left(5000).replica_size_limit(&limits, 30), 100);
        assert_eq!(Headroom::Unlimited.replica_size_limit(&limits, 30), 100);
    }
}
