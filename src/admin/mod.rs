//! Administrative operations, shared by the command line (`cli`) and the admin HTTP API (`serve::admin_api`): each
//! one checks its input, changes the store (and the files that follow from it), and leaves one record in the audit
//! trail. `init` sets a host up; `authorized_keys` owns the managed file; `doctor` looks a host over; `backup` backs
//! the store up and restores it; `audit` archives old audit records and verifies the chain and its archives.

pub mod audit;
pub mod authorized_keys;
pub mod backup;
pub mod doctor;
pub mod init;

use crate::access;
use crate::config::Config;
use crate::fs::{landing, sys};
use crate::keys::{self, authorized_keys_line, KeyLine};
use crate::names::is_party_name;
use crate::secrets::{self, ADMIN_TOKEN_PREFIX, API_KEY_PREFIX};
use crate::store::{self, AdminToken, ApiKey, AuditEntry, LedgerRow, Party, SshKey, Store, StoreError};
use crate::time::{new_id, now, parse_date};
use authorized_keys::Drift;
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
    #[error(transparent)]
    Archive(#[from] store::ArchiveError),
}

impl AdminError {
    /// The HTTP status that fits: the caller's mistake (4xx) or the host's (5xx).
    pub fn status(&self) -> u16 {
        match self {
            AdminError::Store(
                StoreError::NoSuchParty(_)
                | StoreError::NoSuchSshKey(_)
                | StoreError::NoSuchApiKey(_)
                | StoreError::NoSuchAdminToken(_),
            ) => 404,
            AdminError::NotFound(_) => 404,
            AdminError::Store(
                StoreError::PartyExists(_) | StoreError::KeyRegistered { .. } | StoreError::RunOwned { .. },
            ) => 409,
            AdminError::Key(_) | AdminError::Invalid(_) | AdminError::Archive(store::ArchiveError::Nothing(_)) => 400,
            AdminError::Archive(store::ArchiveError::Broken { .. } | store::ArchiveError::Changed(_)) => 409,
            AdminError::Store(_) | AdminError::Io { .. } | AdminError::Archive(_) => 500,
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

    fn audit(&self, action: &str, party: &str, subject: &str, detail: &str) -> Result<()> {
        self.store.append_audit(&AuditEntry { actor: &self.actor, action, party, subject, outcome: "ok", detail })?;
        Ok(())
    }

    /// Records an action carried out elsewhere on the administrator's behalf (a re-verification, say).
    pub fn record(&self, action: &str, party: &str, subject: &str, detail: &str) -> Result<()> {
        self.audit(action, party, subject, detail)
    }

    // ---- parties ----

    /// Registers a party, writes its policy from the template unless one exists, and creates its tree.
    pub fn add_party(&self, name: &str) -> Result<Party> {
        if !is_party_name(name) {
            return Err(AdminError::Invalid(format!(
                "'{name}' is not a party name: 1-32 of a-z, 0-9, '-', '_', starting with a letter or digit"
            )));
        }
        let party = self.store.add_party(name)?;
        let policy = self.config.policy_path(name);
        if !policy.exists() {
            std::fs::create_dir_all(&self.config.policies_dir).map_err(io("creating policies_dir"))?;
            landing::create_file(&policy, policy_template(name).as_bytes(), 0o644)
                .map_err(io(format!("writing {}", policy.display())))?;
        }
        let root = self.config.replica_root.join(name);
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        self.separate_party(name, &root, &policy)?;
        self.audit("party.add", name, name, "")?;
        Ok(party)
    }

    /// Per-party-account mode: the party's tree, its lock folder and its policy belong to its own account and group,
    /// so no other party's account can read them. The tree is setgid to the party's group (2770): what the gate writes
    /// and what the service writes (the service's account is a member of every party group) stay readable by both.
    /// Shared-account mode: the tree is the shared account's.
    fn separate_party(&self, name: &str, root: &Path, policy: &Path) -> Result<()> {
        let owner = self.config.tree_owner(name);
        let per_party = self.config.account_mode == crate::config::AccountMode::PerParty;
        let failed = |path: &Path| io(format!("giving {} to {owner}", path.display()));
        if !per_party {
            sys::chown_to_account(root, &owner);
            // Nobody but the shared account (and the catalog's readers, below) reads the tree.
            std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o2750))
                .map_err(failed(root))?;
        } else {
            let Some(ids) = sys::account_ids(&owner) else {
                return Err(AdminError::Invalid(format!(
                    "per-party-account mode needs the account {owner} (see sshd/evosync-per-party-accounts.conf): \
                     groupadd {owner}; useradd --gid {owner} --shell /bin/sh {owner}; usermod -aG {owner} evosync"
                )));
            };
            let locks = self.config.locks_dir().join(name);
            std::fs::create_dir_all(&locks).map_err(io(format!("creating {}", locks.display())))?;
            sys::give_path(root, ids, 0o2770).map_err(failed(root))?;
            // The service (a member of the party's group) takes a replica's lock to re-verify it.
            sys::give_path(&locks, ids, 0o2770).map_err(failed(&locks))?;
            // Readable by the party's gate and the service (a member of the party's group), by no other party.
            sys::give_path(policy, (0, ids.1), 0o640).map_err(failed(policy))?;
        }
        self.grant_readers(root)
    }

