//! Administrative operations, shared by the command line (`cli`), the admin HTTP API (`serve::admin_api`) and the
//! dashboard: each one checks its input and whether its account may write what it will (else it is refused before
//! anything changes, naming the command to run as root), then changes the store, the files that follow from it and
//! the audit trail together or not at all (`atomic`). `init` sets a host up; `authorized_keys` owns the managed file;
//! `writable` says what the service's account must write; `doctor` looks a host over; `backup` backs the store up and
//! restores it; `audit` archives old audit records and verifies the chain and its archives.

pub mod atomic;
pub mod audit;
pub mod authorized_keys;
pub mod backup;
pub mod doctor;
pub mod init;
pub mod writable;

use crate::access;
use crate::config::Config;
use crate::fs::{landing, sys};
use crate::keys::{self, authorized_keys_line, KeyLine};
use crate::names::is_party_name;
use crate::secrets::{self, ADMIN_TOKEN_PREFIX, API_KEY_PREFIX};
use crate::store::{
    self, AdminToken, ApiKey, AuditAction, AuditEntry, Intent, LedgerRow, MadeFile, Party, SshKey, Store, StoreError,
    StoreErrorKind, Undo,
};
use crate::time::{new_id, now, parse_date};
use atomic::{kill_point, step};
use authorized_keys::{Drift, FileLock};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// This account may not do it (the service as `evosync`, say); refused before anything changed.
    #[error("{0}")]
    NeedsRoot(writable::NeedsRoot),
    /// Another admin action holds the admin lock too long; nothing was changed.
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Archive(#[from] store::ArchiveError),
}

impl AdminError {
    /// The HTTP status that fits: the caller's mistake (4xx) or the host's (5xx).
    pub fn status(&self) -> u16 {
        match self {
            AdminError::Store(error) => match error.kind() {
                StoreErrorKind::NotFound => 404,
                StoreErrorKind::Conflict => 409,
                StoreErrorKind::Busy => 503,
                StoreErrorKind::Broken => 500,
            },
            AdminError::NotFound(_) => 404,
            AdminError::Key(_) | AdminError::Invalid(_) | AdminError::Archive(store::ArchiveError::Nothing(_)) => 400,
            AdminError::NeedsRoot(_) => 403,
            AdminError::Archive(store::ArchiveError::Broken { .. } | store::ArchiveError::Changed(_)) => 409,
            AdminError::Busy(_) => 503,
            AdminError::Io { .. } | AdminError::Archive(_) => 500,
        }
    }
}

pub type Result<T> = std::result::Result<T, AdminError>;

/// How long an admin token lives unless `--expires` says otherwise. Admin tokens sit in operators' scripts and
/// shells rather than in a worker's configuration: a quarter is long enough that automation does not break between
/// two planned rotations (`evosync admin-token rotate` is one command), short enough that a token copied into a
/// forgotten place stops working on its own.
pub const ADMIN_TOKEN_DAYS: i64 = 90;

