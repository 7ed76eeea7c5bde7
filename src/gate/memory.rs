//! The memory limit of the sync child (`limits.max_sync_memory`), enforced by the kernel: a cgroup v2 `memory.max`
//! (with `memory.swap.max` 0) where the gate may have one, else RLIMIT_AS.
//!
//! The gate may have a cgroup only beneath `sync_cgroup` (the configuration), a cgroup v2 folder delegated to the
//! gate accounts, and only when the gate itself already runs beneath it: the kernel lets an unprivileged process move
//! another only within a subtree whose common ancestor's `cgroup.procs` it may write. Whether that holds is decided
//! by a pure function of `/proc/self/mountinfo` and `/proc/self/cgroup` (`cgroup_for`); otherwise, and whenever the
//! cgroup cannot be made, the child gets RLIMIT_AS, and the audit line says which and why.

use crate::fs::sys;
use crate::size::ByteSize;
use std::fs::File;
use std::path::{Path, PathBuf};

/// How the child's memory is held, prepared in the gate before the fork.
pub struct ChildMemory {
    pub limit: ByteSize,
    method: Method,
}

enum Method {
    /// `memory.max` of a cgroup made for this sync; the child moves itself in through `procs` before exec.
    Cgroup { dir: PathBuf, procs: File },
    /// RLIMIT_AS; `why` says why there is no cgroup (for the audit line).
    AddressSpace { why: String },
}

impl ChildMemory {
    /// Prepares the limit: a cgroup beneath `sync_cgroup` when the gate may have one there, else RLIMIT_AS.
    pub fn prepare(limit: ByteSize, sync_cgroup: Option<&Path>) -> ChildMemory {
        let method = match sync_cgroup {
            None => Method::AddressSpace { why: "no sync_cgroup configured".into() },
            Some(folder) => match make_cgroup(folder, limit.0) {
                Ok((dir, procs)) => Method::Cgroup { dir, procs },
                Err(why) => Method::AddressSpace { why },
            },
        };
        ChildMemory { limit, method }
    }

    /// For the audit line's `sandbox=`: the limit and how it is enforced.
    pub fn summary(&self) -> String {
        match &self.method {
            Method::Cgroup { dir, .. } => format!("memory {} (cgroup v2 {})", self.limit, dir.display()),
            Method::AddressSpace { why } => format!("memory {} (rlimit-as: {why})", self.limit),
        }
    }

    /// What the forked child needs to apply the limit to itself (the gate keeps this, to read and remove the cgroup
    /// after).
    pub fn for_child(&self) -> std::io::Result<ChildSide> {
        Ok(match &self.method {
            Method::Cgroup { procs, .. } => ChildSide::Cgroup(procs.try_clone()?),
            Method::AddressSpace { .. } => ChildSide::AddressSpace(self.limit.0),
        })
    }

    /// Whether the child was stopped by the memory limit. For a cgroup, the kernel counts the OOM kills in it. Under
    /// RLIMIT_AS an allocation past the limit fails and SQLite gives up with "out of memory", but the replica side of
    /// sqlite3_rsync exits 0 even then, so the sign is the memory the child got to: a peak resident size of at least
    /// 90 % of the limit, which no ordinary push comes near (they stay within tens of MiB).
    pub fn exceeded(&self, peak_rss: Option<u64>) -> bool {
        match &self.method {
            Method::Cgroup { dir, .. } => oom_kills(dir) > 0,
            Method::AddressSpace { .. } => peak_rss.is_some_and(|peak| peak >= self.limit.0 / 10 * 9),
        }
    }

    /// The cgroup's own peak (memory.peak, kernel 5.19+), when there is one: it covers what the child's page cache
    /// cost too.
    pub fn cgroup_peak(&self) -> Option<u64> {
        match &self.method {
            Method::Cgroup { dir, .. } => std::fs::read_to_string(dir.join("memory.peak")).ok()?.trim().parse().ok(),
            Method::AddressSpace { .. } => None,
        }
    }
}

impl Drop for ChildMemory {
    /// Removes the sync's cgroup once its child is gone (an empty cgroup is removed with rmdir), also when the sync
    /// never started.
    fn drop(&mut self) {
        if let Method::Cgroup { dir, .. } = &self.method {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The limit as the forked child applies it to itself.
pub enum ChildSide {
    Cgroup(File),
    AddressSpace(u64),
}

impl ChildSide {
    /// Called in the forked child, before Landlock (which would deny the write to `cgroup.procs`) and before exec.
    /// Raw system calls only.
    pub fn enforce(&self) -> std::io::Result<()> {
        match self {
            ChildSide::Cgroup(procs) => sys::enter_cgroup(procs),
            ChildSide::AddressSpace(bytes) => sys::limit_address_space(*bytes),
        }
    }
}

/// Makes `folder/push-PID` with the limit set, and opens its `cgroup.procs` for the child to write itself into.
fn make_cgroup(folder: &Path, limit: u64) -> Result<(PathBuf, File), String> {
    if !sys::is_cgroup2(folder) {
        return Err(format!("{} is not a cgroup v2 folder", folder.display()));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_for(folder, &mountinfo, &own)?;
    let dir = folder.join(format!("push-{}", std::process::id()));
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        // Left by a gate of the same pid that was killed: empty, so it may be used again.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let configured = (|| -> std::io::Result<File> {
        std::fs::write(dir.join("memory.max"), limit.to_string())?;
        // No swap: a child over memory.max is stopped, not paged out to grow on.
        match std::fs::write(dir.join("memory.swap.max"), "0") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))
    })();
    configured.map(|procs| (dir.clone(), procs)).map_err(|e| {
        let _ = std::fs::remove_dir(&dir);
        format!(
            "cannot set up {}: {e} (memory controller not enabled in its parent's cgroup.subtree_control?)",
            dir.display()
        )
    })
}

