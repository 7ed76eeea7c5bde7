//! The SSH tunnel over HTTPS (issue 11), end to end over real TLS (a CA and certificate made here), real sshd with the
//! gate, a running `evosync serve`, and the stock sqlite3_rsync with `ProxyCommand evosync tunnel …`:
//! - first push, incremental push and a refusal through the tunnel, read as usual; the ledger and the audit trail
//!   say `transport=websocket`; `/metrics` counts the bytes per party; a generic WebSocket client (Python's
//!   `websockets`) works as the ProxyCommand too;
//! - a wrong, missing or empty API key, a party without `tunnel: true`, an endpoint that is off: each refused with
//!   its reason, nothing written;
//! - the one-party rule: party acme's API key with party beta's SSH key is refused by the gate, nothing created;
//! - the bounds: `limits.max_tunnels`, `http.max_connections` (an open tunnel keeps its place), a tunnel that idles,
//!   a frame over 1 MiB, a text frame;
//! - TLS: SIGHUP swaps the certificate for new connections and leaves an open tunnel alone, a bad pair on reload
//!   keeps the old one; a missing, unreadable, mismatched or half-given pair stops the start with a clear error, and
//!   so does plain HTTP on a non-loopback address.
//!
//! Times here are bounds on the test (deadlines), never assertions about speed.

mod common;

use common::{evosync_json, https, make_db, tls_connect, Pki, Service, Sshd};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{self, Message};

const EVOSYNC: &str = env!("CARGO_BIN_EXE_evosync");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_tunnel";
const HOST_ALIAS: &str = "central-over-https";

/// A central host: `evosync init` (authorized_keys file mode), parties acme (`tunnel: true`) and beta, an SSH key
/// and an API key for each, sshd with the gate, and the service with TLS and `tunnel_ssh` pointing at that sshd.
struct Central {
    dir: tempfile::TempDir,
    config: PathBuf,
    sshd: Sshd,
    service: Option<Service>,
    port: u16,
    pki: Pki,
    /// Per party: (SSH private key, API key file).
    acme: (PathBuf, PathBuf),
    beta: (PathBuf, PathBuf),
}

