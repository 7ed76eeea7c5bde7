//! What a party holding keys may try against its own limits and against other parties (issue 9, rows 6, 7, 11, 12),
//! through real sshd, the stock sqlite3_rsync and a running `evosync serve`:
//! - the quota holds under concurrency: parallel uploads, and a push while an upload holds its reservation;
//! - files and folders count (`max_party_files`);
//! - per-party accounts: no party's account can read another's tree, the store or the policies, and the ledger and
//!   audit still get every push, through the service's socket;
//! - a run name is usable end to end up to 255 bytes, and refused at the door with the limit beyond.

mod common;

use common::{evosync_json, http, make_db, Service, Sshd};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_hostile";

/// A central host: `evosync init` in one account mode, parties acme and beta, sshd, and the service.
struct Central {
    dir: tempfile::TempDir,
    config: PathBuf,
    sshd: Sshd,
    service: Option<Service>,
    per_party: bool,
    api_key: String,
}

impl Central {
    fn start(name: &str, per_party: bool, acme_policy_extra: &str) -> Central {
        let dir = common::test_dir(name);
        let root = dir.path().to_owned();
        let config = root.join("evosync.yaml");
        let port = common::free_loopback_port();
        let snippet = if per_party {
            common::require_account("evosync-acme");
            common::require_account("evosync-beta");
            format!(
                "Match User evosync-*\n    ForceCommand {GATE} --config {}\n    DisableForwarding yes\n",
                config.display()
            )
        } else {
            String::new()
        };
        let sshd = Sshd::start(&snippet);
        let (replicas, locks, socket) = (root.join("replicas"), root.join("locks"), root.join("run/gate.sock"));
        let mode = if per_party { "per-party" } else { "shared" };
        let mut args = vec!["--account-mode", mode];
        if per_party {
            args.extend(["--locks-dir", locks.to_str().unwrap(), "--gate-socket", socket.to_str().unwrap()]);
        }
        let (written, _) = common::init_central(&root, port, &args);
        assert_eq!(written, config);
        for party in ["acme", "beta"] {
            let (ok, _, said) = evosync_json(&config, &["party", "add", party]);
            assert!(ok, "party add {party}: {said}");
            let extra = if party == "acme" { acme_policy_extra } else { "" };
            // Written over the template: the file keeps the owner and mode `party add` gave it.
            std::fs::write(
                root.join(format!("policies/{party}.yaml")),
                format!(
                    "party: {party}\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n\
                     require_sandbox: false\n{extra}"
                ),
            )
            .unwrap();
        }
        if !per_party {
            common::chown_to(&replicas, "evosync");
        } else {
            // The socket's folder is the service's, as systemd's RuntimeDirectory=evosync makes /run/evosync.
            common::chown_to(&root.join("run"), "evosync");
        }
        let (ok, issued, said) = evosync_json(&config, &["api-key", "issue", "acme"]);
        assert!(ok, "api-key issue: {said}");
        let api_key = issued["api_key"].as_str().unwrap().to_owned();
        let service = Some(Service::start(&config, port));
        Central { dir, config, sshd, service, per_party, api_key }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn port(&self) -> u16 {
        self.service.as_ref().unwrap().port
    }

    /// A client key that logs in as `party`: its own account in per-party mode, else the shared one with `--party`.
    fn client_key(&self, party: &str) -> (PathBuf, String) {
        let (key, public) = self.sshd.new_client_key(party);
        if self.per_party {
            let user = format!("evosync-{party}");
            self.sshd.set_authorized_keys(&user, &format!("{public}\n"));
            (key, user)
        } else {
            let line =
                format!("command=\"{GATE} --config {} --party {party}\",restrict {public}\n", self.config.display());
            let path = self.sshd.authorized_keys_path("evosync");
            let mut lines = std::fs::read_to_string(&path).unwrap_or_default();
            lines.push_str(&line);
            self.sshd.set_authorized_keys("evosync", &lines);
            (key, "evosync".into())
        }
    }

    fn push(&self, (key, user): &(PathBuf, String), origin: &Path, run: &str, database: &str) -> Output {
        self.sshd.sqlite3_rsync(key, origin, user, &format!("/data/evorun-sync/{run}/{database}"), &[])
    }

    fn store(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.root().join("state/state.db")).unwrap()
    }

