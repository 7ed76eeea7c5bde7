//! The catalog in the service. After every push (the broker's `Finish`, while the gate still holds the replica's
//! lock) the replica is inspected by a confined child process (`evosync catalog inspect`, as the service's account),
//! its verdict recorded (the store's verifications and the push's ledger row, the audit trail, the events stream,
//! the metrics), and its run published or withdrawn (`catalog::reconcile`). At start, and every half minute for runs
//! that wait for a late database, the whole catalog is reconciled with the verdicts.

use super::error::ApiError;
use super::state::{blocking, AppState, Shared};
use crate::catalog::copies;
use crate::catalog::inspect::Verdict;
use crate::catalog::publish::Catalog;
use crate::catalog::reconcile::{self, Drift, Publication};
use crate::fs::locks;
use crate::log::{Line, SERVE};
use crate::store::{AuditEntry, Store, Verification};
use crate::time::{now, rfc3339};
use std::process::Stdio;
use std::time::Duration;

/// How often runs waiting for a late database are looked at.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Who the audit trail says acted.
const ACTOR: &str = "serve:catalog";

/// Opens `catalog_root` when the configuration names one.
pub fn open(config: &crate::config::Config) -> std::io::Result<Option<Catalog>> {
    config.catalog_root.as_deref().map(Catalog::open).transpose()
}

/// Verifies a replica that was just pushed (its gate holds the lock), copies what passed for readers and publishes
/// or withdraws its run, all before it returns (a re-verification; the broker uses `after_push_then_copy`).
pub async fn after_push(state: &Shared, party: &str, run: &str, database: &str, ledger_id: Option<i64>) -> Verdict {
    let verdict = verify(state, party, run, database, ledger_id).await;
    if verdict.ok && state.catalog.is_some() {
        let held = copy_lock(state, party, run, database).await;
        publish_verified(state, party, run, database, held).await;
    }
    verdict
}

/// As `after_push`, but the copy and the publication go on after it returns, so that the gate can let its worker go:
/// the copy lock, taken before it returns, keeps the next push of the replica waiting until the copy is done
/// (`gate::handover::Locks`).
pub async fn after_push_then_copy(
    state: &Shared,
    party: &str,
    run: &str,
    database: &str,
    ledger_id: Option<i64>,
) -> Verdict {
    let verdict = verify(state, party, run, database, ledger_id).await;
    if verdict.ok && state.catalog.is_some() {
        match copy_lock(state, party, run, database).await {
            Some(held) => {
                let (state, party, run, database) =
                    (state.clone(), party.to_owned(), run.to_owned(), database.to_owned());
                tokio::spawn(async move { publish_verified(&state, &party, &run, &database, Some(held)).await });
            }
            // Still under the gate's replica lock: copied before the gate hears back, as a re-verification is.
            None => publish_verified(state, party, run, database, None).await,
        }
    }
    verdict
}

/// Inspects the replica and records the verdict; one that failed withdraws its run at once.
async fn verify(state: &Shared, party: &str, run: &str, database: &str, ledger_id: Option<i64>) -> Verdict {
    keep_companions(state, party, run, database);
    let verdict = inspect(state, party, run, database).await;
    let (party, run, database) = (party.to_owned(), run.to_owned(), database.to_owned());
    let recorded = verdict.clone();
    let done = blocking(state, move |state, store| {
        record(state, store, &party, &run, &database, &recorded, ledger_id)?;
        // What passed is published once its copy is current (`publish_verified`).
        if !recorded.ok || state.catalog.is_none() {
            refresh(state, store, Some(&run))?;
        }
        Ok(())
    })
    .await;
    if let Err(error) = done {
        Line::of(SERVE).field("event", "catalog-error").field("error", error).to_stderr();
    }
    verdict
}

/// The replica's copy lock (`fs::locks::copy`); `None`, said in the log, when it cannot be had.
async fn copy_lock(state: &Shared, party: &str, run: &str, database: &str) -> Option<locks::Held> {
    let (locks_dir, wait) = (state.config.locks_dir(), Duration::from_secs(state.config.lock_wait_seconds));
    let (p, r, d) = (party.to_owned(), run.to_owned(), database.to_owned());
    let taken = tokio::task::spawn_blocking(move || locks::copy(&locks_dir, &p, &r, &d, wait)).await;
    match taken {
        Ok(Ok(Some(held))) => Some(held),
        Ok(Ok(None)) => {
            Line::of(SERVE)
                .field("event", "catalog-error")
                .field("run", run)
                .field("error", "copy lock busy")
                .to_stderr();
            None
        }
        Ok(Err(error)) => {
            Line::of(SERVE).field("event", "catalog-error").field("run", run).field("error", error).to_stderr();
            None
        }
        Err(error) => {
            Line::of(SERVE).field("event", "catalog-error").field("run", run).field("error", error).to_stderr();
            None
        }
    }
}