impl Central {
    fn start(name: &str, config_extra: &str, acme_policy_extra: &str) -> Central {
        let dir = common::test_dir(name);
        let root = dir.path().to_owned();
        let sshd = Sshd::start("");
        let keys_file = sshd.empty_authorized_keys("evosync");
        let port = common::free_loopback_port();
        let (config, _) = common::init_central(&root, port, &["--authorized-keys", keys_file.to_str().unwrap()]);
        let (replicas, policies) = (root.join("replicas"), root.join("policies"));
        let mut keys = Vec::new();
        for party in ["acme", "beta"] {
            let (ok, _, said) = evosync_json(&config, &["party", "add", party]);
            assert!(ok, "party add {party}: {said}");
            let extra = if party == "acme" { acme_policy_extra } else { "" };
            std::fs::write(
                policies.join(format!("{party}.yaml")),
                format!(
                    "party: {party}\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n\
                     require_sandbox: false\n{extra}"
                ),
            )
            .unwrap();
            let (ssh_key, _) = sshd.new_client_key(party);
            let public = ssh_key.with_extension("pub");
            let (ok, _, said) =
                evosync_json(&config, &["ssh-key", "add", party, "--public-key", public.to_str().unwrap()]);
            assert!(ok, "ssh-key add {party}: {said}");
            let (ok, issued, said) = evosync_json(&config, &["api-key", "issue", party]);
            assert!(ok, "api-key issue: {said}");
            let api_key_file = root.join(format!("{party}.api-key"));
            std::fs::write(&api_key_file, format!("{}\n", issued["api_key"].as_str().unwrap())).unwrap();
            keys.push((ssh_key, api_key_file));
        }
        common::chown_to(&replicas, "evosync");
        let pki = Pki::new(&root, "tls");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "tls_cert: {}\ntls_key: {}\ntunnel_ssh: 127.0.0.1:{}\n{config_extra}",
            pki.cert.display(),
            pki.key.display(),
            sshd.port()
        ));
        std::fs::write(&config, text).unwrap();
        let service = Some(Service::start(&config, port));
        let beta = keys.pop().unwrap();
        let acme = keys.pop().unwrap();
        Central { dir, config, sshd, service, port, pki, acme, beta }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn service(&self) -> &Service {
        self.service.as_ref().unwrap()
    }

    fn url(&self) -> String {
        format!("wss://localhost:{}/api/sync/ssh", self.port)
    }

    /// The worker's ~/.ssh/config block as the README shows it, with this test's key and CA, and an ssh that reads
    /// it: `ProxyCommand` is `proxy` (by default `evosync tunnel`).
    fn ssh_program(&self, name: &str, ssh_key: &Path, api_key_file: &Path, proxy: Option<String>) -> PathBuf {
        let proxy = proxy.unwrap_or_else(|| {
            format!(
                "{EVOSYNC} tunnel --url {} --api-key-file {} --ca-file {}",
                self.url(),
                api_key_file.display(),
                self.pki.ca.display()
            )
        });
        let ssh_config = self.root().join(format!("ssh_config-{name}"));
        std::fs::write(
            &ssh_config,
            format!(
                "Host {HOST_ALIAS}\n    User evosync\n    ProxyCommand {proxy}\n    IdentityFile {}\n\
                 IdentitiesOnly yes\n    BatchMode yes\n    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n\
                 LogLevel ERROR\n",
                ssh_key.display()
            ),
        )
        .unwrap();
        let program = self.root().join(format!("ssh-{name}"));
        common::write_executable(
            &program,
            &format!("#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n", ssh_config.display()),
        );
        program
    }

    /// The stock client as the worker runs it, through `ssh`.
    fn push(&self, ssh: &Path, origin: &Path, run: &str) -> Output {
        Command::new(common::sqlite3_rsync_path())
            .arg(origin)
            .arg(format!("evosync@{HOST_ALIAS}:/data/evorun-sync/{run}/genomes.sqlite"))
            .arg("--ssh")
            .arg(ssh)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn store(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.root().join("state/state.db")).unwrap()
    }

    /// (party, run, exit, transport) of every ledger row.
    fn ledger(&self) -> Vec<(String, String, String, String)> {
        let store = self.store();
        let mut rows = store.prepare("SELECT party, run, exit, transport FROM sync_ledger ORDER BY id").unwrap();
        rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
    }

    /// (outcome, detail) of the gate's records in the audit trail.
    fn gate_audit(&self) -> Vec<(String, String)> {
        let store = self.store();
        let mut rows = store.prepare("SELECT outcome, detail FROM audit WHERE action = 'gate' ORDER BY seq").unwrap();
        rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// Every path in the party trees.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(base).unwrap().display().to_string());
                if path.is_dir() {
                    walk(&path, base, out);
                }
            }
        }
        let mut out = Vec::new();
        let replicas = self.root().join("replicas");
        walk(&replicas, &replicas, &mut out);
        out.sort();
        out
    }

    fn metrics(&self) -> String {
        let (status, body) = https(self.port, &self.pki.ca, "GET", "/metrics", &[]);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `evosync tunnel` by itself, its stdin and stdout ours (as ssh would hold them).
    fn tunnel_process(&self, api_key_file: &Path, ca: &Path) -> Held {
        let child = Command::new(EVOSYNC)
            .args(["tunnel", "--url", &self.url(), "--api-key-file"])
            .arg(api_key_file)
            .arg("--ca-file")
            .arg(ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Held::new(child)
    }

    /// A raw WebSocket session over TLS with `api_key`.
    fn websocket(
        &self,
        api_key: Option<&str>,
    ) -> Result<tungstenite::WebSocket<common::TlsStream>, tungstenite::Error> {
        let stream = tls_connect(self.port, &self.pki.ca).unwrap();
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(self.url().as_str()).unwrap();
        if let Some(key) = api_key {
            request.headers_mut().insert("X-Sync-API-Key", key.parse().unwrap());
        }
        let config = tungstenite::protocol::WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        tungstenite::client::client_with_config(request, stream, Some(config)).map(|(socket, _)| socket).map_err(|e| {
            match e {
                tungstenite::HandshakeError::Failure(e) => e,
                e => panic!("{e}"),
            }
        })
    }

    fn api_key(&self, file: &Path) -> String {
        std::fs::read_to_string(file).unwrap().trim().to_owned()
    }

    /// Waits until the service's log holds `needle` (a deadline on the test, not an assertion on speed).
    fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.service().log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "the service never logged {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `evosync tunnel` whose stdout is read by a thread.
struct Held {
    child: Child,
    stdout: mpsc::Receiver<Vec<u8>>,
}

impl Held {
    fn new(mut child: Child) -> Held {
        let mut out = child.stdout.take().unwrap();
        let (send, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = out.read(&mut buffer) {
                if n == 0 || send.send(buffer[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Held { child, stdout }
    }

    /// Bytes from the tunnel until `want` of them arrived (a deadline on the test).
    fn read(&self, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(bytes) => got.extend(bytes),
                Err(_) => {
                    panic!("only {} bytes came through the tunnel: {:?}", got.len(), String::from_utf8_lossy(&got))
                }
            }
        }
        got
    }

    fn write(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the process to end by itself; its stderr.
    fn ended(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "evosync tunnel did not end");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (status, stderr)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn replica_rows(central: &Central, run: &str) -> i64 {
    let path = central.root().join(format!("replicas/acme/{run}/genomes.sqlite"));
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row("SELECT count(*) FROM genomes", [], |r| r.get(0)).unwrap()
}

#[test]
fn the_stock_client_pushes_through_the_tunnel() {
    let central = Central::start("tunnel-push", "", "tunnel: true\n");
    let (ssh_key, api_key_file) = central.acme.clone();
    let ssh = central.ssh_program("acme", &ssh_key, &api_key_file, None);
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 300, 2000);

    // First push: the run folder and the replica are made, through sshd, the gate and the stock replica side.
    let first = central.push(&ssh, &origin, RUN);
    assert!(first.status.success(), "first push through the tunnel: {}", said(&first));
    assert_eq!(replica_rows(&central, RUN), 300);

    // Incremental push.
    common::insert_rows(&origin, "genomes", 50, 2000);
    let second = central.push(&ssh, &origin, RUN);
    assert!(second.status.success(), "incremental push: {}", said(&second));
    assert_eq!(replica_rows(&central, RUN), 350);

    // A refusal reads as it does over plain SSH.
    let refused = central.push(&ssh, &origin, "nope");
    assert!(!refused.status.success());
    assert!(
        said(&refused).contains("ERROR: evosync-gate: 'nope' is not an allowed run folder name"),
        "{}",
        said(&refused)
    );

    // A generic WebSocket client as the ProxyCommand: Python's websockets, no evosync on the worker.
    let python = format!(
        "/usr/bin/python3 {} {} {} {}",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/websocket_proxy.py").display(),
        central.url(),
        api_key_file.display(),
        central.pki.ca.display()
    );
    let generic = central.ssh_program("python", &ssh_key, &api_key_file, Some(python));
    common::insert_rows(&origin, "genomes", 25, 2000);
    let third = central.push(&generic, &origin, RUN);
    assert!(third.status.success(), "push through the Python client: {}", said(&third));
    assert_eq!(replica_rows(&central, RUN), 375);

    let ledger = central.ledger();
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    for (party, run, exit, transport) in &ledger {
        assert_eq!((party.as_str(), run.as_str(), exit.as_str(), transport.as_str()), ("acme", RUN, "0", "websocket"));
    }
    let audit = central.gate_audit();
    assert!(audit.iter().all(|(_, detail)| detail.starts_with("transport=websocket")), "{audit:?}");
    assert!(audit.iter().any(|(outcome, _)| outcome == "refuse:denied"), "{audit:?}");

    let metrics = central.metrics();
    let bytes = |direction: &str| -> u64 {
        let name = format!("evosync_tunnel_bytes_total{{party=\"acme\",direction=\"{direction}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(name.as_str())).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let pushed = std::fs::metadata(&origin).unwrap().len();
    assert!(bytes("in") > pushed, "the first push alone carried the database in: {} of {pushed}", bytes("in"));
    assert!(bytes("out") > 0, "{metrics}");
    // One tunnel per ssh session: three pushes, and the refused one twice (the stock client retries once).
    assert!(metrics.contains("evosync_tunnels_total{party=\"acme\"} 5"), "{metrics}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while central.service().log().matches("event=tunnel-close").count() < 5 {
        assert!(Instant::now() < deadline, "every tunnel ends: {}", central.service().log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tunnel_needs_the_right_key_and_the_policy() {
    let central = Central::start("tunnel-refused", "", "tunnel: true\n");
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 10, 100);
    let (acme_ssh, _) = central.acme.clone();
    let (beta_ssh, beta_api) = central.beta.clone();

    // A wrong API key: 401 with the service's reason, nothing reaches sshd.
    let wrong = central.root().join("wrong.api-key");
    std::fs::write(&wrong, "evs_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").unwrap();
    let ssh = central.ssh_program("wrong", &acme_ssh, &wrong, None);
    let output = central.push(&ssh, &origin, RUN);
    assert!(!output.status.success());
    assert!(
        said(&output)
            .contains("evosync: tunnel: the service refused the tunnel (401): the X-Sync-API-Key is not a valid key"),
        "{}",
        said(&output)
    );

    // A missing and an empty key file: refused before anything is sent.
    let missing = central.root().join("missing.api-key");
    let output = central.push(&central.ssh_program("missing", &acme_ssh, &missing, None), &origin, RUN);
    assert!(said(&output).contains("cannot read --api-key-file"), "{}", said(&output));
    let empty = central.root().join("empty.api-key");
    std::fs::write(&empty, "\n").unwrap();
    let output = central.push(&central.ssh_program("empty", &acme_ssh, &empty, None), &origin, RUN);
    assert!(said(&output).contains("it is empty"), "{}", said(&output));

    // No key at all, straight to the endpoint.
    match central.websocket(None) {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("no key: {:?}", other.map(|_| ())),
    }

    // Party beta's policy does not say `tunnel: true`.
    let ssh = central.ssh_program("beta", &beta_ssh, &beta_api, None);
    let output = central.push(&ssh, &origin, RUN);
    assert!(!output.status.success());
    assert!(
        said(&output).contains("(403): party 'beta' may not use the SSH tunnel (its policy does not say tunnel: true)"),
        "{}",
        said(&output)
    );

    // A certificate the worker does not trust.
    let other = Pki::new(central.root(), "other");
    let mut held = central.tunnel_process(&central.acme.1, &other.ca);
    held.write(b"");
    let (status, stderr) = held.ended();
    assert!(!status.success());
    assert!(stderr.contains("TLS with localhost failed: the service's certificate is not trusted"), "{stderr}");

    assert_eq!(central.tree(), ["acme", "beta"], "nothing was written");
    assert!(central.ledger().is_empty());
    let log = central.service().log();
    assert!(!log.contains("event=tunnel-open"), "no tunnel was opened: {log}");
    for reason in ["reason=bad-key", "reason=no-key", "reason=tunnel-off"] {
        assert!(log.contains(reason), "{reason}: {log}");
    }
}

#[test]
fn one_party_throughout_the_api_key_and_the_ssh_key() {
    let central = Central::start("tunnel-one-party", "", "tunnel: true\n");
    let origin = central.root().join("genomes.sqlite");
    make_db(&origin, "genomes", 10, 100);
    // Party acme's API key opens the tunnel; party beta's SSH key logs in through it.
    let (beta_ssh, _) = central.beta.clone();
    let ssh = central.ssh_program("mixed", &beta_ssh, &central.acme.1, None);
    let output = central.push(&ssh, &origin, RUN);
    assert!(!output.status.success());
    assert!(
        said(&output).contains(
            "ERROR: evosync-gate: this SSH key is party 'beta''s, but the tunnel was opened with another party's API \
             key; use one party's API key and SSH key together"
        ),
        "{}",
        said(&output)
    );
    assert_eq!(central.tree(), ["acme", "beta"], "nothing was created");
    assert!(central.ledger().is_empty());
    let audit = central.gate_audit();
    assert!(!audit.is_empty() && audit.iter().all(|(outcome, _)| outcome == "refuse:tunnel"), "{audit:?}");
    assert!(
        audit[0].1.contains("the tunnel was opened with an API key of acme"),
        "the host's record says whose: {audit:?}"
    );

    // The same SSH key straight to sshd still pushes (beta may push; it may not borrow acme's tunnel).
    let direct = central.sshd.sqlite3_rsync(
        &beta_ssh,
        &origin,
        "evosync",
        &format!("/data/evorun-sync/{RUN}/genomes.sqlite"),
        &[],
    );
    assert!(direct.status.success(), "{}", said(&direct));
    let ledger = central.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!((ledger[0].0.as_str(), ledger[0].3.as_str()), ("beta", "ssh"));
}

#[test]
fn tunnels_are_bounded_in_number_time_and_frame_size() {
    let central = Central::start(
        "tunnel-bounds",
        "http:\n  tunnel_idle_seconds: 3\n  max_connections: 3\n",
        "tunnel: true\nlimits:\n  max_tunnels: 2\n",
    );
    let api_key_file = central.acme.1.clone();

    // Two tunnels are open: each reads sshd's banner.
    let first = central.tunnel_process(&api_key_file, &central.pki.ca);
    let second = central.tunnel_process(&api_key_file, &central.pki.ca);
    for held in [&first, &second] {
        assert!(held.read(8).starts_with(b"SSH-2.0-"));
    }
    // A third is refused with the limit named.
    let third = central.tunnel_process(&api_key_file, &central.pki.ca);
    let (status, stderr) = third.ended();
    assert!(!status.success());
    assert!(
        stderr.contains("(429): party 'acme' has 2 SSH tunnels open, its limit (limits.max_tunnels); close one first"),
        "{stderr}"
    );
    assert!(central.metrics().contains("evosync_tunnels_open{party=\"acme\"} 2"));

    // The connection cap: two tunnels and one more connection hold the three slots; the next waits in the backlog
    // until one closes.
    let service = central.service();
    let settled = || {
        let mut last = service.open_sockets();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = service.open_sockets();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let base = settled();
    let holder = std::net::TcpStream::connect(("127.0.0.1", central.port)).unwrap();
    assert_eq!(settled(), base + 1, "the third connection is accepted");
    let waiting = std::net::TcpStream::connect(("127.0.0.1", central.port)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(service.open_sockets(), base + 1, "the fourth waits while two tunnels and one connection hold the cap");
    drop(holder);
    assert_eq!(settled(), base + 1, "the fourth is accepted once the third closed");
    drop(waiting);

    // Both tunnels carry nothing: each is closed after 3 s with the reason, and the process says it.
    for held in [first, second] {
        let (status, stderr) = held.ended();
        assert!(!status.success());
        assert!(
            stderr.contains("the service closed the tunnel: no byte either way for 3 s (http.tunnel_idle_seconds)"),
            "{stderr}"
        );
    }
    central.wait_for_log("reason=idle");

    // A frame over 1 MiB: closed with 1009 on its header, before a byte of its payload is read. Only the header is
    // sent (FIN + binary, masked, a 64-bit length of 2 MiB, the mask key): a payload the service leaves unread would
    // make the kernel reset the connection, and the closing frame could be lost on the way.
    let key = central.api_key(&api_key_file);
    let mut socket = central.websocket(Some(&key)).unwrap();
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(2u64 << 20).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    socket.get_mut().write_all(&header).unwrap();
    socket.get_mut().flush().unwrap();
    assert_eq!(close_code(&mut socket), Some(1009));
    // A text frame: closed with 1003.
    let mut socket = central.websocket(Some(&key)).unwrap();
    socket.send(Message::Text("hello".into())).unwrap();
    assert_eq!(close_code(&mut socket), Some(1003));
    let log = central.wait_for_log("reason=text-frame");
    assert!(log.contains("reason=frame-too-large"), "{log}");
    assert_eq!(central.tree(), ["acme", "beta"], "nothing was written");
}

/// Reads until the service's closing frame; its code.
fn close_code(socket: &mut tungstenite::WebSocket<common::TlsStream>) -> Option<u16> {
    loop {
        match socket.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| f.code.into()),
            Ok(_) => {}
            Err(error) => panic!("no closing frame: {error}"),
        }
    }
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_open_tunnels() {
    let central = Central::start("tunnel-reload", "", "tunnel: true\n");
    let api_key_file = central.acme.1.clone();
    let old_ca = central.root().join("old-ca.pem");
    std::fs::copy(&central.pki.ca, &old_ca).unwrap();
    let mut open = central.tunnel_process(&api_key_file, &old_ca);
    let banner = open.read(8);
    assert!(banner.starts_with(b"SSH-2.0-"));

    // A new pair in place of the old, and SIGHUP.
    let new = Pki::new(central.root(), "new");
    std::fs::copy(&new.cert, &central.pki.cert).unwrap();
    std::fs::copy(&new.key, &central.pki.key).unwrap();
    let pid = nix::unistd::Pid::from_raw(central.service().pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    central.wait_for_log("event=reload tls=reloaded");

    // New connections get the new certificate: the old CA no longer vouches for it, the new one does.
    let (status, stderr) = central.tunnel_process(&api_key_file, &old_ca).ended();
    assert!(!status.success() && stderr.contains("not trusted"), "{stderr}");
    let fresh = central.tunnel_process(&api_key_file, &new.ca);
    assert!(fresh.read(8).starts_with(b"SSH-2.0-"));

    // The tunnel opened before the reload still carries SSH: sshd answers our banner with its key exchange.
    open.write(b"SSH-2.0-evosync-test\r\n");
    let more = open.read(64);
    assert!(more.len() >= 64, "sshd's KEXINIT came through the old connection");

    // A bad pair on reload (the old certificate with the new key) is refused, and the certificate in use stays.
    let old = central.root().join("tls");
    let _ = old;
    std::fs::write(&central.pki.cert, std::fs::read(central.root().join("new/cert.pem")).unwrap()).unwrap();
    let mismatched = Pki::new(central.root(), "third");
    std::fs::copy(&mismatched.key, &central.pki.key).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let log = central.wait_for_log("event=reload tls=kept");
    assert!(log.contains("does not belong to the certificate"), "{log}");
    let after = central.tunnel_process(&api_key_file, &new.ca);
    assert!(after.read(8).starts_with(b"SSH-2.0-"), "still the new certificate");
    assert!(!central.service().log().contains("event=tunnel-close"), "no tunnel was dropped");
}

/// `evosync serve` on a configuration with `extra`; it must refuse to start: its stderr.
fn refused_start(config: &Path, extra: &str) -> String {
    let base = std::fs::read_to_string(config).unwrap();
    let trial = config.with_file_name("trial.yaml");
    std::fs::write(&trial, format!("{base}{extra}")).unwrap();
    let output = Command::new(EVOSYNC).arg("--config").arg(&trial).arg("serve").stdin(Stdio::null()).output().unwrap();
    assert!(!output.status.success(), "serve started with {extra:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_pair_or_plain_http_beyond_loopback_stops_the_start() {
    let mut central = Central::start("tunnel-start", "", "tunnel: true\n");
    central.service.take();
    // The configuration without its TLS and tunnel lines.
    let text = std::fs::read_to_string(&central.config).unwrap();
    let base: String = text
        .lines()
        .filter(|l| !l.starts_with("tls_") && !l.starts_with("tunnel_ssh"))
        .map(|l| format!("{l}\n"))
        .collect();
    let plain = central.root().join("plain.yaml");
    std::fs::write(&plain, &base).unwrap();
    let pki = &central.pki;
    let other = Pki::new(central.root(), "other");
    let folder = central.root().join("tls");
    let not_pem = central.root().join("not.pem");
    std::fs::write(&not_pem, "just text\n").unwrap();
    let cases = [
        (
            format!("tls_cert: {}/missing.pem\ntls_key: {}\n", folder.display(), pki.key.display()),
            "cannot read tls_cert",
        ),
        (format!("tls_cert: {}\ntls_key: {}\n", folder.display(), pki.key.display()), "cannot read tls_cert"),
        (format!("tls_cert: {}\ntls_key: {}\n", not_pem.display(), pki.key.display()), "holds no PEM certificate"),
        (format!("tls_cert: {}\ntls_key: {}\n", pki.cert.display(), not_pem.display()), "holds no PEM private key"),
        (
            format!("tls_cert: {}\ntls_key: {}\n", pki.cert.display(), other.key.display()),
            "does not belong to the certificate",
        ),
        (format!("tls_cert: {}\n", pki.cert.display()), "tls_cert and tls_key go together"),
    ];
    for (extra, expected) in &cases {
        let said = refused_start(&plain, extra);
        assert!(said.contains(expected), "{extra}: {said}");
    }
    // Plain HTTP on an address other than loopback (refused before anything is bound).
    let beyond = base.replace(&format!("127.0.0.1:{}", central.port), "192.0.2.1:4004");
    std::fs::write(&plain, &beyond).unwrap();
    assert!(refused_start(&plain, "").contains("is not a loopback address"));

    // Without tunnel_ssh the endpoint is off: 404, as for any unknown path.
    let tls = format!(
        "tls_cert: {}\ntls_key: {}\nhttp:\n  header_timeout_seconds: 1\n",
        pki.cert.display(),
        pki.key.display()
    );
    std::fs::write(&plain, format!("{base}{tls}")).unwrap();
    let service = Service::start(&plain, central.port);
    let (status, body) =
        https(central.port, &pki.ca, "GET", "/api/sync/ssh", &[("X-Sync-API-Key", &central.api_key(&central.acme.1))]);
    assert_eq!(status, 404, "{body}");
    let (status, _) = https(central.port, &pki.ca, "GET", "/healthz", &[]);
    assert_eq!(status, 200);

    // A TLS handshake is bounded in time: a client that sends nothing is closed after the header timeout, and one
    // that speaks plain HTTP to the TLS port is refused at once.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", central.port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut nothing = Vec::new();
    assert_eq!(silent.read_to_end(&mut nothing).unwrap(), 0, "closed without a byte");
    let mut plain_http = std::net::TcpStream::connect(("127.0.0.1", central.port)).unwrap();
    plain_http.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    plain_http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = plain_http.read_to_end(&mut nothing);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = service.log();
        let timed_out = log.contains("reason=header-timeout message=\"no complete TLS handshake within 1 s\"");
        if timed_out && log.contains("reason=tls-handshake") {
            break;
        }
        assert!(Instant::now() < deadline, "both refusals are logged: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
