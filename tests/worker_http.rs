//! Refusals the workers' own HTTP clients can read (issue 18, item 6). The service answers 401, 413 or 507 before it
//! reads a request's body; a client that writes its whole body before it reads must still get that answer, not a
//! broken pipe. Against the service run as its own account (`evosync`), as the systemd unit runs it:
//!
//! - the workers' sync manager's request, in Node (`tests/worker/upload.js`: `http.request`, the multipart body built
//!   by hand, `req.write(body)`, `req.end()`, `error` listened for on the request only): a 5 MB upload with a wrong
//!   key (401), over the party's quota (507) and over `max_file_bytes` (413), 20 times each: every time the status
//!   and the JSON reason arrive, and the Node process never ends on an unhandled error;
//! - Python's urllib with an 8 MiB registration body (413), and a plain client that writes an 8 MiB upload without a
//!   key (401) before reading a byte: each gets the answer and its reason;
//! - the drain's bounds (`http.linger_seconds`, `http.linger_idle_seconds`, `http.linger_bytes`): a 1 GiB body sent
//!   at full speed after a 401 is cut off after the byte bound, one trickled slowly after the time bound, a client
//!   that sends nothing more after the idle bound; 32 such floods at once grow the service's memory by at most
//!   64 MiB; `/metrics` counts the lingering closes and the bytes they discarded.
//!
//! Times here are deadlines on the test, never assertions about speed.

mod common;

use common::{evosync_json, http, Service};
use evosync::config::HttpLimits;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ACME_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";
const BETA_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DS_beta_run";
const ATTEMPTS: usize = 20;
const UPLOAD_BYTES: usize = 5_000_000;
const GIB: u64 = 1 << 30;

/// A central with two parties: acme, whose quota (4 MB) a 5 MB upload would pass, and beta, whose files may hold
/// 1 MiB. The service runs as `evosync`.
struct Central {
    dir: tempfile::TempDir,
    service: Service,
    acme_key: String,
    beta_key: String,
    /// The CA of the service's certificate, when it speaks TLS.
    tls_ca: Option<PathBuf>,
}

impl Central {
    fn start(name: &str) -> Central {
        Central::start_with(name, false)
    }

    /// With `tls`, the service speaks HTTPS only, with a certificate of a CA made here.
    fn start_with(name: &str, tls: bool) -> Central {
        common::require_account("evosync");
        let dir = common::test_dir(name);
        let root = dir.path();
        let port = common::free_loopback_port();
        let (config, _) = common::init_central(root, port, &[]);
        let tls_ca = tls.then(|| {
            let pki = common::Pki::new(root, "tls");
            let text = std::fs::read_to_string(&config).unwrap();
            let text = format!("{text}tls_cert: {}\ntls_key: {}\n", pki.cert.display(), pki.key.display());
            std::fs::write(&config, text).unwrap();
            pki.ca
        });
        let policies = [("acme", "limits:\n  max_party_bytes: 4MB\n"), ("beta", "uploads:\n  max_file_bytes: 1MiB\n")];
        let mut keys = Vec::new();
        for (party, extra) in policies {
            let (ok, _, said) = evosync_json(&config, &["party", "add", party]);
            assert!(ok, "party add {party}: {said}");
            std::fs::write(
                root.join(format!("policies/{party}.yaml")),
                format!("party: {party}\npush: true\ncreate_runs: true\nrequire_sandbox: false\n{extra}"),
            )
            .unwrap();
            let (ok, issued, said) = evosync_json(&config, &["api-key", "issue", party, "--name", "worker"]);
            assert!(ok, "{said}");
            keys.push(issued["api_key"].as_str().unwrap().to_owned());
        }
        let service = Service::start_as_service_account(&config, port);
        let (beta_key, acme_key) = (keys.pop().unwrap(), keys.pop().unwrap());
        let central = Central { dir, service, acme_key, beta_key, tls_ca };
        if central.tls_ca.is_none() {
            central.register(&central.acme_key, ACME_RUN);
            central.register(&central.beta_key, BETA_RUN);
        }
        central
    }

    fn port(&self) -> u16 {
        self.service.port
    }

    fn url(&self, path: &str) -> String {
        match self.tls_ca {
            Some(_) => format!("https://localhost:{}{path}", self.port()),
            None => format!("http://127.0.0.1:{}{path}", self.port()),
        }
    }

