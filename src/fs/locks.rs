//! Lock files in `locks_dir/PARTY/`: one push (or copy for readers) of a replica at a time, a party's sync slots, a
//! party's quota. Each is an flock on a file, waited for by polling until a deadline, released when dropped. And one
//! in `state_dir`: the service's, which keeps `evosync restore` and a running service apart.

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

/// `state_dir/serve.lock`: every `evosync serve` holds it shared for as long as it runs, and `evosync restore` holds
/// it exclusively while it swaps the store. The kernel lets go of an flock when its process ends however it ends, so
/// the lock says whether a service runs, never what a stale file or a guess would.
pub const SERVICE_LOCK: &str = "serve.lock";

/// The service's hold for its lifetime; `None` while a restore holds the lock.
pub fn service_running(state_dir: &Path) -> Result<Option<Held>, LockFileError> {
    service_lock(state_dir, sys::try_lock_shared)
}

/// A restore's hold, which no service can share; `None` while a service runs.
pub fn service_stopped(state_dir: &Path) -> Result<Option<Held>, LockFileError> {
    service_lock(state_dir, sys::try_lock_exclusive)
}

fn service_lock(
    state_dir: &Path,
    lock: fn(File) -> std::io::Result<Option<nix::fcntl::Flock<File>>>,
) -> Result<Option<Held>, LockFileError> {
    let path = state_dir.join(SERVICE_LOCK);
    let failed = |source| LockFileError { path: path.clone(), source };
    let file = open_lock_file(&path).map_err(failed)?;
    Ok(lock(file).map_err(failed)?.map(|lock| Held { _lock: lock }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_share_the_lock_and_a_restore_excludes_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = service_running(dir.path()).unwrap().expect("a service starts");
        let second = service_running(dir.path()).unwrap().expect("two services may run on one state_dir");
        assert!(service_stopped(dir.path()).unwrap().is_none(), "no restore while a service runs");
        drop((first, second));
        let restoring = service_stopped(dir.path()).unwrap().expect("a restore once no service runs");
        assert!(service_running(dir.path()).unwrap().is_none(), "no service starts during a restore");
        drop(restoring);
        assert!(service_running(dir.path()).unwrap().is_some());
    }
}
