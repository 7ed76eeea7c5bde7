//! `evosync catalog apply PARTY RUN DATABASE`: brings the run's verified copy of one replica up to date, and
//! readers get exactly the bytes that were checked. The service starts it (`catalog::pipeline`) as its own account,
//! holding the replica's lock; it confines itself before it reads a byte, to the catalog's own folders.
//!
//! 1. **Image.** The replica is opened once, through confinement, and read only through that descriptor into its
//!    checked image (`.shadows/RUN/DATABASE`, the service's alone): the pages that differ from the image's are
//!    written into it, or the whole replica when there is no image yet. Nothing is read from the party's tree
//!    after this step, so a file swapped in there meanwhile can never be what readers get.
//! 2. **Check.** The image is checked as SQLite reads it (header, schema as SQLite reports it, `quick_check`),
//!    through a fresh read-only connection. An image that fails is dropped (the next apply makes it again) and
//!    the copy readers have stays as it was.
//! 3. **Copy.** The image's pages that differ from the copy's are written into the copy in one SQLite transaction;
//!    readers, whose connections stay open across updates, see them at the commit. A first copy is written whole
//!    into `.incoming`, and the service renames it into the run's home (`Applied::staged`).
//!
//! `DATABASE.in-sync` beside the image says the copy holds exactly the image: while it is there, the pages step 1
//! changed are all step 3 must write; without it (a first copy, an apply cut short) step 3 compares the image with
//! the copy page by page. A crash anywhere leaves a copy that is the last checked one, and the job in the store.
//!
//! It prints one JSON line (`Applied`) and exits 0 whatever the verdict; a non-zero exit means it could not get as
//! far as a verdict (the replica not settled, say), and says why on stderr.

use super::home::{Homes, IN_SYNC};
use super::verify::{check_connection, check_header, harden, Budget, Depth, Problem};
use crate::config::Config;
use crate::fs::confine::PartyTree;
use crate::fs::sandbox::{FolderAccess, Sandbox};
use crate::fs::sys;
use crate::policy::Policy;
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

/// What one apply did, as the service reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    pub ok: bool,
    pub seconds: f64,
    pub reason: Option<String>,
    /// Pages written into the copy readers get (all of them for a first copy).
    pub pages: u64,
    /// The new copy's name in `.incoming`, when there was no copy yet and this one passed: the service renames it in.
    pub staged: Option<String>,
    /// Bytes the copy (with its `-wal`) and the image held before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Files the copy and the image added (negative: removed).
    pub files_added: i64,
}

/// SQLite never uses the page that holds its lock bytes (the one at 1 GiB); images and copies skip it as the replica
/// side of sqlite3_rsync does.
fn lock_byte_page(page_size: u64) -> u64 {
    (1 << 30) / page_size + 1
}

/// Where one apply works: the three folders it may touch, all the service's own (SQLite opens its files by path,
/// which is why they are named too).
struct Places {
    /// The run's checked images (`.shadows/RUN`).
    shadows: std::os::fd::OwnedFd,
    shadows_path: std::path::PathBuf,
    /// The run's home: the copy readers get.
    home: std::os::fd::OwnedFd,
    home_path: std::path::PathBuf,
    /// `.incoming`: a first copy is made here.
    incoming: std::sync::Arc<std::os::fd::OwnedFd>,
}

