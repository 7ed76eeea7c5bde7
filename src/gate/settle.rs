//! Settling a replica after a push that broke off (a signal, the wall clock, the memory limit): the stock replica side
//! was stopped mid-write, which can leave a write-ahead log (or, for a rollback-journal database, a hot journal) that
//! only a writer can fold in or roll back. A read-only opener, such as the catalog's schema check, cannot. The gate
//! starts itself again as `evosync-gate settle-replica DATABASE`, under the same sandbox as the sync (its run folder
//! only, no sockets, the same memory and file-size limits): SQLite recovers the database (rolls back what was not
//! committed, keeps what was) and checkpoints its log into it.

use crate::config::Config;
use crate::fs::confine::RunFolder;
use crate::fs::sandbox::Sandbox;
use crate::size::ByteSize;
use std::os::fd::AsFd;
use std::path::Path;

/// How long settling may take.
const SETTLE_SECONDS: u64 = 120;

/// Settles `database` in `folder` in a confined child. Returns why it could not.
pub fn replica(config: &Config, folder: &RunFolder, database: &str, memory: ByteSize) -> Result<(), String> {
    if folder.database_size(database).is_none() {
        return Ok(());
    }
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let sandbox = Sandbox::prepare(&program, &folder.fd, false).map_err(|e| e.to_string())?;
    let memory = super::memory::ChildMemory::prepare(memory, config.sync_cgroup.as_deref());
    let launch = super::handover::Launch {
        program: &program,
        args: vec!["settle-replica".into(), database.into()],
        run_folder: folder.fd.as_fd(),
        fsize_limit: u64::MAX,
        sandbox,
        memory,
        max_seconds: SETTLE_SECONDS,
    };
    let outcome = super::handover::run(launch).map_err(|e| e.to_string())?;
    if outcome.exit.succeeded() {
        Ok(())
    } else {
        Err(format!("settle-replica ended with {}", outcome.exit))
    }
}

/// `evosync-gate settle-replica DATABASE`, in its run folder: opens the database for writing (nothing of its schema
/// trusted, no triggers, no views), which recovers it, and checkpoints its log into it.
pub fn main(database: &Path) -> Result<(), String> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = rusqlite::Connection::open_with_flags(database, flags).map_err(|e| e.to_string())?;
    for (setting, on) in [
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        conn.set_db_config(setting, on).map_err(|e| e.to_string())?;
    }
    conn.execute_batch("PRAGMA mmap_size = 0; PRAGMA cache_size = -8192;").map_err(|e| e.to_string())?;
    // A read transaction recovers the database: a hot journal is rolled back, a log read up to its last commit.
    conn.query_row("PRAGMA user_version", [], |_| Ok(())).map_err(|e| e.to_string())?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if mode.eq_ignore_ascii_case("wal") {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| e.to_string())?;
    }
    Ok(())
}
