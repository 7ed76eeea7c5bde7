//! Analysis-file ingest: where an uploaded file may go, and how it gets there without ever leaving a partial file.
//!
//! A file lands at `replica_root/PARTY/RUN/SUBDIR/NAME`. Every folder below the party root is opened with openat2
//! (no symlinks, no leaving the tree); the body streams into a temp file in the target folder while its SHA-256 is
//! computed; then fsync, rename over the old version, fsync of the folder. A temp file that is dropped unfinished
//! (a client gone, a limit exceeded) is removed, and the previous version stays as it was.

use crate::names::is_plain_segment;
use crate::sys;
use nix::errno::Errno;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

pub const DEFAULT_SUBDIR: &str = "analysisResults";
/// Top folders a worker may upload into.
pub const UPLOAD_ROOTS: [&str; 2] = ["analysisResults", "generationFeatures"];
const MAX_SUBDIR_DEPTH: usize = 8;
const MAX_SUBDIR_BYTES: usize = 1024;
/// Temp files start with this, so listings can skip them.
pub const TEMP_PREFIX: &str = ".upload-";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("subdir '{0}' is not accepted: use analysisResults, generationFeatures, or a folder under them")]
    Subdir(String),
    #[error("file name '{0}' is not a plain file name ([A-Za-z0-9._-], no folders)")]
    Name(String),
    #[error("file name '{name}' does not end in an accepted extension ({accepted})")]
    Extension { name: String, accepted: String },
    #[error("file name '{0}' names a database; databases are pushed with sqlite3_rsync, not uploaded")]
    Database(String),
}

/// Checks `subdir` segment by segment; returns its segments.
pub fn check_subdir(subdir: &str) -> Result<Vec<&str>, NameError> {
    let fail = || NameError::Subdir(subdir.to_owned());
    if subdir.len() > MAX_SUBDIR_BYTES {
        return Err(fail());
    }
    let segments: Vec<&str> = subdir.split('/').collect();
    if segments.len() > MAX_SUBDIR_DEPTH || !UPLOAD_ROOTS.contains(&segments[0]) {
        return Err(fail());
    }
    if segments.iter().all(|s| is_plain_segment(s)) {
        Ok(segments)
    } else {
        Err(fail())
    }
}

/// Checks an uploaded file's name against the policy's extensions; database files are refused whatever they say.
pub fn check_file_name(name: &str, extensions: &[String]) -> Result<(), NameError> {
    if !is_plain_segment(name) {
        return Err(NameError::Name(name.to_owned()));
    }
    let lower = name.to_ascii_lowercase();
    if lower.contains(".sqlite") || lower.contains(".db") {
        return Err(NameError::Database(name.to_owned()));
    }
    if extensions.iter().any(|ext| name.len() > ext.len() && name.ends_with(ext.as_str())) {
        Ok(())
    } else {
        Err(NameError::Extension { name: name.to_owned(), accepted: extensions.join(", ") })
    }
}

