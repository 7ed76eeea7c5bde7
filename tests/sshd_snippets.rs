//! The sshd/ snippets as shipped: `sshd -t` accepts them, and a real sshd configured with them serves pushes in
//! both modes (paths rewritten to this test's folders).

mod common;

use common::Sshd;
use std::path::Path;
use std::process::Command;

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";

fn snippet(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("sshd").join(name)).unwrap()
}

/// `sshd -t` on a minimal configuration followed by `body`.
fn sshd_check(body: &str) -> (bool, String) {
    let dir = common::test_dir("sshd-t");
    let key = dir.path().join("host_key");
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(status.success());
    let config = dir.path().join("sshd_config");
    std::fs::write(&config, format!("HostKey {}\nPidFile none\nUsePAM no\n{body}", key.display())).unwrap();
    let output = Command::new(common::SSHD).arg("-t").arg("-f").arg(&config).output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn the_shipped_snippets_pass_sshd_t() {
    for name in
        ["evosync-shared-account.conf", "evosync-per-party-accounts.conf", "evosync-authorized-keys-command.conf"]
    {
        let (ok, said) = sshd_check(&snippet(name));
        assert!(ok, "{name}: {said}");
    }
}

#[test]
fn sshd_t_catches_a_broken_snippet() {
    let broken = snippet("evosync-per-party-accounts.conf").replace("PermitTTY no", "PermitTTY perhaps");
    let (ok, said) = sshd_check(&broken);
    assert!(!ok);
    assert!(said.contains("unsupported option \"perhaps\""), "{said}");
}

/// A central whose sshd runs with one of the shipped snippets.
struct Central {
    dir: tempfile::TempDir,
    /// The snippet's AuthorizedKeysFile folder (the snippet's setting wins inside its Match block).
    keys_dir: tempfile::TempDir,
    sshd: Sshd,
}

fn central(name: &str, snippet_name: &str, tree_owner: &str) -> Central {
    let dir = common::test_dir(name);
    let root = dir.path();
    std::fs::create_dir_all(root.join("replicas/acme")).unwrap();
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::create_dir_all(root.join("state/locks")).unwrap();
    std::fs::write(root.join("policies/acme.yaml"), "party: acme\npush: true\ncreate_runs: true\n").unwrap();
    std::fs::write(
        root.join("evosync.yaml"),
        format!(
            "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
             sqlite3_rsync: {1}\naudit_log: {0}/state/audit.log\n",
            root.display(),
            common::sqlite3_rsync_path().display()
        ),
    )
    .unwrap();
    common::chown_to(&root.join("replicas/acme"), tree_owner);
    common::chown_to(&root.join("state"), tree_owner);
    // The shipped text with this test's paths; the Match block follows the rig's base configuration.
    let keys_dir = common::test_dir(&format!("{name}-keys"));
    let rendered = snippet(snippet_name)
        .replace("/usr/local/bin/evosync-gate", GATE)
        .replace("/etc/evosync/evosync.yaml", &root.join("evosync.yaml").display().to_string())
        .replace("/etc/evosync/authorized_keys/%u", &format!("{}/%u", keys_dir.path().display()));
    let sshd = Sshd::start(&rendered);
    Central { dir, keys_dir, sshd }
}

impl Central {
    fn write_keys(&self, user: &str, contents: &str) {
        let path = self.keys_dir.path().join(user);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }
}

#[test]
fn per_party_accounts_push_as_their_account_and_get_nothing_else() {
    common::require_account("evosync-acme");
    let central = central("per-party", "evosync-per-party-accounts.conf", "evosync-acme");
    let (key, public) = central.sshd.new_client_key("acme");
    central.write_keys("evosync-acme", &format!("{public}\n"));

    let origin = central.dir.path().join("genomes.sqlite");
    common::make_db(&origin, "genomes", 500, 1000);
    let output = central.sshd.sqlite3_rsync(&key, &origin, "evosync-acme", &format!("/{RUN}/genomes.sqlite"), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replica = central.dir.path().join("replicas/acme").join(RUN).join("genomes.sqlite");
    assert_eq!(common::db_digest(&replica), common::db_digest(&origin));
    let audit = std::fs::read_to_string(central.dir.path().join("state/audit.log")).unwrap();
    assert!(audit.contains("party=acme") && audit.contains("verdict=done exit=0"), "{audit}");

    // A shell, a command, port forwarding: the forced command answers all of them.
    for command in ["", "id", "sh -c 'cat /etc/passwd'"] {
        let output = central.sshd.ssh(&key, "evosync-acme", command);
        assert!(!output.status.success(), "{command:?}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("evosync-gate: "), "{command:?}");
    }
    let forward = Command::new(central.sshd.ssh_wrapper(&key))
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:0:127.0.0.1:22", "evosync-acme@127.0.0.1"])
        .output()
        .unwrap();
    assert!(!forward.status.success(), "port forwarding is refused");
}

#[test]
fn the_shared_account_serves_each_key_as_its_party() {
    common::require_account("evosync");
    let central = central("shared", "evosync-shared-account.conf", "evosync");
    let (key, public) = central.sshd.new_client_key("acme");
    let config = central.dir.path().join("evosync.yaml");
    central.write_keys(
        "evosync",
        &format!("command=\"{GATE} --config {} --party acme\",restrict {public}\n", config.display()),
    );
    let origin = central.dir.path().join("genomes.sqlite");
    common::make_db(&origin, "genomes", 200, 1000);
    let output = central.sshd.sqlite3_rsync(&key, &origin, "evosync", &format!("{RUN}/genomes.sqlite"), &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replica = central.dir.path().join("replicas/acme").join(RUN).join("genomes.sqlite");
    assert_eq!(common::db_digest(&replica), common::db_digest(&origin));

    // A key without command= gets no shell either: the gate has no party for it and refuses.
    let (bare_key, bare_public) = central.sshd.new_client_key("bare");
    central.write_keys(
        "evosync",
        &format!(
            "command=\"{GATE} --config {} --party acme\",restrict {public}\nrestrict,command=\"{GATE} --config {}\" {bare_public}\n",
            config.display(),
            config.display()
        ),
    );
    let output = central.sshd.ssh(&bare_key, "evosync", "id");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("evosync-gate: "));
}
