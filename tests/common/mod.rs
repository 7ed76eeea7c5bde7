//! The test rig: a real OpenSSH sshd on a loopback port (`sshd`), the real stock sqlite3_rsync, SQLite files shaped
//! like the workers' (`sqlite`), HTTP over a real socket (`http`), real TLS with a CA made in the test (`tls`), a
//! running `evosync serve` (`service`), a whole central with a catalog and a reader of it (`catalog`), and a real
//! headless browser (`browser`). Each test gets its own folders and port. `scripts/setup-test-env.sh` prepares the
//! machine.
#![allow(dead_code)] // each test file uses its own part of the rig
#![allow(unused_imports)]

mod browser;
mod catalog;
mod http;
mod service;
mod sqlite;
mod sshd;
mod tls;

pub use browser::*;
pub use catalog::*;
pub use http::*;
pub use service::*;
pub use sqlite::*;
pub use sshd::*;
pub use tls::*;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const SETUP_HINT: &str = "run scripts/setup-test-env.sh (as root) first";

/// Where the stock client lives: `EVOSYNC_TEST_SQLITE3_RSYNC`, else /usr/local/bin/sqlite3_rsync.
pub fn sqlite3_rsync_path() -> PathBuf {
    let path = std::env::var_os("EVOSYNC_TEST_SQLITE3_RSYNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/sqlite3_rsync"));
    assert!(path.exists(), "{} is missing: {SETUP_HINT}", path.display());
    path
}

/// A temp folder, mode 0755, whose every parent is root-owned and not writable by others, as sshd's StrictModes
/// (and its checks of AuthorizedKeysCommand) demand: under the target dir when that holds there, else under
/// /var/lib/evosync-tests (a clone under /tmp, say, has a world-writable parent).
pub fn test_dir(name: &str) -> tempfile::TempDir {
    let base = safe_base();
    let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir_in(&base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn safe_base() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(&target);
    if path_is_safe(&target) {
        return target;
    }
    let fallback = PathBuf::from("/var/lib/evosync-tests");
    std::fs::create_dir_all(&fallback).unwrap();
    std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(path_is_safe(&fallback), "{} must be root-owned and not writable by others", fallback.display());
    fallback
}

/// Every folder from `path` up to `/` is owned by root and writable by nobody else.
fn path_is_safe(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else { return false };
    path.ancestors()
        .all(|folder| std::fs::metadata(folder).map(|m| m.uid() == 0 && m.mode() & 0o022 == 0).unwrap_or(false))
}

/// A copy of `binary` in a folder sshd accepts for AuthorizedKeysCommand (root-owned all the way up).
pub fn safe_copy(binary: &Path, dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = bin.join(binary.file_name().unwrap());
    // Copied by a child process, as `write_executable` writes.
    let status = std::process::Command::new("install").arg("-m").arg("0755").arg(binary).arg(&copy).status().unwrap();
    assert!(status.success(), "install {} {}", binary.display(), copy.display());
    copy
}

/// Writes an executable file (mode 0755) through a child process, then renames it into place. Written by this
/// process, the file's write descriptor could be inherited by a program another test thread starts at that moment,
/// and running the file would fail with "Text file busy" until that program execs.
pub fn write_executable(path: &Path, content: &str) {
    use std::io::Write;
    static WRITES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("partial-{n}"));
    let mut child = std::process::Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 0755 \"$1\" && mv -f \"$1\" \"$2\"", "sh"])
        .arg(&partial)
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "writing {}", path.display());
}

/// Gives `path` (recursively, symlinks themselves) to a test account.
pub fn chown_to(path: &Path, user: &str) {
    require_account(user);
    let status = Command::new("chown").args(["-R", "-h", &format!("{user}:evosync")]).arg(path).status().unwrap();
    assert!(status.success(), "chown {user} {}", path.display());
}

pub fn require_account(user: &str) {
    let known = Command::new("getent").args(["passwd", user]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(known, "the test account '{user}' does not exist: {SETUP_HINT}");
}

/// The home of `run` in the catalog of the central at `root` (`catalog_root` and `verified_root` as `evosync init`
/// makes them there): where its copies and analysis files are, published or held back.
pub fn home_of(root: &Path, run: &str) -> PathBuf {
    let published = root.join("catalog").join(run);
    if published.is_dir() {
        published
    } else {
        root.join("catalog-verified").join(run)
    }
}