/// A key's `--expires`, which must lie ahead.
fn expiry(expires: Option<&str>) -> Result<Option<i64>> {
    let expires_at = expires.map(parse_date).transpose().map_err(AdminError::Invalid)?;
    if expires_at.is_some_and(|at| at <= now()) {
        return Err(AdminError::Invalid("--expires is in the past".into()));
    }
    Ok(expires_at)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AdminError {
    let what = what.into();
    move |source| AdminError::Io { what, source }
}

/// The policy a new party starts with: push into its own runs under the workers' usual prefix, nothing more.
pub fn policy_template(party: &str) -> String {
    format!(
        "# Policy of party {party}, written by `evosync party add`; check changes with `evosync policy check`.\n\
         party: {party}\npush: true\npull: false\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n\
         databases: [genomes.sqlite, features.sqlite]\nlimits:\n  max_runs: 1000\n  max_db_bytes: 16GiB\n\
         \x20 max_party_bytes: 500GiB\n  max_concurrent_syncs: 4\n  max_sync_seconds: 3600\nrequire_sandbox: true\n"
    )
}

#[derive(Debug, Serialize)]
pub struct AddedSshKey {
    pub key: SshKey,
    pub authorized_keys_line: String,
}

#[derive(Debug, Serialize)]
pub struct IssuedApiKey {
    pub key: ApiKey,
    /// Shown once; only its argon2id hash is kept.
    pub api_key: String,
}

#[derive(Debug, Serialize)]
pub struct IssuedAdminToken {
    pub token: AdminToken,
    /// Shown once; only its argon2id hash is kept.
    pub admin_token: String,
}

#[derive(Debug, Serialize)]
pub struct RotatedAdminTokens {
    pub issued: IssuedAdminToken,
    /// The tokens the new one replaces, now revoked.
    pub revoked: Vec<AdminToken>,
}

#[derive(Debug, Serialize)]
pub struct PartyView {
    pub party: Party,
    pub policy: String,
    pub ssh_keys: Vec<SshKey>,
    pub api_keys: Vec<ApiKey>,
    pub runs: usize,
}

#[derive(Debug, Serialize)]
pub struct RunView {
    pub run: String,
    pub party: String,
    pub replicas: Vec<ReplicaView>,
    /// In the catalog now.
    pub published: bool,
}

#[derive(Debug, Serialize)]
pub struct ReplicaView {
    pub database: String,
    pub bytes: Option<u64>,
    pub last_push: Option<LedgerRow>,
    /// The last check of what was pushed.
    pub verification: Option<crate::catalog::VerificationView>,
}

/// What `evosync catalog check` found (and, with `--repair`, did).
#[derive(Debug, Serialize)]
pub struct CatalogCheck {
    pub drift: crate::catalog::reconcile::Drift,
    /// Replicas whose push has not had its verdict yet.
    pub pending: Vec<crate::store::Job>,
    /// Entries of `catalog_root` that are neither plain files nor folders, relative to it.
    pub strays: Vec<String>,
    /// Entries of published runs their readers cannot read (not in `catalog_group`, or without the group's bits).
    pub unreadable: Vec<String>,
    pub repaired: Option<String>,
}

impl CatalogCheck {
    pub fn is_clean(&self) -> bool {
        self.drift.is_clean() && self.pending.is_empty() && self.strays.is_empty() && self.unreadable.is_empty()
    }
}

pub struct Admin<'a> {
    pub config: &'a Config,
    pub config_path: PathBuf,
    pub store: StoreHandle<'a>,
    /// Who acts: `cli:USER`, `http:admin`, …
    pub actor: String,
}

/// The store an `Admin` works on: its own (the command line), or a pooled connection it borrows (the service).
pub enum StoreHandle<'a> {
    Owned(Store),
    Borrowed(&'a Store),
}

impl std::ops::Deref for StoreHandle<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        match self {
            StoreHandle::Owned(store) => store,
            StoreHandle::Borrowed(store) => store,
        }
    }
}

impl<'a> Admin<'a> {
    /// An administrator with a store connection of its own.
    pub fn open(config: &'a Config, config_path: &Path, actor: String) -> Result<Admin<'a>> {
        let store = Store::open(&config.store_path())?;
        Ok(Admin::with_store(config, config_path.to_owned(), StoreHandle::Owned(store), actor))
    }

    /// An administrator working on a connection it borrows.
    pub fn borrowing(config: &'a Config, config_path: PathBuf, store: &'a Store, actor: String) -> Admin<'a> {
        Admin::with_store(config, config_path, StoreHandle::Borrowed(store), actor)
    }

