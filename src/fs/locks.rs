//! Lock files in `locks_dir/PARTY/`: one push (or copy for readers) of a replica at a time, a party's sync slots, a
//! party's quota. Each is an flock on a file, waited for by polling until a deadline, released when dropped.

use crate::fs::sys;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

/// A lock held until dropped.
pub struct Held {
    _lock: nix::fcntl::Flock<File>,
}

/// Why a lock could not be used at all (as against: it is busy).
#[derive(Debug, thiserror::Error)]
#[error("cannot use the lock file {path}: {source} (locks_dir must be writable by the gate's account)")]
pub struct LockFileError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The party's lock folder, made when missing.
pub fn party_dir(locks_dir: &Path, party: &str) -> Result<PathBuf, LockFileError> {
    let dir = locks_dir.join(party);
    std::fs::create_dir_all(&dir).map_err(|source| LockFileError { path: dir.clone(), source })?;
    Ok(dir)
}

/// `replica-<32 hex>.lock`: SHA-256 of `RUN/DATABASE`, cut to 128 bits. Any run name the door lets in makes a lock
/// file name of a fixed, short length.
pub fn replica_lock_name(run: &str, database: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{run}/{database}").as_bytes());
    format!("replica-{}.lock", crate::time::hex(&digest[..16]))
}

/// The lock of one replica: held by its push, and by the catalog while it reads the replica into its verified copy
/// (`catalog::pipeline`), so the copy never reads a replica being written.
pub fn replica(
    locks_dir: &Path,
    party: &str,
    run: &str,
    database: &str,
    wait: Duration,
) -> Result<Option<Held>, LockFileError> {
    one_lock(locks_dir, party, &replica_lock_name(run, database), wait)
}

/// The lock file `name` of `party`, waited for until `wait` has passed.
fn one_lock(locks_dir: &Path, party: &str, name: &str, wait: Duration) -> Result<Option<Held>, LockFileError> {
    first_free(&[party_dir(locks_dir, party)?.join(name)], Instant::now() + wait)
}

/// Takes the replica's lock if nobody holds it now; `None` when somebody does (a push in flight).
pub fn try_replica(locks_dir: &Path, party: &str, run: &str, database: &str) -> Result<Option<Held>, LockFileError> {
    one_lock(locks_dir, party, &replica_lock_name(run, database), Duration::ZERO)
}

/// Whether somebody holds the replica's lock now (the broker asks it of a gate that says it pushes).
pub fn replica_is_held(locks_dir: &Path, party: &str, run: &str, database: &str) -> Result<bool, LockFileError> {
    Ok(try_replica(locks_dir, party, run, database)?.is_none())
}

/// Takes the first free lock among `paths`, polling until `deadline`; `None` when all stayed busy.
pub fn first_free(paths: &[PathBuf], deadline: Instant) -> Result<Option<Held>, LockFileError> {
    loop {
        for path in paths {
            let failed = |source| LockFileError { path: path.clone(), source };
            let file = open_lock_file(path).map_err(failed)?;
            if let Some(lock) = sys::try_lock_exclusive(file).map_err(failed)? {
                return Ok(Some(Held { _lock: lock }));
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// A lock file, made when missing (group-writable, for the gates of per-party accounts and the service alike); one
/// that another account made and this one may not write is opened to read, which is all `flock` needs.
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o660).open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => File::open(path),
        opened => opened,
    }
}
