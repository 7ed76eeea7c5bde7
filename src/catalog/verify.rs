//! Whether a pushed database may be published: its header is sane and in WAL mode, its schema is exactly what the
//! policy allows, and `PRAGMA quick_check` passes within a time budget.
//!
//! A replica is untrusted content the readers will execute. `check_header` and `check_schema` are pure decisions over
//! what was read, and the schema is read as SQLite itself reports it (`pragma_table_list`, `pragma_table_xinfo`,
//! `pragma_index_list`, the object types of `sqlite_schema`), never by searching SQL text: `WITHOUT/**/ROWID`, a
//! quoted name or a comment cannot hide a table's shape. Databases are read with a hardened SQLite (no extensions,
//! no views or triggers, `trusted_schema` off, defensive mode, a heap limit, a progress handler that stops at the
//! budget), only in sandboxed children of the service (`evosync catalog inspect`, `evosync catalog apply`).

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
    #[error("table '{table}' is {shape}; its policy allows only ordinary rowid tables of plain columns")]
    TableShape { table: String, shape: String },
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

/// One object as `sqlite_schema` records it: its type (`table`, `index`, `view`, `trigger`) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaObject {
    pub kind: String,
    pub name: String,
}

/// One column as SQLite reports it (`pragma_table_xinfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub declared_type: String,
    pub primary_key: bool,
    /// 0 for an ordinary column; 2 and 3 for generated ones, 1 for a virtual table's hidden ones.
    pub hidden: i64,
}

/// One table as SQLite reports it (`pragma_table_list`, `pragma_table_xinfo`, `pragma_index_list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// `table`, `virtual`, `shadow` or `view`.
    pub kind: String,
    pub without_rowid: bool,
    pub strict: bool,
    pub columns: Vec<Column>,
    /// Its indexes: name and origin (`pk` for the automatic index of its primary key, `u` for a UNIQUE constraint,
    /// `c` for CREATE INDEX).
    pub indexes: Vec<(String, String)>,
}

/// Everything the schema check looks at, as SQLite itself reports it: no SQL text is read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaFacts {
    pub objects: Vec<SchemaObject>,
    /// By name, as the database spells it.
    pub tables: BTreeMap<String, TableFacts>,
}

/// The schema found against the tables allowed: exactly those tables, each an ordinary rowid table (not WITHOUT
/// ROWID, not STRICT, no generated column) with exactly its columns; besides them only the automatic indexes of
/// their primary keys. Pure: `schema_facts` gathers what it looks at.
pub fn check_schema(facts: &SchemaFacts, expected: &[TableSpec]) -> Result<(), Problem> {
    let listed = |name: &str| expected.iter().any(|t| t.name.eq_ignore_ascii_case(name));
    let automatic = |index: &str| {
        facts.tables.iter().any(|(table, found)| {
            listed(table) && found.indexes.iter().any(|(name, origin)| name == index && origin == "pk")
        })
    };
    for object in &facts.objects {
        match object.kind.as_str() {
            "table" if !listed(&object.name) => return Err(Problem::UnlistedTable(object.name.clone())),
            "table" => {}
            "index" if automatic(&object.name) => {}
            "index" => return Err(Problem::UnlistedIndex(object.name.clone())),
            kind => return Err(Problem::Forbidden { kind: kind.to_owned(), name: object.name.clone() }),
        }
    }
    for (name, table) in &facts.tables {
        match table.kind.as_str() {
            "table" => {}
            "virtual" | "shadow" => {
                return Err(Problem::Forbidden { kind: format!("{} table", table.kind), name: name.clone() })
            }
            kind => return Err(Problem::Forbidden { kind: kind.to_owned(), name: name.clone() }),
        }
        if !listed(name) {
            return Err(Problem::UnlistedTable(name.clone()));
        }
        let shape = if table.without_rowid {
            Some("WITHOUT ROWID".to_owned())
        } else if table.strict {
            Some("STRICT".to_owned())
        } else {
            table.columns.iter().find(|c| c.hidden != 0).map(|c| format!("with the generated column '{}'", c.name))
        };
        if let Some(shape) = shape {
            return Err(Problem::TableShape { table: name.clone(), shape });
        }
        if let Some((index, _)) = table.indexes.iter().find(|(_, origin)| origin != "pk") {
            return Err(Problem::UnlistedIndex(index.clone()));
        }
    }
    for table in expected {
        let found = facts
            .tables
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&table.name))
            .map(|(_, found)| &found.columns)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Problem::MissingTable(table.name.clone()))?;
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
    /// own (`inspect.rs`, `apply.rs`).
    pub heap_bytes: u64,
}

