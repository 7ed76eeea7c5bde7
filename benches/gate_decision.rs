//! Gate decision time: how long the gate takes to say yes or no, in-process and as a whole process (which is what
//! every SSH connection pays), against the cost of starting `/bin/true` measured in the same run.
//!
//! Run: `cargo bench --bench gate_decision`. Prints figures; asserts nothing about time.

mod measure;

use evosync::config::Config;
use evosync::gate;
use measure::ratio;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = setup(dir.path());
    let config_path = dir.path().join("evosync.yaml");
    let allowed = format!("sqlite3_rsync --replica genomes.sqlite /data/evorun-sync/{RUN}/genomes.sqlite 2>/dev/null");
    let refused = "sqlite3_rsync --replica genomes.sqlite /data/evorun-sync/x;id/genomes.sqlite 2>/dev/null";

    let plan_time = median_of(20_000, || {
        let plan = gate::plan(&config, "bench", Some(&allowed)).expect("allowed");
        std::hint::black_box(plan);
    });
    let parse_time = median_of(100_000, || {
        std::hint::black_box(evosync::gate::command::parse(&allowed).expect("parses"));
    });

    // What an allowed push adds before the hand-over: the sqlite3_rsync version check (from its cache, as every push
    // but the first after an install; and uncached, running the binary) and the seccomp filter's compilation.
    let program = config.sqlite3_rsync.clone();
    gate::rsync_version::check(&program, &config.state_dir).expect("a new enough sqlite3_rsync");
    let version_cached = median_of(20_000, || {
        std::hint::black_box(gate::rsync_version::check(&program, &config.state_dir).is_ok());
    });
    let cache = config.state_dir.join(gate::rsync_version::CACHE_FILE);
    let version_uncached = median_of(200, || {
        let _ = std::fs::remove_file(&cache);
        std::hint::black_box(gate::rsync_version::check(&program, &config.state_dir).is_ok());
    });
    let seccomp_filter = median_of(20_000, || {
        std::hint::black_box(evosync::fs::sandbox::socket_filter().expect("filter"));
    });

    let gate_bin = Path::new(env!("CARGO_BIN_EXE_evosync-gate"));
    let true_bin = Path::new("/bin/true");
    let runs = 300;
    let baseline = median_of(runs, || run(Command::new(true_bin)));
    let explain = median_of(runs, || {
        let mut command = Command::new(gate_bin);
        command.arg("--config").arg(&config_path).args(["explain", "--party", "bench", "--"]).arg(&allowed);
        run(command)
    });
    let refusal = median_of(runs, || {
        let mut command = Command::new(gate_bin);
        command.arg("--config").arg(&config_path).args(["--party", "bench"]).env("SSH_ORIGINAL_COMMAND", refused);
        run(command)
    });

    // With a state store: --key looked up, the refusal written to the hash-chained audit trail too.
    let store = evosync::store::Store::open(&config.store_path()).expect("store");
    store.add_party("bench").expect("party");
    store
        .add_ssh_key(&evosync::store::SshKey {
            id: "k1".into(),
            party: "bench".into(),
            algorithm: "ssh-ed25519".into(),
            blob: "AAAA".into(),
            fingerprint: "SHA256:x".into(),
            comment: String::new(),
            from: vec![],
            expires_at: None,
            created_at: evosync::time::now(),
            revoked_at: None,
            last_used_at: None,
        })
        .expect("key");
    drop(store);
    let open_store = median_of(500, || {
        std::hint::black_box(evosync::store::Store::open_existing(&config.store_path()).expect("store"));
    });
    let store = evosync::store::Store::open_existing(&config.store_path()).expect("store");
    let lookup = median_of(2000, || {
        std::hint::black_box(store.ssh_key_with_party("k1").expect("lookup"));
    });
    let append = median_of(500, || {
        let entry = evosync::store::AuditEntry {
            actor: "bench",
            action: evosync::store::AuditAction::Gate,
            outcome: "refuse",
            ..Default::default()
        };
        std::hint::black_box(store.append_audit(&entry).expect("audit"));
    });
    drop(store);
    let keyed = median_of(runs, || {
        let mut command = Command::new(gate_bin);
        command.arg("--config").arg(&config_path).args(["--key", "k1"]).env("SSH_ORIGINAL_COMMAND", refused);
        run(command)
    });

    println!("gate decision time (medians; {runs} process runs, this machine, same run):");
    println!("  parse SSH_ORIGINAL_COMMAND (in-process)          {:>9.2} us", us(parse_time));
    println!("  parse + load policy + decide (in-process)         {:>9.2} us", us(plan_time));
    println!("  open the state store (in-process)                 {:>9.2} us", us(open_store));
    println!("  look a key up (in-process)                        {:>9.2} us", us(lookup));
    println!("  append one hash-chained audit record (in-process) {:>9.2} us", us(append));
    println!("  sqlite3_rsync version check, cached (in-process)  {:>9.2} us", us(version_cached));
    println!("  sqlite3_rsync version check, uncached (runs it)   {:>9.2} us", us(version_uncached));
    println!("  build the seccomp filter (in-process)             {:>9.2} us", us(seccomp_filter));
    println!("  baseline: spawn /bin/true                         {:>9.2} us", us(baseline));
    println!(
        "  evosync-gate explain (allowed push), whole process {:>9.2} us  ({:.2}x baseline, +{:.2} us)",
        us(explain),
        ratio(explain, baseline),
        us(explain.saturating_sub(baseline))
    );
    println!(
        "  evosync-gate refusal (with audit), whole process   {:>9.2} us  ({:.2}x baseline, +{:.2} us)",
        us(refusal),
        ratio(refusal, baseline),
        us(refusal.saturating_sub(baseline))
    );
    println!(
        "  evosync-gate --key refusal (store lookup + audit)  {:>9.2} us  ({:.2}x baseline, +{:.2} us)",
        us(keyed),
        ratio(keyed, baseline),
        us(keyed.saturating_sub(baseline))
    );
}

fn setup(dir: &Path) -> Config {
    for sub in ["replicas/bench", "policies", "state"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    std::fs::write(
        dir.join("policies/bench.yaml"),
        "party: bench\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n",
    )
    .expect("policy");
    let text = format!(
        "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
         sqlite3_rsync: /usr/local/bin/sqlite3_rsync\naudit_log: {0}/audit.log\n",
        dir.display()
    );
    std::fs::write(dir.join("evosync.yaml"), &text).expect("config");
    Config::parse(&text).expect("config parses")
}

fn run(mut command: Command) {
    let status = command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().expect("spawn");
    std::hint::black_box(status);
}

/// As before this module existed: up to 20 untimed runs first.
fn median_of(n: usize, f: impl FnMut()) -> Duration {
    measure::median(n.min(20), n, f)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
