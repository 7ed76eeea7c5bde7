//! The dashboard's read views, each a handler that gathers its figures on a blocking thread (store reads, file sizes)
//! and renders a template: the overview, the parties with their keys and quotas, the runs (filtered by party and
//! state, in pages), one run with its push history, the live feed, and the audit trail with its chain check.

use super::chart::{self, Chart, Hour};
use super::feed::{self, FeedItem};
use super::pages::{ago, bytes, page, query, seconds, when, Frame, PageError};
use super::session::SignedIn;
use crate::access::{KeyState, Usage};
use crate::names::{is_party_name, is_plain_segment, MAX_SEGMENT_BYTES};
use crate::serve::error::ApiError;
use crate::serve::state::{blocking, Shared};
use crate::store::{ChainCheck, PushRecord, Run, Store, Verification};
use askama::Template;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const DAY: i64 = 86_400;
/// Runs per page of the runs view.
const RUNS_PER_PAGE: usize = 100;
/// Pushes of a run shown (table and chart).
const RUN_HISTORY: u32 = 120;
/// Audit records per page.
const AUDIT_PER_PAGE: u32 = 100;

type Page = Result<Response, PageError>;

// ---- overview ----

struct PartySummary {
    name: String,
    enabled: bool,
    runs: usize,
    pushes: u64,
    failed: u64,
}

struct RefusalCount {
    source: &'static str,
    reason: String,
    count: u64,
}

struct VerificationRow {
    party: String,
    run: String,
    database: String,
    reason: String,
    when: String,
}

#[derive(Template)]
#[template(path = "overview.html", config = "src/serve/dashboard/askama.toml")]
struct OverviewPage {
    frame: Frame,
    parties: Vec<PartySummary>,
    enabled_parties: usize,
    runs: usize,
    published: Option<usize>,
    pushes: u64,
    failed_pushes: u64,
    pushed_bytes: String,
    uploads: u64,
    upload_bytes: String,
    refusals: Vec<RefusalCount>,
    refusal_total: u64,
    failures: Vec<VerificationRow>,
    chart: Chart,
    recent: Vec<FeedItem>,
}

pub async fn overview(session: SignedIn, State(state): State<Shared>) -> Page {
    let frame = Frame::new(&state, &session, "overview");
    let page_data = blocking(&state, move |state, store| {
        let now = crate::time::now();
        let since = now - DAY;
        let parties = store.parties()?;
        let runs = store.runs(None)?;
        let mut runs_by_party: HashMap<&str, usize> = HashMap::new();
        for run in &runs {
            *runs_by_party.entry(run.party.as_str()).or_default() += 1;
        }
        let by_party: HashMap<String, (u64, u64)> =
            store.pushes_by_party_since(since)?.into_iter().map(|(p, n, f)| (p, (n, f))).collect();
        let hourly_pushes = store.hourly_pushes(since)?;
        let hourly_uploads = store.hourly_uploads(since)?;
        let first_hour = now / 3600 - 23;
        let mut hours: Vec<Hour> =
            (0..24).map(|n| Hour { start: (first_hour + n) * 3600, ..Hour::default() }).collect();
        for h in &hourly_pushes {
            if let Some(hour) = hours.get_mut((h.hour - first_hour) as usize).filter(|_| h.hour >= first_hour) {
                hour.pushes = h.pushes;
                hour.failed = h.failed;
                hour.bytes += h.bytes;
            }
        }
        for h in &hourly_uploads {
            if let Some(hour) = hours.get_mut((h.hour - first_hour) as usize).filter(|_| h.hour >= first_hour) {
                hour.uploads = h.files;
                hour.bytes += h.bytes;
            }
        }
        let mut refusals: Vec<RefusalCount> = store
            .gate_refusals_since(since)?
            .into_iter()
            .map(|(reason, count)| RefusalCount { source: "gate", reason, count })
            .collect();
        refusals.extend(
            state.dashboard.feed.service_refusals_since(since).into_iter().map(|(reason, count)| RefusalCount {
                source: "service",
                reason,
                count,
            }),
        );
        refusals.sort_by_key(|refusal| std::cmp::Reverse(refusal.count));
        let failures = store
            .verifications(None)?
            .into_iter()
            .filter(|v| !v.ok)
            .map(|v| VerificationRow {
                reason: v.reason.unwrap_or_default(),
                when: when(v.at),
                party: v.party,
                run: v.run,
                database: v.database,
            })
            .collect();
        let published = published_runs(state).map(|set| set.len());
        Ok(OverviewPage {
            enabled_parties: parties.iter().filter(|p| p.enabled).count(),
            parties: parties
                .into_iter()
                .map(|party| {
                    let (pushes, failed) = by_party.get(&party.name).copied().unwrap_or_default();
                    PartySummary {
                        runs: runs_by_party.get(party.name.as_str()).copied().unwrap_or(0),
                        name: party.name,
                        enabled: party.enabled,
                        pushes,
                        failed,
                    }
                })
                .collect(),
            runs: runs.len(),
            published,
            pushes: hourly_pushes.iter().map(|h| h.pushes).sum(),
            failed_pushes: hourly_pushes.iter().map(|h| h.failed).sum(),
            pushed_bytes: bytes(hourly_pushes.iter().map(|h| h.bytes).sum()),
            uploads: hourly_uploads.iter().map(|h| h.files).sum(),
            upload_bytes: bytes(hourly_uploads.iter().map(|h| h.bytes).sum()),
            refusal_total: refusals.iter().map(|r| r.count).sum(),
            refusals,
            failures,
            chart: chart::hourly(&hours),
            recent: feed::recent(state, store, 8)?,
            frame,
        })
    })
    .await?;
    page(StatusCode::OK, &page_data)
}