/// Opens (creating when `create`) the folder `segments` beneath `run_folder`; `Ok(None)` when it does not exist.
pub fn open_subdir(run_folder: &OwnedFd, segments: &[&str], create: bool) -> Result<Option<OwnedFd>, Errno> {
    let mut current: Option<OwnedFd> = None;
    for segment in segments {
        let parent = current.as_ref().unwrap_or(run_folder);
        // Open first: the folder nearly always exists, and a mkdir would lock the parent on every upload.
        let opened = match sys::open_dir_beneath(parent, segment) {
            Err(Errno::ENOENT) if create => {
                sys::make_dir_in(parent, segment)?;
                sys::open_dir_beneath(parent, segment)
            }
            other => other,
        };
        match opened {
            Ok(fd) => current = Some(fd),
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

/// A file being received. Dropped before `finish`, it removes its temp file.
pub struct PendingFile {
    dir: Arc<OwnedFd>,
    temp_name: String,
    pub name: String,
    file: Option<File>,
    hasher: Sha256,
    pub bytes: u64,
}

/// A file that is in place.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    /// Bytes of the version it replaced (0 for a new file).
    pub replaced_bytes: u64,
    /// Its modification time, as listings report it.
    #[serde(skip)]
    pub modified_ns: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("the body's SHA-256 is {actual}, not the {expected} the request announced; nothing was stored")]
    DigestMismatch { expected: String, actual: String },
    #[error("storing the file failed: {0}")]
    Io(#[from] std::io::Error),
}

impl From<Errno> for FinishError {
    fn from(errno: Errno) -> Self {
        FinishError::Io(errno.into())
    }
}

impl PendingFile {
    pub fn begin(dir: Arc<OwnedFd>, name: &str) -> std::io::Result<PendingFile> {
        let temp_name = format!("{TEMP_PREFIX}{}.tmp", uuid::Uuid::new_v4().simple());
        let file = sys::create_file_in(dir.as_ref(), &temp_name)?;
        Ok(PendingFile { dir, temp_name, name: name.to_owned(), file: Some(file), hasher: Sha256::new(), bytes: 0 })
    }

    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.write_chunks(&[chunk])
    }

    /// Appends the chunks in order, with as few system calls as the kernel allows (writev).
    pub fn write_chunks(&mut self, chunks: &[impl AsRef<[u8]>]) -> std::io::Result<()> {
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("the file was already finished"))?;
        let mut slices: Vec<IoSlice> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let chunk = chunk.as_ref();
            self.hasher.update(chunk);
            self.bytes += chunk.len() as u64;
            slices.push(IoSlice::new(chunk));
        }
        let mut remaining = &mut slices[..];
        IoSlice::advance_slices(&mut remaining, 0); // skips leading empty chunks
        while !remaining.is_empty() {
            match file.write_vectored(remaining) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(written) => IoSlice::advance_slices(&mut remaining, written),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Makes the file durable and puts it in place, if its digest is the one announced.
    pub fn finish(self, expected_sha256: Option<&[u8; 32]>) -> Result<StoredFile, FinishError> {
        self.finish_with(expected_sha256, &DirSyncer::default())
    }

    /// As `finish`, with the folder's fsync shared with concurrent uploads into the same folder.
    pub fn finish_with(
        mut self,
        expected_sha256: Option<&[u8; 32]>,
        syncer: &DirSyncer,
    ) -> Result<StoredFile, FinishError> {
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if let Some(expected) = expected_sha256 {
            if expected != &digest {
                return Err(FinishError::DigestMismatch { expected: hex(expected), actual: hex(&digest) });
            }
        }
        let file = self.file.take().ok_or_else(|| std::io::Error::other("the file was already finished"))?;
        file.sync_data()?;
        let stat = sys::fstat(&file).map_err(std::io::Error::from)?;
        let modified_ns = stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec;
        drop(file);
        let dir = self.dir.as_ref();
        // Most uploads are new files: one rename that refuses to replace, and a stat only when it did refuse.
        let replaced_bytes = if sys::rename_new_in(dir, &self.temp_name, &self.name)? {
            0
        } else {
            let old = sys::stat_in(dir, &self.name).ok().flatten().filter(sys::is_regular_file);
            sys::rename_in(dir, &self.temp_name, &self.name)?;
            old.map(|stat| stat.st_size.max(0) as u64).unwrap_or(0)
        };
        self.temp_name.clear(); // nothing left to clean up
        syncer.sync(dir)?;
        Ok(StoredFile { name: self.name.clone(), bytes: self.bytes, sha256: hex(&digest), replaced_bytes, modified_ns })
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = sys::unlink_in(self.dir.as_ref(), &self.temp_name);
        }
    }
}

/// Shares folder fsyncs between concurrent uploads: a caller returns once an fsync of its folder that started after
/// its rename has finished, and one fsync serves everyone who renamed while the previous one ran.
///
/// Callers waiting for round `n` sleep on condvar `n % 2`, so a finished round wakes only the callers it served,
/// plus one caller of the next round to run it.
#[derive(Default)]
pub struct DirSyncer {
    folders: std::sync::Mutex<std::collections::HashMap<(u64, u64), Arc<FolderSync>>>,
}

#[derive(Default)]
struct FolderSync {
    state: std::sync::Mutex<SyncRound>,
    finished: [std::sync::Condvar; 2],
}

#[derive(Default)]
struct SyncRound {
    /// Rounds started, finished, and the highest round a caller waits for.
    started: u64,
    done: u64,
    wanted: u64,
    running: bool,
}

