//! The central reads what was synced (issue 10), with a real reader: better-sqlite3 from npm, opening databases the
//! way kromosynth-evoruns does (`readonly: true`, then `pragma journal_mode = WAL`, connections kept open across
//! pushes), run as `evosync-reader`, an account only in the catalog's group. Real sshd, the stock sqlite3_rsync, a
//! running `evosync serve` that verifies every push and publishes what passes.

mod common;

use common::{evosync_json, http, Central, Reader, READER_ACCOUNT};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A worker's database, written by Python's sqlite3 and gzip as the workers write theirs: `TABLE(id TEXT PRIMARY
/// KEY, data BLOB)` holding gzip(level 9) of JSON, and `metadata(key, value)`, in WAL mode. `extra` is more SQL.
fn worker_db(path: &Path, table: &str, ids: std::ops::Range<u32>, extra: &str) {
    let script = format!(
        r#"
import sqlite3, gzip, json, sys
db = sqlite3.connect({path:?})
db.execute("PRAGMA journal_mode = WAL")
db.execute("CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, data BLOB)")
db.execute("CREATE TABLE IF NOT EXISTS metadata (key TEXT PRIMARY KEY, value TEXT)")
db.execute("INSERT OR REPLACE INTO metadata VALUES ('creationDate', '2026-11-26T00:00:00Z')")
for n in range({start}, {end}):
    genome = {{"_id": "genome_run_%026d" % n, "genome": {{"n": n, "waveform": [n % 7, n % 11, n % 13]}}}}
    db.execute("INSERT OR REPLACE INTO {table} VALUES (?, ?)", ("%026d" % n, gzip.compress(json.dumps(genome).encode(), 9)))
db.executescript({extra:?})
db.commit()
db.close()
"#,
        path = path.display().to_string(),
        start = ids.start,
        end = ids.end,
    );
    let output = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

const RUN_A: &str = "01KFYA32R09C5KJYNH1SM2W1DR_acme-run";
const RUN_B: &str = "01KFYA32R09C5KJYNH1SM2W1DS_beta-run";
const LATE: &str = "01KFYA32R09C5KJYNH1SM2W1DT_late-features";

#[test]
fn a_reader_in_the_catalog_group_reads_every_partys_verified_runs_and_sees_each_push() {
    let central = Central::start("catalog-read", "");
    let work = central.root().join("worker");
    std::fs::create_dir_all(&work).unwrap();
    let (genomes_a, features_a) = (work.join("a-genomes.sqlite"), work.join("a-features.sqlite"));
    worker_db(&genomes_a, "genomes", 0..300, "");
    worker_db(&features_a, "features", 0..300, "");
    central.push_ok("acme", &genomes_a, RUN_A, "genomes.sqlite");
    assert!(!central.published(RUN_A), "half a run is not published");
    central.push_ok("acme", &features_a, RUN_A, "features.sqlite");
    assert!(central.published(RUN_A), "both databases verified: published\n{}", central.diagnostics());
    let log = central.service.log();
    assert!(log.lines().any(|l| l.contains("event=copy") && l.contains(RUN_A) && l.contains("outcome=made")), "{log}");
    let genomes_b = work.join("b-genomes.sqlite");
    let features_b = work.join("b-features.sqlite");
    worker_db(&genomes_b, "genomes", 1000..1100, "");
    worker_db(&features_b, "features", 1000..1100, "");
    central.push_ok("beta", &genomes_b, RUN_B, "genomes.sqlite");
    central.push_ok("beta", &features_b, RUN_B, "features.sqlite");

    let mut reader = Reader::start(&central.root().join("catalog"));
    assert_eq!(reader.count(RUN_A, "genomes.sqlite", "genomes")["count"], 300);
    assert_eq!(reader.count(RUN_B, "features.sqlite", "features")["count"], 100);
    let (genome, _) = reader.ask(serde_json::json!({ "op": "genome", "run": RUN_A, "id": format!("{:026}", 42) }));
    assert_eq!(
        genome["json"],
        serde_json::json!({ "_id": format!("genome_run_{:026}", 42), "genome": { "n": 42, "waveform": [0, 9, 3] } })
    );

    // New rows and changed ones, pushed while the reader keeps its connection: it sees them.
    worker_db(&genomes_a, "genomes", 250..400, "UPDATE genomes SET data = (SELECT data FROM genomes WHERE id = printf('%026d', 7)) WHERE id = printf('%026d', 1);");
    central.push_ok("acme", &genomes_a, RUN_A, "genomes.sqlite");
    assert_eq!(reader.count(RUN_A, "genomes.sqlite", "genomes")["count"], 400);
    let (genome, _) = reader.ask(serde_json::json!({ "op": "genome", "run": RUN_A, "id": format!("{:026}", 1) }));
    assert_eq!(genome["json"]["genome"]["n"], 7, "the updated row");

    // A reader never writes, and cannot.
    let (answer, _) = reader.ask(serde_json::json!({ "op": "write", "run": RUN_A, "db": "genomes.sqlite" }));
    assert_eq!(answer["ok"], false, "{answer}");
    let replica = central.root().join("replicas/acme").join(RUN_A).join("genomes.sqlite");
    let touch = Command::new("runuser")
        .args(["-u", READER_ACCOUNT, "--", "sh", "-c"])
        .arg(format!(": >> {}", replica.display()))
        .output()
        .unwrap();
    assert!(!touch.status.success(), "the reader's account cannot open a replica for writing");
    // The catalog knows no parties: one folder per run, found with one stat.
    let (found, _) = reader.ask(serde_json::json!({ "op": "lookup", "run": RUN_B }));
    assert_eq!(found["found"], true);
    let (files, _) = reader.ask(serde_json::json!({ "op": "files", "run": RUN_A, "dir": "." }));
    assert!(files["files"].as_array().unwrap().iter().all(|f| f != "acme"), "{files}");

    // The party and the administrator see it.
    let status = central.status(RUN_A);
    assert_eq!(status["published"], true, "{status}");
    assert_eq!(status["replicas"][0]["verification"]["ok"], true, "{status}");
    // Another party's account is not a reader.
    let output = Command::new("runuser")
        .args(["-u", "evosync-beta", "--", "ls"])
        .arg(central.root().join("catalog"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "a party account cannot list the catalog");

    // Copies that left the readers' group (as a folder without its setgid bit once made them) cannot be read; the
    // check says so, the repair gives them back, and a reader opens them again.
    let copies = central.root().join("catalog").join(RUN_B);
    let service_group = nix::unistd::Group::from_name("evosync").unwrap().unwrap().gid.as_raw();
    for entry in std::fs::read_dir(&copies).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), None, Some(service_group)).unwrap();
    }
    std::os::unix::fs::chown(&copies, None, Some(service_group)).unwrap();
    std::fs::set_permissions(&copies, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut fresh = Reader::start(&central.root().join("catalog"));
    assert_eq!(fresh.count(RUN_B, "genomes.sqlite", "genomes")["ok"], false, "out of the readers' group");
    let (ok, check, _) = evosync_json(&central.config, &["catalog", "check"]);
    assert!(!ok && check["unreadable"].as_array().unwrap().iter().any(|e| e == RUN_B), "{check}");
    let (ok, _, said) = evosync_json(&central.config, &["catalog", "check", "--repair"]);
    assert!(ok, "{said}");
    let mut fresh = Reader::start(&central.root().join("catalog"));
    assert_eq!(fresh.count(RUN_B, "genomes.sqlite", "genomes")["count"], 100, "mended");
    central.push_ok("beta", &genomes_b, RUN_B, "genomes.sqlite");
    assert_eq!(fresh.count(RUN_B, "genomes.sqlite", "genomes")["count"], 100);
}