    /// With a catalog, its readers' group may read the party's tree (and what will be made in it), nothing else.
    fn grant_readers(&self, root: &Path) -> Result<()> {
        if self.config.catalog_root.is_none() {
            return Ok(());
        }
        let group = &self.config.catalog_group;
        let gid = sys::group_id(group).ok_or_else(|| {
            AdminError::Invalid(format!(
                "the catalog's readers' group {group} does not exist: groupadd --system {group}"
            ))
        })?;
        let group_writes = self.config.account_mode == crate::config::AccountMode::PerParty;
        crate::catalog::publish::grant_readers(root, gid, group_writes)
            .map_err(io(format!("giving the group {group} read access to {}", root.display())))
    }

    /// Makes the verified copy of every replica whose last check passed and whose copy is missing (a catalog set up
    /// after the pushes, a copy removed by hand), each under its replica's lock; gives the present ones their owner,
    /// group and modes again.
    fn restore_copies(&self) -> Result<()> {
        let Some(verified) = self.config.verified_root() else { return Ok(()) };
        let wait = std::time::Duration::from_secs(self.config.lock_wait_seconds);
        for v in self.store.verifications(None)?.into_iter().filter(|v| v.ok) {
            if crate::catalog::copies::copy_path(&verified, &v.run, &v.database).is_file() {
                // Present: only its owner, group and modes are mended.
                crate::catalog::copies::settle(&verified, &v.run, &v.database).map_err(AdminError::Invalid)?;
                continue;
            }
            let held = crate::fs::locks::replica(&self.config.locks_dir(), &v.party, &v.run, &v.database, wait)
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            if held.is_none() {
                return Err(AdminError::Invalid(format!(
                    "a push of {}/{} holds it; try again later",
                    v.run, v.database
                )));
            }
            let copying = crate::fs::locks::copy(&self.config.locks_dir(), &v.party, &v.run, &v.database, wait)
                .map_err(|e| AdminError::Invalid(e.to_string()))?;
            if copying.is_none() {
                return Err(AdminError::Invalid(format!(
                    "the service is copying {}/{} for its readers; try again later",
                    v.run, v.database
                )));
            }
            crate::catalog::copies::refresh(self.config, &v.party, &v.run, &v.database).map_err(AdminError::Invalid)?;
        }
        Ok(())
    }

    /// The catalog against the verdicts in the store: what differs, mended with `repair` (which also gives the
    /// readers' group read access to every party tree again).
    pub fn check_catalog(&self, repair: bool) -> Result<crate::catalog::reconcile::Drift> {
        let root = self.config.catalog_root.as_ref().ok_or_else(|| {
            AdminError::Invalid("the configuration names no catalog_root (evosync init --catalog-root DIR)".into())
        })?;
        let catalog =
            crate::catalog::publish::Catalog::open(root).map_err(io(format!("opening {}", root.display())))?;
        if repair {
            self.restore_copies()?;
        }
        let expected = crate::catalog::reconcile::expected(&self.store, self.config, now(), None)?;
        let drift = crate::catalog::reconcile::reconcile(&catalog, &expected, repair, None)
            .map_err(io(format!("mending {}", root.display())))?;
        if repair {
            for party in self.store.parties()? {
                self.grant_readers(&self.config.replica_root.join(&party.name))?;
            }
            self.audit(
                "catalog.repair",
                "",
                "",
                &format!("{} published, {} withdrawn", drift.publish.len(), drift.withdraw.len()),
            )?;
        }
        Ok(drift)
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
        let party = self.store.set_party_enabled(name, enabled)?;
        self.audit(if enabled { "party.enable" } else { "party.disable" }, name, name, "")?;
        self.sync_authorized_keys()?;
        Ok(party)
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
        self.store.add_ssh_key(&key)?;
        self.audit("ssh-key.add", party, &key.id, &key.fingerprint)?;
        self.sync_authorized_keys()?;
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
        let key = self.store.revoke_ssh_key(id_or_fingerprint)?;
        self.audit("ssh-key.revoke", &key.party, &key.id, &key.fingerprint)?;
        self.sync_authorized_keys()?;
        Ok(key)
    }