/// How far a check goes: the schema alone (what a push is refused for while its worker waits), or the schema and
/// `PRAGMA quick_check` (what a copy must pass before readers get it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Schema,
    Full,
}

/// Reads the database at `path` the hardened way, read-only, and checks it.
pub fn inspect(path: &Path, expected: &[TableSpec], budget: Budget, depth: Depth) -> Result<(), Problem> {
    let mut header = [0u8; 100];
    let read = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut header))
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    check_header(&header[..read])?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| Problem::Unreadable(e.to_string()))?;
    harden(&conn, budget).map_err(|e| Problem::Unreadable(e.to_string()))?;
    check_connection(&mut conn, expected, budget, depth)
}

/// Checks what `conn` sees of its main database (its own uncommitted changes included): the schema as SQLite reports
/// it, and with `Depth::Full` `PRAGMA quick_check`, within the time budget. The connection must be hardened.
pub fn check_connection(
    conn: &mut Connection,
    expected: &[TableSpec],
    budget: Budget,
    depth: Depth,
) -> Result<(), Problem> {
    let started = Instant::now();
    conn.progress_handler(1000, Some(move || started.elapsed() > budget.time))
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    let timed_out = |e: rusqlite::Error| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted => {
            Problem::TimeBudget(budget.time.as_secs())
        }
        e => Problem::Unreadable(e.to_string()),
    };
    let facts = schema_facts(conn).map_err(timed_out)?;
    check_schema(&facts, expected)?;
    if depth == Depth::Full {
        let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0)).map_err(timed_out)?;
        if verdict != "ok" {
            return Err(Problem::Corrupt(verdict));
        }
    }
    Ok(())
}