/// The runs the catalog publishes now (`catalog_root/RUN`), or `None` when the catalog cannot be read.
fn published_runs(state: &Shared) -> Option<BTreeSet<String>> {
    let root = state.config.catalog_root();
    let entries = std::fs::read_dir(root).ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect(),
    )
}

// ---- parties ----

struct KeyRow {
    id: String,
    /// The fingerprint of an SSH key, the name of an API key.
    label: String,
    comment: String,
    state: &'static str,
    active: bool,
    last_used: String,
    expires: String,
}

/// A quota as a `<meter>`: figures for its attributes, and the sentence beside it.
struct Quota {
    label: &'static str,
    used: u64,
    /// `None`: no limit.
    max: Option<u64>,
    high: u64,
    text: String,
}

impl Quota {
    fn new(label: &'static str, used: u64, max: Option<u64>, show: impl Fn(u64) -> String) -> Quota {
        let text = match max {
            Some(max) => {
                let percent = used.saturating_mul(100).checked_div(max).unwrap_or(100).min(999);
                format!("{} of {} ({percent} %)", show(used), show(max))
            }
            None => format!("{} (no limit)", show(used)),
        };
        Quota { label, used, max, high: max.map(|m| m / 10 * 9).unwrap_or(0), text }
    }
}

struct PartyCard {
    name: String,
    enabled: bool,
    problem: Option<String>,
    quotas: Vec<Quota>,
    ssh_keys: Vec<KeyRow>,
    api_keys: Vec<KeyRow>,
}

#[derive(Template)]
#[template(path = "parties.html", config = "src/serve/dashboard/askama.toml")]
struct PartiesPage {
    frame: Frame,
    parties: Vec<PartyCard>,
}

