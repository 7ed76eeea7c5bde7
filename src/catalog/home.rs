//! Run homes: where everything readers may get of a run lives. A run's home is one real folder holding its verified
//! copies (`genomes.sqlite` and its `-wal`/`-shm`, …) and its analysis files (`analysisResults/`,
//! `generationFeatures/`): `catalog_root/RUN/` while the run is published, `verified_root/RUN/` while it is held back
//! (waiting for a database, or withdrawn). Publishing and withdrawing rename the whole folder between the two roots
//! (one file system), so a reader sees a run whole or not at all, open files and connections survive the move, and no
//! link ever points out of `catalog_root`: a reader that sees only `catalog_root`, bind-mounted read-only anywhere,
//! reads every published run.
//!
//! `verified_root` is the service's alone (mode 2700; setgid to the readers' group, so that what is made in it is
//! the readers' once published). Its `.incoming/` holds files being made (uploads, new copies) until they are
//! renamed into a home whole; nothing there is a reader's, counts against a quota, or survives a restart. Its
//! `.shadows/RUN/` holds the checked image of each of the run's replicas (`catalog::apply`), which counts with the
//! run's home.

use crate::access::Usage;
use crate::config::Config;
use crate::fs::sys;
use nix::errno::Errno;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where files are made before they are renamed into a home.
pub const INCOMING: &str = ".incoming";

/// Beside a checked image: its run's copy holds exactly the image's content (`catalog::apply`).
pub const IN_SYNC: &str = ".in-sync";

/// Where the catalog keeps, per run, the checked image of each replica (`catalog::apply`): the bytes its check read,
/// from which the copy readers get is brought up to date. The service's alone.
pub const SHADOWS: &str = ".shadows";

/// The folders of a run that hold analysis files.
pub const RUN_FOLDERS: [&str; 2] = ["analysisResults", "generationFeatures"];

/// The two roots, opened once.
pub struct Homes {
    catalog: OwnedFd,
    held: OwnedFd,
    incoming: Arc<OwnedFd>,
    shadows: OwnedFd,
    catalog_path: PathBuf,
    held_path: PathBuf,
}

/// One run's home, opened.
pub struct RunHome {
    pub run: String,
    pub fd: OwnedFd,
    /// In `catalog_root` (readers see it), or held back in `verified_root`.
    pub published: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{what} {path} cannot be opened ({errno}); evosync init makes it")]
    Root { what: &'static str, path: PathBuf, errno: Errno },
    #[error("run '{run}' has a home in both catalog_root and verified_root; run `evosync catalog check --repair`")]
    Twice { run: String },
    #[error("'{name}' in {root} is not a folder; move it away")]
    NotAFolder { name: String, root: PathBuf },
    #[error("{what}: {errno}")]
    Io { what: String, errno: Errno },
}

fn io(what: impl Into<String>) -> impl FnOnce(Errno) -> HomeError {
    let what = what.into();
    move |errno| HomeError::Io { what, errno }
}

impl Homes {
    /// Opens both roots and `.incoming` (made when missing).
    pub fn open(config: &Config) -> Result<Homes, HomeError> {
        let (catalog_path, held_path) = (config.catalog_root(), config.verified_root());
        let root = |what, path: &Path| {
            sys::open_dir(path).map_err(|errno| HomeError::Root { what, path: path.to_owned(), errno })
        };
        let catalog = root("catalog_root", &catalog_path)?;
        let held = root("verified_root", &held_path)?;
        sys::make_private_dir_in(&held, INCOMING).map_err(io(format!("making {INCOMING} in verified_root")))?;
        let incoming = Arc::new(sys::open_dir_beneath(&held, INCOMING).map_err(io(format!("opening {INCOMING}")))?);
        sys::make_private_dir_in(&held, SHADOWS).map_err(io(format!("making {SHADOWS} in verified_root")))?;
        let shadows = sys::open_dir_beneath(&held, SHADOWS).map_err(io(format!("opening {SHADOWS}")))?;
        Ok(Homes { catalog, held, incoming, shadows, catalog_path, held_path })
    }

    pub fn catalog_path(&self) -> &Path {
        &self.catalog_path
    }

    pub fn held_path(&self) -> &Path {
        &self.held_path
    }

    /// Where files are made before they go into a home.
    pub fn incoming(&self) -> &Arc<OwnedFd> {
        &self.incoming
    }

