//! The gate's hand-over to the real sqlite3_rsync, driven directly (as sshd would start it) with an idle worker on
//! the other end of stdin: wall clock, signal passing, and the per-replica and per-party locks.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN_A: &str = "01KFYA32R09C5KJYNH1SM2W1DR_a";
const RUN_B: &str = "01KFYA32R09C5KJYNH1SM2W1DR_b";

fn sqlite3_rsync() -> PathBuf {
    std::env::var_os("EVOSYNC_TEST_SQLITE3_RSYNC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin/sqlite3_rsync"))
}

struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(limits: &str) -> Host {
        let rsync = sqlite3_rsync();
        assert!(rsync.exists(), "{} is missing: run scripts/setup-test-env.sh", rsync.display());
        let dir = tempfile::tempdir().unwrap();
        for sub in ["replicas/acme", "policies", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("policies/acme.yaml"),
            format!("party: acme\npush: true\ncreate_runs: true\nlimits:\n{limits}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("evosync.yaml"),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: {1}\naudit_log: {0}/state/audit.log\nlock_wait_seconds: 1\n",
                dir.path().display(),
                rsync.display()
            ),
        )
        .unwrap();
        Host { dir }
    }

    /// A gate serving a push whose worker never speaks: sqlite3_rsync waits on stdin until stopped.
    /// A push whose origin sent the first byte of its first message and nothing more: the gate hands over (it
    /// waits for the origin's first byte before it takes anything), and the sync waits for the rest.
    fn idle_push(&self, run: &str) -> Child {
        let mut child = Command::new(GATE)
            .arg("--config")
            .arg(self.dir.path().join("evosync.yaml"))
            .args(["--party", "acme"])
            .env("SSH_ORIGINAL_COMMAND", format!("sqlite3_rsync --replica genomes.sqlite /{run}/genomes.sqlite"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &[0x41]).unwrap();
        child
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/audit.log")).unwrap_or_default()
    }

    fn wait_for_audit(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.audit().contains(needle) {
            assert!(Instant::now() < deadline, "no '{needle}' in the audit log: {}", self.audit());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn replica_dir(&self, run: &str) -> PathBuf {
        self.dir.path().join("replicas/acme").join(run)
    }
}

/// Closes the worker's side and waits for the gate.
fn finish(child: Child) -> (i32, String) {
    let output = child.wait_with_output().unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Waits for the gate while the worker's side stays open and silent.
fn finish_idle(mut child: Child) -> (i32, String) {
    let stdin = child.stdin.take();
    let result = finish(child);
    drop(stdin);
    result
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

fn process_gone(pid: u32) -> bool {
    let mut status = String::new();
    match std::fs::File::open(format!("/proc/{pid}/status")) {
        Ok(mut file) => {
            let _ = file.read_to_string(&mut status);
            status.contains("State:\tZ")
        }
        Err(_) => true,
    }
}

#[test]
fn the_wall_clock_stops_a_sync_that_runs_too_long() {
    let host = Host::new("  max_sync_seconds: 1\n");
    let started = Instant::now();
    let (status, _) = finish_idle(host.idle_push(RUN_A));
    assert_eq!(status, 124, "a timed-out sync exits like timeout(1)");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(host.audit().contains("event=outcome verdict=done exit=timeout"), "{}", host.audit());
}

#[test]
fn sigterm_and_sighup_reach_the_sync_and_the_gate_reports_them() {
    for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGHUP] {
        let host = Host::new("  max_sync_seconds: 60\n");
        let gate = host.idle_push(RUN_A);
        host.wait_for_audit("verdict=allow");
        let deadline = Instant::now() + Duration::from_secs(5);
        let child = loop {
            if let Some(&pid) = children_of(gate.id()).first() {
                break pid;
            }
            assert!(Instant::now() < deadline, "sqlite3_rsync never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(gate.id() as i32), signal).unwrap();
        let (status, _) = finish_idle(gate);
        assert_eq!(status, 128 + signal as i32, "{signal}");
        assert!(process_gone(child), "sqlite3_rsync was stopped too");
        assert!(host.audit().contains(&format!("exit=signal-{}", signal as i32)), "{}", host.audit());
    }
}

#[test]
fn a_second_push_of_the_same_replica_waits_then_is_refused() {
    let host = Host::new("  max_sync_seconds: 30\n");
    let first = host.idle_push(RUN_A);
    host.wait_for_audit("verdict=allow");
    let (status, said) = finish_idle(host.idle_push(RUN_A));
    assert_eq!(status, 1);
    assert!(
        said.contains("another push of 01KFYA32R09C5KJYNH1SM2W1DR_a/genomes.sqlite, or the central host's"),
        "{said}"
    );
    drop(first); // closes stdin: the idle sync ends
}

#[test]
fn max_concurrent_syncs_bounds_a_partys_pushes() {
    let host = Host::new("  max_sync_seconds: 30\n  max_concurrent_syncs: 1\n");
    let first = host.idle_push(RUN_A);
    host.wait_for_audit("verdict=allow");
    let (status, said) = finish_idle(host.idle_push(RUN_B));
    assert_eq!(status, 1);
    assert!(said.contains("party 'acme' already runs 1 syncs at once"), "{said}");
    let (_, _) = finish(first);
    // With the slot free again, the other run goes through to sqlite3_rsync.
    let (_, _) = finish(host.idle_push(RUN_B));
    assert!(host.replica_dir(RUN_B).is_dir());
}

#[test]
fn the_party_quota_refuses_a_push_once_it_is_used_up() {
    let host = Host::new("  max_party_bytes: 1000\n");
    std::fs::create_dir_all(host.replica_dir(RUN_A)).unwrap();
    std::fs::write(host.replica_dir(RUN_A).join("genomes.sqlite"), vec![0u8; 2000]).unwrap();
    let (status, said) = finish_idle(host.idle_push(RUN_B));
    assert_eq!(status, 1);
    assert!(said.contains("at or over its quota (max_party_bytes: 1000)"), "{said}");
    assert!(!Path::new(&host.replica_dir(RUN_B)).exists(), "a refused push creates nothing, not even the run folder");
}

/// Stands in for sqlite3_rsync to probe, from inside the sandbox, what the sync may touch.
const PROBE: &str = r#"#!/bin/sh
[ "$1" = --version ] && { echo "2026-07-24 19:02:57 probe"; exit 0; }
run_folder=$(dirname "$3")
try() { if "$@" >/dev/stderr 2>&1; then echo "allowed: $*"; else echo "denied: $*"; fi; }
try touch "$run_folder/genomes.sqlite-wal"
try touch "$OUTSIDE/escape"
try touch "OUTSIDE_DIR/escape"
try touch "$run_folder/../escape"
try cat /etc/hostname
try ls "$run_folder/.."
echo "fsize=$(ulimit -f)"
"#;

#[test]
fn the_sandbox_confines_the_sync_to_its_run_folder() {
    let host = Host::new("  max_db_bytes: 1MiB\n");
    let probe = host.dir.path().join("probe.sh");
    common::write_executable(
        &probe,
        &PROBE.replace("OUTSIDE_DIR", &host.dir.path().join("outside").display().to_string()),
    );
    let config = host.dir.path().join("evosync.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        &format!("sqlite3_rsync: {}", sqlite3_rsync().display()),
        &format!("sqlite3_rsync: {}", probe.display()),
    );
    std::fs::write(&config, text).unwrap();
    let outside = host.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let output = Command::new(GATE)
        .arg("--config")
        .arg(&config)
        .args(["--party", "acme"])
        .env("SSH_ORIGINAL_COMMAND", format!("sqlite3_rsync --replica genomes.sqlite /{RUN_A}/genomes.sqlite"))
        .env("OUTSIDE", &outside)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    if !host.audit().contains("sandbox=\"landlock") {
        eprintln!("this kernel has no Landlock; the sandbox part is not tested here: {}", host.audit());
        return;
    }
    assert!(report.contains("allowed: touch") && report.contains("genomes.sqlite-wal"), "{report}");
    assert!(report.contains(&format!("denied: touch {}/escape", outside.display())), "{report}");
    assert!(report.contains("denied: touch") && report.contains("/../escape"), "{report}");
    assert!(report.contains("denied: cat /etc/hostname"), "{report}");
    assert!(report.contains("denied: ls"), "{report}");
    assert!(report.contains("fsize=2048"), "RLIMIT_FSIZE is max_db_bytes (ulimit -f counts 512-byte blocks): {report}");
    assert!(!outside.join("escape").exists());
    // OUTSIDE came from the gate's environment; the sync gets a clean one, so the probe saw an empty value.
    assert!(report.contains("denied: touch /escape"), "a clean environment: {report}");
}
