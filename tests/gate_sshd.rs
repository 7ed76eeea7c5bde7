//! The gate through a real OpenSSH sshd on loopback, pushed to by the real stock sqlite3_rsync.

mod common;

use common::Sshd;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";
const PREFIX: &str = "/data/evorun-sync";
const GATE: &str = env!("CARGO_BIN_EXE_evosync-gate");

/// A loopback central: config, policies, party trees owned by the `evosync` account, sshd with the gate as the
/// `command=` of the party's key (shared-account mode).
struct Central {
    dir: tempfile::TempDir,
    sshd: Sshd,
    key: PathBuf,
}

impl Central {
    fn start(name: &str, acme_policy: &str) -> Central {
        let dir = common::test_dir(name);
        let root = dir.path();
        for sub in ["replicas/acme", "replicas/beta", "policies", "state", "worker", "outside"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("policies/acme.yaml"), format!("party: acme\n{acme_policy}")).unwrap();
        std::fs::write(
            root.join("policies/beta.yaml"),
            "party: beta\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n",
        )
        .unwrap();
        std::fs::write(
            root.join("evosync.yaml"),
            format!(
                "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
                 sqlite3_rsync: {1}\naudit_log: {0}/state/audit.log\nlock_wait_seconds: 3\n",
                root.display(),
                common::sqlite3_rsync_path().display()
            ),
        )
        .unwrap();
        // beta's run exists, to be attacked.
        std::fs::create_dir_all(root.join(format!("replicas/beta/{RUN}"))).unwrap();
        common::make_db(&root.join(format!("replicas/beta/{RUN}/genomes.sqlite")), "genomes", 50, 512);
        common::chown_to(&root.join("replicas"), "evosync");
        common::chown_to(&root.join("state"), "evosync");
        let sshd = Sshd::start("");
        let (key, public) = sshd.new_client_key("acme");
        let config = root.join("evosync.yaml");
        sshd.set_authorized_keys(
            "evosync",
            &format!("command=\"{GATE} --config {} --party acme\",restrict {public}\n", config.display()),
        );
        Central { dir, sshd, key }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn replica(&self, run: &str, db: &str) -> PathBuf {
        self.root().join("replicas/acme").join(run).join(db)
    }

    fn worker_db(&self, name: &str) -> PathBuf {
        self.root().join("worker").join(name)
    }

    fn push(&self, local: &Path, remote: &str, extra: &[&str]) -> Output {
        self.sshd.sqlite3_rsync(&self.key, local, "evosync", remote, extra)
    }

    fn pull(&self, remote: &str, local: &Path) -> Output {
        std::process::Command::new(common::sqlite3_rsync_path())
            .arg(format!("evosync@127.0.0.1:{remote}"))
            .arg(local)
            .arg("--ssh")
            .arg(self.sshd.ssh_wrapper(&self.key))
            .output()
            .unwrap()
    }

    fn ssh(&self, command: &str) -> Output {
        self.sshd.ssh(&self.key, "evosync", command)
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.root().join("state/audit.log")).unwrap_or_default()
    }
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn assert_ok(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed: {}", text(output));
}

fn remote(run: &str, db: &str) -> String {
    format!("{PREFIX}/{run}/{db}")
}

#[test]
fn first_push_of_a_new_run_then_incremental_pushes() {
    let central = Central::start("first-push", "push: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n");
    let genomes = central.worker_db("genomes.sqlite");
    let features = central.worker_db("features.sqlite");
    common::make_db(&genomes, "genomes", 2000, 1500);
    common::make_db(&features, "features", 500, 8000);

    // The worker sync manager's sequence: mkdir -p, then each database.
    assert_ok(&central.ssh(&format!("mkdir -p \"{PREFIX}/{RUN}\"")), "mkdir -p");
    assert_ok(&central.push(&genomes, &remote(RUN, "genomes.sqlite"), &[]), "genomes push");
    assert_ok(&central.push(&features, &remote(RUN, "features.sqlite"), &[]), "features push");
    for (origin, db) in [(&genomes, "genomes.sqlite"), (&features, "features.sqlite")] {
        let replica = central.replica(RUN, db);
        assert!(common::integrity_ok(&replica), "{db} integrity");
        assert_eq!(common::db_digest(&replica), common::db_digest(origin), "{db} equals origin");
    }

    // Inserts and updates, then an incremental push.
    common::insert_rows(&genomes, "genomes", 300, 1500);
    common::update_rows(&genomes, "genomes", 100);
    assert_ok(&central.push(&genomes, &remote(RUN, "genomes.sqlite"), &[]), "incremental push");
    let replica = central.replica(RUN, "genomes.sqlite");
    assert!(common::integrity_ok(&replica));
    assert_eq!(common::db_digest(&replica), common::db_digest(&genomes));

    // Every spelling of the path names the same replica.
    common::insert_rows(&genomes, "genomes", 10, 100);
    assert_ok(&central.push(&genomes, &format!("/{RUN}/genomes.sqlite"), &[]), "push to /RUN/DB");
    assert_ok(&central.push(&genomes, &format!("{RUN}/genomes.sqlite"), &[]), "push to RUN/DB");
    assert_eq!(common::db_digest(&replica), common::db_digest(&genomes));

    let audit = central.audit();
    assert!(audit.contains("verdict=done exit=0"), "{audit}");
    assert!(audit.contains("sandbox="), "{audit}");
    assert!(audit.contains("action=mkdir") && audit.contains("created=true"), "{audit}");
}

#[test]
fn the_exe_flag_wal_only_and_the_retry_form_are_served() {
    let central = Central::start("forms", "push: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n");
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 300, 1000);
    let target = remote(RUN, "genomes.sqlite");
    // --exe names another program: the gate runs its configured binary all the same.
    assert_ok(&central.push(&genomes, &target, &["--exe", "/nonexistent/bin/sqlite3_rsync"]), "--exe push");
    common::insert_rows(&genomes, "genomes", 50, 1000);
    assert_ok(&central.push(&genomes, &target, &["--wal-only"]), "--wal-only push");
    assert_eq!(common::db_digest(&central.replica(RUN, "genomes.sqlite")), common::db_digest(&genomes));