pub async fn parties(session: SignedIn, State(state): State<Shared>) -> Page {
    let frame = Frame::new(&state, &session, "parties");
    let cards = blocking(&state, |state, store| {
        let now = crate::time::now();
        let runs = store.runs(None)?;
        let mut cards = Vec::new();
        for party in store.parties()? {
            let key_time = |at: Option<i64>, none: &str| at.map(|at| ago(now, at)).unwrap_or_else(|| none.into());
            let ssh_keys = store
                .ssh_keys(Some(&party.name))?
                .into_iter()
                .map(|key| {
                    let state = KeyState::of_ssh_key(&key, party.enabled, now);
                    KeyRow {
                        label: key.fingerprint,
                        comment: key.comment,
                        state: state.label(),
                        active: key.revoked_at.is_none(),
                        last_used: key_time(key.last_used_at, "never"),
                        expires: key_time(key.expires_at, "never"),
                        id: key.id,
                    }
                })
                .collect();
            let api_keys = store
                .api_keys(Some(&party.name))?
                .into_iter()
                .map(|key| {
                    let state = KeyState::of_api_key(&key, party.enabled, now);
                    KeyRow {
                        label: key.name,
                        comment: String::new(),
                        state: state.label(),
                        active: key.revoked_at.is_none(),
                        last_used: key_time(key.last_used_at, "never"),
                        expires: key_time(key.expires_at, "never"),
                        id: key.id,
                    }
                })
                .collect();
            let run_count = runs.iter().filter(|r| r.party == party.name).count() as u64;
            let (quotas, problem) = match quotas(state, &party.name, run_count) {
                Ok(quotas) => (quotas, None),
                Err(problem) => (Vec::new(), Some(problem.to_string())),
            };
            cards.push(PartyCard { name: party.name, enabled: party.enabled, problem, quotas, ssh_keys, api_keys });
        }
        Ok(cards)
    })
    .await?;
    page(StatusCode::OK, &PartiesPage { frame, parties: cards })
}

/// A party's quota bars: bytes and files (stored plus reserved by writers in flight, from the service's quota book)
/// and runs.
fn quotas(state: &Shared, party: &str, runs: u64) -> Result<Vec<Quota>, ApiError> {
    let policy = state.auth.policy(state, party)?;
    let limits = &policy.limits;
    let taken: Usage = state.quota.headroom(party, limits).taken();
    Ok(vec![
        Quota::new("bytes", taken.bytes, limits.max_party_bytes.map(|b| b.0), bytes),
        Quota::new("files", taken.files, Some(limits.max_party_files), |n| n.to_string()),
        Quota::new("runs", runs, Some(limits.max_runs), |n| n.to_string()),
    ])
}

// ---- runs ----

/// Where a run stands, as the filter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// In the catalog.
    Published,
    /// A replica's last verification failed.
    Failing,
    /// Every pushed replica passed; not (yet) published.
    Verified,
    /// Pushed, not every replica checked yet.
    Unverified,
    /// Nothing pushed yet.
    Empty,
}

const RUN_STATES: [RunState; 5] =
    [RunState::Published, RunState::Failing, RunState::Verified, RunState::Unverified, RunState::Empty];

impl RunState {
    fn name(self) -> &'static str {
        match self {
            RunState::Published => "published",
            RunState::Failing => "failing",
            RunState::Verified => "verified",
            RunState::Unverified => "unverified",
            RunState::Empty => "empty",
        }
    }

    fn of(pushed: &[&PushRecord], verdicts: &[&Verification], published: bool) -> RunState {
        if published {
            RunState::Published
        } else if verdicts.iter().any(|v| !v.ok) {
            RunState::Failing
        } else if pushed.is_empty() {
            RunState::Empty
        } else if pushed.iter().all(|p| verdicts.iter().any(|v| v.database == p.row.database && v.ok)) {
            RunState::Verified
        } else {
            RunState::Unverified
        }
    }
}

struct ReplicaRow {
    database: String,
    size: String,
    last_push: String,
    outcome: String,
    push_ok: bool,
    duration: String,
    verification: String,
    /// `ok`, `bad` or `none`.
    verdict: &'static str,
}

struct RunRow {
    name: String,
    party: String,
    template: String,
    variant: String,
    started: String,
    state: &'static str,
    replicas: Vec<ReplicaRow>,
    files: String,
}

struct Choice {
    value: String,
    selected: bool,
}