/// Applies `party`'s `run/database` to its verified copy under `config_path`'s configuration.
pub fn run(config_path: &Path, party: &str, run: &str, database: &str) -> Result<Applied, String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    let policy = Policy::load(&config.policy_path(party), party).map_err(|e| e.to_string())?;
    let expected =
        policy.schemas.get(database).ok_or_else(|| format!("'{database}' is not one of party {party}'s databases"))?;
    let tree = PartyTree::open(&config.replica_root, party).map_err(|e| e.to_string())?;
    let folder =
        tree.existing_run_folder(run).map_err(|e| e.to_string())?.ok_or_else(|| format!("there is no run '{run}'"))?;
    folder.check_database(database).map_err(|e| e.to_string())?;
    let replica = sys::open_file_in(&folder.fd, database).map_err(|e| format!("cannot open the replica: {e}"))?;
    // Read raw, the replica must hold all its content in its main file: SQLite checkpoints and removes its -wal when
    // a push's last connection closes (and the gate settles it after a push that broke off).
    let wal = sys::stat_in(&folder.fd, &format!("{database}-wal")).map_err(|e| e.to_string())?;
    if wal.is_some_and(|stat| stat.st_size > 0) {
        return Err("the replica's -wal holds pages not yet in it (a push that did not finish); the next push \
                    settles it"
            .into());
    }
    let homes = Homes::open(&config).map_err(|e| e.to_string())?;
    let (home, _) = homes.find_or_make(run).map_err(|e| e.to_string())?;
    let shadows = homes.shadows(run, true).map_err(|e| e.to_string())?.ok_or("the images' folder vanished")?;
    let home_path = if home.published { homes.catalog_path() } else { homes.held_path() }.join(run);
    let places = Places {
        shadows,
        shadows_path: homes.held_path().join(super::home::SHADOWS).join(run),
        home: home.fd,
        home_path,
        incoming: homes.incoming().clone(),
    };

    // Nothing below reaches further than the catalog's folders, the network, or past its memory.
    let started = Instant::now();
    let heap = config.verify.memory.0;
    match sys::limit_address_space(heap.saturating_mul(2)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) => return Err(format!("cannot cap this process's memory: {e}")),
    }
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let folders = [
        (&places.shadows, FolderAccess::ReadWrite),
        (&places.home, FolderAccess::ReadWrite),
        (places.incoming.as_ref(), FolderAccess::ReadWrite),
    ];
    let sandbox = Sandbox::prepare_for(&program, &folders, false).map_err(|e| e.to_string())?;
    sandbox.enforce_in_child().map_err(|e| format!("cannot confine this process: {e}"))?;
    let budget = Budget { time: std::time::Duration::from_secs(config.verify.seconds), heap_bytes: heap };
    let mut applied = apply(&replica, &places, database, expected, budget).map_err(|e| e.to_string())?;
    applied.seconds = started.elapsed().as_secs_f64();
    Ok(applied)
}

/// Why an apply could not reach a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("reading the replica: {0}")]
    Replica(std::io::Error),
    #[error("the image: {0}")]
    Image(std::io::Error),
    #[error("the copy: {0}")]
    Copy(String),
}

fn copy_failed(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Copy(e.to_string())
}

