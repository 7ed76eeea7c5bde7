//! Confinement: proving that a replica path lies inside the party's own tree; run folders and the folders below them.
//!
//! Every step below the replica root goes through openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS, so a symlink
//! or `..` planted anywhere in a party's tree stops the request instead of redirecting it.

use crate::access::Usage;
use crate::fs::sys;
use nix::errno::Errno;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// SQLite's companions of a database file; each is written next to it, so each must be a plain file too.
pub const COMPANION_SUFFIXES: [&str; 4] = ["", "-wal", "-shm", "-journal"];

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("the replica root {path} cannot be opened ({errno}); the administrator must create it")]
    ReplicaRoot { path: PathBuf, errno: Errno },
    #[error(
        "party '{party}' has no tree on this host ({errno}); the administrator must create it (evosync party add)"
    )]
    NoPartyRoot { party: String, errno: Errno },
    #[error("run folder '{run}' does not exist, and the policy does not allow creating runs (create_runs: false)")]
    RunMissing { run: String },
    #[error("'{run}' is a symlink or not a folder; refusing to follow it")]
    NotAFolder { run: String },
    #[error("party '{party}' already has {count} run folders, its limit (max_runs: {max}); ask the administrator")]
    TooManyRuns { party: String, count: u64, max: u64 },
    #[error("'{run}/{name}' is {what}; only regular files are synced (the administrator must remove it)")]
    NotRegular { run: String, name: String, what: &'static str },
    #[error("'{run}/{name}' has {links} hard links; a replica must not share its data with another file")]
    HardLinked { run: String, name: String, links: u64 },
    #[error("party '{party}' stores {used} bytes, at or over its quota (max_party_bytes: {max}); free space first")]
    OverQuota { party: String, used: u64, max: u64 },
    #[error("party '{party}' has {count} files and folders, its limit (max_party_files: {max}); remove some first")]
    TooManyFiles { party: String, count: u64, max: u64 },
    #[error("the file system refused {what}: {errno}")]
    Io { what: String, errno: Errno },
}

/// A party's tree, opened: `replica_root/PARTY`.
pub struct PartyTree {
    party: String,
    fd: OwnedFd,
    path: PathBuf,
}

/// A run folder proven to lie inside its party's tree.
pub struct RunFolder {
    pub run: String,
    pub fd: OwnedFd,
    /// Absolute path of the folder, naming the same inode as `fd` when checked.
    pub path: PathBuf,
    pub created: bool,
}

/// The replica root, opened once: a long-lived service resolves parties beneath it without walking its path again.
pub struct ReplicaRoot {
    fd: OwnedFd,
    canonical: PathBuf,
}

impl ReplicaRoot {
    pub fn open(replica_root: &Path) -> Result<ReplicaRoot, ConfineError> {
        let root_error = |errno| ConfineError::ReplicaRoot { path: replica_root.to_owned(), errno };
        let fd = sys::open_dir(replica_root).map_err(root_error)?;
        let canonical = std::fs::canonicalize(replica_root).map_err(|e| root_error(io_errno(&e)))?;
        Ok(ReplicaRoot { fd, canonical })
    }
}

impl PartyTree {
    pub fn open(replica_root: &Path, party: &str) -> Result<PartyTree, ConfineError> {
        PartyTree::open_in(&ReplicaRoot::open(replica_root)?, party)
    }

