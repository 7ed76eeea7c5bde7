//! The workers' sync REST API over a real socket, against `evosync serve` with a real state store: the multipart
//! body exactly as the worker builds it, the raw-body form, curl, listing, replacement, every auth failure,
//! cross-party access, hostile names, a client killed mid-upload, digests, 413, 429, 507, and 10,000 uploads from
//! 64 concurrent clients with every file checked after.

mod common;

use common::{evosync_json, http, noise, Service};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";
const OTHER_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DS_beta_run";

struct Host {
    dir: tempfile::TempDir,
    config: PathBuf,
    service: Service,
    acme_key: String,
    beta_key: String,
    admin_token: String,
}

impl Host {
    /// A central with parties acme and beta, each with an API key; `acme_policy_extra` is appended to both policies.
    fn start(name: &str, acme_policy_extra: &str) -> Host {
        let dir = common::test_dir(name);
        let root = dir.path();
        let config = root.join("evosync.yaml");
        let port = common::free_loopback_port();
        let (r, p, s) = (root.join("replicas"), root.join("policies"), root.join("state"));
        let listen = format!("127.0.0.1:{port}");
        let (ok, value, said) = evosync_json(
            &config,
            &[
                "init",
                "--replica-root",
                r.to_str().unwrap(),
                "--policies-dir",
                p.to_str().unwrap(),
                "--state-dir",
                s.to_str().unwrap(),
                "--listen",
                &listen,
            ],
        );
        assert!(ok, "{said}");
        let admin_token = value["admin_token"].as_str().unwrap().to_owned();
        for party in ["acme", "beta"] {
            assert!(evosync_json(&config, &["party", "add", party]).0);
        }
        for party in ["acme", "beta"] {
            std::fs::write(
                p.join(format!("{party}.yaml")),
                format!("party: {party}\npush: true\ncreate_runs: true\nrequire_sandbox: false\n{acme_policy_extra}"),
            )
            .unwrap();
        }
        let key = |party: &str| {
            let (ok, value, said) = evosync_json(&config, &["api-key", "issue", party, "--name", "worker"]);
            assert!(ok, "{said}");
            value["api_key"].as_str().unwrap().to_owned()
        };
        let (acme_key, beta_key) = (key("acme"), key("beta"));
        let service = Service::start(&config, port);
        Host { dir, config, service, acme_key, beta_key, admin_token }
    }

    fn port(&self) -> u16 {
        self.service.port
    }

    fn run_dir(&self, party: &str, run: &str) -> PathBuf {
        self.dir.path().join("replicas").join(party).join(run)
    }

    /// The run's home in the catalog, where its analysis files are: published, or held back.
    fn home_dir(&self, run: &str) -> PathBuf {
        common::home_of(self.dir.path(), run)
    }

    fn register(&self, key: &str, run: &str) -> (u16, serde_json::Value) {
        let body = r#"{"templateName":"CMA-MAE","ecosystemVariant":"default","startedAt":"2026-11-25T06:00:00.000Z"}"#;
        json(http(
            self.port(),
            "POST",
            &format!("/api/sync/register/{run}"),
            &[("X-Sync-API-Key", key), ("Content-Type", "application/json")],
            body.as_bytes(),
        ))
    }

    fn list(&self, key: &str, run: &str, subdir: Option<&str>) -> (u16, serde_json::Value) {
        let path = match subdir {
            Some(subdir) => format!("/api/sync/analysis/{run}/list?subdir={}", subdir.replace('/', "%2F")),
            None => format!("/api/sync/analysis/{run}/list"),
        };
        json(http(self.port(), "GET", &path, &[("X-Sync-API-Key", key)], b""))
    }

    /// The multipart body exactly as the worker sync manager builds it by hand.
    fn upload(&self, key: &str, run: &str, subdir: &str, name: &str, content: &[u8]) -> (u16, serde_json::Value) {
        let (content_type, body) = worker_multipart(subdir, name, content);
        json(http(
            self.port(),
            "POST",
            &format!("/api/sync/analysis/{run}"),
            &[("X-Sync-API-Key", key), ("Content-Type", &content_type)],
            &body,
        ))
    }
}

