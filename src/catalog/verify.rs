//! Whether a pushed database may be published: its header is sane and in WAL mode, its schema is exactly what the
//! policy allows, and `PRAGMA quick_check` passes within a time budget.
//!
//! A replica is untrusted content the readers will execute. `check_header` and `check_schema` are pure decisions over
//! what was read; `inspect` reads it with a hardened SQLite (read-only, no extensions, no views or triggers,
//! `trusted_schema` off, defensive mode, a heap limit, a progress handler that stops at the budget). It runs in a
//! sandboxed child of the service (`evosync catalog inspect`), never in the service itself.

use super::schema::TableSpec;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Why a database is not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the file is not a SQLite database (its header says otherwise)")]
    NotSqlite,
    #[error("the header is not sane: {0}")]
    Header(String),
    #[error("the database is not in WAL mode (header bytes 18 and 19 are {0} and {1}, not 2 and 2); set journal_mode=WAL on the worker")]
    NotWal(u8, u8),
    #[error("it holds {kind} '{name}', which readers would execute; only tables are allowed")]
    Forbidden { kind: String, name: String },
    #[error("it holds table '{0}', which its policy does not list")]
    UnlistedTable(String),
    #[error("it holds index '{0}'; only the automatic indexes of primary keys are allowed")]
    UnlistedIndex(String),
    #[error("table '{0}' is missing")]
    MissingTable(String),
    #[error("table '{table}' has columns {found}; its policy says {expected}")]
    Columns { table: String, found: String, expected: String },
    #[error("table '{0}' is declared WITHOUT ROWID or with generated columns; its policy does not allow that")]
    TableShape(String),
    #[error("PRAGMA quick_check found: {0}")]
    Corrupt(String),
    #[error("the check took longer than its budget of {0} s")]
    TimeBudget(u64),
    #[error("the database cannot be read: {0}")]
    Unreadable(String),
}

/// The first 100 bytes of a database file: magic, page size, file format, WAL mode, encoding.
pub fn check_header(header: &[u8]) -> Result<(), Problem> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return Err(Problem::NotSqlite);
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u32::from(n),
    };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(Problem::Header(format!("page size {page_size}")));
    }
    if (header[18], header[19]) != (2, 2) {
        return Err(Problem::NotWal(header[18], header[19]));
    }
    if header[21] != 64 || header[22] != 32 || header[23] != 32 {
        return Err(Problem::Header("payload fractions are not 64/32/32".into()));
    }
    let encoding = u32::from_be_bytes([header[56], header[57], header[58], header[59]]);
    if !(1..=3).contains(&encoding) {
        return Err(Problem::Header(format!("text encoding {encoding}")));
    }
    if u32::from(header[20]) >= page_size / 2 {
        return Err(Problem::Header(format!("{} reserved bytes per page", header[20])));
    }
    Ok(())
}

/// One row of `sqlite_schema`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaObject {
    pub kind: String,
    pub name: String,
    pub sql: Option<String>,
}

/// One column as the database has it (`pragma_table_xinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub declared_type: String,
    pub primary_key: bool,
    /// 0 for an ordinary column; generated and hidden ones are not allowed.
    pub hidden: i64,
}