/// What SQLite reports of the main database's schema: the objects `sqlite_schema` records (their type, not their
/// SQL), and for each table its kind and shape (`pragma_table_list`), columns (`pragma_table_xinfo`) and indexes
/// (`pragma_index_list`).
pub fn schema_facts(conn: &Connection) -> rusqlite::Result<SchemaFacts> {
    let objects = conn
        .prepare("SELECT type, name FROM main.sqlite_schema")?
        .query_map([], |r| Ok(SchemaObject { kind: r.get(0)?, name: r.get(1)? }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let listed = conn
        .prepare("SELECT name, type, wr, strict FROM pragma_table_list WHERE schema = 'main'")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut tables = BTreeMap::new();
    for (name, kind, without_rowid, strict) in listed {
        if name.eq_ignore_ascii_case("sqlite_schema") || name.eq_ignore_ascii_case("sqlite_master") {
            continue;
        }
        let columns = conn
            .prepare("SELECT name, type, pk, hidden FROM pragma_table_xinfo(?1, 'main')")?
            .query_map([&name], |r| {
                Ok(Column {
                    name: r.get(0)?,
                    declared_type: r.get(1)?,
                    primary_key: r.get::<_, i64>(2)? > 0,
                    hidden: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let indexes = conn
            .prepare("SELECT name, origin FROM pragma_index_list(?1, 'main')")?
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        tables.insert(name, TableFacts { kind, without_rowid, strict, columns, indexes });
    }
    Ok(SchemaFacts { objects, tables })
}

/// No views, no triggers, nothing from the schema trusted, defensive, small caches, no memory map, a heap limit.
pub fn harden(conn: &Connection, budget: Budget) -> rusqlite::Result<()> {
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
    ))
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

    fn column(name: &str, declared_type: &str, primary_key: bool) -> Column {
        Column { name: name.into(), declared_type: declared_type.into(), primary_key, hidden: 0 }
    }

    fn object(kind: &str, name: &str) -> SchemaObject {
        SchemaObject { kind: kind.into(), name: name.into() }
    }

    fn plain(columns: Vec<Column>, autoindex: &str) -> TableFacts {
        TableFacts {
            kind: "table".into(),
            without_rowid: false,
            strict: false,
            columns,
            indexes: vec![(autoindex.into(), "pk".into())],
        }
    }

    fn workers() -> SchemaFacts {
        SchemaFacts {
            objects: vec![
                object("table", "genomes"),
                object("index", "sqlite_autoindex_genomes_1"),
                object("table", "metadata"),
                object("index", "sqlite_autoindex_metadata_1"),
            ],
            tables: BTreeMap::from([
                (
                    "genomes".to_owned(),
                    plain(
                        vec![column("id", "TEXT", true), column("data", "BLOB", false)],
                        "sqlite_autoindex_genomes_1",
                    ),
                ),
                (
                    "metadata".to_owned(),
                    plain(
                        vec![column("key", "TEXT", true), column("value", "TEXT", false)],
                        "sqlite_autoindex_metadata_1",
                    ),
                ),
            ]),
        }
    }

    #[test]
    fn the_workers_schema_passes_and_everything_else_is_named() {
        let expected = default_tables("genomes.sqlite").unwrap();
        assert_eq!(check_schema(&workers(), &expected), Ok(()));

        let with = |extra: SchemaObject| {
            let mut facts = workers();
            facts.objects.push(extra);
            check_schema(&facts, &expected)
        };
        assert!(matches!(with(object("view", "v")), Err(Problem::Forbidden { .. })));
        assert!(matches!(with(object("trigger", "t")), Err(Problem::Forbidden { .. })));
        assert_eq!(with(object("table", "extra")), Err(Problem::UnlistedTable("extra".into())));
        assert_eq!(with(object("index", "i")), Err(Problem::UnlistedIndex("i".into())));

        let changed = |change: &dyn Fn(&mut TableFacts)| {
            let mut facts = workers();
            change(facts.tables.get_mut("genomes").unwrap());
            check_schema(&facts, &expected)
        };
        let shape = |shape: &str| Err(Problem::TableShape { table: "genomes".into(), shape: shape.into() });
        assert_eq!(changed(&|t| t.without_rowid = true), shape("WITHOUT ROWID"));
        assert_eq!(changed(&|t| t.strict = true), shape("STRICT"));
        assert_eq!(
            changed(&|t| t.columns.push(Column { hidden: 2, ..column("g", "", false) })),
            shape("with the generated column 'g'")
        );
        assert!(matches!(changed(&|t| t.kind = "virtual".into()), Err(Problem::Forbidden { .. })));
        assert_eq!(
            changed(&|t| t.indexes.push(("sqlite_autoindex_genomes_2".into(), "u".into()))),
            Err(Problem::UnlistedIndex("sqlite_autoindex_genomes_2".into()))
        );
        let Err(Problem::Columns { found, .. }) = changed(&|t| t.columns[0].declared_type = "INTEGER".into()) else {
            panic!()
        };
        assert_eq!(found, "(id INTEGER PRIMARY KEY, data BLOB)");
        let mut missing = workers();
        missing.tables.remove("metadata");
        missing.objects.retain(|o| !o.name.contains("metadata"));
        assert_eq!(check_schema(&missing, &expected), Err(Problem::MissingTable("metadata".into())));
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
        assert_eq!(inspect(&database(dir.path(), "good.sqlite", true, ""), &expected, BUDGET, Depth::Full), Ok(()));
        assert_eq!(
            inspect(&database(dir.path(), "journal.sqlite", false, ""), &expected, BUDGET, Depth::Full),
            Err(Problem::NotWal(1, 1))
        );
        let bomb =
            "CREATE VIEW bomb AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;";
        let started = Instant::now();
        let verdict = inspect(&database(dir.path(), "view.sqlite", true, bomb), &expected, BUDGET, Depth::Full);
        assert!(matches!(verdict, Err(Problem::Forbidden { .. })), "{verdict:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "the view was never run");
        let trigger = "CREATE TRIGGER t AFTER INSERT ON genomes BEGIN DELETE FROM metadata; END;";
        assert!(matches!(
            inspect(&database(dir.path(), "trigger.sqlite", true, trigger), &expected, BUDGET, Depth::Full),
            Err(Problem::Forbidden { .. })
        ));
        let typed = dir.path().join("typed.sqlite");
        let conn = Connection::open(&typed).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch("CREATE TABLE genomes (id INTEGER PRIMARY KEY, data TEXT); CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);").unwrap();
        drop(conn);
        assert!(matches!(inspect(&typed, &expected, BUDGET, Depth::Full), Err(Problem::Columns { .. })));

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
        let verdict = inspect(&corrupt, &expected, BUDGET, Depth::Full);
        assert!(matches!(verdict, Err(Problem::Corrupt(_)) | Err(Problem::Unreadable(_))), "{verdict:?}");
    }

    /// Shapes the SQL text would hide, decided by what SQLite reports.
    #[test]
    fn shapes_are_read_from_sqlite_not_from_the_sql_text() {
        let dir = tempfile::tempdir().unwrap();
        let expected = default_tables("genomes.sqlite").unwrap();
        let metadata = "CREATE TABLE metadata (key TEXT PRIMARY KEY, value TEXT);";
        let cases = [
            ("CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB) WITHOUT/**/ROWID;", "WITHOUT ROWID"),
            ("CREATE TABLE \"genomes\" (id TEXT PRIMARY KEY, data BLOB) --\n WITHOUT ROWID;", "WITHOUT ROWID"),
            ("CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB) STRICT;", "STRICT"),
            (
                "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB, g/**/GENERATED ALWAYS AS (length(data)));",
                "with the generated column 'g'",
            ),
        ];
        for (n, (sql, shape)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("shape{n}.sqlite"));
            let conn = Connection::open(&path).unwrap();
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
            conn.execute_batch(&format!("{sql} {metadata}")).unwrap();
            drop(conn);
            assert_eq!(
                inspect(&path, &expected, BUDGET, Depth::Schema),
                Err(Problem::TableShape { table: "genomes".into(), shape: (*shape).into() }),
                "{sql}"
            );
        }
        let unique = dir.path().join("unique.sqlite");
        let conn = Connection::open(&unique).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch(&format!("CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB UNIQUE); {metadata}"))
            .unwrap();
        drop(conn);
        assert!(matches!(inspect(&unique, &expected, BUDGET, Depth::Schema), Err(Problem::UnlistedIndex(_))));
        let fts = dir.path().join("fts.sqlite");
        let conn = Connection::open(&fts).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch(&format!(
            "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB); {metadata} CREATE VIRTUAL TABLE f USING fts5(x);"
        ))
        .unwrap();
        drop(conn);
        let verdict = inspect(&fts, &expected, BUDGET, Depth::Schema);
        assert!(matches!(verdict, Err(Problem::Forbidden { .. }) | Err(Problem::UnlistedTable(_))), "{verdict:?}");
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
        assert_eq!(inspect(&path, &expected, tight, Depth::Full), Err(Problem::TimeBudget(0)));
    }
}