/// Brings the verified copy up to date with the replica that passed, then publishes its run; `held` (the copy
/// lock) is let go once both are done.
async fn publish_verified(state: &Shared, party: &str, run: &str, database: &str, held: Option<locks::Held>) {
    let (party, run, database) = (party.to_owned(), run.to_owned(), database.to_owned());
    let done = blocking(state, move |state, store| {
        refresh_copy(state, &party, &run, &database);
        let drift = refresh(state, store, Some(&run));
        drop(held);
        drift
    })
    .await;
    if let Err(error) = done {
        Line::of(SERVE).field("event", "catalog-error").field("error", error).to_stderr();
    }
}

/// Inspects every database of a run again (the dashboard's and the admin's "re-verify"), each under its replica's
/// lock, and publishes or withdraws the run.
pub async fn reverify(state: &Shared, party: &str, run: &str) -> Result<Vec<(String, Verdict)>, ApiError> {
    let policy = state.auth.policy(state, party)?;
    let mut verdicts = Vec::new();
    for database in &policy.databases {
        let (locks_dir, wait) = (state.config.locks_dir(), Duration::from_secs(state.config.lock_wait_seconds));
        let (p, r, d) = (party.to_owned(), run.to_owned(), database.clone());
        let exists = state.config.replica_root.join(party).join(run).join(database).is_file();
        if !exists {
            continue;
        }
        let held = tokio::task::spawn_blocking(move || locks::replica(&locks_dir, &p, &r, &d, wait)).await?;
        let _held = held
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .ok_or_else(|| ApiError::Internal(format!("a push of {run}/{database} holds it; try again later")))?;
        verdicts.push((database.clone(), after_push(state, party, run, database, None).await));
    }
    Ok(verdicts)
}

/// Runs `evosync catalog inspect` for one replica, within the verification's time budget.
async fn inspect(state: &AppState, party: &str, run: &str, database: &str) -> Verdict {
    let failed = |reason: String| Verdict { ok: false, seconds: 0.0, reason: Some(reason) };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return failed(format!("the check could not start: {error}")),
    };
    let mut command = tokio::process::Command::new(program);
    command
        .arg("--config")
        .arg(&state.config_path)
        .args(["catalog", "inspect", party, run, database])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => return failed(format!("the check could not start: {error}")),
    };
    // Its own budget stops SQLite; this one stops the process, should anything else hang.
    let deadline = Duration::from_secs(state.config.verify.seconds + 30);
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Err(_) => failed(format!("the check took longer than its budget of {} s", state.config.verify.seconds)),
        Ok(Err(error)) => failed(format!("the check failed: {error}")),
        Ok(Ok(output)) => match serde_json::from_slice::<Verdict>(&output.stdout) {
            Ok(verdict) if output.status.success() => verdict,
            _ => {
                let said = String::from_utf8_lossy(&output.stderr);
                failed(format!("the check could not run ({}): {}", output.status, said.trim()))
            }
        },
    }
}

/// The verdict into the store, the audit trail, the metrics and the events.
fn record(
    state: &AppState,
    store: &Store,
    party: &str,
    run: &str,
    database: &str,
    verdict: &Verdict,
    ledger_id: Option<i64>,
) -> Result<(), ApiError> {
    let at = now();
    let verification = Verification {
        party: party.to_owned(),
        run: run.to_owned(),
        database: database.to_owned(),
        ok: verdict.ok,
        at,
        seconds: verdict.seconds,
        reason: verdict.reason.clone(),
        passing_since: None,
    };
    store.record_verification(&verification, ledger_id)?;
    let (outcome, detail) =
        if verdict.ok { ("ok", String::new()) } else { ("refuse", verdict.reason.clone().unwrap_or_default()) };
    let subject = format!("{run}/{database}");
    store.append_audit(&AuditEntry {
        actor: ACTOR,
        action: "verify",
        party,
        subject: &subject,
        outcome,
        detail: &detail,
    })?;
    let label = if verdict.ok { "ok" } else { "refused" };
    state.metrics.add(&format!("evosync_verifications_total{{outcome=\"{label}\"}}"), 1);
    state.metrics.add_seconds("evosync_verification_seconds_total", verdict.seconds);
    let event = serde_json::json!({ "type": "verified", "party": party, "run": run, "database": database,
        "ok": verdict.ok, "seconds": verdict.seconds, "reason": verdict.reason, "at": rfc3339(at) });
    Line::of(SERVE).field("event", "verified").payload(&event).to_stderr();
    state.announce(&event);
    Ok(())
}

