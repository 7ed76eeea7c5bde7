//! The gate's flow: who is asking, what for, may they, where exactly, then hand over or refuse.
//!
//! `plan` holds every decision and changes nothing; `serve` acts on a plan; `explain` prints one.

use crate::audit::{Line, Sink};
use crate::command::{self, Direction, Request};
use crate::config::Config;
use crate::confine::PartyTree;
use crate::decide::{decide, Action, Decision};
use crate::handover::{self, Launch, Locks};
use crate::names::is_party_name;
use crate::policy::Policy;
use crate::reply;
use crate::sandbox::Sandbox;
use crate::store::{AuditEntry, LedgerRow, Store};
use std::ffi::OsString;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

/// Exit status of a refusal (sqlite3_rsync itself exits 1 on errors).
pub const REFUSED: i32 = 1;

/// Why the gate said no: a short code for logs and metrics, the reason the worker reads, and details that only the
/// host's log gets (paths and errors of the host's own configuration are none of the worker's business).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
    pub detail: Option<String>,
}

impl Refusal {
    fn new(code: &'static str, reason: impl ToString) -> Refusal {
        Refusal { code, reason: reason.to_string(), detail: None }
    }

    fn with_detail(mut self, detail: impl ToString) -> Refusal {
        self.detail = Some(detail.to_string());
        self
    }
}

/// What the gate was asked, from sshd.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `--party NAME`, else derived from the Unix account (`evosync-NAME`).
    pub party: Option<String>,
    /// `--key ID`: a key registered in the state store, which names the party.
    pub key: Option<String>,
    pub account: Option<String>,
    /// `SSH_ORIGINAL_COMMAND`; `None` for an interactive login.
    pub command: Option<String>,
}

/// Everything decided before acting.
pub struct Plan {
    pub party: String,
    pub policy: Policy,
    pub decision: Decision,
}

/// The party this invocation speaks for.
pub fn party_of(invocation: &Invocation) -> Result<String, Refusal> {
    let party = match (&invocation.party, &invocation.account) {
        (Some(party), _) => party.clone(),
        (None, Some(account)) => match account.strip_prefix("evosync-") {
            Some(party) => party.to_owned(),
            None => {
                return Err(Refusal::new("party", "this account is not set up for a party; tell the administrator")
                    .with_detail(format!("account '{account}' is not evosync-NAME and no --party was given")))
            }
        },
        (None, None) => return Err(Refusal::new("party", "no party given (--party NAME or an evosync-NAME account)")),
    };
    if is_party_name(&party) {
        Ok(party)
    } else {
        Err(Refusal::new("party", format!("'{party}' is not a party name; tell the administrator")))
    }
}

/// Parses, loads the policy and decides. Pure apart from reading the policy file.
pub fn plan(config: &Config, party: &str, command_line: Option<&str>) -> Result<Plan, Refusal> {
    let request = command::parse(command_line.unwrap_or("")).map_err(|e| Refusal::new("command", e))?;
    let policy = Policy::load(&config.policy_path(party), party).map_err(|e| {
        Refusal::new("policy", format!("party '{party}' has no usable policy on this host; tell the administrator"))
            .with_detail(e)
    })?;
    let decision = decide(&request, &policy).map_err(|e| Refusal::new("denied", e))?;
    if matches!(request, Request::Sync(_)) && policy.require_sandbox && crate::sys::landlock_abi_version() == 0 {
        return Err(Refusal::new(
            "sandbox",
            "this host cannot sandbox the sync that your policy requires; tell the administrator",
        ));
    }
    Ok(Plan { party: party.to_owned(), policy, decision })
}

/// What one session writes its records to: the audit sink and, when there is one, the state store.
struct Recorder<'a> {
    sink: Sink,
    store: Option<Store>,
    actor: String,
    listening: Option<Direction>,
    command_line: Option<&'a str>,
}

