//! The catalog in the service: starting its pipeline (`catalog::pipeline`, which owns the flow from a finished push
//! to publication), turning what it did into the service's events, metrics, log lines and quota changes, and the
//! walks that measure each party's usage off the request path.

use super::error::ApiError;
use super::state::{blocking, AppState, Shared};
use crate::access::Change;
use crate::catalog::inspect::Verdict;
use crate::catalog::pipeline::{CatalogEvent, Hooks, Pipeline};
use crate::fs::confine::PartyTree;
use crate::log::{Line, SERVE};
use crate::store::{AuditAction, AuditEntry, Store};
use crate::time::{now, rfc3339};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How old a party's measured usage may grow before it is walked again (the operations that change it keep it
/// current in between; a walk catches what nothing reported, such as a file an administrator removed).
const USAGE_WALK_EVERY: Duration = Duration::from_secs(6 * 3600);

/// What the pipeline's work means to the service.
struct ServiceHooks {
    state: Weak<AppState>,
}

impl Hooks for ServiceHooks {
    fn announce(&self, event: &CatalogEvent) {
        let Some(state) = self.state.upgrade() else { return };
        let (kind, json) = match event {
            CatalogEvent::Verified { party, run, database, ok, seconds, reason } => {
                let label = if *ok { "ok" } else { "refused" };
                state.metrics.add(&format!("evosync_verifications_total{{outcome=\"{label}\"}}"), 1);
                state.metrics.add_seconds("evosync_verification_seconds_total", *seconds);
                let json = serde_json::json!({ "type": "verified", "party": party, "run": run, "database": database,
                    "ok": ok, "seconds": seconds, "reason": reason, "at": rfc3339(now()) });
                ("verified", json)
            }
            CatalogEvent::Published { party, run } => {
                let json = serde_json::json!({ "type": "published", "party": party, "run": run, "reason": null,
                    "at": rfc3339(now()) });
                ("published", json)
            }
            CatalogEvent::Withdrawn { party, run, reason } => {
                let json = serde_json::json!({ "type": "withdrawn", "party": party, "run": run, "reason": reason,
                    "at": rfc3339(now()) });
                ("withdrawn", json)
            }
        };
        if kind != "verified" {
            state.metrics.add(&format!("evosync_catalog_changes_total{{change=\"{kind}\"}}"), 1);
        }
        Line::of(SERVE).field("event", kind).payload(&json).to_stderr();
        state.announce(&json);
    }

    fn usage(&self, party: &str, change: Change) {
        if let Some(state) = self.state.upgrade() {
            state.quota.change(party, change);
        }
    }
}

/// Starts the catalog's pipeline (which resumes what a stop left in the store) and the usage walks.
pub fn start(state: &Shared) -> Result<(), crate::catalog::pipeline::PipelineError> {
    let hooks = Arc::new(ServiceHooks { state: Arc::downgrade(state) });
    let pipeline = Pipeline::start(state.config.clone(), state.config_path.clone(), hooks)?;
    let _ = state.pipeline.set(pipeline);
    let walker = state.clone();
    std::thread::Builder::new()
        .name("usage-walks".into())
        .spawn(move || walk_usage(&walker))
        .map_err(|e| crate::catalog::pipeline::PipelineError::Other(e.to_string()))?;
    Ok(())
}

/// Stops the pipeline (the service is shutting down): what is left stays in the store.
pub fn stop(state: &AppState) {
    if let Some(pipeline) = state.pipeline.get() {
        pipeline.stop();
    }
}

/// Checks a run's replicas again (the dashboard's and the admin API's "re-verify"), through the pipeline, and
/// records it in the audit trail once the verdicts are in, as `actor`: `ok` when every replica passed, `refuse` when
/// one did not, `error` when the check could not run. Returns the run's party and each database's verdict.
pub async fn reverify(state: &Shared, actor: String, run: &str) -> Result<(String, Vec<(String, Verdict)>), ApiError> {
    let name = run.to_owned();
    let party = blocking(state, move |_, store| {
        store.run(&name)?.map(|found| found.party).ok_or(ApiError::NoSuchRun { run: name })
    })
    .await?;
    let result = check_again(state, &party, run).await;
    let (outcome, detail) = match &result {
        Ok(verdicts) if verdicts.iter().all(|(_, v)| v.ok) => ("ok", verdict_summary(verdicts)),
        Ok(verdicts) => ("refuse", verdict_summary(verdicts)),
        Err(error) => ("error", error.to_string()),
    };
    let (who, whose, what) = (actor, party.clone(), run.to_owned());
    blocking(state, move |_, store| {
        let entry = AuditEntry {
            actor: &who,
            action: AuditAction::RunVerify,
            party: &whose,
            subject: &what,
            outcome,
            detail: &detail,
        };
        Ok(store.append_audit(&entry)?)
    })
    .await?;
    Ok((party, result?))
}

