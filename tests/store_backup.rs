//! The state store's backup, restore and audit archive (issues 17 and 18) against a whole central on loopback:
//! `evosync serve` as the `evosync` account, real sshd with the gate in AuthorizedKeysCommand mode (so every SSH login
//! reads the store), the stock sqlite3_rsync pushing, the workers' upload API and the admin API over real sockets, and
//! the `evosync` command line as an administrator runs it.

mod common;

use common::{evosync_json, http, noise, Service, Sshd};
use rusqlite::types::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";

struct Central {
    dir: tempfile::TempDir,
    config: PathBuf,
    sshd: Sshd,
    port: u16,
    service: Option<Service>,
    admin_token: String,
    api_key: String,
    ssh_key: PathBuf,
}

impl Central {
    fn start(name: &str) -> Central {
        common::require_account("evosyncauth");
        let dir = common::test_dir(name);
        let root = dir.path().to_owned();
        let config = root.join("evosync.yaml");
        let gate = common::safe_copy(Path::new(GATE), &root);
        let sshd = Sshd::start(&format!(
            "Match User evosync\n    AuthorizedKeysFile none\n    AuthorizedKeysCommand {} --config {} \
             authorized-keys %u %t %k\n    AuthorizedKeysCommandUser evosyncauth\n",
            gate.display(),
            config.display()
        ));
        let port = common::free_loopback_port();
        let (config, init) = common::init_central(&root, port, &[]);
        let admin_token = init["admin_token"].as_str().unwrap().to_owned();
        cli(&config, &["party", "add", "acme"]);
        std::fs::write(
            root.join("policies/acme.yaml"),
            "party: acme\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n",
        )
        .unwrap();
        let (ssh_key, _) = sshd.new_client_key("acme");
        let public = ssh_key.with_extension("pub");
        cli(&config, &["ssh-key", "add", "acme", "--public-key", public.to_str().unwrap()]);
        let api_key =
            cli(&config, &["api-key", "issue", "acme", "--name", "worker"])["api_key"].as_str().unwrap().to_owned();
        let mut central = Central { dir, config, sshd, port, service: None, admin_token, api_key, ssh_key };
        central.start_service();
        central
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn store_path(&self) -> PathBuf {
        self.root().join("state/state.db")
    }

    fn start_service(&mut self) {
        self.service = Some(Service::start_as_service_account(&self.config, self.port));
    }

    fn stop_service(&mut self) {
        let mut service = self.service.take().expect("the service runs");
        assert!(service.terminate(Duration::from_secs(20)).is_some(), "evosync serve did not stop on SIGTERM");
    }

    fn worker_db(&self) -> PathBuf {
        let path = self.root().join("worker/genomes.sqlite");
        if !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            common::make_db(&path, "genomes", 200, 800);
        }
        path
    }

    fn push(&self) -> Output {
        let remote = format!("/data/evorun-sync/{RUN}/genomes.sqlite");
        self.sshd.sqlite3_rsync(&self.ssh_key, &self.worker_db(), "evosync", &remote, &[])
    }

    fn upload(&self, name: &str, content: &[u8]) -> u16 {
        let path = format!("/api/sync/analysis/{RUN}?filename={name}&subdir=analysisResults");
        http(self.port, "POST", &path, &[("X-Sync-API-Key", &self.api_key)], content).0
    }