    // The retry form, byte for byte as the client sends it after a failed first attempt: an ssh wrapper that
    // rewrites the first attempt into the second lets the real client speak the protocol over it.
    common::insert_rows(&genomes, "genomes", 50, 1000);
    let retry_ssh = central.root().join("retry-ssh");
    let wrapper = central.sshd.ssh_wrapper(&central.key);
    common::write_executable(
        &retry_ssh,
        &format!(
            "#!/bin/sh\n# args: -e none HOST sqlite3_rsync ... 2>/dev/null\nopts=\"$1 $2\"; host=\"$3\"; shift 3\n\
             cmd=\"$*\"; cmd=\"${{cmd% 2>/dev/null}}\"\n\
             exec {} $opts \"$host\" \"PATH=\\$HOME/bin:/usr/local/bin:/opt/homebrew/bin:/opt/local/bin:\\$PATH $cmd\"\n",
            wrapper.display()
        ),
    );
    let output = std::process::Command::new(common::sqlite3_rsync_path())
        .arg(&genomes)
        .arg(format!("evosync@127.0.0.1:{target}"))
        .arg("--ssh")
        .arg(&retry_ssh)
        .output()
        .unwrap();
    assert_ok(&output, "retry-form push");
    assert_eq!(common::db_digest(&central.replica(RUN, "genomes.sqlite")), common::db_digest(&genomes));
    assert!(central.audit().contains("command=\"PATH=$HOME/bin:"), "{}", central.audit());
}

#[test]
fn a_wal_origin_written_during_the_push_leaves_a_consistent_replica() {
    let central = Central::start("wal-writer", "push: true\ncreate_runs: true\n");
    // The client retries a failed attempt at once, while the first attempt's gate may still be ending (on a loaded
    // machine, for seconds): the retry waits for it as long as the default lock_wait_seconds lets it, not 3 s.
    let config = central.root().join("evosync.yaml");
    let text_of_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text_of_config.replace("lock_wait_seconds: 3\n", "lock_wait_seconds: 30\n")).unwrap();
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 3000, 2000);
    let writer_db = genomes.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut batches = 0;
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) && batches < 200 {
            common::insert_rows(&writer_db, "genomes", 20, 2000);
            batches += 1;
        }
        batches
    });
    let target = format!("/{RUN}/genomes.sqlite");
    // The stock client may meet the writer's lock on the origin (a client-side "database is locked"); whatever
    // happens, the replica is never corrupt, and pushes go through.
    let mut pushed = 0;
    for _ in 0..3 {
        let output = central.push(&genomes, &target, &[]);
        if output.status.success() {
            pushed += 1;
        } else {
            assert!(!text(&output).contains("evosync-gate"), "the gate did not refuse: {}", text(&output));
            eprintln!("a push during writes failed on the client side: {}", text(&output));
        }
        if central.replica(RUN, "genomes.sqlite").exists() {
            assert!(common::integrity_ok(&central.replica(RUN, "genomes.sqlite")));
        }
    }
    assert!(pushed >= 1, "pushes go through while the origin is written");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_ok(&central.push(&genomes, &target, &[]), "final push");
    assert_eq!(common::db_digest(&central.replica(RUN, "genomes.sqlite")), common::db_digest(&genomes));
}

