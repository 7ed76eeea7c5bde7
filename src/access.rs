//! The rules both front doors apply the same way, the gate over SSH and the service over HTTP, written once:
//! whether a key may be used now, whose a run is, and how many bytes a party may still store.
//!
//! Each door turns the answers into its own refusals (`gate::refusal`, `serve::error`), with its own words and status.

use crate::policy::Limits;
use crate::store::{AdminToken, ApiKey, SshKey, Store, StoreError};

/// Whether a key (SSH or API) may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// A party's footprint: bytes of regular files, and entries (files and folders).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// A change to a party's usage that may shrink it (a push that made a replica smaller, copies removed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub bytes: i64,
    pub files: i64,
}

impl Change {
    /// From `before` to `after`.
    pub fn between(before: Usage, after: Usage) -> Change {
        Change { bytes: after.bytes as i64 - before.bytes as i64, files: after.files as i64 - before.files as i64 }
    }

    fn apply(self, usage: Usage) -> Usage {
        Usage {
            bytes: usage.bytes.saturating_add_signed(self.bytes),
            files: usage.files.saturating_add_signed(self.files),
        }
    }

    fn plus(self, other: Change) -> Change {
        Change { bytes: self.bytes.saturating_add(other.bytes), files: self.files.saturating_add(other.files) }
    }
}

/// What a party stores, by the one rule both doors and the catalog count it: its tree (replicas, and anything else
/// pushed there) plus the home of each of its runs (`catalog::home`: the verified copies readers get, and the
/// analysis files it uploaded). Walks both; the service does it off the request path (`UsageBook`).
pub fn measure(
    tree: &crate::fs::confine::PartyTree,
    homes: Option<&crate::catalog::home::Homes>,
    runs: &[String],
) -> Result<Usage, String> {
    let mut usage = tree.usage().map_err(|e| e.to_string())?;
    let Some(homes) = homes else { return Ok(usage) };
    for run in runs {
        if let Some(home) = homes.find(run).map_err(|e| e.to_string())? {
            let held = homes.usage(&home).map_err(|e| e.to_string())?;
            usage =
                Usage { bytes: usage.bytes.saturating_add(held.bytes), files: usage.files.saturating_add(held.files) };
        }
    }
    Ok(usage)
}

/// Why there is no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "limit", rename_all = "snake_case")]
pub enum OverQuota {
    /// `max_party_bytes`: `used` counts what is stored and what is reserved.
    Bytes { used: u64, max: u64 },
    /// `max_party_files`.
    Files { used: u64, max: u64 },
}

/// How much a party may still add: its limits, less what it stores, less what is reserved for uploads and pushes in
/// flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headroom {
    /// `None` when the policy sets no `max_party_bytes`.
    pub bytes: Option<u64>,
    pub files: u64,
    /// Stored plus reserved, and the limits, for the messages.
    taken: Usage,
    max_bytes: Option<u64>,
    max_files: u64,
}

impl Headroom {
    pub fn of(limits: &Limits, used: Usage, reserved: Usage) -> Headroom {
        let taken = Usage {
            bytes: used.bytes.saturating_add(reserved.bytes),
            files: used.files.saturating_add(reserved.files),
        };
        let max_bytes = limits.max_party_bytes.map(|max| max.0);
        Headroom {
            bytes: max_bytes.map(|max| max.saturating_sub(taken.bytes)),
            files: limits.max_party_files.saturating_sub(taken.files),
            taken,
            max_bytes,
            max_files: limits.max_party_files,
        }
    }

    /// What the party stores plus what its writers in flight have reserved (the dashboard's quota bars).
    pub fn taken(&self) -> Usage {
        self.taken
    }

    /// Whether `room` fits whole.
    pub fn fits(&self, room: Usage) -> Result<(), OverQuota> {
        if room.files > self.files {
            return Err(OverQuota::Files { used: self.taken.files, max: self.max_files });
        }
        match (self.bytes, self.max_bytes) {
            (Some(left), Some(max)) if room.bytes > left => Err(OverQuota::Bytes { used: self.taken.bytes, max }),
            _ => Ok(()),
        }
    }

