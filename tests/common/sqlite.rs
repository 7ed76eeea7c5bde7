//! SQLite files shaped like the workers', and what the tests read back from replicas.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn open(path: &Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    db
}

/// Pseudo-random bytes (xorshift), so pages differ and do not compress.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A WAL database like the workers': `TABLE (id TEXT PRIMARY KEY, data BLOB)` plus `metadata(key, value)`.
pub fn make_db(path: &Path, table: &str, rows: usize, blob_bytes: usize) {
    let db = open(path);
    db.pragma_update(None, "page_size", 4096).unwrap();
    db.pragma_update(None, "journal_mode", "wal").unwrap();
    db.pragma_update(None, "synchronous", "normal").unwrap();
    db.execute_batch(&format!(
        "CREATE TABLE {table} (id TEXT PRIMARY KEY, data BLOB);\n\
         CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);\n\
         INSERT INTO metadata VALUES ('creationDate', '2026-11-25T00:00:00Z');"
    ))
    .unwrap();
    drop(db);
    insert_rows(path, table, rows, blob_bytes);
}

/// Appends `rows` rows with increasing ULID-like ids, as a worker does.
pub fn insert_rows(path: &Path, table: &str, rows: usize, blob_bytes: usize) {
    let mut db = open(path);
    let tx = db.transaction().unwrap();
    let start: i64 = tx.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap();
    {
        let mut insert = tx.prepare(&format!("INSERT OR REPLACE INTO {table} (id, data) VALUES (?1, ?2)")).unwrap();
        for n in start..start + rows as i64 {
            insert.execute(rusqlite::params![row_id(n as u64), noise(n as u64, blob_bytes)]).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The id of the `n`th row `insert_rows` writes (from 0).
pub fn row_id(n: u64) -> String {
    format!("01KFYA{n:020}")
}

/// Rewrites the data of the first `rows` rows.
pub fn update_rows(path: &Path, table: &str, rows: usize) {
    let db = open(path);
    db.execute(
        &format!("UPDATE {table} SET data = randomblob(length(data)) WHERE id IN (SELECT id FROM {table} ORDER BY id LIMIT ?1)"),
        [rows as i64],
    )
    .unwrap();
}

/// Row count and a hash of every table's rows in order: equal digests, equal contents.
pub fn db_digest(path: &Path) -> String {
    read_as_owner(path, |db| {
        let mut hasher = DefaultHasher::new();
        let mut rows = 0u64;
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for table in tables {
            table.hash(&mut hasher);
            let mut statement = db.prepare(&format!("SELECT * FROM {table} ORDER BY 1")).unwrap();
            let columns = statement.column_count();
            let mut cursor = statement.query([]).unwrap();
            while let Some(row) = cursor.next().unwrap() {
                rows += 1;
                for i in 0..columns {
                    format!("{:?}", row.get_ref(i).unwrap()).hash(&mut hasher);
                }
            }
        }
        format!("{rows} rows, {:016x}", hasher.finish())
    })
}

/// `PRAGMA integrity_check` says ok.
pub fn integrity_ok(path: &Path) -> bool {
    read_as_owner(path, |db| db.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap() == "ok")
}

/// Reads a database and leaves any -wal/-shm it made owned like the database, so a replica stays writable by the
/// gate account that owns it.
fn read_as_owner<T>(path: &Path, read: impl FnOnce(&rusqlite::Connection) -> T) -> T {
    assert!(path.exists(), "{} does not exist", path.display());
    let meta = std::fs::metadata(path).unwrap();
    let result = {
        let db = open(path);
        read(&db)
    };
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", path.display()));
        if companion.exists() {
            let _ = std::os::unix::fs::chown(&companion, Some(meta.uid()), Some(meta.gid()));
        }
    }
    result
}
