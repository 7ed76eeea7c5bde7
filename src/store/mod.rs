//! The state store: SQLite at `state_dir/state.db` (WAL, foreign keys, a busy timeout, migrations by
//! `user_version`). This file opens and migrates it; each table group has a file of its own: `parties`, `keys`
//! (SSH keys, API keys, admin tokens), `runs` (runs and their analysis files), `ledger` (the pushes the gate ran)
//! and `audit_chain` (the SHA-256 hash-chained trail of every admin action and gate decision), with `audit_archive`
//! (old records sealed into a file); `intents` (admin actions under way, and what undoes them); `dashboard` reads
//! summaries of them for the dashboard; `backup` copies the store while it is in use and checks a file that is to
//! become the store.

mod audit_archive;
mod audit_chain;
mod backup;
mod dashboard;
mod intents;
mod jobs;
mod keys;
mod ledger;
mod parties;
mod runs;
mod verifications;

pub use audit_archive::{
    verify_archive, ArchiveCheck, ArchiveError, ArchiveHeader, ArchivePlan, Seal, ARCHIVE_ACTION, ARCHIVE_FORMAT,
};
pub use audit_chain::{AuditAction, AuditEntry, AuditRecord, ChainCheck, GENESIS};
pub use backup::{check_candidate, fold_wal, CandidateError, Counts, Summary};
pub use dashboard::{HourlyPushes, HourlyUploads, PushRecord};
pub use intents::{Intent, IntentRecord, MadeFile, Undo};
pub use jobs::{Job, JobState};
pub use keys::{AdminToken, ApiKey, SshKey};
pub use ledger::{LedgerRow, Transport};
pub use parties::Party;
pub use runs::{FileRecord, Run};
pub use verifications::Verification;

use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

pub const STORE_FILE: &str = "state.db";

/// SQLite 3.51.3 as `sqlite3_libversion_number` writes it: the first release without the WAL-reset corruption.
pub const MIN_SQLITE_VERSION: i32 = 3_051_003;

/// The SQLite this binary uses, as text and as number.
pub fn sqlite_version() -> (&'static str, i32) {
    (rusqlite::version(), rusqlite::version_number())
}

/// Each entry brings the schema from version `index` to `index + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE parties (
    name        TEXT PRIMARY KEY,
    enabled     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL
);
CREATE TABLE ssh_keys (
    id            TEXT PRIMARY KEY,
    party         TEXT NOT NULL REFERENCES parties(name),
    algorithm     TEXT NOT NULL,
    blob          TEXT NOT NULL UNIQUE,
    fingerprint   TEXT NOT NULL UNIQUE,
    comment       TEXT NOT NULL DEFAULT '',
    from_cidrs    TEXT NOT NULL DEFAULT '',
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);
CREATE INDEX ssh_keys_party ON ssh_keys(party);
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    party         TEXT NOT NULL REFERENCES parties(name),
    name          TEXT NOT NULL DEFAULT '',
    secret_hash   TEXT NOT NULL,
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_used_at  INTEGER
);
CREATE INDEX api_keys_party ON api_keys(party);
CREATE TABLE runs (
    name              TEXT PRIMARY KEY,
    party             TEXT NOT NULL REFERENCES parties(name),
    created_at        INTEGER NOT NULL,
    template_name     TEXT,
    ecosystem_variant TEXT,
    started_at        TEXT
);
CREATE INDEX runs_party ON runs(party);
CREATE TABLE sync_ledger (
    id             INTEGER PRIMARY KEY,
    party          TEXT NOT NULL,
    key_id         TEXT,
    run            TEXT NOT NULL,
    database       TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    seconds        REAL NOT NULL,
    exit           TEXT NOT NULL,
    replica_bytes  INTEGER
);
CREATE INDEX sync_ledger_run ON sync_ledger(party, run, database, id);
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    party      TEXT NOT NULL DEFAULT '',
    subject    TEXT NOT NULL DEFAULT '',
    outcome    TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE TABLE admin_tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE analysis_files (
    party      TEXT NOT NULL,
    run        TEXT NOT NULL,
    subdir     TEXT NOT NULL,
    name       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    stored_at  INTEGER NOT NULL,
    PRIMARY KEY (party, run, subdir, name)
) WITHOUT ROWID;
"#,
    // The verdicts of the catalog's checks: each replica's last one, and each push's in its ledger row.
    r#"