/// A database file's header, page size and length.
fn shape(file: &File) -> std::io::Result<([u8; 100], u64, u64)> {
    let mut header = [0u8; 100];
    let read = file.read_at(&mut header, 0)?;
    let size = file.metadata()?.len();
    if read < 100 {
        return Ok((header, 0, size));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    Ok((header, page_size, size))
}

/// The three steps (see the module's comment), in `places`.
fn apply(
    replica: &File,
    places: &Places,
    database: &str,
    expected: &[super::schema::TableSpec],
    budget: Budget,
) -> Result<Applied, ApplyError> {
    let in_sync = format!("{database}{IN_SYNC}");
    let (header, page_size, size) = shape(replica).map_err(ApplyError::Replica)?;
    let before = stored(places, database);
    let refused = |problem: Problem, pages: u64| Applied {
        ok: false,
        seconds: 0.0,
        reason: Some(problem.to_string()),
        pages,
        staged: None,
        bytes_before: before.0,
        bytes_after: stored(places, database).0,
        files_added: stored(places, database).1 - before.1,
    };
    if let Err(problem) = check_header(&header) {
        return Ok(refused(problem, 0));
    }
    if size % page_size != 0 {
        return Ok(refused(
            Problem::Header(format!("{size} bytes is not a whole number of {page_size}-byte pages")),
            0,
        ));
    }
    // 1. The image.
    let was_in_sync = sys::stat_in(&places.shadows, &in_sync).map_err(|e| ApplyError::Image(e.into()))?.is_some();
    let _ = sys::unlink_in(&places.shadows, &in_sync);
    let changed = update_image(replica, &places.shadows, database, page_size, size).map_err(ApplyError::Image)?;
    // 2. The check, of exactly these bytes.
    let checked = (|| {
        let mut conn =
            open_image(&places.shadows_path.join(database)).map_err(|e| Problem::Unreadable(e.to_string()))?;
        harden(&conn, budget).map_err(|e| Problem::Unreadable(e.to_string()))?;
        check_connection(&mut conn, expected, budget, Depth::Full)
    })();
    if let Err(problem) = checked {
        // An image that failed is no base for the next one: it is made again from the replica.
        let _ = sys::unlink_in(&places.shadows, database);
        return Ok(refused(problem, 0));
    }
    // 3. The copy.
    let image = sys::open_file_in(&places.shadows, database).map_err(|e| ApplyError::Image(e.into()))?;
    let copy_exists = sys::stat_in(&places.home, database).map_err(copy_failed)?.is_some();
    let (pages, staged) = if copy_exists {
        let only = if was_in_sync { changed.as_deref() } else { None };
        (update_copy(&image, &places.home_path.join(database), page_size, size, only)?, None)
    } else {
        let name = format!("copy-{}.sqlite", uuid::Uuid::new_v4().simple());
        new_copy(&image, places.incoming.as_ref(), &name, size)?;
        (size / page_size, Some(name))
    };
    match sys::create_file_in(&places.shadows, &in_sync, 0o600) {
        Ok(_) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(ApplyError::Image(e.into())),
    }
    let after = stored(places, database);
    let staged_files = if staged.is_some() { 3 } else { 0 };
    Ok(Applied {
        ok: true,
        seconds: 0.0,
        reason: None,
        pages,
        bytes_before: before.0,
        bytes_after: after.0 + if staged.is_some() { size } else { 0 },
        files_added: after.1 - before.1 + staged_files,
        staged,
    })
}

/// Bytes and files of the copy (and its `-wal`/`-shm`) and of the image, now.
fn stored(places: &Places, database: &str) -> (u64, i64) {
    let mut total = (0u64, 0i64);
    for (folder, suffixes) in [(&places.home, &["", "-wal", "-shm"][..]), (&places.shadows, &["", IN_SYNC][..])] {
        for suffix in suffixes {
            if let Ok(Some(stat)) = sys::stat_in(folder, &format!("{database}{suffix}")) {
                total.0 += stat.st_size.max(0) as u64;
                total.1 += 1;
            }
        }
    }
    total
}

/// Brings the image up to date with the replica, page by page, through their descriptors; the whole replica when
/// there is no image. Returns the pages it changed (`None`: all of them, a new image).
fn update_image(
    replica: &File,
    shadows: &impl AsRawFd,
    database: &str,
    page_size: u64,
    size: u64,
) -> std::io::Result<Option<Vec<u64>>> {
    let image = match sys::open_file_rw_in(shadows, database) {
        Ok(image) => image,
        Err(nix::errno::Errno::ENOENT) => {
            let image = sys::create_file_in(shadows, database, 0o600)?;
            sys::copy_whole(replica, &image, size)?;
            image.sync_data()?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let image_size = image.metadata()?.len();
    let pages = size / page_size;
    let lock_page = lock_byte_page(page_size);
    let (mut theirs, mut ours) = (vec![0u8; page_size as usize], vec![0u8; page_size as usize]);
    let mut changed = Vec::new();
    for pgno in 1..=pages {
        if pgno == lock_page {
            continue;
        }
        let offset = (pgno - 1) * page_size;
        replica.read_exact_at(&mut theirs, offset)?;
        let same = offset + page_size <= image_size && image.read_exact_at(&mut ours, offset).is_ok() && ours == theirs;
        if !same {
            image.write_all_at(&theirs, offset)?;
            changed.push(pgno);
        }
    }
    if image_size != size {
        image.set_len(size)?;
    }
    image.sync_data()?;
    Ok(Some(changed))
}

/// The image, read-only, as an immutable file: no lock, no log, only its bytes.
fn open_image(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    Connection::open_with_flags(format!("file:{}?immutable=1", uri_path(path)), flags)
}

/// A path as the path of a `file:` URI: every byte but the unreserved ones and `/` percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::new();
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(byte as char);
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri
}

/// A first copy: the image whole into `name` in `incoming`.
fn new_copy(image: &File, incoming: &impl AsRawFd, name: &str, size: u64) -> Result<(), ApplyError> {
    let copy = sys::create_file_in(incoming, name, 0o640).map_err(copy_failed)?;
    sys::copy_whole(image, &copy, size).map_err(copy_failed)?;
    copy.sync_all().map_err(copy_failed)?;
    Ok(())
}

/// Brings the copy at `copy` to the image's content in one transaction: the pages `only` lists, or every page that
/// differs. Returns how many it wrote.
fn update_copy(image: &File, copy: &Path, page_size: u64, size: u64, only: Option<&[u64]>) -> Result<u64, ApplyError> {
    let mut conn = open_copy(copy).map_err(copy_failed)?;
    // Readers keep their connections, and open only while the -wal and -shm exist: SQLite must not remove them when
    // this, the only writing connection, closes.
    conn.file_control(Some(rusqlite::MAIN_DB), rusqlite::FileControl::PersistWal(&mut 1)).map_err(copy_failed)?;
    let copy_page_size = conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0)).map_err(copy_failed)? as u64;
    if copy_page_size != page_size {
        return Err(ApplyError::Copy(format!(
            "the replica's pages are {page_size} bytes and its copy's {copy_page_size}: remove the copy to make it \
             anew (evosync catalog check --repair)"
        )));
    }
    let pages = size / page_size;
    let transaction = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(copy_failed)?;
    let copy_pages =
        transaction.query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0)).map_err(copy_failed)? as u64;
    let writes: Vec<u64> = match only {
        Some(pages) => pages.to_vec(),
        None => differing_pages(&transaction, image, page_size, pages)?,
    };
    {
        let mut insert =
            transaction.prepare("INSERT INTO sqlite_dbpage(pgno, data) VALUES (?1, ?2)").map_err(copy_failed)?;
        let mut page = vec![0u8; page_size as usize];
        for &pgno in &writes {
            image.read_exact_at(&mut page, (pgno - 1) * page_size).map_err(ApplyError::Image)?;
            insert.execute(rusqlite::params![pgno as i64, &page]).map_err(copy_failed)?;
        }
        if copy_pages > pages {
            // A page number one past the end with no data truncates the database there (at the commit).
            insert.execute(rusqlite::params![(pages + 1) as i64, rusqlite::types::Null]).map_err(copy_failed)?;
        }
    }
    transaction.commit().map_err(copy_failed)?;
    // Readers between transactions let this fold the new pages into the file; those mid-read keep it short.
    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
    Ok(writes.len() as u64)
}

