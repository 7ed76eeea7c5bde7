//! The state store: SQLite at `state_dir/state.db` (WAL, foreign keys, a busy timeout, migrations by
//! `user_version`). Parties, SSH keys, API keys, runs, the sync ledger the gate writes, and a SHA-256 hash-chained
//! audit trail of every admin action and gate decision.

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

pub const STORE_FILE: &str = "state.db";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    #[error("run '{run}' belongs to another party")]
    RunOwned { run: String, owner: String },
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Party {
    pub name: String,
    pub enabled: bool,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SshKey {
    pub id: String,
    pub party: String,
    pub algorithm: String,
    pub blob: String,
    pub fingerprint: String,
    pub comment: String,
    pub from: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub party: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// Why a key may not be used now; `None` when it may.
pub fn key_state(
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    party_enabled: bool,
    now: i64,
) -> Option<&'static str> {
    if revoked_at.is_some() {
        Some("revoked")
    } else if expires_at.is_some_and(|at| at <= now) {
        Some("expired")
    } else if !party_enabled {
        Some("party disabled")
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub name: String,
    pub party: String,
    pub created_at: i64,
    pub template_name: Option<String>,
    pub ecosystem_variant: Option<String>,
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LedgerRow {
    pub party: String,
    pub key_id: Option<String>,
    pub run: String,
    pub database: String,
    pub started_at: i64,
    pub seconds: f64,
    pub exit: String,
    pub replica_bytes: Option<u64>,
}

/// An analysis file the service stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileRecord {
    pub party: String,
    pub run: String,
    pub subdir: String,
    pub name: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: String,
    pub stored_at: i64,
}

/// An audit record before it is chained.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub party: &'a str,
    pub subject: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub party: String,
    pub subject: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ChainCheck {
    Intact { records: u64 },
    Broken { seq: i64, reason: String },
}

pub struct Store {
    conn: Connection,
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// RFC 3339 in UTC, for people and JSON.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// `2027-01-31` (midnight UTC) or a full RFC 3339 time, as unix seconds.
pub fn parse_date(text: &str) -> std::result::Result<i64, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(at.unix_timestamp());
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &format)
        .map(|date| date.midnight().assume_utc().unix_timestamp())
        .map_err(|_| format!("'{text}' is not a date (write 2027-01-31 or 2027-01-31T12:00:00Z)"))
}

/// A new identifier: 16 hex digits of a random UUID.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
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

    // ---- parties ----

    pub fn add_party(&self, name: &str) -> Result<Party> {
        let at = now();
        match self.conn.execute("INSERT INTO parties (name, enabled, created_at) VALUES (?1, 1, ?2)", params![name, at])
        {
            Ok(_) => Ok(Party { name: name.to_owned(), enabled: true, created_at: at }),
            Err(e) if is_constraint(&e) => Err(StoreError::PartyExists(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    pub fn party(&self, name: &str) -> Result<Option<Party>> {
        Ok(self
            .conn
            .query_row("SELECT name, enabled, created_at FROM parties WHERE name = ?1", [name], party_row)
            .optional()?)
    }

    pub fn require_party(&self, name: &str) -> Result<Party> {
        self.party(name)?.ok_or_else(|| StoreError::NoSuchParty(name.to_owned()))
    }

    pub fn parties(&self) -> Result<Vec<Party>> {
        let mut statement = self.conn.prepare("SELECT name, enabled, created_at FROM parties ORDER BY name")?;
        let rows = statement.query_map([], party_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn set_party_enabled(&self, name: &str, enabled: bool) -> Result<Party> {
        if self.conn.execute("UPDATE parties SET enabled = ?2 WHERE name = ?1", params![name, enabled])? == 0 {
            return Err(StoreError::NoSuchParty(name.to_owned()));
        }
        self.require_party(name)
    }

    // ---- SSH keys ----

    pub fn add_ssh_key(&self, key: &SshKey) -> Result<()> {
        self.require_party(&key.party)?;
        let inserted = self.conn.execute(
            "INSERT INTO ssh_keys (id, party, algorithm, blob, fingerprint, comment, from_cidrs, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                key.id,
                key.party,
                key.algorithm,
                key.blob,
                key.fingerprint,
                key.comment,
                key.from.join(","),
                key.expires_at,
                key.created_at
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => {
                let party: String = self
                    .conn
                    .query_row(
                        "SELECT party FROM ssh_keys WHERE fingerprint = ?1 OR blob = ?2",
                        params![key.fingerprint, key.blob],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or_default();
                Err(StoreError::KeyRegistered { fingerprint: key.fingerprint.clone(), party })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn ssh_keys(&self, party: Option<&str>) -> Result<Vec<SshKey>> {
        let sql = format!("{SSH_KEY_SELECT} WHERE (?1 IS NULL OR party = ?1) ORDER BY party, created_at, id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([party], ssh_key_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// By id or by `SHA256:` fingerprint.
    pub fn ssh_key(&self, id_or_fingerprint: &str) -> Result<Option<SshKey>> {
        let sql = format!("{SSH_KEY_SELECT} WHERE id = ?1 OR fingerprint = ?1");
        Ok(self.conn.query_row(&sql, [id_or_fingerprint], ssh_key_row).optional()?)
    }

    /// The one indexed lookup AuthorizedKeysCommand makes: the key sshd was presented, with its party's state.
    pub fn ssh_key_by_blob(&self, algorithm: &str, blob: &str) -> Result<Option<(SshKey, bool)>> {
        let sql = "SELECT k.id, k.party, k.algorithm, k.blob, k.fingerprint, k.comment, k.from_cidrs, k.expires_at, \
                   k.created_at, k.revoked_at, k.last_used_at, p.enabled FROM ssh_keys k \
                   JOIN parties p ON p.name = k.party WHERE k.blob = ?1 AND k.algorithm = ?2";
        Ok(self
            .conn
            .query_row(sql, [blob, algorithm], |row| Ok((ssh_key_row(row)?, row.get::<_, bool>(11)?)))
            .optional()?)
    }

    /// A key with its party's state, for the gate.
    pub fn ssh_key_with_party(&self, id: &str) -> Result<Option<(SshKey, bool)>> {
        let sql = "SELECT k.id, k.party, k.algorithm, k.blob, k.fingerprint, k.comment, k.from_cidrs, k.expires_at, \
                   k.created_at, k.revoked_at, k.last_used_at, p.enabled FROM ssh_keys k \
                   JOIN parties p ON p.name = k.party WHERE k.id = ?1";
        Ok(self.conn.query_row(sql, [id], |row| Ok((ssh_key_row(row)?, row.get::<_, bool>(11)?))).optional()?)
    }

    pub fn revoke_ssh_key(&self, id_or_fingerprint: &str) -> Result<SshKey> {
        let key = self.ssh_key(id_or_fingerprint)?.ok_or_else(|| StoreError::NoSuchSshKey(id_or_fingerprint.into()))?;
        self.conn.execute(
            "UPDATE ssh_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
            params![key.id, now()],
        )?;
        Ok(self.ssh_key(&key.id)?.unwrap_or(key))
    }

    pub fn touch_ssh_key(&self, id: &str) -> Result<()> {
        self.conn.execute("UPDATE ssh_keys SET last_used_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }

    /// Keys that may log in now: not revoked, not expired, of an enabled party.
    pub fn active_ssh_keys(&self) -> Result<Vec<SshKey>> {
        let sql = "SELECT k.id, k.party, k.algorithm, k.blob, k.fingerprint, k.comment, k.from_cidrs, k.expires_at, \
                   k.created_at, k.revoked_at, k.last_used_at FROM ssh_keys k JOIN parties p ON p.name = k.party \
                   WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > ?1) AND p.enabled \
                   ORDER BY k.party, k.created_at, k.id";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([now()], ssh_key_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- API keys ----

    pub fn add_api_key(&self, key: &ApiKey) -> Result<()> {
        self.require_party(&key.party)?;
        self.conn.execute(
            "INSERT INTO api_keys (id, party, name, secret_hash, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.id, key.party, key.name, key.secret_hash, key.expires_at, key.created_at],
        )?;
        Ok(())
    }

    pub fn api_keys(&self, party: Option<&str>) -> Result<Vec<ApiKey>> {
        let sql = format!("{API_KEY_SELECT} WHERE (?1 IS NULL OR k.party = ?1) ORDER BY k.party, k.created_at, k.id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows =
            statement.query_map([party], |r| api_key_row(r).map(|(k, _)| k))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// An API key with its party's state.
    pub fn api_key(&self, id: &str) -> Result<Option<(ApiKey, bool)>> {
        let sql = format!("{API_KEY_SELECT} WHERE k.id = ?1");
        Ok(self.conn.prepare_cached(&sql)?.query_row([id], api_key_row).optional()?)
    }

    pub fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        if self
            .conn
            .execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1", params![id, now()])?
            == 0
        {
            return Err(StoreError::NoSuchApiKey(id.to_owned()));
        }
        self.api_key(id)?.map(|(k, _)| k).ok_or_else(|| StoreError::NoSuchApiKey(id.to_owned()))
    }

    pub fn touch_api_key(&self, id: &str) -> Result<()> {
        self.conn.execute("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }

    // ---- runs ----

    /// Claims `run` for `party`: `Ok(true)` when newly claimed, `Ok(false)` when the party had it already.
    pub fn claim_run(&self, party: &str, run: &str) -> Result<bool> {
        let inserted = self.conn.execute(
            "INSERT INTO runs (name, party, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![run, party, now()],
        )?;
        if inserted == 1 {
            return Ok(true);
        }
        let owner: String = self.conn.query_row("SELECT party FROM runs WHERE name = ?1", [run], |r| r.get(0))?;
        if owner == party {
            Ok(false)
        } else {
            Err(StoreError::RunOwned { run: run.to_owned(), owner })
        }
    }

    pub fn run(&self, name: &str) -> Result<Option<Run>> {
        let sql =
            "SELECT name, party, created_at, template_name, ecosystem_variant, started_at FROM runs WHERE name = ?1";
        Ok(self.conn.prepare_cached(sql)?.query_row([name], run_row).optional()?)
    }

    pub fn runs(&self, party: Option<&str>) -> Result<Vec<Run>> {
        let sql = "SELECT name, party, created_at, template_name, ecosystem_variant, started_at FROM runs \
                   WHERE (?1 IS NULL OR party = ?1) ORDER BY party, name";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([party], run_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stores a run's registration metadata once; a second registration changes nothing.
    pub fn set_run_metadata(
        &self,
        run: &str,
        template: Option<&str>,
        variant: Option<&str>,
        started: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET template_name = coalesce(template_name, ?2), ecosystem_variant = coalesce(ecosystem_variant, ?3), \
             started_at = coalesce(started_at, ?4) WHERE name = ?1",
            params![run, template, variant, started],
        )?;
        Ok(())
    }

    // ---- sync ledger ----

    pub fn record_sync(&self, row: &LedgerRow) -> Result<()> {
        self.conn.execute(
            "INSERT INTO sync_ledger (party, key_id, run, database, started_at, seconds, exit, replica_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                row.party,
                row.key_id,
                row.run,
                row.database,
                row.started_at,
                row.seconds,
                row.exit,
                row.replica_bytes.map(|b| b as i64)
            ],
        )?;
        Ok(())
    }

    /// The newest push of each database of a run.
    pub fn last_syncs(&self, party: &str, run: &str) -> Result<Vec<LedgerRow>> {
        let sql = "SELECT party, key_id, run, database, started_at, seconds, exit, replica_bytes FROM sync_ledger \
                   WHERE id IN (SELECT max(id) FROM sync_ledger WHERE party = ?1 AND run = ?2 GROUP BY database) \
                   ORDER BY database";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([party, run], ledger_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn ledger_after(&self, after_id: i64, limit: u32) -> Result<Vec<(i64, LedgerRow)>> {
        let sql = "SELECT party, key_id, run, database, started_at, seconds, exit, replica_bytes, id FROM sync_ledger \
                   WHERE id > ?1 ORDER BY id LIMIT ?2";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement
            .query_map(params![after_id, limit], |r| Ok((r.get(8)?, ledger_row(r)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- analysis files ----

    /// Remembers a stored file's size, mtime and SHA-256, so listings need not read files again.
    pub fn record_file(&self, file: &FileRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO analysis_files (party, run, subdir, name, size, mtime_ns, sha256, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (party, run, subdir, name) DO UPDATE SET
                   size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, stored_at = excluded.stored_at",
            )?
            .execute(params![
                file.party,
                file.run,
                file.subdir,
                file.name,
                file.size as i64,
                file.mtime_ns,
                file.sha256,
                file.stored_at
            ])?;
        Ok(())
    }

    /// What the store remembers of the files in one folder.
    pub fn files_in(&self, party: &str, run: &str, subdir: &str) -> Result<Vec<FileRecord>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT party, run, subdir, name, size, mtime_ns, sha256, stored_at FROM analysis_files \
             WHERE party = ?1 AND run = ?2 AND subdir = ?3",
        )?;
        let rows = statement
            .query_map([party, run, subdir], |r| {
                Ok(FileRecord {
                    party: r.get(0)?,
                    run: r.get(1)?,
                    subdir: r.get(2)?,
                    name: r.get(3)?,
                    size: r.get::<_, i64>(4)?.max(0) as u64,
                    mtime_ns: r.get(5)?,
                    sha256: r.get(6)?,
                    stored_at: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Per folder of a run: how many files were uploaded, and when the newest came.
    pub fn file_counts(&self, party: &str, run: &str) -> Result<Vec<(String, u64, i64)>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT subdir, count(*), max(stored_at) FROM analysis_files WHERE party = ?1 AND run = ?2 \
             GROUP BY subdir ORDER BY subdir",
        )?;
        let rows = statement
            .query_map([party, run], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Pushes by outcome, for metrics.
    pub fn pushes_by_exit(&self) -> Result<Vec<(String, u64)>> {
        let mut statement =
            self.conn.prepare_cached("SELECT exit, count(*) FROM sync_ledger GROUP BY exit ORDER BY exit")?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn last_ledger_id(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce(max(id), 0) FROM sync_ledger", [], |r| r.get(0))?)
    }

    // ---- audit ----

    /// Appends one record to the hash chain; concurrent writers are serialised by SQLite's write lock.
    pub fn append_audit(&self, entry: &AuditEntry<'_>) -> Result<AuditRecord> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let (last_seq, prev_hash): (i64, String) = tx
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, GENESIS.to_owned()));
        let mut record = AuditRecord {
            seq: last_seq + 1,
            at: now(),
            actor: entry.actor.to_owned(),
            action: entry.action.to_owned(),
            party: entry.party.to_owned(),
            subject: entry.subject.to_owned(),
            outcome: entry.outcome.to_owned(),
            detail: entry.detail.to_owned(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = chain_hash(&record);
        tx.execute(
            "INSERT INTO audit (seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                record.seq,
                record.at,
                record.actor,
                record.action,
                record.party,
                record.subject,
                record.outcome,
                record.detail,
                record.prev_hash,
                record.hash
            ],
        )?;
        tx.commit()?;
        Ok(record)
    }

    /// Records after `after_seq`, oldest first.
    pub fn audit(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after_seq, limit], audit_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Walks the chain and reports the first record whose link or hash does not hold.
    pub fn verify_audit(&self) -> Result<ChainCheck> {
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        let (mut expected_prev, mut expected_seq, mut count) = (GENESIS.to_owned(), 1i64, 0u64);
        while let Some(row) = rows.next()? {
            let record = audit_row(row)?;
            let broken = |reason: &str| Ok(ChainCheck::Broken { seq: record.seq, reason: reason.to_owned() });
            if record.seq != expected_seq {
                return broken(&format!("record {expected_seq} is missing"));
            }
            if record.prev_hash != expected_prev {
                return broken("its prev_hash is not the hash of the record before");
            }
            if chain_hash(&record) != record.hash {
                return broken("its contents do not match its hash (edited)");
            }
            expected_prev = record.hash;
            expected_seq += 1;
            count += 1;
        }
        Ok(ChainCheck::Intact { records: count })
    }

    // ---- admin tokens ----

    pub fn add_admin_token(&self, id: &str, hash: &str) -> Result<()> {
        self.conn
            .execute("INSERT INTO admin_tokens (id, hash, created_at) VALUES (?1, ?2, ?3)", params![id, hash, now()])?;
        Ok(())
    }

    pub fn admin_token_hash(&self, id: &str) -> Result<Option<String>> {
        Ok(self.conn.query_row("SELECT hash FROM admin_tokens WHERE id = ?1", [id], |r| r.get(0)).optional()?)
    }

    /// Runs `f` in one transaction (bulk inserts for benchmarks and imports).
    pub fn in_transaction<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction()?;
        let value = f(self)?;
        tx.commit()?;
        Ok(value)
    }

    /// Direct access for tests that must tamper with the store.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// SHA-256 over the previous hash and every field, each length-prefixed so no two records hash alike by accident.
fn chain_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    let seq = record.seq.to_string();
    let at = record.at.to_string();
    for field in [
        record.prev_hash.as_str(),
        &seq,
        &at,
        &record.actor,
        &record.action,
        &record.party,
        &record.subject,
        &record.outcome,
        &record.detail,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn is_constraint(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ConstraintViolation)
}

const SSH_KEY_SELECT: &str = "SELECT id, party, algorithm, blob, fingerprint, comment, from_cidrs, expires_at, \
                              created_at, revoked_at, last_used_at FROM ssh_keys";
const API_KEY_SELECT: &str = "SELECT k.id, k.party, k.name, k.secret_hash, k.expires_at, k.created_at, k.revoked_at, \
                              k.last_used_at, p.enabled FROM api_keys k JOIN parties p ON p.name = k.party";

fn party_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Party> {
    Ok(Party { name: row.get(0)?, enabled: row.get(1)?, created_at: row.get(2)? })
}

fn ssh_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SshKey> {
    let from: String = row.get(6)?;
    Ok(SshKey {
        id: row.get(0)?,
        party: row.get(1)?,
        algorithm: row.get(2)?,
        blob: row.get(3)?,
        fingerprint: row.get(4)?,
        comment: row.get(5)?,
        from: from.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        expires_at: row.get(7)?,
        created_at: row.get(8)?,
        revoked_at: row.get(9)?,
        last_used_at: row.get(10)?,
    })
}

fn api_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiKey, bool)> {
    Ok((
        ApiKey {
            id: row.get(0)?,
            party: row.get(1)?,
            name: row.get(2)?,
            secret_hash: row.get(3)?,
            expires_at: row.get(4)?,
            created_at: row.get(5)?,
            revoked_at: row.get(6)?,
            last_used_at: row.get(7)?,
        },
        row.get(8)?,
    ))
}

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        name: row.get(0)?,
        party: row.get(1)?,
        created_at: row.get(2)?,
        template_name: row.get(3)?,
        ecosystem_variant: row.get(4)?,
        started_at: row.get(5)?,
    })
}

fn ledger_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        party: row.get(0)?,
        key_id: row.get(1)?,
        run: row.get(2)?,
        database: row.get(3)?,
        started_at: row.get(4)?,
        seconds: row.get(5)?,
        exit: row.get(6)?,
        replica_bytes: row.get::<_, Option<i64>>(7)?.map(|b| b.max(0) as u64),
    })
}

fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get(0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        party: row.get(4)?,
        subject: row.get(5)?,
        outcome: row.get(6)?,
        detail: row.get(7)?,
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let active: Vec<String> = store.active_ssh_keys().unwrap().into_iter().map(|k| k.id).collect();
        assert_eq!(active, ["live"]);
        store.set_party_enabled("acme", false).unwrap();
        assert!(store.active_ssh_keys().unwrap().is_empty());
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
                    action: "test",
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

    #[test]
    fn dates() {
        assert_eq!(parse_date("2027-01-01").unwrap(), 1_798_761_600);
        assert_eq!(parse_date("2027-01-01T00:00:10Z").unwrap(), 1_798_761_610);
        assert!(parse_date("tomorrow").is_err());
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }
}
