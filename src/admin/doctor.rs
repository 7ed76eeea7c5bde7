//! `evosync doctor`: looks the host over and says what to fix. Each check is a small independent function from the
//! host to one `Finding` (what was found, and for anything wrong, the fix); `CHECKS` lists them in the order they are
//! printed. Add a check by writing one more function and naming it there. Nothing here changes the host.

use crate::config::{AccountMode, Config};
use crate::fs::sys;
use crate::gate::rsync_version;
use crate::policy::Policy;
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the checks look: the configuration (or why it did not load) and sshd's.
pub struct Host {
    pub config_path: PathBuf,
    pub config: Result<Config, String>,
    /// The sshd binary; its absence is reported, not an error of the doctor.
    pub sshd: PathBuf,
    /// The sshd_config `sshd -t` checks (with the snippets it includes).
    pub sshd_config: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// Wrong: `evosync doctor` exits 1.
    Fail,
    /// Could not be looked at (no configuration).
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub found: String,
    /// What to do about it, for anything but `ok`.
    pub fix: Option<String>,
}

type Check = fn(&Host) -> Finding;

/// Every check, in the order printed.
pub const CHECKS: &[Check] = &[
    configuration,
    sqlite_library,
    gate_binary,
    sqlite3_rsync,
    landlock,
    seccomp,
    memory_limit,
    sshd,
    state_dir,
    policies_dir,
    replica_root,
    accounts,
    party_separation,
    catalog,
    service_writes,
    authorized_keys_modes,
];

/// Runs every check.
pub fn examine(host: &Host) -> Vec<Finding> {
    CHECKS.iter().map(|check| check(host)).collect()
}

/// Whether the host needs fixing (some check failed).
pub fn has_failures(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.status == Status::Fail)
}

fn ok(check: &'static str, found: impl Into<String>) -> Finding {
    Finding { check, status: Status::Ok, found: found.into(), fix: None }
}

fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { check, status: Status::Warn, found: found.into(), fix: Some(fix.into()) }
}

fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { check, status: Status::Fail, found: found.into(), fix: Some(fix.into()) }
}

/// The configuration, or a `skip` finding for a check that needs it.
fn with_config(host: &Host, check: &'static str, look: impl FnOnce(&Config) -> Finding) -> Finding {
    match &host.config {
        Ok(config) => look(config),
        Err(_) => Finding {
            check,
            status: Status::Skip,
            found: "no usable configuration".into(),
            fix: Some("fix the configuration first".into()),
        },
    }
}

fn configuration(host: &Host) -> Finding {
    match &host.config {
        Ok(_) => ok("configuration", format!("{} loads", host.config_path.display())),
        Err(error) => fail(
            "configuration",
            error.clone(),
            format!("fix {} (or write one with `evosync init`)", host.config_path.display()),
        ),
    }
}

/// The SQLite evosync reads and writes its store, the verifications and the copies with (bundled by rusqlite):
/// 3.51.3 fixed a corruption of WAL databases written or checkpointed by two connections at once, which is the
/// store's pattern (the gates and the service are separate processes).
fn sqlite_library(_host: &Host) -> Finding {
    let (version, number) = crate::store::sqlite_version();
    if number < crate::store::MIN_SQLITE_VERSION {
        return fail(
            "sqlite",
            format!("SQLite {version} (older than 3.51.3, which fixed the WAL-reset corruption)"),
            "build evosync with its locked rusqlite (bundled SQLite 3.54.1): cargo build --release --locked",
        );
    }
    ok("sqlite", format!("SQLite {version} (bundled)"))
}