    fn admin(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {}", self.admin_token);
        let headers = [("Authorization", bearer.as_str()), ("Content-Type", "application/json")];
        let (status, _, body) = http(self.port, method, path, &headers, body.as_bytes());
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    fn state_listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root().join("state"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn cli(config: &Path, args: &[&str]) -> serde_json::Value {
    let (ok, value, said) = evosync_json(config, args);
    assert!(ok, "evosync {args:?}: {said}");
    value
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The rows `sql` selects, each as its columns' values, keyed by its first column.
fn rows(store: &Path, sql: &str) -> BTreeMap<String, Vec<Value>> {
    let db = rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut statement = db.prepare(sql).unwrap();
    let columns = statement.column_count();
    let rows = statement
        .query_map([], |row| {
            let values: Vec<Value> = (0..columns).map(|i| row.get(i).unwrap()).collect();
            Ok((format!("{:?}", values[0]), values))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows
}

/// Overwrites the start of the audit table's root page with noise.
fn damage_audit_root(path: &Path) {
    let db = rusqlite::Connection::open(path).unwrap();
    let page_size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    let root: i64 = db.query_row("SELECT rootpage FROM sqlite_schema WHERE name = 'audit'", [], |r| r.get(0)).unwrap();
    drop(db);
    let mut bytes = std::fs::read(path).unwrap();
    let start = ((root - 1) * page_size) as usize;
    for (i, byte) in bytes[start..start + 300].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(91).wrapping_add(7);
    }
    std::fs::write(path, &bytes).unwrap();
}

fn mode_and_group(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.permissions().mode() & 0o7777, meta.gid())
}

fn evosync_gid() -> u32 {
    let output = std::process::Command::new("getent").args(["group", "evosync"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).split(':').nth(2).unwrap().trim().parse().unwrap()
}

/// What a burst of workers and administrators did, each with when it was answered.
#[derive(Default)]
struct Burst {
    uploads: Vec<(Instant, String, String)>,
    api_keys: Vec<(Instant, String)>,
    pushes: Vec<(Instant, bool)>,
}

#[test]
fn a_backup_taken_during_a_burst_restores_whole_and_a_bad_file_changes_nothing() {
    let central = Central::start("backup");
    let first = central.push();
    assert!(first.status.success(), "a first push: {}", said(&first));
    let register = format!("/api/sync/register/{RUN}");
    let body = r#"{"templateName":"CMA-MAE","ecosystemVariant":"default","startedAt":"2026-11-25T06:00:00.000Z"}"#;
    let (status, _, _) =
        http(central.port, "POST", &register, &[("X-Sync-API-Key", &central.api_key)], body.as_bytes());
    assert!(status == 200 || status == 201, "register: {status}");

    // The burst: uploads (the workers' API), admin actions (the admin API) and pushes (sshd, the gate), all at once.
    let central = Arc::new(central);
    let burst = Arc::new(Mutex::new(Burst::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for worker in 0..2 {
        let (central, burst, stop) = (central.clone(), burst.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("burst-{worker}-{n}.json");
                let content = noise(worker * 1_000_000 + n, 2000);
                if central.upload(&name, &content) == 200 {
                    burst.lock().unwrap().uploads.push((Instant::now(), name, sha256_hex(&content)));
                }
                n += 1;
            }
        }));
    }
    {
        let (central, burst, stop) = (central.clone(), burst.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (status, issued) =
                    central.admin("POST", "/admin/api-keys", &format!(r#"{{"party":"acme","name":"burst-{n}"}}"#));
                assert_eq!(status, 201, "{issued}");
                let id = issued["key"]["id"].as_str().unwrap().to_owned();
                burst.lock().unwrap().api_keys.push((Instant::now(), id.clone()));
                if n % 3 == 0 {
                    assert_eq!(central.admin("DELETE", &format!("/admin/api-keys/{id}"), "").0, 200);
                }
                n += 1;
            }
        }));
    }
    {
        let (central, burst, stop) = (central.clone(), burst.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = central.push().status.success();
                burst.lock().unwrap().pushes.push((Instant::now(), ok));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    let backups = central.root().join("backups");
    std::fs::create_dir(&backups).unwrap();
    let mut reports = Vec::new();
    let mut started = Vec::new();
    for n in 0..3 {
        let file = backups.join(format!("state-{n}.db"));
        started.push(Instant::now());
        reports.push(cli(&central.config, &["backup", file.to_str().unwrap()]));
        std::thread::sleep(Duration::from_millis(700));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let mut central = Arc::try_unwrap(central).ok().expect("the burst's threads are done");
    let burst = Arc::try_unwrap(burst).ok().unwrap().into_inner().unwrap();
    let (backup_started, report) = (started[2], &reports[2]);
    let backup = backups.join("state-2.db");
    assert!(burst.uploads.iter().any(|(at, ..)| *at > backup_started), "uploads went on during the backup");
    assert!(burst.pushes.iter().filter(|(_, ok)| *ok).count() >= 2, "pushes went on: {:?}", burst.pushes.len());
    println!(
        "burst: {} uploads, {} API keys issued, {} pushes; backups of {} bytes",
        burst.uploads.len(),
        burst.api_keys.len(),
        burst.pushes.len(),
        report["bytes"]
    );

    // The backup says what it holds, and is a private, self-contained file.
    let bytes = std::fs::read(&backup).unwrap();
    assert_eq!(report["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    assert_eq!(report["bytes"].as_u64().unwrap(), bytes.len() as u64);
    assert!(report["schema_version"].as_i64().unwrap() >= 7);
    let last_seq = report["last_audit"]["seq"].as_i64().unwrap();
    let last_ledger = report["last_ledger_id"].as_i64().unwrap();
    assert_eq!(report["counts"]["audit_records"].as_i64().unwrap(), last_seq);
    assert_eq!(report["counts"]["ledger_rows"].as_i64().unwrap(), last_ledger);
    assert!(last_ledger >= 2, "pushes before the backup are in its ledger: {report}");
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    let mut left: Vec<String> =
        std::fs::read_dir(&backups).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["state-0.db", "state-1.db", "state-2.db"], "no temp file, journal or WAL left beside them");

    // While the service runs, a restore is refused, and says what to do.
    let listing = central.state_listing();
    let (ok, value, said_restore) = evosync_json(&central.config, &["restore", backup.to_str().unwrap()]);
    assert!(!ok && said_restore.contains("stop it first"), "{said_restore}");
    let error = value["error"].as_str().unwrap();
    assert!(error.contains("evosync serve is running") && error.contains("serve.lock"), "the lock told: {error}");
    assert_eq!(central.state_listing(), listing, "nothing in state_dir changed");

    // The service stopped, the store as it was, for comparison; then wiped.
    central.stop_service();
    let store = central.store_path();
    let audit_sql = "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit";
    let ledger_sql = "SELECT * FROM sync_ledger";
    let files_sql = "SELECT party || '/' || run || '/' || subdir || '/' || name, size, mtime_ns, sha256, stored_at \
                     FROM analysis_files";
    let keys_sql = "SELECT id, party, name, secret_hash, expires_at, created_at, revoked_at FROM api_keys";
    let (audit_before, ledger_before, files_before, keys_before) =
        (rows(&store, audit_sql), rows(&store, ledger_sql), rows(&store, files_sql), rows(&store, keys_sql));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", store.display()));
    }
    let refused = central.push();
    assert!(!refused.status.success(), "without a store no key works");

    let restored = cli(&central.config, &["restore", backup.to_str().unwrap()]);
    assert_eq!(restored["sha256"], report["sha256"]);
    assert_eq!(restored["replaced"], serde_json::Value::Null, "there was no store to set aside");
    assert_eq!(restored["counts"]["audit_records"].as_i64().unwrap(), last_seq);
    assert_eq!(mode_and_group(&store), (0o660, evosync_gid()), "as evosync init leaves the store");
    for suffix in ["-wal", "-shm"] {
        let companion = PathBuf::from(format!("{}{suffix}", store.display()));
        if companion.exists() {
            assert_eq!(mode_and_group(&companion), (0o660, evosync_gid()), "{suffix}");
        }
    }
    assert!(!central.state_listing().iter().any(|name| name.contains("restoring")), "{:?}", central.state_listing());

    // Whole up to the backup: every audit record and ledger row its last ids cover, each as it was; every analysis
    // file row as it was, every upload answered before the backup began among them; nothing torn.
    let audit_after = rows(&store, audit_sql);
    let seq = |row: &Vec<Value>| match row[0] {
        Value::Integer(seq) => seq,
        ref other => panic!("seq {other:?}"),
    };
    let covered: Vec<_> = audit_after.values().filter(|row| seq(row) <= last_seq).collect();
    assert_eq!(covered.len() as i64, last_seq);
    for row in &covered {
        assert_eq!(Some(*row), audit_before.get(&format!("{:?}", row[0])), "audit record {:?}", row[0]);
    }
    assert_eq!(audit_after.len() as i64, last_seq + 1, "and the restore's own record");
    let newest = audit_after.values().max_by_key(|row| seq(row)).unwrap();
    assert_eq!(newest[3], Value::Text("store.restore".into()), "{newest:?}");
    let ledger_after = rows(&store, ledger_sql);
    assert_eq!(ledger_after.len() as i64, last_ledger);
    for (id, row) in &ledger_after {
        assert_eq!(Some(row), ledger_before.get(id), "ledger row {id}");
    }
    let files_after = rows(&store, files_sql);
    for (key, row) in &files_after {
        assert_eq!(Some(row), files_before.get(key), "{key}");
    }
    // The service commits analysis-file records in batches, up to 20 ms after it has answered (`serve::records`: they
    // cache hashes for listings); an upload answered half a second before the backup began is surely in it.
    let settled = backup_started - Duration::from_millis(500);
    let expected: Vec<_> = burst.uploads.iter().filter(|(at, ..)| *at < settled).collect();
    assert!(expected.len() > 50, "uploads before the backup: {}", expected.len());
    for (at, name, sha) in expected {
        let row = files_after.get(&format!("{:?}", Value::Text(format!("acme/{RUN}/analysisResults/{name}"))));
        let row =
            row.unwrap_or_else(|| panic!("{name}, stored {:?} before the backup, is missing", backup_started - *at));
        assert_eq!(row[3], Value::Text(sha.clone()));
    }
    let keys_after = rows(&store, keys_sql);
    for (_, id) in burst.api_keys.iter().filter(|(at, _)| *at < backup_started) {
        let key = format!("{:?}", Value::Text(id.clone()));
        assert_eq!(keys_after.get(&key), keys_before.get(&key), "API key {id}");
    }

    let verified = cli(&central.config, &["audit", "verify"]);
    assert_eq!(verified["intact"], true, "{verified}");

    // A corrupt file, a foreign one, a text file and one whose chain was edited: each refused with its reason, the
    // store and state_dir as they were.
    let corrupt = backups.join("corrupt.db");
    std::fs::write(&corrupt, &bytes).unwrap();
    damage_audit_root(&corrupt);
    let foreign = central.worker_db();
    let text = backups.join("notes.txt");
    std::fs::write(&text, "this is no database; ".repeat(300)).unwrap();
    let edited = backups.join("edited.db");
    std::fs::write(&edited, &bytes).unwrap();
    rusqlite::Connection::open(&edited)
        .unwrap()
        .execute("UPDATE audit SET detail = 'forged' WHERE seq = 3", [])
        .unwrap();
    let store_bytes = std::fs::read(&store).unwrap();
    let listing = central.state_listing();
    for (file, reason) in [
        (&corrupt, "corrupt"),
        (&foreign, "no evosync state store: it has no table admin_tokens (its tables: genomes, metadata)"),
        (&text, "not an SQLite database"),
        (&edited, "its audit chain breaks at record 3"),
        (&backups.join("missing.db"), "cannot read"),
    ] {
        let (ok, value, said_restore) = evosync_json(&central.config, &["restore", file.to_str().unwrap()]);
        assert!(!ok, "{} was restored", file.display());
        let error = value["error"].as_str().unwrap();
        assert!(error.contains(reason), "{}: {error}", file.display());
        assert!(said_restore.contains(reason));
        assert_eq!(std::fs::read(&store).unwrap(), store_bytes, "{}: the store changed", file.display());
        assert_eq!(central.state_listing(), listing, "{}: state_dir changed", file.display());
    }

    // The service on the restored store: the keys from before the backup work again.
    central.start_service();
    let (status, _, _) =
        http(central.port, "GET", &format!("/api/sync/status/{RUN}"), &[("X-Sync-API-Key", &central.api_key)], b"");
    assert_eq!(status, 200, "the API key works again");
    let pushed = central.push();
    assert!(pushed.status.success(), "the SSH key works again: {}", said(&pushed));
    let (status, _) = central.admin("GET", "/admin/parties", "");
    assert_eq!(status, 200, "the admin token works again");
    central.stop_service();

    // Restored over a store: the one replaced is kept aside whole (its WAL folded in), and opens.
    let ledger_rows_now = rows(&store, ledger_sql).len();
    let again = cli(&central.config, &["restore", backups.join("state-1.db").to_str().unwrap()]);
    let replaced = PathBuf::from(again["replaced"].as_str().expect("the replaced store's place"));
    assert!(replaced.starts_with(central.root().join("state")), "{}", replaced.display());
    assert_eq!(rows(&replaced, ledger_sql).len(), ledger_rows_now, "the replaced store kept every row");
    assert!(rows(&store, ledger_sql).len() < ledger_rows_now);
    assert_eq!(cli(&central.config, &["audit", "verify"])["intact"], true);
}

#[test]
fn the_audit_trail_is_archived_sealed_and_checked_through_the_command_line() {
    let mut central = Central::start("archive");
    for n in 0..5 {
        let (status, _) = central.admin("POST", "/admin/api-keys", &format!(r#"{{"party":"acme","name":"k{n}"}}"#));
        assert_eq!(status, 201);
    }
    assert!(central.push().status.success());
    central.stop_service();
    let config = central.config.clone();
    let before = cli(&config, &["audit", "verify"]);
    let records = before["records"].as_i64().unwrap();
    let archive = central.root().join("audit-1.jsonl");
    let tomorrow = evosync::time::rfc3339(evosync::time::now() + 86_400);
    let archived = cli(&config, &["audit", "archive", "--before", &tomorrow, archive.to_str().unwrap()]);
    assert_eq!(archived["records"].as_i64().unwrap(), records);
    assert_eq!(archived["remaining"], 1, "the record that names the seal");
    assert_eq!(std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(archived["sha256"].as_str().unwrap(), sha256_hex(&std::fs::read(&archive).unwrap()));

    // The chain verifies from its seal, and the archive joins it.
    let verified = cli(&config, &["audit", "verify", "--archive", archive.to_str().unwrap()]);
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["seal"]["last_seq"].as_i64().unwrap(), records);
    assert_eq!(verified["archives"][0]["problem"], serde_json::Value::Null);
    assert_eq!(verified["archives"][0]["records"].as_i64().unwrap(), records);
    // Never over an existing file; nothing older to archive now.
    let (ok, value, _) = evosync_json(&config, &["audit", "archive", "--before", &tomorrow, archive.to_str().unwrap()]);
    assert!(!ok && value["error"].as_str().unwrap().contains("exists"));
    let other = central.root().join("audit-2.jsonl");
    let (ok, value, _) =
        evosync_json(&config, &["audit", "archive", "--before", "2020-01-01", other.to_str().unwrap()]);
    assert!(!ok && value["error"].as_str().unwrap().contains("nothing to archive"), "{value}");
    assert!(!other.exists());

    // Work goes on after the seal; the service and the gate append to the chain as before.
    central.start_service();
    assert!(central.push().status.success());
    central.stop_service();
    assert_eq!(cli(&config, &["audit", "verify"])["intact"], true);

    // A tampered archive: a record edited, then the file otherwise intact but one byte longer.
    let text = std::fs::read_to_string(&archive).unwrap();
    let tampered = central.root().join("tampered.jsonl");
    std::fs::write(&tampered, text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"no\"", 1)).unwrap();
    let (ok, value, said_verify) = evosync_json(&config, &["audit", "verify", "--archive", tampered.to_str().unwrap()]);
    assert!(!ok, "a tampered archive verifies: {said_verify}");
    assert!(value["archives"][0]["problem"].as_str().unwrap().contains("do not match its hash (edited)"), "{value}");
    std::fs::write(&tampered, format!("{text}\n")).unwrap();
    let (ok, value, _) = evosync_json(&config, &["audit", "verify", "--archive", tampered.to_str().unwrap()]);
    assert!(!ok && value["archives"][0]["problem"].is_string(), "{value}");

    // A tampered seal.
    let store = rusqlite::Connection::open(central.store_path()).unwrap();
    store.execute("UPDATE audit_seals SET last_seq = last_seq - 1", []).unwrap();
    let (ok, value, said_verify) = evosync_json(&config, &["audit", "verify", "--archive", archive.to_str().unwrap()]);
    assert!(!ok, "a tampered seal verifies: {said_verify}");
    assert!(value["reason"].as_str().unwrap().contains("seal"), "{value}");
    assert!(value["archives"][0]["problem"].as_str().unwrap().contains("no seal of this store names"), "{value}");
    store.execute("UPDATE audit_seals SET last_seq = last_seq + 1", []).unwrap();
    assert_eq!(cli(&config, &["audit", "verify", "--archive", archive.to_str().unwrap()])["intact"], true);

    // A backup carries the seal, and a restored store verifies from it.
    let backup = central.root().join("after-archive.db");
    let report = cli(&config, &["backup", backup.to_str().unwrap()]);
    assert_eq!(report["audit_seal"]["last_seq"].as_i64().unwrap(), records);
    cli(&config, &["restore", backup.to_str().unwrap()]);
    assert_eq!(cli(&config, &["audit", "verify", "--archive", archive.to_str().unwrap()])["intact"], true);
}
