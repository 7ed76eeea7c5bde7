//! All or nothing: how an admin action changes the store, the files that follow from it (a party's policy and tree,
//! the managed authorized_keys file) and the audit trail together or not at all, even when its process is killed
//! (kill -9) half-way, whether that process is the CLI as root or the service as its own account.
//!
//! 1. One admin action at a time, across processes: each holds the flock `state_dir/admin.lock` from its start to
//!    its end (`Admin::turn`).
//! 2. Holding it, an action first undoes whatever an earlier, interrupted action left (`recover`, below: every
//!    intent found then is a dead process's, since live ones hold the lock), then checks that its account may write
//!    everything it is about to (`writable::refusal`), refusing before anything changes.
//! 3. An action that touches files records an intent in the store, committed before it touches any: what undoes it
//!    (the files and folders it will create, none of which exist yet; whether the managed authorized_keys file is
//!    to be written again from the store; the folders where a write killed before its rename leaves a temp file).
//! 4. It makes its files; then one transaction changes the store, appends the audit record and deletes the intent.
//!    The managed authorized_keys file is written inside that transaction, from what the transaction sees, and
//!    renamed into place just before the commit.
//! 5. An error before the commit undoes the intent at once; a crash leaves it, and the next action, or the service's
//!    start, undoes it and records `admin.undo` in the audit trail, in the transaction that deletes the intent.
//!
//! So an action whose transaction committed is whole (store, files, audit record), and of one that did not commit,
//! nothing is left once its intent is undone. Actions that change only the store (API keys, admin tokens) are one
//! transaction with their audit record.

use super::authorized_keys::FileLock;
use super::{io, Admin, AdminError, Result};
use crate::store::AuditAction;
use crate::store::{Intent, IntentRecord, Undo};
use std::path::Path;
use std::time::{Duration, Instant};

/// The lock file of admin actions, in `state_dir`.
pub const ADMIN_LOCK: &str = "admin.lock";

/// The environment variable that makes a debug build kill itself (SIGKILL) at a named step of an admin action, so
/// that tests can kill -9 at every step that writes. Release builds ignore it.
pub const KILL_AT: &str = "EVOSYNC_TEST_KILL_AT";

/// The steps an admin action may be killed at (`KILL_AT`).
pub mod step {
    /// The intent is committed; nothing else is done.
    pub const INTENT: &str = "intent";
    /// A new party's policy is written, its tree not yet made.
    pub const POLICY: &str = "policy";
    /// A new party's files are all made; the store does not have it yet.
    pub const PARTY_FILES: &str = "party-files";
    /// The new authorized_keys file is in place; the store's change is not committed.
    pub const KEYS_FILE: &str = "keys-file";
}