/// First line of `program --version`, run with a clean environment.
fn version_line(program: &Path) -> Option<String> {
    let output = Command::new(program).arg("--version").env_clear().stdin(Stdio::null()).output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().trim().to_owned())
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn gate_binary(host: &Host) -> Finding {
    with_config(host, "gate", |config| {
        let gate = &config.gate;
        if !is_executable(gate) {
            return fail(
                "gate",
                format!("{} is missing or not executable", gate.display()),
                format!(
                    "build with `cargo build --release` and install target/release/evosync-gate as {}",
                    gate.display()
                ),
            );
        }
        let ours = env!("CARGO_PKG_VERSION");
        match version_line(gate) {
            Some(line) if line.ends_with(ours) => ok("gate", format!("{}: {line}", gate.display())),
            Some(line) => warn(
                "gate",
                format!("{}: {line}, while this evosync is {ours}", gate.display()),
                "install the evosync-gate built with this evosync",
            ),
            None => fail("gate", format!("{} does not run", gate.display()), "reinstall evosync-gate"),
        }
    })
}

fn sqlite3_rsync(host: &Host) -> Finding {
    with_config(host, "sqlite3_rsync", |config| {
        let program = &config.sqlite3_rsync;
        let fix = "install it with scripts/build-sqlite3-rsync.sh";
        if !is_executable(program) {
            return fail("sqlite3_rsync", format!("{} is missing or not executable", program.display()), fix);
        }
        let Some(source_id) = version_line(program) else {
            return fail("sqlite3_rsync", format!("{} --version does not run", program.display()), fix);
        };
        match rsync_version::check_source_id(program, &source_id) {
            Ok(()) => ok("sqlite3_rsync", format!("{}: SQLite source {source_id}", program.display())),
            Err(error) => fail("sqlite3_rsync", error.to_string(), fix),
        }
    })
}

fn landlock(_host: &Host) -> Finding {
    match sys::landlock_abi_version() {
        0 => fail(
            "landlock",
            "this kernel offers no Landlock: the sync child is not confined to its run folder",
            "boot a kernel with Landlock enabled (CONFIG_SECURITY_LANDLOCK, `lsm=` including landlock)",
        ),
        abi @ 1..=5 => warn(
            "landlock",
            format!("Landlock ABI {abi}: file rules only{}", if abi >= 4 { ", no tcp" } else { "" }),
            "a kernel with Landlock ABI 6 (Linux 6.12+) also scopes signals and abstract sockets",
        ),
        abi => ok("landlock", format!("Landlock ABI {abi}")),
    }
}

fn seccomp(_host: &Host) -> Finding {
    if sys::seccomp_filter_available() {
        ok("seccomp", "seccomp filters available: the sync child gets no sockets")
    } else {
        fail(
            "seccomp",
            "this kernel takes no seccomp filter: the sync child could open sockets",
            "boot a kernel with CONFIG_SECCOMP_FILTER",
        )
    }
}

/// Whether the memory limit can be a cgroup's memory.max, and if not, why (RLIMIT_AS then holds it).
fn memory_limit(host: &Host) -> Finding {
    with_config(host, "memory limit", |config| {
        let host_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let v2_memory = std::fs::read_to_string(host_v2).is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"));
        let Some(folder) = &config.sync_cgroup else {
            let offer = if v2_memory {
                "this host has cgroup v2 with the memory controller"
            } else {
                "this host has no cgroup v2 memory controller at /sys/fs/cgroup"
            };
            return ok(
                "memory limit",
                format!("max_sync_memory is held by RLIMIT_AS (no sync_cgroup configured; {offer})"),
            );
        };
        if !sys::is_cgroup2(folder) {
            return fail(
                "memory limit",
                format!("sync_cgroup {} is not a cgroup v2 folder", folder.display()),
                "create it under the cgroup v2 mount, or remove sync_cgroup (RLIMIT_AS then holds the memory)",
            );
        }
        let read = |name: &str| std::fs::read_to_string(folder.join(name)).unwrap_or_default();
        let has_memory = |text: String| text.split_whitespace().any(|w| w == "memory");
        if !has_memory(read("cgroup.controllers")) || !has_memory(read("cgroup.subtree_control")) {
            return fail(
                "memory limit",
                format!("the memory controller is not enabled for children of {}", folder.display()),
                format!("echo +memory > {}/cgroup.subtree_control (and in each parent)", folder.display()),
            );
        }
        // Delegated either to the gate accounts' group (group-writable) or, in shared-account mode, to the evosync
        // account itself (owned by it).
        let evosync_uid = nix::unistd::User::from_name("evosync").ok().flatten().map(|u| u.uid.as_raw());
        let delegated = |path: &Path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.mode() & 0o020 != 0 || (Some(m.uid()) == evosync_uid && m.mode() & 0o200 != 0))
        };
        if !delegated(folder) || !delegated(&folder.join("cgroup.procs")) {
            return fail(
                "memory limit",
                format!("{} or its cgroup.procs is not writable by the gate accounts' group", folder.display()),
                format!("chgrp evosync {0} {0}/cgroup.procs && chmod g+w {0} {0}/cgroup.procs", folder.display()),
            );
        }
        ok(
            "memory limit",
            format!(
                "sync_cgroup {} is delegated; a gate whose session runs beneath it gives each child memory.max \
                 (others fall back to RLIMIT_AS, and their audit line says why)",
                folder.display()
            ),
        )
    })
}