ALTER TABLE sync_ledger ADD COLUMN verified INTEGER;
ALTER TABLE sync_ledger ADD COLUMN verify_seconds REAL;
ALTER TABLE sync_ledger ADD COLUMN verify_reason TEXT;
CREATE TABLE verifications (
    party          TEXT NOT NULL,
    run            TEXT NOT NULL,
    database       TEXT NOT NULL,
    ok             INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    seconds        REAL NOT NULL,
    reason         TEXT,
    passing_since  INTEGER,
    PRIMARY KEY (party, run, database)
) WITHOUT ROWID;
CREATE INDEX verifications_run ON verifications(run);
"#,
    // Admin tokens get a name, an expiry, a revocation and a last use. Tokens issued before this version had no
    // expiry; they get the default lifetime (`admin::ADMIN_TOKEN_DAYS`, 90 days) counted from the upgrade, so
    // none stops working at once and none lives for ever.
    r#"
ALTER TABLE admin_tokens ADD COLUMN name TEXT NOT NULL DEFAULT '';
ALTER TABLE admin_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE admin_tokens ADD COLUMN revoked_at INTEGER;
ALTER TABLE admin_tokens ADD COLUMN last_used_at INTEGER;
UPDATE admin_tokens SET expires_at = CAST(strftime('%s', 'now') AS INTEGER) + 90 * 86400 WHERE expires_at IS NULL;
"#,
    // How each push reached sshd: `ssh` straight, or `websocket` through the service's tunnel. Rows from before
    // the tunnel existed came straight.
    r#"
ALTER TABLE sync_ledger ADD COLUMN transport TEXT NOT NULL DEFAULT 'ssh';
"#,
    // The catalog's work (`catalog::pipeline`): one row per replica whose last push has not had its verdict yet,
    // written before the worker is let go (and while a push runs), so that no crash loses one. Whether each push
    // changed its replica (the gate reads it from the replica's WAL; NULL when it could not tell). Each party's
    // usage as last measured, so that a restarted service has a figure before its first walk ends.
    r#"
CREATE TABLE catalog_jobs (
    party      TEXT NOT NULL,
    run        TEXT NOT NULL,
    database   TEXT NOT NULL,
    state      TEXT NOT NULL,
    ledger_id  INTEGER,
    since      INTEGER NOT NULL,
    PRIMARY KEY (party, run, database)
) WITHOUT ROWID;
ALTER TABLE sync_ledger ADD COLUMN changed INTEGER;
CREATE TABLE party_usage (
    party        TEXT PRIMARY KEY,
    bytes        INTEGER NOT NULL,
    files        INTEGER NOT NULL,
    measured_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // Admin actions under way (`admin::atomic`): each one that changes files records here, before it touches them,
    // what would undo it; the row goes in the transaction that commits the action, so a row left behind names an
    // action that never committed, and what to undo of it.
    r#"
CREATE TABLE admin_intents (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    party    TEXT NOT NULL DEFAULT '',
    subject  TEXT NOT NULL DEFAULT '',
    undo     TEXT NOT NULL
);
"#,
    // The audit trail's seals (`audit_archive`): each archive of old records leaves one, and the chain in the store
    // starts at the newest.
    r#"
CREATE TABLE audit_seals (
    id              INTEGER PRIMARY KEY,
    first_seq       INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_hash       TEXT NOT NULL,
    archive_sha256  TEXT NOT NULL,
    archive         TEXT NOT NULL,
    sealed_at       INTEGER NOT NULL,
    hash            TEXT NOT NULL
);
"#,
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state store failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the state store {path} cannot be opened: {source} (run `evosync init`, or check state_dir)")]
    Open { path: String, source: rusqlite::Error },
    #[error("the state store has schema version {found}; this evosync knows up to {known} (upgrade evosync)")]
    TooNew { found: i64, known: i64 },
    #[error("there is no party '{0}' (evosync party add {0})")]
    NoSuchParty(String),
    #[error("party '{0}' exists already")]
    PartyExists(String),
    #[error("this key ({fingerprint}) is registered already, to party '{party}'; one key names one party")]
    KeyRegistered { fingerprint: String, party: String },
    #[error("there is no SSH key '{0}' (give its id or its SHA256: fingerprint)")]
    NoSuchSshKey(String),
    #[error("there is no API key '{0}'")]
    NoSuchApiKey(String),
    #[error("there is no admin token '{0}' (evosync admin-token list)")]
    NoSuchAdminToken(String),
    #[error("run '{run}' belongs to another party")]
    RunOwned { run: String, owner: String },
    #[error("the state store stayed busy: {0}")]
    Busy(String),
}

