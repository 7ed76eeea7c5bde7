//! The authorized_keys file: evosync owns one managed block (`# BEGIN evosync` … `# END evosync`) and keeps every
//! other line as it was. Each change rewrites the whole file atomically under a lock: a temp file in the same folder,
//! fsync, rename, fsync of the folder, mode 0600, owner kept.

use crate::fs::{landing, sys};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const BEGIN: &str = "# BEGIN evosync (managed by `evosync`; edits inside this block are overwritten)";
pub const END: &str = "# END evosync";

/// A file split around the managed block.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sections {
    pub before: Vec<String>,
    pub managed: Vec<String>,
    pub after: Vec<String>,
}

/// Splits a file's text; a file without a block keeps all its lines in `before`.
pub fn split(text: &str) -> Sections {
    let mut sections = Sections::default();
    let mut state = 0; // 0: before, 1: inside, 2: after
    for line in text.lines() {
        match state {
            0 if line.starts_with("# BEGIN evosync") => state = 1,
            1 if line.trim_end() == END => state = 2,
            0 => sections.before.push(line.to_owned()),
            1 => sections.managed.push(line.to_owned()),
            _ => sections.after.push(line.to_owned()),
        }
    }
    sections
}

/// The file's text with `managed` as its block (placed where the old block was, else at the end).
pub fn render(sections: &Sections, managed: &[String]) -> String {
    let mut out = String::new();
    for line in &sections.before {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(BEGIN);
    out.push('\n');
    for line in managed {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    for line in &sections.after {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Holds the lock that serialises every rewrite of one authorized_keys file.
pub struct FileLock {
    _lock: nix::fcntl::Flock<File>,
}

impl FileLock {
    /// Waits for `PATH.lock` (next to the file; the lock file is never renamed, so every writer meets on it). A lock
    /// file this account may not write is opened to read, which is all flock needs.
    pub fn acquire(path: &Path) -> std::io::Result<FileLock> {
        let lock_path = lock_path(path);
        let file =
            match std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path) {
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(&lock_path)?,
                opened => opened?,
            };
        Ok(FileLock { _lock: sys::lock_exclusive(file)? })
    }
}

/// The lock file of the managed file at `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    sibling(path, ".lock")
}

/// Rewrites the managed block with the lines `current` produces. `current` runs while the lock is held, so lines
/// read from the store then can never be overwritten by a writer that read the store earlier.
pub fn rewrite<E: From<std::io::Error>>(
    path: &Path,
    current: impl FnOnce() -> Result<Vec<String>, E>,
) -> Result<usize, E> {
    let lock = FileLock::acquire(path)?;
    let lines = current()?;
    rewrite_holding(&lock, path, &lines)?;
    Ok(lines.len())
}

/// Rewrites the managed block with `lines`, for a caller that holds the file's lock (and read `lines` under it).
pub fn rewrite_holding(_lock: &FileLock, path: &Path, lines: &[String]) -> std::io::Result<()> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let text = render(&split(existing.as_deref().unwrap_or("")), lines);
    replace_atomically(path, text.as_bytes())
}

/// Lands the new text durably (temp file, fsync, rename, fsync of the folder), mode 0600, the old file's owner kept.
pub fn replace_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    landing::replace_file(path, bytes, 0o600)
}

/// What differs between the file's managed block and what the store says it should hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// In the store, not in the file: these keys do not work yet.
    pub missing: Vec<String>,
    /// In the file, not in the store: these keys still work though they should not.
    pub unexpected: Vec<String>,
}

impl Drift {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

pub fn drift(path: &Path, expected: &[String]) -> std::io::Result<Drift> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let actual = split(&text).managed;
    Ok(Drift {
        missing: expected.iter().filter(|l| !actual.contains(l)).cloned().collect(),
        unexpected: actual.iter().filter(|l| !expected.contains(l)).cloned().collect(),
    })
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn unmanaged_lines_survive_around_the_block() {
        let text = format!("ssh-ed25519 AAAA admin\n{BEGIN}\nold line\n{END}\n# trailing note\n");
        let sections = split(&text);
        assert_eq!(sections.before, ["ssh-ed25519 AAAA admin"]);
        assert_eq!(sections.managed, ["old line"]);
        assert_eq!(sections.after, ["# trailing note"]);
        let new = render(&sections, &["new line".to_owned()]);
        assert_eq!(new, format!("ssh-ed25519 AAAA admin\n{BEGIN}\nnew line\n{END}\n# trailing note\n"));
        // A file without a block gets one at the end.
        assert_eq!(render(&split("a\n"), &[]), format!("a\n{BEGIN}\n{END}\n"));
    }

    #[test]
    fn rewrite_is_atomic_keeps_mode_and_reports_drift() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, "ssh-ed25519 AAAA hand-written\n").unwrap();
        rewrite::<std::io::Error>(&path, || Ok(vec!["one".into(), "two".into()])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("ssh-ed25519 AAAA hand-written\n# BEGIN evosync"));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(drift(&path, &["one".into(), "two".into()]).unwrap().is_clean());
        let drift = drift(&path, &["two".into(), "three".into()]).unwrap();
        assert_eq!(drift.missing, ["three"]);
        assert_eq!(drift.unexpected, ["one"]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "the file and its lock, no temp files: {leftovers:?}");
    }
}