#[test]
fn create_runs_false_serves_existing_runs_only() {
    let central = Central::start("no-create", "push: true\ncreate_runs: false\npath_prefixes: [/data/evorun-sync]\n");
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 100, 500);
    let output = central.ssh(&format!("mkdir -p \"{PREFIX}/{RUN}\""));
    assert!(!output.status.success());
    assert!(text(&output).contains("does not allow creating runs"), "{}", text(&output));
    let output = central.push(&genomes, &remote(RUN, "genomes.sqlite"), &[]);
    assert!(!output.status.success());
    assert!(text(&output).contains("ERROR: evosync-gate: run folder"), "{}", text(&output));
    assert!(!central.root().join("replicas/acme").join(RUN).exists());

    // Once the administrator made the folder, pushes go through.
    std::fs::create_dir(central.root().join("replicas/acme").join(RUN)).unwrap();
    common::chown_to(&central.root().join("replicas/acme"), "evosync");
    assert_ok(&central.push(&genomes, &remote(RUN, "genomes.sqlite"), &[]), "push to existing run");
}

#[test]
fn pulls_are_refused_unless_the_policy_allows_them_and_then_only_of_own_replicas() {
    let central = Central::start("pull", "push: true\ncreate_runs: true\n");
    let local = central.worker_db("pulled.sqlite");
    let output = central.pull(&format!("/{RUN}/genomes.sqlite"), &local);
    assert!(!output.status.success());
    assert!(text(&output).contains("ERROR: evosync-gate: party 'acme' may not pull"), "{}", text(&output));

    // With pull allowed: its own replica comes back; a replica it does not have answers as absent.
    std::fs::write(
        central.root().join("policies/acme.yaml"),
        "party: acme\npush: true\npull: true\ncreate_runs: true\n",
    )
    .unwrap();
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 200, 700);
    assert_ok(&central.push(&genomes, &format!("/{RUN}/genomes.sqlite"), &[]), "push");
    assert_ok(&central.pull(&format!("/{RUN}/genomes.sqlite"), &local), "pull own replica");
    assert_eq!(common::db_digest(&local), common::db_digest(&genomes));
    let output = central.pull(&format!("/{RUN}/features.sqlite"), &local);
    assert!(!output.status.success());
    assert!(text(&output).contains("no replica"), "{}", text(&output));
}

#[test]
fn a_database_over_max_db_bytes_is_rolled_back_and_the_replica_is_unchanged() {
    let central = Central::start("too-big", "push: true\ncreate_runs: true\nlimits:\n  max_db_bytes: 1MiB\n");
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 100, 2000);
    let target = format!("/{RUN}/genomes.sqlite");
    assert_ok(&central.push(&genomes, &target, &[]), "small push");
    let replica = central.replica(RUN, "genomes.sqlite");
    let before = common::db_digest(&replica);

    common::insert_rows(&genomes, "genomes", 2000, 2000); // ~4 MB, over the 1 MiB limit
    let output = central.push(&genomes, &target, &[]);
    assert!(!output.status.success(), "an oversized push must fail: {}", text(&output));
    assert!(common::integrity_ok(&replica));
    assert_eq!(common::db_digest(&replica), before, "the replica is unchanged");
    assert!(std::fs::metadata(&replica).unwrap().len() <= 1 << 20);
}

