//! `evosync init`: the configuration (unless one exists), the folders with their owners and modes, the state store,
//! the managed authorized_keys file, and a first admin token. In shared-account mode it gives the service's account
//! what the service's own admin actions write (`writable`): `policies_dir`, `replica_root`, the managed
//! authorized_keys file and its folder.

use super::{Admin, AdminError, Result};
use crate::config::Config;
use crate::fs::{landing, sys};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The group of the gate accounts and the AuthorizedKeysCommand account: they write the store and the locks.
pub const STATE_GROUP: &str = "evosync";

/// The mode of the store and its -wal and -shm.
pub const STORE_MODE: u32 = 0o660;

/// What `init` writes into a new configuration.
pub struct InitSettings {
    pub replica_root: PathBuf,
    pub policies_dir: PathBuf,
    pub state_dir: PathBuf,
    pub sqlite3_rsync: PathBuf,
    pub authorized_keys: Option<PathBuf>,
    pub gate: PathBuf,
    pub listen: String,
    pub account_mode: String,
    /// Where the gates' lock folders go (per-party mode: outside state_dir).
    pub locks_dir: Option<PathBuf>,
    /// The broker socket (per-party mode: where party accounts can reach it).
    pub gate_socket: Option<PathBuf>,
    /// Where verified runs are published, and the group of their readers.
    pub catalog_root: Option<PathBuf>,
    pub catalog_group: String,
}

/// Per-party-account mode's defaults: party accounts cannot enter state_dir, so these live elsewhere.
const PER_PARTY_LOCKS: &str = "/var/lib/evosync-locks";

#[derive(Debug, serde::Serialize)]
pub struct InitReport {
    pub config: PathBuf,
    pub store: PathBuf,
    pub schema_version: i64,
    /// Shown once; only its hash is kept.
    pub admin_token: String,
    /// What init left for the administrator to do.
    pub notes: Vec<String>,
}

impl InitSettings {
    fn config_text(&self) -> String {
        let per_party = self.account_mode == "per-party";
        let locks_dir = self.locks_dir.clone().or_else(|| per_party.then(|| PathBuf::from(PER_PARTY_LOCKS)));
        let gate_socket =
            self.gate_socket.clone().or_else(|| per_party.then(|| PathBuf::from(crate::broker::PER_PARTY_SOCKET)));
        let optional = [
            ("authorized_keys", &self.authorized_keys),
            ("locks_dir", &locks_dir),
            ("gate_socket", &gate_socket),
            ("catalog_root", &self.catalog_root),
        ]
        .iter()
        .filter_map(|(key, path)| path.as_ref().map(|p| format!("{key}: {}\n", p.display())))
        .chain(self.catalog_root.as_ref().map(|_| format!("catalog_group: {}\n", self.catalog_group)))
        .collect::<String>();
        format!(
            "# evosync configuration, written by `evosync init`.\nreplica_root: {}\npolicies_dir: {}\nstate_dir: {}\n\
             sqlite3_rsync: {}\ngate: {}\nlisten: {}\naccount_mode: {}\n{}",
            self.replica_root.display(),
            self.policies_dir.display(),
            self.state_dir.display(),
            self.sqlite3_rsync.display(),
            self.gate.display(),
            self.listen,
            self.account_mode,
            optional
        )
    }
}

/// Sets the host up; safe to run again (an existing configuration is kept, and another admin token is issued).
pub fn init(config_path: &Path, settings: &InitSettings, actor: String) -> Result<InitReport> {
    if !config_path.exists() {
        let text = settings.config_text();
        Config::parse(&text)
            .map_err(|e| AdminError::Invalid(format!("these settings do not make a valid configuration: {e}")))?;
        if let Some(parent) = config_path.parent() {
            std::fs::create_dir_all(parent).map_err(super::io(format!("creating {}", parent.display())))?;
        }
        landing::create_file(config_path, text.as_bytes(), 0o644)
            .map_err(super::io(format!("cannot write {}", config_path.display())))?;
    }
    let config = Config::load(config_path).map_err(|e| AdminError::Invalid(e.to_string()))?;
    make_folder(&config.replica_root, 0o755, false)?;
    make_folder(&config.policies_dir, 0o755, false)?;
    // The gate accounts (group evosync) write the store, the ledger and their locks; nobody else may read them.
    make_folder(&config.state_dir, 0o2770, true)?;
    // Shared mode: the gates (group evosync) share one lock folder. Per-party mode: each party gets its own inside
    // (`party add`), in a folder every account may enter but none may write.
    match config.account_mode {
        crate::config::AccountMode::Shared => make_folder(&config.locks_dir(), 0o2770, true)?,
        crate::config::AccountMode::PerParty => make_folder(&config.locks_dir(), 0o755, false)?,
    }
    make_catalog(&config.catalog_root(), &config.catalog_group, 0o2750)?;
    make_catalog(&config.verified_root(), &config.catalog_group, 0o2700)?;
    if let Some(folder) = config.gate_socket().parent() {
        if !folder.exists() {
            make_folder(folder, 0o755, false)?;
        }
    }
    if let Some(folder) = config.authorized_keys.as_ref().and_then(|keys| keys.parent()) {
        make_folder(folder, 0o755, false)?;
    }
    let admin = Admin::open(&config, config_path, actor)?;
    let store_path = config.store_path();
    settle_store_files(&store_path)?;
    admin.sync_authorized_keys()?;
    let notes = give_to_service(&config)?;
    let admin_token = admin.issue_admin_token(Some("init"), None)?.admin_token;
    Ok(InitReport {
        config: config_path.to_owned(),
        store: store_path,
        schema_version: admin.store.schema_version()?,
        admin_token,
        notes,
    })
}