/// The pages of the image that differ from the copy's as the copy's connection sees them, in order; pages past the
/// copy's end all differ.
fn differing_pages(conn: &Connection, image: &File, page_size: u64, pages: u64) -> Result<Vec<u64>, ApplyError> {
    let mut differing = Vec::new();
    let mut page = vec![0u8; page_size as usize];
    let mut seen = 0u64;
    let lock_page = lock_byte_page(page_size);
    let mut statement = conn.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno").map_err(copy_failed)?;
    let mut rows = statement.query([]).map_err(copy_failed)?;
    while let Some(row) = rows.next().map_err(copy_failed)? {
        let pgno = row.get::<_, i64>(0).map_err(copy_failed)? as u64;
        if pgno > pages {
            break;
        }
        seen = pgno;
        if pgno == lock_page {
            continue;
        }
        let data = row.get_ref(1).map_err(copy_failed)?.as_blob_or_null().map_err(copy_failed)?.unwrap_or_default();
        image.read_exact_at(&mut page, (pgno - 1) * page_size).map_err(ApplyError::Image)?;
        if data != page.as_slice() {
            differing.push(pgno);
        }
    }
    differing.extend((seen + 1..=pages).filter(|&pgno| pgno != lock_page));
    Ok(differing)
}

/// Opens a copy to write its pages: a plain file of this process's, no URI, no extension, nothing of its schema
/// trusted, temp data in memory.
fn open_copy(name: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(name, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    for (setting, on) in [
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
    ] {
        conn.set_db_config(setting, on)?;
    }
    conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA mmap_size = 0;")?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::schema::default_tables;

    const BUDGET: Budget = Budget { time: std::time::Duration::from_secs(30), heap_bytes: 256 << 20 };

    /// A worker's database with rows `rows`, then `extra` SQL.
    fn worker(path: &Path, rows: std::ops::Range<u32>, extra: &str) {
        let conn = Connection::open(path).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS genomes (id TEXT PRIMARY KEY, data BLOB);
             CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT);",
        )
        .unwrap();
        for n in rows {
            conn.execute("INSERT OR REPLACE INTO genomes VALUES (printf('%026d', ?1), randomblob(900))", [n]).unwrap();
        }
        conn.execute_batch(extra).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    }

    /// The three folders of an apply, and where they are.
    struct Rig {
        dir: tempfile::TempDir,
        places: Places,
    }

    impl Rig {
        fn new() -> Rig {
            let dir = tempfile::tempdir().unwrap();
            for folder in ["shadows", "home", "incoming"] {
                std::fs::create_dir(dir.path().join(folder)).unwrap();
            }
            let open = |name: &str| sys::open_dir(&dir.path().join(name)).unwrap();
            let places = Places {
                shadows: open("shadows"),
                shadows_path: dir.path().join("shadows"),
                home: open("home"),
                home_path: dir.path().join("home"),
                incoming: std::sync::Arc::new(open("incoming")),
            };
            Rig { dir, places }
        }

        fn replica(&self) -> std::path::PathBuf {
            self.dir.path().join("replica.sqlite")
        }

        fn copy(&self) -> std::path::PathBuf {
            self.dir.path().join("home/genomes.sqlite")
        }

        /// One apply, and what the service does with a first copy that passed.
        fn apply(&self) -> Applied {
            let expected = default_tables("genomes.sqlite").unwrap();
            let replica = File::open(self.replica()).unwrap();
            let applied = apply(&replica, &self.places, "genomes.sqlite", &expected, BUDGET).unwrap();
            if let Some(staged) = &applied.staged {
                for suffix in ["-wal", "-shm"] {
                    std::fs::write(self.dir.path().join(format!("home/genomes.sqlite{suffix}")), b"").unwrap();
                }
                std::fs::rename(self.dir.path().join("incoming").join(staged), self.copy()).unwrap();
            }
            applied
        }
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM genomes", [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_copy_follows_its_replica_checked_and_a_bad_push_never_reaches_it() {
        let rig = Rig::new();
        worker(&rig.replica(), 0..100, "");
        let first = rig.apply();
        assert!(first.ok && first.staged.is_some(), "{first:?}");
        // A reader keeps its connection across updates, as kromosynth-evoruns does.
        let reader = Connection::open_with_flags(rig.copy(), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(rows(&reader), 100);

        worker(&rig.replica(), 100..250, "UPDATE genomes SET data = x'01' WHERE id = printf('%026d', 3);");
        let updated = rig.apply();
        assert!(updated.ok && updated.pages > 0 && updated.staged.is_none(), "{updated:?}");
        assert_eq!(rows(&reader), 250, "the open connection sees the new rows");
        let unchanged = rig.apply();
        assert_eq!((unchanged.ok, unchanged.pages), (true, 0), "nothing differs: nothing written");

        // A view pushed into the replica: the image fails its check, the copy is left alone.
        worker(&rig.replica(), 250..260, "CREATE VIEW v AS SELECT 1;");
        let refused = rig.apply();
        assert!(!refused.ok && refused.reason.as_deref().unwrap_or_default().contains("view"), "{refused:?}");
        assert_eq!(rows(&reader), 250, "nothing of it reached the copy");
        let views: i64 =
            reader.query_row("SELECT count(*) FROM sqlite_schema WHERE type = 'view'", [], |r| r.get(0)).unwrap();
        assert_eq!(views, 0);

        // Mended: the image is made again from the replica, and the copy brought to it page by page.
        let conn = Connection::open(rig.replica()).unwrap();
        conn.execute_batch("DROP VIEW v; PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
        drop(conn);
        let mended = rig.apply();
        assert!(mended.ok, "{mended:?}");
        assert_eq!(rows(&reader), 260);
        let check: String = reader.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
    }

    /// A schema changed behind an unchanged schema cookie: the check reads the image with a fresh connection.
    #[test]
    fn a_schema_change_behind_an_unchanged_cookie_is_seen() {
        let rig = Rig::new();
        worker(&rig.replica(), 0..10, "");
        assert!(rig.apply().ok);
        let cookie = std::fs::read(rig.replica()).unwrap()[40..44].to_vec();
        worker(&rig.replica(), 10..11, "CREATE TRIGGER t AFTER INSERT ON genomes BEGIN DELETE FROM metadata; END;");
        let mut bytes = std::fs::read(rig.replica()).unwrap();
        bytes[40..44].copy_from_slice(&cookie);
        std::fs::write(rig.replica(), bytes).unwrap();
        let verdict = rig.apply();
        assert!(!verdict.ok && verdict.reason.unwrap().contains("trigger"));
    }

    #[test]
    fn a_shrunk_replica_truncates_its_copy() {
        let rig = Rig::new();
        worker(&rig.replica(), 0..300, "");
        assert!(rig.apply().ok);
        worker(&rig.replica(), 0..0, "DELETE FROM genomes WHERE id > printf('%026d', 9); VACUUM;");
        let verdict = rig.apply();
        assert!(verdict.ok, "{verdict:?}");
        let conn = Connection::open(rig.copy()).unwrap();
        assert_eq!(rows(&conn), 10);
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        assert_eq!(
            std::fs::metadata(rig.copy()).unwrap().len(),
            std::fs::metadata(rig.replica()).unwrap().len(),
            "the copy is as long as the replica once checkpointed"
        );
    }
}
