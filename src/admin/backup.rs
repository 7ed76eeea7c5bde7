//! `evosync backup` and `evosync restore`. A backup is the live store copied at one moment through SQLite's online
//! backup API (the service and the gates go on writing), checked in the copy (integrity, the audit chain), and landed
//! atomically with mode 0600. A restore takes the service's lock (`fs::locks::service_stopped`: no service may run,
//! none may start meanwhile), copies the file beside the store and checks the copy, sets the replaced store aside
//! (renamed, with its WAL; its stale -shm removed), and renames the copy into place with the owner, group and mode
//! `evosync init` gives the store.

use super::init::{settle_store_files, STATE_GROUP, STORE_MODE};
use super::{io, Admin, AdminError, Result, StoreHandle};
use crate::config::Config;
use crate::fs::landing::PendingFile;
use crate::fs::{locks, sys};
use crate::store::AuditAction;
use crate::store::{check_candidate, Store, Summary, STORE_FILE};
use crate::time::{now, rfc3339};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A backup holds every key's hash and the whole audit trail: its owner alone may read it.
pub const BACKUP_MODE: u32 = 0o600;

#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub file: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// When the copy was taken.
    pub taken_at: i64,
    /// What the copy holds (checked in the copy: integrity_check ok, the audit chain intact).
    #[serde(flatten)]
    pub holds: Summary,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub file: PathBuf,
    pub sha256: String,
    pub store: PathBuf,
    /// What the restored store holds (after migrating it to this evosync's schema).
    #[serde(flatten)]
    pub holds: Summary,
    /// Where the replaced store was set aside (none when there was none).
    pub replaced: Option<PathBuf>,
    /// Lines written to the managed authorized_keys file from the restored store (none in AuthorizedKeysCommand mode).
    pub authorized_keys_lines: Option<usize>,
}

/// Copies the live store into `file` (replacing it atomically), checks the copy, and records the backup.
pub fn backup(config: &Config, config_path: &Path, file: &Path, actor: String) -> Result<BackupReport> {
    let store_path = config.store_path();
    let store = Store::open_existing(&store_path)?;
    let (folder, name) = folder_and_name(file)?;
    if same_file(file, &store_path) {
        return Err(AdminError::Invalid(format!("{} is the state store itself; back it up elsewhere", file.display())));
    }
    let temp = folder.join(format!(".{name}.partial-{}", std::process::id()));
    let leftovers = Leftovers(Some(temp.clone()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(BACKUP_MODE)
        .open(&temp)
        .and_then(|_| std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(BACKUP_MODE)))
        .map_err(io(format!("creating {}", temp.display())))?;
    let taken_at = now();
    store.backup_to(&temp)?;
    let copy = check_candidate(&temp).map_err(|reason| {
        AdminError::Invalid(format!("the copy failed its check, so no backup was written: {reason}"))
    })?;
    let holds = copy.summary()?;
    copy.close_as_one_file(false)?;
    let (bytes, sha256) = hash_and_sync(&temp).map_err(io(format!("reading {}", temp.display())))?;
    std::fs::rename(&temp, file).map_err(io(format!("putting the backup in place as {}", file.display())))?;
    leftovers.disarm();
    sys::open_dir(&folder)
        .and_then(|dir| sys::sync_dir(&dir))
        .map_err(|e| AdminError::Io { what: format!("syncing {}", folder.display()), source: e.into() })?;
    let admin = Admin::with_store(config, config_path.to_owned(), StoreHandle::Owned(store), actor);
    let last_seq = holds.last_audit.as_ref().map_or(0, |r| r.seq);
    let detail = format!("sha256={sha256} bytes={bytes} last_audit={last_seq} last_ledger={}", holds.last_ledger_id);
    admin.record(AuditAction::StoreBackup, "", &file.display().to_string(), "ok", &detail)?;
    Ok(BackupReport { file: file.to_owned(), bytes, sha256, taken_at, holds })
}

/// Puts the backup `file` in the store's place, while no service runs.
pub fn restore(config: &Config, config_path: &Path, file: &Path, actor: String) -> Result<RestoreReport> {
    let state_dir = &config.state_dir;
    if !state_dir.is_dir() {
        return Err(AdminError::Invalid(format!(
            "state_dir {} does not exist (evosync init makes it, with its owner and mode)",
            state_dir.display()
        )));
    }
    let service_runs = |how: String| {
        AdminError::Invalid(format!(
            "evosync serve is running ({how}): stop it first (systemctl stop evosync), then restore; nothing was changed"
        ))
    };
    let lock = locks::service_stopped(state_dir)
        .map_err(|e| AdminError::Invalid(format!("cannot tell whether evosync serve runs: {e}")))?;
    let lock_path = state_dir.join(locks::SERVICE_LOCK);
    let Some(_restoring) = lock else {
        return Err(service_runs(format!("it holds {}", lock_path.display())));
    };
    // Made here, the lock file must still open for the service's account (group evosync; flock needs no more).
    let _ = std::fs::set_permissions(&lock_path, std::fs::Permissions::from_mode(STORE_MODE));
    let _ = sys::chgrp(&lock_path, STATE_GROUP);
    // A service of a version before the lock answers on the gates' socket.
    let socket = config.gate_socket();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        return Err(service_runs(format!("it answers on {}", socket.display())));
    }
    let source = std::fs::File::open(file).map_err(io(format!("cannot read {}", file.display())))?;
    let temp_name = format!(".{STORE_FILE}.restoring-{}", std::process::id());
    let temp = state_dir.join(&temp_name);
    let leftovers = Leftovers(Some(temp.clone()));
    let sha256 = copy_into(source, state_dir, &temp_name).map_err(io(format!("copying {}", file.display())))?;
    let candidate = check_candidate(&temp).map_err(|reason| {
        AdminError::Invalid(format!("{} cannot be restored: {reason}; nothing was changed", file.display()))
    })?;
    let holds = candidate.summary()?;
    candidate.close_as_one_file(true)?;
    if companion(&temp, "-wal").exists() {
        return Err(AdminError::Invalid(format!(
            "the checked copy {} kept a WAL beside it; nothing was changed",
            temp.display()
        )));
    }
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(STORE_MODE))
        .and_then(|()| sys::chgrp(&temp, STATE_GROUP))
        .map_err(io(format!("setting the mode of {}", temp.display())))?;
    let store_path = config.store_path();
    let replaced = set_aside(&store_path)?;
    let dir =
        sys::open_dir(state_dir).map_err(|e| AdminError::Io { what: "opening state_dir".into(), source: e.into() })?;
    let placed = sys::rename_new_in(&dir, &temp_name, STORE_FILE)
        .map_err(|e| AdminError::Io { what: format!("renaming {}", temp.display()), source: e.into() })?;
    if !placed {
        return Err(AdminError::Invalid(format!(
            "a new {} appeared while restoring (something opened the store meanwhile); the replaced store is kept \
             as {}; run the restore again",
            store_path.display(),
            replaced.as_ref().map_or_else(|| "nothing".to_owned(), |p| p.display().to_string())
        )));
    }
    leftovers.disarm();
    sys::sync_dir(&dir).map_err(|e| AdminError::Io { what: "syncing state_dir".into(), source: e.into() })?;
    let admin = Admin::open(config, config_path, actor)?;
    let detail = format!(
        "sha256={sha256} replaced={}",
        replaced.as_ref().map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );
    admin.record(AuditAction::StoreRestore, "", &file.display().to_string(), "ok", &detail)?;
    let authorized_keys_lines = admin.sync_authorized_keys()?;
    drop(admin);
    settle_store_files(&store_path)?;
    Ok(RestoreReport { file: file.to_owned(), sha256, store: store_path, holds, replaced, authorized_keys_lines })
}

