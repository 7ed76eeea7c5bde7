//! The SSH tunnel over HTTPS against plain SSH, measured (figures only, no timed assertions): the stock sqlite3_rsync
//! pushes a 200 MB database through `ProxyCommand evosync tunnel` (TLS, WebSocket, the service, sshd, the gate) and
//! straight to the same sshd, in the same run, in alternating order:
//!  1. a first push (the whole database crosses), target ratio tunnel/direct <= 1.15;
//!  2. an unchanged push (only the page hashes cross), target ratio <= 1.10;
//!  3. the service's CPU (user + system, from /proc) per megabyte it carried through the tunnel, both ways.
//!
//! Needs root and scripts/setup-test-env.sh, like the tests. Run: `cargo bench --bench tunnel [-- ROUNDS [MB]]`
//! (default 3 rounds of 200 MB).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{evosync_json, Pki, Service, Sshd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const EVOSYNC: &str = env!("CARGO_BIN_EXE_evosync");

struct Bench {
    dir: tempfile::TempDir,
    sshd: Sshd,
    service: Service,
    port: u16,
    ssh_key: PathBuf,
    tunnel_ssh: PathBuf,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let megabytes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let bench = Bench::start();
    let origin = bench.dir.path().join("origin.sqlite");
    // Rows of 4000 pseudo-random bytes (incompressible, as a run's genomes are to ssh).
    common::make_db(&origin, "genomes", megabytes * 1_000_000 / 4_100, 4_000);
    let size = std::fs::metadata(&origin).unwrap().len();
    println!("origin: {:.1} MB, {rounds} rounds, tunnel and direct alternating", size as f64 / 1e6);
    println!(
        "{:>5} {:>10} {:>10} {:>6} {:>13} {:>13} {:>6} {:>14} {:>14}",
        "round",
        "first ssh",
        "first wss",
        "ratio",
        "unchanged ssh",
        "unchanged wss",
        "ratio",
        "service CPU",
        "CPU per MB"
    );
    let (mut first_ratios, mut unchanged_ratios, mut cpu_per_mb) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let direct_run = format!("01KFYA32R09C5KJYNH1SM2W1DR_direct{round}");
        let tunnel_run = format!("01KFYA32R09C5KJYNH1SM2W1DR_tunnel{round}");
        let tunnel_first = round % 2 == 0;
        let mut first = [Duration::ZERO; 2];
        let mut unchanged = [Duration::ZERO; 2];
        let (cpu_before, bytes_before) = (bench.service_cpu(), bench.tunnelled_bytes());
        for step in 0..2 {
            let tunnel = (step == 0) == tunnel_first;
            let (ssh, run) = if tunnel { (&bench.tunnel_ssh, &tunnel_run) } else { (&bench.direct_ssh(), &direct_run) };
            first[tunnel as usize] = bench.push(ssh, &origin, run);
        }
        for step in 0..2 {
            let tunnel = (step == 0) != tunnel_first;
            let (ssh, run) = if tunnel { (&bench.tunnel_ssh, &tunnel_run) } else { (&bench.direct_ssh(), &direct_run) };
            unchanged[tunnel as usize] = bench.push(ssh, &origin, run);
        }
        let cpu = bench.service_cpu() - cpu_before;
        let carried = (bench.tunnelled_bytes() - bytes_before) as f64 / 1e6;
        let (first_ratio, unchanged_ratio) = (ratio(first[1], first[0]), ratio(unchanged[1], unchanged[0]));
        let per_mb = cpu.as_secs_f64() * 1e3 / carried;
        println!(
            "{round:>5} {:>9.2}s {:>9.2}s {first_ratio:>6.3} {:>12.2}s {:>12.2}s {unchanged_ratio:>6.3} {:>10.2}s/{:.0}MB {:>9.2} ms/MB",
            first[0].as_secs_f64(),
            first[1].as_secs_f64(),
            unchanged[0].as_secs_f64(),
            unchanged[1].as_secs_f64(),
            cpu.as_secs_f64(),
            carried,
            per_mb
        );
        first_ratios.push(first_ratio);
        unchanged_ratios.push(unchanged_ratio);
        cpu_per_mb.push(per_mb);
        for run in [&direct_run, &tunnel_run] {
            let _ = std::fs::remove_dir_all(bench.dir.path().join("replicas/acme").join(run));
        }
    }
    let range = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.3}–{max:.3}")
    };
    let median = |v: &[f64]| {
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    println!(
        "first push, tunnel/direct:     {} (median {:.3}; target <= 1.15)",
        range(&first_ratios),
        median(&first_ratios)
    );
    println!(
        "unchanged push, tunnel/direct: {} (median {:.3}; target <= 1.10)",
        range(&unchanged_ratios),
        median(&unchanged_ratios)
    );
    println!("service CPU per tunnelled MB:  {} ms (median {:.3})", range(&cpu_per_mb), median(&cpu_per_mb));
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

impl Bench {
    fn start() -> Bench {
        let dir = common::test_dir("bench-tunnel");
        let root = dir.path().to_owned();
        let sshd = Sshd::start("");
        let keys_file = sshd.empty_authorized_keys("evosync");
        let port = common::free_loopback_port();
        let (config, _) = common::init_central(&root, port, &["--authorized-keys", keys_file.to_str().unwrap()]);
        let (replicas, policies) = (root.join("replicas"), root.join("policies"));
        let (ok, _, said) = evosync_json(&config, &["party", "add", "acme"]);
        assert!(ok, "{said}");
        std::fs::write(
            policies.join("acme.yaml"),
            "party: acme\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\nrequire_sandbox: false\n\
             tunnel: true\n",
        )
        .unwrap();
        let (ssh_key, _) = sshd.new_client_key("acme");
        let public = ssh_key.with_extension("pub");
        let (ok, _, said) =
            evosync_json(&config, &["ssh-key", "add", "acme", "--public-key", public.to_str().unwrap()]);
        assert!(ok, "{said}");
        let (ok, issued, said) = evosync_json(&config, &["api-key", "issue", "acme"]);
        assert!(ok, "{said}");
        let api_key_file = root.join("acme.api-key");
        std::fs::write(&api_key_file, issued["api_key"].as_str().unwrap()).unwrap();
        common::chown_to(&replicas, "evosync");
        let pki = Pki::new(&root, "tls");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "tls_cert: {}\ntls_key: {}\ntunnel_ssh: 127.0.0.1:{}\n",
            pki.cert.display(),
            pki.key.display(),
            sshd.port()
        ));
        std::fs::write(&config, text).unwrap();
        let service = Service::start(&config, port);
        let ssh_config = root.join("ssh_config-tunnel");
        std::fs::write(
            &ssh_config,
            format!(
                "Host *\n    ProxyCommand {EVOSYNC} tunnel --url wss://localhost:{port}/api/sync/ssh --api-key-file {} \
                 --ca-file {}\n    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n\
                 StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n",
                api_key_file.display(),
                pki.ca.display(),
                ssh_key.display()
            ),
        )
        .unwrap();
        let tunnel_ssh = root.join("ssh-tunnel");
        common::write_executable(
            &tunnel_ssh,
            &format!("#!/bin/sh\nexec /usr/bin/ssh -F {} \"$@\"\n", ssh_config.display()),
        );
        Bench { dir, sshd, service, port, ssh_key, tunnel_ssh }
    }

    fn direct_ssh(&self) -> PathBuf {
        self.sshd.ssh_wrapper(&self.ssh_key)
    }

    /// One push with the stock client; its wall time.
    fn push(&self, ssh: &Path, origin: &Path, run: &str) -> Duration {
        // The previous push's pages go to the disk first, so that neither way pays for the other's writeback.
        let _ = Command::new("sync").status();
        let start = Instant::now();
        let output = Command::new(common::sqlite3_rsync_path())
            .arg(origin)
            .arg(format!("evosync@127.0.0.1:/data/evorun-sync/{run}/genomes.sqlite"))
            .arg("--ssh")
            .arg(ssh)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let elapsed = start.elapsed();
        assert!(
            output.status.success(),
            "push: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        elapsed
    }

    /// The service's CPU time so far (user + system).
    fn service_cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.service.pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5), the 12th and 13th after the command name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / 100.0)
    }

    /// Bytes the tunnel carried both ways so far (`/metrics`).
    fn tunnelled_bytes(&self) -> u64 {
        let (status, body) = common::https(self.port, &self.dir.path().join("tls/ca.pem"), "GET", "/metrics", &[]);
        assert_eq!(status, 200);
        body.lines()
            .filter(|line| line.starts_with("evosync_tunnel_bytes_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}