    pub fn open_in(root: &ReplicaRoot, party: &str) -> Result<PartyTree, ConfineError> {
        let fd = sys::open_dir_beneath(&root.fd, party)
            .map_err(|errno| ConfineError::NoPartyRoot { party: party.to_owned(), errno })?;
        Ok(PartyTree { party: party.to_owned(), fd, path: root.canonical.join(party) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the run folder, creating it first when `create` allows and the party is under `max_runs`.
    pub fn run_folder(&self, run: &str, create: bool, max_runs: u64) -> Result<RunFolder, ConfineError> {
        let mut created = false;
        if sys::stat_in(&self.fd, run).map_err(|errno| io(format!("a look at '{run}'"), errno))?.is_none() {
            self.may_create_run(run, create, max_runs)?;
            created = sys::make_dir_in(&self.fd, run).map_err(|errno| io(format!("creating '{run}'"), errno))?;
        }
        let fd = sys::open_dir_beneath(&self.fd, run).map_err(|errno| match errno {
            Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV => ConfineError::NotAFolder { run: run.to_owned() },
            errno => io(format!("opening '{run}'"), errno),
        })?;
        let path = self.path.join(run);
        ensure_same_inode(&fd, &path, run)?;
        Ok(RunFolder { run: run.to_owned(), fd, path, created })
    }

    /// Whether a run folder that does not exist yet may be created: the policy allows it and the party is under
    /// `max_runs`. Changes nothing.
    pub fn may_create_run(&self, run: &str, create: bool, max_runs: u64) -> Result<(), ConfineError> {
        if !create {
            return Err(ConfineError::RunMissing { run: run.to_owned() });
        }
        let count = self.run_count()?;
        if count >= max_runs {
            return Err(ConfineError::TooManyRuns { party: self.party.clone(), count, max: max_runs });
        }
        Ok(())
    }

    /// Opens an existing run folder only (for `explain`, which must change nothing).
    pub fn existing_run_folder(&self, run: &str) -> Result<Option<RunFolder>, ConfineError> {
        match sys::stat_in(&self.fd, run).map_err(|errno| io(format!("a look at '{run}'"), errno))? {
            None => Ok(None),
            Some(_) => self.run_folder(run, false, u64::MAX).map(Some),
        }
    }

    /// How many run folders the party has.
    pub fn run_count(&self) -> Result<u64, ConfineError> {
        let entries = sys::list_dir(&self.fd).map_err(|errno| io("listing the party tree".into(), errno))?;
        Ok(entries.iter().filter(|(_, stat)| sys::is_dir(stat)).count() as u64)
    }

    /// What the whole party tree holds: bytes of regular files (replicas and analysis files alike), and entries
    /// (files and folders, the tree's root not counted).
    pub fn usage(&self) -> Result<Usage, ConfineError> {
        fn walk(dir: &OwnedFd, depth: u32, usage: &mut Usage) -> Result<(), Errno> {
            for (name, stat) in sys::list_dir(dir)? {
                usage.files += 1;
                if sys::is_regular_file(&stat) {
                    usage.bytes = usage.bytes.saturating_add(stat.st_size.max(0) as u64);
                } else if sys::is_dir(&stat) && depth < 16 {
                    walk(&sys::open_dir_beneath(dir, &name)?, depth + 1, usage)?;
                }
            }
            Ok(())
        }
        let mut usage = Usage::default();
        walk(&self.fd, 0, &mut usage).map_err(|errno| io("measuring the party tree".into(), errno))?;
        Ok(usage)
    }

    pub fn party(&self) -> &str {
        &self.party
    }
}

impl RunFolder {
    /// Checks the database and its companions: each must be absent or a regular file with one link. Returns the
    /// bytes they hold now.
    pub fn check_database(&self, database: &str) -> Result<u64, ConfineError> {
        let mut bytes = 0u64;
        for suffix in COMPANION_SUFFIXES {
            let name = format!("{database}{suffix}");
            let Some(stat) = sys::stat_in(&self.fd, &name).map_err(|errno| io(format!("a look at '{name}'"), errno))?
            else {
                continue;
            };
            if !sys::is_regular_file(&stat) {
                let what = if sys::is_dir(&stat) { "a folder" } else { "a symlink or special file" };
                return Err(ConfineError::NotRegular { run: self.run.clone(), name, what });
            }
            if stat.st_nlink > 1 {
                return Err(ConfineError::HardLinked { run: self.run.clone(), name, links: stat.st_nlink });
            }
            bytes = bytes.saturating_add(stat.st_size.max(0) as u64);
        }
        Ok(bytes)
    }

    /// Entries a push of `database` would add: the database and its WAL companions that do not exist yet.
    pub fn new_entries(&self, database: &str) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter(|suffix| sys::stat_in(&self.fd, &format!("{database}{suffix}")).ok().flatten().is_none())
            .count() as u64
    }

    /// Puts back an empty `-wal` and `-shm` beside `database` where SQLite removed them (its last connection closing
    /// does): a reader that may not create files opens a WAL database read-only only while both exist. Empty ones are
    /// what SQLite itself leaves after a checkpoint; the next connection fills them in. `group_writes` when someone
    /// other than the database's owner puts them back in a folder shared through its group (the service in a
    /// per-party tree): the owner's next push must still be able to write them.
    pub fn keep_wal_companions(&self, database: &str, group_writes: bool) -> Result<(), ConfineError> {
        let Some(stat) =
            sys::stat_in(&self.fd, database).map_err(|errno| io(format!("a look at '{database}'"), errno))?
        else {
            return Ok(());
        };
        if !sys::is_regular_file(&stat) {
            return Ok(());
        }
        let mode = (stat.st_mode & 0o666) | if group_writes { 0o060 } else { 0 };
        for suffix in ["-wal", "-shm"] {
            let name = format!("{database}{suffix}");
            match sys::create_file_in(&self.fd, &name, mode) {
                // As SQLite does: companions root makes belong to the database's owner, who writes them next.
                Ok(file) if sys::is_root() => sys::give_to(&file, (stat.st_uid, stat.st_gid))
                    .map_err(|e| io(format!("giving '{name}' to the database's owner"), io_errno(&e)))?,
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(io(format!("creating '{name}'"), errno)),
            }
        }
        Ok(())
    }

    pub fn database_path(&self, database: &str) -> PathBuf {
        self.path.join(database)
    }

    /// Size of the database file now, if it exists.
    pub fn database_size(&self, database: &str) -> Option<u64> {
        sys::stat_in(&self.fd, database).ok().flatten().map(|stat| stat.st_size.max(0) as u64)
    }
}

/// Opens (creating when `create`, mode 0750: a run's home holds what its readers' group may read, never write) the
/// folder `segments` beneath `run_folder`; `Ok(None)` when it does not exist.
pub fn open_beneath(run_folder: &OwnedFd, segments: &[&str], create: bool) -> Result<Option<OwnedFd>, Errno> {
    Ok(open_beneath_counting(run_folder, segments, create)?.map(|(fd, _)| fd))
}

/// As `open_beneath`, with how many folders it created on the way.
pub fn open_beneath_counting(
    run_folder: &OwnedFd,
    segments: &[&str],
    create: bool,
) -> Result<Option<(OwnedFd, u64)>, Errno> {
    let (mut current, mut created): (Option<OwnedFd>, u64) = (None, 0);
    for segment in segments {
        let parent = current.as_ref().unwrap_or(run_folder);
        // Open first: the folder nearly always exists, and a mkdir would lock the parent on every upload.
        let opened = match sys::open_dir_beneath(parent, segment) {
            Err(Errno::ENOENT) if create => {
                created += u64::from(sys::make_dir_mode_in(parent, segment, 0o750)?);
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
    Ok(current.map(|fd| (fd, created)))
}

/// The absolute path handed to sqlite3_rsync must reach the very folder proven above.
fn ensure_same_inode(fd: &OwnedFd, path: &Path, run: &str) -> Result<(), ConfineError> {
    let opened = sys::fstat(fd).map_err(|errno| io(format!("a look at '{run}'"), errno))?;
    let by_path = std::fs::symlink_metadata(path).map_err(|e| io(format!("a look at '{run}'"), io_errno(&e)))?;
    if by_path.dev() == opened.st_dev && by_path.ino() == opened.st_ino && by_path.is_dir() {
        Ok(())
    } else {
        Err(ConfineError::NotAFolder { run: run.to_owned() })
    }
}

fn io(what: String, errno: Errno) -> ConfineError {
    ConfineError::Io { what, errno }
}

fn io_errno(error: &std::io::Error) -> Errno {
    Errno::from_raw(error.raw_os_error().unwrap_or(0))
}