#[test]
fn two_pushes_of_one_replica_at_once_never_corrupt_it() {
    let central = Central::start("concurrent", "push: true\ncreate_runs: true\n");
    let first = central.worker_db("a.sqlite");
    let second = central.worker_db("b.sqlite");
    common::make_db(&first, "genomes", 3000, 2000);
    common::make_db(&second, "genomes", 2500, 2000);
    let target = format!("/{RUN}/genomes.sqlite");
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| central.push(&first, &target, &[]));
        let b = scope.spawn(|| central.push(&second, &target, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let replica = central.replica(RUN, "genomes.sqlite");
    assert!(common::integrity_ok(&replica));
    let digest = common::db_digest(&replica);
    let oks = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert!(oks >= 1, "at least one push ends well: {} / {}", text(&a), text(&b));
    for (output, origin) in [(&a, &first), (&b, &second)] {
        if !output.status.success() {
            assert!(text(output).contains("another push"), "a refusal says why: {}", text(output));
        } else if oks == 1 {
            assert_eq!(digest, common::db_digest(origin));
        }
    }
    if oks == 2 {
        assert!(digest == common::db_digest(&first) || digest == common::db_digest(&second));
    }
}

/// Every entry under `root` (kind, size, mtime, inode), leaving out the `skip` folders.
fn listing(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (bool, u64, i64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
            out.insert(path.clone(), (meta.is_dir(), meta.len(), mtime, meta.ino()));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

#[test]
fn hostile_commands_are_refused_with_their_reason_and_change_nothing() {
    let central = Central::start("hostile", "push: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n");
    let root = central.root().to_path_buf();
    let acme = root.join("replicas/acme");
    let outside = root.join("outside");
    common::make_db(&outside.join("victim.sqlite"), "genomes", 20, 100);
    // Planted by someone with other access to the party tree: symlinks and a hard link.
    let linked_run = "01KFYA32R09C5KJYNH1SM2W1DR_linked";
    let planted_run = "01KFYA32R09C5KJYNH1SM2W1DR_planted";
    let hardlinked_run = "01KFYA32R09C5KJYNH1SM2W1DR_hardlinked";
    std::os::unix::fs::symlink(root.join(format!("replicas/beta/{RUN}")), acme.join(linked_run)).unwrap();
    std::fs::create_dir(acme.join(planted_run)).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.sqlite"), acme.join(planted_run).join("genomes.sqlite")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.wal"), acme.join(planted_run).join("features.sqlite-wal")).unwrap();
    std::fs::create_dir(acme.join(hardlinked_run)).unwrap();
    std::fs::hard_link(outside.join("victim.sqlite"), acme.join(hardlinked_run).join("genomes.sqlite")).unwrap();
    common::chown_to(&acme, "evosync");

    let g = "genomes.sqlite";
    let rsync = |path: &str| format!("sqlite3_rsync --replica {g} {path} 2>/dev/null");
    let corpus: Vec<(String, &str)> = vec![
        // Path traversal and paths elsewhere.
        (rsync(&format!("{PREFIX}/../../etc/{g}")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/{RUN}/../../beta/{RUN}/{g}")), "does not name a replica"),
        (rsync(&format!("/{RUN}/../{RUN}/{g}")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/./{RUN}/{g}")), "does not name a replica"),
        (rsync("/etc/passwd"), "not an allowed run folder name"),
        (rsync(&outside.join("victim.sqlite").display().to_string()), "does not name a replica"),
        (rsync(&format!("{}/{RUN}/{g}", root.join("replicas/beta").display())), "does not name a replica"),
        (rsync(&format!("/tmp/{RUN}/{g}")), "does not name a replica"),
        (rsync(&format!("{PREFIX}//{RUN}/{g}")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/{RUN}/{g}/")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/{RUN}")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/{RUN}/sub/{g}")), "does not name a replica"),
        (rsync("/proc/self/root/etc/shadow"), "does not name a replica"),
        (rsync(&format!("{PREFIX}/{RUN}/..")), "does not name a replica"),
        (rsync(&format!("{PREFIX}/../{g}")), "does not name a replica"),
        // Names that are not runs or databases.
        (rsync(&format!("{PREFIX}/beta/{g}")), "not an allowed run folder name"),
        (rsync(&format!("{PREFIX}/{RUN}/{g}-wal")), "not an allowed database"),
        (rsync(&format!("{PREFIX}/{RUN}/lineage_state.sqlite")), "not an allowed database"),
        // Symlinks and hard links planted in the party root.
        (rsync(&format!("{PREFIX}/{linked_run}/{g}")), "is a symlink or not a folder"),
        (rsync(&format!("{PREFIX}/{planted_run}/{g}")), "is a symlink or special file"),
        (rsync(&format!("{PREFIX}/{planted_run}/features.sqlite")), "is a symlink or special file"),
        (rsync(&format!("{PREFIX}/{hardlinked_run}/{g}")), "hard links"),
        (format!("mkdir -p \"{PREFIX}/{linked_run}\""), "is a symlink or not a folder"),
        // Options that write host files, pulls, other programs.
        (
            format!("sqlite3_rsync --replica --errorfile /tmp/x {g} {PREFIX}/{RUN}/{g}"),
            "writes a file on the central host",
        ),
        (format!("sqlite3_rsync --replica --debugfile {PREFIX}/{RUN}/x {g} {PREFIX}/{RUN}/{g}"), "writes a file"),
        (format!("sqlite3_rsync --replica --logfile /tmp/x {g} {PREFIX}/{RUN}/{g}"), "writes a file"),
        (format!("sqlite3_rsync --origin {PREFIX}/{RUN}/{g} local.sqlite"), "may not pull"),
        ("sqlite3_rsync --origin /etc/passwd x".into(), "may not pull"),
        (format!("sqlite3_rsync --replica -v {g} {PREFIX}/{RUN}/{g}"), "is not accepted"),
        (format!("sqlite3_rsync {g} {PREFIX}/{RUN}/{g}"), "--replica (push) or --origin"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} extra"), "expected two names"),
        ("sh -c id".into(), "not a program served here"),
        ("bash".into(), "not a program served here"),
        ("/bin/sh".into(), "not a program served here"),
        ("scp -t /tmp".into(), "not a program served here"),
        ("rsync --server -e.LsfxC . /tmp".into(), "not a program served here"),
        ("internal-sftp".into(), "not a program served here"),
        ("/usr/lib/openssh/sftp-server".into(), "not a program served here"),
        ("cat /etc/passwd".into(), "not a program served here"),
        ("rm -rf /".into(), "not a program served here"),
        ("mkdir -p /tmp/evil".into(), "does not name a run folder"),
        ("mkdir /tmp/evil".into(), "mkdir is only accepted as"),
        (format!("mkdir -p \"{PREFIX}/{RUN}\" /tmp/evil"), "mkdir is only accepted as"),
        // Shell injection through every operator.
        (format!("{} ; id", rsync(&format!("{PREFIX}/{RUN}/{g}"))), "redirections are not accepted"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g}; touch /tmp/pwned"), "shell operators"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} && id"), "shell operators"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} || id"), "shell operators"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} | tee /tmp/x"), "shell operators"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} &"), "shell operators"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/$(id)/{g}"), "shell substitutions"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/`id`/{g}"), "shell substitutions"),
        (format!("sqlite3_rsync --replica {g} $HOME/{g}"), "shell substitutions"),
        (format!("sqlite3_rsync --replica {g} ${{IFS}}/{g}"), "shell substitutions"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} > /tmp/x"), "redirections"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} < /etc/passwd"), "redirections"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} 2>/tmp/x"), "redirections"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g} # comment"), "comments"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/*/{g}"), "glob"),
        (format!("sqlite3_rsync --replica {g} ~evosync/{g}"), "glob"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{{a,b}}/{g}"), "glob"),
        (format!("sqlite3_rsync --replica {g} ({PREFIX}/{RUN}/{g})"), "subshells"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/\\{g}"), "backslash"),
        (format!("sqlite3_rsync --replica {g} '{PREFIX}/{RUN}/{g}"), "quote is not closed"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g}\nid"), "control byte 0x0a"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/{g}\rid"), "control byte 0x0d"),
        (format!("sqlite3_rsync\t--replica {g} {PREFIX}/{RUN}/{g}"), "control byte 0x09"),
        (format!("sqlite3_rsync --replica {g} {PREFIX}/{RUN}/génomes.sqlite"), "non-ASCII"),
        (format!("sqlite3_rsync --replica {g} /{}", "a/".repeat(3000)), "bytes long"),
        ("".into(), "interactive login"),
    ];
    assert!(corpus.len() >= 40);

    let victim_before = common::db_digest(&outside.join("victim.sqlite"));
    // The gate's own audit log and lock files, and the worker's side of this test.
    let skip = vec![root.join("state"), root.join("worker")];
    let before = listing(&root, &skip);
    for (command, reason) in &corpus {
        let output = central.ssh(command);
        let said = text(&output);
        assert!(!output.status.success(), "{command:?} must be refused: {said}");
        assert!(said.contains("evosync-gate: "), "{command:?} gives the gate's reason: {said}");
        assert!(said.contains(reason), "{command:?} says '{reason}': {said}");
    }
    assert_eq!(listing(&root, &skip), before, "nothing outside the gate's state changed");
    assert_eq!(common::db_digest(&outside.join("victim.sqlite")), victim_before);
    assert!(!Path::new("/tmp/pwned").exists() && !Path::new("/tmp/evil").exists());
    let refusals = central.audit().lines().filter(|l| l.contains("verdict=refuse")).count();
    assert_eq!(refusals, corpus.len(), "each refusal is one audit line");

    // The stock client hears a refusal as a protocol error and prints it.
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 10, 100);
    let before = listing(&root, &skip);
    let output = central.push(&genomes, &format!("{PREFIX}/{linked_run}/{g}"), &[]);
    assert!(!output.status.success());
    assert!(text(&output).contains("ERROR: evosync-gate: "), "{}", text(&output));
    assert_eq!(listing(&root, &skip), before);
}

#[test]
fn another_partys_run_is_out_of_reach() {
    let central = Central::start("cross-party", "push: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n");
    let beta_replica = central.root().join(format!("replicas/beta/{RUN}/genomes.sqlite"));
    let beta_before = common::db_digest(&beta_replica);
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 30, 100);
    // acme's "same" run name lands in acme's own tree, never in beta's.
    assert_ok(&central.push(&genomes, &remote(RUN, "genomes.sqlite"), &[]), "push");
    assert_eq!(common::db_digest(&beta_replica), beta_before);
    assert_eq!(common::db_digest(&central.replica(RUN, "genomes.sqlite")), common::db_digest(&genomes));
}

/// The sqlite3_rsync processes (by their first argument) working in `folder` now.
fn syncs_in(folder: &Path) -> Vec<i32> {
    let Ok(canonical) = std::fs::canonicalize(folder) else { return Vec::new() };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let working = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
            cmdline.windows(b"--replica".len()).any(|w| w == b"--replica") && working.as_deref() == Some(&canonical)
        })
        .collect()
}

/// Issue 18, row 5: the central's sqlite3_rsync killed mid-push. The worker reads why (one `ERROR: evosync-gate: …`
/// line), and the replica reads as its last complete push left it, to a read-only opener too.
#[test]
fn a_sync_killed_on_the_central_says_why_and_leaves_the_replica_readable() {
    let central = Central::start("killed-child", "push: true\ncreate_runs: true\nlimits:\n  max_sync_seconds: 120\n");
    let genomes = central.worker_db("genomes.sqlite");
    common::make_db(&genomes, "genomes", 200, 2000);
    let target = format!("/{RUN}/genomes.sqlite");
    assert_ok(&central.push(&genomes, &target, &[]), "first push");
    let replica = central.replica(RUN, "genomes.sqlite");
    let before = common::db_digest(&replica);
    common::insert_rows(&genomes, "genomes", 15_000, 2000);
    let folder = replica.parent().unwrap().to_owned();
    let killer = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if let Some(&pid) = syncs_in(&folder).first() {
                // Let it write a while, then kill it mid-push.
                std::thread::sleep(std::time::Duration::from_millis(300));
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    });
    let output = central.push(&genomes, &target, &[]);
    assert!(killer.join().unwrap(), "the sync was seen and killed");
    let said = text(&output);
    assert!(!output.status.success(), "{said}");
    assert!(
        said.contains("ERROR: evosync-gate: the sync process on the central host was killed (SIGKILL"),
        "the worker reads why: {said}"
    );
    assert!(central.audit().contains("exit=signal-9"), "{}", central.audit());
    // Settled: no hot log for a read-only opener to trip over; its content is the last complete push's.
    let wal = replica.with_file_name("genomes.sqlite-wal");
    assert_eq!(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0), 0, "the log was folded in");
    let read_only = rusqlite::Connection::open_with_flags(
        format!("file:{}?mode=ro", replica.display()),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let check: String = read_only.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(read_only);
    assert_eq!(common::db_digest(&replica), before, "the previous push's content");
    assert_ok(&central.push(&genomes, &target, &[]), "the next push");
    assert_eq!(common::db_digest(&replica), common::db_digest(&genomes));
}
