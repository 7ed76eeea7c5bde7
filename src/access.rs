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

/// A party's footprint: bytes of regular files, and entries (files and folders).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

/// Why there is no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Room for a push of a replica that holds `current_bytes` now and adds `new_files` entries: as much of
    /// `max_db_bytes` as the party has left. Refused when nothing is left. Returns (RLIMIT_FSIZE, bytes to reserve).
    pub fn for_push(&self, limits: &Limits, current_bytes: u64, new_files: u64) -> Result<(u64, u64), OverQuota> {
        self.fits(Usage { bytes: 0, files: new_files })?;
        let max_db = limits.max_db_bytes.0;
        let fsize_limit = match (self.bytes, self.max_bytes) {
            (Some(0), Some(max)) => return Err(OverQuota::Bytes { used: self.taken.bytes, max }),
            (Some(left), _) => max_db.min(left.saturating_add(current_bytes)),
            (None, _) => max_db,
        };
        Ok((fsize_limit, fsize_limit.saturating_sub(current_bytes)))
    }
}

/// The book of every party's quota in a long-lived process: the last measured usage, what uploads and pushes in
/// flight have reserved, and what finished ones added since. A reservation is granted only against the headroom left
/// after every other reservation, so concurrent writers together never pass a party's limits.
#[derive(Default)]
pub struct Reservations {
    parties: std::sync::Mutex<std::collections::HashMap<String, Book>>,
}

#[derive(Default)]
struct Book {
    /// The last walk's figure, kept current by what finished since; `None` until measured or after `stale`.
    used: Option<(Usage, std::time::Instant)>,
    reserved: Usage,
}

/// How long a walk's figure is trusted before the tree is walked again.
const USAGE_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// A reservation to hand back with `Reservations::settle`.
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

impl Reservations {
    /// Reserves `room` whole for `party` (an upload). `measure` walks the party's tree when the book has no fresh
    /// figure.
    pub fn reserve<E>(
        &self,
        party: &str,
        limits: &Limits,
        room: Usage,
        measure: impl FnOnce() -> Result<Usage, E>,
    ) -> Result<Result<Reserved, OverQuota>, E> {
        self.measure_if_stale(party, measure)?;
        Ok(self.with_book(party, |book| {
            Headroom::of(limits, book.used(), book.reserved).fits(room)?;
            book.reserved = add(book.reserved, room);
            Ok(Reserved { party: party.to_owned(), room })
        }))
    }

    /// Reserves for a push of a replica that holds `current_bytes` now: as many bytes as are left, up to
    /// `max_db_bytes`, and `new_files` entries. Returns the child's RLIMIT_FSIZE with the reservation.
    pub fn reserve_push<E>(
        &self,
        party: &str,
        limits: &Limits,
        current_bytes: u64,
        new_files: u64,
        measure: impl FnOnce() -> Result<Usage, E>,
    ) -> Result<Result<(u64, Reserved), OverQuota>, E> {
        self.measure_if_stale(party, measure)?;
        Ok(self.with_book(party, |book| {
            let headroom = Headroom::of(limits, book.used(), book.reserved);
            let (fsize_limit, bytes) = headroom.for_push(limits, current_bytes, new_files)?;
            let room = Usage { bytes, files: new_files };
            book.reserved = add(book.reserved, room);
            Ok((fsize_limit, Reserved { party: party.to_owned(), room }))
        }))
    }

    /// The party's headroom now (measuring when the book has no fresh figure).
    pub fn headroom<E>(
        &self,
        party: &str,
        limits: &Limits,
        measure: impl FnOnce() -> Result<Usage, E>,
    ) -> Result<Headroom, E> {
        self.measure_if_stale(party, measure)?;
        Ok(self.with_book(party, |book| Headroom::of(limits, book.used(), book.reserved)))
    }