    /// The folder of a run's checked images (`.shadows/RUN`), made when `make`; `None` when it has none.
    pub fn shadows(&self, run: &str, make: bool) -> Result<Option<OwnedFd>, HomeError> {
        if make {
            sys::make_private_dir_in(&self.shadows, run).map_err(io(format!("making the images of {run}")))?;
        }
        match sys::open_dir_beneath(&self.shadows, run) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(errno) => Err(io(format!("opening the images of {run}"))(errno)),
        }
    }

    /// The run's home, where it is; `None` when it has none.
    pub fn find(&self, run: &str) -> Result<Option<RunHome>, HomeError> {
        let published = self.open_in(&self.catalog, &self.catalog_path, run)?;
        let held = self.open_in(&self.held, &self.held_path, run)?;
        match (published, held) {
            (Some(_), Some(_)) => Err(HomeError::Twice { run: run.to_owned() }),
            (Some(fd), None) => Ok(Some(RunHome { run: run.to_owned(), fd, published: true })),
            (None, Some(fd)) => Ok(Some(RunHome { run: run.to_owned(), fd, published: false })),
            (None, None) => Ok(None),
        }
    }

    /// The run's home, made (held back) when it has none; with whether it was made.
    pub fn find_or_make(&self, run: &str) -> Result<(RunHome, bool), HomeError> {
        // A home is always in exactly one root once made (it moves by rename), so a run found in neither has none:
        // make it; another request making it at the same time makes it once.
        for _ in 0..8 {
            if let Some(home) = self.find(run)? {
                return Ok((home, false));
            }
            match sys::make_dir_mode_in(&self.held, run, 0o750) {
                Ok(true) => {
                    let fd =
                        sys::open_dir_beneath(&self.held, run).map_err(io(format!("opening the home of {run}")))?;
                    return Ok((RunHome { run: run.to_owned(), fd, published: false }, true));
                }
                Ok(false) => continue,
                Err(errno) => return Err(io(format!("making the home of {run}"))(errno)),
            }
        }
        Err(HomeError::Io { what: format!("finding the home of {run} (it keeps moving)"), errno: Errno::EAGAIN })
    }

    /// Publishes a held run: its home moves into `catalog_root` whole. `false` when it has no held home.
    pub fn publish(&self, run: &str) -> Result<bool, HomeError> {
        self.move_home(&self.held, &self.catalog, run)
    }

    /// Takes a published run out of readers' sight: its home moves back to `verified_root` whole. `false` when it
    /// was not published.
    pub fn withdraw(&self, run: &str) -> Result<bool, HomeError> {
        self.move_home(&self.catalog, &self.held, run)
    }

    fn move_home(&self, from: &OwnedFd, to: &OwnedFd, run: &str) -> Result<bool, HomeError> {
        match sys::rename_between(from, run, to, run) {
            Ok(true) => {}
            Ok(false) => return Err(HomeError::Twice { run: run.to_owned() }),
            Err(Errno::ENOENT) => return Ok(false),
            Err(errno) => return Err(io(format!("moving the home of {run}"))(errno)),
        }
        sys::sync_dir(to).and_then(|()| sys::sync_dir(from)).map_err(io(format!("syncing the move of {run}")))?;
        Ok(true)
    }

