//! Backups of the state store: a copy of the live store at one moment, through SQLite's online backup API, while the
//! service and the gates go on writing (`Store::backup_to`); what a store holds (`Summary`); and the checks a file
//! must pass before it may become the store again (`check_candidate`). Placing files, their owners and modes, and
//! keeping the service out are `admin::backup`'s.

use super::{AuditRecord, ChainCheck, Result, Seal, Store, StoreError, MIGRATIONS};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};
use std::path::Path;
use std::time::{Duration, Instant};

/// The tables the first migration made: a file without any of them is no evosync store.
const STORE_TABLES: &[&str] = &["admin_tokens", "api_keys", "audit", "parties", "runs", "ssh_keys", "sync_ledger"];

/// How long a backup waits for the store when a writer holds it in a way that blocks a reader (a checkpoint that
/// truncates the WAL, or a change of journal mode); WAL readers do not wait otherwise.
const BUSY_WAIT: Duration = Duration::from_secs(60);

/// Why a file cannot become the state store.
#[derive(Debug, thiserror::Error)]
pub enum CandidateError {
    #[error("it is not an SQLite database ({0})")]
    NotSqlite(String),
    #[error("it is an SQLite database but no evosync state store: it has no table {missing} (its tables: {tables})")]
    Foreign { missing: String, tables: String },
    #[error("its schema version is {found}; this evosync knows up to {known} (restore it with a newer evosync)")]
    TooNew { found: i64, known: i64 },
    #[error("it is corrupt: {0}")]
    Corrupt(String),
    #[error("its audit chain breaks at record {seq}: {reason}")]
    AuditBroken { seq: i64, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Rows per table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub parties: u64,
    pub ssh_keys: u64,
    pub api_keys: u64,
    pub admin_tokens: u64,
    pub runs: u64,
    pub analysis_files: u64,
    pub ledger_rows: u64,
    pub verifications: u64,
    pub audit_records: u64,
    pub audit_seals: u64,
}

/// What a store holds, as `evosync backup` and `evosync restore` report it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    pub schema_version: i64,
    pub counts: Counts,
    /// The newest push in the ledger (0: none).
    pub last_ledger_id: i64,
    pub last_audit: Option<AuditRecord>,
    /// Where the chain in the store starts, when older records were archived.
    pub audit_seal: Option<Seal>,
}