impl DirSyncer {
    pub fn sync(&self, dir: &OwnedFd) -> Result<(), Errno> {
        let stat = sys::fstat(dir)?;
        let folder = {
            let mut folders = self.folders.lock().map_err(|_| Errno::EIO)?;
            folders.entry((stat.st_dev, stat.st_ino)).or_default().clone()
        };
        let mut round = folder.state.lock().map_err(|_| Errno::EIO)?;
        let needed = round.started + 1;
        round.wanted = round.wanted.max(needed);
        loop {
            if round.done >= needed {
                return Ok(());
            }
            if round.running {
                round = folder.finished[(needed % 2) as usize].wait(round).map_err(|_| Errno::EIO)?;
                continue;
            }
            round.running = true;
            round.started += 1;
            let this = round.started;
            drop(round);
            let result = sys::sync_dir(dir);
            round = folder.state.lock().map_err(|_| Errno::EIO)?;
            round.running = false;
            if result.is_ok() {
                round.done = this;
            }
            // A failed round wakes its callers too: each retries, and one of them runs the next attempt.
            folder.finished[(this % 2) as usize].notify_all();
            if round.wanted > this {
                folder.finished[((this + 1) % 2) as usize].notify_one();
            }
            result?;
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 a request announces: `Repr-Digest: sha-256=:BASE64:` (RFC 9530) or `X-Content-SHA256: HEX`.
pub fn announced_sha256(repr_digest: Option<&str>, x_content_sha256: Option<&str>) -> Result<Option<[u8; 32]>, String> {
    if let Some(value) = repr_digest {
        for member in value.split(',') {
            let member = member.trim();
            if let Some(encoded) = member.strip_prefix("sha-256=:").and_then(|m| m.strip_suffix(':')) {
                let bytes = base64_decode(encoded).ok_or("Repr-Digest: sha-256 is not valid base64")?;
                return bytes.try_into().map(Some).map_err(|_| "Repr-Digest: sha-256 is not 32 bytes".to_owned());
            }
        }
    }
    if let Some(value) = x_content_sha256 {
        let value = value.trim();
        if value.len() != 64 {
            return Err("X-Content-SHA256 must be 64 hex digits".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16).map_err(|_| "X-Content-SHA256 is not hex")?;
        }
        return Ok(Some(out));
    }
    Ok(None)
}

/// Standard base64 with padding, as RFC 9530 byte sequences use.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let take = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + take]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdirs_are_checked_segment_by_segment() {
        for ok in ["analysisResults", "analysisResults/trees", "generationFeatures", "analysisResults/a/b"] {
            assert!(check_subdir(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/analysisResults",
            "analysisResults/",
            "analysisResults/../x",
            "analysisResults/./x",
            "..",
            "other",
            "analysisResults//x",
            "analysisResults/a b",
            "analysisResults/\0",
            "analysisResults/a/b/c/d/e/f/g/h",
            "analysisResults\\x",
        ] {
            assert!(check_subdir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        let ext = vec![".json.gz".to_owned(), ".json".to_owned()];
        assert!(check_file_name("coverage_01KF_step-1.json.gz", &ext).is_ok());
        assert!(check_file_name("x.json", &ext).is_ok());
        for bad in [
            "../x.json",
            "a/b.json",
            ".json",
            ".hidden.json",
            "x.txt",
            "lineage_state_1.sqlite",
            "genomes.sqlite.json",
            "x.db.json",
            "",
            "a\0.json",
        ] {
            assert!(check_file_name(bad, &ext).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn announced_digests() {
        // sha-256 of "hello"
        let hex_digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let b64 = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        let from_hex = announced_sha256(None, Some(hex_digest)).unwrap().unwrap();
        let from_repr = announced_sha256(Some(&format!("sha-512=:AAAA:, sha-256=:{b64}:")), None).unwrap().unwrap();
        assert_eq!(from_hex, from_repr);
        assert_eq!(hex(&from_hex), hex_digest);
        assert!(announced_sha256(Some("sha-256=:@@@@:"), None).is_err());
        assert!(announced_sha256(None, Some("abc")).is_err());
        assert_eq!(announced_sha256(None, None).unwrap(), None);
    }

    #[test]
    fn concurrent_folder_syncs_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let fd = Arc::new(sys::open_dir(dir.path()).unwrap());
        let syncer = Arc::new(DirSyncer::default());
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (fd, syncer) = (fd.clone(), syncer.clone());
                std::thread::spawn(move || (0..20).all(|_| syncer.sync(&fd).is_ok()))
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn a_dropped_upload_leaves_nothing_and_a_finished_one_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let fd = Arc::new(sys::open_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("a.json"), b"old").unwrap();
        let mut pending = PendingFile::begin(fd.clone(), "a.json").unwrap();
        pending.write(b"new but never finished").unwrap();
        drop(pending);
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut pending = PendingFile::begin(fd.clone(), "a.json").unwrap();
        pending.write(b"hello").unwrap();
        let wrong = [0u8; 32];
        assert!(matches!(pending.finish(Some(&wrong)), Err(FinishError::DigestMismatch { .. })));
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut pending = PendingFile::begin(fd, "a.json").unwrap();
        pending.write(b"hello").unwrap();
        let stored = pending.finish(None).unwrap();
        assert_eq!((stored.bytes, stored.replaced_bytes), (5, 3));
        assert_eq!(stored.sha256, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(std::fs::read(dir.path().join("a.json")).unwrap(), b"hello");
    }
}