fn sshd(host: &Host) -> Finding {
    if !host.sshd.exists() {
        return warn("sshd", format!("no sshd at {}", host.sshd.display()), "install openssh-server");
    }
    let checked = Command::new(&host.sshd).arg("-t").arg("-f").arg(&host.sshd_config).stdin(Stdio::null()).output();
    let output = match checked {
        Ok(output) => output,
        Err(error) => {
            return fail("sshd", format!("cannot run {}: {error}", host.sshd.display()), "run doctor as root")
        }
    };
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return fail(
            "sshd",
            format!("sshd -t -f {} fails: {said}", host.sshd_config.display()),
            "fix the sshd configuration (start from the snippets in sshd/)",
        );
    }
    let mentions_gate = sshd_texts(&host.sshd_config).iter().any(|text| text.contains("evosync"));
    if mentions_gate {
        ok("sshd", format!("sshd -t accepts {}, which sets up evosync", host.sshd_config.display()))
    } else {
        warn(
            "sshd",
            format!("sshd -t accepts {}, but no part of it mentions evosync", host.sshd_config.display()),
            "install one of the snippets in sshd/ (e.g. into /etc/ssh/sshd_config.d/)",
        )
    }
}

/// The sshd_config and the files of the `.d` folder beside it.
fn sshd_texts(config: &Path) -> Vec<String> {
    let mut texts: Vec<String> = std::fs::read_to_string(config).into_iter().collect();
    if let Some(folder) = config.parent().map(|p| p.join("sshd_config.d")) {
        if let Ok(entries) = std::fs::read_dir(folder) {
            texts.extend(entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()));
        }
    }
    texts
}

/// A folder's mode, or the finding that says it is missing.
fn folder_mode(check: &'static str, path: &Path, fix_missing: &str) -> Result<u32, Finding> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(meta.mode() & 0o7777),
        Ok(_) => Err(fail(check, format!("{} is not a folder", path.display()), fix_missing)),
        Err(error) => Err(fail(check, format!("{}: {error}", path.display()), fix_missing)),
    }
}

fn state_dir(host: &Host) -> Finding {
    with_config(host, "state dir", |config| {
        let fix = "create it as systemd/evosync-tmpfiles.conf says (mode 2770, group evosync), or run `evosync init`";
        for folder in [config.state_dir.clone(), config.locks_dir()] {
            let mode = match folder_mode("state dir", &folder, fix) {
                Ok(mode) => mode,
                Err(finding) => return finding,
            };
            if mode & 0o007 != 0 {
                return fail(
                    "state dir",
                    format!("{} has mode {mode:o}: others may reach the store and the locks", folder.display()),
                    format!("chmod 2770 {}", folder.display()),
                );
            }
            if mode & 0o070 != 0o070 {
                return fail(
                    "state dir",
                    format!("{} has mode {mode:o}: the gate accounts cannot write their locks", folder.display()),
                    format!("chgrp evosync {0} && chmod 2770 {0}", folder.display()),
                );
            }
        }
        let store = config.store_path();
        if !store.exists() {
            return warn("state dir", format!("no state store at {}", store.display()), "run `evosync init`");
        }
        ok("state dir", format!("{} and its locks/ are 2770-like; the store exists", config.state_dir.display()))
    })
}