impl Store {
    /// Copies the whole store into `dest` (a new or empty file) in one step of SQLite's online backup API: one read
    /// transaction, so the copy is the store at one moment, whoever writes meanwhile. The copy is left in rollback
    /// journal mode, one self-contained file.
    pub fn backup_to(&self, dest: &Path) -> Result<()> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut target = Connection::open_with_flags(dest, flags)
            .map_err(|source| StoreError::Open { path: dest.display().to_string(), source })?;
        {
            let backup = Backup::new(&self.conn, &mut target)?;
            let deadline = Instant::now() + BUSY_WAIT;
            loop {
                match backup.step(-1)? {
                    StepResult::Done => break,
                    _ if Instant::now() >= deadline => {
                        return Err(StoreError::Busy(format!(
                            "the backup could not read it for {} s",
                            BUSY_WAIT.as_secs()
                        )))
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        // The pages came with the live store's header, which says WAL.
        target.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get::<_, String>(0))?;
        target.close().map_err(|(_, error)| error)?;
        Ok(())
    }

    /// The schema version, rows per table, the newest ledger row and audit record, and the newest seal.
    pub fn summary(&self) -> Result<Summary> {
        let count = |table: &str| -> Result<u64> {
            let rows: i64 = self.conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            Ok(rows.max(0) as u64)
        };
        let counts = Counts {
            parties: count("parties")?,
            ssh_keys: count("ssh_keys")?,
            api_keys: count("api_keys")?,
            admin_tokens: count("admin_tokens")?,
            runs: count("runs")?,
            analysis_files: count("analysis_files")?,
            ledger_rows: count("sync_ledger")?,
            verifications: count("verifications")?,
            audit_records: count("audit")?,
            audit_seals: count("audit_seals")?,
        };
        let last_audit = self
            .conn
            .query_row(
                "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
                 ORDER BY seq DESC LIMIT 1",
                [],
                super::audit_chain::audit_row,
            )
            .optional()?;
        Ok(Summary {
            schema_version: self.schema_version()?,
            counts,
            last_ledger_id: self.last_ledger_id()?,
            last_audit,
            audit_seal: self.audit_seals()?.pop(),
        })
    }

    /// Closes a checked candidate as one self-contained file: in WAL mode for the store's place (`wal`), else in
    /// rollback journal mode. Its WAL, if any, is checkpointed into it and removed with its -shm.
    pub fn close_as_one_file(self, wal: bool) -> Result<()> {
        let mode = if wal { "WAL" } else { "DELETE" };
        self.conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get::<_, String>(0))?;
        self.conn.close().map_err(|(_, error)| error)?;
        Ok(())
    }
}

/// Opens `path`, a file that is to become the store (a private copy: the check may migrate it and make its -wal and
/// -shm), and checks it: an SQLite database, an evosync store, of a schema version this binary knows (older ones are
/// migrated), `integrity_check` ok, the audit chain intact. Its connection keeps SQLite's checkpoint on close, so
/// `close_as_one_file` leaves no WAL beside it.
pub fn check_candidate(path: &Path) -> std::result::Result<Store, CandidateError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(StoreError::from)?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unusable)?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .and_then(|mut statement| statement.query_map([], |r| r.get(0))?.collect())
        .map_err(unusable)?;
    if let Some(missing) = STORE_TABLES.iter().find(|table| !tables.iter().any(|t| t == *table)) {
        let tables = if tables.is_empty() { "none".to_owned() } else { tables.join(", ") };
        return Err(CandidateError::Foreign { missing: (*missing).to_owned(), tables });
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(CandidateError::TooNew { found: version, known });
    }
    let findings: Vec<String> = conn
        .prepare("PRAGMA integrity_check(10)")
        .and_then(|mut statement| statement.query_map([], |r| r.get(0))?.collect())
        .map_err(unusable)?;
    if findings != ["ok"] {
        return Err(CandidateError::Corrupt(format!("integrity_check says {}", findings.join("; "))));
    }
    let store = Store { conn };
    store.migrate()?;
    if let ChainCheck::Broken { seq, reason } = store.verify_audit().map_err(store_unusable)? {
        return Err(CandidateError::AuditBroken { seq, reason });
    }
    Ok(store)
}

/// A failure to read a candidate: not a database at all, corrupt, or something else.
fn unusable(error: rusqlite::Error) -> CandidateError {
    match error.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => CandidateError::NotSqlite(error.to_string()),
        Some(ErrorCode::DatabaseCorrupt) => CandidateError::Corrupt(error.to_string()),
        _ => CandidateError::Store(error.into()),
    }
}

fn store_unusable(error: StoreError) -> CandidateError {
    match error {
        StoreError::Sqlite(error) => unusable(error),
        other => CandidateError::Store(other),
    }
}

