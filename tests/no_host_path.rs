//! No byte the worker receives names a folder of the central host: through real sshd, with the stock sqlite3_rsync,
//! for `--commcheck` (which makes the replica side echo the names it was given), a normal push and refused ones.

mod common;

use common::Sshd;
use std::path::{Path, PathBuf};
use std::process::Output;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_no-host-path";
const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");

struct Central {
    dir: tempfile::TempDir,
    sshd: Sshd,
    key: PathBuf,
}

impl Central {
    fn start() -> Central {
        let dir = common::test_dir("no-host-path");
        let root = dir.path();
        for sub in ["replicas/acme", "replicas/beta", "policies", "state", "worker"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let policy = "push: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n";
        std::fs::write(root.join("policies/acme.yaml"), format!("party: acme\n{policy}")).unwrap();
        std::fs::write(
            root.join("evosync.yaml"),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: {1}\naudit_log: {0}/state/audit.log\nlock_wait_seconds: 3\n",
                root.display(),
                common::sqlite3_rsync_path().display()
            ),
        )
        .unwrap();
        common::chown_to(&root.join("replicas"), "evosync");
        common::chown_to(&root.join("state"), "evosync");
        let sshd = Sshd::start("");
        let (key, public) = sshd.new_client_key("acme");
        let config = root.join("evosync.yaml");
        sshd.set_authorized_keys(
            "evosync",
            &format!("command=\"{GATE} --config {} --party acme\",restrict {public}\n", config.display()),
        );
        Central { dir, sshd, key }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn push(&self, local: &Path, remote: &str, extra: &[&str]) -> Output {
        self.sshd.sqlite3_rsync(&self.key, local, "evosync", remote, extra)
    }

    /// Every spelling of the host's replica root: as configured and as the kernel resolves it.
    fn host_paths(&self) -> Vec<String> {
        let configured = self.root().join("replicas");
        let resolved = configured.canonicalize().unwrap();
        vec![configured.display().to_string(), resolved.display().to_string()]
    }

    /// Asserts that nothing the worker got, on stdout or stderr, names the replica root.
    fn assert_no_host_path(&self, output: &Output, what: &str) {
        for stream in [&output.stdout, &output.stderr] {
            let received = String::from_utf8_lossy(stream);
            for path in self.host_paths() {
                assert!(!received.contains(&path), "{what}: the worker received the host path {path}: {received}");
            }
        }
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn nothing_the_worker_receives_names_a_host_folder() {
    let central = Central::start();
    let genomes = central.root().join("worker/genomes.sqlite");
    common::make_db(&genomes, "genomes", 300, 800);
    let remote = format!("/data/evorun-sync/{RUN}/genomes.sqlite");

    // --commcheck: the replica side reports the names it was handed.
    let commcheck = central.push(&genomes, &remote, &["--commcheck"]);
    let said = text(&commcheck);
    assert!(said.contains("zReplica='genomes.sqlite'"), "the replica side names its database relatively: {said}");
    central.assert_no_host_path(&commcheck, "--commcheck");

    // A normal push, verbose, lands and says nothing of the host's folders.
    let push = central.push(&genomes, &remote, &["-v"]);
    assert!(push.status.success(), "push failed: {}", text(&push));
    let replica = central.root().join("replicas/acme").join(RUN).join("genomes.sqlite");
    assert_eq!(common::db_digest(&replica), common::db_digest(&genomes));
    central.assert_no_host_path(&push, "push");

    // Refusals: a run name the policy does not allow, a path outside the party's tree, and a database that is a
    // folder on the host (a confinement refusal about what is there).
    let refused = central.push(&genomes, "/data/evorun-sync/nope/genomes.sqlite", &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).contains("evosync-gate:"), "{}", text(&refused));
    central.assert_no_host_path(&refused, "refused run name");
    let outside = central.push(&genomes, "/data/evorun-sync/../../etc/genomes.sqlite", &[]);
    assert!(!outside.status.success());
    central.assert_no_host_path(&outside, "refused path");
    let folder = central.root().join("replicas/acme").join(RUN).join("features.sqlite");
    std::fs::create_dir(&folder).unwrap();
    let features = central.push(&genomes, &format!("/data/evorun-sync/{RUN}/features.sqlite"), &[]);
    assert!(!features.status.success());
    assert!(text(&features).contains("is a folder"), "{}", text(&features));
    central.assert_no_host_path(&features, "refused replica");
}