/// The schema found against the tables allowed: exactly those tables, each with exactly its columns; besides them
/// only the automatic indexes of primary keys.
pub fn check_schema(
    objects: &[SchemaObject],
    columns: &BTreeMap<String, Vec<Column>>,
    expected: &[TableSpec],
) -> Result<(), Problem> {
    for object in objects {
        let sql = object.sql.as_deref().unwrap_or_default().to_ascii_uppercase();
        match object.kind.as_str() {
            "table" if sql.trim_start().starts_with("CREATE VIRTUAL") => {
                return Err(Problem::Forbidden { kind: "virtual table".into(), name: object.name.clone() });
            }
            "table" if expected.iter().any(|t| t.name.eq_ignore_ascii_case(&object.name)) => {
                if sql.contains("WITHOUT ROWID") || sql.contains("GENERATED") || sql.contains(" AS (") {
                    return Err(Problem::TableShape(object.name.clone()));
                }
            }
            "table" => return Err(Problem::UnlistedTable(object.name.clone())),
            // An automatic index has no SQL of its own.
            "index" if object.sql.is_none() && object.name.starts_with("sqlite_autoindex_") => {}
            "index" => return Err(Problem::UnlistedIndex(object.name.clone())),
            kind => return Err(Problem::Forbidden { kind: kind.to_owned(), name: object.name.clone() }),
        }
    }
    for table in expected {
        let found = columns
            .get(&table.name)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Problem::MissingTable(table.name.clone()))?;
        if found.iter().any(|c| c.hidden != 0) {
            return Err(Problem::TableShape(table.name.clone()));
        }
        let same = found.len() == table.columns.len()
            && found.iter().zip(&table.columns).all(|(have, want)| {
                have.name.eq_ignore_ascii_case(&want.name)
                    && have.declared_type.eq_ignore_ascii_case(&want.declared_type)
                    && have.primary_key == want.primary_key
            });
        if !same {
            let show = |columns: Vec<String>| format!("({})", columns.join(", "));
            return Err(Problem::Columns {
                table: table.name.clone(),
                found: show(found.iter().map(|c| describe(&c.name, &c.declared_type, c.primary_key)).collect()),
                expected: show(
                    table.columns.iter().map(|c| describe(&c.name, &c.declared_type, c.primary_key)).collect(),
                ),
            });
        }
    }
    Ok(())
}

fn describe(name: &str, declared_type: &str, primary_key: bool) -> String {
    let mut text = name.to_owned();
    if !declared_type.is_empty() {
        text.push(' ');
        text.push_str(&declared_type.to_ascii_uppercase());
    }
    if primary_key {
        text.push_str(" PRIMARY KEY");
    }
    text
}

/// What one inspection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub time: Duration,
    /// SQLite's hard heap limit. It holds for the whole process, which is why inspections run in a process of their
    /// own (`inspect.rs`).
    pub heap_bytes: u64,
}