impl Recorder<'_> {
    fn base(&self) -> Line {
        Line::new().field_opt("command", self.command_line)
    }

    /// One audit line, and one record in the store's hash-chained trail; stderr only when neither took it.
    fn record(&self, line: &Line, party: &str, subject: &str, outcome: &str, detail: &str) {
        let logged = self.sink.write_host_side(line);
        let stored = match &self.store {
            Some(store) => {
                let entry = AuditEntry { actor: &self.actor, action: "gate", party, subject, outcome, detail };
                match store.append_audit(&entry) {
                    Ok(_) => true,
                    Err(error) => {
                        self.sink.write(&Line::new().field("event", "store-error").field("error", error).warning());
                        false
                    }
                }
            }
            None => false,
        };
        if !logged && !stored {
            let _ = writeln!(std::io::stderr().lock(), "{}", line.public());
        }
    }

    fn refuse(&self, line: Line, party: &str, subject: &str, refusal: &Refusal) -> i32 {
        let line = line
            .field("event", "decision")
            .field("verdict", "refuse")
            .field("code", refusal.code)
            .field("reason", &refusal.reason)
            .private_field_opt("detail", refusal.detail.as_deref())
            .warning();
        let detail = match &refusal.detail {
            Some(detail) => format!("{}; {detail}", refusal.reason),
            None => refusal.reason.clone(),
        };
        self.record(&line, party, subject, &format!("refuse:{}", refusal.code), &detail);
        reply::refuse(self.listening, &refusal.reason);
        REFUSED
    }
}

/// Serves one SSH session. Returns the process exit status.
pub fn serve(config: &Config, invocation: &Invocation) -> i32 {
    let command_line = invocation.command.as_deref();
    let mut recorder = Recorder {
        sink: Sink::new(config.syslog_facility, config.audit_log.as_deref()),
        store: None,
        actor: match &invocation.key {
            Some(key) => format!("gate:key:{key}"),
            None => "gate".to_owned(),
        },
        listening: command_line.and_then(command::looks_like_sqlite3_rsync),
        command_line,
    };
    // The store is where keys are checked and pushes recorded. With --key it is required; without, it is used
    // when it exists (a host that has never run `evosync init` has none).
    let store_path = config.store_path();
    if invocation.key.is_some() || store_path.exists() {
        match Store::open_existing(&store_path) {
            Ok(store) => recorder.store = Some(store),
            Err(error) if invocation.key.is_some() => {
                let refusal =
                    Refusal::new("internal", "the central host cannot check keys now; tell the administrator")
                        .with_detail(error);
                return recorder.refuse(recorder.base(), "", "", &refusal);
            }
            Err(_) => {}
        }
    }
    let key_party = match (&invocation.key, &recorder.store) {
        (Some(key), Some(store)) => match key_holder(store, key, invocation.party.as_deref()) {
            Ok(party) => Some(party),
            Err(refusal) => return recorder.refuse(recorder.base().field("key", key), "", "", &refusal),
        },
        _ => None,
    };
    let party = match key_party.map(Ok).unwrap_or_else(|| party_of(invocation)) {
        Ok(party) => party,
        Err(refusal) => return recorder.refuse(recorder.base(), "", "", &refusal),
    };
    let with_key = |line: Line| line.field_opt("key", invocation.key.as_deref());
    let plan = match plan(config, &party, command_line) {
        Ok(plan) => plan,
        Err(refusal) => return recorder.refuse(with_key(recorder.base().field("party", &party)), &party, "", &refusal),
    };
    let line = with_key(
        recorder
            .base()
            .field("party", &plan.party)
            .field("run", &plan.decision.run)
            .field_opt("database", plan.decision.database.as_deref())
            .field("action", action_name(&plan.decision.action)),
    );
    let subject = match &plan.decision.database {
        Some(database) => format!("{}/{database}", plan.decision.run),
        None => plan.decision.run.clone(),
    };
    match act(config, &plan, &recorder, invocation.key.as_deref(), line.clone(), &subject) {
        Ok(status) => status,
        Err(refusal) => recorder.refuse(line, &plan.party, &subject, &refusal),
    }
}