    pub fn line_for(&self, key: &SshKey) -> String {
        authorized_keys_line(&KeyLine::of(key), &self.config.gate, &self.config_path)
    }

    /// The managed block as the store says it should be: one line per active key.
    pub fn authorized_key_lines(&self) -> Result<Vec<String>> {
        Ok(access::active_ssh_keys(&self.store, now())?.iter().map(|key| self.line_for(key)).collect())
    }

    /// Rewrites the managed authorized_keys file, when the configuration names one. Returns the lines written.
    pub fn sync_authorized_keys(&self) -> Result<Option<usize>> {
        let Some(path) = &self.config.authorized_keys else { return Ok(None) };
        if !keys::path_is_plain(&self.config_path) {
            return Err(AdminError::Invalid(format!(
                "the configuration path {} cannot stand in authorized_keys unquoted; move it",
                self.config_path.display()
            )));
        }
        let written = authorized_keys::rewrite(path, || self.authorized_key_lines())?;
        Ok(Some(written))
    }

    pub fn write_authorized_keys(&self) -> Result<usize> {
        let written = self.sync_authorized_keys()?.ok_or_else(|| {
            AdminError::Invalid("the configuration names no authorized_keys file (AuthorizedKeysCommand mode)".into())
        })?;
        self.audit("authorized-keys.write", "", "", &format!("{written} lines"))?;
        Ok(written)
    }

    pub fn check_authorized_keys(&self) -> Result<Drift> {
        let path = self.config.authorized_keys.as_ref().ok_or_else(|| {
            AdminError::Invalid("the configuration names no authorized_keys file (AuthorizedKeysCommand mode)".into())
        })?;
        authorized_keys::drift(path, &self.authorized_key_lines()?).map_err(io(format!("reading {}", path.display())))
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
        self.store.add_api_key(&key)?;
        self.audit("api-key.issue", party, &key.id, &key.name)?;
        Ok(IssuedApiKey { key, api_key: secret.token })
    }

    pub fn api_keys(&self, party: Option<&str>) -> Result<Vec<ApiKey>> {
        if let Some(party) = party {
            self.store.require_party(party)?;
        }
        Ok(self.store.api_keys(party)?)
    }

    pub fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        let key = self.store.revoke_api_key(id)?;
        self.audit("api-key.revoke", &key.party, &key.id, &key.name)?;
        Ok(key)
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
        self.store.add_admin_token(&token)?;
        self.audit("admin-token.issue", "", &token.id, &format!("expires={}", crate::time::rfc3339(expires_at)))?;
        Ok(IssuedAdminToken { token, admin_token: secret.token })
    }

    pub fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        Ok(self.store.admin_tokens()?)
    }

    /// The service refuses the token from its next request on.
    pub fn revoke_admin_token(&self, id: &str) -> Result<AdminToken> {
        let token = self.store.revoke_admin_token(id)?;
        self.audit("admin-token.revoke", "", &token.id, &token.name)?;
        Ok(token)
    }

    /// Replaces `id` (or, without one, every active admin token) with one new token of the same name and a fresh
    /// lifetime; the replaced ones are revoked at once.
    pub fn rotate_admin_token(&self, id: Option<&str>) -> Result<RotatedAdminTokens> {
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
        // The new token first, so that a failure half-way never leaves the host without one.
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
        self.audit("admin-token.rotate", "", &token.id, &detail)?;
        let issued = IssuedAdminToken { token, admin_token: secret.token };
        Ok(RotatedAdminTokens { issued, revoked })
    }
}

impl From<std::io::Error> for AdminError {
    fn from(source: std::io::Error) -> Self {
        AdminError::Io { what: "authorized_keys".into(), source }
    }
}
