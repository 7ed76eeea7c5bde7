//! A whole central with a published catalog (`Central`), and a reader of it (`Reader`): `tests/reader/reader.js`,
//! better-sqlite3 opening databases the way kromosynth-evoruns does, run as `evosync-reader`, an account only in the
//! catalog's group. Used by `tests/catalog_readers.rs` and `benches/catalog.rs`.

use super::{evosync_json, http, Service, Sshd};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");
pub const READER_ACCOUNT: &str = "evosync-reader";

/// A whole central with a catalog: `evosync init --catalog-root`, the parties acme and beta (each with an SSH key
/// through the gate and a policy that may push and create runs), sshd, and `evosync serve`.
pub struct Central {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    sshd: Sshd,
    pub service: Service,
    keys: Vec<(String, PathBuf)>,
    api_key: String,
    admin_token: String,
}

impl Central {
    /// Starts it in a folder of its own; `extra_config` is appended to `evosync.yaml`.
    pub fn start(name: &str, extra_config: &str) -> Central {
        super::require_account(READER_ACCOUNT);
        let dir = super::test_dir(name);
        let root = dir.path().to_owned();
        let port = super::free_loopback_port();
        let sshd = Sshd::start("");
        let catalog = root.join("catalog").display().to_string();
        let (config, init) = super::init_central(&root, port, &["--catalog-root", &catalog]);
        let admin_token = init["admin_token"].as_str().unwrap().to_owned();
        if !extra_config.is_empty() {
            let text = std::fs::read_to_string(&config).unwrap();
            std::fs::write(&config, format!("{text}{extra_config}")).unwrap();
        }
        let mut keys = Vec::new();
        let mut lines = String::new();
        for party in ["acme", "beta"] {
            let (ok, _, said) = evosync_json(&config, &["party", "add", party]);
            assert!(ok, "party add {party}: {said}");
            std::fs::write(
                root.join(format!("policies/{party}.yaml")),
                format!("party: {party}\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n"),
            )
            .unwrap();
            let (key, public) = sshd.new_client_key(party);
            lines.push_str(&format!(
                "command=\"{GATE} --config {} --party {party}\",restrict {public}\n",
                config.display()
            ));
            keys.push((party.to_owned(), key));
        }
        sshd.set_authorized_keys("evosync", &lines);
        let (ok, issued, said) = evosync_json(&config, &["api-key", "issue", "acme"]);
        assert!(ok, "{said}");
        let api_key = issued["api_key"].as_str().unwrap().to_owned();
        // As in production: the verified copies and the catalog are then made by an account outside the readers'
        // group, which is what decides their groups and modes.
        let service = Service::start_as_service_account(&config, port);
        Central { dir, config, sshd, service, keys, api_key, admin_token }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A push by the stock client, returned once the service has also brought the verified copy up to date and
    /// published the run, which it does after the client has gone (`wait_for_copy`).
    pub fn push(&self, party: &str, origin: &Path, run: &str, database: &str) -> Output {
        let output = self.push_only(party, origin, run, database);
        self.wait_for_copy(party, run, database);
        output
    }

    /// The push alone, returned when the client exits.
    pub fn push_only(&self, party: &str, origin: &Path, run: &str, database: &str) -> Output {
        let key = &self.keys.iter().find(|(p, _)| p == party).unwrap().1;
        self.sshd.sqlite3_rsync(key, origin, "evosync", &format!("/data/evorun-sync/{run}/{database}"), &[])
    }

    /// Waits until the catalog has done what a push of `run/database` left it (`catalog::pipeline`): no job of it
    /// waits in the store, and nobody holds the replica's lock (the pipeline holds it while it copies, checks and
    /// publishes).
    pub fn wait_for_copy(&self, party: &str, run: &str, database: &str) {
        let done = wait_for_catalog(&self.config, party, run, database, Duration::from_secs(120));
        assert!(done, "the catalog's work on {run}/{database} did not end within 120 s\n{}", self.diagnostics());
    }

    pub fn push_ok(&self, party: &str, origin: &Path, run: &str, database: &str) {
        let output = self.push(party, origin, run, database);
        assert!(output.status.success(), "push of {run}/{database}: {}", String::from_utf8_lossy(&output.stderr));
    }

    /// What the service logged and the verdicts it recorded, for a failing assertion's message.
    pub fn diagnostics(&self) -> String {
        let store = rusqlite::Connection::open(self.root().join("state/state.db")).unwrap();
        let verdicts: Vec<String> = store
            .prepare("SELECT run, database, ok, reason FROM verifications")
            .unwrap()
            .query_map([], |r| {
                Ok(format!(
                    "{}/{} ok={} {:?}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<String>>(3)?
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        format!("verdicts: {verdicts:?}\nservice log:\n{}", self.service.log())
    }

    pub fn published(&self, run: &str) -> bool {
        self.root().join("catalog").join(run).is_dir()
    }

    /// The last verdict the service recorded on a replica: (ok, reason).
    pub fn verdict(&self, run: &str, database: &str) -> Option<(bool, Option<String>)> {
        let store = rusqlite::Connection::open(self.root().join("state/state.db")).unwrap();
        store
            .query_row("SELECT ok, reason FROM verifications WHERE run = ?1 AND database = ?2", [run, database], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()
    }

    pub fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let bearer = format!("Bearer {}", self.admin_token);
        let (status, _, body) = http(self.service.port, method, path, &[("Authorization", &bearer)], b"");
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }

    pub fn status(&self, run: &str) -> serde_json::Value {
        let (_, _, body) = http(
            self.service.port,
            "GET",
            &format!("/api/sync/status/{run}"),
            &[("X-Sync-API-Key", &self.api_key)],
            b"",
        );
        serde_json::from_slice(&body).unwrap()
    }
}

/// Waits until the catalog of the central at `config` has no job for `run/database` and nobody holds its replica's
/// lock; `false` when that did not happen `within`.
pub fn wait_for_catalog(config: &Path, party: &str, run: &str, database: &str, within: Duration) -> bool {
    let config = evosync::config::Config::load(config).unwrap();
    let deadline = Instant::now() + within;
    loop {
        let store = rusqlite::Connection::open(config.store_path()).unwrap();
        store.busy_timeout(Duration::from_secs(10)).unwrap();
        let pending: i64 = store
            .query_row(
                "SELECT count(*) FROM catalog_jobs WHERE party = ?1 AND run = ?2 AND database = ?3",
                [party, run, database],
                |r| r.get(0),
            )
            .unwrap();
        if pending == 0 {
            let free = evosync::fs::locks::try_replica(&config.locks_dir(), party, run, database).unwrap();
            if free.is_some() {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The reader process (`tests/reader/reader.js`), as `evosync-reader`, rooted at `root` (the catalog, or any tree
/// to look runs up in).
pub struct Reader {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Reader {
    pub fn start(root: &Path) -> Reader {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reader/reader.js");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reader/node_modules/better-sqlite3").exists(),
            "tests/reader/node_modules is missing: run scripts/setup-test-env.sh (it runs npm ci there)"
        );
        let mut child = Command::new("runuser")
            .args(["-u", READER_ACCOUNT, "--", "node"])
            .arg(&script)
            .arg(root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Reader { child, input, output }
    }

    /// One request; its answer and how long it took.
    pub fn ask(&mut self, request: serde_json::Value) -> (serde_json::Value, Duration) {
        let started = Instant::now();
        writeln!(self.input, "{request}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        (serde_json::from_str(&line).unwrap_or_else(|_| panic!("the reader said {line:?}")), started.elapsed())
    }

    pub fn count(&mut self, run: &str, database: &str, table: &str) -> serde_json::Value {
        self.ask(serde_json::json!({ "op": "count", "run": run, "db": database, "table": table })).0
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