/// Whether the process whose `/proc/self/cgroup` is `own_cgroup` may make and fill a cgroup under `folder`: the
/// folder must lie on a cgroup v2 mount (from `mountinfo`) and the process must already run strictly beneath it.
/// Returns the folder's path within the cgroup hierarchy. Pure.
pub fn cgroup_for(folder: &Path, mountinfo: &str, own_cgroup: &str) -> Result<String, String> {
    let folder_text = folder.to_str().ok_or("sync_cgroup is not UTF-8")?;
    let mount = mountinfo
        .lines()
        .filter_map(|line| {
            let (mount_fields, fs_fields) = line.split_once(" - ")?;
            let fields: Vec<&str> = mount_fields.split(' ').collect();
            (fs_fields.split(' ').next() == Some("cgroup2") && fields.len() >= 5).then(|| (fields[3], fields[4]))
        })
        .filter(|(_, point)| {
            folder_text == *point || folder_text.starts_with(&format!("{}/", point.trim_end_matches('/')))
        })
        .max_by_key(|(_, point)| point.len());
    let Some((root, point)) = mount else {
        return Err(format!("{folder_text} is not on a cgroup v2 mount"));
    };
    let below = folder_text[point.len()..].trim_matches('/');
    let hierarchy = format!("{}/{below}", root.trim_end_matches('/'));
    let hierarchy = if below.is_empty() { root.to_owned() } else { hierarchy };
    let own = own_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 membership")?;
    let prefix = format!("{}/", hierarchy.trim_end_matches('/'));
    if own.starts_with(&prefix) && own.len() > prefix.len() {
        Ok(hierarchy)
    } else {
        Err(format!(
            "the gate runs in cgroup {own}, not beneath {hierarchy}; the kernel lets it move its child only within a \
             subtree it runs in"
        ))
    }
}

/// OOM kills the kernel counted in the cgroup `dir` (memory.events).
fn oom_kills(dir: &Path) -> u64 {
    let events = std::fs::read_to_string(dir.join("memory.events")).unwrap_or_default();
    events
        .lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:1 / / rw,relatime shared:1 - ext4 /dev/root rw
35 22 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_gate_may_have_a_cgroup_only_beneath_the_folder_it_runs_in() {
        let folder = Path::new("/sys/fs/cgroup/evosync.slice");
        let inside = "0::/evosync.slice/sessions/ssh-42\n";
        assert_eq!(cgroup_for(folder, MOUNTINFO, inside).unwrap(), "/evosync.slice");
        let session = "0::/user.slice/user-998.slice/session-7.scope\n";
        let refused = cgroup_for(folder, MOUNTINFO, session).unwrap_err();
        assert!(refused.contains("not beneath /evosync.slice"), "{refused}");
        // The folder itself is not beneath itself: a cgroup with processes cannot hand memory to children.
        assert!(cgroup_for(folder, MOUNTINFO, "0::/evosync.slice\n").is_err());
        // A sibling whose name merely starts the same is not beneath.
        assert!(cgroup_for(folder, MOUNTINFO, "0::/evosync.slice-other/x\n").is_err());
    }

    #[test]
    fn a_folder_off_any_cgroup2_mount_or_a_v1_only_process_gets_no_cgroup() {
        let hybrid = "30 22 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                      31 22 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let error = cgroup_for(Path::new("/sys/fs/cgroup/memory/evosync"), hybrid, "0::/x/y\n").unwrap_err();
        assert!(error.contains("not on a cgroup v2 mount"), "{error}");
        let v1_only = "4:memory:/evosync\n";
        assert!(cgroup_for(Path::new("/sys/fs/cgroup/unified/evosync"), hybrid, v1_only).is_err());
        assert_eq!(
            cgroup_for(Path::new("/sys/fs/cgroup/unified/evosync"), hybrid, "0::/evosync/gate\n").unwrap(),
            "/evosync"
        );
    }

    #[test]
    fn a_sync_cgroup_that_is_no_cgroup_falls_back_to_rlimit_as_and_says_why() {
        let folder = std::env::temp_dir();
        let memory = ChildMemory::prepare(ByteSize(64 << 20), Some(&folder));
        let summary = memory.summary();
        assert!(summary.contains("rlimit-as") && summary.contains("is not a cgroup v2 folder"), "{summary}");
        assert!(matches!(memory.for_child().unwrap(), ChildSide::AddressSpace(bytes) if bytes == 64 << 20));
    }

    #[test]
    fn under_rlimit_as_a_child_held_near_the_limit_was_stopped_by_it() {
        let memory = ChildMemory::prepare(ByteSize(64 << 20), None);
        assert!(memory.summary().starts_with("memory 64MiB (rlimit-as"), "{}", memory.summary());
        assert!(memory.exceeded(Some(62 << 20)));
        assert!(!memory.exceeded(Some(12 << 20)), "an ordinary push is far below its limit");
        assert!(!memory.exceeded(None));
    }
}