/// Reads the database at `path` the hardened way and checks it. The caller holds the replica's lock.
pub fn inspect(path: &Path, expected: &[TableSpec], budget: Budget) -> Result<(), Problem> {
    let mut header = [0u8; 100];
    let read = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut header))
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    check_header(&header[..read])?;
    let started = Instant::now();
    let mut conn = open_hardened(path, budget).map_err(|e| Problem::Unreadable(e.to_string()))?;
    let timed_out = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted => {
            Problem::TimeBudget(budget.time.as_secs())
        }
        e => Problem::Unreadable(e.to_string()),
    };
    let started_at = started;
    conn.progress_handler(1000, Some(move || started_at.elapsed() > budget.time))
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    let objects = conn
        .prepare("SELECT type, name, sql FROM sqlite_schema")
        .and_then(|mut s| {
            s.query_map([], |r| Ok(SchemaObject { kind: r.get(0)?, name: r.get(1)?, sql: r.get(2)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(timed_out)?;
    let mut columns = BTreeMap::new();
    for table in expected {
        let found = conn
            .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1)")
            .and_then(|mut s| {
                s.query_map([&table.name], |r| {
                    Ok(Column {
                        name: r.get(0)?,
                        declared_type: r.get(1)?,
                        primary_key: r.get::<_, i64>(2)? > 0,
                        hidden: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(timed_out)?;
        columns.insert(table.name.clone(), found);
    }
    check_schema(&objects, &columns, expected)?;
    let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(timed_out)?;
    if verdict != "ok" {
        return Err(Problem::Corrupt(verdict));
    }
    Ok(())
}

/// Read-only, no views, no triggers, nothing from the schema trusted, defensive, small caches, a heap limit.
fn open_hardened(path: &Path, budget: Budget) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false),
    ] {
        conn.set_db_config(setting, on)?;
    }
    conn.execute_batch(&format!(
        "PRAGMA hard_heap_limit = {}; PRAGMA cache_size = -8192; PRAGMA mmap_size = 0; PRAGMA cell_size_check = ON;",
        budget.heap_bytes
    ))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::schema::default_tables;

    fn header(mutate: impl FnOnce(&mut [u8; 100])) -> [u8; 100] {
        let mut h = [0u8; 100];
        h[..16].copy_from_slice(b"SQLite format 3\0");
        h[16..18].copy_from_slice(&4096u16.to_be_bytes());
        (h[18], h[19], h[21], h[22], h[23]) = (2, 2, 64, 32, 32);
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        mutate(&mut h);
        h
    }

    #[test]
    fn headers() {
        assert_eq!(check_header(&header(|_| {})), Ok(()));
        assert_eq!(check_header(&header(|h| (h[18], h[19]) = (1, 1))), Err(Problem::NotWal(1, 1)));
        assert_eq!(check_header(&header(|h| h[0] = b'X')), Err(Problem::NotSqlite));
        assert!(matches!(
            check_header(&header(|h| h[16..18].copy_from_slice(&3000u16.to_be_bytes()))),
            Err(Problem::Header(_))
        ));
        assert!(matches!(check_header(&header(|h| h[59] = 9)), Err(Problem::Header(_))));
        assert_eq!(check_header(&[0u8; 10]), Err(Problem::NotSqlite));
    }

    fn table(name: &str, sql: &str) -> SchemaObject {
        SchemaObject { kind: "table".into(), name: name.into(), sql: Some(sql.into()) }
    }

    fn column(name: &str, declared_type: &str, primary_key: bool) -> Column {
        Column { name: name.into(), declared_type: declared_type.into(), primary_key, hidden: 0 }
    }

    fn workers() -> (Vec<SchemaObject>, BTreeMap<String, Vec<Column>>) {
        let objects = vec![
            table("genomes", "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB)"),
            SchemaObject { kind: "index".into(), name: "sqlite_autoindex_genomes_1".into(), sql: None },
            table("metadata", "CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT)"),
            SchemaObject { kind: "index".into(), name: "sqlite_autoindex_metadata_1".into(), sql: None },
        ];
        let columns = BTreeMap::from([
            ("genomes".to_owned(), vec![column("id", "TEXT", true), column("data", "BLOB", false)]),
            ("metadata".to_owned(), vec![column("key", "TEXT", true), column("value", "TEXT", false)]),
        ]);
        (objects, columns)
    }

    #[test]
    fn the_workers_schema_passes_and_everything_else_is_named() {
        let expected = default_tables("genomes.sqlite").unwrap();
        let (objects, columns) = workers();
        assert_eq!(check_schema(&objects, &columns, &expected), Ok(()));

        let with = |extra: SchemaObject| {
            let mut objects = objects.clone();
            objects.push(extra);
            check_schema(&objects, &columns, &expected)
        };
        let view = SchemaObject {
            kind: "view".into(),
            name: "v".into(),
            sql: Some("CREATE VIEW v AS WITH RECURSIVE …".into()),
        };
        assert!(matches!(with(view), Err(Problem::Forbidden { .. })));
        let trigger = SchemaObject { kind: "trigger".into(), name: "t".into(), sql: Some("CREATE TRIGGER …".into()) };
        assert!(matches!(with(trigger), Err(Problem::Forbidden { .. })));
        assert_eq!(with(table("extra", "CREATE TABLE extra (x)")), Err(Problem::UnlistedTable("extra".into())));
        let virtual_table = table("fts", "CREATE VIRTUAL TABLE fts USING fts5(x)");
        assert!(matches!(with(virtual_table), Err(Problem::Forbidden { .. })));
        let index = SchemaObject {
            kind: "index".into(),
            name: "i".into(),
            sql: Some("CREATE INDEX i ON genomes(data)".into()),
        };
        assert_eq!(with(index), Err(Problem::UnlistedIndex("i".into())));

        let mut wrong = columns.clone();
        wrong.insert("genomes".into(), vec![column("id", "INTEGER", true), column("data", "BLOB", false)]);
        let Err(Problem::Columns { found, .. }) = check_schema(&objects, &wrong, &expected) else { panic!() };
        assert_eq!(found, "(id INTEGER PRIMARY KEY, data BLOB)");
        let mut missing = columns.clone();
        missing.remove("metadata");
        assert_eq!(check_schema(&objects, &missing, &expected), Err(Problem::MissingTable("metadata".into())));
        let mut generated = columns.clone();
        generated.get_mut("genomes").unwrap().push(Column { hidden: 2, ..column("g", "", false) });
        assert_eq!(check_schema(&objects, &generated, &expected), Err(Problem::TableShape("genomes".into())));
        let mut rowless = objects.clone();
        rowless[0] = table("genomes", "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB) WITHOUT ROWID");
        assert_eq!(check_schema(&rowless, &columns, &expected), Err(Problem::TableShape("genomes".into())));
    }

    fn database(dir: &Path, name: &str, wal: bool, extra: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let conn = Connection::open(&path).unwrap();
        if wal {
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        }
        conn.execute_batch(&format!(
            "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB);
             CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);
             INSERT INTO genomes VALUES ('01KF', x'00'); {extra}"
        ))
        .unwrap();
        path
    }

    const BUDGET: Budget = Budget { time: Duration::from_secs(10), heap_bytes: 64 << 20 };

    #[test]
    fn inspecting_real_files() {
        let dir = tempfile::tempdir().unwrap();
        let expected = default_tables("genomes.sqlite").unwrap();
        assert_eq!(inspect(&database(dir.path(), "good.sqlite", true, ""), &expected, BUDGET), Ok(()));
        assert_eq!(
            inspect(&database(dir.path(), "journal.sqlite", false, ""), &expected, BUDGET),
            Err(Problem::NotWal(1, 1))
        );
        let bomb =
            "CREATE VIEW bomb AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;";
        let started = Instant::now();
        let verdict = inspect(&database(dir.path(), "view.sqlite", true, bomb), &expected, BUDGET);
        assert!(matches!(verdict, Err(Problem::Forbidden { .. })), "{verdict:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "the view was never run");
        let trigger = "CREATE TRIGGER t AFTER INSERT ON genomes BEGIN DELETE FROM metadata; END;";
        assert!(matches!(
            inspect(&database(dir.path(), "trigger.sqlite", true, trigger), &expected, BUDGET),
            Err(Problem::Forbidden { .. })
        ));
        let typed = dir.path().join("typed.sqlite");
        let conn = Connection::open(&typed).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch("CREATE TABLE genomes (id INTEGER PRIMARY KEY, data TEXT); CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);").unwrap();
        drop(conn);
        assert!(matches!(inspect(&typed, &expected, BUDGET), Err(Problem::Columns { .. })));

        // A b-tree page overwritten with noise: quick_check says so.
        let corrupt = database(dir.path(), "corrupt.sqlite", true, "");
        let conn = Connection::open(&corrupt).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        for n in 0..200 {
            conn.execute("INSERT INTO genomes VALUES (?1, randomblob(300))", [format!("id{n:05}")]).unwrap();
        }
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        let root: i64 =
            conn.query_row("SELECT rootpage FROM sqlite_schema WHERE name = 'genomes'", [], |r| r.get(0)).unwrap();
        drop(conn);
        let mut bytes = std::fs::read(&corrupt).unwrap();
        let page = 4096 * (root as usize - 1);
        for (i, b) in bytes[page + 12..page + 4096].iter_mut().enumerate() {
            *b = (i * 131 % 251) as u8;
        }
        std::fs::write(&corrupt, bytes).unwrap();
        let verdict = inspect(&corrupt, &expected, BUDGET);
        assert!(matches!(verdict, Err(Problem::Corrupt(_)) | Err(Problem::Unreadable(_))), "{verdict:?}");
    }

    #[test]
    fn the_budget_stops_a_long_check() {
        let dir = tempfile::tempdir().unwrap();
        let expected = default_tables("genomes.sqlite").unwrap();
        let path = database(dir.path(), "big.sqlite", true, "");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
             INSERT INTO genomes SELECT printf('%026d', i), randomblob(100) FROM n;",
        )
        .unwrap();
        drop(conn);
        let tight = Budget { time: Duration::from_millis(1), heap_bytes: 64 << 20 };
        assert_eq!(inspect(&path, &expected, tight), Err(Problem::TimeBudget(0)));
    }
}