#[derive(Template)]
#[template(path = "runs.html", config = "src/serve/dashboard/askama.toml")]
struct RunsPage {
    frame: Frame,
    parties: Vec<Choice>,
    states: Vec<Choice>,
    runs: Vec<RunRow>,
    matching: usize,
    page: usize,
    pages: usize,
    previous: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct RunFilter {
    party: String,
    state: String,
    page: usize,
}

impl RunFilter {
    fn link(&self, page: usize) -> String {
        let query = [("party", self.party.as_str()), ("state", self.state.as_str()), ("page", &page.to_string())];
        format!("/dashboard/runs?{}", serde_urlencoded::to_string(query).unwrap_or_default())
    }
}

pub async fn runs(session: SignedIn, State(state): State<Shared>, uri: Uri) -> Page {
    let filter: RunFilter = query(&uri)?;
    if !filter.party.is_empty() && !is_party_name(&filter.party) {
        return Err(ApiError::BadQuery(format!("'{}' is not a party name", filter.party)).into());
    }
    let wanted_state = match filter.state.as_str() {
        "" => None,
        name => Some(
            RUN_STATES
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| ApiError::BadQuery(format!("'{name}' is not a run state")))?,
        ),
    };
    let frame = Frame::new(&state, &session, "runs");
    let page_data = blocking(&state, move |state, store| {
        let party_filter = (!filter.party.is_empty()).then_some(filter.party.as_str());
        let runs = store.runs(party_filter)?;
        let latest = store.latest_pushes()?;
        let verdicts = store.verifications(None)?;
        let published = published_runs(state).unwrap_or_default();
        let mut pushed: HashMap<(&str, &str), Vec<&PushRecord>> = HashMap::new();
        for push in &latest {
            pushed.entry((push.row.party.as_str(), push.row.run.as_str())).or_default().push(push);
        }
        let mut judged: HashMap<(&str, &str), Vec<&Verification>> = HashMap::new();
        for verdict in &verdicts {
            judged.entry((verdict.party.as_str(), verdict.run.as_str())).or_default().push(verdict);
        }
        let matching: Vec<(&Run, RunState)> = runs
            .iter()
            .map(|run| {
                let key = (run.party.as_str(), run.name.as_str());
                let empty = Vec::new();
                let state = RunState::of(
                    pushed.get(&key).unwrap_or(&empty),
                    judged.get(&key).map(Vec::as_slice).unwrap_or_default(),
                    published.contains(&run.name),
                );
                (run, state)
            })
            .filter(|(_, state)| wanted_state.is_none_or(|wanted| wanted == *state))
            .collect();
        let pages = matching.len().div_ceil(RUNS_PER_PAGE).max(1);
        let page = filter.page.clamp(1, pages);
        let mut rows = Vec::new();
        for (run, run_state) in matching.iter().skip((page - 1) * RUNS_PER_PAGE).take(RUNS_PER_PAGE) {
            let key = (run.party.as_str(), run.name.as_str());
            let pushes: Vec<&PushRecord> = pushed.get(&key).cloned().unwrap_or_default();
            let verdicts: Vec<&Verification> = judged.get(&key).cloned().unwrap_or_default();
            rows.push(run_row(state, store, run, *run_state, &pushes, &verdicts)?);
        }
        let parties =
            store.parties()?.into_iter().map(|p| Choice { selected: p.name == filter.party, value: p.name }).collect();
        let states = RUN_STATES
            .iter()
            .map(|s| Choice { value: s.name().to_owned(), selected: Some(*s) == wanted_state })
            .collect();
        Ok(RunsPage {
            frame,
            parties,
            states,
            runs: rows,
            matching: matching.len(),
            page,
            pages,
            previous: (page > 1).then(|| filter.link(page - 1)),
            next: (page < pages).then(|| filter.link(page + 1)),
        })
    })
    .await?;
    page(StatusCode::OK, &page_data)
}