fn json((status, _, body): (u16, String, Vec<u8>)) -> (u16, serde_json::Value) {
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn worker_multipart(subdir: &str, name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!(
        "----SyncBoundary{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let mut body = Vec::new();
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"subdir\"\r\n\r\n{subdir}\r\n").as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/gzip\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every file under `root`, relative, with its bytes.
fn tree(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.push((path.strip_prefix(root).unwrap().to_path_buf(), if meta.is_dir() { 0 } else { meta.len() }));
        }
    }
    out.sort();
    out
}

#[test]
fn register_upload_list_and_replace_as_the_worker_does() {
    let host = Host::start("sync-basic", "");
    let (status, body) = host.register(&host.acme_key, RUN);
    assert_eq!(status, 201, "{body}");
    assert!(host.home_dir(RUN).join("analysisResults").is_dir());
    assert_eq!(host.register(&host.acme_key, RUN).0, 201, "registering again succeeds");

    // Nothing there yet in a folder that does not exist.
    assert_eq!(
        host.list(&host.acme_key, RUN, Some("analysisResults/trees")),
        (404, serde_json::json!({ "files": [] }))
    );

    let name = format!("coverage_{RUN}_step-1.json.gz");
    let content = noise(1, 20_000);
    let (status, body) = host.upload(&host.acme_key, RUN, "analysisResults", &name, &content);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stored"], serde_json::json!([name]));
    assert_eq!(std::fs::read(host.home_dir(RUN).join("analysisResults").join(&name)).unwrap(), content);
    let tree_content = noise(2, 3000);
    assert_eq!(host.upload(&host.acme_key, RUN, "analysisResults/trees", "tree_1.json.gz", &tree_content).0, 200);

    let (status, listed) = host.list(&host.acme_key, RUN, None);
    assert_eq!(status, 200);
    let files = listed["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "the default subdir is analysisResults; folders are not files: {listed}");
    assert_eq!(files[0]["name"], name.as_str());
    assert_eq!(files[0]["size"], content.len());
    assert_eq!(files[0]["sha256"], sha256_hex(&content));
    assert!(files[0]["modified"].as_str().unwrap().ends_with('Z'));
    let (_, trees) = host.list(&host.acme_key, RUN, Some("analysisResults/trees"));
    assert_eq!(trees["files"][0]["sha256"], sha256_hex(&tree_content));

    // The worker re-uploads a file whose size changed: it is replaced.
    let bigger = noise(3, 25_000);
    assert_eq!(host.upload(&host.acme_key, RUN, "analysisResults", &name, &bigger).0, 200);
    let (_, listed) = host.list(&host.acme_key, RUN, None);
    assert_eq!(listed["files"][0]["size"], bigger.len());
    assert_eq!(listed["files"][0]["sha256"], sha256_hex(&bigger));

    // The raw-body form.
    let raw = noise(4, 5000);
    let (status, body) = json(http(
        host.port(),
        "POST",
        &format!("/api/sync/analysis/{RUN}?filename=lineage_{RUN}_step-2.json.gz&subdir=generationFeatures"),
        &[("X-Sync-API-Key", &host.acme_key), ("Content-Type", "application/gzip")],
        &raw,
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read(host.home_dir(RUN).join(format!("generationFeatures/lineage_{RUN}_step-2.json.gz"))).unwrap(),
        raw
    );

    // Status: analysis counts and the newest upload.
    let (status, run_status) =
        json(http(host.port(), "GET", &format!("/api/sync/status/{RUN}"), &[("X-Sync-API-Key", &host.acme_key)], b""));
    assert_eq!(status, 200);
    let analysis = run_status["analysis"].as_array().unwrap();
    assert_eq!(analysis.len(), 3, "{run_status}");
    assert_eq!(run_status["template_name"], "CMA-MAE");
}

#[test]
fn the_two_curl_commands_work_verbatim() {
    let host = Host::start("sync-curl", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    let worker = host.dir.path().join("worker");
    std::fs::create_dir_all(worker.join("analysisResults")).unwrap();
    let name = format!("coverage_{RUN}.json.gz");
    let content = noise(7, 2048);
    std::fs::write(worker.join("analysisResults").join(&name), &content).unwrap();
    let base = format!("http://localhost:{}", host.port());
    let upload = std::process::Command::new("curl")
        .current_dir(&worker)
        .args([
            "-sS",
            "-X",
            "POST",
            &format!("{base}/api/sync/analysis/{RUN}"),
            "-H",
            &format!("X-Sync-API-Key: {}", host.acme_key),
        ])
        .args(["-F", &format!("file=@analysisResults/{name}")])
        .output()
        .expect("curl (scripts/setup-test-env.sh installs it)");
    let body: serde_json::Value = serde_json::from_slice(&upload.stdout).unwrap();
    assert_eq!(body["stored"], serde_json::json!([name]), "{}", String::from_utf8_lossy(&upload.stderr));
    let list = std::process::Command::new("curl")
        .args([
            "-sS",
            &format!("{base}/api/sync/analysis/{RUN}/list"),
            "-H",
            &format!("X-Sync-API-Key: {}", host.acme_key),
        ])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed["files"][0]["sha256"], sha256_hex(&content));
}

#[test]
fn every_auth_failure_and_cross_party_access() {
    let host = Host::start("sync-auth", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    assert_eq!(host.register(&host.beta_key, OTHER_RUN).0, 201);
    let list_path = format!("/api/sync/analysis/{RUN}/list");
    let status_of = |headers: &[(&str, &str)]| json(http(host.port(), "GET", &list_path, headers, b""));
    for headers in [
        vec![],
        vec![("X-Sync-API-Key", "nonsense")],
        vec![(
            "X-Sync-API-Key",
            "evs_0000000000000000_0000000000000000000000000000000000000000000000000000000000000000",
        )],
    ] {
        let (status, body) = status_of(&headers);
        assert_eq!(status, 401, "{headers:?}");
        assert!(body["error"].is_string());
    }
    // A wrong secret for a real id.
    let (id, _) = host.acme_key.trim_start_matches("evs_").split_once('_').unwrap();
    let forged = format!("evs_{id}_{}", "1".repeat(64));
    assert_eq!(status_of(&[("X-Sync-API-Key", &forged)]).0, 401);
    assert_eq!(status_of(&[("X-Sync-API-Key", &host.acme_key)]).0, 200);

    // Another party's run answers as a run that does not exist; registering it is a conflict.
    let (status, body) = host.list(&host.acme_key, OTHER_RUN, None);
    assert_eq!((status, &body["files"]), (404, &serde_json::json!([])));
    let (status_missing, body_missing) = host.list(&host.acme_key, "01KFYA32R09C5KJYNH1SM2W1DT_none", None);
    assert_eq!((status, body["files"].clone()), (status_missing, body_missing["files"].clone()));
    assert_eq!(host.upload(&host.acme_key, OTHER_RUN, "analysisResults", "x.json.gz", b"x").0, 404);
    assert_eq!(host.register(&host.acme_key, OTHER_RUN).0, 409);
    assert_eq!(
        json(http(
            host.port(),
            "GET",
            &format!("/api/sync/status/{OTHER_RUN}"),
            &[("X-Sync-API-Key", &host.acme_key)],
            b""
        ))
        .0,
        404
    );
    assert!(tree(&host.run_dir("beta", OTHER_RUN)).iter().all(|(p, _)| !p.to_string_lossy().contains("x.json.gz")));

    // Expired (in the store), disabled party, revoked: the next request sees it.
    let store = rusqlite::Connection::open(host.dir.path().join("state/state.db")).unwrap();
    store.execute("UPDATE api_keys SET expires_at = 1 WHERE id = ?1", [id]).unwrap();
    let (status, body) = status_of(&[("X-Sync-API-Key", &host.acme_key)]);
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("expired"));
    store.execute("UPDATE api_keys SET expires_at = NULL WHERE id = ?1", [id]).unwrap();
    assert!(evosync_json(&host.config, &["party", "disable", "acme"]).0);
    assert_eq!(status_of(&[("X-Sync-API-Key", &host.acme_key)]).0, 403);
    assert!(evosync_json(&host.config, &["party", "enable", "acme"]).0);
    assert_eq!(status_of(&[("X-Sync-API-Key", &host.acme_key)]).0, 200);
    assert!(evosync_json(&host.config, &["api-key", "revoke", id]).0);
    let (status, body) = status_of(&[("X-Sync-API-Key", &host.acme_key)]);
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("revoked"));
}

#[test]
fn hostile_names_and_subdirs_are_refused_and_nothing_lands_outside() {
    let host = Host::start("sync-hostile", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    let before = tree(&host.dir.path().join("replicas"));
    let long = format!("{}.json.gz", "a".repeat(300));
    let cases: Vec<(&str, &str)> = vec![
        ("analysisResults", "../escape.json.gz"),
        ("analysisResults", "/etc/escape.json.gz"),
        ("analysisResults", ".."),
        ("analysisResults", "a/b.json.gz"),
        ("analysisResults", "genomes.sqlite"),
        ("analysisResults", "lineage_state_1.sqlite"),
        ("analysisResults", "x.sqlite-wal"),
        ("analysisResults", "notes.txt"),
        ("analysisResults", ".hidden.json.gz"),
        ("analysisResults", &long),
        ("analysisResults", "nul\0byte.json.gz"),
        ("../..", "x.json.gz"),
        ("/etc", "x.json.gz"),
        ("analysisResults/../..", "x.json.gz"),
        ("analysisResults/..", "x.json.gz"),
        ("other", "x.json.gz"),
        ("", "x.json.gz"),
        ("analysisResults//x", "x.json.gz"),
        ("analysisResults/a\\b", "x.json.gz"),
    ];
    for (subdir, name) in &cases {
        let (status, body) = host.upload(&host.acme_key, RUN, subdir, name, b"{}");
        assert_eq!(status, 400, "{subdir:?} {name:?}: {body}");
        assert!(body["error"].is_string());
    }
    for query in [
        "filename=..%2Fx.json&subdir=analysisResults",
        "filename=x.json&subdir=..",
        "filename=x.sqlite&subdir=analysisResults",
    ] {
        let (status, _, _) = http(
            host.port(),
            "POST",
            &format!("/api/sync/analysis/{RUN}?{query}"),
            &[("X-Sync-API-Key", &host.acme_key)],
            b"{}",
        );
        assert_eq!(status, 400, "{query}");
    }
    for bad_run in ["..", "not-a-run", "01KFYA32R09C5KJYNH1SM2W1DR_%2E%2E%2Fx"] {
        let (status, _) = host.upload(&host.acme_key, bad_run, "analysisResults", "x.json.gz", b"{}");
        assert!(status == 400 || status == 404, "{bad_run}: {status}");
    }
    assert_eq!(tree(&host.dir.path().join("replicas")), before, "nothing was written");
}

#[test]
fn a_client_killed_mid_upload_leaves_no_partial_file_and_the_old_version() {
    let host = Host::start("sync-killed", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    let name = "coverage_killed.json.gz";
    let old = noise(9, 1000);
    assert_eq!(host.upload(&host.acme_key, RUN, "analysisResults", name, &old).0, 200);
    // A small file is held in memory until its last byte; a large one streams into a temp file: both must vanish.
    for size in [200_000, 3_000_000] {
        let (content_type, body) = worker_multipart("analysisResults", name, &noise(10, size));
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", host.port())).unwrap();
        write!(
            stream,
            "POST /api/sync/analysis/{RUN} HTTP/1.1\r\nHost: x\r\nX-Sync-API-Key: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            host.acme_key,
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..body.len() / 2]).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(stream); // the worker dies
        std::thread::sleep(Duration::from_millis(500));
        let folder = host.home_dir(RUN).join("analysisResults");
        let names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![name.to_owned()], "no temp file left ({size} bytes)");
        assert_eq!(std::fs::read(folder.join(name)).unwrap(), old, "the previous version is intact ({size} bytes)");
    }
}

#[test]
fn digests_are_checked_and_a_mismatch_stores_nothing() {
    let host = Host::start("sync-digest", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    let content = b"hello";
    let good_b64 = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
    let (content_type, body) = worker_multipart("analysisResults", "a.json", content);
    let path = format!("/api/sync/analysis/{RUN}");
    let with = |name: &str, value: &str| {
        json(http(
            host.port(),
            "POST",
            &path,
            &[("X-Sync-API-Key", &host.acme_key), ("Content-Type", &content_type), (name, value)],
            &body,
        ))
    };
    assert_eq!(with("Repr-Digest", &format!("sha-256=:{good_b64}:")).0, 200);
    assert_eq!(with("X-Content-SHA256", &sha256_hex(content)).0, 200);
    let (content_type2, body2) = worker_multipart("analysisResults", "b.json", content);
    let (status, answer) = json(http(
        host.port(),
        "POST",
        &path,
        &[("X-Sync-API-Key", &host.acme_key), ("Content-Type", &content_type2), ("X-Content-SHA256", &"0".repeat(64))],
        &body2,
    ));
    assert_eq!(status, 400);
    assert!(answer["error"].as_str().unwrap().contains("SHA-256"));
    assert!(!host.home_dir(RUN).join("analysisResults/b.json").exists());
    assert_eq!(std::fs::read_dir(host.home_dir(RUN).join("analysisResults")).unwrap().count(), 1);

    // Each upload and each refusal is one structured log line, written before the answer.
    let log = host.service.log();
    let uploads: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("evosync-serve event=upload ")).collect();
    assert_eq!(uploads.len(), 2, "{log}");
    let event: serde_json::Value = serde_json::from_str(uploads[1]).unwrap();
    assert_eq!((event["party"].as_str(), event["name"].as_str()), (Some("acme"), Some("a.json")), "{event}");
    assert_eq!(event["sha256"].as_str(), Some(sha256_hex(content).as_str()));
    assert_eq!(log.lines().filter(|l| l.starts_with("evosync-serve event=refuse reason=digest status=400")).count(), 1);
}

#[test]
fn limits_answer_413_429_and_507() {
    let host = Host::start(
        "sync-limits",
        "uploads:\n  max_file_bytes: 4KiB\n  requests_per_second: 2\nlimits:\n  max_party_bytes: 64KiB\n",
    );
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    let (status, body) = host.upload(&host.acme_key, RUN, "analysisResults", "big.json.gz", &noise(1, 5000));
    assert_eq!(status, 413, "{body}");
    assert!(!host.home_dir(RUN).join("analysisResults/big.json.gz").exists());

    // The bucket holds 2 and refills 2 a second; a burst of 20 meets 429 with Retry-After.
    std::thread::sleep(Duration::from_millis(1200));
    let mut limited = None;
    for _ in 0..20 {
        let (status, head, _) = http(
            host.port(),
            "GET",
            &format!("/api/sync/analysis/{RUN}/list"),
            &[("X-Sync-API-Key", &host.acme_key)],
            b"",
        );
        if status == 429 {
            limited = Some(head);
            break;
        }
    }
    let head = limited.expect("a burst over requests_per_second is limited");
    assert!(head.to_ascii_lowercase().contains("retry-after: "), "{head}");

    // Fill the party's quota: 507, and nothing stored.
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(host.run_dir("acme", RUN).join("genomes.sqlite"), vec![0u8; 64 * 1024]).unwrap();
    // Nothing tells the service of a file put there by hand; a new service measures every party once when it starts
    // (off the requests' path), and sees the replica from then on.
    let run_dir = host.run_dir("acme", RUN);
    let home_dir = host.home_dir(RUN);
    drop(host.service);
    let port = common::free_loopback_port();
    let text = std::fs::read_to_string(&host.config).unwrap();
    let text = text
        .lines()
        .map(|l| if l.starts_with("listen:") { format!("listen: 127.0.0.1:{port}") } else { l.to_owned() })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&host.config, text).unwrap();
    let service = Service::start(&host.config, port);
    service.wait_for_log("event=usage party=acme", Duration::from_secs(30));
    let (content_type, body) = worker_multipart("analysisResults", "q.json.gz", &noise(2, 1000));
    let (status, answer) = json(http(
        service.port,
        "POST",
        &format!("/api/sync/analysis/{RUN}"),
        &[("X-Sync-API-Key", &host.acme_key), ("Content-Type", &content_type)],
        &body,
    ));
    assert_eq!(status, 507, "{answer}");
    assert!(!run_dir.join("analysisResults/q.json.gz").exists());
    assert!(!home_dir.join("analysisResults/q.json.gz").exists());
}