/// Folds the WAL of the store at `path` into it before the store is set aside, when it opens at all: a store that
/// does not is set aside as it is, WAL and all.
pub fn fold_wal(path: &Path) {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if let Ok(conn) = Connection::open_with_flags(path, flags) {
        let _ = conn.busy_timeout(Duration::from_secs(10));
        let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        let _ = conn.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, STORE_FILE};

    fn append(store: &Store, n: u64) {
        let subject = n.to_string();
        let entry = AuditEntry {
            actor: "gate",
            action: crate::store::AuditAction::Gate,
            subject: &subject,
            outcome: "ok",
            ..Default::default()
        };
        store.append_audit(&entry).unwrap();
    }

    #[test]
    fn a_backup_is_one_moment_of_a_store_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let store = Store::open(&path).unwrap();
        store.add_party("acme").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let store = Store::open_existing(&path).unwrap();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    append(&store, n);
                    n += 1;
                }
                n
            })
        };
        for round in 0..5 {
            let copy = dir.path().join(format!("copy-{round}.db"));
            store.backup_to(&copy).unwrap();
            let checked = check_candidate(&copy).unwrap();
            let summary = checked.summary().unwrap();
            // Every record up to the newest is there: nothing torn, nothing missing.
            assert_eq!(summary.last_audit.map_or(0, |r| r.seq) as u64, summary.counts.audit_records);
            assert_eq!(summary.counts.parties, 1);
            checked.close_as_one_file(false).unwrap();
            for suffix in ["-wal", "-shm", "-journal"] {
                assert!(!dir.path().join(format!("copy-{round}.db{suffix}")).exists(), "{suffix}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(writer.join().unwrap() > 0);
    }

    #[test]
    fn a_candidate_is_closed_as_one_wal_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("candidate.db");
        let store = Store::open(&path).unwrap();
        append(&store, 1);
        drop(store);
        // The store's own connections leave their WAL behind on close.
        assert!(dir.path().join("candidate.db-wal").exists());
        check_candidate(&path).unwrap().close_as_one_file(true).unwrap();
        assert!(!dir.path().join("candidate.db-wal").exists());
        assert!(!dir.path().join("candidate.db-shm").exists());
        let reopened = Store::open_existing(&path).unwrap();
        assert_eq!(reopened.summary().unwrap().counts.audit_records, 1);
    }

    #[test]
    fn foreign_corrupt_newer_and_tampered_files_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.db");
        let store = Store::open(&good).unwrap();
        for n in 0..200 {
            append(&store, n);
        }
        store.backup_to(&dir.path().join("backup.db")).unwrap();
        drop(store);
        let fresh = |name: &str| {
            let path = dir.path().join(name);
            std::fs::copy(dir.path().join("backup.db"), &path).unwrap();
            path
        };

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a database at all, but long enough to be read as a header ".repeat(100)).unwrap();
        assert!(matches!(check_candidate(&text), Err(CandidateError::NotSqlite(_))));

        let worker = dir.path().join("genomes.sqlite");
        Connection::open(&worker).unwrap().execute_batch("CREATE TABLE genomes (id TEXT, data BLOB);").unwrap();
        match check_candidate(&worker) {
            Err(CandidateError::Foreign { tables, .. }) => assert_eq!(tables, "genomes"),
            other => panic!("{:?}", other.err()),
        }

        let newer = fresh("newer.db");
        Connection::open(&newer).unwrap().pragma_update(None, "user_version", 999).unwrap();
        assert!(matches!(check_candidate(&newer), Err(CandidateError::TooNew { found: 999, .. })));

        let tampered = fresh("tampered.db");
        Connection::open(&tampered).unwrap().execute("UPDATE audit SET outcome = 'no' WHERE seq = 7", []).unwrap();
        assert!(matches!(check_candidate(&tampered), Err(CandidateError::AuditBroken { seq: 7, .. })));

        // The audit table's root page overwritten with noise: integrity_check (or the first read) finds it.
        let corrupt = fresh("corrupt.db");
        let db = Connection::open(&corrupt).unwrap();
        let page_size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let root: i64 =
            db.query_row("SELECT rootpage FROM sqlite_schema WHERE name = 'audit'", [], |r| r.get(0)).unwrap();
        drop(db);
        let mut bytes = std::fs::read(&corrupt).unwrap();
        let start = ((root - 1) * page_size) as usize;
        for (i, byte) in bytes[start..start + 200].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        std::fs::write(&corrupt, &bytes).unwrap();
        assert!(matches!(check_candidate(&corrupt), Err(CandidateError::Corrupt(_))));

        let intact = fresh("intact.db");
        assert_eq!(check_candidate(&intact).unwrap().summary().unwrap().counts.audit_records, 200);
    }
}
