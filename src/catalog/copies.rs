//! The verified copies readers open. The catalog never links to a party's live replica: the stock `sqlite3_rsync`
//! writes that file in place during a push, so a reader holding a connection to it would read, and execute, what was
//! pushed before its check. Instead, once a replica has passed, its copy in `verified_root/RUN/` is brought up to
//! date from it with the same stock `sqlite3_rsync` (local to local, one transaction on the copy), under the
//! replica's lock. A reader with an open connection sees each verified push and never another; a refused push
//! reaches no reader at all.

use crate::config::Config;
use crate::fs::sys;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the verified copy of `run/database` is.
pub fn copy_path(verified_root: &Path, run: &str, database: &str) -> PathBuf {
    verified_root.join(run).join(database)
}

/// Brings the verified copy of `party`'s `run/database` up to date with the replica (which has just passed its
/// check, and whose lock the caller holds). A copy that cannot be brought up to date stays as it was: the transfer is
/// one transaction on it.
pub fn refresh(config: &Config, party: &str, run: &str, database: &str) -> Result<PathBuf, String> {
    let root = config.verified_root().ok_or("the configuration names no catalog_root")?;
    let origin = config.replica_root.join(party).join(run).join(database);
    let folder = root.join(run);
    let copy = folder.join(database);
    if !folder.is_dir() {
        // No chmod after: `verified_root` is setgid to the readers' group, so the new folder inherits that group and
        // the setgid bit, and a chmod by the service's account (not in that group) would clear the bit again, leaving
        // the copies in the service's own group, out of the readers' reach.
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(&folder)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
            .map_err(|e| format!("cannot make {}: {e}", folder.display()))?;
    }
    let program = &config.sqlite3_rsync;
    let mut command = Command::new(program);
    sys::die_with_parent(&mut command);
    let mut child = command
        .arg(&origin)
        .arg(&copy)
        .arg("--exe")
        .arg(program)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    // The copy takes about what the check took; a transfer that hangs is stopped at the check's budget.
    let deadline = Instant::now() + Duration::from_secs(config.verify.seconds);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("copying {run}/{database} took longer than {} s", config.verify.seconds));
            }
            Err(e) => return Err(format!("lost the copy of {run}/{database}: {e}")),
        }
    };
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&mut stderr, 4096), &mut said);
    }
    if !status.success() || said.contains("ERROR") {
        return Err(format!("copying {run}/{database} failed ({status}): {}", said.trim()));
    }
    settle(&root, run, database)?;
    Ok(copy)
}

/// The copy and its WAL companions as readers need them: in the readers' group (`verified_root`'s), group-readable,
/// and `-wal`/`-shm` present (a read-only reader opens a WAL database only while both exist; SQLite removes them
/// when its last connection closes). Made or mended by root (`catalog check --repair`), they are given to the
/// service's account, which updates them after; the service itself cannot change a group it is not in, so it says
/// what is wrong instead.
pub fn settle(verified_root: &Path, run: &str, database: &str) -> Result<(), String> {
    let folder = verified_root.join(run);
    let gid_of = |path: &Path| {
        std::fs::metadata(path)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let readers = gid_of(verified_root)?;
    let dir = sys::open_dir(&folder).map_err(|e| format!("cannot open {}: {e}", folder.display()))?;
    for suffix in ["-wal", "-shm"] {
        match sys::create_file_in(&dir, &format!("{database}{suffix}"), 0o640) {
            Ok(_) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot make {database}{suffix}: {e}")),
        }
    }
    let owner = sys::is_root().then(|| sys::account_ids(crate::config::SHARED_ACCOUNT)).flatten();
    let uid = owner.map(|(uid, _)| uid).unwrap_or_else(|| sys::effective_ids().0);
    if owner.is_some() {
        sys::give_path(&folder, (uid, readers), 0o2750).map_err(|e| e.to_string())?;
    }
    for name in [database.to_owned(), format!("{database}-wal"), format!("{database}-shm")] {
        let path = folder.join(&name);
        sys::give_path(&path, (uid, readers), 0o640).map_err(|e| format!("cannot settle {}: {e}", path.display()))?;
        if gid_of(&path)? != readers {
            return Err(format!(
                "{} is not in the readers' group of {} (its folder lost the setgid bit?): run `evosync catalog check \
                 --repair` as root",
                path.display(),
                verified_root.display()
            ));
        }
    }
    Ok(())
}
