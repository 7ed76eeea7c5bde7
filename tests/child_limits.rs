//! The sqlite3_rsync child's kernel-enforced limits, driven through the gate as sshd would start it: its memory
//! (a hand-written origin whose few ORIGIN_DETAIL messages make the stock replica build huge tables), its sockets (a
//! probe in place of sqlite3_rsync that tries every way out), and the refusal of an sqlite3_rsync too old to run.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_limits";
const MIB: u64 = 1 << 20;

/// A central host in a temp folder: configuration, acme's policy with `limits`, its tree, an audit log file and a
/// state store (so the ledger can be read back).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(limits: &str) -> Host {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["replicas/acme", "policies", "state"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("policies/acme.yaml"),
            format!("party: acme\npush: true\ncreate_runs: true\nlimits:\n{limits}"),
        )
        .unwrap();
        let host = Host { dir };
        host.set_sqlite3_rsync(&common::sqlite3_rsync_path());
        host
    }

    fn set_sqlite3_rsync(&self, program: &Path) {
        std::fs::write(
            self.config(),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: {1}\naudit_log: {0}/state/audit.log\nlock_wait_seconds: 1\n",
                self.root().display(),
                program.display()
            ),
        )
        .unwrap();
    }

    /// A state store with acme in it, made by `evosync init` and `evosync party add`, so pushes land in the ledger.
    fn with_store(self) -> Host {
        let output = Command::new(env!("CARGO_BIN_EXE_evosync"))
            .arg("--config")
            .arg(self.config())
            .args(["--json", "init"])
            .output()
            .unwrap();
        assert!(output.status.success(), "evosync init: {}", String::from_utf8_lossy(&output.stderr));
        let output = Command::new(env!("CARGO_BIN_EXE_evosync"))
            .arg("--config")
            .arg(self.config())
            .args(["--json", "party", "add", "acme"])
            .output()
            .unwrap();
        assert!(output.status.success(), "evosync party add: {}", String::from_utf8_lossy(&output.stderr));
        self
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn config(&self) -> PathBuf {
        self.root().join("evosync.yaml")
    }

    fn replica(&self) -> PathBuf {
        self.root().join("replicas/acme").join(RUN).join("genomes.sqlite")
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.root().join("state/audit.log")).unwrap_or_default()
    }

    /// The gate serving `sqlite3_rsync --replica genomes.sqlite /RUN/genomes.sqlite`, with the worker's side piped.
    fn push(&self) -> Child {
        Command::new(GATE)
            .arg("--config")
            .arg(self.config())
            .args(["--party", "acme"])
            .env("SSH_ORIGINAL_COMMAND", format!("sqlite3_rsync --replica genomes.sqlite /{RUN}/genomes.sqlite"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A push whose origin has said its first byte and then closed: enough for the gate to hand the channel over.
    fn push_begun(&self) -> Child {
        let mut child = self.push();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &[0x41]).unwrap();
        child
    }

    /// The `exit` column of the ledger's rows, oldest first.
    fn ledger_exits(&self) -> Vec<String> {
        let db = rusqlite::Connection::open(self.root().join("state/state.db")).unwrap();
        let mut statement = db.prepare("SELECT exit FROM sync_ledger ORDER BY rowid").unwrap();
        let rows = statement.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// VmHWM (the resident high-water mark) of `pid`, in bytes, while it lives.
fn resident_high_water(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One protocol message of the origin: ORIGIN_BEGIN (protocol 2, page size 2^12, page count).
fn origin_begin(pages: u32) -> Vec<u8> {
    let mut message = vec![0x41, 2, 12];
    message.extend_from_slice(&pages.to_be_bytes());
    message
}

/// ORIGIN_DETAIL asking for finer hashes of `npg` pages from `fpg`: 9 bytes that make the stock replica insert
/// npg/1000 rows (4.3 million for u32::MAX) into an in-memory table.
fn origin_detail(fpg: u32, npg: u32) -> Vec<u8> {
    let mut message = vec![0x47];
    message.extend_from_slice(&fpg.to_be_bytes());
    message.extend_from_slice(&npg.to_be_bytes());
    message
}

/// The texts of the REPLICA_ERROR messages in what the replica side sent, read message by message.
fn replica_errors(mut bytes: &[u8]) -> Vec<String> {
    let mut errors = Vec::new();
    while let Some(&kind) = bytes.first() {
        let rest = &bytes[1..];
        let fixed = match kind {
            0x61 => 1,        // REPLICA_BEGIN: a protocol number
            0x63 | 0x65 => 0, // REPLICA_END, REPLICA_READY
            0x64 => 20,       // REPLICA_HASH
            0x67 => 8,        // REPLICA_CONFIG
            0x62 | 0x66 if rest.len() >= 4 => {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                let end = (4 + len).min(rest.len());
                if kind == 0x62 {
                    errors.push(String::from_utf8_lossy(&rest[4..end]).into_owned());
                }
                bytes = &rest[end..];
                continue;
            }
            _ => {
                errors.push(format!("unparsable byte 0x{kind:02x}"));
                break;
            }
        };
        bytes = &rest[fixed.min(rest.len())..];
    }
    errors
}

/// What a hostile push did: the gate's exit status, every byte the worker received, the child's highest resident
/// memory as sampled, and how long it took.
struct HostilePush {
    status: i32,
    received: Vec<u8>,
    stderr: String,
    sampled_peak: u64,
    seconds: f64,
}

/// Speaks the origin's side by hand: ORIGIN_BEGIN, then `details` ORIGIN_DETAIL messages of 9 bytes each, then
/// stays connected and silent until the gate ends (the policy's max_sync_seconds bounds it).
fn hostile_push(host: &Host, details: u32) -> HostilePush {
    let started = Instant::now();
    let mut gate = host.push();
    let mut stdout = gate.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut received = Vec::new();
        let _ = stdout.read_to_end(&mut received);
        received
    });
    let mut stdin = gate.stdin.take().unwrap();
    let mut attack = origin_begin(1);
    for n in 0..details {
        attack.extend(origin_detail(2 + n, u32::MAX));
    }
    let _ = stdin.write_all(&attack).and_then(|()| stdin.flush());
    let mut sampled_peak = 0;
    let status = loop {
        if let Some(status) = gate.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        for child in children_of(gate.id()) {
            sampled_peak = sampled_peak.max(resident_high_water(child).unwrap_or(0));
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the gate did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let mut stderr = String::new();
    gate.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    HostilePush {
        status,
        received: reader.join().unwrap(),
        stderr,
        sampled_peak,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The `key=value` of the last audit line holding `needle`.
fn audit_field(audit: &str, needle: &str, key: &str) -> Option<String> {
    let line = audit.lines().rev().find(|l| l.contains(needle))?;
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[start..];
    let value = match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"').unwrap_or(quoted.len())],
        None => rest.split_whitespace().next().unwrap_or_default(),
    };
    Some(value.to_owned())
}

#[test]
fn a_replica_made_to_build_huge_tables_is_held_to_max_sync_memory() {
    let limit = 64 * MIB;
    let host = Host::new("  max_sync_memory: 64MiB\n  max_sync_seconds: 15\n").with_store();
    std::fs::create_dir_all(host.replica().parent().unwrap()).unwrap();
    common::make_db(&host.replica(), "genomes", 200, 1000);
    let before = common::db_digest(&host.replica());

    let push = hostile_push(&host, 8);

    let audit = host.audit();
    let peak_rss: u64 = audit_field(&audit, "event=outcome", "peak_rss").and_then(|v| v.parse().ok()).unwrap_or(0);
    eprintln!(
        "hostile push: gate exit {}, {:.1} s, child peak RSS {:.1} MiB (wait4), {:.1} MiB (sampled VmHWM); limit {} MiB",
        push.status,
        push.seconds,
        peak_rss as f64 / MIB as f64,
        push.sampled_peak as f64 / MIB as f64,
        limit / MIB
    );
    assert!(peak_rss > 0, "the outcome line records the child's peak RSS: {audit}");
    let ceiling = limit + limit / 10;
    assert!(peak_rss <= ceiling, "peak RSS {peak_rss} over max_sync_memory + 10 % ({ceiling})");
    assert!(push.sampled_peak <= ceiling, "sampled peak {} over {ceiling}", push.sampled_peak);
    assert_eq!(common::db_digest(&host.replica()), before, "the replica keeps its previous content");
    assert!(common::integrity_ok(&host.replica()));

    assert!(audit.contains("event=outcome verdict=done exit=memory_limit"), "{audit}");
    let sandbox = audit_field(&audit, "verdict=allow", "sandbox").unwrap_or_default();
    assert!(sandbox.contains("memory 64MiB"), "the decision names the memory limit and how: {sandbox}");
    assert_eq!(host.ledger_exits(), ["memory_limit"], "the ledger records the push as memory_limit");
    let errors = replica_errors(&push.received);
    eprintln!("REPLICA_ERROR messages the worker received: {errors:?}");
    assert!(
        errors.iter().any(|e| e.contains("evosync-gate:") && e.contains("max_sync_memory: 64MiB")),
        "the worker reads why: {errors:?}"
    );
    assert!(push.stderr.contains("max_sync_memory: 64MiB"), "{}", push.stderr);
    assert_eq!(push.status, 1);
}

/// Stands in for sqlite3_rsync and tries every way out of the sandbox by socket; each attempt prints a line. It also
/// prints the arguments it was given, which must name no folder of the host.
const SOCKET_PROBE: &str = r#"#!/usr/bin/python3
import os, socket, sys
if sys.argv[1:] == ["--version"]:
    print("2026-07-24 19:02:57 0000000000000000000000000000000000000000000000000000000000000000")
    sys.exit(0)
print("args:", " ".join(sys.argv[1:]), flush=True)
print("cwd holds:", " ".join(sorted(os.listdir("."))), flush=True)
def attempt(name, how):
    try:
        how()
        print("allowed:", name, flush=True)
    except OSError as error:
        print("denied:", name, error.errno, flush=True)
def tcp():
    socket.create_connection(("127.0.0.1", TCP_PORT), timeout=2).sendall(b"escaped")
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"escaped", ("127.0.0.1", UDP_PORT))
def unix_path():
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"<38>evosync-gate forged", "UNIX_PATH")
def unix_abstract():
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect("\0ABSTRACT_NAME")
    connection.sendall(b"escaped")
def pair():
    socket.socketpair()
attempt("tcp", tcp)
attempt("udp", udp)
attempt("unix-path", unix_path)
attempt("unix-abstract", unix_abstract)
attempt("socketpair", pair)
"#;

#[test]
fn the_sync_child_can_open_no_socket_of_any_kind() {
    use std::os::linux::net::SocketAddrExt;
    let host = Host::new("  max_sync_seconds: 30\n");
    let listeners = host.root().join("listeners");
    std::fs::create_dir(&listeners).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // Like /dev/log: a datagram socket at a path outside the run folder, which Landlock does not guard.
    let log_path = listeners.join("log");
    let log = std::os::unix::net::UnixDatagram::bind(&log_path).unwrap();
    std::fs::set_permissions(&log_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let abstract_name = format!("evosync-test-{}", std::process::id());
    let abstract_address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
    let abstract_listener = std::os::unix::net::UnixListener::bind_addr(&abstract_address).unwrap();
    for nonblocking in [tcp.set_nonblocking(true), udp.set_nonblocking(true), log.set_nonblocking(true)] {
        nonblocking.unwrap();
    }
    abstract_listener.set_nonblocking(true).unwrap();

    let probe = host.root().join("probe.py");
    let script = SOCKET_PROBE
        .replace("TCP_PORT", &tcp.local_addr().unwrap().port().to_string())
        .replace("UDP_PORT", &udp.local_addr().unwrap().port().to_string())
        .replace("UNIX_PATH", &log_path.display().to_string())
        .replace("ABSTRACT_NAME", &abstract_name);
    common::write_executable(&probe, &script);
    host.set_sqlite3_rsync(&probe);

    let output = host.push().wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    let audit = host.audit();
    eprintln!("{report}\n{audit}");
    if !audit.contains("seccomp (no sockets") {
        eprintln!("this kernel takes no seccomp filter; the socket part is not tested here");
        return;
    }
    assert!(report.contains("args: --replica genomes.sqlite genomes.sqlite"), "relative names only: {report}");
    for way in ["tcp", "udp", "unix-path", "unix-abstract", "socketpair"] {
        assert!(report.contains(&format!("denied: {way} 1")), "{way} must fail with EPERM: {report}");
    }
    assert!(tcp.accept().is_err(), "no TCP connection reached the listener");
    assert!(udp.recv_from(&mut [0; 64]).is_err(), "no UDP datagram arrived");
    assert!(log.recv_from(&mut [0; 64]).is_err(), "no line reached the /dev/log-like socket");
    assert!(abstract_listener.accept().is_err(), "no connection reached the abstract socket");
}

/// A stand-in for an sqlite3_rsync whose `--version` prints `source_id`; as a sync it prints its arguments.
fn fake_sqlite3_rsync(path: &Path, source_id: &str) {
    let script =
        format!("#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{source_id}'; exit 0; fi\necho \"ran: $*\" >&2\n");
    // Written aside and renamed into place: a new file, so a new inode, as an installer replaces a binary.
    common::write_executable(path, &script);
}

const OLD_SOURCE_ID: &str = "2026-04-09 11:41:47 0000000000000000000000000000000000000000000000000000000000000001";
const FIXED_SOURCE_ID: &str = "2026-07-24 19:02:57 bf7c7f30031888f4e796e429ab3978879485813aaca6f641c7b33e4e09459bcc";

#[test]
fn an_sqlite3_rsync_older_than_the_page_size_fix_is_refused_and_the_answer_is_cached() {
    let host = Host::new("  max_sync_seconds: 30\n");
    let program = host.root().join("bin/sqlite3_rsync");
    std::fs::create_dir_all(program.parent().unwrap()).unwrap();
    fake_sqlite3_rsync(&program, OLD_SOURCE_ID);
    host.set_sqlite3_rsync(&program);

    let output = host.push_begun().wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let errors = replica_errors(&output.stdout);
    assert!(errors.iter().any(|e| e.contains("sqlite3_rsync is too old") && e.contains("3.53.4")), "{errors:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!said.contains(&host.root().display().to_string()), "no host path to the worker: {said}");
    assert!(!said.contains("ran:"), "the old binary was never handed the channel: {said}");
    let audit = host.audit();
    assert!(audit.contains("code=sqlite3_rsync"), "{audit}");
    assert!(
        audit.contains("of 2026-04-09") && audit.contains("build-sqlite3-rsync.sh"),
        "the detail says what to do: {audit}"
    );
    assert!(!host.replica().parent().unwrap().exists(), "a refused push creates nothing, not even the run folder");

    // The answer is cached by the binary's identity: a forged cache entry for this very file is believed...
    let cache = host.root().join("state/sqlite3_rsync.version");
    let cached = std::fs::read_to_string(&cache).unwrap();
    let key = cached.lines().next().unwrap();
    assert!(cached.ends_with(&format!("{OLD_SOURCE_ID}\n")), "{cached}");
    std::fs::write(&cache, format!("{key}\n{FIXED_SOURCE_ID}\n")).unwrap();
    let output = host.push_begun().wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("ran: --replica"), "the cache was used");

    // ...and a new build (another inode and mtime) is looked at afresh.
    fake_sqlite3_rsync(&program, OLD_SOURCE_ID);
    let output = host.push_begun().wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    fake_sqlite3_rsync(&program, FIXED_SOURCE_ID);
    let output = host.push_begun().wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("ran: --replica genomes.sqlite genomes.sqlite"));
}