#[test]
fn a_run_whose_features_come_late_is_published_whole_and_partial_ones_after_their_wait() {
    let central = Central::start("catalog-late", "publish_partial_after: 3\n");
    let work = central.root().join("worker");
    std::fs::create_dir_all(&work).unwrap();
    let genomes = work.join("genomes.sqlite");
    worker_db(&genomes, "genomes", 0..50, "");
    central.push_ok("acme", &genomes, LATE, "genomes.sqlite");
    let mut reader = Reader::start(&central.root().join("catalog"));
    assert_eq!(reader.ask(serde_json::json!({ "op": "lookup", "run": LATE })).0["found"], false, "not half a run");
    // Published without its features once the wait is over (the service looks every half minute; the deadline is
    // one look away at most).
    let deadline = Instant::now() + Duration::from_secs(45);
    while !central.published(LATE) {
        assert!(Instant::now() < deadline, "published after publish_partial_after");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(reader.count(LATE, "genomes.sqlite", "genomes")["count"], 50);
    let features = work.join("features.sqlite");
    worker_db(&features, "features", 0..50, "");
    central.push_ok("acme", &features, LATE, "features.sqlite");
    assert_eq!(reader.count(LATE, "features.sqlite", "features")["count"], 50, "the late database joins its run");
}

#[test]
fn hostile_databases_are_refused_with_their_reason_never_published_and_the_reader_stays_responsive() {
    let central = Central::start("catalog-hostile", "publish_partial_after: 0\n");
    let work = central.root().join("worker");
    std::fs::create_dir_all(&work).unwrap();
    let good = work.join("good.sqlite");
    worker_db(&good, "genomes", 0..20, "");
    let good_run = "01KFYA32R09C5KJYNH1SM2W1DV_good";
    central.push_ok("acme", &good, good_run, "genomes.sqlite");
    assert!(central.published(good_run));
    let mut reader = Reader::start(&central.root().join("catalog"));
    assert_eq!(reader.count(good_run, "genomes.sqlite", "genomes")["count"], 20);

    let cases: [(&str, &str, &str); 5] = [
        (
            "view",
            "CREATE VIEW bomb AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c;",
            "view 'bomb'",
        ),
        ("trigger", "CREATE TRIGGER t AFTER INSERT ON genomes BEGIN DELETE FROM metadata; END;", "trigger 't'"),
        ("unlisted", "CREATE TABLE extra (x);", "table 'extra'"),
        ("types", "DROP TABLE genomes; CREATE TABLE genomes (id INTEGER PRIMARY KEY, data TEXT);", "columns"),
        ("journal", "PRAGMA journal_mode = DELETE;", "not in WAL mode"),
    ];
    for (n, (name, sql, reason)) in cases.iter().enumerate() {
        let run = format!("01KFYA32R09C5KJYNH1SM2W1E{n}_{name}");
        let origin = work.join(format!("{name}.sqlite"));
        worker_db(&origin, "genomes", 0..20, sql);
        // Refused while the worker waits, in the protocol: it reads why.
        let pushed = central.push("acme", &origin, &run, "genomes.sqlite");
        let said = String::from_utf8_lossy(&pushed.stderr);
        assert!(!pushed.status.success() && said.contains(reason), "{name}: the worker reads why: {said}");
        let verdict = central.verdict(&run, "genomes.sqlite");
        assert!(matches!(&verdict, Some((false, Some(why))) if why.contains(reason)), "{name}: {verdict:?}");
        assert!(!central.published(&run), "{name} is never published");
        let (answer, took) = reader
            .ask(serde_json::json!({ "op": "count", "run": good_run, "db": "genomes.sqlite", "table": "genomes" }));
        assert_eq!(answer["count"], 20, "{name}: the reader still answers");
        assert!(took < Duration::from_secs(5), "{name}: the reader stays responsive ({took:?})");
    }

    // A corrupt b-tree page: quick_check refuses it.
    let corrupt = work.join("corrupt.sqlite");
    worker_db(&corrupt, "genomes", 0..400, "PRAGMA wal_checkpoint(TRUNCATE);");
    let root_page: i64 = rusqlite::Connection::open(&corrupt)
        .unwrap()
        .query_row("SELECT rootpage FROM sqlite_schema WHERE name = 'genomes'", [], |r| r.get(0))
        .unwrap();
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let page = 4096 * (root_page as usize - 1);
    for (i, b) in bytes[page + 12..page + 4096].iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8;
    }
    std::fs::write(&corrupt, bytes).unwrap();
    let corrupt_run = "01KFYA32R09C5KJYNH1SM2W1EZ_corrupt";
    let _ = central.push("acme", &corrupt, corrupt_run, "genomes.sqlite");
    if let Some((ok, reason)) = central.verdict(corrupt_run, "genomes.sqlite") {
        assert!(!ok, "a corrupt database is refused: {reason:?}");
    }
    assert!(!central.published(corrupt_run));

    // A published run turns bad: the worker is told, the run withdrawn at once with its reason and its copies
    // removed; mended: published again.
    worker_db(&good, "genomes", 0..20, "CREATE VIEW v AS SELECT 1;");
    let pushed = central.push("acme", &good, good_run, "genomes.sqlite");
    assert!(String::from_utf8_lossy(&pushed.stderr).contains("view 'v'"));
    assert!(!central.published(good_run), "withdrawn at once");
    assert!(!central.root().join("catalog-verified").join(good_run).join("genomes.sqlite").exists(), "copy removed");
    let status = central.status(good_run);
    assert_eq!(status["published"], false);
    assert!(status["replicas"][0]["verification"]["reason"].as_str().unwrap().contains("view 'v'"), "{status}");
    worker_db(&good, "genomes", 0..20, "DROP VIEW v;");
    central.push_ok("acme", &good, good_run, "genomes.sqlite");
    assert!(central.published(good_run), "mended: published again");
    let mut fresh = Reader::start(&central.root().join("catalog"));
    assert_eq!(fresh.count(good_run, "genomes.sqlite", "genomes")["count"], 20);

    // The administrator sees the same, and can have a run checked again.
    let (status, runs) = central.admin("GET", "/admin/runs");
    assert_eq!(status, 200);
    let listed = runs.as_array().unwrap().iter().find(|r| r["run"] == good_run).unwrap();
    assert_eq!(
        (listed["published"].clone(), listed["replicas"][0]["verification"]["ok"].clone()),
        (true.into(), true.into()),
        "{listed}"
    );
    let (status, again) = central.admin("POST", &format!("/admin/runs/{good_run}/verify"));
    assert_eq!(
        (status, again["verdicts"][0]["ok"].clone(), again["published"].clone()),
        (200, true.into(), true.into()),
        "{again}"
    );
    // Each verdict, publication and withdrawal went to the events stream (the log holds the same objects), the
    // metrics and the audit trail.
    let log = central.service.log();
    for kind in ["\"type\":\"verified\"", "\"type\":\"published\"", "\"type\":\"withdrawn\""] {
        assert!(log.contains(kind), "{kind} in {log}");
    }
    let (_, _, metrics) = http(central.service.port, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(metrics.contains("evosync_verifications_total{outcome=\"refused\"}"), "{metrics}");
    assert!(metrics.contains("evosync_verification_seconds_total"), "{metrics}");
    let audit = rusqlite::Connection::open(central.root().join("state/state.db")).unwrap();
    let withdrawals: i64 = audit
        .query_row("SELECT count(*) FROM audit WHERE action = 'withdraw' AND subject = ?1", [good_run], |r| r.get(0))
        .unwrap();
    assert_eq!(withdrawals, 1);
    // The re-verification is recorded once its verdicts are in, under the admin token that asked for it.
    let (actor, outcome, detail): (String, String, String) = audit
        .query_row(
            "SELECT actor, outcome, detail FROM audit WHERE action = 'run.verify' AND subject = ?1",
            [good_run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(actor.starts_with("http:admin:") && actor.len() > "http:admin:".len(), "{actor}");
    assert_eq!((outcome.as_str(), detail.as_str()), ("ok", "genomes.sqlite: ok"));

    // A reader holding its connection while a push swaps `genomes` for a recursive-CTE view: the push is refused
    // and the reader, which reads the verified copy, never sees it: it keeps answering from the last verified rows.
    let bomb = "DROP TABLE genomes; CREATE VIEW genomes AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 \
                FROM c) SELECT printf('%026d', x) AS id, zeroblob(10) AS data FROM c;";
    let swapped = work.join("swapped.sqlite");
    std::fs::copy(&good, &swapped).unwrap();
    rusqlite::Connection::open(&swapped).unwrap().execute_batch(bomb).unwrap();
    let _ = central.push("acme", &swapped, good_run, "genomes.sqlite");
    assert!(
        matches!(central.verdict(good_run, "genomes.sqlite"), Some((false, Some(why))) if why.contains("view 'genomes'"))
    );
    assert!(!central.published(good_run), "withdrawn");
    let (answer, took) =
        fresh.ask(serde_json::json!({ "op": "count", "run": good_run, "db": "genomes.sqlite", "table": "genomes" }));
    assert_eq!(answer["count"], 20, "the open connection still reads the verified copy: {answer}");
    assert!(took < Duration::from_secs(5), "and it answers at once ({took:?})");

    // The audit trail and the checks agree; the catalog has drifted nowhere.
    let (ok, drift, said) = evosync_json(&central.config, &["catalog", "check"]);
    assert!(ok, "{said} {drift}");
    assert_eq!(drift["clean"], true);
}

#[test]
fn the_next_push_of_a_replica_waits_for_the_copy_of_the_last_one() {
    let central = Central::start("catalog-copy-lock", "lock_wait_seconds: 2\npublish_partial_after: 0\n");
    let work = central.root().join("worker");
    std::fs::create_dir_all(&work).unwrap();
    let genomes = work.join("genomes.sqlite");
    worker_db(&genomes, "genomes", 0..30, "");
    central.push_ok("acme", &genomes, RUN_A, "genomes.sqlite");
    let replica = central.root().join("replicas/acme").join(RUN_A).join("genomes.sqlite");
    let before = common::db_digest(&replica);
    // While the service copies the replica for readers (here: while the test holds the replica's lock as the
    // catalog's pipeline would), the next push of it waits, and, past lock_wait_seconds, is refused with the reason
    // and writes nothing.
    let config = evosync::config::Config::load(&central.config).unwrap();
    let copying = evosync::fs::locks::try_replica(&config.locks_dir(), "acme", RUN_A, "genomes.sqlite")
        .unwrap()
        .expect("the replica's lock is free once the copy is done");
    worker_db(&genomes, "genomes", 30..60, "");
    let output = central.push_only("acme", &genomes, RUN_A, "genomes.sqlite");
    let said = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("check and copy of the last one"), "{said}");
    assert_eq!(common::db_digest(&replica), before, "nothing written");
    drop(copying);
    central.push_ok("acme", &genomes, RUN_A, "genomes.sqlite");
    let mut reader = Reader::start(&central.root().join("catalog"));
    assert_eq!(reader.count(RUN_A, "genomes.sqlite", "genomes")["count"], 60);
}