    /// Removes the verified copies of `databases` from a home (a withdrawn run's, or a failed database's): the
    /// database files and their `-wal`/`-shm`. Returns what they held.
    pub fn remove_copies(&self, home: &RunHome, databases: &[String]) -> Result<Usage, HomeError> {
        let mut removed = Usage::default();
        for database in databases {
            for suffix in ["", "-wal", "-shm"] {
                let name = format!("{database}{suffix}");
                match sys::stat_in(&home.fd, &name).map_err(io(format!("a look at {name}")))? {
                    Some(stat) if sys::is_regular_file(&stat) => {
                        sys::unlink_in(&home.fd, &name).map_err(io(format!("removing {name}")))?;
                        removed.bytes += stat.st_size.max(0) as u64;
                        removed.files += 1;
                    }
                    _ => {}
                }
            }
        }
        sys::sync_dir(&home.fd).map_err(io(format!("syncing the home of {}", home.run)))?;
        if let Some(shadows) = self.shadows(&home.run, false)? {
            for database in databases {
                for name in [database.clone(), format!("{database}{IN_SYNC}")] {
                    if let Some(stat) = sys::stat_in(&shadows, &name).map_err(io(format!("a look at {name}")))? {
                        sys::unlink_in(&shadows, &name).map_err(io(format!("removing {name}")))?;
                        removed.bytes += stat.st_size.max(0) as u64;
                        removed.files += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// The runs published now (folders in `catalog_root`).
    pub fn published(&self) -> Result<Vec<String>, HomeError> {
        Self::runs_in(&self.catalog)
    }

    /// The runs held back now (folders in `verified_root`).
    pub fn held(&self) -> Result<Vec<String>, HomeError> {
        Self::runs_in(&self.held)
    }

    fn runs_in(root: &OwnedFd) -> Result<Vec<String>, HomeError> {
        let mut runs: Vec<String> = sys::list_dir(root)
            .map_err(io("listing a catalog root"))?
            .into_iter()
            .filter(|(name, stat)| !name.starts_with('.') && sys::is_dir(stat))
            .map(|(name, _)| name)
            .collect();
        runs.sort();
        Ok(runs)
    }

    /// Removes what `.incoming` holds: files whose making a crash interrupted. Returns how many.
    pub fn sweep_incoming(&self) -> Result<usize, HomeError> {
        let entries = sys::list_dir(self.incoming.as_ref()).map_err(io(format!("listing {INCOMING}")))?;
        for (name, _) in &entries {
            sys::remove_tree_in(self.incoming.as_ref(), name).map_err(io(format!("removing {INCOMING}/{name}")))?;
        }
        Ok(entries.len())
    }

    /// What a run's home and its checked images hold: bytes of regular files, and entries (the home itself
    /// counted).
    pub fn usage(&self, home: &RunHome) -> Result<Usage, HomeError> {
        let mut usage = Usage { bytes: 0, files: 1 };
        let mut count = |_: &str, stat: &nix::sys::stat::FileStat| {
            usage.files += 1;
            if sys::is_regular_file(stat) {
                usage.bytes = usage.bytes.saturating_add(stat.st_size.max(0) as u64);
            }
        };
        walk(&home.fd, 0, &mut count).map_err(io(format!("measuring the home of {}", home.run)))?;
        if let Some(shadows) = self.shadows(&home.run, false)? {
            walk(&shadows, 0, &mut count).map_err(io(format!("measuring the images of {}", home.run)))?;
        }
        Ok(usage)
    }

    /// Every entry of `catalog_root` that is not a plain file or folder (a symlink leads out of the mount a reader
    /// sees; a device or socket is nothing a reader should open), as paths relative to `catalog_root`.
    pub fn strays(&self) -> Result<Vec<String>, HomeError> {
        let mut strays = Vec::new();
        for (name, stat) in sys::list_dir(&self.catalog).map_err(io("listing catalog_root"))? {
            if !sys::is_dir(&stat) {
                strays.push(name);
                continue;
            }
            let folder = sys::open_dir_beneath(&self.catalog, &name).map_err(io(format!("opening {name}")))?;
            walk(&folder, 0, &mut |path, stat| {
                if !sys::is_dir(stat) && !sys::is_regular_file(stat) {
                    strays.push(format!("{name}/{path}"));
                }
            })
            .map_err(io(format!("walking {name}")))?;
        }
        strays.sort();
        Ok(strays)
    }

    /// Every entry of a published home that its readers cannot read (not in their group, or without the group's
    /// read bit, or a folder without its search bit), as paths relative to `catalog_root`.
    pub fn unreadable(&self, readers_gid: u32) -> Result<Vec<String>, HomeError> {
        let mut unreadable = Vec::new();
        for run in self.published()? {
            let folder = sys::open_dir_beneath(&self.catalog, &run).map_err(io(format!("opening {run}")))?;
            let home = sys::fstat(&folder).map_err(io(format!("a look at {run}")))?;
            if !readable(&home, readers_gid) {
                unreadable.push(run.clone());
            }
            walk(&folder, 0, &mut |path, stat| {
                if (sys::is_dir(stat) || sys::is_regular_file(stat)) && !readable(stat, readers_gid) {
                    unreadable.push(format!("{run}/{path}"));
                }
            })
            .map_err(io(format!("walking {run}")))?;
        }
        unreadable.sort();
        Ok(unreadable)
    }

    fn open_in(&self, root: &OwnedFd, root_path: &Path, run: &str) -> Result<Option<OwnedFd>, HomeError> {
        match sys::open_dir_beneath(root, run) {
            Ok(fd) => Ok(Some(fd)),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                Err(HomeError::NotAFolder { name: run.to_owned(), root: root_path.to_owned() })
            }
            Err(errno) => Err(io(format!("opening the home of {run}"))(errno)),
        }
    }
}

/// Whether the readers' group may read a file, or read and search a folder.
fn readable(stat: &nix::sys::stat::FileStat, readers_gid: u32) -> bool {
    let needs = if sys::is_dir(stat) { 0o050 } else { 0o040 };
    stat.st_gid == readers_gid && stat.st_mode & needs == needs
}

/// Calls `each` with the path (relative to `dir`) and lstat of every entry beneath `dir`, 16 folders deep at most.
fn walk(dir: &OwnedFd, depth: u32, each: &mut dyn FnMut(&str, &nix::sys::stat::FileStat)) -> Result<(), Errno> {
    fn inner(
        dir: &OwnedFd,
        prefix: &str,
        depth: u32,
        each: &mut dyn FnMut(&str, &nix::sys::stat::FileStat),
    ) -> Result<(), Errno> {
        for (name, stat) in sys::list_dir(dir)? {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            each(&path, &stat);
            if sys::is_dir(&stat) && depth < 16 {
                inner(&sys::open_dir_beneath(dir, &name)?, &path, depth + 1, each)?;
            }
        }
        Ok(())
    }
    inner(dir, "", depth, each)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn homes(dir: &Path) -> Homes {
        let (catalog, held) = (dir.join("catalog"), dir.join("catalog-verified"));
        std::fs::create_dir_all(&catalog).unwrap();
        std::fs::create_dir_all(&held).unwrap();
        let incoming = sys::open_dir(&held).unwrap();
        sys::make_private_dir_in(&incoming, INCOMING).unwrap();
        sys::make_private_dir_in(&incoming, SHADOWS).unwrap();
        Homes {
            catalog: sys::open_dir(&catalog).unwrap(),
            incoming: Arc::new(sys::open_dir_beneath(&incoming, INCOMING).unwrap()),
            shadows: sys::open_dir_beneath(&incoming, SHADOWS).unwrap(),
            held: incoming,
            catalog_path: catalog,
            held_path: held,
        }
    }

    #[test]
    fn a_home_moves_whole_between_the_roots_and_keeps_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let homes = homes(dir.path());
        let run = format!("01KFYA32R09C5KJYNH1SM2W1DR_{}", "x".repeat(228));
        let (home, made) = homes.find_or_make(&run).unwrap();
        assert!(made && !home.published);
        sys::create_file_in(&home.fd, "genomes.sqlite", 0o640).unwrap();
        assert!(!homes.find_or_make(&run).unwrap().1, "made once");
        assert!(homes.publish(&run).unwrap());
        assert_eq!(homes.published().unwrap(), std::slice::from_ref(&run));
        assert!(homes.held().unwrap().is_empty());
        // The descriptor opened before the move still names the home.
        assert!(sys::stat_in(&home.fd, "genomes.sqlite").unwrap().is_some());
        let found = homes.find(&run).unwrap().unwrap();
        assert!(found.published);
        assert_eq!(homes.usage(&found).unwrap(), Usage { bytes: 0, files: 2 });
        assert!(homes.withdraw(&run).unwrap());
        assert!(!homes.withdraw(&run).unwrap());
        let removed = homes.remove_copies(&homes.find(&run).unwrap().unwrap(), &["genomes.sqlite".into()]).unwrap();
        assert_eq!(removed.files, 1);
        assert!(homes.published().unwrap().is_empty());
    }

    #[test]
    fn strays_and_leftovers_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let homes = homes(dir.path());
        let (home, _) = homes.find_or_make("R_1").unwrap();
        homes.publish("R_1").unwrap();
        sys::symlink_in(Path::new("/etc/passwd"), &home.fd, "genomes.sqlite").unwrap();
        std::os::unix::fs::symlink("/tmp", dir.path().join("catalog/elsewhere")).unwrap();
        assert_eq!(homes.strays().unwrap(), ["R_1/genomes.sqlite", "elsewhere"]);
        sys::create_file_in(homes.incoming().as_ref(), ".upload-x.tmp", 0o600).unwrap();
        assert_eq!(homes.sweep_incoming().unwrap(), 1);
        assert_eq!(homes.sweep_incoming().unwrap(), 0);
    }
}