    fn ledger(&self) -> Vec<(String, String, String)> {
        let store = self.store();
        let mut statement = store.prepare("SELECT party, run, exit FROM sync_ledger ORDER BY id").unwrap();
        statement.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
    }

    fn upload(&self, run: &str, name: &str, body: &[u8]) -> (u16, String) {
        let path = format!("/api/sync/analysis/{run}?filename={name}&subdir=analysisResults");
        let (status, _, answer) = http(self.port(), "POST", &path, &[("X-Sync-API-Key", &self.api_key)], body);
        (status, String::from_utf8_lossy(&answer).into_owned())
    }

    fn register(&self, run: &str) -> u16 {
        http(self.port(), "POST", &format!("/api/sync/register/{run}"), &[("X-Sync-API-Key", &self.api_key)], b"{}").0
    }

    /// Bytes of regular files and entries in a party's tree.
    fn usage(&self, party: &str) -> (u64, u64) {
        fn walk(dir: &Path, total: &mut (u64, u64)) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                total.1 += 1;
                if meta.is_dir() {
                    walk(&entry.path(), total);
                } else {
                    total.0 += meta.len();
                }
            }
        }
        // A party's usage: its tree, and its runs' homes and checked images in the catalog (`access::measure`).
        let mut total = (0, 0);
        walk(&self.root().join("replicas").join(party), &mut total);
        let runs: Vec<String> = self
            .store()
            .prepare("SELECT name FROM runs WHERE party = ?1")
            .unwrap()
            .query_map([party], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for run in runs {
            let home = common::home_of(self.root(), &run);
            if home.is_dir() {
                total.1 += 1;
                walk(&home, &mut total);
            }
            let images = self.root().join("catalog-verified/.shadows").join(&run);
            if images.is_dir() {
                walk(&images, &mut total);
            }
        }
        total
    }
}

/// `runuser -u ACCOUNT -- COMMAND…`: what a party's account could do on the host if it got a shell.
fn as_account(account: &str, command: &[&str]) -> Output {
    Command::new("runuser").args(["-u", account, "--"]).args(command).output().unwrap()
}

