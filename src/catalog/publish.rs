//! The published catalog: one real folder per published run, `catalog_root/RUN/`, holding symlinks to the run's
//! verified databases and to its `analysisResults/` and `generationFeatures/` folders in the party's tree. A reader
//! rooted at `catalog_root` finds a run with one `stat` and cannot tell parties apart.
//!
//! A run's folder is built beside the others under a dot-name no reader looks at, then swapped in with
//! RENAME_EXCHANGE (or renamed in when new); a withdrawal renames the folder away before removing it. A reader sees a
//! run whole, or not at all.
//!
//! Readers (accounts in `catalog_group`) follow the links into the party trees: `reader_acl` is the POSIX ACL a party
//! tree carries so that they may read there, and nothing else may.

use crate::fs::sys::{self, AclEntry, ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER_OBJ};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The folders of a run a reader serves files from.
pub const RUN_FOLDERS: [&str; 2] = ["analysisResults", "generationFeatures"];

pub struct Catalog {
    root: OwnedFd,
    path: PathBuf,
}

/// What a published run's folder holds: link name → target.
pub type Links = BTreeMap<String, PathBuf>;

impl Catalog {
    pub fn open(path: &Path) -> std::io::Result<Catalog> {
        Ok(Catalog { root: sys::open_dir(path)?, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Publishes `run` with exactly `links`, replacing what was published before, atomically.
    pub fn publish(&self, run: &str, links: &Links) -> std::io::Result<()> {
        let staging = hidden_name("staging", run);
        sys::make_dir_in(&self.root, &staging)?;
        let built = (|| {
            let folder = sys::open_dir_beneath(&self.root, &staging)?;
            for (name, target) in links {
                sys::symlink_in(target, &folder, name)?;
            }
            sys::sync_dir(&folder)?;
            if sys::rename_new_in(&self.root, &staging, run)? {
                return Ok(());
            }
            // Published before: swap the new folder in, then remove the old one from under its hidden name.
            sys::exchange_in(&self.root, &staging, run)?;
            sys::remove_tree_in(&self.root, &staging)
        })();
        if built.is_err() {
            let _ = sys::remove_tree_in(&self.root, &staging);
        }
        built?;
        sys::sync_dir(&self.root)?;
        Ok(())
    }

    /// Takes `run` out of the catalog at once; `false` when it was not published.
    pub fn withdraw(&self, run: &str) -> std::io::Result<bool> {
        let gone = hidden_name("withdrawn", run);
        match sys::rename_new_in(&self.root, run, &gone) {
            Ok(true) => {}
            Ok(false) => return Err(std::io::Error::other(format!("{gone} is in the way"))),
            Err(nix::errno::Errno::ENOENT) => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
        sys::sync_dir(&self.root)?;
        sys::remove_tree_in(&self.root, &gone)?;
        Ok(true)
    }

    /// One published run's links; `None` when it is not published.
    pub fn published_run(&self, run: &str) -> std::io::Result<Option<Links>> {
        match sys::stat_in(&self.root, run)? {
            Some(stat) if sys::is_dir(&stat) => {
                let folder = sys::open_dir_beneath(&self.root, run)?;
                Ok(Some(
                    sys::list_dir(&folder)?
                        .into_iter()
                        .filter_map(|(link, _)| sys::read_link_in(&folder, &link).map(|target| (link, target)))
                        .collect(),
                ))
            }
            _ => Ok(None),
        }
    }

    /// Every published run with its links (hidden leftovers of an interrupted swap are removed on the way).
    pub fn published(&self) -> std::io::Result<BTreeMap<String, Links>> {
        let mut runs = BTreeMap::new();
        for (name, stat) in sys::list_dir(&self.root)? {
            if name.starts_with('.') {
                let _ = sys::remove_tree_in(&self.root, &name);
                continue;
            }
            if !sys::is_dir(&stat) {
                continue;
            }
            let folder = sys::open_dir_beneath(&self.root, &name)?;
            let links = sys::list_dir(&folder)?
                .into_iter()
                .filter_map(|(link, _)| sys::read_link_in(&folder, &link).map(|target| (link, target)))
                .collect();
            runs.insert(name, links);
        }
        Ok(runs)
    }
}

/// `.KIND-<digest of the run>-<random>`: short whatever the run's name, and starting with a dot, which no reader
/// takes for a run.
fn hidden_name(kind: &str, run: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(run.as_bytes());
    format!(".{kind}-{}-{}", crate::time::hex(&digest[..8]), &crate::time::new_id()[..8])
}

/// The ACL of a party tree: its owner everything; its group (the shared account's, or in per-party mode the party's
/// own, which the service belongs to) read and search, or everything when `group_writes`; the readers' group read
/// and search; nobody else anything. Set as the default too, so whatever is made in the tree inherits it.
pub fn reader_acl(readers_gid: u32, group_writes: bool) -> Vec<AclEntry> {
    let group = if group_writes { 7 } else { 5 };
    vec![
        AclEntry { tag: ACL_USER_OBJ, perm: 7, id: None },
        AclEntry { tag: ACL_GROUP_OBJ, perm: group, id: None },
        AclEntry { tag: ACL_GROUP, perm: 5, id: Some(readers_gid) },
        AclEntry { tag: ACL_MASK, perm: 7, id: None },
        AclEntry { tag: ACL_OTHER, perm: 0, id: None },
    ]
}

/// Gives the readers' group read access to a party tree and to everything in it now (folders also by default, for
/// what comes later). Files keep their owner's and group's bits; nobody else gets any.
pub fn grant_readers(tree: &Path, readers_gid: u32, group_writes: bool) -> std::io::Result<()> {
    let folder_acl = reader_acl(readers_gid, group_writes);
    sys::set_acl(tree, &folder_acl, Some(&folder_acl))?;
    for entry in std::fs::read_dir(tree)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            grant_readers(&entry.path(), readers_gid, group_writes)?;
        } else if kind.is_file() {
            let mode = std::os::unix::fs::PermissionsExt::mode(&entry.metadata()?.permissions());
            let (owner, group) = (((mode >> 6) & 7) as u16, ((mode >> 3) & 7) as u16);
            let file_acl = [
                AclEntry { tag: ACL_USER_OBJ, perm: owner, id: None },
                AclEntry { tag: ACL_GROUP_OBJ, perm: group, id: None },
                AclEntry { tag: ACL_GROUP, perm: 4, id: Some(readers_gid) },
                AclEntry { tag: ACL_MASK, perm: group | 4, id: None },
                AclEntry { tag: ACL_OTHER, perm: 0, id: None },
            ];
            sys::set_acl(&entry.path(), &file_acl, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_published_whole_replaced_atomically_and_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let run = format!("01KFYA32R09C5KJYNH1SM2W1DR_{}", "x".repeat(228));
        let mut links = Links::new();
        links.insert("genomes.sqlite".into(), PathBuf::from("/replicas/acme/R/genomes.sqlite"));
        catalog.publish(&run, &links).unwrap();
        assert_eq!(catalog.published().unwrap()[&run], links);
        links.insert("features.sqlite".into(), PathBuf::from("/replicas/acme/R/features.sqlite"));
        catalog.publish(&run, &links).unwrap();
        assert_eq!(catalog.published().unwrap()[&run], links);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no staging folder is left behind");
        assert!(catalog.withdraw(&run).unwrap());
        assert!(!catalog.withdraw(&run).unwrap());
        assert!(catalog.published().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn acls_encode_as_the_kernel_reads_them() {
        let bytes = sys::acl_xattr(&reader_acl(1234, false));
        assert_eq!(&bytes[..4], &2u32.to_le_bytes());
        assert_eq!(bytes.len(), 4 + 5 * 8);
        // Sorted by tag: user_obj, group_obj, the named group, mask, other.
        let tags: Vec<u16> = bytes[4..].chunks(8).map(|e| u16::from_le_bytes([e[0], e[1]])).collect();
        assert_eq!(tags, [ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER]);
        assert_eq!(u32::from_le_bytes(bytes[4 + 16 + 4..4 + 16 + 8].try_into().unwrap()), 1234);
    }
}