#[test]
fn ten_thousand_uploads_from_64_clients_nothing_lost_nothing_mixed() {
    let host = Host::start("sync-load", "uploads:\n  requests_per_second: 100000\n");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    assert_eq!(host.register(&host.beta_key, OTHER_RUN).0, 201);
    let total = 10_000usize;
    let clients = 64usize;
    std::thread::scope(|scope| {
        for client in 0..clients {
            let host = &host;
            scope.spawn(move || {
                for n in (client..total).step_by(clients) {
                    let (key, run) = if n % 2 == 0 { (&host.acme_key, RUN) } else { (&host.beta_key, OTHER_RUN) };
                    let content = noise(n as u64, 2000 + n % 500);
                    let (status, body) = host.upload(key, run, "analysisResults", &format!("f_{n}.json.gz"), &content);
                    assert_eq!(status, 200, "upload {n}: {body}");
                }
            });
        }
    });
    for (party, run, parity) in [("acme", RUN, 0), ("beta", OTHER_RUN, 1)] {
        let folder = host.home_dir(run).join("analysisResults");
        let names: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), total / 2, "{party}");
        for n in (parity..total).step_by(2) {
            let stored = std::fs::read(folder.join(format!("f_{n}.json.gz"))).unwrap();
            assert_eq!(sha256_hex(&stored), sha256_hex(&noise(n as u64, 2000 + n % 500)), "{party} file {n}");
        }
    }
    let key = host.acme_key.clone();
    let (_, listed) = host.list(&key, RUN, None);
    assert_eq!(listed["files"].as_array().unwrap().len(), total / 2);
}

