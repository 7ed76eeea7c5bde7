//! What the service's account must be able to write, and whether it can. One list (`service_needs`) serves three
//! doors: `evosync init` gives these paths to the service's account, `evosync doctor` asks the kernel whether that
//! account may write each (changing nothing), and every admin action asks for itself, before it changes anything,
//! whether it may write what it is about to (`refusal`), so that a process that may not is refused up front with
//! the command to run as root, never half-way.
//!
//! Per account mode:
//! - shared account: party trees are the service's own account's (`evosync`), so the service adds parties (their
//!   policy in `policies_dir`, their tree in `replica_root`), and rewrites the managed authorized_keys file (its
//!   folder and the file are `evosync`'s, which sshd's StrictModes accepts for the account that logs in with it);
//! - per-party accounts: a party's tree, lock folder and policy belong to `evosync-NAME`, which only root can give,
//!   so `party add` is root's; an authorized_keys file read for many accounts must be root's, so the service
//!   changes keys only where none is managed (AuthorizedKeysCommand mode).

use crate::config::{AccountMode, Config, SHARED_ACCOUNT};
use crate::fs::sys::{self, WriteAccess};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A path the service writes, what for, and how root lets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub path: PathBuf,
    pub access: WriteAccess,
    /// The account must own it too: a file replaced by rename keeps its owner, which only root may change.
    pub owned: bool,
    /// What fails without it.
    pub for_what: &'static str,
    /// What root runs to allow it.
    pub fix: String,
}

impl Need {
    fn new(path: &Path, access: WriteAccess, for_what: &'static str, fix: String) -> Need {
        Need { path: path.to_owned(), access, owned: false, for_what, fix }
    }

    fn folder(path: &Path, for_what: &'static str, fix: String) -> Need {
        Need::new(path, WriteAccess::EntriesIn, for_what, fix)
    }
}

fn give_folder(path: &Path, mode: &str) -> String {
    format!("chown {SHARED_ACCOUNT} {0} && chmod {mode} {0}", path.display())
}

fn group_folder(path: &Path) -> String {
    format!("chgrp {SHARED_ACCOUNT} {0} && chmod 2770 {0}", path.display())
}

/// Where a new party's policy goes (shared-account mode).
pub fn policies_need(config: &Config) -> Need {
    Need::folder(&config.policies_dir, "a new party's policy (party add)", give_folder(&config.policies_dir, "0755"))
}

/// Where a new party's tree goes (shared-account mode).
pub fn replica_root_need(config: &Config) -> Need {
    Need::folder(&config.replica_root, "a new party's tree (party add)", give_folder(&config.replica_root, "0755"))
}

/// The managed authorized_keys file: its folder (the new file is renamed into place there), the file (its owner is
/// kept) and its lock file.
pub fn authorized_keys_needs(path: &Path) -> Vec<Need> {
    let for_what = "the managed authorized_keys file (party enable and disable, SSH keys)";
    let folder = path.parent().unwrap_or(Path::new("/"));
    let lock = super::authorized_keys::lock_path(path);
    let mut needs = vec![Need::folder(folder, for_what, give_folder(folder, "0755"))];
    if path.exists() {
        let fix = format!("chown {SHARED_ACCOUNT}:{SHARED_ACCOUNT} {0} && chmod 0600 {0}", path.display());
        needs.push(Need { owned: true, ..Need::new(path, WriteAccess::File, for_what, fix) });
    }
    if lock.exists() {
        let fix = format!("chown {SHARED_ACCOUNT} {0} && chmod 0600 {0}", lock.display());
        needs.push(Need::new(&lock, WriteAccess::File, for_what, fix));
    }
    needs
}

/// Everything the service writes with this configuration and these parties: its store and locks, each party's tree
/// (uploads), the catalog, and in shared-account mode what its admin actions write.
pub fn service_needs(config: &Config, parties: &[String]) -> Vec<Need> {
    let mut needs = vec![Need::folder(
        &config.state_dir,
        "the state store's journal, the admin lock",
        group_folder(&config.state_dir),
    )];
    let lock = config.state_dir.join(super::atomic::ADMIN_LOCK);
    if lock.exists() {
        let fix = format!("chgrp {SHARED_ACCOUNT} {0} && chmod 0660 {0}", lock.display());
        needs.push(Need::new(&lock, WriteAccess::File, "the admin lock (one admin action at a time)", fix));
    }
    let store = config.store_path();
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", store.display()));
        if path.exists() {
            let fix = format!("chgrp {SHARED_ACCOUNT} {0} && chmod 0660 {0}", path.display());
            needs.push(Need::new(&path, WriteAccess::File, "the state store", fix));
        }
    }
    let per_party = config.account_mode == AccountMode::PerParty;
    if per_party {
        for party in parties {
            let folder = config.locks_dir().join(party);
            if folder.exists() {
                let fix = format!("evosync party add {party} (as root: it gives the folder its owner and mode)");
                needs.push(Need::folder(&folder, "a replica's lock (re-verification, the readers' copies)", fix));
            }
        }
    } else {
        let locks = config.locks_dir();
        needs.push(Need::folder(
            &locks,
            "a replica's lock (re-verification, the readers' copies)",
            group_folder(&locks),
        ));
    }
    if let Some(folder) = config.gate_socket().parent().filter(|f| *f != config.state_dir && f.exists()) {
        needs.push(Need::folder(folder, "the gates' socket", give_folder(folder, "0755")));
    }
    for party in parties {
        let tree = config.replica_root.join(party);
        if tree.exists() {
            let fix = if per_party {
                format!("chmod 2770 {0} && usermod -aG evosync-{party} {SHARED_ACCOUNT}", tree.display())
            } else {
                format!("chown -R {SHARED_ACCOUNT} {}", tree.display())
            };
            needs.push(Need::folder(&tree, "the party's run folders (register)", fix));
        }
    }
    for folder in [config.catalog_root(), config.verified_root()] {
        needs.push(Need::folder(&folder, "the catalog", format!("chown {SHARED_ACCOUNT} {}", folder.display())));
    }
    if let Some(log) = &config.audit_log {
        let fix = format!("chown {SHARED_ACCOUNT} {}", log.display());
        match log.exists() {
            true => needs.push(Need::new(log, WriteAccess::File, "audit_log", fix)),
            false => {
                let folder = log.parent().unwrap_or(Path::new("/"));
                needs.push(Need::folder(folder, "audit_log", give_folder(folder, "0755")));
            }
        }
    }
    if !per_party {
        needs.push(policies_need(config));
        needs.push(replica_root_need(config));
        if let Some(path) = &config.authorized_keys {
            needs.extend(authorized_keys_needs(path));
        }
    }
    needs
}

