//! The catalog's one flow, from a finished push to what readers get, with every state in the store:
//!
//! ```text
//!  gate reserves room ──► pushing ──► push ended well ──► schema check (the worker waits for it)
//!                                        │ changed nothing          │ refused ─► verdict ─► run withdrawn, copies removed
//!                                        ▼                          ▼ passed
//!                                     (no job)                   awaiting ──► apply: copy + full check in one
//!                                                                              transaction (`apply`), under the
//!                                                                              replica's lock
//!                                                                                 │ passed ─► published (`reconcile`)
//!                                                                                 └ refused ─► withdrawn, copies removed
//! ```
//!
//! `serve` hands it a push's start and end (`push_started`, `push_ended`) and nothing more. A job is in the store from
//! the push's start until its verdict is recorded (in the same transaction), so whatever stops the service, the next
//! start does what was left (`resume`, also every 30 s). The work runs on `catalog.max_parallel` threads of its own,
//! never on the service's: each apply is a confined child process, and the queue serves parties in turn, so one
//! party's large databases delay another's publication by at most one job.

use super::apply::Applied;
use super::home::{HomeError, Homes, RunHome};
use super::inspect::Verdict;
use super::reconcile::{self, Publication};
use crate::access::Change;
use crate::config::Config;
use crate::fs::{locks, sys};
use crate::log::{Line, SERVE};
use crate::store::{AuditAction, AuditEntry, LedgerRow, Store, StoreError, Verification};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How often the store's jobs and the catalog's state are looked at again.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(30);
/// Who the audit trail says acted.
const ACTOR: &str = "serve:catalog";

/// What the catalog did, for the service's events, metrics and log.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogEvent {
    Verified { party: String, run: String, database: String, ok: bool, seconds: f64, reason: Option<String> },
    Published { party: String, run: String },
    Withdrawn { party: String, run: String, reason: String },
}

/// What the service does with what the catalog did.
pub trait Hooks: Send + Sync {
    fn announce(&self, event: &CatalogEvent);
    /// A party's files changed (copies made, grown or removed).
    fn usage(&self, party: &str, change: Change);
}

/// A push's end, as its gate hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAnswer {
    Accepted,
    /// What the push left does not pass its policy's schema.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Replica {
    party: String,
    run: String,
    database: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Task {
    /// Copy and check a replica.
    Apply(Replica),
    /// Make a run's publication match its verdicts.
    Refresh { run: String },
}

impl Task {
    fn run(&self) -> &str {
        match self {
            Task::Apply(replica) => &replica.run,
            Task::Refresh { run } => run,
        }
    }
}

/// The work waiting, by party, served in turn.
#[derive(Default)]
struct Queue {
    turn: VecDeque<String>,
    waiting: HashMap<String, VecDeque<Task>>,
    queued: HashSet<Task>,
    /// Runs a worker is busy with: one task per run at a time.
    busy: HashSet<String>,
    /// Who waits for a replica's next verdict (re-verification).
    waiters: HashMap<Replica, Vec<mpsc::Sender<Verdict>>>,
    /// Who waits for a task to be done (a refused push's gate, for its run's withdrawal).
    done: HashMap<Task, Vec<mpsc::Sender<()>>>,
    /// Applies that failed without a verdict, not to be tried again before then.
    not_before: HashMap<Replica, Instant>,
    running: usize,
}

impl Queue {
    fn push(&mut self, party: &str, task: Task) {
        if self.queued.insert(task.clone()) {
            if !self.waiting.contains_key(party) {
                self.turn.push_back(party.to_owned());
            }
            self.waiting.entry(party.to_owned()).or_default().push_back(task);
        }
    }

    /// The next task whose run nobody is busy with, taking parties in turn.
    fn next(&mut self) -> Option<(String, Task)> {
        for _ in 0..self.turn.len() {
            let party = self.turn.pop_front()?;
            let tasks = self.waiting.get_mut(&party)?;
            let position = tasks.iter().position(|task| !self.busy.contains(task.run()));
            let taken = position.and_then(|at| tasks.remove(at));
            if tasks.is_empty() {
                self.waiting.remove(&party);
            } else {
                self.turn.push_back(party.clone());
            }
            if let Some(task) = taken {
                self.queued.remove(&task);
                self.busy.insert(task.run().to_owned());
                self.running += 1;
                return Some((party, task));
            }
        }
        None
    }

