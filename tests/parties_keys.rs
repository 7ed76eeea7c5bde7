//! Parties and keys end to end: `evosync init`, parties and SSH keys added by the CLI, then real sshd logins in
//! authorized_keys-file mode and in AuthorizedKeysCommand mode, revocation, expiry, disabled parties, `--from`,
//! concurrent key changes, and the audit chain.

mod common;

use common::{evosync_json, Sshd};
use std::path::{Path, PathBuf};
use std::process::Output;

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";
const HAND_WRITTEN: &str = "# kept by hand: the operator's own key\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGaU5LeBsL4yM6a0HsXbVnUWqmi8Ctzt0O4bV2Nd3zZK operator";

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    File,
    Command,
}

struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
    sshd: Sshd,
    keys_file: Option<PathBuf>,
    admin_token: String,
}

impl Host {
    fn start(name: &str, mode: Mode) -> Host {
        let dir = common::test_dir(name);
        let config = dir.path().join("evosync.yaml");
        let extra = match mode {
            Mode::File => String::new(),
            Mode::Command => {
                common::require_account("evosyncauth");
                let gate = common::safe_copy(Path::new(GATE), dir.path());
                format!(
                    "Match User evosync\n    AuthorizedKeysFile none\n    AuthorizedKeysCommand {} --config {} \
                     authorized-keys %u %t %k\n    AuthorizedKeysCommandUser evosyncauth\n",
                    gate.display(),
                    config.display()
                )
            }
        };
        let sshd = Sshd::start(&extra);
        let keys_file = (mode == Mode::File).then(|| {
            let path = sshd.authorized_keys_path("evosync");
            std::fs::write(&path, format!("{HAND_WRITTEN}\n")).unwrap();
            common::chown_to(&path, "evosync");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            path
        });
        let root = dir.path();
        let (replicas, policies, state) = (root.join("replicas"), root.join("policies"), root.join("state"));
        let rsync = common::sqlite3_rsync_path();
        let mut args = vec![
            "init",
            "--replica-root",
            replicas.to_str().unwrap(),
            "--policies-dir",
            policies.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--sqlite3-rsync",
            rsync.to_str().unwrap(),
            "--gate",
            GATE,
        ];
        if let Some(path) = &keys_file {
            args.extend(["--authorized-keys", path.to_str().unwrap()]);
        }
        let (ok, value, said) = evosync_json(&config, &args);
        assert!(ok, "evosync init: {said}");
        let admin_token = value["admin_token"].as_str().unwrap().to_owned();
        Host { dir, config, sshd, keys_file, admin_token }
    }

    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let (ok, value, said) = evosync_json(&self.config, args);
        assert!(ok, "evosync {args:?}: {said}");
        value
    }

    fn cli_fails(&self, args: &[&str]) -> String {
        let (ok, value, said) = evosync_json(&self.config, args);
        assert!(!ok, "evosync {args:?} should fail");
        assert!(value["error"].is_string(), "--json failures are JSON too");
        said
    }

    /// Registers a new client key for `party` through the CLI; returns (private key path, key id).
    fn add_key(&self, party: &str, name: &str, extra: &[&str]) -> (PathBuf, String) {
        let (key, _) = self.sshd.new_client_key(name);
        let public = key.with_extension("pub");
        let mut args = vec!["ssh-key", "add", party, "--public-key", public.to_str().unwrap()];
        args.extend(extra);
        let added = self.cli(&args);
        (key, added["key"]["id"].as_str().unwrap().to_owned())
    }

    fn worker_db(&self) -> PathBuf {
        let path = self.dir.path().join("worker.sqlite");
        if !path.exists() {
            common::make_db(&path, "genomes", 200, 800);
        }
        path
    }

    fn push(&self, key: &Path) -> Output {
        self.sshd.sqlite3_rsync(
            key,
            &self.worker_db(),
            "evosync",
            &format!("/data/evorun-sync/{RUN}/genomes.sqlite"),
            &[],
        )
    }

    fn store(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("state/state.db")).unwrap()
    }
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn refused_at_login(output: &Output) -> bool {
    !output.status.success() && said(output).contains("Permission denied")
}