    fn with_store(config: &'a Config, config_path: PathBuf, store: StoreHandle<'a>, actor: String) -> Admin<'a> {
        let config_path = std::fs::canonicalize(&config_path).unwrap_or(config_path);
        Admin { config, config_path, store, actor }
    }

    fn audit(&self, action: AuditAction, party: &str, subject: &str, detail: &str) -> Result<()> {
        self.record(action, party, subject, "ok", detail)
    }

    /// Records an action carried out elsewhere on the administrator's behalf, once it happened, with its outcome (a
    /// re-verification: `ok`, or `refuse` with the reason).
    pub fn record(&self, action: AuditAction, party: &str, subject: &str, outcome: &str, detail: &str) -> Result<()> {
        self.store.append_audit(&AuditEntry { actor: &self.actor, action, party, subject, outcome, detail })?;
        Ok(())
    }

    // ---- parties ----

    /// Registers a party, writes its policy from the template unless one exists, and creates its tree: all of it, or
    /// (refused, failed or killed half-way) none of it.
    pub fn add_party(&self, name: &str) -> Result<Party> {
        if !is_party_name(name) {
            return Err(AdminError::Invalid(format!(
                "'{name}' is not a party name: 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit"
            )));
        }
        let _turn = self.turn()?;
        if self.store.party(name)?.is_some() {
            return Err(StoreError::PartyExists(name.to_owned()).into());
        }
        let plan = self.plan_party(name)?;
        let intent =
            Intent { actor: &self.actor, action: AuditAction::PartyAdd, party: name, subject: name, undo: plan.undo() };
        self.with_intent(intent, None, |id| {
            self.make_party(name, &plan)?;
            kill_point(step::PARTY_FILES);
            self.store.immediate(|| {
                let party = self.store.add_party(name)?;
                self.audit(AuditAction::PartyAdd, name, name, "")?;
                self.store.end_intent(id)?;
                Ok(party)
            })
        })
    }

    /// What adding `name` will make, checked before anything is: the accounts and groups it needs exist, and this
    /// process may write where it will.
    fn plan_party(&self, name: &str) -> Result<PartyPlan> {
        let policy = self.config.policy_path(name);
        let tree = self.config.replica_root.join(name);
        let per_party = self.config.account_mode == crate::config::AccountMode::PerParty;
        let command = format!("evosync party add {name}");
        let owner = if per_party {
            let account = self.config.tree_owner(name);
            let ids = sys::account_ids(&account).ok_or_else(|| {
                AdminError::Invalid(format!(
                    "per-party-account mode needs the account {account} (see sshd/evosync-per-party-accounts.conf): \
                     groupadd {account}; useradd --gid {account} --shell /bin/sh {account}; usermod -aG {account} evosync"
                ))
            })?;
            if !sys::is_root() {
                return Err(AdminError::NeedsRoot(writable::NeedsRoot {
                    why: format!(
                        "in per-party-account mode a party's tree, lock folder and policy belong to its account \
                         {account}, which only root can give them to"
                    ),
                    command,
                    fix: None,
                }));
            }
            Some(ids)
        } else {
            None
        };
        let write_policy = !policy.exists();
        let mut needs = Vec::new();
        if write_policy {
            needs.push(writable::policies_need(self.config));
        }
        if tree.exists() {
            // Its mode is set again: only its owner (or root) may.
            let fix = format!("chown {} {}", crate::config::SHARED_ACCOUNT, tree.display());
            needs.push(writable::Need {
                path: tree.clone(),
                access: sys::WriteAccess::EntriesIn,
                owned: true,
                for_what: "the party's tree (party add)",
                fix,
            });
        } else {
            needs.push(writable::replica_root_need(self.config));
        }
        if let Some(refused) = writable::refusal(&needs, &command) {
            return Err(AdminError::NeedsRoot(refused));
        }
        let mut folders = Vec::new();
        if write_policy {
            folders.extend(missing_folders(&self.config.policies_dir));
        }
        folders.extend(missing_folders(&tree));
        let locks = owner.map(|_| self.config.locks_dir().join(name));
        if let Some(locks) = &locks {
            folders.extend(missing_folders(locks));
        }
        let template = policy_template(name);
        Ok(PartyPlan { policy, write_policy, template, tree, owner, locks, folders })
    }

    /// Makes what the plan says: the policy (unless one exists), the tree, and their owners and modes.
    fn make_party(&self, name: &str, plan: &PartyPlan) -> Result<()> {
        let policy = &plan.policy;
        if plan.write_policy {
            std::fs::create_dir_all(&self.config.policies_dir).map_err(io("creating policies_dir"))?;
            landing::create_file(policy, plan.template.as_bytes(), 0o644)
                .map_err(io(format!("writing {}", policy.display())))?;
            kill_point(step::POLICY);
        }
        let root = &plan.tree;
        std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
        let owner = self.config.tree_owner(name);
        let failed = |path: &Path| io(format!("giving {} to {owner}", path.display()));
        match (plan.owner, &plan.locks) {
            // Per-party-account mode: the party's tree, its lock folder and its policy belong to its own account and
            // group, so no other party's account can read them. The tree is setgid to the party's group (2770): what
            // the gate writes and what the service writes (its account is a member of every party group) stay
            // readable by both.
            (Some(ids), Some(locks)) => {
                std::fs::create_dir_all(locks).map_err(io(format!("creating {}", locks.display())))?;
                sys::give_path(root, ids, 0o2770).map_err(failed(root))?;
                // The service (a member of the party's group) takes a replica's lock to re-verify it.
                sys::give_path(locks, ids, 0o2770).map_err(failed(locks))?;
                // Readable by the party's gate and the service (a member of the party's group), by no other party.
                sys::give_path(policy, (0, ids.1), 0o640).map_err(failed(policy))?;
            }
            // Shared-account mode: the tree is the shared account's; nobody else reads it (readers get what the
            // catalog checked, in its own folders).
            _ => {
                sys::chown_to_account(root, &owner);
                std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o2750))
                    .map_err(failed(root))?;
            }
        }
        Ok(())
    }

    /// The catalog against the verdicts in the store: runs whose publication differs, copies that should exist and
    /// do not, replicas still waiting for their verdict, and entries of `catalog_root` a reader must not meet (a
    /// symlink leads out of the folder readers see). `repair` removes those entries and queues the missing copies: the
    /// service makes them, each checked before it is copied, and publishes what passes (at once when it runs, else
    /// when it starts).
    pub fn check_catalog(&self, repair: bool) -> Result<CatalogCheck> {
        let homes = crate::catalog::home::Homes::open(self.config).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let drift = crate::catalog::reconcile::drift(&self.store, self.config, &homes, now())?;
        let strays = homes.strays().map_err(|e| AdminError::Invalid(e.to_string()))?;
        let group = &self.config.catalog_group;
        let readers = sys::group_id(group).ok_or_else(|| {
            AdminError::Invalid(format!(
                "the catalog's readers' group {group} does not exist: groupadd --system {group}"
            ))
        })?;
        let unreadable = homes.unreadable(readers).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let pending = self.store.jobs()?;
        let mut check = CatalogCheck { drift, pending, strays, unreadable, repaired: None };
        if repair {
            let catalog = self.config.catalog_root();
            // Given back to the readers' group (only root may: the service's account is not in it).
            for entry in &check.unreadable {
                let path = catalog.join(entry);
                let mode = if path.is_dir() { 0o2750 } else { 0o640 };
                let owner = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
                owner
                    .and_then(|uid| sys::give_path(&path, (uid, readers), mode))
                    .map_err(io(format!("giving {} to the group {group} (run the repair as root)", path.display())))?;
            }
            for stray in &check.strays {
                let path = catalog.join(stray);
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
            }
            // A run folder of the old layout held only symlinks: once they are gone, its home is the held one.
            for (_, run) in check.drift.publish.iter().chain(&check.drift.withdraw) {
                let folder = catalog.join(run);
                if std::fs::read_dir(&folder).is_ok_and(|mut entries| entries.next().is_none())
                    && self.config.verified_root().join(run).is_dir()
                {
                    std::fs::remove_dir(&folder).map_err(io(format!("removing {}", folder.display())))?;
                }
            }
            for (party, run, database) in &check.drift.rebuild {
                self.store.job_awaiting(party, run, database, None, now())?;
            }
            let running = std::os::unix::net::UnixStream::connect(self.config.gate_socket()).is_ok();
            let when = if running { "now" } else { "when it starts" };
            let summary = format!(
                "{} stray entries removed, {} given back to the readers; {} copies queued: the service checks and \
                 copies them, and publishes what passes, {when}",
                check.strays.len(),
                check.unreadable.len(),
                check.drift.rebuild.len()
            );
            self.audit(AuditAction::CatalogRepair, "", "", &summary)?;
            check.repaired = Some(summary);
        }
        Ok(check)
    }

    pub fn parties(&self) -> Result<Vec<Party>> {
        Ok(self.store.parties()?)
    }

    pub fn show_party(&self, name: &str) -> Result<PartyView> {
        let party = self.store.require_party(name)?;
        Ok(PartyView {
            policy: self.config.policy_path(name).display().to_string(),
            ssh_keys: self.store.ssh_keys(Some(name))?,
            api_keys: self.store.api_keys(Some(name))?,
            runs: self.store.runs(Some(name))?.len(),
            party,
        })
    }

    /// Disabling stops every key of the party at once: the file drops its lines, and the gate and the HTTP service
    /// check the party on each use.
    pub fn set_party_enabled(&self, name: &str, enabled: bool) -> Result<Party> {
        self.store.require_party(name)?;
        let (action, verb) =
            if enabled { (AuditAction::PartyEnable, "enable") } else { (AuditAction::PartyDisable, "disable") };
        self.with_keys_file(action, name, name, &format!("evosync party {verb} {name}"), || {
            let party = self.store.set_party_enabled(name, enabled)?;
            self.audit(action, name, name, "")?;
            Ok(party)
        })
    }

    /// Runs `change` (the store's change and its audit record) and the rewrite of the managed authorized_keys file
    /// (when there is one) as one action: all of it or none of it (`atomic`). `command`: what root would run instead,
    /// named when this process may not write the file.
    fn with_keys_file<T>(
        &self,
        action: AuditAction,
        party: &str,
        subject: &str,
        command: &str,
        change: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let _turn = self.turn()?;
        let Some(path) = self.config.authorized_keys.clone() else {
            return self.store.immediate(change);
        };
        self.require_plain_config_path()?;
        if let Some(refused) = writable::refusal(&writable::authorized_keys_needs(&path), command) {
            return Err(AdminError::NeedsRoot(refused));
        }
        let lock = FileLock::acquire(&path).map_err(io(format!("locking {}", path.display())))?;
        let folder = path.parent().unwrap_or(Path::new("/")).to_owned();
        let undo = Undo { authorized_keys: true, sweep: vec![folder], ..Undo::default() };
        let intent = Intent { actor: &self.actor, action, party, subject, undo };
        self.with_intent(intent, Some(&lock), |id| {
            self.store.immediate(|| {
                let value = change()?;
                self.rewrite_keys_file(&lock, &path)?;
                kill_point(step::KEYS_FILE);
                self.store.end_intent(id)?;
                Ok(value)
            })
        })
    }

    // ---- SSH keys ----

    pub fn add_ssh_key(
        &self,
        party: &str,
        public_key: &str,
        expires: Option<&str>,
        from: Option<&str>,
        comment: Option<&str>,
    ) -> Result<AddedSshKey> {
        self.store.require_party(party)?;
        let parsed = keys::parse_public_key(public_key)?;
        let expires_at = expiry(expires)?;
        let from = from.map(keys::parse_cidrs).transpose()?.unwrap_or_default();
        let key = SshKey {
            id: new_id(),
            party: party.to_owned(),
            algorithm: parsed.algorithm,
            blob: parsed.blob,
            fingerprint: parsed.fingerprint,
            comment: comment.map(str::to_owned).unwrap_or(parsed.comment),
            from,
            expires_at,
            created_at: now(),
            revoked_at: None,
            last_used_at: None,
        };
        let command = format!("evosync ssh-key add {party} --public-key FILE");
        self.with_keys_file(AuditAction::SshKeyAdd, party, &key.id, &command, || {
            self.store.add_ssh_key(&key)?;
            self.audit(AuditAction::SshKeyAdd, party, &key.id, &key.fingerprint)?;
            Ok(())
        })?;
        let authorized_keys_line = self.line_for(&key);
        Ok(AddedSshKey { key, authorized_keys_line })
    }

    pub fn ssh_keys(&self, party: Option<&str>) -> Result<Vec<SshKey>> {
        if let Some(party) = party {
            self.store.require_party(party)?;
        }
        Ok(self.store.ssh_keys(party)?)
    }

    pub fn revoke_ssh_key(&self, id_or_fingerprint: &str) -> Result<SshKey> {
        let found = self
            .store
            .ssh_key(id_or_fingerprint)?
            .ok_or_else(|| StoreError::NoSuchSshKey(id_or_fingerprint.to_owned()))?;
        let command = format!("evosync ssh-key revoke {}", found.id);
        self.with_keys_file(AuditAction::SshKeyRevoke, &found.party, &found.id, &command, || {
            let key = self.store.revoke_ssh_key(&found.id)?;
            self.audit(AuditAction::SshKeyRevoke, &key.party, &key.id, &key.fingerprint)?;
            Ok(key)
        })
    }

    pub fn line_for(&self, key: &SshKey) -> String {
        authorized_keys_line(&KeyLine::of(key), &self.config.gate, &self.config_path)
    }

    /// The managed block as the store says it should be: one line per active key.
    pub fn authorized_key_lines(&self) -> Result<Vec<String>> {
        Ok(access::active_ssh_keys(&self.store, now())?.iter().map(|key| self.line_for(key)).collect())
    }

    /// The configuration's path goes into every key's line, unquoted.
    fn require_plain_config_path(&self) -> Result<()> {
        if keys::path_is_plain(&self.config_path) {
            return Ok(());
        }
        Err(AdminError::Invalid(format!(
            "the configuration path {} cannot stand in authorized_keys unquoted; move it",
            self.config_path.display()
        )))
    }

    /// Rewrites the managed authorized_keys file, when the configuration names one (outside any admin action:
    /// `evosync init`). Returns the lines written.
    pub fn sync_authorized_keys(&self) -> Result<Option<usize>> {
        let Some(path) = &self.config.authorized_keys else { return Ok(None) };
        self.require_plain_config_path()?;
        // In turn with the admin actions, whose recovery sweeps the file's folder of temp files.
        let _turn = self.turn()?;
        let written = authorized_keys::rewrite(path, || self.authorized_key_lines())?;
        Ok(Some(written))
    }

    fn managed_file(&self) -> Result<&Path> {
        self.config.authorized_keys.as_deref().ok_or_else(|| {
            AdminError::Invalid("the configuration names no authorized_keys file (AuthorizedKeysCommand mode)".into())
        })
    }

    /// Writes the managed block from the store, and records that it did.
    pub fn write_authorized_keys(&self) -> Result<usize> {
        self.managed_file()?;
        self.with_keys_file(AuditAction::AuthorizedKeysWrite, "", "", "evosync authorized-keys write", || {
            let lines = self.authorized_key_lines()?.len();
            self.audit(AuditAction::AuthorizedKeysWrite, "", "", &format!("{lines} lines"))?;
            Ok(lines)
        })
    }

    pub fn check_authorized_keys(&self) -> Result<Drift> {
        let path = self.managed_file()?;
        authorized_keys::drift(path, &self.authorized_key_lines()?).map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied && !sys::is_root() {
                return AdminError::NeedsRoot(writable::NeedsRoot {
                    why: format!("{} may not read {}", writable::account(), path.display()),
                    command: "evosync authorized-keys check".into(),
                    fix: writable::authorized_keys_needs(path).last().map(|need| need.fix.clone()),
                });
            }
            AdminError::Io { what: format!("reading {}", path.display()), source }
        })
    }

    // ---- API keys ----

    pub fn issue_api_key(&self, party: &str, name: Option<&str>, expires: Option<&str>) -> Result<IssuedApiKey> {
        self.store.require_party(party)?;
        let expires_at = expiry(expires)?;
        let secret = secrets::generate(API_KEY_PREFIX);
        let key = ApiKey {
            id: secret.id.clone(),
            party: party.to_owned(),
            name: name.unwrap_or_default().to_owned(),
            secret_hash: secret.hash,
            expires_at,
            created_at: now(),
            revoked_at: None,
            last_used_at: None,
        };
        let _turn = self.turn()?;
        self.store.immediate(|| {
            self.store.add_api_key(&key)?;
            self.audit(AuditAction::ApiKeyIssue, party, &key.id, &key.name)
        })?;
        Ok(IssuedApiKey { key, api_key: secret.token })
    }

    pub fn api_keys(&self, party: Option<&str>) -> Result<Vec<ApiKey>> {
        if let Some(party) = party {
            self.store.require_party(party)?;
        }
        Ok(self.store.api_keys(party)?)
    }

    pub fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        let _turn = self.turn()?;
        self.store.immediate(|| {
            let key = self.store.revoke_api_key(id)?;
            self.audit(AuditAction::ApiKeyRevoke, &key.party, &key.id, &key.name)?;
            Ok(key)
        })
    }

    // ---- runs, audit, admin tokens ----

    pub fn runs(&self) -> Result<Vec<RunView>> {
        let mut views = Vec::new();
        for run in self.store.runs(None)? {
            let pushes = self.store.last_syncs(&run.party, &run.name)?;
            let verdicts = self.store.verifications(Some(&run.name))?;
            let folder = self.config.replica_root.join(&run.party).join(&run.name);
            let policy = crate::policy::Policy::load(&self.config.policy_path(&run.party), &run.party).ok();
            let databases: Vec<String> = match policy {
                Some(policy) => policy.databases,
                None => crate::policy::DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect(),
            };
            let replicas = databases
                .into_iter()
                .map(|database| ReplicaView {
                    bytes: std::fs::symlink_metadata(folder.join(&database))
                        .ok()
                        .filter(|m| m.is_file())
                        .map(|m| m.len()),
                    last_push: pushes.iter().find(|p| p.database == database).cloned(),
                    verification: verdicts.iter().find(|v| v.database == database).map(Into::into),
                    database,
                })
                .collect();
            let published = crate::catalog::is_published(self.config, &run.name);
            views.push(RunView { run: run.name, party: run.party, replicas, published });
        }
        Ok(views)
    }

    pub fn audit_records(&self, after: i64, limit: u32) -> Result<Vec<store::AuditRecord>> {
        Ok(self.store.audit(after, limit)?)
    }

    // ---- admin tokens ----

    /// A new admin token, shown once; it expires after `ADMIN_TOKEN_DAYS` unless `expires` names another day.
    pub fn issue_admin_token(&self, name: Option<&str>, expires: Option<&str>) -> Result<IssuedAdminToken> {
        let at = now();
        let expires_at = expiry(expires)?.unwrap_or(at + ADMIN_TOKEN_DAYS * 86_400);
        let secret = secrets::generate(ADMIN_TOKEN_PREFIX);
        let token = AdminToken {
            id: secret.id,
            name: name.unwrap_or_default().to_owned(),
            secret_hash: secret.hash,
            created_at: at,
            expires_at: Some(expires_at),
            revoked_at: None,
            last_used_at: None,
        };
        let _turn = self.turn()?;
        self.store.immediate(|| {
            self.store.add_admin_token(&token)?;
            self.audit(
                AuditAction::AdminTokenIssue,
                "",
                &token.id,
                &format!("expires={}", crate::time::rfc3339(expires_at)),
            )
        })?;
        Ok(IssuedAdminToken { token, admin_token: secret.token })
    }

    pub fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        Ok(self.store.admin_tokens()?)
    }

    /// The service refuses the token from its next request on.
    pub fn revoke_admin_token(&self, id: &str) -> Result<AdminToken> {
        let _turn = self.turn()?;
        self.store.immediate(|| {
            let token = self.store.revoke_admin_token(id)?;
            self.audit(AuditAction::AdminTokenRevoke, "", &token.id, &token.name)?;
            Ok(token)
        })
    }

    /// Replaces `id` (or, without one, every active admin token) with one new token of the same name and a fresh
    /// lifetime; the replaced ones are revoked at once.
    pub fn rotate_admin_token(&self, id: Option<&str>) -> Result<RotatedAdminTokens> {
        let _turn = self.turn()?;
        self.store.immediate(|| self.rotate_admin_token_now(id))
    }

    fn rotate_admin_token_now(&self, id: Option<&str>) -> Result<RotatedAdminTokens> {
        let at = now();
        let replaced: Vec<AdminToken> = match id {
            Some(id) => {
                let token = self.store.admin_token(id)?.ok_or_else(|| StoreError::NoSuchAdminToken(id.to_owned()))?;
                if !access::KeyState::of_admin_token(&token, at).is_active() {
                    return Err(AdminError::Invalid(format!(
                        "admin token {id} is {}; issue a new one instead",
                        access::KeyState::of_admin_token(&token, at).label()
                    )));
                }
                vec![token]
            }
            None => self
                .store
                .admin_tokens()?
                .into_iter()
                .filter(|t| access::KeyState::of_admin_token(t, at).is_active())
                .collect(),
        };
        let name = match replaced.as_slice() {
            [only] => only.name.clone(),
            _ => String::new(),
        };
        let detail = format!("replaces={}", replaced.iter().map(|t| t.id.as_str()).collect::<Vec<_>>().join(","));
        // One transaction: the new token, the revocations and the record stand or fall together.
        let secret = secrets::generate(ADMIN_TOKEN_PREFIX);
        let token = AdminToken {
            id: secret.id,
            name,
            secret_hash: secret.hash,
            created_at: at,
            expires_at: Some(at + ADMIN_TOKEN_DAYS * 86_400),
            revoked_at: None,
            last_used_at: None,
        };
        self.store.add_admin_token(&token)?;
        let revoked =
            replaced.iter().map(|t| self.store.revoke_admin_token(&t.id)).collect::<store::Result<Vec<_>>>()?;
        self.audit(AuditAction::AdminTokenRotate, "", &token.id, &detail)?;
        let issued = IssuedAdminToken { token, admin_token: secret.token };
        Ok(RotatedAdminTokens { issued, revoked })
    }
}