#[test]
fn parallel_uploads_never_pass_the_quota_together() {
    let central = Central::start("quota-uploads", false, "limits:\n  max_party_bytes: 1MB\n");
    assert_eq!(central.register(RUN), 201);
    let body = common::noise(7, 600_000);
    let answers: Vec<(u16, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..10)
            .map(|n| {
                scope.spawn({
                    let (c, b) = (&central, &body);
                    move || c.upload(RUN, &format!("f{n}.json"), b)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let stored = answers.iter().filter(|(status, _)| *status == 200).count();
    assert!(stored <= 1, "at most one 600 KB file fits in 1 MB: {answers:?}");
    assert!(answers.iter().all(|(status, _)| *status == 200 || *status == 507), "{answers:?}");
    let (bytes, _) = central.usage("acme");
    assert!(bytes <= 1_000_000, "stored {bytes} bytes against a 1 MB quota");
    // What was refused gave its reservation back: a small file still fits.
    assert_eq!(central.upload(RUN, "small.json", b"{}").0, 200);
}

#[test]
fn a_push_gets_only_the_room_an_upload_in_flight_left() {
    let central = Central::start("quota-push", false, "limits:\n  max_party_bytes: 1MB\n");
    assert_eq!(central.register(RUN), 201);
    // The service runs as root here, not as the shared account it shares the tree with in production.
    common::chown_to(&central.root().join("replicas/acme"), "evosync");
    // An upload of 600 KB that has sent its headers and a part of its body: its whole declared length is reserved.
    let mut slow = TcpStream::connect(("127.0.0.1", central.port())).unwrap();
    let body = common::noise(9, 600_000);
    write!(
        slow,
        "POST /api/sync/analysis/{RUN}?filename=slow.json&subdir=analysisResults HTTP/1.1\r\nHost: x\r\n\
         X-Sync-API-Key: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        central.api_key,
        body.len()
    )
    .unwrap();
    slow.write_all(&body[..100_000]).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // A 700 KB database does not fit in the 400 KB left: the push fails, and the replica is not there.
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 170, 4000);
    assert!(std::fs::metadata(&origin).unwrap().len() > 600_000);
    let key = central.client_key("acme");
    let output = central.push(&key, &origin, RUN, "genomes.sqlite");
    assert!(!output.status.success(), "the push cannot fit beside the upload's reservation");
    // The stock replica reports a failed write to the origin and exits 0 itself: the ledger has the push, whatever
    // its end; the replica holds none of the new pages.
    assert_eq!(central.ledger().len(), 1);
    let replica = central.root().join("replicas/acme").join(RUN).join("genomes.sqlite");
    assert!(std::fs::metadata(&replica).map(|m| m.len()).unwrap_or(0) <= 400_000);

    slow.write_all(&body[100_000..]).unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (bytes, _) = central.usage("acme");
    assert!(bytes <= 1_000_000, "stored {bytes} bytes against a 1 MB quota");
    let audit: String = central
        .store()
        .query_row("SELECT group_concat(outcome, ' ') FROM audit WHERE action = 'gate'", [], |r| r.get(0))
        .unwrap();
    assert!(audit.contains("allow") && audit.contains("done:"), "the push's records came through the service: {audit}");
}

#[test]
fn files_and_folders_count_against_max_party_files() {
    let central = Central::start("quota-files", false, "limits:\n  max_party_files: 12\n");
    assert_eq!(central.register(RUN), 201); // the run folder, its home and analysisResults/: 3 entries
    let mut refused = 0;
    for n in 0..20 {
        let path = format!("/api/sync/analysis/{RUN}?filename=e{n}.json&subdir=analysisResults/d{n}");
        let (status, _, _) = http(central.port(), "POST", &path, &[("X-Sync-API-Key", &central.api_key)], b"");
        assert!(status == 200 || status == 507, "{status}");
        refused += usize::from(status == 507);
    }
    let (_, entries) = central.usage("acme");
    assert!(entries <= 12, "{entries} entries against max_party_files 12");
    assert!(refused >= 15, "empty files and their folders are not free: {refused} refused");
}

#[test]
fn a_run_name_is_usable_end_to_end_or_refused_at_the_door() {
    let central = Central::start("names", false, "");
    let key = central.client_key("acme");
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 20, 100);
    let longest = format!("01KFYA32R09C5KJYNH1SM2W1DR_{}", "x".repeat(255 - 27));
    assert_eq!(longest.len(), 255);
    let output = central.push(&key, &origin, &longest, "genomes.sqlite");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(central.root().join("replicas/acme").join(&longest).join("genomes.sqlite").exists());
    assert_eq!(central.ledger().last().map(|l| (l.1.clone(), l.2.clone())), Some((longest.clone(), "0".into())));
    assert_eq!(central.register(&longest), 201, "the service takes it too");

    let too_long = format!("{longest}y");
    let output = central.push(&key, &origin, &too_long, "genomes.sqlite");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("at most 255 bytes; this one is 256"), "{said}");
    let (status, _, body) = http(
        central.port(),
        "POST",
        &format!("/api/sync/register/{too_long}"),
        &[("X-Sync-API-Key", &central.api_key)],
        b"",
    );
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("at most 255 bytes"));
}