fn policies_dir(host: &Host) -> Finding {
    with_config(host, "policies", |config| {
        let folder = &config.policies_dir;
        let mode = match folder_mode("policies", folder, "create it (root-owned, mode 0755) or run `evosync init`") {
            Ok(mode) => mode,
            Err(finding) => return finding,
        };
        if mode & 0o022 != 0 {
            return fail(
                "policies",
                format!("{} has mode {mode:o}: others than its owner could rewrite the policies", folder.display()),
                format!("chmod go-w {}", folder.display()),
            );
        }
        let mut count = 0;
        let mut broken = Vec::new();
        for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "yaml") {
                count += 1;
                let party = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
                if let Err(error) = Policy::load(&path, party) {
                    broken.push(error.to_string());
                }
            }
        }
        if !broken.is_empty() {
            return fail(
                "policies",
                format!(
                    "{} of {count} policies are invalid (their parties are refused): {}",
                    broken.len(),
                    broken.join("; ")
                ),
                "run `evosync policy check` and fix what it says",
            );
        }
        ok("policies", format!("{}: {count} valid policies, writable by its owner alone", folder.display()))
    })
}

fn replica_root(host: &Host) -> Finding {
    with_config(host, "replica root", |config| {
        let folder = &config.replica_root;
        let mode = match folder_mode("replica root", folder, "create it (root-owned, mode 0755) or run `evosync init`")
        {
            Ok(mode) => mode,
            Err(finding) => return finding,
        };
        if mode & 0o022 != 0 {
            // Shared-account mode: the service's account adds party trees there; per-party mode: only root does.
            let owner = match config.account_mode {
                AccountMode::Shared => crate::config::SHARED_ACCOUNT,
                AccountMode::PerParty => "root",
            };
            return fail(
                "replica root",
                format!("{} has mode {mode:o}: an account could plant a party tree there", folder.display()),
                format!("chown {owner} {0} && chmod 0755 {0}", folder.display()),
            );
        }
        ok("replica root", format!("{} (mode {mode:o})", folder.display()))
    })
}

fn accounts(host: &Host) -> Finding {
    with_config(host, "accounts", |config| {
        let parties: Vec<String> = std::fs::read_dir(&config.policies_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(str::to_owned))
            .collect();
        let wanted: Vec<String> = match config.account_mode {
            AccountMode::Shared => vec!["evosync".into()],
            AccountMode::PerParty => parties.iter().map(|p| format!("evosync-{p}")).collect(),
        };
        let missing: Vec<&String> =
            wanted.iter().filter(|a| nix::unistd::User::from_name(a).ok().flatten().is_none()).collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return fail(
                "accounts",
                format!("missing gate accounts: {}", names.join(", ")),
                "create each with /bin/sh and a root-owned home (as scripts/setup-test-env.sh does)",
            );
        }
        ok("accounts", format!("gate accounts present: {}", wanted.join(", ")))
    })
}

/// Per-party-account mode: each party account in a group of its own, in no other party's group nor the state group;
/// the service's account in every party's group.
fn party_separation(host: &Host) -> Finding {
    with_config(host, "party separation", |config| {
        if config.account_mode != AccountMode::PerParty {
            return ok("party separation", "shared-account mode: one account for every party's gate");
        }
        let groups_of = |account: &str| -> Option<Vec<String>> {
            let user = nix::unistd::User::from_name(account).ok().flatten()?;
            let name = std::ffi::CString::new(account).ok()?;
            let gids = nix::unistd::getgrouplist(&name, user.gid).ok()?;
            Some(
                gids.into_iter()
                    .filter_map(|g| nix::unistd::Group::from_gid(g).ok().flatten().map(|g| g.name))
                    .collect(),
            )
        };
        let mut problems = Vec::new();
        let parties: Vec<String> = std::fs::read_dir(&config.policies_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(str::to_owned))
            .collect();
        let service = groups_of(crate::config::SHARED_ACCOUNT).unwrap_or_default();
        for party in &parties {
            let account = format!("evosync-{party}");
            let Some(groups) = groups_of(&account) else { continue };
            let foreign: Vec<&String> = groups.iter().filter(|g| **g != account).collect();
            if !foreign.is_empty() {
                problems.push(format!("{account} is also in {foreign:?}"));
            }
            if !service.contains(&account) {
                problems.push(format!("{} is not in the group {account}", crate::config::SHARED_ACCOUNT));
            }
        }
        if problems.is_empty() {
            ok("party separation", format!("{} party accounts, each in its own group alone", parties.len()))
        } else {
            fail(
                "party separation",
                problems.join("; "),
                "usermod --gid evosync-NAME --groups '' evosync-NAME; usermod --append --groups evosync-NAME evosync",
            )
        }
    })
}

