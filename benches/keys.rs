//! Keys at scale, measured (figures only, no timed assertions):
//!  1. regenerating the managed authorized_keys file with 10,000 keys in the store (target <= 50 ms);
//!  2. one AuthorizedKeysCommand lookup with 100,000 keys in the store, as a whole process (target <= 3 ms),
//!     against spawning /bin/true;
//!  3. one ssh login (through the gate, to its answer) with 100,000 keys served by AuthorizedKeysCommand, against
//!     the same 100,000 keys in an authorized_keys file, with the ratio. Needs root and scripts/setup-test-env.sh.
//!
//! Run: `cargo bench --bench keys`.

#[path = "../tests/common/mod.rs"]
mod common;
mod measure;

use evosync::admin::Admin;
use evosync::config::Config;
use evosync::store::{SshKey, Store};
use measure::ratio;
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{HashAlg, PublicKey};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");

fn main() {
    let dir = common::test_dir("bench-keys");
    let small = host(&dir.path().join("small"), 10_000);
    let large = host(&dir.path().join("large"), 100_000);

    // 1. authorized_keys regeneration.
    let config = Config::load(&small.config).unwrap();
    let admin = Admin::open(&config, &small.config, "bench".into()).unwrap();
    let regenerate = median(7, || {
        admin.sync_authorized_keys().unwrap();
    });
    let lines = std::fs::read_to_string(config.authorized_keys.as_ref().unwrap()).unwrap().lines().count();
    println!(
        "authorized_keys regeneration, 10,000 keys ({lines} lines):   {:>8.2} ms (median of 7; target <= 50 ms)",
        ms(regenerate)
    );

    // 2. AuthorizedKeysCommand, whole process.
    let (algorithm, blob) = large.last_key.clone();
    let lookup = |command: &mut Command| {
        let output = command.stdin(Stdio::null()).stderr(Stdio::null()).output().unwrap();
        std::hint::black_box(output);
    };
    let baseline = median(200, || lookup(&mut Command::new("/bin/true")));
    let akc = median(200, || {
        lookup(Command::new(GATE).arg("--config").arg(&large.config).args([
            "authorized-keys",
            "evosync",
            &algorithm,
            &blob,
        ]))
    });
    let printed = Command::new(GATE)
        .arg("--config")
        .arg(&large.config)
        .args(["authorized-keys", "evosync", &algorithm, &blob])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).starts_with("command="), "the lookup finds the key");
    println!(
        "AuthorizedKeysCommand lookup, 100,000 keys, whole process: {:>8.2} ms (median of 200; target <= 3 ms)",
        ms(akc)
    );
    println!(
        "  baseline: spawn /bin/true:                               {:>8.2} ms  (lookup = {:.2}x)",
        ms(baseline),
        ratio(akc, baseline)
    );

    // 3. ssh logins: AuthorizedKeysCommand against a 100,000-line authorized_keys file.
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("getent")
            .args(["passwd", "evosyncauth"])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    {
        println!("ssh login comparison skipped: needs root and scripts/setup-test-env.sh");
        return;
    }
    let file_login = login_time(&large, false);
    let command_login = login_time(&large, true);
    println!("ssh login to the gate's answer, 100,000 keys (median of 15, the client's key last in the store/file):");
    println!("  AuthorizedKeysCommand:      {:>8.2} ms", ms(command_login));
    println!("  authorized_keys file:       {:>8.2} ms", ms(file_login));
    println!("  command / file:             {:>8.2}x", ratio(command_login, file_login));
}

struct Host {
    config: PathBuf,
    /// (algorithm, base64) of the client key, registered last.
    last_key: (String, String),
    client_key: PathBuf,
}

/// A store with `count` keys (the last one a real client key) and a config that manages an authorized_keys file.
fn host(root: &Path, count: usize) -> Host {
    for sub in ["replicas/acme", "policies", "state", "keys"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let config = root.join("evosync.yaml");
    std::fs::write(
        &config,
        format!(
            "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\ngate: {GATE}\nauthorized_keys: {0}/keys/evosync\n\
             audit_log: {0}/state/audit.log\n",
            root.display()
        ),
    )
    .unwrap();
    std::fs::write(root.join("policies/acme.yaml"), "party: acme\npush: true\ncreate_runs: true\n").unwrap();
    let store = Store::open(&root.join("state/state.db")).unwrap();
    store.add_party("acme").unwrap();
    let client_key = root.join("client");
    let status =
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&client_key).status().unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(client_key.with_extension("pub")).unwrap();
    let client = evosync::keys::parse_public_key(&public).unwrap();
    store
        .in_transaction(|store| {
            for n in 0..count - 1 {
                let mut bytes = [0u8; 32];
                bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
                bytes[8] = 0xe5;
                let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(bytes)), "");
                let openssh = key.to_openssh().unwrap();
                let blob = openssh.split_whitespace().nth(1).unwrap().to_owned();
                store.add_ssh_key(&ssh_key(
                    &format!("{n:016x}"),
                    &blob,
                    &key.fingerprint(HashAlg::Sha256).to_string(),
                ))?;
            }
            store.add_ssh_key(&ssh_key("ffffffffffffffff", &client.blob, &client.fingerprint))
        })
        .unwrap();
    Host { config, last_key: (client.algorithm, client.blob), client_key }
}

fn ssh_key(id: &str, blob: &str, fingerprint: &str) -> SshKey {
    SshKey {
        id: id.into(),
        party: "acme".into(),
        algorithm: "ssh-ed25519".into(),
        blob: blob.into(),
        fingerprint: fingerprint.into(),
        comment: String::new(),
        from: vec![],
        expires_at: None,
        created_at: evosync::time::now(),
        revoked_at: None,
        last_used_at: None,
    }
}

/// Median time of one `ssh evosync@127.0.0.1 'mkdir -p RUN'` with the keys served either way.
fn login_time(host: &Host, by_command: bool) -> Duration {
    let root = host.config.parent().unwrap();
    let config = Config::load(&host.config).unwrap();
    let admin = Admin::open(&config, &host.config, "bench".into()).unwrap();
    let extra = if by_command {
        let gate = common::safe_copy(Path::new(GATE), root);
        format!(
            "Match User evosync\n    AuthorizedKeysFile none\n    AuthorizedKeysCommand {} --config {} \
             authorized-keys %u %t %k\n    AuthorizedKeysCommandUser evosyncauth\n",
            gate.display(),
            host.config.display()
        )
    } else {
        String::new()
    };
    let sshd = common::Sshd::start(&extra);
    if !by_command {
        let lines = admin.authorized_key_lines().unwrap();
        sshd.set_authorized_keys("evosync", &(lines.join("\n") + "\n"));
    }
    common::chown_to(&root.join("replicas"), "evosync");
    common::chown_to(&root.join("state"), "evosync");
    let run = "mkdir -p /01KFYA32R09C5KJYNH1SM2W1DR_bench";
    let first = sshd.ssh(&host.client_key, "evosync", run);
    assert!(first.status.success(), "login works: {}", String::from_utf8_lossy(&first.stderr));
    median(15, || {
        let output = sshd.ssh(&host.client_key, "evosync", run);
        assert!(output.status.success());
    })
}

/// One untimed run first.
fn median(n: usize, f: impl FnMut()) -> Duration {
    measure::median(1, n, f)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