/// Why `need` is not met for the account with `ids` (uid, gid): `None` when it is. `may_write` is the kernel's
/// answer for that account.
pub fn unmet(need: &Need, ids: (u32, u32), may_write: std::io::Result<bool>) -> Option<String> {
    match may_write {
        Ok(true) => {}
        Ok(false) => return Some(format!("may not write {}", need.path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("{} is missing", need.path.display()))
        }
        Err(e) => return Some(format!("cannot tell whether it may write {}: {e}", need.path.display())),
    }
    if need.owned {
        let owner = std::fs::symlink_metadata(&need.path).map(|m| (m.uid(), m.gid())).ok();
        if owner != Some(ids) {
            return Some(format!("does not own {} (a rewrite keeps its owner and group)", need.path.display()));
        }
    }
    None
}

/// Whether this process may do what `needs` say; for a process that may not, the refusal names what it lacks, the
/// command to run as root instead (`command`), and how root would let it. Root may do everything.
pub fn refusal(needs: &[Need], command: &str) -> Option<NeedsRoot> {
    if sys::is_root() {
        return None;
    }
    let ids = sys::effective_ids();
    needs.iter().find_map(|need| {
        unmet(need, ids, sys::may_write(&need.path, need.access)).map(|why| NeedsRoot {
            why: format!("{} {why}, which {} needs", account(), need.for_what),
            command: command.to_owned(),
            fix: Some(need.fix.clone()),
        })
    })
}

/// This process's account, by name.
pub fn account() -> String {
    sys::account_name().unwrap_or_else(|| format!("uid {}", sys::uid()))
}

/// An admin action this process may not carry out, refused before anything changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsRoot {
    /// What it lacks.
    pub why: String,
    /// The command that does it as root.
    pub command: String,
    /// How root would let this account do it itself.
    pub fix: Option<String>,
}

impl std::fmt::Display for NeedsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: nothing was changed; run as root: {}", self.why, self.command)?;
        if let Some(fix) = &self.fix {
            write!(f, " (or let the service do it: {fix}; `evosync doctor` lists what it needs)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: &str, extra: &str) -> Config {
        Config::parse(&format!(
            "replica_root: /srv/evosync/replicas\npolicies_dir: /etc/evosync/policies\nstate_dir: /var/lib/evosync\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\naccount_mode: {mode}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_service_writes_what_its_actions_write_only_in_shared_account_mode() {
        let keys = "authorized_keys: /etc/evosync/authorized_keys/evosync\ncatalog_root: /srv/evosync/catalog\n";
        let paths = |config: &Config| -> Vec<PathBuf> {
            service_needs(config, &["acme".into()]).into_iter().map(|n| n.path).collect()
        };
        let shared = paths(&config("shared", keys));
        for path in ["/var/lib/evosync", "/var/lib/evosync/locks", "/etc/evosync/policies", "/srv/evosync/replicas"] {
            assert!(shared.contains(&PathBuf::from(path)), "{path}: {shared:?}");
        }
        assert!(shared.contains(&PathBuf::from("/etc/evosync/authorized_keys")), "{shared:?}");
        assert!(shared.contains(&PathBuf::from("/srv/evosync/catalog-verified")), "{shared:?}");
        let per_party = paths(&config("per-party", keys));
        for path in ["/etc/evosync/policies", "/srv/evosync/replicas", "/etc/evosync/authorized_keys"] {
            assert!(!per_party.contains(&PathBuf::from(path)), "root's in per-party mode: {path}");
        }
    }

    #[test]
    fn a_need_is_unmet_when_the_kernel_says_no_or_the_owner_differs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "").unwrap();
        let need = Need { owned: true, ..Need::new(&file, WriteAccess::File, "keys", "chown".into()) };
        let meta = std::fs::metadata(&file).unwrap();
        let me = (meta.uid(), meta.gid());
        assert_eq!(unmet(&need, me, Ok(true)), None);
        assert!(unmet(&need, (me.0 + 1, me.1), Ok(true)).unwrap().contains("does not own"));
        assert!(unmet(&need, (me.0, me.1 + 1), Ok(true)).unwrap().contains("does not own"));
        assert!(unmet(&need, me, Ok(false)).unwrap().contains("may not write"));
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(unmet(&need, me, Err(missing)).unwrap().contains("is missing"));
        let refused =
            NeedsRoot { why: "evosync may not write /p".into(), command: "evosync party add acme".into(), fix: None };
        assert_eq!(
            refused.to_string(),
            "evosync may not write /p: nothing was changed; run as root: evosync party add acme"
        );
    }
}