/// In debug builds, dies at once (SIGKILL, as kill -9 would) when `KILL_AT` names `name`.
pub fn kill_point(name: &str) {
    if cfg!(debug_assertions) && std::env::var(KILL_AT).is_ok_and(|at| at == name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// This process's turn to act: the admin lock, held until dropped.
pub struct Turn {
    _lock: crate::fs::locks::Held,
    _here: std::sync::MutexGuard<'static, ()>,
}

/// The service's own threads queue here first (woken as soon as the turn ends) rather than each polling the lock file.
static TURNS_HERE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An interrupted action that could not be undone (and stays recorded until it is).
#[derive(Debug)]
pub struct Stuck {
    pub intent: IntentRecord,
    pub error: AdminError,
}

/// What the undoing of interrupted actions did.
#[derive(Debug, Default)]
pub struct Recovery {
    pub undone: Vec<IntentRecord>,
    /// Left recorded, to be undone by an account that may.
    pub stuck: Vec<Stuck>,
}

impl Admin<'_> {
    /// Waits for this process's turn (at most `lock_wait_seconds`), then undoes what interrupted actions left; what
    /// this account cannot undo is logged and stays recorded (the action at hand goes on: it does not depend on it).
    pub(super) fn turn(&self) -> Result<Turn> {
        let turn = self.lock()?;
        for stuck in self.undo_interrupted()?.stuck {
            crate::log::Line::of("evosync")
                .field("event", "admin-undo")
                .field("outcome", "failed")
                .field("action", &stuck.intent.action)
                .field("party", &stuck.intent.party)
                .field("actor", &stuck.intent.actor)
                .field("error", &stuck.error)
                .to_stderr();
        }
        Ok(turn)
    }

    /// Undoes every action that an interrupted process left (the service does this as it starts).
    pub fn recover(&self) -> Result<Recovery> {
        let _turn = self.lock()?;
        self.undo_interrupted()
    }

    fn lock(&self) -> Result<Turn> {
        // A thread that panicked in its turn left nothing to mend here: the turn is only an order.
        let here = TURNS_HERE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.config.state_dir.join(ADMIN_LOCK);
        if !path.exists() && crate::fs::sys::is_root() {
            // Made by root, it must still open for the service's account (flock needs no more than reading).
            make_lock_file(&path).map_err(io(format!("creating {}", path.display())))?;
        }
        let deadline = Instant::now() + Duration::from_secs(self.config.lock_wait_seconds);
        let held = crate::fs::locks::first_free(&[path], deadline)
            .map_err(|e| AdminError::Io { what: e.path.display().to_string(), source: e.source })?
            .ok_or_else(|| {
                AdminError::Busy(format!(
                    "another admin action has held the admin lock for {} s; try again",
                    self.config.lock_wait_seconds
                ))
            })?;
        Ok(Turn { _lock: held, _here: here })
    }

    /// Undoes every intent left by an interrupted action; the caller holds the admin lock, so none is live.
    fn undo_interrupted(&self) -> Result<Recovery> {
        let mut recovery = Recovery::default();
        for intent in self.store.intents()? {
            let undone = self.undo_files(&intent.undo, None).and_then(|done| {
                self.store.immediate(|| {
                    let detail = format!("{} by {} was interrupted; undone: {done}", intent.action, intent.actor);
                    self.audit(AuditAction::AdminUndo, &intent.party, &intent.subject, &detail)?;
                    self.store.end_intent(intent.id)?;
                    Ok(())
                })
            });
            match undone {
                Ok(()) => recovery.undone.push(intent),
                Err(error) => recovery.stuck.push(Stuck { intent, error }),
            }
        }
        Ok(recovery)
    }

    /// Records the intent, runs `work` (which ends the intent in its committing transaction), and undoes the intent
    /// when `work` fails. `keys_lock`: the authorized_keys lock the caller holds, if any.
    pub(super) fn with_intent<T>(
        &self,
        intent: Intent<'_>,
        keys_lock: Option<&FileLock>,
        work: impl FnOnce(i64) -> Result<T>,
    ) -> Result<T> {
        let undo = intent.undo.clone();
        let id = self.store.record_intent(&intent)?;
        kill_point(step::INTENT);
        match work(id) {
            Ok(value) => Ok(value),
            Err(error) => {
                // Nothing of the action was committed: undo its files; the intent stays if that fails too, for the
                // next action to undo.
                if self.undo_files(&undo, keys_lock).is_ok() {
                    let _ = self.store.end_intent(id);
                }
                Err(error)
            }
        }
    }

    /// Removes what an uncommitted action made and writes the managed authorized_keys file again from the store;
    /// says what it did.
    fn undo_files(&self, undo: &Undo, keys_lock: Option<&FileLock>) -> Result<String> {
        let mut done = Vec::new();
        for made in &undo.files {
            let file = &made.path;
            match std::fs::read(file) {
                Ok(bytes) if sha256_hex(&bytes) != made.sha256 => {
                    done.push(format!("kept {} (written over since)", file.display()));
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(format!("reading {}", file.display()))(e)),
            }
            match std::fs::remove_file(file) {
                Ok(()) => done.push(format!("removed {}", file.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("removing {}", file.display()))(e)),
            }
        }
        for folder in &undo.folders {
            match std::fs::remove_dir(folder) {
                Ok(()) => done.push(format!("removed {}", folder.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                // Something was put in it since: it is no longer only the action's.
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {
                    done.push(format!("kept {} (not empty)", folder.display()))
                }
                Err(e) => return Err(io(format!("removing {}", folder.display()))(e)),
            }
        }
        for folder in &undo.sweep {
            for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(crate::fs::landing::TEMP_PREFIX) && name.ends_with(".tmp") {
                    std::fs::remove_file(entry.path()).map_err(io(format!("removing {}", entry.path().display())))?;
                    done.push(format!("removed {}", entry.path().display()));
                }
            }
        }
        if undo.authorized_keys {
            if let Some(path) = &self.config.authorized_keys {
                let lines = match keys_lock {
                    Some(lock) => self.rewrite_keys_file(lock, path)?,
                    None => self.rewrite_keys_file(&FileLock::acquire(path)?, path)?,
                };
                done.push(format!("{} written again from the store ({lines} lines)", path.display()));
            }
        }
        Ok(if done.is_empty() { "nothing was left".into() } else { done.join("; ") })
    }

    /// Writes the managed block from the store as this connection sees it (inside a transaction: its changes too).
    pub(super) fn rewrite_keys_file(&self, lock: &FileLock, path: &Path) -> Result<usize> {
        let lines = self.authorized_key_lines()?;
        super::authorized_keys::rewrite_holding(lock, path, &lines)
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(lines.len())
    }
}

/// The admin lock file, group `evosync` and 0660 whoever makes it.
fn make_lock_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o660).open(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    crate::fs::sys::chgrp(path, super::init::STATE_GROUP)
}

/// SHA-256 of `bytes`, in hex: how an intent knows a file it made from one written over since.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::time::hex(&sha2::Sha256::digest(bytes))
}