fn exercise_revocation(mode: Mode) {
    let host = Host::start(if mode == Mode::File { "keys-file" } else { "keys-command" }, mode);
    host.cli(&["party", "add", "acme"]);
    let (key, id) = host.add_key("acme", "acme1", &[]);
    let output = host.push(&key);
    assert!(output.status.success(), "a key added by the CLI pushes: {}", said(&output));
    let ledger: (String, String, String) = host
        .store()
        .query_row("SELECT party, key_id, exit FROM sync_ledger ORDER BY id DESC LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(ledger, ("acme".to_owned(), id.clone(), "0".to_owned()));
    let last_used: Option<i64> =
        host.store().query_row("SELECT last_used_at FROM ssh_keys WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert!(last_used.is_some());

    host.cli(&["ssh-key", "revoke", &id]);
    let output = host.push(&key);
    assert!(refused_at_login(&output), "a revoked key is refused at the next connection: {}", said(&output));
    if let Some(file) = &host.keys_file {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.starts_with(HAND_WRITTEN), "unmanaged lines survive: {text}");
        assert!(!text.contains(&id));
    }
}

#[test]
fn revocation_in_authorized_keys_file_mode() {
    exercise_revocation(Mode::File);
}

#[test]
fn revocation_in_authorized_keys_command_mode() {
    exercise_revocation(Mode::Command);
}

#[test]
fn expired_keys_and_disabled_parties_are_refused_even_when_the_file_lags_behind() {
    let host = Host::start("expiry", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let (key, id) = host.add_key("acme", "acme1", &[]);
    assert!(host.push(&key).status.success());

    // The store says expired, the file still has the line: the gate refuses (defence in depth).
    host.store().execute("UPDATE ssh_keys SET expires_at = 1 WHERE id = ?1", [&id]).unwrap();
    let output = host.push(&key);
    assert!(!output.status.success());
    assert!(said(&output).contains("ERROR: evosync-gate: this SSH key has expired"), "{}", said(&output));
    host.store().execute("UPDATE ssh_keys SET expires_at = NULL WHERE id = ?1", [&id]).unwrap();

    // Disabled in the store only: refused by the gate.
    host.store().execute("UPDATE parties SET enabled = 0 WHERE name = 'acme'", []).unwrap();
    let output = host.push(&key);
    assert!(said(&output).contains("party 'acme' is disabled"), "{}", said(&output));
    host.store().execute("UPDATE parties SET enabled = 1 WHERE name = 'acme'", []).unwrap();
    assert!(host.push(&key).status.success());

    // Disabled through the CLI: the line goes, sshd refuses at once.
    host.cli(&["party", "disable", "acme"]);
    assert!(refused_at_login(&host.push(&key)));
    host.cli(&["party", "enable", "acme"]);
    assert!(host.push(&key).status.success());

    // An expiry in the past is refused; a near one ends the key by itself (sshd's expiry-time, then the gate).
    let (old, _) = host.sshd.new_client_key("old");
    let old_public = old.with_extension("pub");
    let error = host.cli_fails(&[
        "ssh-key",
        "add",
        "acme",
        "--public-key",
        old_public.to_str().unwrap(),
        "--expires",
        "2001-01-01",
    ]);
    assert!(error.contains("--expires is in the past"), "{error}");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let soon = soon.format(&time::format_description::well_known::Rfc3339).unwrap();
    let (short_key, _) = host.add_key("acme", "short", &["--expires", &soon]);
    let line = std::fs::read_to_string(host.keys_file.as_ref().unwrap()).unwrap();
    assert!(line.contains("expiry-time=\""), "{line}");
    assert!(host.push(&short_key).status.success());
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(refused_at_login(&host.push(&short_key)));
}

#[test]
fn a_from_restricted_key_is_refused_from_another_loopback_address() {
    let host = Host::start("from", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let (key, _) = host.add_key("acme", "acme1", &["--from", "127.0.0.1"]);
    let from_one = host.sshd.ssh_from(&key, "evosync", "127.0.0.1", &format!("mkdir -p /data/evorun-sync/{RUN}"));
    assert!(from_one.status.success(), "{}", said(&from_one));
    let from_two = host.sshd.ssh_from(&key, "evosync", "127.0.0.2", &format!("mkdir -p /data/evorun-sync/{RUN}"));
    assert!(refused_at_login(&from_two), "{}", said(&from_two));
}

#[test]
fn another_partys_run_is_refused_and_keys_name_one_party() {
    let host = Host::start("run-owner", Mode::File);
    host.cli(&["party", "add", "acme"]);
    host.cli(&["party", "add", "beta"]);
    let (acme_key, _) = host.add_key("acme", "acme1", &[]);
    let (beta_key, _) = host.add_key("beta", "beta1", &[]);
    assert!(host.push(&beta_key).status.success());
    let output = host.push(&acme_key);
    assert!(!output.status.success());
    assert!(said(&output).contains(&format!("run '{RUN}' belongs to another party")), "{}", said(&output));
    assert!(!host.dir.path().join("replicas/acme").join(RUN).exists());

    // One key names one party.
    let public = acme_key.with_extension("pub");
    let error = host.cli_fails(&["ssh-key", "add", "beta", "--public-key", public.to_str().unwrap()]);
    assert!(error.contains("registered already, to party 'acme'"), "{error}");
}

#[test]
fn bad_keys_are_refused_with_the_reason() {
    let host = Host::start("bad-keys", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let (private, _) = host.sshd.new_client_key("private");
    let dsa = "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7WT2NWPq/xfW6MPbLm1Vs14E7gB00b/JmYLdrmVClpJ+f6AR7ECLCT7up1/63xhv4O1fnxqimFQ8E+4P208UewwI1VBNaFpEy9nXzrith1yrv8iIDGZ3RSAHHAAAAFQCXYFCPFSMLzLKSuYKi64QL8Fgc9QAAAIEA9+GghdabPd7LvKtcNrhXuXmUr7v6OuqC+VdMCz0HgmdRWVeOutRZT+ZxBxCBgLRJFnEj6EwoFhO3zwkyjMim4TwWeotUfI0o4KOuHiuzpnWRbqN/C/ohNWLx+2J6ASQ7zKTxvqhRkImog9/hWuWfBpKLZl6Ae1UlZAFMO/7PSSoAAACBAKKSU2PFl/qOLxIwmBZPPIcJshVe7bVUpFvyl3BbJDow8rXfskl8wO63OzP/qLmcJM0+JbcRU/53JjTuyk31drV2qxhIOsLDC9dGCWj47Y7TyhPdXh/0dthTRBy6bqGtRPxGa7gJov1xm/UuYYXPIUR/3x9MAZvZ5xvE0kYXO+rx dsa";
    let short_rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDIFasPqNgDU4Fhq2Q2V3B0V5Is4lsCtm1KBwmsk71yPMCC3Xkv8hIIWq21X36e9Y6GbN/RGz7YtkNUDyyBYh5o2Ahp5yjs06UR+8ZW8kVy0LnyPCa/sxSQ+QRgeQwVdc1tMEa1TKSNBwH/mGsVjhPV4CoGTeXFdHibHBkWIALR/w== short";
    let cases: Vec<(String, &str)> = vec![
        (std::fs::read_to_string(&private).unwrap(), "this is a private key"),
        (dsa.to_owned(), "DSA keys are refused"),
        (short_rsa.to_owned(), "RSA keys under 3072 bits are refused (this one has 1024)"),
        ("ssh-ed25519 not-base64".to_owned(), "not an OpenSSH public key"),
        (String::new(), "no public key given"),
    ];
    for (text, reason) in cases {
        let file = host.dir.path().join("candidate.pub");
        std::fs::write(&file, &text).unwrap();
        let error = host.cli_fails(&["ssh-key", "add", "acme", "--public-key", file.to_str().unwrap()]);
        assert!(error.contains(reason), "{reason}: {error}");
    }
    assert!(host.cli_fails(&["ssh-key", "add", "nobody", "--public-key", "/dev/null"]).contains("no party 'nobody'"));
    assert!(host.cli_fails(&["party", "add", "Not_Valid!"]).contains("not a party name"));
}

#[test]
fn twenty_concurrent_key_adds_all_land_in_a_valid_file() {
    let host = Host::start("concurrent-keys", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let publics: Vec<PathBuf> =
        (0..20).map(|n| host.sshd.new_client_key(&format!("k{n}")).0.with_extension("pub")).collect();
    std::thread::scope(|scope| {
        for public in &publics {
            let config = host.config.clone();
            scope.spawn(move || {
                let (ok, _, said) =
                    evosync_json(&config, &["ssh-key", "add", "acme", "--public-key", public.to_str().unwrap()]);
                assert!(ok, "{said}");
            });
        }
    });
    let file = host.keys_file.as_ref().unwrap();
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.starts_with(HAND_WRITTEN));
    let managed: Vec<&str> = text.lines().filter(|l| l.starts_with("command=")).collect();
    assert_eq!(managed.len(), 20, "{text}");
    for public in &publics {
        let blob = std::fs::read_to_string(public).unwrap().split_whitespace().nth(1).unwrap().to_owned();
        assert!(text.contains(&blob));
    }
    // ssh-keygen reads every line as a valid authorized_keys entry.
    let listed = std::process::Command::new("ssh-keygen").arg("-l").arg("-f").arg(file).output().unwrap();
    assert!(listed.status.success(), "{}", said(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).lines().count(), 21);
    let (ok, value, _) = evosync_json(&host.config, &["authorized-keys", "check"]);
    assert!(ok && value["clean"] == true, "{value}");
}

#[test]
fn authorized_keys_write_and_check_find_and_mend_drift() {
    let host = Host::start("drift", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let (_, id) = host.add_key("acme", "acme1", &[]);
    let file = host.keys_file.clone().unwrap();
    // Someone edits the managed block by hand.
    let text = std::fs::read_to_string(&file).unwrap();
    let tampered: String = text.lines().filter(|l| !l.contains(&id)).map(|l| format!("{l}\n")).collect::<String>() + "";
    let tampered = tampered.replace("# END evosync", "ssh-ed25519 AAAAsmuggled intruder\n# END evosync");
    std::fs::write(&file, tampered).unwrap();
    let (ok, value, _) = evosync_json(&host.config, &["authorized-keys", "check"]);
    assert!(!ok);
    assert_eq!(value["missing"].as_array().unwrap().len(), 1);
    assert_eq!(value["unexpected"][0], "ssh-ed25519 AAAAsmuggled intruder");
    host.cli(&["authorized-keys", "write"]);
    assert!(host.cli(&["authorized-keys", "check"])["clean"] == true);
    assert!(std::fs::read_to_string(&file).unwrap().starts_with(HAND_WRITTEN));
}

#[test]
fn the_audit_chain_records_admin_actions_and_gate_decisions_and_finds_tampering() {
    let host = Host::start("audit-chain", Mode::File);
    host.cli(&["party", "add", "acme"]);
    let (key, _) = host.add_key("acme", "acme1", &[]);
    assert!(host.push(&key).status.success());
    host.sshd.ssh(&key, "evosync", "cat /etc/passwd");
    let records = host.cli(&["audit", "list"]);
    let actions: Vec<String> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    for expected in
        ["admin-token.issue:ok", "party.add:ok", "ssh-key.add:ok", "gate:allow", "gate:done:0", "gate:refuse:command"]
    {
        assert!(actions.iter().any(|a| a == expected), "{expected} in {actions:?}");
    }
    let intact = host.cli(&["audit", "verify"]);
    assert_eq!(intact["intact"], true);
    host.store().execute("UPDATE audit SET detail = 'nothing happened' WHERE seq = 3", []).unwrap();
    let (ok, value, _) = evosync_json(&host.config, &["audit", "verify"]);
    assert!(!ok);
    assert_eq!(value["first_broken"], 3);
}

#[test]
fn the_admin_http_api_over_a_real_socket() {
    let host = Host::start("admin-http", Mode::File);
    let port = common::free_loopback_port();
    let config_text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, config_text.replace("listen: 127.0.0.1:4004", &format!("listen: 127.0.0.1:{port}")))
        .unwrap();
    let service = common::Service::start(&host.config, port);
    let bearer = format!("Bearer {}", host.admin_token);
    let auth = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
    let call = |method: &str, path: &str, body: &str| {
        let (status, _, body) = common::http(service.port, method, path, &auth, body.as_bytes());
        (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap_or(serde_json::Value::Null))
    };

    // Bad tokens.
    for headers in
        [vec![], vec![("Authorization", "Bearer evsadm_0000000000000000_00")], vec![("Authorization", "Basic x")]]
    {
        let (status, _, body) = common::http(port, "GET", "/admin/parties", &headers, b"");
        assert_eq!(status, 401);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    }
    let (status, _, _) = common::http(port, "GET", "/healthz", &[], b"");
    assert_eq!(status, 200);

    // Parties.
    let (status, body) = call("POST", "/admin/parties", r#"{"name":"acme"}"#);
    assert_eq!(status, 201, "{body}");
    assert_eq!(call("POST", "/admin/parties", r#"{"name":"acme"}"#).0, 409);
    for bad in [r#"{"name":"Bad Name"}"#, r#"{"nam":"x"}"#, r#"{"name":"x","extra":1}"#, "not json", r#"{"name":7}"#] {
        let (status, body) = call("POST", "/admin/parties", bad);
        assert!((400..500).contains(&status), "{bad}: {status}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let (status, body) = call("GET", "/admin/parties", "");
    assert_eq!((status, body[0]["name"].as_str()), (200, Some("acme")));
    assert_eq!(call("GET", "/admin/parties/nobody", "").0, 404);

    // SSH keys.
    let (key, public) = host.sshd.new_client_key("http");
    let (status, added) =
        call("POST", "/admin/ssh-keys", &serde_json::json!({ "party": "acme", "public_key": public }).to_string());
    assert_eq!(status, 201, "{added}");
    assert!(added["authorized_keys_line"].as_str().unwrap().starts_with("command="));
    let private = std::fs::read_to_string(&key).unwrap();
    let (status, body) =
        call("POST", "/admin/ssh-keys", &serde_json::json!({ "party": "acme", "public_key": private }).to_string());
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("private key"));
    assert!(host.push(&key).status.success(), "an HTTP-added key pushes");
    let (status, runs) = call("GET", "/admin/runs", "");
    assert_eq!(status, 200);
    assert_eq!(runs[0]["run"], RUN);
    let genomes = runs[0]["replicas"].as_array().unwrap().iter().find(|r| r["database"] == "genomes.sqlite").unwrap();
    assert!(genomes["bytes"].as_u64().unwrap() > 0);
    assert_eq!(genomes["last_push"]["exit"], "0");
    let id = added["key"]["id"].as_str().unwrap();
    assert_eq!(call("DELETE", &format!("/admin/ssh-keys/{id}"), "").0, 200);
    assert!(refused_at_login(&host.push(&key)));
    assert_eq!(call("DELETE", "/admin/ssh-keys/nope", "").0, 404);

    // API keys: shown once, listed without the secret.
    let (status, issued) = call("POST", "/admin/api-keys", r#"{"party":"acme","name":"worker-1"}"#);
    assert_eq!(status, 201);
    assert!(issued["api_key"].as_str().unwrap().starts_with("evs_"));
    let (_, listed) = call("GET", "/admin/api-keys?party=acme", "");
    assert!(!listed.to_string().contains(issued["api_key"].as_str().unwrap()));
    assert!(!listed.to_string().contains("argon2"));

    // Disable, audit, drift.
    assert_eq!(call("POST", "/admin/parties/acme/disable", "").1["enabled"], false);
    let (status, audit) = call("GET", "/admin/audit?limit=1000", "");
    assert_eq!(status, 200);
    let actors: Vec<&str> = audit.as_array().unwrap().iter().map(|r| r["actor"].as_str().unwrap()).collect();
    assert!(actors.iter().any(|actor| actor.starts_with("http:admin:")), "the token's id names the actor: {actors:?}");
    assert_eq!(call("GET", "/admin/authorized-keys/check", "").1["clean"], true);
    assert_eq!(call("GET", "/admin/nothing-here", "").0, 404);
}