    /// Room for a push of a replica that holds `current_bytes` now, whose verified copy holds `copy_bytes`, and that
    /// adds `new_files` entries. The copy follows the replica once the push passes, so the replica may grow only as
    /// far as the party has room for both: RLIMIT_FSIZE is `(left + current + copy) / 2`, up to `max_db_bytes`.
    /// Refused when nothing is left. Returns (RLIMIT_FSIZE, bytes to reserve: the replica's and its copy's growth).
    pub fn for_push(
        &self,
        limits: &Limits,
        current_bytes: u64,
        copy_bytes: u64,
        new_files: u64,
    ) -> Result<(u64, u64), OverQuota> {
        self.fits(Usage { bytes: 0, files: new_files })?;
        let max_db = limits.max_db_bytes.0;
        match (self.bytes, self.max_bytes) {
            (Some(0), Some(max)) => Err(OverQuota::Bytes { used: self.taken.bytes, max }),
            (Some(left), _) => {
                let both = left.saturating_add(current_bytes).saturating_add(copy_bytes) / 2;
                let fsize_limit = max_db.min(both).max(1);
                let growth = (fsize_limit.saturating_sub(current_bytes))
                    .saturating_add(fsize_limit.saturating_sub(copy_bytes))
                    .min(left);
                Ok((fsize_limit, growth))
            }
            (None, _) => Ok((max_db, max_db.saturating_sub(current_bytes))),
        }
    }
}

/// The book of every party's usage in a long-lived process (`evosync serve`): the figure (measured, or remembered from
/// the store, plus every change since), and what uploads and pushes in flight have reserved. A reservation is granted
/// only against the headroom left after every other one, so concurrent writers together never pass a party's
/// limits.
///
/// Nothing here walks a tree: the operations that change a party's files report what they changed (`settle`,
/// `change`), and a walk (`start_walk`, at most one per party at a time) runs off the request path, its result
/// joined with the changes made while it ran. A request never waits for a walk.
#[derive(Default)]
pub struct UsageBook {
    parties: std::sync::Mutex<std::collections::HashMap<String, Book>>,
}

#[derive(Default)]
struct Book {
    /// `None` until measured or remembered.
    used: Option<Usage>,
    /// When it was last measured.
    measured_at: Option<std::time::Instant>,
    /// A walk is in flight: the changes made since it started, to add to what it finds.
    walking: Option<Change>,
    reserved: Usage,
}

/// A reservation to hand back with `UsageBook::settle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub party: String,
    pub room: Usage,
}

impl Reserved {
    /// Nothing reserved yet.
    pub fn none(party: &str) -> Reserved {
        Reserved { party: party.to_owned(), room: Usage::default() }
    }

    /// Takes another reservation of the same party into this one, to be handed back together.
    pub fn absorb(&mut self, other: Reserved) {
        debug_assert_eq!(self.party, other.party);
        self.room = add(self.room, other.room);
    }
}

/// The right to measure a party: held by the one walk in flight, given back when dropped.
pub struct Walk<'a> {
    book: &'a UsageBook,
    pub party: String,
    finished: bool,
}

impl Walk<'_> {
    /// Takes what the walk found (with every change made while it ran) as the party's figure; returns it.
    pub fn finish(mut self, measured: Usage) -> Usage {
        self.finished = true;
        self.book.with_book(&self.party, |book| {
            let since = book.walking.take().unwrap_or_default();
            let used = since.apply(measured);
            book.used = Some(used);
            book.measured_at = Some(std::time::Instant::now());
            used
        })
    }
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.book.with_book(&self.party, |book| book.walking = None);
        }
    }
}

impl UsageBook {
    /// Takes a remembered figure for a party that has none yet (the store's, at start).
    pub fn remember(&self, party: &str, usage: Usage) {
        self.with_book(party, |book| {
            if book.used.is_none() {
                book.used = Some(usage);
            }
        });
    }