#[test]
fn per_party_accounts_cannot_reach_each_other_and_still_leave_every_record() {
    let mut central = Central::start("per-party-accounts", true, "");
    let acme = central.client_key("acme");
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 50, 500);
    let output = central.push(&acme, &origin, RUN, "genomes.sqlite");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replica = central.root().join("replicas/acme").join(RUN).join("genomes.sqlite");
    assert_eq!(common::db_digest(&replica), common::db_digest(&origin));
    // The gate could not open the store; its claim, ledger row and audit records came through the service.
    assert_eq!(central.ledger(), [("acme".to_owned(), RUN.to_owned(), "0".to_owned())]);
    let owner: String =
        central.store().query_row("SELECT party FROM runs WHERE name = ?1", [RUN], |r| r.get(0)).unwrap();
    assert_eq!(owner, "acme");

    // Beta's account reads nothing of acme's, nor the store, nor acme's policy.
    let root = central.root().to_owned();
    for path in [
        replica.clone(),
        root.join("replicas/acme"),
        root.join("state/state.db"),
        root.join("policies/acme.yaml"),
        root.join("locks/acme"),
    ] {
        let output = as_account("evosync-beta", &["cat", path.to_str().unwrap()]);
        assert!(!output.status.success(), "evosync-beta read {}", path.display());
        let listing = as_account("evosync-beta", &["ls", path.to_str().unwrap()]);
        assert!(!listing.status.success() || path.is_file(), "evosync-beta listed {}", path.display());
    }
    // Acme's own account reads its own policy (its gate needs it), not beta's.
    assert!(as_account("evosync-acme", &["cat", root.join("policies/acme.yaml").to_str().unwrap()]).status.success());
    assert!(!as_account("evosync-acme", &["cat", root.join("policies/beta.yaml").to_str().unwrap()]).status.success());

    // Beta's account cannot speak for acme on the service's socket.
    let socket = root.join("run/gate.sock");
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
         s.sendall(b'{{\"op\":\"claim\",\"party\":\"acme\",\"run\":\"01KFYA32R09C5KJYNH1SM2W1DS_stolen\"}}\\n')\n\
         sys.stdout.write(s.makefile().readline())",
        socket.display().to_string()
    );
    let output = as_account("evosync-beta", &["python3", "-c", &script]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("forbidden"), "{output:?}");
    let stolen: i64 =
        central.store().query_row("SELECT count(*) FROM runs WHERE name LIKE '%stolen'", [], |r| r.get(0)).unwrap();
    assert_eq!(stolen, 0);
    // Nor, speaking for itself, report a push into acme's run, or one whose names leave its tree.
    for (run, database, answer) in [
        (RUN, "genomes.sqlite", "finish without a push reserved on this connection"),
        ("01KFYA32R09C5KJYNH1SM2W1DS_beta", "../../../escaped", "one plain name"),
        ("01KFYA32R09C5KJYNH1SM2W1DS_beta/.", "genomes.sqlite", "one plain name"),
    ] {
        let finish = serde_json::json!({ "op": "finish", "ledger": { "party": "beta", "key_id": null, "run": run,
            "database": database, "started_at": 0, "seconds": 0.0, "exit": "0", "replica_bytes": null } });
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect({:?})\ns.sendall({:?}.encode() + b'\\n')\n\
             sys.stdout.write(s.makefile().readline())",
            socket.display().to_string(),
            finish.to_string()
        );
        let output = as_account("evosync-beta", &["python3", "-c", &script]);
        assert!(String::from_utf8_lossy(&output.stdout).contains(answer), "{run} {database}: {output:?}");
    }
    assert_eq!(central.ledger(), [("acme".to_owned(), RUN.to_owned(), "0".to_owned())], "nothing recorded");
    assert!(!root.join("escaped-wal").exists() && !root.join("replicas/escaped-wal").exists());

    // Without the service a party account's gate cannot record anything, so it refuses and writes nothing.
    central.service = None;
    let other_run = "01KFYA32R09C5KJYNH1SM2W1DT_offline";
    let output = central.push(&acme, &origin, other_run, "genomes.sqlite");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("tell the administrator"), "{said}");
    assert!(!root.join("replicas/acme").join(other_run).exists(), "a refused push leaves no run folder");
}
