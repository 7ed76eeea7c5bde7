//! Landing a file durably, the one way evosync writes a file that must survive a crash whole or not at all:
//! a temp file in the target folder, the bytes (hashed with SHA-256 as they pass), fdatasync, rename over the old
//! version (or beside nothing), fsync of the folder. A temp file dropped unfinished (a client gone, a limit exceeded,
//! a digest that does not match) is removed, and the previous version stays as it was.
//!
//! Uploaded analysis files, the managed authorized_keys file, policies and the configuration all land here.

use crate::fs::sys;
use nix::errno::Errno;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{IoSlice, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// Temp files start with this, so listings skip them.
pub const TEMP_PREFIX: &str = ".upload-";

/// A file being received. Dropped before `finish`, it removes its temp file.
pub struct PendingFile {
    dir: Arc<OwnedFd>,
    /// Where the temp file is made: `dir` itself, or a private folder on its file system (the catalog's
    /// `.incoming`, so that readers of `dir` never see a file being made).
    staging: Arc<OwnedFd>,
    temp_name: String,
    pub name: String,
    file: Option<File>,
    hasher: Sha256,
    pub bytes: u64,
}

/// Mode of an uploaded file.
pub const UPLOAD_MODE: u32 = 0o640;

/// A file that is in place.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
    /// Bytes of the version it replaced (0 for a new file).
    pub replaced_bytes: u64,
    /// Whether it replaced a file of its name.
    #[serde(skip)]
    pub replaced: bool,
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
    /// Starts `name` in `dir` as an uploaded file (mode `UPLOAD_MODE`).
    pub fn begin(dir: Arc<OwnedFd>, name: &str) -> std::io::Result<PendingFile> {
        PendingFile::begin_with_mode(dir, name, UPLOAD_MODE)
    }

    pub fn begin_with_mode(dir: Arc<OwnedFd>, name: &str, mode: u32) -> std::io::Result<PendingFile> {
        PendingFile::begin_in(dir.clone(), dir, name, mode)
    }

    /// Starts `name` for `dir` with its temp file in `staging` (one file system with `dir`), as an uploaded file.
    pub fn begin_staged(dir: Arc<OwnedFd>, staging: Arc<OwnedFd>, name: &str) -> std::io::Result<PendingFile> {
        PendingFile::begin_in(dir, staging, name, UPLOAD_MODE)
    }

    fn begin_in(dir: Arc<OwnedFd>, staging: Arc<OwnedFd>, name: &str, mode: u32) -> std::io::Result<PendingFile> {
        let temp_name = format!("{TEMP_PREFIX}{}.tmp", uuid::Uuid::new_v4().simple());
        let file = sys::create_file_in(staging.as_ref(), &temp_name, mode)?;
        let (hasher, name) = (Sha256::new(), name.to_owned());
        Ok(PendingFile { dir, staging, temp_name, name, file: Some(file), hasher, bytes: 0 })
    }

    /// Gives the file to `owner` (uid, gid) unless it is ours already: an unprivileged service needs no fchown then.
    pub fn give_to(&self, owner: (u32, u32)) -> std::io::Result<()> {
        let file = self.file.as_ref().ok_or_else(|| std::io::Error::other("the file was already finished"))?;
        if owner != sys::effective_ids() {
            sys::give_to(file, owner)?;
        }
        Ok(())
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
        self,
        expected_sha256: Option<&[u8; 32]>,
        syncer: &DirSyncer,
    ) -> Result<StoredFile, FinishError> {
        self.land(expected_sha256, syncer, true)
    }

    /// Makes the file durable and puts it in place only where no file of its name exists (`AlreadyExists` otherwise).
    pub fn finish_new(self) -> Result<StoredFile, FinishError> {
        self.land(None, &DirSyncer::default(), false)
    }

    fn land(
        mut self,
        expected_sha256: Option<&[u8; 32]>,
        syncer: &DirSyncer,
        replace: bool,
    ) -> Result<StoredFile, FinishError> {
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if let Some(expected) = expected_sha256 {
            if expected != &digest {
                return Err(FinishError::DigestMismatch {
                    expected: crate::time::hex(expected),
                    actual: crate::time::hex(&digest),
                });
            }
        }
        let file = self.file.take().ok_or_else(|| std::io::Error::other("the file was already finished"))?;
        file.sync_data()?;
        let stat = sys::fstat(&file).map_err(std::io::Error::from)?;
        let modified_ns = stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec;
        drop(file);
        let (dir, staging) = (self.dir.as_ref(), self.staging.as_ref());
        // Most uploads are new files: one rename that refuses to replace, and a stat only when it did refuse.
        let replaced = !sys::rename_between(staging, &self.temp_name, dir, &self.name)?;
        let replaced_bytes = if !replaced {
            0
        } else if !replace {
            return Err(FinishError::Io(std::io::ErrorKind::AlreadyExists.into()));
        } else {
            let old = sys::stat_in(dir, &self.name).ok().flatten().filter(sys::is_regular_file);
            sys::rename_over_between(staging, &self.temp_name, dir, &self.name)?;
            old.map(|stat| stat.st_size.max(0) as u64).unwrap_or(0)
        };
        self.temp_name.clear(); // nothing left to clean up
        syncer.sync(dir)?;
        Ok(StoredFile {
            name: self.name.clone(),
            bytes: self.bytes,
            sha256: crate::time::hex(&digest),
            replaced_bytes,
            replaced,
            modified_ns,
        })
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = sys::unlink_in(self.staging.as_ref(), &self.temp_name);
        }
    }
}

/// Lands `bytes` as `path`, replacing what is there and keeping its owner (new files: ours), with `mode`.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let owner = std::fs::metadata(path).ok().map(|m| (m.uid(), m.gid()));
    let mut pending = PendingFile::begin_with_mode(dir, &name, mode)?;
    if let Some(owner) = owner {
        pending.give_to(owner)?;
    }
    pending.write(bytes)?;
    pending.finish(None).map(drop).map_err(FinishError::into_io)
}

/// Lands `bytes` as `path` only where nothing of that name exists yet: never clobbers an administrator's file.
pub fn create_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let (dir, name) = parent_and_name(path)?;
    let mut pending = PendingFile::begin_with_mode(dir, &name, mode)?;
    pending.write(bytes)?;
    pending.finish_new().map(drop).map_err(FinishError::into_io)
}

fn parent_and_name(path: &Path) -> std::io::Result<(Arc<OwnedFd>, String)> {
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{} names no file", path.display()))
    })?;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok((Arc::new(sys::open_dir(folder)?), name.to_owned()))
}

impl FinishError {
    fn into_io(self) -> std::io::Error {
        match self {
            FinishError::Io(error) => error,
            other => std::io::Error::other(other.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