    fn len(&self) -> usize {
        self.queued.len()
    }
}

struct Shared {
    config: Config,
    config_path: PathBuf,
    homes: Homes,
    hooks: Arc<dyn Hooks>,
    queue: Mutex<Queue>,
    ready: Condvar,
    stopping: AtomicBool,
}

/// The catalog's flow in a long-lived process.
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
}

impl Pipeline {
    /// Opens the catalog's roots, sweeps `.incoming`, and starts the workers and the reconciler.
    pub fn start(config: Config, config_path: PathBuf, hooks: Arc<dyn Hooks>) -> Result<Pipeline, PipelineError> {
        let homes = Homes::open(&config)?;
        let swept = homes.sweep_incoming()?;
        if swept > 0 {
            Line::of(SERVE).field("event", "catalog-swept").field("files", swept).to_stderr();
        }
        let workers = config.catalog.max_parallel;
        let shared = Arc::new(Shared {
            config,
            config_path,
            homes,
            hooks,
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        for n in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("catalog-{n}"))
                .spawn(move || work(&shared))
                .map_err(|e| PipelineError::Other(format!("cannot start the catalog's workers: {e}")))?;
        }
        let pipeline = Pipeline { shared };
        let reconciler = pipeline.clone();
        std::thread::Builder::new()
            .name("catalog-reconcile".into())
            .spawn(move || {
                let tick = Duration::from_millis(250);
                while !reconciler.shared.stopping.load(Ordering::Acquire) {
                    if let Err(error) = reconciler.resume() {
                        Line::of(SERVE).field("event", "catalog-error").field("error", error).to_stderr();
                    }
                    let next = Instant::now() + RECONCILE_EVERY;
                    while Instant::now() < next && !reconciler.shared.stopping.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                    }
                }
            })
            .map_err(|e| PipelineError::Other(format!("cannot start the catalog's reconciler: {e}")))?;
        Ok(pipeline)
    }

    /// Stops taking work; the workers end after their current job (whose child dies with them), and what is left
    /// stays in the store for the next start.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.ready.notify_all();
    }

    pub fn homes(&self) -> &Homes {
        &self.shared.homes
    }

    /// Jobs waiting for a worker (`/metrics`).
    pub fn queue_length(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is queued or running (a one-shot repair waits for this).
    pub fn is_idle(&self) -> bool {
        let queue = self.lock();
        queue.len() == 0 && queue.running == 0
    }

    /// Queues everything the store and the catalog say is due: the jobs left in the store, runs whose publication
    /// differs from their verdicts, and copies that should exist and do not. Cheap when nothing is due: one pass over
    /// the verdicts and a listing of each root.
    pub fn resume(&self) -> Result<(), PipelineError> {
        let store = Store::open_existing(&self.shared.config.store_path())?;
        let now = Instant::now();
        let jobs = store.jobs()?;
        let drift = reconcile::drift(&store, &self.shared.config, &self.shared.homes, crate::time::now())?;
        let mut queue = self.lock();
        queue.not_before.retain(|_, at| *at > now);
        for job in jobs {
            let replica = Replica { party: job.party, run: job.run, database: job.database };
            if !queue.not_before.contains_key(&replica) {
                queue.push(&replica.party.clone(), Task::Apply(replica));
            }
        }
        for (party, run) in drift.publish.iter().chain(&drift.withdraw) {
            queue.push(party, Task::Refresh { run: run.clone() });
        }
        drop(queue);
        for (party, run, database) in drift.rebuild {
            store.job_awaiting(&party, &run, &database, None, crate::time::now())?;
            self.submit(Replica { party, run, database });
        }
        self.shared.ready.notify_all();
        Ok(())
    }

    /// A gate holding the replica's lock starts a push. Returns whether the replica had work waiting already.
    pub fn push_started(&self, store: &Store, party: &str, run: &str, database: &str) -> Result<bool, StoreError> {
        super::push::started(store, party, run, database)
    }

    /// A push ended (its gate still holds the replica's lock): its ledger row, and for a push that ended well and
    /// changed its replica, the schema check the worker waits for. Blocking. The copy and its full check come once
    /// the gate has let the replica's lock go: `queue_job` when its connection closes.
    pub fn push_ended(&self, store: &Store, row: &LedgerRow, had_pending: bool) -> Result<PushAnswer, PipelineError> {
        let (ledger_id, schema_now) = match super::push::ended(store, row, had_pending)? {
            super::push::AfterPush::Nothing => return Ok(PushAnswer::Accepted),
            super::push::AfterPush::Check { ledger_id, schema_now } => (ledger_id, schema_now),
        };
        let replica = Replica { party: row.party.clone(), run: row.run.clone(), database: row.database.clone() };
        if schema_now {
            let verdict = inspect_schema(&self.shared.config, &self.shared.config_path, &replica);
            if !verdict.ok {
                let reason = verdict.reason.clone().unwrap_or_else(|| "its schema did not pass".into());
                self.record(store, &replica, &verdict, Some(ledger_id))?;
                // The run is withdrawn, and its copies removed, before the worker hears why.
                let refresh = Task::Refresh { run: replica.run.clone() };
                let (tell, hear) = mpsc::channel();
                let mut queue = self.lock();
                queue.done.entry(refresh.clone()).or_default().push(tell);
                queue.push(&replica.party, refresh);
                drop(queue);
                self.shared.ready.notify_all();
                let _ = hear.recv_timeout(Duration::from_secs(self.shared.config.verify.seconds.saturating_add(60)));
                return Ok(PushAnswer::Refused(reason));
            }
        }
        Ok(PushAnswer::Accepted)
    }

    /// Queues the copy and full check of a replica whose job waits in the store (its push's gate has gone).
    pub fn queue_job(&self, party: &str, run: &str, database: &str) {
        self.submit(Replica { party: party.into(), run: run.into(), database: database.into() });
    }

    /// Checks a run's replicas again (the administrator's "re-verify"): each is copied and fully checked as after a
    /// push, and this returns each verdict once it is in (or why there is none). Blocking.
    pub fn reverify(
        &self,
        party: &str,
        run: &str,
        databases: &[String],
    ) -> Result<Vec<(String, Verdict)>, PipelineError> {
        let store = Store::open_existing(&self.shared.config.store_path())?;
        let mut waiting = Vec::new();
        for database in databases {
            let replica = Replica { party: party.into(), run: run.into(), database: database.clone() };
            store.job_awaiting(party, run, database, store.last_push_id(party, run, database)?, crate::time::now())?;
            let (tell, hear) = mpsc::channel();
            let mut queue = self.lock();
            queue.not_before.remove(&replica);
            queue.waiters.entry(replica.clone()).or_default().push(tell);
            drop(queue);
            self.submit(replica);
            waiting.push((database.clone(), hear));
        }
        let deadline = Duration::from_secs(self.shared.config.verify.seconds.saturating_mul(2).saturating_add(60));
        Ok(waiting
            .into_iter()
            .map(|(database, hear)| {
                let verdict = hear.recv_timeout(deadline).unwrap_or(Verdict {
                    ok: false,
                    seconds: 0.0,
                    reason: Some("no verdict yet: a push of it is running, or the check is still queued".into()),
                });
                (database, verdict)
            })
            .collect())
    }

    fn submit(&self, replica: Replica) {
        let party = replica.party.clone();
        self.lock().push(&party, Task::Apply(replica));
        self.shared.ready.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A verdict into the store (the replica's last verdict, the push's ledger row, the job done), the audit trail
    /// and the events.
    fn record(
        &self,
        store: &Store,
        replica: &Replica,
        verdict: &Verdict,
        ledger_id: Option<i64>,
    ) -> Result<(), StoreError> {
        record(&self.shared, store, replica, verdict, ledger_id)
    }
}

fn record(
    shared: &Shared,
    store: &Store,
    replica: &Replica,
    verdict: &Verdict,
    ledger_id: Option<i64>,
) -> Result<(), StoreError> {
    let at = crate::time::now();
    let verification = Verification {
        party: replica.party.clone(),
        run: replica.run.clone(),
        database: replica.database.clone(),
        ok: verdict.ok,
        at,
        seconds: verdict.seconds,
        reason: verdict.reason.clone(),
        passing_since: None,
    };
    store.in_transaction(|store| {
        store.record_verification(&verification, ledger_id)?;
        store.job_done(&replica.party, &replica.run, &replica.database)?;
        let subject = format!("{}/{}", replica.run, replica.database);
        let (outcome, detail) =
            if verdict.ok { ("ok", String::new()) } else { ("refuse", verdict.reason.clone().unwrap_or_default()) };
        store.append_audit(&AuditEntry {
            actor: ACTOR,
            action: AuditAction::Verify,
            party: &replica.party,
            subject: &subject,
            outcome,
            detail: &detail,
        })?;
        Ok(())
    })?;
    shared.hooks.announce(&CatalogEvent::Verified {
        party: replica.party.clone(),
        run: replica.run.clone(),
        database: replica.database.clone(),
        ok: verdict.ok,
        seconds: verdict.seconds,
        reason: verdict.reason.clone(),
    });
    Ok(())
}

/// A worker: takes tasks in turn until the pipeline stops.
fn work(shared: &Arc<Shared>) {
    let mut store: Option<Store> = None;
    loop {
        let (party, task) = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if shared.stopping.load(Ordering::Acquire) {
                    return;
                }
                if let Some(next) = queue.next() {
                    break next;
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let opened = match store.take() {
            Some(store) => Ok(store),
            None => Store::open_existing(&shared.config.store_path()),
        };
        let result = match &opened {
            Ok(store) => match &task {
                Task::Apply(replica) => apply(shared, store, replica),
                Task::Refresh { run } => refresh(shared, store, &party, run),
            },
            Err(error) => Err(PipelineError::Other(error.to_string())),
        };
        if let Err(error) = result {
            Line::of(SERVE)
                .field("event", "catalog-error")
                .field("party", &party)
                .field("run", task.run())
                .field("error", error)
                .to_stderr();
        }
        store = opened.ok();
        let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.busy.remove(task.run());
        queue.running -= 1;
        let waiting = queue.done.remove(&task).unwrap_or_default();
        drop(queue);
        for waiter in waiting {
            let _ = waiter.send(());
        }
        shared.ready.notify_all();
    }
}

/// Copies and checks one replica (`apply`), under its lock; records the verdict; then the run's publication.
fn apply(shared: &Arc<Shared>, store: &Store, replica: &Replica) -> Result<(), PipelineError> {
    let config = &shared.config;
    let Some(job) = store.job(&replica.party, &replica.run, &replica.database)? else {
        return Ok(()); // done meanwhile
    };
    let lock = locks::try_replica(&config.locks_dir(), &replica.party, &replica.run, &replica.database)
        .map_err(|e| PipelineError::Other(e.to_string()))?;
    let Some(lock) = lock else {
        // A push of it is in flight: its end brings the job back.
        return Ok(());
    };
    let started = Instant::now();
    let applied = run_apply(shared, replica).and_then(|applied| install(shared, replica, applied));
    let applied = match applied {
        Ok(applied) => applied,
        Err(error) => {
            drop(lock);
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.not_before.insert(replica.clone(), Instant::now() + RECONCILE_EVERY);
            let waiters = queue.waiters.remove(replica).unwrap_or_default();
            drop(queue);
            for waiter in waiters {
                let _ = waiter.send(Verdict { ok: false, seconds: 0.0, reason: Some(format!("no verdict: {error}")) });
            }
            return Err(PipelineError::Other(format!("{}/{}: {error}", replica.run, replica.database)));
        }
    };
    let verdict = Verdict { ok: applied.ok, seconds: applied.seconds, reason: applied.reason.clone() };
    record(shared, store, replica, &verdict, job.ledger_id)?;
    let line = Line::of(SERVE)
        .field("event", "copy")
        .field("party", &replica.party)
        .field("run", &replica.run)
        .field("database", &replica.database)
        .field("outcome", if applied.ok { "made" } else { "refused" })
        .field("pages", applied.pages)
        .field("seconds", format!("{:.3}", started.elapsed().as_secs_f64()));
    line.to_stderr();
    let change = Change { bytes: applied.bytes_after as i64 - applied.bytes_before as i64, files: applied.files_added };
    if change != Change::default() {
        shared.hooks.usage(&replica.party, change);
    }
    let waiters = shared.queue.lock().unwrap_or_else(|p| p.into_inner()).waiters.remove(replica).unwrap_or_default();
    // The run's publication follows its verdict before the replica's next push may start.
    let refreshed = refresh(shared, store, &replica.party, &replica.run);
    drop(lock);
    for waiter in waiters {
        let _ = waiter.send(verdict.clone());
    }
    refreshed
}

/// Runs `evosync catalog apply` for one replica, within the verification's time budget.
fn run_apply(shared: &Shared, replica: &Replica) -> Result<Applied, String> {
    let program = std::env::current_exe().map_err(|e| format!("the copy could not start: {e}"))?;
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(&shared.config_path)
        .args(["catalog", "apply", &replica.party, &replica.run, &replica.database])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::die_with_parent(&mut command);
    let budget = Duration::from_secs(shared.config.verify.seconds.saturating_mul(2).saturating_add(30));
    let output = run_within(command, budget, &shared.stopping)?;
    match serde_json::from_slice::<Applied>(&output.stdout) {
        Ok(applied) if output.status.success() => Ok(applied),
        _ => Err(format!(
            "the copy could not run ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// A child's output, or why there is none: killed at `budget`, or when the pipeline stops.
fn run_within(mut command: Command, budget: Duration, stopping: &AtomicBool) -> Result<std::process::Output, String> {
    let child = command.spawn().map_err(|e| format!("cannot start the check: {e}"))?;
    let pid = child.id();
    let (tell, hear) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tell.send(child.wait_with_output());
    });
    let deadline = Instant::now() + budget;
    loop {
        match hear.recv_timeout(Duration::from_millis(200)) {
            Ok(output) => return output.map_err(|e| format!("lost the check: {e}")),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("lost the check".into()),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stopping.load(Ordering::Acquire) || Instant::now() >= deadline {
                    sys::signal_child(pid, sys::Signal::SIGKILL);
                    let _ = hear.recv();
                    return Err(if Instant::now() >= deadline {
                        format!("the check took longer than {} s", budget.as_secs())
                    } else {
                        "the service is stopping".into()
                    });
                }
            }
        }
    }
}

/// Puts a new copy that passed into its run's home, beside the empty `-wal` and `-shm` a read-only reader needs.
fn install(shared: &Shared, replica: &Replica, applied: Applied) -> Result<Applied, String> {
    let Some(staged) = &applied.staged else { return Ok(applied) };
    let homes = &shared.homes;
    let (home, _) = homes.find_or_make(&replica.run).map_err(|e| e.to_string())?;
    let database = &replica.database;
    for suffix in ["-wal", "-shm"] {
        match sys::create_file_in(&home.fd, &format!("{database}{suffix}"), 0o640) {
            Ok(_) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot make {database}{suffix}: {e}")),
        }
    }
    let moved =
        sys::rename_between(homes.incoming().as_ref(), staged, &home.fd, database).map_err(|e| e.to_string())?;
    if !moved {
        let _ = sys::unlink_in(homes.incoming().as_ref(), staged);
        return Err(format!("{database} appeared in the home of {} meanwhile", replica.run));
    }
    sys::sync_dir(&home.fd).map_err(|e| e.to_string())?;
    Ok(Applied { staged: None, ..applied })
}

/// Makes one run's publication match its verdicts: published when the rule says so, withdrawn (its copies removed)
/// when a verdict failed, held while it waits; a copy that should exist and does not is made again.
fn refresh(shared: &Arc<Shared>, store: &Store, party: &str, run: &str) -> Result<(), PipelineError> {
    let config = &shared.config;
    let homes = &shared.homes;
    let Some(owner) = store.run(run)? else {
        return Ok(());
    };
    let home = homes.find(run)?;
    let verdicts = store.verifications(Some(run))?;
    let decision = reconcile::decide_for(config, &owner.party, &verdicts, home.as_ref(), crate::time::now());
    match (&decision.publication, &home) {
        (Publication::Publish(_), Some(home)) if !home.published => {
            homes.publish(run)?;
            audit_change(store, AuditAction::Publish, &owner.party, run, "")?;
            shared.hooks.announce(&CatalogEvent::Published { party: owner.party.clone(), run: run.to_owned() });
        }
        (Publication::Withdraw(_) | Publication::Wait { .. }, Some(home)) => {
            let reason = match &decision.publication {
                Publication::Withdraw(reason) => reason.clone(),
                _ => "waiting for its other databases".to_owned(),
            };
            if home.published {
                homes.withdraw(run)?;
                audit_change(store, AuditAction::Withdraw, &owner.party, run, &reason)?;
                let event = CatalogEvent::Withdrawn { party: owner.party.clone(), run: run.to_owned(), reason };
                shared.hooks.announce(&event);
            }
            if decision.failed {
                remove_copies(shared, homes, home, &owner.party, &decision.databases)?;
            }
        }
        _ => {}
    }
    for database in decision.rebuild {
        store.job_awaiting(&owner.party, run, &database, None, crate::time::now())?;
        let replica = Replica { party: owner.party.clone(), run: run.to_owned(), database };
        shared.queue.lock().unwrap_or_else(|p| p.into_inner()).push(party, Task::Apply(replica));
    }
    shared.ready.notify_all();
    Ok(())
}

/// A withdrawn run's copies go (they count against its party's quota, and no reader may open them).
fn remove_copies(
    shared: &Shared,
    homes: &Homes,
    home: &RunHome,
    party: &str,
    databases: &[String],
) -> Result<(), PipelineError> {
    let fresh = homes.find(&home.run)?;
    let Some(home) = fresh.as_ref() else { return Ok(()) };
    let removed = homes.remove_copies(home, databases)?;
    if removed.files > 0 {
        shared.hooks.usage(party, Change { bytes: -(removed.bytes as i64), files: -(removed.files as i64) });
    }
    Ok(())
}

fn audit_change(store: &Store, action: AuditAction, party: &str, run: &str, detail: &str) -> Result<(), StoreError> {
    store.append_audit(&AuditEntry { actor: ACTOR, action, party, subject: run, outcome: "ok", detail }).map(drop)
}

/// Runs `evosync catalog inspect` (the schema alone) for one replica, within the verification's time budget.
fn inspect_schema(config: &Config, config_path: &Path, replica: &Replica) -> Verdict {
    let failed = |reason: String| Verdict { ok: false, seconds: 0.0, reason: Some(reason) };
    let program = match std::env::current_exe() {
        Ok(program) => program,
        Err(error) => return failed(format!("the check could not start: {error}")),
    };
    let mut command = Command::new(program);
    command
        .arg("--config")
        .arg(config_path)
        .args(["catalog", "inspect", &replica.party, &replica.run, &replica.database])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    sys::die_with_parent(&mut command);
    let budget = Duration::from_secs(config.verify.seconds.saturating_add(30));
    match run_within(command, budget, &AtomicBool::new(false)) {
        Err(reason) => failed(reason),
        Ok(output) => match serde_json::from_slice::<Verdict>(&output.stdout) {
            Ok(verdict) if output.status.success() => verdict,
            _ => failed(format!(
                "the check could not run ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        },
    }
}
