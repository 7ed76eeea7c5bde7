//! `evosync doctor` on a host set up as the README says (nothing to fix, exit 0) and on one with every kind of fault
//! it knows (each reported with its fix, exit 1), in text and JSON.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ADMIN: &str = env!("CARGO_BIN_EXE_evosync");
const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    /// Folders with the modes systemd/evosync-tmpfiles.conf gives them, a valid policy, the real sqlite3_rsync, and
    /// an sshd_config (with its own host key) that forces the gate on the evosync account.
    fn healthy() -> Host {
        Host::healthy_in(tempfile::tempdir().unwrap())
    }

    /// As `healthy`, in `dir` (`common::test_dir` gives one that sshd's StrictModes accepts up to `/`).
    fn healthy_in(dir: tempfile::TempDir) -> Host {
        let root = dir.path();
        for (sub, mode) in [("replicas", 0o755), ("policies", 0o755), ("state", 0o2770), ("state/locks", 0o2770)] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
            std::fs::set_permissions(root.join(sub), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(root.join("policies/acme.yaml"), "party: acme\npush: true\n").unwrap();
        let root = root.to_owned();
        let host = Host { dir };
        host.write_config(&common::sqlite3_rsync_path());
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(root.join("host_key"))
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::write(
            host.sshd_config(),
            format!(
                "Port 2222\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nUsePAM no\n\
                 Match User evosync\n  ForceCommand {GATE} --config {}\n",
                root.join("host_key").display(),
                host.config().display()
            ),
        )
        .unwrap();
        let output = Command::new(ADMIN).arg("--config").arg(host.config()).args(["init"]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        host
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.root().join("evosync.yaml")
    }

    fn sshd_config(&self) -> PathBuf {
        self.root().join("sshd_config")
    }

    fn write_config(&self, sqlite3_rsync: &Path) {
        std::fs::write(
            self.config(),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: {1}\ngate: {GATE}\n",
                self.root().display(),
                sqlite3_rsync.display()
            ),
        )
        .unwrap();
    }

    fn doctor(&self, json: bool) -> Output {
        let mut command = Command::new(ADMIN);
        command.arg("--config").arg(self.config()).arg("doctor").arg("--sshd-config").arg(self.sshd_config());
        if json {
            command.arg("--json");
        }
        command.output().unwrap()
    }

    fn findings(&self) -> (Option<i32>, serde_json::Value) {
        let output = self.doctor(true);
        let value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("doctor --json printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout))
        });
        (output.status.code(), value)
    }
}

fn status_of<'a>(report: &'a serde_json::Value, check: &str) -> &'a str {
    let found = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == check);
    found.unwrap_or_else(|| panic!("no check {check}: {report}"))["status"].as_str().unwrap()
}

fn fix_of(report: &serde_json::Value, check: &str) -> String {
    let found = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == check).unwrap();
    found["fix"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_host_set_up_as_documented_has_nothing_to_fix() {
    common::require_account("evosync");
    let host = Host::healthy();
    let (code, report) = host.findings();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    for check in ["configuration", "gate", "sqlite3_rsync", "seccomp", "state dir", "policies", "replica root"] {
        assert_eq!(status_of(&report, check), "ok", "{check}: {report:#}");
    }
    assert_eq!(status_of(&report, "sshd"), "ok", "sshd -t accepts the test config: {report:#}");
    let memory = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "memory limit").unwrap();
    assert!(memory["found"].as_str().unwrap().contains("RLIMIT_AS"), "{memory}");
    let text = host.doctor(false);
    assert!(String::from_utf8_lossy(&text.stdout).contains("nothing to fix"));
}