/// Shared-account mode, as root: what the service's own admin actions write becomes its account's, so that
/// `evosync serve` as `evosync` adds parties (their policy and tree) and rewrites the managed authorized_keys file.
/// sshd's StrictModes accepts the file and its folder owned by `evosync`, the account that logs in with them. A folder
/// that holds other files than the managed one is left alone (it may be a folder of sshd's or of other accounts);
/// the notes say so. Per-party-account mode leaves them root's: there only root adds parties (`writable`).
fn give_to_service(config: &Config) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    if config.account_mode != crate::config::AccountMode::Shared || !sys::is_root() {
        return Ok(notes);
    }
    let account = crate::config::SHARED_ACCOUNT;
    let Some(ids) = sys::account_ids(account) else {
        notes.push(format!(
            "there is no account {account}: create it, then run `evosync init` again so that the service may add              parties and rewrite authorized_keys"
        ));
        return Ok(notes);
    };
    let give = |path: &Path, mode: u32| {
        sys::give_path(path, ids, mode).map_err(super::io(format!("giving {} to {account}", path.display())))
    };
    give(&config.policies_dir, 0o755)?;
    give(&config.replica_root, 0o755)?;
    let Some(file) = &config.authorized_keys else { return Ok(notes) };
    let lock = super::authorized_keys::lock_path(file);
    for path in [file, &lock] {
        if path.exists() {
            give(path, 0o600)?;
        }
    }
    let Some(folder) = file.parent() else { return Ok(notes) };
    let ours = |name: &std::ffi::OsStr| {
        Some(name) == file.file_name()
            || Some(name) == lock.file_name()
            || name.to_string_lossy().starts_with(crate::fs::landing::TEMP_PREFIX)
    };
    let others: Vec<String> = std::fs::read_dir(folder)
        .map_err(super::io(format!("listing {}", folder.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.file_name()))
        .filter(|name| !ours(name))
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    if others.is_empty() {
        give(folder, 0o755)?;
    } else {
        notes.push(format!(
            "{} also holds {}: it stays as it is, and the service (as {account}) cannot rewrite {} there; give the              managed file a folder of its own (e.g. /etc/evosync/authorized_keys/{account}) and run `evosync init`              again, or change keys as root",
            folder.display(),
            others.join(", "),
            file.display()
        ));
    }
    Ok(notes)
}

/// The store and its WAL companions, those present, get group `evosync` and mode 0660: the gate accounts and the
/// AuthorizedKeysCommand account write them too.
pub fn settle_store_files(store_path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", store_path.display()));
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(STORE_MODE))
                .and_then(|()| sys::chgrp(&path, STATE_GROUP))
                .map_err(super::io(format!("setting the mode of {}", path.display())))?;
        }
    }
    Ok(())
}

/// A catalog folder: the service's (it publishes), setgid to its readers' group so that every run's home is
/// theirs too; `catalog_root` readable by that group (2750), `verified_root`, where held runs wait, by nobody else
/// (2700).
fn make_catalog(path: &Path, readers: &str, mode: u32) -> Result<()> {
    let gid = sys::group_id(readers).ok_or_else(|| {
        AdminError::Invalid(format!(
            "the catalog's readers' group {readers} does not exist: groupadd --system {readers} (or --catalog-group)"
        ))
    })?;
    let owner = sys::account_ids(crate::config::SHARED_ACCOUNT).map_or_else(sys::effective_ids, |(uid, _)| (uid, gid));
    std::fs::create_dir_all(path)
        .and_then(|()| sys::give_path(path, (owner.0, gid), mode))
        .map_err(super::io(format!("cannot create {}", path.display())))
}

fn make_folder(path: &Path, mode: u32, shared_with_gates: bool) -> Result<()> {
    let failed = super::io(format!("cannot create {}", path.display()));
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| if shared_with_gates { sys::chgrp(path, STATE_GROUP) } else { Ok(()) })
        .map_err(failed)
}
