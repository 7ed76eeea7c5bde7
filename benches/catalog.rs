//! What the catalog costs and what it saves (issue 10, item 5), measured: figures only, no timed assertions. A whole
//! central on loopback (sshd, the gate, the stock sqlite3_rsync, `evosync serve` verifying every push in its
//! confined child and publishing what passes) and the reader `tests/reader/reader.js` (better-sqlite3, as
//! `evosync-reader`, its connection kept open):
//!  1. the verification against the push's own time, for a database shaped like the workers' (`genomes(id TEXT
//!     PRIMARY KEY, data BLOB)` + `metadata`, WAL, page size 4096, 2,000-byte rows that do not compress) of 200 MB,
//!     and of 1.5 GB where the disk has room: the first push, then rounds of an unchanged push and a push after 1 %
//!     of the rows changed (half of them new, half rewritten). Per push: the client's wall time (which includes the
//!     verification: the gate answers the worker only after the service's verdict), the gate's sync seconds (ledger
//!     `seconds`: sqlite3_rsync alone), the verification's seconds (ledger `verify_seconds`) and their ratios;
//!  2. in each 1 % round, when the reader, polling its count over the connection it keeps open, sees the new rows,
//!     against the client's exit;
//!  3. a reader's lookup of a run by name, `stat(root/NAME)` as kromosynth-evoruns does first, in a catalog of 5,000
//!     runs against a root holding one; and what the reader did before the catalog: a walk of a replica-root-like
//!     tree of 5,000 runs under two parties.
//!
//! Run (as root, after scripts/setup-test-env.sh): `cargo bench --bench catalog [-- --sizes 200,1500 --rounds 3]`
//! (sizes in MB; a size is skipped, saying so, when the disk lacks four times its room). Its files live in the rig's
//! folders under the target dir (`bench-catalog-*`), removed at the end; what a run cut short leaves there, the next
//! run removes.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Central, Reader};
use std::path::Path;
use std::time::{Duration, Instant};

const PARTY: &str = "acme";
const DATABASE: &str = "genomes.sqlite";
const TABLE: &str = "genomes";
/// A row's data: two rows fill a 4096-byte page, so a share of the rows is about that share of the pages.
const BLOB_BYTES: usize = 2000;
/// What a row costs in the file (half a page), to size a database.
const FILE_BYTES_PER_ROW: u64 = 2048;
/// The runs of the lookup part, as many as issue 10 quotes.
const RUNS: usize = 5000;
/// The reader's pause between two counts while a push runs.
const POLL_PAUSE: Duration = Duration::from_millis(5);
/// The prefix of this benchmark's folders under the target dir.
const PREFIX: &str = "bench-catalog";

fn main() {
    let options = Options::parse();
    let work = common::test_dir(PREFIX);
    remove_leftovers(work.path());
    let load = load_average();
    println!("load average at start: {load} (2 cores shared with other work: compare figures within one run)");

    lookups(&work.path().join("lookups"));

    let central = Central::start(&format!("{PREFIX}-central"), "publish_partial_after: 0\n");
    for &megabytes in &options.sizes {
        let needed = megabytes * 1_000_000 * 4 + (2 << 30);
        let free = free_bytes(work.path());
        if free < needed {
            println!(
                "\n{megabytes} MB: skipped: {} GB free under the target dir, {} GB needed (origin, replica, their \
                 WAL files)",
                free >> 30,
                needed >> 30
            );
            continue;
        }
        pushes(&central, &work.path().join(format!("origin-{megabytes}.sqlite")), megabytes, options.rounds);
    }
    drop(central);
    drop(work);
}

struct Options {
    sizes: Vec<u64>,
    rounds: usize,
}