#[test]
fn healthz_metrics_openapi_and_events() {
    let host = Host::start("sync-meta", "");
    assert_eq!(http(host.port(), "GET", "/healthz", &[], b"").0, 200);
    let (status, openapi) = json(http(host.port(), "GET", "/openapi.json", &[], b""));
    assert_eq!(status, 200);
    let paths = openapi["paths"].as_object().unwrap();
    for path in [
        "/api/sync/register/{run}",
        "/api/sync/analysis/{run}/list",
        "/api/sync/analysis/{run}",
        "/api/sync/status/{run}",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/admin/events",
        "/admin/parties",
        "/admin/parties/{name}",
        "/admin/parties/{name}/disable",
        "/admin/parties/{name}/enable",
        "/admin/ssh-keys",
        "/admin/ssh-keys/{id}",
        "/admin/api-keys",
        "/admin/api-keys/{id}",
        "/admin/authorized-keys/write",
        "/admin/authorized-keys/check",
        "/admin/audit",
        "/admin/runs",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }

    // Events: an upload shows up on the stream.
    let mut events = std::net::TcpStream::connect(("127.0.0.1", host.port())).unwrap();
    write!(events, "GET /admin/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", host.admin_token)
        .unwrap();
    events.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    assert_eq!(host.upload(&host.acme_key, RUN, "analysisResults", "e.json.gz", b"{}").0, 200);
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("e.json.gz") {
        let n = std::io::Read::read(&mut events, &mut buffer).expect("an event arrives");
        assert!(n > 0);
        seen.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("\"type\":\"upload\""));

    let (_, _, metrics) = http(host.port(), "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("evosync_uploads_total 1"), "{metrics}");
    assert!(metrics.contains("evosync_http_requests_total{route=\"upload\"} 1"), "{metrics}");
    let (status, _, _) = http(host.port(), "GET", "/admin/events", &[], b"");
    assert_eq!(status, 401, "events need the admin token");
}

#[test]
fn small_files_held_in_memory_and_large_ones_streamed_land_whole_side_by_side() {
    let host = Host::start("sync-sizes", "");
    assert_eq!(host.register(&host.acme_key, RUN).0, 201);
    // One form with three file parts: empty, small (held until its last byte), and 3 MB (streamed to its temp file).
    let files =
        [("empty.json", noise(20, 0)), ("small.json.gz", noise(21, 30_000)), ("large.json.gz", noise(22, 3_000_000))];
    let boundary = "----SyncBoundarySizes";
    let mut body =
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"subdir\"\r\n\r\nanalysisResults/sizes\r\n")
            .into_bytes();
    for (name, content) in &files {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/gzip\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let (status, answer) = json(http(
        host.port(),
        "POST",
        &format!("/api/sync/analysis/{RUN}"),
        &[("X-Sync-API-Key", &host.acme_key), ("Content-Type", &format!("multipart/form-data; boundary={boundary}"))],
        &body,
    ));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["stored"], serde_json::json!(["empty.json", "small.json.gz", "large.json.gz"]));
    let folder = host.home_dir(RUN).join("analysisResults/sizes");
    for (name, content) in &files {
        assert_eq!(sha256_hex(&std::fs::read(folder.join(name)).unwrap()), sha256_hex(content), "{name}");
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), files.len(), "no temp file left");
}