/// Makes the catalog match the verdicts, for one run or for all; announces what it published or withdrew.
fn refresh(state: &AppState, store: &Store, only: Option<&str>) -> Result<Drift, ApiError> {
    let Some(catalog) = &state.catalog else { return Ok(Drift { publish: Vec::new(), withdraw: Vec::new() }) };
    let _one_at_a_time = state.catalog_changes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let expected = reconcile::expected(store, &state.config, now(), only)?;
    let drift = reconcile::reconcile(catalog, &expected, true, only).map_err(|e| ApiError::Internal(e.to_string()))?;
    for (kind, runs) in [("published", &drift.publish), ("withdrawn", &drift.withdraw)] {
        for run in runs {
            let (party, reason) = match expected.get(run) {
                Some((Publication::Withdraw(reason), _)) => (party_of(store, run), Some(reason.clone())),
                Some((Publication::Wait { .. }, _)) => {
                    (party_of(store, run), Some("waiting for its other databases".into()))
                }
                _ => (party_of(store, run), None),
            };
            let action = if kind == "published" { "publish" } else { "withdraw" };
            let detail = reason.clone().unwrap_or_default();
            let entry =
                AuditEntry { actor: ACTOR, action, party: &party, subject: run, outcome: "ok", detail: &detail };
            store.append_audit(&entry)?;
            state.metrics.add(&format!("evosync_catalog_changes_total{{change=\"{kind}\"}}"), 1);
            let event =
                serde_json::json!({ "type": kind, "party": party, "run": run, "reason": reason, "at": rfc3339(now()) });
            Line::of(SERVE).field("event", kind).payload(&event).to_stderr();
            state.announce(&event);
        }
    }
    Ok(drift)
}

/// Brings the verified copy up to date with the replica that just passed, and says how long that took. A failed
/// copy leaves the last verified one in place.
fn refresh_copy(state: &AppState, party: &str, run: &str, database: &str) {
    let line =
        Line::of(SERVE).field("event", "copy").field("party", party).field("run", run).field("database", database);
    let started = std::time::Instant::now();
    let copied = copies::refresh(&state.config, party, run, database);
    // The copy's transfer was the replica's last connection: SQLite took its -wal and -shm away.
    keep_companions(state, party, run, database);
    let line = line.field("seconds", format!("{:.3}", started.elapsed().as_secs_f64()));
    match copied {
        Ok(_) => line.field("outcome", "made").to_stderr(),
        Err(error) => line.field("outcome", "failed").field("error", error).to_stderr(),
    }
}

/// The replica's `-wal` and `-shm`, back in place where SQLite removed them: the read-only check opens it only
/// while both exist (the gate puts them back after its push; whoever reads the replica after must too).
fn keep_companions(state: &AppState, party: &str, run: &str, database: &str) {
    let tree = state.replica_root().and_then(|root| crate::fs::confine::PartyTree::open_in(&root, party));
    let folder = tree.and_then(|tree| tree.existing_run_folder(run));
    let group_writes = state.config.account_mode == crate::config::AccountMode::PerParty;
    if let Err(error) = folder.and_then(|f| f.map_or(Ok(()), |f| f.keep_wal_companions(database, group_writes))) {
        Line::of(SERVE).field("event", "catalog-error").field("run", run).field("error", error).to_stderr();
    }
}

fn party_of(store: &Store, run: &str) -> String {
    store.run(run).ok().flatten().map(|r| r.party).unwrap_or_default()
}

/// Rebuilds the catalog from the verdicts, then keeps publishing runs whose wait for a late database is over.
pub async fn follow(state: Shared) {
    loop {
        if let Err(error) = blocking(&state, |state, store| refresh(state, store, None)).await {
            Line::of(SERVE).field("event", "catalog-error").field("error", error).to_stderr();
        }
        tokio::time::sleep(RECONCILE_EVERY).await;
    }
}