    /// Reserves `room` whole for `party` (an upload).
    pub fn reserve(&self, party: &str, limits: &Limits, room: Usage) -> Result<Reserved, OverQuota> {
        self.with_book(party, |book| {
            Headroom::of(limits, book.figure(), book.reserved).fits(room)?;
            book.reserved = add(book.reserved, room);
            Ok(Reserved { party: party.to_owned(), room })
        })
    }

    /// Reserves for a push (`Headroom::for_push`). Returns the child's RLIMIT_FSIZE with the reservation.
    pub fn reserve_push(
        &self,
        party: &str,
        limits: &Limits,
        current_bytes: u64,
        copy_bytes: u64,
        new_files: u64,
    ) -> Result<(u64, Reserved), OverQuota> {
        self.with_book(party, |book| {
            let headroom = Headroom::of(limits, book.figure(), book.reserved);
            let (fsize_limit, bytes) = headroom.for_push(limits, current_bytes, copy_bytes, new_files)?;
            let room = Usage { bytes, files: new_files };
            book.reserved = add(book.reserved, room);
            Ok((fsize_limit, Reserved { party: party.to_owned(), room }))
        })
    }

    /// The party's headroom now.
    pub fn headroom(&self, party: &str, limits: &Limits) -> Headroom {
        self.with_book(party, |book| Headroom::of(limits, book.figure(), book.reserved))
    }

    /// Hands a reservation back, with what its writer actually changed: `added` stored, `removed` replaced.
    pub fn settle(&self, reserved: &Reserved, added: Usage, removed: Usage) {
        self.with_book(&reserved.party, |book| {
            book.reserved = sub(book.reserved, reserved.room);
        });
        let change = Change::between(removed, added);
        if change != Change::default() {
            self.change(&reserved.party, change);
        }
    }

    /// Records what an operation changed in a party's files (a push, a copy, a withdrawal).
    pub fn change(&self, party: &str, change: Change) {
        self.with_book(party, |book| {
            if let Some(used) = &mut book.used {
                *used = change.apply(*used);
            }
            if let Some(since) = &mut book.walking {
                *since = since.plus(change);
            }
        });
    }

    /// The right to walk `party`'s files, unless a walk of them is in flight already (single flight).
    pub fn start_walk(&self, party: &str) -> Option<Walk<'_>> {
        let started = self.with_book(party, |book| {
            if book.walking.is_some() {
                return false;
            }
            book.walking = Some(Change::default());
            true
        });
        started.then(|| Walk { book: self, party: party.to_owned(), finished: false })
    }

    /// Whether `party` was never measured, or not within `age`.
    pub fn needs_walk(&self, party: &str, age: std::time::Duration) -> bool {
        self.with_book(party, |book| book.measured_at.is_none_or(|at| at.elapsed() >= age))
    }

    /// The figure, when there is one.
    pub fn figure(&self, party: &str) -> Option<Usage> {
        self.with_book(party, |book| book.used)
    }

    fn with_book<T>(&self, party: &str, f: impl FnOnce(&mut Book) -> T) -> T {
        let mut parties = self.parties.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match parties.get_mut(party) {
            Some(book) => f(book),
            None => f(parties.entry(party.to_owned()).or_default()),
        }
    }
}

impl Book {
    /// Without a figure yet (a party the service has neither measured nor remembered: a new one) its tree is taken as
    /// empty until the first walk, which `evosync serve` starts for every party when it starts.
    fn figure(&self) -> Usage {
        self.used.unwrap_or_default()
    }
}

fn add(a: Usage, b: Usage) -> Usage {
    Usage { bytes: a.bytes.saturating_add(b.bytes), files: a.files.saturating_add(b.files) }
}