/// What a store error means to the caller, for both doors' status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The thing asked for is not there.
    NotFound,
    /// It clashes with what is there (a name or key taken, another party's run).
    Conflict,
    /// The store stayed busy; retry.
    Busy,
    /// The store itself failed.
    Broken,
}

impl StoreError {
    pub fn kind(&self) -> StoreErrorKind {
        use StoreError::*;
        match self {
            NoSuchParty(_) | NoSuchSshKey(_) | NoSuchApiKey(_) | NoSuchAdminToken(_) => StoreErrorKind::NotFound,
            PartyExists(_) | KeyRegistered { .. } | RunOwned { .. } => StoreErrorKind::Conflict,
            Busy(_) => StoreErrorKind::Busy,
            Sqlite(_) | Open { .. } | TooNew { .. } => StoreErrorKind::Broken,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    pub fn open(path: &Path) -> Result<Store> {
        let conn =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let store = Store::configure(conn)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing store without creating it, for the gate and AuthorizedKeysCommand: cheap, and a missing
    /// store is an error rather than an empty one.
    pub fn open_existing(path: &Path) -> Result<Store> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let store = Store::configure(conn)?;
        let version: i64 = store.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != MIGRATIONS.len() as i64 {
            store.migrate()?;
        }
        Ok(store)
    }

    fn configure(conn: Connection) -> Result<Store> {
        conn.busy_timeout(Duration::from_secs(10))?;
        // Every gate and AuthorizedKeysCommand process is the last connection when it closes; without this each
        // would checkpoint (and fsync) on its way out. Checkpoints then come from the automatic ones instead.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        // journal_mode=WAL is persistent; asking again on every open costs a write lock check, so ask only when needed.
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
        }
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        Ok(Store { conn })
    }

    fn migrate(&self) -> Result<()> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { found: version, known });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Runs `f` in one write transaction (IMMEDIATE: it takes the write lock first, so two writers never deadlock
    /// upgrading); inside one already, as part of it.
    pub fn in_transaction<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        if !self.conn.is_autocommit() {
            return f(self);
        }
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let value = f(self)?;
        tx.commit()?;
        Ok(value)
    }

