//! What an attack on a key id costs a valid caller (figures only, no timed assertions): a worker's requests with its
//! valid, already verified API key, alone and then while 200 connections hammer the same key id with wrong secrets
//! (issue 9, row 3). Printed: the valid caller's requests, p50 and p99 in each phase; the attackers' answers (401,
//! 429) and rate; the slow hashes the service ran; its CPU and its peak RSS growth.
//!
//! Run: `cargo bench --bench auth_attack [-- SECONDS]` (default 5 s per phase). `EVOSYNC_BENCH_BIN=/path/to/evosync`
//! measures another build of evosync instead (an older one, say); that binary also sets the host up.

#[path = "../tests/common/mod.rs"]
mod common;

use common::KeepAlive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_bench";
const ATTACKERS: u64 = 200;

fn main() {
    let seconds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let binary = std::env::var_os("EVOSYNC_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_evosync")));
    let dir = common::test_dir("bench-auth");
    let host = Host::start(&binary, dir.path());
    let valid = format!("X-Sync-API-Key: {}\r\n", host.key);
    let status_path = format!("/api/sync/status/{RUN}");
    let mut client = KeepAlive::connect(host.port).unwrap();
    assert_eq!(client.get(&status_path, &valid).unwrap(), 200, "the valid key is verified once");
    println!("binary: {}", binary.display());

    let alone = valid_caller(host.port, &status_path, &valid, Duration::from_secs(seconds));
    report("valid caller alone", &alone);

    let rss_before = host.status_kib("VmRSS");
    let _ = std::fs::write(format!("/proc/{}/clear_refs", host.child.id()), "5");
    let cpu_before = host.cpu_ticks();
    let stop = AtomicBool::new(false);
    let (unauthorized, limited, other) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    let attacked = std::thread::scope(|scope| {
        for attacker in 0..ATTACKERS {
            let (stop, host, status_path) = (&stop, &host, &status_path);
            let (unauthorized, limited, other) = (&unauthorized, &limited, &other);
            scope.spawn(move || {
                let (id, _) = host.key.trim_start_matches("evs_").split_once('_').unwrap();
                let mut n = attacker << 32;
                let mut connection: Option<KeepAlive> = None;
                while !stop.load(Ordering::Relaxed) {
                    if connection.is_none() {
                        connection = KeepAlive::connect(host.port).ok();
                    }
                    let Some(client) = connection.as_mut() else { continue };
                    n += 1;
                    match client.get(status_path, &format!("X-Sync-API-Key: evs_{id}_{n:064x}\r\n")) {
                        Ok(401) => unauthorized.fetch_add(1, Ordering::Relaxed),
                        Ok(429) => limited.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => other.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            connection = None;
                            0
                        }
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_millis(200)); // the attack is under way
        let times = valid_caller(host.port, &status_path, &valid, Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
        times
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (host.cpu_ticks() - cpu_before) as f64 / clock_ticks() as f64;
    report(&format!("valid caller under attack ({ATTACKERS} connections, wrong secrets)"), &attacked);
    let (unauthorized, limited, other) = (unauthorized.into_inner(), limited.into_inner(), other.into_inner());
    println!(
        "attackers: {unauthorized} x 401, {limited} x 429, {other} other; {:.0} requests/s",
        (unauthorized + limited + other) as f64 / elapsed
    );
    println!(
        "service: CPU {:.0}% of one core; peak RSS growth {:.1} MiB; threads {}; slow hashes {}",
        cpu / elapsed * 100.0,
        (host.status_kib("VmHWM") as f64 - rss_before as f64) / 1024.0,
        host.status_kib("Threads"),
        host.slow_hashes().map_or("not reported".to_owned(), |n| n.to_string()),
    );
}

/// Sequential requests with the valid key on one kept-alive connection for `duration`; their times, sorted.
fn valid_caller(port: u16, path: &str, header: &str, duration: Duration) -> Vec<Duration> {
    let mut client = KeepAlive::connect(port).unwrap();
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        let at = Instant::now();
        let status = client.get(path, header).unwrap();
        times.push(at.elapsed());
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(10));
    }
    times.sort();
    times
}

fn report(what: &str, times: &[Duration]) {
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0;
    println!("{what}: {} requests, p50 {:.2} ms, p99 {:.2} ms", times.len(), at(0.5), at(0.99));
}

/// The kernel's USER_HZ, the unit of /proc/PID/stat's times.
fn clock_ticks() -> u64 {
    let output = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim().parse().unwrap_or(100)
}

/// A host set up and served by `binary`.
struct Host {
    child: Child,
    port: u16,
    key: String,
}

impl Host {
    fn start(binary: &Path, root: &Path) -> Host {
        let config = root.join("evosync.yaml");
        let port = common::free_loopback_port();
        let run = |args: &[&str]| -> serde_json::Value {
            let output = Command::new(binary).arg("--config").arg(&config).arg("--json").args(args).output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice(&output.stdout).unwrap()
        };
        let folder = |name: &str| root.join(name).display().to_string();
        let listen = format!("127.0.0.1:{port}");
        run(&[
            "init",
            "--replica-root",
            &folder("replicas"),
            "--policies-dir",
            &folder("policies"),
            "--state-dir",
            &folder("state"),
            "--listen",
            &listen,
        ]);
        run(&["party", "add", "bench"]);
        std::fs::write(
            root.join("policies/bench.yaml"),
            "party: bench\npush: true\ncreate_runs: true\nrequire_sandbox: false\nuploads:\n  requests_per_second: 1000000\n",
        )
        .unwrap();
        let key = run(&["api-key", "issue", "bench"])["api_key"].as_str().unwrap().to_owned();
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "evosync serve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (status, _, _) =
            common::http(port, "POST", &format!("/api/sync/register/{RUN}"), &[("X-Sync-API-Key", &key)], b"{}");
        assert_eq!(status, 201);
        Host { child, port, key }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// utime + stime of the service, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn slow_hashes(&self) -> Option<u64> {
        let (_, _, metrics) = common::http(self.port, "GET", "/metrics", &[], b"");
        String::from_utf8_lossy(&metrics)
            .lines()
            .find_map(|l| l.strip_prefix("evosync_slow_hashes_total "))
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