impl Options {
    /// `--sizes 200,1500` (MB) and `--rounds 3`; anything else (cargo bench passes `--bench`) is ignored.
    fn parse() -> Options {
        let mut options = Options { sizes: vec![200, 1500], rounds: 3 };
        let args: Vec<String> = std::env::args().skip(1).collect();
        for pair in args.windows(2) {
            match pair[0].as_str() {
                "--sizes" => options.sizes = pair[1].split(',').map(|s| s.trim().parse().expect("--sizes")).collect(),
                "--rounds" => options.rounds = pair[1].parse().expect("--rounds"),
                _ => {}
            }
        }
        options
    }
}

// ---- 1 and 2: pushes, their verification, and when the reader sees them ----

/// One push as the worker, the ledger and the reader saw it.
struct Push {
    /// The client's wall time, from its start to its exit.
    wall: Duration,
    /// When the service's copy for readers was current and the run published, after the client's start.
    copied: Duration,
    /// The ledger's `seconds`: the gate's sqlite3_rsync child alone.
    gate: f64,
    /// The ledger's `verify_seconds`: the verifying child's own time.
    verify: f64,
    verified: bool,
    replica_bytes: u64,
    /// When the reader first counted the new rows, after the client's start.
    seen: Option<Duration>,
    /// How long one of the reader's counts took, its answer included (the poll period is that and `POLL_PAUSE`).
    poll: Duration,
}

fn pushes(central: &Central, origin: &Path, megabytes: u64, rounds: usize) {
    let rows = (megabytes * 1_000_000 / FILE_BYTES_PER_ROW) as usize;
    let run = format!("01KFYA32R09C5KJYNH1SM{megabytes:05}_bench");
    let made = Instant::now();
    common::make_db(origin, TABLE, rows, BLOB_BYTES);
    println!(
        "\n{megabytes} MB: origin of {rows} rows, {:.0} MB, made in {:.1} s",
        file_megabytes(origin),
        made.elapsed().as_secs_f64()
    );
    println!(
        "  {:<20} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>8} {:>9} {:>12} {:>8}",
        "push",
        "replica",
        "wall s",
        "gate s",
        "verify s",
        "v/gate",
        "v/wall",
        "rest s",
        "copy s",
        "seen-exit ms",
        "poll ms"
    );
    let first = push(central, origin, &run, None);
    print_push("first (everything)", &first);
    assert!(first.verified && central.published(&run), "the first push is verified and published");

    let mut reader = Reader::start(&central.root().join("catalog"));
    let mut count = reader.count(&run, DATABASE, TABLE)["count"].as_u64().expect("the reader counts the rows");
    assert_eq!(count, rows as u64);
    let changed = rows / 100;
    for round in 1..=rounds {
        let unchanged = push(central, origin, &run, None);
        print_push(&format!("{round}: unchanged"), &unchanged);
        let new_rows = changed / 2;
        common::insert_rows(origin, TABLE, new_rows, BLOB_BYTES);
        common::update_rows(origin, TABLE, changed - new_rows);
        let new = NewRows { first_id: common::row_id(count), rows: new_rows as u64 };
        count += new_rows as u64;
        let one_percent = push(central, origin, &run, Some((&mut reader, new)));
        print_push(&format!("{round}: 1 % changed"), &one_percent);
    }
    println!(
        "  (wall: the client's start to its exit; gate: sqlite3_rsync in the gate (ledger seconds); verify: the \
         check's child (ledger verify_seconds);\n   rest: wall - gate - verify (ssh, the gate, the service's \
         bookkeeping);\n   copy: from the client's exit until the service's copy for readers is current and the run \
         published (it goes on after the client has gone); seen-exit: when the reader's open connection first counted the new rows, from the client's \
         exit,\n   negative = before it)"
    );
    drop(reader);
    let _ = std::fs::remove_file(origin);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", origin.display()));
    }
}

/// The rows a push brings, as the reader counts them: those from the first new id on.
struct NewRows {
    first_id: String,
    rows: u64,
}