    /// Runs `f` in one IMMEDIATE transaction: the store's write lock is taken first, so no other writer comes between
    /// what `f` reads and what it writes; committed when `f` returns `Ok`, rolled back otherwise (and by a crash).
    pub fn immediate<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f()?;
        tx.commit().map_err(StoreError::from)?;
        Ok(value)
    }

    /// Direct access for tests that must tamper with the store.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::now;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        (dir, store)
    }

    fn key(id: &str, party: &str, blob: &str) -> SshKey {
        SshKey {
            id: id.into(),
            party: party.into(),
            algorithm: "ssh-ed25519".into(),
            blob: blob.into(),
            fingerprint: format!("SHA256:{blob}"),
            comment: String::new(),
            from: vec![],
            expires_at: None,
            created_at: now(),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn migrations_run_once_and_reopen_cheaply() {
        let (dir, store) = store();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(store);
        let again = Store::open_existing(&dir.path().join(STORE_FILE)).unwrap();
        assert_eq!(again.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(Store::open_existing(&dir.path().join("missing.db")).is_err());
    }

    #[test]
    fn admin_tokens_from_before_expiry_existed_get_the_default_lifetime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let conn = Connection::open(&path).unwrap();
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute("INSERT INTO admin_tokens (id, hash, created_at) VALUES ('old', 'h', 1)", []).unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        let token = store.admin_token("old").unwrap().unwrap();
        let lifetime = token.expires_at.unwrap() - now();
        assert!((90 * 86_400 - 60..=90 * 86_400).contains(&lifetime), "{lifetime}");
        assert_eq!((token.revoked_at, token.name.as_str()), (None, ""));
        assert!(store.revoke_admin_token("old").unwrap().revoked_at.is_some());
        assert!(matches!(store.revoke_admin_token("nope"), Err(StoreError::NoSuchAdminToken(_))));
    }

    #[test]
    fn one_key_names_one_party_and_one_run_belongs_to_one_party() {
        let (_dir, store) = store();
        store.add_party("acme").unwrap();
        store.add_party("beta").unwrap();
        assert!(matches!(store.add_party("acme"), Err(StoreError::PartyExists(_))));
        store.add_ssh_key(&key("k1", "acme", "AAA")).unwrap();
        match store.add_ssh_key(&key("k2", "beta", "AAA")) {
            Err(StoreError::KeyRegistered { party, .. }) => assert_eq!(party, "acme"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(store.add_ssh_key(&key("k3", "nobody", "BBB")), Err(StoreError::NoSuchParty(_))));
        assert!(store.claim_run("acme", "R1").unwrap());
        assert!(!store.claim_run("acme", "R1").unwrap());
        assert!(matches!(store.claim_run("beta", "R1"), Err(StoreError::RunOwned { .. })));
    }

    #[test]
    fn revoked_expired_and_disabled_keys_are_not_active() {
        let (_dir, store) = store();
        store.add_party("acme").unwrap();
        store.add_ssh_key(&key("live", "acme", "A")).unwrap();
        store.add_ssh_key(&key("gone", "acme", "B")).unwrap();
        store.add_ssh_key(&SshKey { expires_at: Some(now() - 10), ..key("old", "acme", "C") }).unwrap();
        store.revoke_ssh_key("SHA256:B").unwrap();
        let active: Vec<String> =
            crate::access::active_ssh_keys(&store, now()).unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(active, ["live"]);
        store.set_party_enabled("acme", false).unwrap();
        assert!(crate::access::active_ssh_keys(&store, now()).unwrap().is_empty());
        let (found, enabled) = store.ssh_key_by_blob("ssh-ed25519", "A").unwrap().unwrap();
        assert_eq!((found.id.as_str(), enabled), ("live", false));
    }

    #[test]
    fn the_audit_chain_verifies_and_finds_the_first_break() {
        let (_dir, store) = store();
        for n in 0..5 {
            let subject = n.to_string();
            store
                .append_audit(&AuditEntry {
                    actor: "admin",
                    action: AuditAction::Test,
                    subject: &subject,
                    outcome: "ok",
                    ..Default::default()
                })
                .unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 5 });
        store.connection().execute("UPDATE audit SET detail = 'edited' WHERE seq = 3", []).unwrap();
        assert!(matches!(store.verify_audit().unwrap(), ChainCheck::Broken { seq: 3, .. }));
        store.connection().execute("UPDATE audit SET detail = '' WHERE seq = 3", []).unwrap();
        store.connection().execute("DELETE FROM audit WHERE seq = 2", []).unwrap();
        assert!(matches!(store.verify_audit().unwrap(), ChainCheck::Broken { seq: 3, .. }));
    }
}