impl From<std::io::Error> for AdminError {
    fn from(source: std::io::Error) -> Self {
        AdminError::Io { what: "authorized_keys".into(), source }
    }
}

/// What `party add` will make, decided before anything is made.
struct PartyPlan {
    policy: PathBuf,
    /// No policy exists yet: the template is written.
    write_policy: bool,
    template: String,
    tree: PathBuf,
    /// Per-party-account mode: the party account's (uid, gid), and its lock folder.
    owner: Option<(u32, u32)>,
    locks: Option<PathBuf>,
    /// Folders the plan makes that do not exist yet, deepest first.
    folders: Vec<PathBuf>,
}

impl PartyPlan {
    /// What undoes it: the files and folders it makes, none of which exist yet.
    fn undo(&self) -> Undo {
        let files = match self.write_policy {
            true => vec![MadeFile { path: self.policy.clone(), sha256: atomic::sha256_hex(self.template.as_bytes()) }],
            false => vec![],
        };
        let sweep =
            if self.write_policy { vec![self.policy.parent().unwrap_or(Path::new("/")).to_owned()] } else { vec![] };
        Undo { files, folders: self.folders.clone(), authorized_keys: false, sweep }
    }
}

/// `path` and those of its ancestors that do not exist, deepest first.
fn missing_folders(path: &Path) -> Vec<PathBuf> {
    path.ancestors().take_while(|folder| !folder.exists()).map(Path::to_path_buf).collect()
}