/// Sets the store at `store` aside as `state.db.replaced-TIME`, with its WAL (folded in first when the store opens),
/// and removes its -shm, so that nothing of it is applied to the store that takes its place.
fn set_aside(store: &Path) -> Result<Option<PathBuf>> {
    let (wal, shm) = (companion(store, "-wal"), companion(store, "-shm"));
    let replaced = if store.exists() || wal.exists() {
        if store.exists() {
            crate::store::fold_wal(store);
        }
        let stamp = rfc3339(now()).replace(':', "");
        let mut aside = store.with_file_name(format!("{STORE_FILE}.replaced-{stamp}"));
        let mut n = 1;
        while aside.exists() || companion(&aside, "-wal").exists() {
            n += 1;
            aside = store.with_file_name(format!("{STORE_FILE}.replaced-{stamp}-{n}"));
        }
        for (from, to) in [(store.to_owned(), aside.clone()), (wal, companion(&aside, "-wal"))] {
            if from.exists() {
                std::fs::rename(&from, &to).map_err(io(format!("setting {} aside", from.display())))?;
            }
        }
        Some(aside)
    } else {
        None
    };
    match std::fs::remove_file(&shm) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(AdminError::Io { what: format!("removing {}", shm.display()), source: e })
        }
        _ => {}
    }
    Ok(replaced)
}

/// Copies `source` into `dir/name` durably (mode 0600 until checked), returning its SHA-256.
fn copy_into(mut source: std::fs::File, dir: &Path, name: &str) -> std::io::Result<String> {
    let mut pending = PendingFile::begin_with_mode(Arc::new(sys::open_dir(dir)?), name, 0o600)?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        pending.write(&buffer[..read])?;
    }
    let stored = pending.finish_new().map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(stored.sha256)
}

/// The file's length and SHA-256, read back; then fsync.
fn hash_and_sync(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let (mut hasher, mut bytes, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    file.sync_all()?;
    Ok((bytes, crate::time::hex(&hasher.finalize())))
}

fn folder_and_name(file: &Path) -> Result<(PathBuf, String)> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AdminError::Invalid(format!("{} names no file", file.display())))?;
    let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(AdminError::Invalid(format!("the folder {} does not exist", folder.display())));
    }
    Ok((folder.to_owned(), name.to_owned()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn companion(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// A temp file and its SQLite companions, removed unless disarmed.
struct Leftovers(Option<PathBuf>);

impl Leftovers {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = std::fs::remove_file(companion(path, suffix));
            }
        }
    }
}