/// The catalog: `catalog_root` open to its readers' group (2750), `verified_root` closed to everyone but the service
/// (2700), both setgid to that group (so what the service makes there is the readers' once published) and on one
/// file system (runs move between them by rename).
fn catalog(host: &Host) -> Finding {
    with_config(host, "catalog", |config| {
        let group = &config.catalog_group;
        let Some(gid) = sys::group_id(group) else {
            return fail(
                "catalog",
                format!("the readers' group {group} does not exist"),
                format!("groupadd --system {group}"),
            );
        };
        let (root, held) = (config.catalog_root(), config.verified_root());
        let mut devices = Vec::new();
        for (folder, mode) in [(&root, 0o2750), (&held, 0o2700)] {
            let meta = match std::fs::metadata(folder) {
                Ok(meta) => meta,
                Err(e) => return fail("catalog", format!("{}: {e}", folder.display()), "evosync init"),
            };
            let folder_mode = meta.permissions().mode() & 0o7777;
            if meta.gid() != gid || folder_mode != mode {
                return fail(
                    "catalog",
                    format!("{} has group {} and mode {folder_mode:o}", folder.display(), meta.gid()),
                    format!("chgrp {group} {0} && chmod {mode:o} {0}", folder.display()),
                );
            }
            devices.push(meta.dev());
        }
        if devices[0] != devices[1] {
            return fail(
                "catalog",
                format!("{} and {} are on different file systems", root.display(), held.display()),
                "put verified_root beside catalog_root (runs move between them by rename)",
            );
        }
        ok(
            "catalog",
            format!("{} (readers: {group}) and {} (held runs, the service's)", root.display(), held.display()),
        )
    })
}

/// The systemd unit as installed, and its drop-ins: where the service may write under `ProtectSystem=strict`.
const UNIT: &str = "/etc/systemd/system/evosync.service";

/// Every path the service must write, asked of the kernel as the service's account (nothing is changed): the state
/// store and locks, the party trees, the catalog, and in shared-account mode what its admin actions write. When the
/// systemd unit is installed, each must also lie under one of its `ReadWritePaths=`.
fn service_writes(host: &Host) -> Finding {
    with_config(host, "service writes", |config| {
        let account = crate::config::SHARED_ACCOUNT;
        let Some(ids) = sys::account_ids(account) else {
            return fail(
                "service writes",
                format!("there is no account {account}, which the service runs as"),
                "create it as scripts/setup-test-env.sh does, then run `evosync init` again",
            );
        };
        let parties = party_names(config);
        let needs = super::writable::service_needs(config, &parties);
        let mut problems = Vec::new();
        let mut fixes = Vec::new();
        for need in &needs {
            let answer = sys::account_may_write(&need.path, account, need.access);
            if let Err(e) = &answer {
                if e.kind() == std::io::ErrorKind::PermissionDenied && !sys::is_root() {
                    return warn(
                        "service writes",
                        format!("cannot ask what {account} may write: {e}"),
                        "run `evosync doctor` as root",
                    );
                }
            }
            if let Some(why) = super::writable::unmet(need, ids, answer) {
                // A folder on the way it cannot enter explains it better than the path's own mode.
                let (problem, fix) = match blocking_ancestor(&need.path, account) {
                    Some(folder) => (
                        format!("{account} cannot enter {}, on the way to what it writes", folder.display()),
                        format!("chmod o+x {}", folder.display()),
                    ),
                    None => (format!("{account} {why} ({})", need.for_what), need.fix.clone()),
                };
                push_new(&mut problems, problem);
                push_new(&mut fixes, fix);
            }
        }
        let units = unit_texts(Path::new(UNIT));
        if !units.is_empty() {
            let writable = read_write_paths(&units);
            for need in &needs {
                if !writable.iter().any(|rw| need.path.starts_with(rw)) {
                    problems.push(format!(
                        "{} is outside the unit's ReadWritePaths ({})",
                        need.path.display(),
                        need.for_what
                    ));
                    let fix =
                        format!("add {} to ReadWritePaths= in a drop-in (systemctl edit evosync)", need.path.display());
                    push_new(&mut fixes, fix);
                }
            }
        }
        if problems.is_empty() {
            return ok("service writes", format!("{account} may write the {} paths the service writes", needs.len()));
        }
        fail("service writes", problems.join("; "), format!("as root: {}", fixes.join("; ")))
    })
}