    /// Walks (outside the lock, so other parties need not wait for this tree) when the figure is missing, or old
    /// while nothing is in flight. With writers in flight a walk would count their partial files twice.
    fn measure_if_stale<E>(&self, party: &str, measure: impl FnOnce() -> Result<Usage, E>) -> Result<(), E> {
        let fresh = self.with_book(party, |book| match book.used {
            None => false,
            Some((_, at)) => at.elapsed() < USAGE_FRESH || book.reserved != Usage::default(),
        });
        if !fresh {
            let measured = measure()?;
            self.with_book(party, |book| book.used = Some((measured, std::time::Instant::now())));
        }
        Ok(())
    }

    /// Hands a reservation back, with what its writer actually changed: `added` stored, `removed` replaced.
    pub fn settle(&self, reserved: &Reserved, added: Usage, removed: Usage) {
        self.with_book(&reserved.party, |book| {
            book.reserved = sub(book.reserved, reserved.room);
            if let Some((used, _)) = &mut book.used {
                *used = sub(add(*used, added), removed);
            }
        });
    }

    /// Forgets the measured usage (a push changed the tree by an amount only a walk knows).
    pub fn stale(&self, party: &str) {
        self.with_book(party, |book| book.used = None);
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
    fn used(&self) -> Usage {
        self.used.map(|(used, _)| used).unwrap_or_default()
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
        assert_eq!(headroom.for_push(&limits, 30, 1), Ok((80, 50)));
        assert_eq!(Headroom::of(&limits, Usage::default(), Usage::default()).for_push(&limits, 30, 1), Ok((100, 70)));
        assert_eq!(headroom.fits(Usage { bytes: 51, files: 0 }), Err(OverQuota::Bytes { used: 950, max: 1000 }));
        assert_eq!(headroom.fits(Usage { bytes: 0, files: 7 }), Err(OverQuota::Files { used: 4, max: 10 }));
        let full = Headroom::of(&limits, Usage { bytes: 1000, files: 0 }, Usage::default());
        assert_eq!(full.for_push(&limits, 30, 0), Err(OverQuota::Bytes { used: 1000, max: 1000 }));
        let unlimited = Limits { max_party_bytes: None, ..limits.clone() };
        assert_eq!(Headroom::of(&unlimited, used, Usage::default()).for_push(&unlimited, 30, 0), Ok((100, 70)));
    }

    #[test]
    fn reservations_never_pass_the_quota_together() {
        let limits = Limits { max_party_bytes: Some(ByteSize(1_000_000)), ..Limits::default() };
        let book = Reservations::default();
        let walks = std::cell::Cell::new(0);
        let measure = || -> Result<Usage, ()> {
            walks.set(walks.get() + 1);
            Ok(Usage::default())
        };
        let upload = Usage { bytes: 600_000, files: 1 };
        let first = book.reserve("acme", &limits, upload, measure).unwrap().unwrap();
        assert!(matches!(book.reserve("acme", &limits, upload, measure).unwrap(), Err(OverQuota::Bytes { .. })));
        assert!(book.reserve("beta", &limits, upload, measure).unwrap().is_ok(), "each party has its own book");
        // A push gets what is left, no more.
        let (fsize_limit, push) = book.reserve_push("acme", &limits, 0, 1, measure).unwrap().unwrap();
        assert_eq!((fsize_limit, push.room.bytes), (400_000, 400_000));
        assert!(book.reserve_push("acme", &limits, 0, 1, measure).unwrap().is_err());
        // Handed back: the upload stored 500 KB of its 600 KB; the push's bytes come back for a walk to count.
        book.settle(&first, Usage { bytes: 500_000, files: 1 }, Usage::default());
        book.settle(&push, Usage::default(), Usage::default());
        let headroom = book.headroom("acme", &limits, measure).unwrap();
        assert_eq!(headroom.bytes, Some(500_000));
        assert_eq!(walks.get(), 2, "one walk per party while the figure is fresh");
    }
}