fn sub(a: Usage, b: Usage) -> Usage {
    Usage { bytes: a.bytes.saturating_sub(b.bytes), files: a.files.saturating_sub(b.files) }
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
        let limits = Limits {
            max_db_bytes: ByteSize(100),
            max_party_bytes: Some(ByteSize(1000)),
            max_party_files: 10,
            ..Limits::default()
        };
        let used = Usage { bytes: 950, files: 4 };
        let headroom = Headroom::of(&limits, used, Usage::default());
        assert_eq!((headroom.bytes, headroom.files), (Some(50), 6));
        // 50 left, a replica of 30 with its copy of 30: each may grow to 55, capped by max_db_bytes... here to 55.
        assert_eq!(headroom.for_push(&limits, 30, 30, 1), Ok((55, 50)));
        // No copy yet: the replica and its first copy share what is left.
        let empty = Headroom::of(&limits, Usage::default(), Usage::default());
        assert_eq!(empty.for_push(&limits, 0, 0, 1), Ok((100, 200)));
        assert_eq!(headroom.fits(Usage { bytes: 51, files: 0 }), Err(OverQuota::Bytes { used: 950, max: 1000 }));
        assert_eq!(headroom.fits(Usage { bytes: 0, files: 7 }), Err(OverQuota::Files { used: 4, max: 10 }));
        let full = Headroom::of(&limits, Usage { bytes: 1000, files: 0 }, Usage::default());
        assert_eq!(full.for_push(&limits, 30, 30, 0), Err(OverQuota::Bytes { used: 1000, max: 1000 }));
        let unlimited = Limits { max_party_bytes: None, ..limits.clone() };
        assert_eq!(Headroom::of(&unlimited, used, Usage::default()).for_push(&unlimited, 30, 30, 0), Ok((100, 70)));
    }

    #[test]
    fn reservations_never_pass_the_quota_together() {
        let limits = Limits { max_party_bytes: Some(ByteSize(1_000_000)), ..Limits::default() };
        let book = UsageBook::default();
        book.remember("acme", Usage::default());
        let upload = Usage { bytes: 600_000, files: 1 };
        let first = book.reserve("acme", &limits, upload).unwrap();
        assert!(matches!(book.reserve("acme", &limits, upload), Err(OverQuota::Bytes { .. })));
        assert!(book.reserve("beta", &limits, upload).is_ok(), "each party has its own book");
        // A push gets half of what is left (its copy will follow it), no more.
        let (fsize_limit, push) = book.reserve_push("acme", &limits, 0, 0, 1).unwrap();
        assert_eq!((fsize_limit, push.room.bytes), (200_000, 400_000));
        assert!(book.reserve_push("acme", &limits, 0, 0, 1).is_err());
        book.settle(&first, Usage { bytes: 500_000, files: 1 }, Usage::default());
        book.settle(&push, Usage::default(), Usage::default());
        book.change("acme", Change { bytes: 150_000, files: 3 });
        assert_eq!(book.headroom("acme", &limits).bytes, Some(350_000));
        assert_eq!(book.figure("acme"), Some(Usage { bytes: 650_000, files: 4 }));
    }

    #[test]
    fn one_walk_at_a_time_and_what_changed_meanwhile_counts() {
        let book = UsageBook::default();
        assert!(book.needs_walk("acme", std::time::Duration::from_secs(3600)));
        let walk = book.start_walk("acme").unwrap();
        assert!(book.start_walk("acme").is_none(), "single flight");
        book.change("acme", Change { bytes: 10, files: 1 });
        assert_eq!(walk.finish(Usage { bytes: 100, files: 5 }), Usage { bytes: 110, files: 6 });
        assert!(!book.needs_walk("acme", std::time::Duration::from_secs(3600)));
        let abandoned = book.start_walk("acme").unwrap();
        drop(abandoned);
        assert!(book.start_walk("acme").is_some(), "a walk given up frees the party for the next");
        book.change("acme", Change { bytes: -200, files: -10 });
        assert_eq!(book.figure("acme"), Some(Usage::default()), "never below nothing");
    }
}