fn push_new(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// The first folder above `path`, from `/` down, that `account` may not enter.
fn blocking_ancestor(path: &Path, account: &str) -> Option<PathBuf> {
    let mut folders: Vec<&Path> = path.ancestors().skip(1).filter(|f| !f.as_os_str().is_empty()).collect();
    folders.reverse();
    folders
        .into_iter()
        .find(|folder| sys::account_may_write(folder, account, sys::WriteAccess::Enter).is_ok_and(|may| !may))
        .map(Path::to_path_buf)
}

/// The parties as the policies name them.
fn party_names(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&config.policies_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The unit's text and its drop-ins' (`UNIT.d/*.conf`); none when it is not installed.
fn unit_texts(unit: &Path) -> Vec<String> {
    let mut texts: Vec<String> = std::fs::read_to_string(unit).into_iter().collect();
    if texts.is_empty() {
        return texts;
    }
    let drop_ins = PathBuf::from(format!("{}.d", unit.display()));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(drop_ins).into_iter().flatten().flatten().map(|e| e.path()).collect();
    files.sort();
    texts.extend(
        files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "conf"))
            .filter_map(|f| std::fs::read_to_string(f).ok()),
    );
    texts
}

/// The folders `ReadWritePaths=` opens (an empty assignment clears the list), and the runtime folder; a leading
/// `-` (missing is fine) or `+` is not part of the path.
fn read_write_paths(units: &[String]) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/run/evosync")];
    for line in units.iter().flat_map(|text| text.lines()) {
        let Some(value) = line.trim().strip_prefix("ReadWritePaths=") else { continue };
        if value.trim().is_empty() {
            paths.truncate(1);
        }
        paths.extend(value.split_whitespace().map(|p| PathBuf::from(p.trim_start_matches(['-', '+']))));
    }
    paths
}

/// The managed authorized_keys file as sshd's StrictModes sees it: the file and every folder up to `/` owned by root
/// or the account that logs in with it, and writable by nobody else. Otherwise sshd ignores the file: no key works.
fn authorized_keys_modes(host: &Host) -> Finding {
    with_config(host, "authorized keys", |config| {
        let Some(file) = &config.authorized_keys else {
            return ok("authorized keys", "no managed file (AuthorizedKeysCommand mode)");
        };
        if !file.exists() {
            return warn(
                "authorized keys",
                format!("{} does not exist yet", file.display()),
                "run `evosync authorized-keys write` (or `evosync init --authorized-keys FILE`)",
            );
        }
        // Shared-account mode: one account logs in with this file; otherwise only root may own it.
        let login = match config.account_mode {
            AccountMode::Shared => sys::account_ids(crate::config::SHARED_ACCOUNT).map(|(uid, _)| uid),
            AccountMode::PerParty => None,
        };
        let (bad, fix) = strict_modes_violations(file, login);
        if bad.is_empty() {
            ok("authorized keys", format!("{} and its folders pass sshd's StrictModes", file.display()))
        } else {
            fail("authorized keys", format!("sshd's StrictModes would refuse it: {}", bad.join("; ")), fix.join("; "))
        }
    })
}