/// The party a registered key speaks for, when the key may be used now (defence in depth: the authorized_keys file
/// may lag behind a revoke).
fn key_holder(store: &Store, key: &str, party_flag: Option<&str>) -> Result<String, Refusal> {
    let found = store.ssh_key_with_party(key).map_err(|e| {
        Refusal::new("internal", "the central host cannot check keys now; tell the administrator").with_detail(e)
    })?;
    let Some((key, party_enabled)) = found else {
        return Err(Refusal::new("key", "this SSH key is not registered on this host; ask the administrator"));
    };
    if let Some(state) = crate::store::key_state(key.revoked_at, key.expires_at, party_enabled, crate::store::now()) {
        let reason = match state {
            "revoked" => "this SSH key was revoked; ask the administrator for a new one".to_owned(),
            "expired" => "this SSH key has expired; ask the administrator to renew it".to_owned(),
            _ => format!("party '{}' is disabled on this host; ask the administrator", key.party),
        };
        return Err(Refusal::new("key", reason));
    }
    if party_flag.is_some_and(|p| p != key.party) {
        return Err(Refusal::new("key", "this key's line names another party; tell the administrator"));
    }
    let _ = store.touch_ssh_key(&key.id);
    Ok(key.party)
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Push { .. } => "push",
        Action::Pull { .. } => "pull",
        Action::MakeRunDir => "mkdir",
    }
}

/// Carries out an allowed plan: the only part of the gate that writes.
fn act(
    config: &Config,
    plan: &Plan,
    recorder: &Recorder<'_>,
    key: Option<&str>,
    line: Line,
    subject: &str,
) -> Result<i32, Refusal> {
    let confine = |e: crate::confine::ConfineError| Refusal::new("confine", e);
    let tree = PartyTree::open(&config.replica_root, &plan.party).map_err(|e| {
        Refusal::new("confine", format!("party '{}' has no tree on this host; tell the administrator", plan.party))
            .with_detail(e)
    })?;
    let limits = &plan.policy.limits;
    let decision = &plan.decision;
    let (flags, pushing) = match decision.action {
        Action::MakeRunDir => {
            check_run_owner(recorder, plan)?;
            let folder = tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs).map_err(confine)?;
            claim_run(recorder, plan)?;
            let line = line.field("event", "decision").field("verdict", "allow").field("created", folder.created);
            recorder.record(&line, &plan.party, subject, "allow", if folder.created { "created" } else { "exists" });
            return Ok(0);
        }
        Action::Push { wal_only, commcheck } => ((wal_only, commcheck), true),
        Action::Pull { wal_only, commcheck } => ((wal_only, commcheck), false),
    };
    let database = decision.database.as_deref().unwrap_or_default();
    // Every check that can refuse comes before anything is created: a refused push leaves no trace in the tree.
    let existing = tree.existing_run_folder(&decision.run).map_err(confine)?;
    if !pushing && existing.is_none() {
        return Err(Refusal::new("confine", format!("there is no run '{}' to pull from", decision.run)));
    }
    let current_bytes = match &existing {
        Some(folder) => folder.check_database(database).map_err(confine)?,
        None => 0,
    };
    if !pushing && existing.as_ref().and_then(|f| f.database_size(database)).is_none() {
        return Err(Refusal::new("confine", format!("there is no replica '{}/{database}' to pull", decision.run)));
    }
    let fsize_limit = match limits.max_party_bytes {
        None => limits.max_db_bytes.0,
        Some(quota) => {
            let used = tree.usage_bytes().map_err(confine)?;
            if used >= quota.0 && pushing {
                return Err(confine(crate::confine::ConfineError::OverQuota {
                    party: plan.party.clone(),
                    used,
                    max: quota.0,
                }));
            }
            // The replica may grow only into what the party has left.
            limits.max_db_bytes.0.min(quota.0.saturating_sub(used).saturating_add(current_bytes))
        }
    };
    if pushing {
        check_run_owner(recorder, plan)?;
    }
    let locks = Locks::acquire(
        &config.locks_dir(),
        &plan.party,
        &decision.run,
        database,
        limits.max_concurrent_syncs,
        Duration::from_secs(config.lock_wait_seconds),
    )
    .map_err(|e| match e {
        handover::HandoverError::LockFile { .. } => {
            Refusal::new("internal", "the central host cannot take its locks; tell the administrator").with_detail(e)
        }
        e => Refusal::new("busy", e),
    })?;
    let folder = match existing {
        Some(folder) => folder,
        None => tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs).map_err(confine)?,
    };
    if pushing {
        claim_run(recorder, plan)?;
    }
    let program = config.sqlite3_rsync.as_path();
    let sandbox =
        Sandbox::prepare(program, &folder.fd, plan.policy.require_sandbox).map_err(|e| Refusal::new("sandbox", e))?;
    let sandbox_summary = sandbox.summary.clone();
    let args = sync_arguments(decision, flags, &folder.database_path(database));
    let allow = line
        .clone()
        .field("event", "decision")
        .field("verdict", "allow")
        .field("sandbox", &sandbox_summary)
        .field("fsize_limit", fsize_limit);
    recorder.record(&allow, &plan.party, subject, "allow", &sandbox_summary);
    let started_at = crate::store::now();
    let launch =
        Launch { program, args, working_dir: &folder.path, fsize_limit, sandbox, max_seconds: limits.max_sync_seconds };
    let outcome = handover::run(launch).map_err(|e| {
        Refusal::new("internal", "the central host could not run the sync; tell the administrator").with_detail(e)
    })?;
    drop(locks);
    let after = folder.database_size(database);
    let done = line
        .field("event", "outcome")
        .field("verdict", "done")
        .field("exit", outcome.exit)
        .field("seconds", format!("{:.3}", outcome.seconds))
        .field_opt("replica_bytes", after);
    recorder.record(&done, &plan.party, subject, &format!("done:{}", outcome.exit), "");
    if let Some(store) = &recorder.store {
        let row = LedgerRow {
            party: plan.party.clone(),
            key_id: key.map(str::to_owned),
            run: decision.run.clone(),
            database: database.to_owned(),
            started_at,
            seconds: outcome.seconds,
            exit: outcome.exit.to_string(),
            replica_bytes: after,
        };
        if let Err(error) = store.record_sync(&row) {
            recorder.sink.write(&Line::new().field("event", "store-error").field("error", error).warning());
        }
    }
    Ok(outcome.exit.status())
}