    fn register(&self, key: &str, run: &str) {
        let body = r#"{"templateName":"CMA-MAE","ecosystemVariant":"default","startedAt":"2026-11-25T06:00:00.000Z"}"#;
        let (status, _, answer) = http(
            self.port(),
            "POST",
            &format!("/api/sync/register/{run}"),
            &[("X-Sync-API-Key", key), ("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    }

    /// acme's key with the right id and a wrong secret.
    fn forged_key(&self) -> String {
        let (id, _) = self.acme_key.trim_start_matches("evs_").split_once('_').unwrap();
        format!("evs_{id}_{:064x}", 7)
    }

    fn metrics(&self) -> String {
        String::from_utf8(http(self.port(), "GET", "/metrics", &[], b"").2).unwrap()
    }

    /// The value of one counter of `/metrics` (0 when absent).
    fn counter(&self, name_and_labels: &str) -> u64 {
        let metrics = self.metrics();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    }

    /// The service's lingering closes so far, from its log: (ended, drained bytes).
    fn lingered(&self) -> Vec<(String, u64)> {
        let log = self.service.log();
        log.lines()
            .filter(|line| line.starts_with("evosync-serve event=linger "))
            .map(|line| (field(line, "ended").to_owned(), field(line, "drained").parse().unwrap()))
            .collect()
    }

    /// Waits until the log holds a lingering close that ended `how`, returning when (and failing after `within`).
    fn wait_for_linger(&self, how: &str, within: Duration) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if self.lingered().iter().any(|(ended, _)| ended == how) {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "no lingering close ended={how}: {}", self.service.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `key=value` of a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("no {key}= in {line}")) + key.len() + 2;
    line[start..].split(' ').next().unwrap()
}

fn analysis_files(central: &Central, _party: &str, run: &str) -> Vec<String> {
    let dir: PathBuf = common::home_of(central.dir.path(), run).join("analysisResults");
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// `tests/worker/upload.js`: the sync manager's upload of a ~`bytes` gzip file, `times` times; each attempt's outcome.
fn node_uploads(
    central: &Central,
    run: &str,
    key: &str,
    name: &str,
    bytes: usize,
    times: usize,
) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/worker/upload.js");
    let url = central.url(&format!("/api/sync/analysis/{run}"));
    let mut node = Command::new("node");
    if let Some(ca) = &central.tls_ca {
        node.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let output = node
        .arg(&script)
        .args([&url, key, "analysisResults", name, &bytes.to_string(), &times.to_string()])
        .output()
        .expect("node (scripts/setup-test-env.sh installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the Node process ended on an error ({}):\n{stderr}\n{stdout}", output.status);
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// Every attempt got `status` with a JSON body whose `error` says `reason`.
fn assert_every_attempt_read(outcomes: &[serde_json::Value], status: u16, reason: &str) {
    assert_eq!(outcomes.len(), ATTEMPTS, "{outcomes:?}");
    let read = outcomes.iter().filter(|o| o["status"] == status).count();
    println!("{status}: {read} of {ATTEMPTS} attempts read the answer; {:?}", outcomes.first());
    for outcome in outcomes {
        assert_eq!(outcome["status"], status, "an attempt did not get its {status}: {outcome} (all: {outcomes:?})");
        let body: serde_json::Value = serde_json::from_str(outcome["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["status"], status, "{body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }
}

#[test]
fn the_workers_node_client_reads_401_507_and_413_every_time() {
    let central = Central::start("worker-node");

    let wrong_key = node_uploads(&central, ACME_RUN, &central.forged_key(), "a.json.gz", UPLOAD_BYTES, ATTEMPTS);
    assert_every_attempt_read(&wrong_key, 401, "the X-Sync-API-Key is not a valid key");

    let over_quota = node_uploads(&central, ACME_RUN, &central.acme_key, "q.json.gz", UPLOAD_BYTES, ATTEMPTS);
    assert_every_attempt_read(&over_quota, 507, "would go over its quota (max_party_bytes)");

    let too_large = node_uploads(&central, BETA_RUN, &central.beta_key, "l.json.gz", UPLOAD_BYTES, ATTEMPTS);
    assert_every_attempt_read(&too_large, 413, "'l.json.gz' is over the 1MiB limit per file");

    assert!(analysis_files(&central, "acme", ACME_RUN).is_empty());
    assert!(analysis_files(&central, "beta", BETA_RUN).is_empty(), "{:?}", analysis_files(&central, "beta", BETA_RUN));
    let lingered = central.lingered();
    let drained: u64 = lingered.iter().map(|(_, bytes)| bytes).sum();
    let client_closed = lingered.iter().filter(|(ended, _)| ended == "client-closed").count();
    println!("{} lingering closes ({client_closed} ended by the client), {drained} bytes discarded", lingered.len());
    assert!(central.counter("evosync_lingering_drained_bytes_total") >= drained);
    assert!(lingered.len() >= 3 * ATTEMPTS, "a lingering close after each refusal: {lingered:?}");
}

/// Over TLS the same: the sync manager's request through `https.request` reads its 401 every time, and a client that
/// writes a whole 8 MiB body before reading gets it too.
#[test]
fn over_tls_the_refusal_arrives_too() {
    let central = Central::start_with("worker-tls", true);
    let wrong_key = node_uploads(&central, ACME_RUN, &central.forged_key(), "a.json.gz", UPLOAD_BYTES, ATTEMPTS);
    assert_every_attempt_read(&wrong_key, 401, "the X-Sync-API-Key is not a valid key");

    let ca = central.tls_ca.as_ref().unwrap();
    for _ in 0..3 {
        let mut stream = common::tls_connect(central.port(), ca).unwrap();
        let body = vec![b'x'; 8 << 20];
        let head = format!(
            "POST /api/sync/analysis/{ACME_RUN}?filename=x.json HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).expect("the service takes the whole body before it closes");
        stream.flush().unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.contains("send the party's API key in the X-Sync-API-Key header"), "{answer}");
    }
    let lingered = central.lingered();
    assert!(lingered.len() >= ATTEMPTS, "a lingering close after each refusal: {lingered:?}");
    assert!(lingered.iter().all(|(ended, _)| !matches!(ended.as_str(), "time" | "idle")), "{lingered:?}");
}

/// Python's urllib sends the whole body before it reads: an 8 MiB registration gets its 413, five times out of five.
#[test]
fn a_client_that_writes_its_whole_body_first_reads_the_refusal() {
    let central = Central::start("worker-whole-body");
    let script = r#"
import json, sys, urllib.error, urllib.request
url, key = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=b"x" * (8 << 20), method="POST",
                                 headers={"X-Sync-API-Key": key, "Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as answer:
        print(json.dumps({"status": answer.status, "body": answer.read().decode()}))
except urllib.error.HTTPError as refused:
    print(json.dumps({"status": refused.code, "body": refused.read().decode()}))
except Exception as failed:
    print(json.dumps({"error": repr(failed)}))
"#;
    for _ in 0..5 {
        let output = Command::new("python3")
            .args(["-c", script, &central.url(&format!("/api/sync/register/{ACME_RUN}")), &central.acme_key])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        let outcome: serde_json::Value = serde_json::from_str(said.trim())
            .unwrap_or_else(|_| panic!("{said} {}", String::from_utf8_lossy(&output.stderr)));
        assert_eq!(outcome["status"], 413, "urllib did not get the 413: {outcome}");
        assert!(outcome["body"].as_str().unwrap().contains("over the 64KiB limit of this endpoint"), "{outcome}");
    }

    // A client of our own: the whole 8 MiB upload without a key, then the answer.
    for _ in 0..5 {
        let body = vec![b'x'; 8 << 20];
        let mut stream = TcpStream::connect(("127.0.0.1", central.port())).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST /api/sync/analysis/{ACME_RUN}?filename=x.json HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).expect("the service takes the whole body before it closes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "the answer says so: {answer}");
        assert!(answer.contains("send the party's API key in the X-Sync-API-Key header"), "{answer}");
    }
}

/// What became of a 1 GiB body sent after the head of a request without a key.
struct Sent {
    /// When the answer arrived.
    answered: Instant,
    /// When the service refused our writes (it had closed the connection).
    cut_off: Instant,
    /// Body bytes that went into the socket.
    bytes: u64,
    answer: String,
}

/// Sends the head of a 1 GiB upload without a key, then `chunk` bytes every `pause` until the service cuts the
/// connection off (or 60 s pass), reading the answer meanwhile.
fn send_after_refusal(port: u16, chunk: usize, pause: Duration) -> Sent {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let reading = std::thread::spawn(move || {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut answered = None;
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    answered.get_or_insert_with(Instant::now);
                    answer.extend_from_slice(&buffer[..n]);
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        (answered.expect("an answer"), String::from_utf8_lossy(&answer).into_owned())
    });
    let head = format!(
        "POST /api/sync/analysis/{ACME_RUN}?filename=x.json HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let filler = vec![b'a'; chunk];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut bytes = 0;
    while Instant::now() < deadline && bytes < GIB {
        if stream.write_all(&filler).is_err() {
            break;
        }
        bytes += chunk as u64;
        std::thread::sleep(pause);
    }
    let cut_off = Instant::now();
    let (answered, answer) = reading.join().unwrap();
    Sent { answered, cut_off, bytes, answer }
}

#[test]
fn a_body_after_a_refusal_is_drained_within_its_bounds() {
    let limits = HttpLimits::default();
    let (linger, idle, linger_bytes) = (
        Duration::from_secs(limits.linger_seconds),
        Duration::from_secs(limits.linger_idle_seconds),
        limits.linger_bytes.0,
    );
    let central = Central::start("worker-linger-bounds");
    let port = central.port();

    // At full speed: cut off once the byte bound is discarded.
    let fast = send_after_refusal(port, 1 << 20, Duration::ZERO);
    println!(
        "fast: {} MiB into the socket, cut off {:?} after the answer",
        fast.bytes >> 20,
        fast.cut_off - fast.answered
    );
    assert!(fast.answer.starts_with("HTTP/1.1 401"), "{}", fast.answer);
    assert!(fast.bytes < 64 << 20, "the service took {} bytes of an unauthenticated body", fast.bytes);
    central.wait_for_linger("bytes", Duration::from_secs(10));
    assert!(central.lingered().contains(&("bytes".to_owned(), linger_bytes)), "{:?}", central.lingered());

    // Slowly (160 KiB/s, a chunk each 200 ms): cut off at the time bound.
    let slow = send_after_refusal(port, 32 << 10, Duration::from_millis(200));
    let lingered = slow.cut_off - slow.answered;
    println!("slow: {} KiB into the socket, cut off {lingered:?} after the answer", slow.bytes >> 10);
    assert!(slow.answer.starts_with("HTTP/1.1 401"), "{}", slow.answer);
    assert!(lingered >= linger - Duration::from_millis(500), "cut off before the time bound: {lingered:?}");
    assert!(lingered <= linger + Duration::from_secs(5), "not cut off at the time bound: {lingered:?}");
    assert!(slow.bytes < linger_bytes, "{}", slow.bytes);
    central.wait_for_linger("time", Duration::from_secs(10));

    // Nothing more after the head and a few bytes: closed after the idle bound.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /api/sync/analysis/{ACME_RUN}?filename=x.json HTTP/1.1\r\nHost: x\r\nContent-Length: {GIB}\r\n\r\n"
    );
    silent.write_all(head.as_bytes()).unwrap();
    silent.write_all(&[b'a'; 1000]).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    silent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    silent.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let closed = central.wait_for_linger("idle", idle + Duration::from_secs(10)) - started;
    println!("silent: closed {closed:?} after the request");
    assert!(closed >= idle - Duration::from_millis(200), "{closed:?}");

    // 32 floods at once: memory stays flat, each is cut off at the byte bound.
    let before = central.service.rss_mib_resetting_peak();
    let floods: Vec<_> =
        (0..32).map(|_| std::thread::spawn(move || send_after_refusal(port, 1 << 20, Duration::ZERO))).collect();
    for flood in floods {
        let sent = flood.join().unwrap();
        assert!(sent.answer.starts_with("HTTP/1.1 401"), "{}", sent.answer);
        assert!(sent.bytes < 64 << 20, "{}", sent.bytes);
    }
    let growth = central.service.peak_rss_mib() - before;
    println!("32 floods at once: service peak RSS growth {growth:.1} MiB (limit 64 MiB)");
    assert!(growth <= 64.0, "RSS grew by {growth:.1} MiB");

    let deadline = Instant::now() + Duration::from_secs(20);
    while central.lingered().len() < 35 {
        assert!(Instant::now() < deadline, "{:?}", central.lingered());
        std::thread::sleep(Duration::from_millis(50));
    }
    let lingered = central.lingered();
    let drained: u64 = lingered.iter().map(|(_, bytes)| bytes).sum();
    assert!(lingered.iter().all(|(_, bytes)| *bytes <= linger_bytes), "{lingered:?}");
    let metrics = central.metrics();
    assert_eq!(central.counter("evosync_lingering_drained_bytes_total"), drained, "{metrics}");
    for ended in ["bytes", "time", "idle"] {
        let logged = lingered.iter().filter(|(how, _)| how == ended).count() as u64;
        assert_eq!(
            central.counter(&format!("evosync_lingering_closes_total{{ended=\"{ended}\"}}")),
            logged,
            "{metrics}"
        );
    }
}