/// What StrictModes refuses on `file` and its folders, and the fixes.
fn strict_modes_violations(file: &Path, login: Option<u32>) -> (Vec<String>, Vec<String>) {
    let (mut bad, mut fixes) = (Vec::new(), Vec::new());
    for path in file.ancestors() {
        if path.as_os_str().is_empty() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let owner_ok = meta.uid() == 0 || Some(meta.uid()) == login;
        let mode = meta.mode() & 0o7777;
        if !owner_ok {
            bad.push(format!("{} belongs to uid {}", path.display(), meta.uid()));
            fixes.push(format!("chown root {}", path.display()));
        }
        if mode & 0o022 != 0 {
            bad.push(format!("{} has mode {mode:o}", path.display()));
            fixes.push(format!("chmod go-w {}", path.display()));
        }
    }
    (bad, fixes)
}

/// The findings as text: one line each, the fix below anything not ok.
pub fn render(findings: &[Finding]) -> String {
    let mut text = String::new();
    for finding in findings {
        let status = match finding.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        text.push_str(&format!("{status}  {:<14} {}\n", finding.check, finding.found));
        if let (Some(fix), Status::Warn | Status::Fail) = (&finding.fix, finding.status) {
            text.push_str(&format!("      {:<14} fix: {fix}\n", ""));
        }
    }
    let failed = findings.iter().filter(|f| f.status == Status::Fail).count();
    if failed == 0 {
        text.push_str("nothing to fix\n");
    } else {
        text.push_str(&format!("{failed} to fix\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_read_write_paths_cover_what_the_service_writes_with_the_default_paths() {
        let unit = include_str!("../../systemd/evosync.service").to_owned();
        let config = Config::parse(
            "replica_root: /srv/evosync/replicas\npolicies_dir: /etc/evosync/policies\nstate_dir: /var/lib/evosync\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\nauthorized_keys: /etc/evosync/authorized_keys/evosync\n\
             catalog_root: /srv/evosync/catalog\n",
        )
        .unwrap();
        let writable = read_write_paths(std::slice::from_ref(&unit));
        for need in crate::admin::writable::service_needs(&config, &["acme".into()]) {
            assert!(
                writable.iter().any(|rw| need.path.starts_with(rw)),
                "{} is not writable in the unit",
                need.path.display()
            );
        }
        // A drop-in that empties the list and names one path.
        let narrowed = read_write_paths(&[unit, "[Service]\nReadWritePaths=\nReadWritePaths=-/srv/x\n".into()]);
        assert_eq!(narrowed, [PathBuf::from("/run/evosync"), PathBuf::from("/srv/x")]);
    }

    #[test]
    fn strict_modes_refuse_a_file_others_may_write_or_a_stranger_owns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        let (bad, fixes) = strict_modes_violations(&file, None);
        assert!(bad.iter().any(|b| b.contains("mode 620")), "{bad:?}");
        assert!(fixes.iter().any(|f| f.starts_with("chmod go-w")), "{fixes:?}");
    }

    #[test]
    fn a_host_without_configuration_fails_once_and_skips_what_needs_it() {
        let host = Host {
            config_path: "/nonexistent/evosync.yaml".into(),
            config: Err("cannot read the configuration".into()),
            sshd: "/nonexistent/sshd".into(),
            sshd_config: "/nonexistent/sshd_config".into(),
        };
        let findings = examine(&host);
        assert_eq!(findings.len(), CHECKS.len());
        assert!(has_failures(&findings));
        let failed: Vec<&str> = findings.iter().filter(|f| f.status == Status::Fail).map(|f| f.check).collect();
        assert!(failed.contains(&"configuration"), "{failed:?}");
        assert!(findings.iter().any(|f| f.check == "state dir" && f.status == Status::Skip));
        assert!(findings.iter().all(|f| f.status == Status::Ok || f.fix.is_some()), "every problem has a fix");
        assert!(render(&findings).contains("to fix"));
    }
}