/// Refuses a run another party owns, before anything is created for it.
fn check_run_owner(recorder: &Recorder<'_>, plan: &Plan) -> Result<(), Refusal> {
    let Some(store) = &recorder.store else { return Ok(()) };
    match store.run(&plan.decision.run) {
        Ok(Some(run)) if run.party != plan.party => Err(Refusal::new(
            "run",
            format!("run '{}' belongs to another party; name your runs with your own ULIDs", plan.decision.run),
        )),
        Ok(_) => Ok(()),
        Err(error) => Err(Refusal::new("internal", "the central host cannot read its runs; tell the administrator")
            .with_detail(error)),
    }
}

/// Claims the run folder for the party in the store: a folder is one party's, across all parties.
fn claim_run(recorder: &Recorder<'_>, plan: &Plan) -> Result<(), Refusal> {
    let Some(store) = &recorder.store else { return Ok(()) };
    match store.claim_run(&plan.party, &plan.decision.run) {
        Ok(_) => Ok(()),
        Err(crate::store::StoreError::RunOwned { run, .. }) => Err(Refusal::new(
            "run",
            format!("run '{run}' belongs to another party; name your runs with your own ULIDs"),
        )),
        Err(error) => Err(Refusal::new("internal", "the central host cannot record the run; tell the administrator")
            .with_detail(error)),
    }
}

/// The argument vector for the configured sqlite3_rsync: the mode, the accepted flags, then the names in the order
/// the mode expects, with this host's side as the absolute path proven by confinement.
pub fn sync_arguments(decision: &Decision, (wal_only, commcheck): (bool, bool), host_path: &Path) -> Vec<OsString> {
    let pushing = matches!(decision.action, Action::Push { .. });
    let mut args: Vec<OsString> = vec![if pushing { "--replica" } else { "--origin" }.into()];
    if commcheck {
        args.push("--commcheck".into());
    }
    if wal_only {
        args.push("--wal-only".into());
    }
    let peer = OsString::from(&decision.peer_name);
    if pushing {
        args.extend([peer, host_path.into()]);
    } else {
        args.extend([host_path.into(), peer]);
    }
    args
}