/// Pushes `origin` as the worker does; with a reader, meanwhile polls its count of the new rows until they are all
/// there. It counts an index range, which is cheap, so the polling takes little of the two cores from the push.
fn push(central: &Central, origin: &Path, run: &str, watch: Option<(&mut Reader, NewRows)>) -> Push {
    let started = Instant::now();
    let (output, exited, seen, poll) = std::thread::scope(|scope| {
        let pushing = scope.spawn(|| {
            let output = central.push_only(PARTY, origin, run, DATABASE);
            let exited = started.elapsed();
            central.wait_for_copy(PARTY, run, DATABASE);
            (output, exited, started.elapsed())
        });
        let (mut seen, mut polls, mut exited_seen) = (None, Vec::new(), None::<Instant>);
        if let Some((reader, new)) = watch {
            let request =
                serde_json::json!({ "op": "count", "run": run, "db": DATABASE, "table": TABLE, "from": new.first_id });
            loop {
                let (answer, took) = reader.ask(request.clone());
                polls.push(took);
                if answer["count"].as_u64() >= Some(new.rows) {
                    seen = Some(started.elapsed());
                    break;
                }
                // Not seen 10 s after the client's exit: say so rather than wait for ever.
                if pushing.is_finished() {
                    let since = *exited_seen.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                std::thread::sleep(POLL_PAUSE);
            }
        }
        let (output, exited, copied) = pushing.join().unwrap();
        polls.sort();
        (output, (exited, copied), seen, polls.get(polls.len() / 2).copied().unwrap_or_default())
    });
    let (exited, copied) = exited;
    assert!(output.status.success(), "push of {run}: {}", String::from_utf8_lossy(&output.stderr));
    let (gate, verify, verified, replica_bytes) = ledger(central, run);
    Push { wall: exited, copied, gate, verify, verified, replica_bytes, seen, poll }
}

/// The push's ledger row: (seconds, verify_seconds, verified, replica_bytes).
fn ledger(central: &Central, run: &str) -> (f64, f64, bool, u64) {
    let store = rusqlite::Connection::open(central.root().join("state/state.db")).unwrap();
    store.busy_timeout(Duration::from_secs(30)).unwrap();
    store
        .query_row(
            "SELECT seconds, coalesce(verify_seconds, -1), coalesce(verified, 0), coalesce(replica_bytes, 0) \
             FROM sync_ledger WHERE run = ?1 AND database = ?2 ORDER BY id DESC LIMIT 1",
            [run, DATABASE],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64)),
        )
        .unwrap()
}

fn print_push(what: &str, push: &Push) {
    let wall = push.wall.as_secs_f64();
    let seen = match push.seen {
        Some(seen) => format!("{:+.0}", (seen.as_secs_f64() - wall) * 1000.0),
        None => "-".into(),
    };
    let poll = if push.seen.is_some() { format!("{:.1}", push.poll.as_secs_f64() * 1000.0) } else { "-".into() };
    println!(
        "  {what:<20} {:>5.0} MB {wall:>8.2} {:>8.2} {:>8.2} {:>7.2} {:>7.2} {:>8.2} {:>9.2} {seen:>12} {poll:>8}{}",
        push.replica_bytes as f64 / 1_000_000.0,
        push.gate,
        push.verify,
        push.verify / push.gate,
        push.verify / wall,
        wall - push.gate - push.verify,
        push.copied.as_secs_f64() - wall,
        if push.verified { String::new() } else { "  NOT VERIFIED".into() },
    );
}

// ---- 3: a run by name ----