#[test]
fn every_fault_is_reported_with_its_fix_and_exit_1() {
    let host = Host::healthy();
    // An sqlite3_rsync older than the page-size fix.
    let old = host.root().join("old_sqlite3_rsync");
    common::write_executable(&old, "#!/bin/sh\necho '2025-05-29 14:26:00 0000000000000000000000000000000000000000'\n");
    host.write_config(&old);
    // A state dir others may enter, a policies folder the group may write, an invalid policy, a broken sshd_config.
    std::fs::set_permissions(host.root().join("state"), std::fs::Permissions::from_mode(0o2777)).unwrap();
    std::fs::set_permissions(host.root().join("policies"), std::fs::Permissions::from_mode(0o775)).unwrap();
    let sshd_config = std::fs::read_to_string(host.sshd_config()).unwrap();
    std::fs::write(host.sshd_config(), format!("NoSuchKeyword yes\n{sshd_config}")).unwrap();

    let (code, report) = host.findings();
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    assert_eq!(status_of(&report, "sqlite3_rsync"), "fail");
    assert!(fix_of(&report, "sqlite3_rsync").contains("build-sqlite3-rsync.sh"));
    assert_eq!(status_of(&report, "state dir"), "fail");
    assert!(fix_of(&report, "state dir").contains("chmod 2770"), "{report:#}");
    assert_eq!(status_of(&report, "policies"), "fail");
    assert!(fix_of(&report, "policies").contains("chmod go-w"));
    assert_eq!(status_of(&report, "sshd"), "fail");

    std::fs::set_permissions(host.root().join("policies"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(host.root().join("policies/beta.yaml"), "party: beta\npush: maybe\n").unwrap();
    let (_, report) = host.findings();
    assert_eq!(status_of(&report, "policies"), "fail");
    assert!(fix_of(&report, "policies").contains("evosync policy check"));

    let text = host.doctor(false);
    let said = String::from_utf8_lossy(&text.stdout);
    assert!(said.contains("FAIL  sqlite3_rsync") && said.contains("fix: "), "{said}");
    assert_eq!(text.status.code(), Some(1));
}

#[test]
fn a_catalog_folder_without_its_setgid_bit_is_reported_with_its_fix() {
    common::require_account("evosync");
    let host = Host::healthy();
    let config = std::fs::read_to_string(host.config()).unwrap();
    let catalog = host.root().join("catalog");
    std::fs::write(host.config(), format!("{config}catalog_root: {}\n", catalog.display())).unwrap();
    let output = Command::new(ADMIN).arg("--config").arg(host.config()).arg("init").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (_, report) = host.findings();
    assert_eq!(status_of(&report, "catalog"), "ok", "{report:#}");
    // The held runs' folder loses its setgid bit: what the service makes in it would fall out of the readers'
    // group.
    let verified = host.root().join("catalog-verified");
    let mode = std::fs::metadata(&verified).unwrap().permissions().mode() & 0o777;
    std::fs::set_permissions(&verified, std::fs::Permissions::from_mode(mode)).unwrap();
    let (code, report) = host.findings();
    assert_eq!((code, status_of(&report, "catalog")), (Some(1), "fail"), "{report:#}");
    assert!(fix_of(&report, "catalog").contains("chmod 2700"), "{report:#}");
}

/// Issue 18: every path the service (as `evosync`) must write and cannot is reported with its fix, found by asking
/// the kernel as that account, changing nothing; and the managed authorized_keys file is held to sshd's StrictModes.
#[test]
fn what_the_service_account_cannot_write_is_reported_with_its_fix_and_nothing_changes() {
    use std::os::unix::fs::MetadataExt;
    common::require_account("evosync");
    let host = Host::healthy_in(common::test_dir("doctor-service"));
    let keys = host.root().join("keys/evosync");
    let config = std::fs::read_to_string(host.config()).unwrap();
    std::fs::write(host.config(), format!("{config}authorized_keys: {}\n", keys.display())).unwrap();
    let output = Command::new(ADMIN).arg("--config").arg(host.config()).arg("init").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (code, report) = host.findings();
    assert_eq!(code, Some(0), "{report:#}");
    for check in ["service writes", "authorized keys"] {
        assert_eq!(status_of(&report, check), "ok", "{check}: {report:#}");
    }

    // As hosts set up before the service could act as its own account: the folders root's.
    let root_owns = |path: &Path| nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
    root_owns(&host.root().join("replicas"));
    root_owns(keys.parent().unwrap());
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o620)).unwrap();
    let snapshot = || -> Vec<(PathBuf, u32, u32)> {
        let mut all = Vec::new();
        for folder in ["replicas", "policies", "state", "keys"] {
            let folder = host.root().join(folder);
            let meta = std::fs::metadata(&folder).unwrap();
            all.push((folder.clone(), meta.uid(), meta.mode()));
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::metadata(&path).unwrap();
                all.push((path, meta.uid(), meta.mode()));
            }
        }
        all
    };
    let before = snapshot();
    let (code, report) = host.findings();
    assert_eq!((code, status_of(&report, "service writes")), (Some(1), "fail"), "{report:#}");
    let found = report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "service writes").unwrap();
    let found = found["found"].as_str().unwrap();
    for path in [host.root().join("replicas"), keys.parent().unwrap().to_owned()] {
        assert!(found.contains(&format!("evosync may not write {}", path.display())), "{found}");
        assert!(fix_of(&report, "service writes").contains(&format!("chown evosync {}", path.display())));
    }
    assert!(!found.contains("policies"), "what it may write is not reported: {found}");
    assert_eq!(status_of(&report, "authorized keys"), "fail", "{report:#}");
    assert!(fix_of(&report, "authorized keys").contains(&format!("chmod go-w {}", keys.display())));
    assert_eq!(snapshot(), before, "doctor changed nothing");

    // `evosync init` again gives the service what it writes.
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = Command::new(ADMIN).arg("--config").arg(host.config()).arg("init").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (code, report) = host.findings();
    assert_eq!(code, Some(0), "{report:#}");
}