/// The databases a run's replicas are shown for: its party's policy's, and any other the ledger has pushes of.
fn databases_of(state: &Shared, party: &str, pushes: &[&PushRecord]) -> Vec<String> {
    let mut databases = match state.auth.policy(state, party) {
        Ok(policy) => policy.databases.clone(),
        Err(_) => crate::policy::DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect(),
    };
    for push in pushes {
        if !databases.contains(&push.row.database) {
            databases.push(push.row.database.clone());
        }
    }
    databases
}

fn replica_size(state: &Shared, party: &str, run: &str, database: &str) -> Option<u64> {
    let path = state.config.replica_root.join(party).join(run).join(database);
    std::fs::symlink_metadata(path).ok().filter(|m| m.is_file()).map(|m| m.len())
}

fn replica_rows(state: &Shared, run: &Run, pushes: &[&PushRecord], verdicts: &[&Verification]) -> Vec<ReplicaRow> {
    let now = crate::time::now();
    databases_of(state, &run.party, pushes)
        .into_iter()
        .map(|database| {
            let push = pushes.iter().find(|p| p.row.database == database);
            let verdict = verdicts.iter().find(|v| v.database == database);
            let (verification, verdict_class) = match verdict {
                Some(v) if v.ok => (format!("passed {} ({})", ago(now, v.at), seconds(v.seconds)), "ok"),
                Some(v) => (format!("failed {}: {}", ago(now, v.at), v.reason.clone().unwrap_or_default()), "bad"),
                None => ("not checked".to_owned(), "none"),
            };
            ReplicaRow {
                size: replica_size(state, &run.party, &run.name, &database).map(bytes).unwrap_or_else(|| "—".into()),
                last_push: push.map(|p| ago(now, p.row.started_at)).unwrap_or_else(|| "never".into()),
                outcome: push.map(|p| format!("exit {}", p.row.exit)).unwrap_or_default(),
                push_ok: push.is_some_and(|p| p.row.exit == "0"),
                duration: push.map(|p| seconds(p.row.seconds)).unwrap_or_default(),
                verification,
                verdict: verdict_class,
                database,
            }
        })
        .collect()
}

fn file_counts(store: &Store, run: &Run) -> Result<String, ApiError> {
    let counts = store.file_counts(&run.party, &run.name)?;
    if counts.is_empty() {
        return Ok("none".into());
    }
    Ok(counts.iter().map(|(subdir, n, _)| format!("{subdir}: {n}")).collect::<Vec<_>>().join(", "))
}

fn run_row(
    state: &Shared,
    store: &Store,
    run: &Run,
    run_state: RunState,
    pushes: &[&PushRecord],
    verdicts: &[&Verification],
) -> Result<RunRow, ApiError> {
    Ok(RunRow {
        name: run.name.clone(),
        party: run.party.clone(),
        template: run.template_name.clone().unwrap_or_default(),
        variant: run.ecosystem_variant.clone().unwrap_or_default(),
        started: run.started_at.clone().unwrap_or_default(),
        state: run_state.name(),
        replicas: replica_rows(state, run, pushes, verdicts),
        files: file_counts(store, run)?,
    })
}

struct PushRow {
    when: String,
    database: String,
    /// `ssh`, or `websocket` through the tunnel.
    transport: &'static str,
    exit: String,
    ok: bool,
    duration: String,
    size: String,
    verdict: String,
}

#[derive(Template)]
#[template(path = "run.html", config = "src/serve/dashboard/askama.toml")]
struct RunPage {
    frame: Frame,
    run: RunRow,
    registered: String,
    published: Option<bool>,
    chart: Chart,
    pushes: Vec<PushRow>,
}

/// A run name from a URL, checked before it reaches the store: a plain segment of at most 255 bytes.
fn run_name(run: &str) -> Result<(), ApiError> {
    if run.len() > MAX_SEGMENT_BYTES || !is_plain_segment(run) {
        return Err(ApiError::NoSuchRun { run: super::pages::clip(run, 64) });
    }
    Ok(())
}

