//! Whether a push changed its replica, read from what SQLite wrote, at no cost worth measuring: a push that changed
//! nothing then costs the catalog no verification and no copy.
//!
//! The stock replica side writes a push's pages through the replica's write-ahead log in one transaction, and its last
//! connection checkpoints the log and removes it when it closes. The gate opens that log (empty before the push) and
//! keeps it open across the push, so after the push it still reads what was written, frame by frame (the file format
//! at <https://sqlite.org/fileformat2.html#walformat>). Even an unchanged push writes page 1: its change counter (bytes
//! 24–27 and 92–95 of the header, and the writer's version at 96–99) differs from the worker's, so the origin sends it
//! every time. The push changed nothing when every committed frame is page 1, the database kept its size, and page 1
//! differs from what it was only in those header fields.
//!
//! Anything else, or anything unexpected (no log to watch, a log that was not empty, a frame that does not parse),
//! answers "changed" or "cannot tell", and the catalog does its full work. Only the pushing party's own freshness
//! rests on the answer: readers get nothing the catalog has not checked either way.

use crate::fs::confine::RunFolder;
use crate::fs::sys;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The header bytes SQLite changes on every write of page 1: the file change counter, the version-valid-for number
/// and the writer's SQLite version.
const BOOKKEEPING: [std::ops::Range<usize>; 2] = [24..28, 92..100];

/// The replica as it was before a push, with its write-ahead log held open.
pub struct Watch {
    wal: File,
    page_size: u64,
    pages: u64,
    first_page: Vec<u8>,
}