fn lookups(dir: &Path) {
    let names: Vec<String> = (0..RUNS).map(run_name).collect();
    let started = Instant::now();
    let replicas = dir.join("replicas");
    for (n, name) in names.iter().enumerate() {
        let party = if n % 2 == 0 { "acme" } else { "beta" };
        make_run_folder(&replicas.join(party).join(name));
    }
    let catalog = dir.join("catalog");
    let single = dir.join("catalog-one-run");
    for (n, name) in names.iter().enumerate() {
        let party = if n % 2 == 0 { "acme" } else { "beta" };
        publish(&catalog.join(name), &replicas.join(party).join(name));
    }
    publish(&single.join(&names[0]), &replicas.join("acme").join(&names[0]));
    println!("\nlookup of a run by name: trees of {RUNS} runs made in {:.1} s", started.elapsed().as_secs_f64());

    let mut in_catalog = Reader::start(&catalog);
    let mut in_single = Reader::start(&single);
    let mut in_replicas = Reader::start(&replicas);
    let lookup = |reader: &mut Reader, op: &str, run: &str| -> f64 {
        let (answer, _) = reader.ask(serde_json::json!({ "op": op, "run": run }));
        assert_eq!(answer["ok"], true, "{answer}");
        answer["micros"].as_f64().unwrap()
    };
    // stat(root/NAME), as a reader rooted at the catalog does, in turns so that both see the same moments.
    let (mut many, mut one) = (Vec::new(), Vec::new());
    for i in 0..4000 {
        let run = &names[(i * 7919) % RUNS];
        let a = lookup(&mut in_catalog, "lookup", run);
        let b = lookup(&mut in_single, "lookup", &names[0]);
        if i >= 200 {
            many.push(a);
            one.push(b);
        }
    }
    let (many_median, one_median) = (median(&mut many), median(&mut one));
    println!(
        "  stat(root/NAME), hit:  catalog of {RUNS} runs median {many_median:.2} µs (p90 {:.2}); root with one run \
         median {one_median:.2} µs (p90 {:.2}); ratio {:.2} ({} lookups each, in turns)",
        percentile(&many, 0.9),
        percentile(&one, 0.9),
        many_median / one_median,
        many.len()
    );

    // kromosynth-evoruns' whole lookup (async stat, else a walk), in the catalog and in the replica tree.
    let (mut hit, mut walked, mut missed) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..220 {
        let run = &names[(i * 7919) % RUNS];
        let a = lookup(&mut in_catalog, "find", run);
        let b = lookup(&mut in_replicas, "find", run);
        let c = lookup(&mut in_catalog, "find", &run_name(RUNS + i));
        if i >= 20 {
            hit.push(a);
            walked.push(b);
            missed.push(c);
        }
    }
    let (hit_median, walked_median, missed_median) = (median(&mut hit), median(&mut walked), median(&mut missed));
    println!(
        "  the reader's find:     catalog hit median {:.3} ms (p90 {:.3}); before the catalog, a walk of replica_root \
         ({RUNS} runs under two parties) median {:.2} ms (p90 {:.2}), {:.0}x;\n                         a run not in \
         the catalog (stat misses, the reader walks the catalog's {RUNS} folders) median {:.2} ms ({} lookups each)",
        hit_median / 1000.0,
        percentile(&hit, 0.9) / 1000.0,
        walked_median / 1000.0,
        percentile(&walked, 0.9) / 1000.0,
        walked_median / hit_median,
        missed_median / 1000.0,
        hit.len()
    );
}

/// A run name as the workers make them: a ULID, `_`, a label.
fn run_name(n: usize) -> String {
    format!("01KFYA{n:020}_bench-run")
}

/// A run folder in a party's tree: its databases and the folders the reader serves files from.
fn make_run_folder(folder: &Path) {
    for sub in evosync::catalog::home::RUN_FOLDERS {
        std::fs::create_dir_all(folder.join(sub)).unwrap();
    }
    for database in ["genomes.sqlite", "features.sqlite"] {
        std::fs::write(folder.join(database), b"").unwrap();
    }
}

/// A published run as the service lays it out: a real folder of symlinks into the party's tree.
fn publish(folder: &Path, run: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    for name in ["genomes.sqlite", "features.sqlite"].into_iter().chain(evosync::catalog::home::RUN_FOLDERS) {
        std::os::unix::fs::symlink(run.join(name), folder.join(name)).unwrap();
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

// ---- the machine ----

/// Removes this benchmark's folders that a cut-short run left beside `current`.
fn remove_leftovers(current: &Path) {
    let Some(base) = current.parent() else { return };
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && entry.path() != current {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_bytes(path: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(path).unwrap();
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

fn file_megabytes(path: &Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / 1_000_000.0
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}