/// `evosync-gate explain`: the decision for a command line, without changing anything. Returns (allowed, text).
pub fn explain(config: &Config, party: &str, command_line: &str) -> (bool, String) {
    let plan = match is_party_name(party) {
        true => plan(config, party, Some(command_line)),
        false => Err(Refusal::new("party", format!("'{party}' is not a party name"))),
    };
    let plan = match plan {
        Ok(plan) => plan,
        Err(refusal) => return (false, refusal_text(&refusal)),
    };
    let decision = &plan.decision;
    let tree = match PartyTree::open(&config.replica_root, party) {
        Ok(tree) => tree,
        Err(e) => return (false, refusal_text(&Refusal::new("confine", e))),
    };
    let folder = match tree.existing_run_folder(&decision.run) {
        Ok(folder) => folder,
        Err(e) => return (false, refusal_text(&Refusal::new("confine", e))),
    };
    let creatable = plan.policy.create_runs && !matches!(decision.action, Action::Pull { .. });
    let run_note = match (&folder, creatable) {
        (Some(_), _) => "exists".to_owned(),
        (None, true) => "would be created".to_owned(),
        (None, false) => {
            let e = crate::confine::ConfineError::RunMissing { run: decision.run.clone() };
            return (false, refusal_text(&Refusal::new("confine", e)));
        }
    };
    let mut text =
        format!("allow: {} of run '{}' (run folder {run_note})", action_name(&decision.action), decision.run);
    if let Some(database) = &decision.database {
        if let Some(folder) = &folder {
            if let Err(e) = folder.check_database(database) {
                return (false, refusal_text(&Refusal::new("confine", e)));
            }
        }
        let (flags, host_path) = match decision.action {
            Action::Push { wal_only, commcheck } | Action::Pull { wal_only, commcheck } => {
                ((wal_only, commcheck), tree.path().join(&decision.run).join(database))
            }
            Action::MakeRunDir => unreachable!("mkdir names no database"),
        };
        let args = sync_arguments(decision, flags, &host_path);
        let shown: Vec<String> = args.iter().map(|a| shell_words::quote(&a.to_string_lossy()).into_owned()).collect();
        text.push_str(&format!("\nwould run: {} {}", config.sqlite3_rsync.display(), shown.join(" ")));
        text.push_str(&format!(
            "\nlimits: file size {}, {} s, {} concurrent syncs",
            plan.policy.limits.max_db_bytes,
            plan.policy.limits.max_sync_seconds,
            plan.policy.limits.max_concurrent_syncs
        ));
    }
    (true, text)
}

fn refusal_text(refusal: &Refusal) -> String {
    match &refusal.detail {
        Some(detail) => format!("refuse ({}): {}\ndetail: {detail}", refusal.code, refusal.reason),
        None => format!("refuse ({}): {}", refusal.code, refusal.reason),
    }
}

/// AuthorizedKeysCommand: the authorized_keys line for the key sshd was presented, when that key is active and
/// belongs to the account logging in; `None` otherwise. One indexed lookup.
pub fn authorized_keys_for(
    config: &Config,
    config_path: &Path,
    user: &str,
    key_type: &str,
    blob: &str,
) -> Result<Option<String>, crate::store::StoreError> {
    let store = Store::open_existing(&config.store_path())?;
    let Some((key, party_enabled)) = store.ssh_key_by_blob(key_type, blob)? else { return Ok(None) };
    if crate::store::key_state(key.revoked_at, key.expires_at, party_enabled, crate::store::now()).is_some() {
        return Ok(None);
    }
    if config.tree_owner(&key.party) != user {
        return Ok(None);
    }
    let config_path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    Ok(Some(crate::keys::authorized_keys_line(&crate::keys::KeyLine::of(&key), &config.gate, &config_path)))
}
