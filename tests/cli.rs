//! The two binaries as processes: `evosync policy check`, `evosync-gate explain`, and the gate's answers when its
//! configuration or a policy is broken (it denies, never allows).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const ADMIN: &str = env!("CARGO_BIN_EXE_evosync");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(acme_policy: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["replicas/acme", "policies", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("policies/acme.yaml"), acme_policy).unwrap();
        std::fs::write(
            dir.path().join("evosync.yaml"),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: /usr/local/bin/sqlite3_rsync\naudit_log: {0}/state/audit.log\n",
                dir.path().display()
            ),
        )
        .unwrap();
        Host { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("evosync.yaml")
    }

    fn gate(&self, command: Option<&str>) -> Output {
        let mut gate = Command::new(GATE);
        gate.arg("--config").arg(self.config()).args(["--party", "acme"]).env_remove("SSH_ORIGINAL_COMMAND");
        if let Some(command) = command {
            gate.env("SSH_ORIGINAL_COMMAND", command);
        }
        gate.output().unwrap()
    }

    fn explain(&self, party: &str, command: &str) -> Output {
        Command::new(GATE)
            .arg("--config")
            .arg(self.config())
            .args(["explain", "--party", party, "--", command])
            .output()
            .unwrap()
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.path("state/audit.log")).unwrap_or_default()
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const GOOD: &str = "party: acme\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n";

#[test]
fn the_shipped_example_policies_are_valid() {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let files: Vec<PathBuf> = std::fs::read_dir(&policies)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 2);
    let output = Command::new(ADMIN).args(["policy", "check"]).args(&files).output().unwrap();
    assert!(output.status.success(), "{}{}", stdout(&output), stderr(&output));
}

#[test]
fn policy_check_says_what_is_wrong_where() {
    let host = Host::new(GOOD);
    std::fs::write(host.path("policies/beta.yaml"), "party: beta\npush: maybe\n").unwrap();
    std::fs::write(host.path("policies/gamma.yaml"), "party: delta\n").unwrap();
    let output = Command::new(ADMIN).arg("--config").arg(host.config()).args(["policy", "check"]).output().unwrap();
    assert!(!output.status.success());
    let out = stdout(&output);
    assert!(out.contains("ok       ") && out.contains("acme.yaml"), "{out}");
    assert!(out.contains("beta.yaml is invalid") && out.contains("push"), "{out}");
    assert!(out.contains("gamma.yaml is invalid") && out.contains("names party 'delta'"), "{out}");
    assert!(stderr(&output).contains("2 of 3 policies are invalid"), "{}", stderr(&output));

    // EVOSYNC_CONFIG is honoured, and a missing configuration is a one-line error.
    let output = Command::new(ADMIN).env("EVOSYNC_CONFIG", host.config()).args(["policy", "check"]).output().unwrap();
    assert!(stdout(&output).contains("acme.yaml"));
    let output =
        Command::new(ADMIN).args(["--config", "/nonexistent/evosync.yaml", "policy", "check"]).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("cannot read the configuration /nonexistent/evosync.yaml"));
}

#[test]
fn explain_prints_the_decision_without_changing_anything() {
    let host = Host::new(GOOD);
    let push = format!("sqlite3_rsync --replica genomes.sqlite /data/evorun-sync/{RUN}/genomes.sqlite 2>/dev/null");
    let output = host.explain("acme", &push);
    assert!(output.status.success(), "{}", stdout(&output));
    let out = stdout(&output);
    assert!(out.contains("allow: push of run '01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run' (run folder would be created)"));
    assert!(out.contains("--replica genomes.sqlite genomes.sqlite"), "{out}");
    assert!(out.contains(&format!("in: {}", host.path("replicas/acme").join(RUN).display())), "{out}");
    assert!(!host.path("replicas/acme").join(RUN).exists(), "explain creates nothing");

    let output = host.explain("acme", "sqlite3_rsync --replica g /x/y/z; id");
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("refuse (command): ';' is not allowed: shell operators"), "{}", stdout(&output));

    let output = host.explain("beta", &push);
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("refuse (policy)") && stdout(&output).contains("beta.yaml"));
    assert!(host.audit().is_empty(), "explain writes no audit line");
}

#[test]
fn a_broken_or_missing_policy_denies() {
    let push = format!("sqlite3_rsync --replica genomes.sqlite /data/evorun-sync/{RUN}/genomes.sqlite 2>/dev/null");
    for broken in [
        "party: acme\npush: true\ncreate_runs: true\nlimits:\n  max_db_bytes: huge\n",
        "party: acme\npush: true\npush_everything: true\n",
        "party: other\npush: true\ncreate_runs: true\n",
        "{{{{ not yaml",
        "",
    ] {
        let host = Host::new(broken);
        let output = host.gate(Some(&push));
        assert_eq!(output.status.code(), Some(1), "{broken:?}");
        assert!(stderr(&output).contains("has no usable policy"), "{broken:?}: {}", stderr(&output));
        assert!(host.audit().contains("code=policy"), "{}", host.audit());
        assert!(!host.path("replicas/acme").join(RUN).exists());
    }
    let host = Host::new(GOOD);
    std::fs::remove_file(host.path("policies/acme.yaml")).unwrap();
    let output = host.gate(Some(&push));
    assert_eq!(output.status.code(), Some(1));
    assert!(host.audit().contains("no policy for party 'acme'"), "{}", host.audit());
}

#[test]
fn a_refusal_speaks_sqlite3_rsyncs_protocol_to_the_stock_client() {
    let host = Host::new(GOOD);
    let output =
        host.gate(Some("sqlite3_rsync --replica genomes.sqlite /data/evorun-sync/nope/genomes.sqlite 2>/dev/null"));
    assert_eq!(output.status.code(), Some(1));
    let message = &output.stdout;
    assert_eq!(message[0], 0x62, "REPLICA_ERROR");
    let length = u32::from_be_bytes(message[1..5].try_into().unwrap()) as usize;
    assert_eq!(message.len(), 5 + length);
    let text = std::str::from_utf8(&message[5..]).unwrap();
    assert!(text.starts_with("evosync-gate: 'nope' is not an allowed run folder name"), "{text}");
    assert!(stderr(&output).contains(text));

    // Not the stock client (mkdir, or another program): plain text on stderr only.
    let output = host.gate(Some("mkdir -p /data/evorun-sync/nope"));
    assert!(output.stdout.is_empty());
    assert!(stderr(&output).contains("evosync-gate: 'nope' is not an allowed run folder name"));
    let output = host.gate(None);
    assert!(output.stdout.is_empty());
    assert!(stderr(&output).contains("interactive login"));
}

#[test]
fn a_broken_configuration_denies_without_telling_the_worker_its_paths() {
    let output = Command::new(GATE)
        .args(["--config", "/nonexistent/evosync.yaml", "--party", "acme"])
        .env("SSH_ORIGINAL_COMMAND", format!("sqlite3_rsync --replica g /{RUN}/genomes.sqlite"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(output.stdout[0], 0x62);
    let worker_view = String::from_utf8_lossy(&output.stdout[5..]).into_owned();
    assert!(worker_view.contains("configuration is broken"), "{worker_view}");
    assert!(!worker_view.contains("/nonexistent"), "{worker_view}");
}
