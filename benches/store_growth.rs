//! How the state store grows, measured (figures only, no timed assertions): bytes per audit record (a push's records
//! as the gate and the catalog write them, with refusals and admin actions among them), per analysis-file row and per
//! ledger row, each inserted through the store's own functions and set against the bytes of the row's own fields;
//! then what `audit archive` does to it: the archive's bytes per record, its time, the store's size after (the freed
//! pages are reused by new records, the file does not shrink), after VACUUM, and a backup of the whole store.
//!
//! Run: `cargo bench --bench store_growth [-- --audit 200000 --files 200000 --pushes 100000]`.

use evosync::store::{AuditAction, AuditEntry, FileRecord, LedgerRow, Store, Transport};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::time::{Duration, Instant};

const SANDBOX: &str = "landlock abi 6 (run folder only, no network, scoped); seccomp (no sockets, io_uring, ptrace); \
                       memory 1GiB (rlimit-as; no sync_cgroup configured)";
const REFUSAL: &str = "'01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run/../x' is not an allowed run folder name (pattern: \
                       [0-9A-HJKMNP-TV-Z]{26}(_[A-Za-z0-9._-]+)?)";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (audit_rows, file_rows, pushes) = (arg("--audit", 200_000), arg("--files", 200_000), arg("--pushes", 100_000));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::open(&dir.path().join("state.db")).unwrap();
    let empty = size(&store);
    println!("store growth: {audit_rows} audit records, {file_rows} analysis-file rows, {pushes} ledger rows");
    println!("empty store: {} KiB", empty.bytes / 1024);

    // Audit records, one transaction each as every writer appends them.
    let mut payload = 0u64;
    let started = Instant::now();
    for n in 0..audit_rows {
        let entry = audit_entry(n);
        payload += [entry.actor, entry.action.name(), entry.party, entry.subject, entry.outcome, entry.detail]
            .iter()
            .map(|f| f.len() as u64)
            .sum::<u64>()
            + 2 * 64
            + 16;
        store.append_audit(&entry).unwrap();
    }
    let append = started.elapsed();
    let after_audit = size(&store);
    let per_record = per_row(after_audit.bytes - empty.bytes, audit_rows);
    let started = Instant::now();
    let check = store.verify_audit().unwrap();
    let verify = started.elapsed();
    row(
        "audit record",
        per_record,
        payload as f64 / audit_rows as f64,
        &format!(
            "append {:.1} µs each; verify {:.2} s per million ({check:?})",
            micros(append, audit_rows),
            verify.as_secs_f64() * 1e6 / audit_rows as f64
        ),
    );

    // Analysis-file rows, as uploads record them.
    let mut payload = 0u64;
    let started = Instant::now();
    for batch in 0..file_rows.div_ceil(1000) {
        store
            .in_transaction(|store| {
                for n in batch * 1000..((batch + 1) * 1000).min(file_rows) {
                    let file = file_record(n);
                    payload += (file.party.len() + file.run.len() + file.subdir.len() + file.name.len()) as u64
                        + file.sha256.len() as u64
                        + 24;
                    store.record_file(&file)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let insert = started.elapsed();
    let after_files = size(&store);
    let per_file = per_row(after_files.bytes - after_audit.bytes, file_rows);
    row(
        "analysis-file row",
        per_file,
        payload as f64 / file_rows as f64,
        &format!("insert {:.1} µs each in transactions of 1,000", micros(insert, file_rows)),
    );

    // Ledger rows, one per push.
    let mut payload = 0u64;
    for batch in 0..pushes.div_ceil(1000) {
        store
            .in_transaction(|store| {
                for n in batch * 1000..((batch + 1) * 1000).min(pushes) {
                    let push = ledger_row(n);
                    payload += (push.party.len() + push.run.len() + push.database.len() + push.exit.len()) as u64
                        + push.key_id.as_ref().map_or(0, |k| k.len() as u64)
                        + 8 * 3
                        + 3;
                    store.record_sync(&push)?;
                }
                Ok(())
            })
            .unwrap();
    }
    let after_ledger = size(&store);
    let per_push = per_row(after_ledger.bytes - after_files.bytes, pushes);
    row("ledger row", per_push, payload as f64 / pushes as f64, "");

    // The audit trail archived: every record so far into a file, sealed out of the store.
    let archive_path = dir.path().join("audit-archive.jsonl");
    let started = Instant::now();
    let plan = store.plan_audit_archive(evosync::time::now() + 1).unwrap();
    let planned = started.elapsed();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&archive_path).unwrap());
    store.write_audit_archive(&plan, &mut out).unwrap();
    out.flush().unwrap();
    out.get_ref().sync_all().unwrap();
    drop(out);
    let written = started.elapsed();
    let sha256 = evosync::time::hex(&Sha256::digest(std::fs::read(&archive_path).unwrap()));
    let before_seal = Instant::now();
    store.seal_audit_archive(&plan, &sha256, "audit-archive.jsonl", "bench").unwrap();
    let sealed = before_seal.elapsed();
    let archived = size(&store);
    let archive_bytes = std::fs::metadata(&archive_path).unwrap().len();
    println!(
        "audit archive of {} records: plan (chain verified) {:.2} s, file written {:.2} s, sealed (one transaction) \
         {:.2} s; {:.2} s per million in all",
        plan.records,
        planned.as_secs_f64(),
        (written - planned).as_secs_f64(),
        sealed.as_secs_f64(),
        (written + sealed).as_secs_f64() * 1e6 / plan.records as f64
    );
    println!(
        "  archive file: {:.0} bytes per record ({:.0} MB per million; {:.2} × the record in the store)",
        per_row(archive_bytes, plan.records),
        per_row(archive_bytes, plan.records),
        per_row(archive_bytes, plan.records) / per_record
    );
    println!(
        "  store after: {:.1} MB, {:.1} MB of it free pages (reused before the file grows)",
        mb(archived.bytes),
        mb(archived.free)
    );
    let refill = audit_rows / 2;
    for n in 0..refill {
        store.append_audit(&audit_entry(n)).unwrap();
    }
    let refilled = size(&store);
    println!(
        "  {refill} new records after the archive: the file grew {:.1} MB (free pages now {:.1} MB)",
        mb(refilled.bytes.saturating_sub(archived.bytes)),
        mb(refilled.free)
    );

    let backup_path = dir.path().join("backup.db");
    let started = Instant::now();
    store.backup_to(&backup_path).unwrap();
    let backup = started.elapsed();
    println!(
        "backup of the {:.1} MB store: {:.2} s ({:.0} MB/s)",
        mb(refilled.bytes),
        backup.as_secs_f64(),
        mb(refilled.bytes) / backup.as_secs_f64()
    );
    store.connection().execute_batch("VACUUM").unwrap();
    let vacuumed = size(&store);
    println!("VACUUM: {:.1} MB → {:.1} MB", mb(refilled.bytes), mb(vacuumed.bytes));
}

struct Size {
    bytes: u64,
    free: u64,
}

/// The store's size with its WAL checkpointed into it, and the bytes of its free pages.
fn size(store: &Store) -> Size {
    let conn = store.connection();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    let pragma =
        |name: &str| -> u64 { conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
    let page = pragma("page_size");
    Size { bytes: pragma("page_count") * page, free: pragma("freelist_count") * page }
}

fn row(what: &str, bytes_per_row: f64, payload_per_row: f64, note: &str) {
    println!(
        "{what:<18} {bytes_per_row:>6.0} bytes each, {:>7.1} MB per million; its fields {payload_per_row:.0} bytes \
         ({:.2}×) {note}",
        bytes_per_row,
        bytes_per_row / payload_per_row
    );
}

fn per_row(bytes: u64, rows: u64) -> f64 {
    bytes as f64 / rows.max(1) as f64
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn micros(elapsed: Duration, rows: u64) -> f64 {
    elapsed.as_secs_f64() * 1e6 / rows.max(1) as f64
}

/// The records of pushes as the gate and the catalog leave them (the run folder's decision, the sandbox's, the
/// outcome, the verdict), one refusal in 20 and one admin action in 50.
fn audit_entry(n: u64) -> AuditEntry<'static> {
    let subject = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run/genomes.sqlite";
    let gate = "gate:key:4f1c2a9be07d3356";
    match n % 100 {
        k if k % 20 == 19 => AuditEntry {
            actor: gate,
            action: AuditAction::Gate,
            party: "acme",
            subject,
            outcome: "refuse:run-name",
            detail: REFUSAL,
        },
        49 | 99 => AuditEntry {
            actor: "http:admin:3c0ffee5d00dfeed",
            action: AuditAction::ApiKeyIssue,
            party: "acme",
            subject: "9d2e4b7a1c3f5e60",
            outcome: "ok",
            detail: "worker-7",
        },
        k => match k % 4 {
            0 => AuditEntry {
                actor: gate,
                action: AuditAction::Gate,
                party: "acme",
                subject,
                outcome: "allow",
                detail: "exists",
            },
            1 => AuditEntry {
                actor: gate,
                action: AuditAction::Gate,
                party: "acme",
                subject,
                outcome: "allow",
                detail: SANDBOX,
            },
            2 => AuditEntry {
                actor: gate,
                action: AuditAction::Gate,
                party: "acme",
                subject,
                outcome: "done:0",
                detail: "",
            },
            _ => AuditEntry {
                actor: "serve:catalog",
                action: AuditAction::Verify,
                party: "acme",
                subject,
                outcome: "ok",
                detail: "",
            },
        },
    }
}

/// An upload's row: a run of 1,000 files, named as the workers name them.
fn file_record(n: u64) -> FileRecord {
    let run = format!("01KFYA32R09C5KJYNH1SM{:05}_CMA-MAE_run", n / 1000);
    let (subdir, name) = match n % 10 {
        0 => ("analysisResults/trees".to_owned(), format!("tree_{run}_step-{}.json.gz", n * 100)),
        1 => ("analysisResults".to_owned(), format!("lineage_{run}_step-{}.json.gz", n * 100)),
        _ => ("analysisResults".to_owned(), format!("qd-scores_{run}_step-{}_thrshld_0.05.json.gz", n * 100)),
    };
    let sha256 = evosync::time::hex(&Sha256::digest(n.to_le_bytes()));
    FileRecord {
        party: "acme".into(),
        run,
        subdir,
        name,
        size: 20_000 + n % 5000,
        mtime_ns: 1_780_000_000_000_000_000 + n as i64,
        sha256,
        stored_at: 1_780_000_000 + n as i64,
    }
}

fn ledger_row(n: u64) -> LedgerRow {
    LedgerRow {
        party: "acme".into(),
        key_id: Some("4f1c2a9be07d3356".into()),
        run: format!("01KFYA32R09C5KJYNH1SM{:05}_CMA-MAE_run", n / 200),
        database: if n.is_multiple_of(2) { "genomes.sqlite" } else { "features.sqlite" }.into(),
        started_at: 1_780_000_000 + n as i64,
        seconds: 0.4 + (n % 100) as f64 / 100.0,
        exit: "0".into(),
        replica_bytes: Some(188_743_680 + n),
        transport: Transport::Ssh,
        changed: Some(true),
    }
}