/// `genomes.sqlite: ok; features.sqlite: <reason>`, or `no replica yet`.
fn verdict_summary(verdicts: &[(String, Verdict)]) -> String {
    if verdicts.is_empty() {
        return "no replica yet".into();
    }
    let each: Vec<String> = verdicts
        .iter()
        .map(|(database, v)| match (v.ok, &v.reason) {
            (true, _) => format!("{database}: ok"),
            (false, reason) => format!("{database}: {}", reason.as_deref().unwrap_or("refused")),
        })
        .collect();
    each.join("; ")
}

async fn check_again(state: &Shared, party: &str, run: &str) -> Result<Vec<(String, Verdict)>, ApiError> {
    let policy = state.auth.policy(state, party)?;
    let tree = state.replica_root().and_then(|root| PartyTree::open_in(&root, party)).map_err(ApiError::Confine)?;
    let folder = tree.existing_run_folder(run).map_err(ApiError::Confine)?;
    let databases: Vec<String> = policy
        .databases
        .iter()
        .filter(|database| folder.as_ref().and_then(|f| f.database_size(database)).is_some())
        .cloned()
        .collect();
    if databases.is_empty() {
        return Ok(Vec::new());
    }
    let pipeline = state
        .pipeline
        .get()
        .cloned()
        .ok_or_else(|| ApiError::Internal("the catalog's pipeline is not running".into()))?;
    let (party, run) = (party.to_owned(), run.to_owned());
    tokio::task::spawn_blocking(move || pipeline.reverify(&party, &run, &databases))
        .await?
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Measures each party's usage once at start and again when its figure grows old, one walk at a time and never on
/// a request's path; keeps each result in the store for the next start.
fn walk_usage(state: &Shared) {
    let store = match Store::open_existing(&state.config.store_path()) {
        Ok(store) => store,
        Err(error) => {
            Line::of(SERVE).field("event", "usage-error").field("error", error).to_stderr();
            return;
        }
    };
    if let Ok(remembered) = store.remembered_usage() {
        for (party, usage) in remembered {
            state.quota.remember(&party, usage);
        }
    }
    loop {
        let parties = store.parties().map(|p| p.into_iter().map(|p| p.name).collect::<Vec<_>>()).unwrap_or_default();
        for party in parties {
            if state.quota.needs_walk(&party, USAGE_WALK_EVERY) {
                walk_one(state, &store, &party);
            }
        }
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// One party's walk (unless one is in flight already).
pub fn walk_one(state: &AppState, store: &Store, party: &str) {
    let Some(walk) = state.quota.start_walk(party) else { return };
    let started = std::time::Instant::now();
    let runs: Vec<String> =
        store.runs(Some(party)).map(|r| r.into_iter().map(|r| r.name).collect()).unwrap_or_default();
    let tree = state.replica_root().and_then(|root| PartyTree::open_in(&root, party)).map_err(|e| e.to_string());
    let homes = state.homes().ok();
    let measured = tree.and_then(|tree| crate::access::measure(&tree, homes.as_deref(), &runs));
    match measured {
        Ok(usage) => {
            let usage = walk.finish(usage);
            let _ = store.remember_usage(party, usage, now());
            Line::of(SERVE)
                .field("event", "usage")
                .field("party", party)
                .field("bytes", usage.bytes)
                .field("files", usage.files)
                .field("seconds", format!("{:.3}", started.elapsed().as_secs_f64()))
                .to_stderr();
        }
        Err(error) => {
            Line::of(SERVE).field("event", "usage-error").field("party", party).field("error", error).to_stderr()
        }
    }
}