pub async fn run(session: SignedIn, State(state): State<Shared>, UrlPath(name): UrlPath<String>) -> Page {
    run_name(&name)?;
    let frame = Frame::new(&state, &session, "runs");
    let page_data = blocking(&state, move |state, store| {
        let run = store.run(&name)?.ok_or_else(|| ApiError::NoSuchRun { run: name.clone() })?;
        let history = store.run_pushes(&run.party, &run.name, RUN_HISTORY)?;
        let verdicts = store.verifications(Some(&run.name))?;
        let verdicts: Vec<&Verification> = verdicts.iter().filter(|v| v.party == run.party).collect();
        let mut latest: BTreeMap<&str, &PushRecord> = BTreeMap::new();
        for push in &history {
            latest.entry(push.row.database.as_str()).or_insert(push);
        }
        let latest: Vec<&PushRecord> = latest.into_values().collect();
        let published = published_runs(state).map(|set| set.contains(&run.name));
        let run_state = RunState::of(&latest, &verdicts, published == Some(true));
        let databases = databases_of(state, &run.party, &latest);
        let points: Vec<chart::Push> = history
            .iter()
            .rev()
            .map(|push| chart::Push {
                at: push.row.started_at,
                database_index: databases.iter().position(|d| *d == push.row.database).unwrap_or(0),
                database: push.row.database.clone(),
                ok: push.row.exit == "0",
                exit: push.row.exit.clone(),
                seconds: push.row.seconds,
                bytes: push.row.replica_bytes,
            })
            .collect();
        let pushes = history
            .iter()
            .map(|push| PushRow {
                when: when(push.row.started_at),
                database: push.row.database.clone(),
                transport: push.row.transport.name(),
                exit: push.row.exit.clone(),
                ok: push.row.exit == "0",
                duration: seconds(push.row.seconds),
                size: push.row.replica_bytes.map(bytes).unwrap_or_else(|| "—".into()),
                verdict: match (push.verified, &push.verify_reason) {
                    (Some(true), _) => "passed".into(),
                    (Some(false), reason) => format!("failed: {}", reason.clone().unwrap_or_default()),
                    (None, _) => "—".into(),
                },
            })
            .collect();
        Ok(RunPage {
            frame,
            registered: when(run.created_at),
            run: run_row(state, store, &run, run_state, &latest, &verdicts)?,
            published,
            chart: chart::pushes(&points, &databases),
            pushes,
        })
    })
    .await?;
    page(StatusCode::OK, &page_data)
}

// ---- the live feed ----

#[derive(Template)]
#[template(path = "feed.html", config = "src/serve/dashboard/askama.toml")]
struct FeedPage {
    frame: Frame,
    items: Vec<FeedItem>,
}

pub async fn live_feed(session: SignedIn, State(state): State<Shared>) -> Page {
    let frame = Frame::new(&state, &session, "feed");
    let items = blocking(&state, |state, store| Ok(feed::recent(state, store, 100)?)).await?;
    page(StatusCode::OK, &FeedPage { frame, items })
}

// ---- the audit trail ----