/// Arms a watch on `database` before its push: only a WAL-mode replica whose log is empty can be watched.
pub fn watch(folder: &RunFolder, database: &str) -> Option<Watch> {
    let replica = sys::open_file_in(&folder.fd, database).ok()?;
    let mut header = [0u8; 100];
    if replica.read_at(&mut header, 0).ok()? < 100 || &header[..16] != b"SQLite format 3\0" || header[18] != 2 {
        return None;
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let size = replica.metadata().ok()?.len();
    if page_size < 512 || size % page_size != 0 {
        return None;
    }
    let mut first_page = vec![0u8; page_size as usize];
    replica.read_exact_at(&mut first_page, 0).ok()?;
    folder.keep_wal_companions(database, false).ok()?;
    let wal = sys::open_file_in(&folder.fd, &format!("{database}-wal")).ok()?;
    let stat = sys::fstat(&wal).ok()?;
    if !sys::is_regular_file(&stat) || stat.st_size != 0 {
        return None;
    }
    Some(Watch { wal, page_size, pages: size / page_size, first_page })
}

impl Watch {
    /// After the push: `Some(false)` when it changed nothing, `Some(true)` when it did, `None` when the log does not
    /// say.
    pub fn changed(&self) -> Option<bool> {
        let length = self.wal.metadata().ok()?.len();
        if length == 0 {
            // No write transaction ever wrote the log: no page changed.
            return Some(false);
        }
        let mut header = [0u8; 32];
        self.wal.read_exact_at(&mut header, 0).ok()?;
        let frames = Frames::new(&header, self.page_size)?;
        let frame_size = 24 + self.page_size;
        let mut page = vec![0u8; self.page_size as usize];
        let mut frame = vec![0u8; 24];
        let mut sums = frames.header_sums;
        // Every frame is page 1 (another page returns at once), so each commit frame holds page 1 as committed.
        let mut committed_first: Option<Vec<u8>> = None;
        let mut committed_pages = None;
        for index in 0..(length - 32) / frame_size {
            let offset = 32 + index * frame_size;
            self.wal.read_exact_at(&mut frame, offset).ok()?;
            self.wal.read_exact_at(&mut page, offset + 24).ok()?;
            let word = |at: usize| frames.word(&frame[at..at + 4]);
            if frame[8..16] != header[16..24] {
                break; // another generation of the log: the end of this one
            }
            sums = frames.sums(sums, &frame[..8]);
            sums = frames.sums(sums, &page);
            if (word(16), word(20)) != sums {
                break; // a torn or stale frame: SQLite's own recovery stops here too
            }
            if word(0) != 1 {
                return Some(true);
            }
            if word(4) != 0 {
                committed_pages = Some(u64::from(word(4)));
                committed_first = Some(page.clone());
            }
        }
        let Some(pages) = committed_pages else { return Some(false) };
        if pages != self.pages {
            return Some(true);
        }
        let first = committed_first?;
        Some(!same_but_bookkeeping(&first, &self.first_page))
    }
}

/// Page 1 as it was against page 1 as written: equal but for the header's bookkeeping fields.
fn same_but_bookkeeping(written: &[u8], before: &[u8]) -> bool {
    if written.len() != before.len() {
        return false;
    }
    let mut start = 0;
    for range in BOOKKEEPING {
        if written[start..range.start] != before[start..range.start] {
            return false;
        }
        start = range.end;
    }
    written[start..] == before[start..]
}

/// How a log's words and checksums read.
struct Frames {
    big_endian: bool,
    header_sums: (u32, u32),
}

impl Frames {
    /// Checks a log's header (magic, version, page size, its own checksum).
    fn new(header: &[u8; 32], page_size: u64) -> Option<Frames> {
        let magic = u32::from_be_bytes(header[0..4].try_into().ok()?);
        let big_endian = match magic {
            0x377f_0682 => false,
            0x377f_0683 => true,
            _ => return None,
        };
        let frames = Frames { big_endian, header_sums: (0, 0) };
        let be = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().expect("four bytes"));
        if be(4) != 3_007_000 || u64::from(be(8)) != page_size {
            return None;
        }
        let sums = frames.sums((0, 0), &header[..24]);
        (sums == (be(24), be(28))).then_some(Frames { header_sums: sums, ..frames })
    }

    /// A 32-bit word of a frame header, which the log keeps big-endian whatever its checksums' order.
    fn word(&self, bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes.try_into().expect("four bytes"))
    }

    /// SQLite's WAL checksum over `data`, continued from `(s0, s1)`.
    fn sums(&self, (mut s0, mut s1): (u32, u32), data: &[u8]) -> (u32, u32) {
        for pair in data.chunks_exact(8) {
            let read = |bytes: &[u8]| {
                let bytes: [u8; 4] = bytes.try_into().expect("four bytes");
                if self.big_endian {
                    u32::from_be_bytes(bytes)
                } else {
                    u32::from_le_bytes(bytes)
                }
            };
            s0 = s0.wrapping_add(read(&pair[..4])).wrapping_add(s1);
            s1 = s1.wrapping_add(read(&pair[4..])).wrapping_add(s0);
        }
        (s0, s1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::confine::PartyTree;
    use rusqlite::Connection;

    /// A replica that keeps its log after its writer closes, so the test can read it as the gate does.
    fn replica(dir: &std::path::Path) -> (PartyTree, std::path::PathBuf) {
        std::fs::create_dir_all(dir.join("acme/R")).unwrap();
        let path = dir.join("acme/R/genomes.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        conn.execute_batch(
            "CREATE TABLE genomes (id TEXT PRIMARY KEY, data BLOB);
             INSERT INTO genomes VALUES ('a', randomblob(3000)), ('b', randomblob(3000));",
        )
        .unwrap();
        drop(conn);
        (PartyTree::open(dir, "acme").unwrap(), path)
    }

    /// Writes like the replica side of a push: one transaction through the log, which stays for the test to read
    /// (a second connection holds the database open, so the writer's close neither checkpoints nor removes it).
    fn push(path: &std::path::Path, sql: &str) {
        let holder = Connection::open(path).unwrap();
        holder.query_row("SELECT count(*) FROM genomes", [], |_| Ok(())).unwrap();
        let writer = Connection::open(path).unwrap();
        writer.execute_batch(sql).unwrap();
        drop(writer);
        drop(holder);
    }

    #[test]
    fn what_the_log_says_of_a_push() {
        let dir = tempfile::tempdir().unwrap();
        let (tree, path) = replica(dir.path());
        let folder = tree.existing_run_folder("R").unwrap().unwrap();

        let watch = watch(&folder, "genomes.sqlite").unwrap();
        assert_eq!(watch.changed(), Some(false), "nothing written");

        let watch = self::watch(&folder, "genomes.sqlite").unwrap();
        push(&path, "INSERT INTO genomes VALUES ('c', randomblob(3000));");
        assert_eq!(watch.changed(), Some(true), "a row added");

        // Page 1 rewritten as it was, as every push of an unchanged origin does (through sqlite_dbpage, as the replica
        // side writes): SQLite moves its change counter, nothing else.
        let watch = self::watch(&folder, "genomes.sqlite").unwrap();
        push(&path, "INSERT INTO sqlite_dbpage(pgno, data) SELECT 1, data FROM sqlite_dbpage WHERE pgno = 1;");
        assert_eq!(watch.changed(), Some(false), "page 1 again, unchanged but for its counter");

        // A schema change on page 1 alone is a change.
        let watch = self::watch(&folder, "genomes.sqlite").unwrap();
        push(&path, "PRAGMA user_version = 7;");
        assert_eq!(watch.changed(), Some(true), "page 1's content changed");
    }

    #[test]
    fn page_one_differs_only_in_bookkeeping() {
        let before = vec![7u8; 4096];
        let mut written = before.clone();
        written[24] = 1;
        written[95] = 9;
        written[99] = 3;
        assert!(same_but_bookkeeping(&written, &before));
        written[40] = 1; // the schema cookie
        assert!(!same_but_bookkeeping(&written, &before));
    }

    #[test]
    fn a_rollback_journal_replica_is_not_watched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("acme/R")).unwrap();
        let conn = Connection::open(dir.path().join("acme/R/genomes.sqlite")).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(conn);
        let tree = PartyTree::open(dir.path(), "acme").unwrap();
        assert!(watch(&tree.existing_run_folder("R").unwrap().unwrap(), "genomes.sqlite").is_none());
    }
}