struct AuditRow {
    seq: i64,
    when: String,
    actor: String,
    action: String,
    party: String,
    subject: String,
    outcome: String,
    refused: bool,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html", config = "src/serve/dashboard/askama.toml")]
struct AuditPage {
    frame: Frame,
    intact: bool,
    check: String,
    records: Vec<AuditRow>,
    newer: Option<String>,
    older: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AuditQuery {
    before: Option<i64>,
}

pub async fn audit(session: SignedIn, State(state): State<Shared>, uri: Uri) -> Page {
    let audit_query: AuditQuery = query(&uri)?;
    let frame = Frame::new(&state, &session, "audit");
    // One chain check at a time: it reads the whole trail.
    let _checking = state.dashboard.chain_check.lock().await;
    let page_data = blocking(&state, move |_, store| {
        let check = store.verify_audit()?;
        let seal = store.audit_seals()?.pop();
        let (intact, check) = match (check, seal) {
            (ChainCheck::Intact { records }, None) => (true, format!("The hash chain is intact: {records} records.")),
            (ChainCheck::Intact { records }, Some(seal)) => (
                true,
                format!(
                    "The hash chain is intact: {records} records, from the seal of records {}-{} (archived {}, \
                     archive SHA-256 {}).",
                    seal.first_seq,
                    seal.last_seq,
                    when(seal.sealed_at),
                    seal.archive_sha256
                ),
            ),
            (ChainCheck::Broken { seq, reason }, _) => {
                (false, format!("The hash chain breaks at record {seq}: {reason}. Nothing after it can be trusted."))
            }
        };
        let records = store.audit_newest_first(audit_query.before, AUDIT_PER_PAGE)?;
        let (first, last) = (store.first_audit_seq()?, store.last_audit_seq()?);
        let newest = records.first().map(|r| r.seq);
        let oldest = records.last().map(|r| r.seq);
        Ok(AuditPage {
            frame,
            intact,
            check,
            newer: newest
                .filter(|seq| *seq < last)
                .map(|seq| format!("/dashboard/audit?before={}", seq + 1 + i64::from(AUDIT_PER_PAGE))),
            older: oldest.filter(|seq| *seq > first).map(|seq| format!("/dashboard/audit?before={seq}")),
            records: records
                .into_iter()
                .map(|r| AuditRow {
                    seq: r.seq,
                    when: when(r.at),
                    refused: r.outcome.starts_with("refuse"),
                    actor: r.actor,
                    action: r.action,
                    party: r.party,
                    subject: r.subject,
                    outcome: r.outcome,
                    detail: r.detail,
                })
                .collect(),
        })
    })
    .await?;
    page(StatusCode::OK, &page_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LedgerRow;

    fn push(database: &str) -> PushRecord {
        PushRecord {
            id: 1,
            row: LedgerRow {
                party: "acme".into(),
                key_id: None,
                run: "R".into(),
                database: database.into(),
                started_at: 0,
                seconds: 1.0,
                exit: "0".into(),
                replica_bytes: Some(1),
                transport: crate::store::Transport::Ssh,
                changed: None,
            },
            verified: None,
            verify_seconds: None,
            verify_reason: None,
        }
    }

    fn verdict(database: &str, ok: bool) -> Verification {
        Verification {
            party: "acme".into(),
            run: "R".into(),
            database: database.into(),
            ok,
            at: 0,
            seconds: 0.1,
            reason: None,
            passing_since: None,
        }
    }

    #[test]
    fn a_runs_state_follows_its_catalog_and_verdicts() {
        let (genomes, features) = (push("genomes.sqlite"), push("features.sqlite"));
        let (pass, fail) = (verdict("genomes.sqlite", true), verdict("features.sqlite", false));
        assert_eq!(RunState::of(&[], &[], false), RunState::Empty);
        assert_eq!(RunState::of(&[&genomes], &[], false), RunState::Unverified);
        assert_eq!(RunState::of(&[&genomes], &[&pass], false), RunState::Verified);
        assert_eq!(RunState::of(&[&genomes, &features], &[&pass], false), RunState::Unverified);
        assert_eq!(RunState::of(&[&genomes, &features], &[&pass, &fail], false), RunState::Failing);
        assert_eq!(RunState::of(&[&genomes], &[&pass], true), RunState::Published);
    }

    #[test]
    fn quotas_read_as_a_share_of_their_limit() {
        let quota = Quota::new("files", 45, Some(50), |n| n.to_string());
        assert_eq!((quota.text.as_str(), quota.high), ("45 of 50 (90 %)", 45));
        assert_eq!(Quota::new("bytes", 5, None, |n| n.to_string()).text, "5 (no limit)");
        assert_eq!(Quota::new("runs", 3, Some(0), |n| n.to_string()).text, "3 of 0 (100 %)");
    }

    #[test]
    fn run_names_from_urls_are_plain_segments() {
        assert!(run_name("01KFYA32R09C5KJYNH1SM2W1DR_run").is_ok());
        assert!(run_name("..").is_err());
        assert!(run_name("a/b").is_err());
        assert!(run_name(&"a".repeat(256)).is_err());
    }
}
