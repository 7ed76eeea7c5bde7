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
use std::ffi::OsString;
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

/// Serves one SSH session. Returns the process exit status.
pub fn serve(config: &Config, invocation: &Invocation) -> i32 {
    let sink = Sink::new(config.syslog_facility, config.audit_log.as_deref());
    let command_line = invocation.command.as_deref();
    let listening = command_line.and_then(command::looks_like_sqlite3_rsync);
    let base = || Line::new().field_opt("command", command_line);
    let party = match party_of(invocation) {
        Ok(party) => party,
        Err(refusal) => return refuse(&sink, base(), listening, &refusal),
    };
    let plan = match plan(config, &party, command_line) {
        Ok(plan) => plan,
        Err(refusal) => return refuse(&sink, base().field("party", &party), listening, &refusal),
    };
    let line = base()
        .field("party", &plan.party)
        .field("run", &plan.decision.run)
        .field_opt("database", plan.decision.database.as_deref())
        .field("action", action_name(&plan.decision.action));
    match act(config, &plan, &sink, line.clone()) {
        Ok(status) => status,
        Err(refusal) => refuse(&sink, line, listening, &refusal),
    }
}

fn refuse(sink: &Sink, line: Line, listening: Option<Direction>, refusal: &Refusal) -> i32 {
    sink.write(
        &line
            .field("event", "decision")
            .field("verdict", "refuse")
            .field("code", refusal.code)
            .field("reason", &refusal.reason)
            .private_field_opt("detail", refusal.detail.as_deref())
            .warning(),
    );
    reply::refuse(listening, &refusal.reason);
    REFUSED
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Push { .. } => "push",
        Action::Pull { .. } => "pull",
        Action::MakeRunDir => "mkdir",
    }
}

/// Carries out an allowed plan: the only part of the gate that writes.
fn act(config: &Config, plan: &Plan, sink: &Sink, line: Line) -> Result<i32, Refusal> {
    let confine = |e: crate::confine::ConfineError| Refusal::new("confine", e);
    let tree = PartyTree::open(&config.replica_root, &plan.party).map_err(|e| {
        Refusal::new("confine", format!("party '{}' has no tree on this host; tell the administrator", plan.party))
            .with_detail(e)
    })?;
    let limits = &plan.policy.limits;
    let decision = &plan.decision;
    let (flags, pushing) = match decision.action {
        Action::MakeRunDir => {
            let folder = tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs).map_err(confine)?;
            sink.write(&line.field("event", "decision").field("verdict", "allow").field("created", folder.created));
            return Ok(0);
        }
        Action::Push { wal_only, commcheck } => ((wal_only, commcheck), true),
        Action::Pull { wal_only, commcheck } => ((wal_only, commcheck), false),
    };
    let database = decision.database.as_deref().unwrap_or_default();
    let folder = if pushing {
        tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs).map_err(confine)?
    } else {
        tree.existing_run_folder(&decision.run)
            .map_err(confine)?
            .ok_or_else(|| Refusal::new("confine", format!("there is no run '{}' to pull from", decision.run)))?
    };
    let current_bytes = folder.check_database(database).map_err(confine)?;
    if !pushing && folder.database_size(database).is_none() {
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
    let program = config.sqlite3_rsync.as_path();
    let sandbox =
        Sandbox::prepare(program, &folder.fd, plan.policy.require_sandbox).map_err(|e| Refusal::new("sandbox", e))?;
    let sandbox_summary = sandbox.summary.clone();
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
    let args = sync_arguments(decision, flags, &folder.database_path(database));
    sink.write(
        &line
            .clone()
            .field("event", "decision")
            .field("verdict", "allow")
            .field("sandbox", &sandbox_summary)
            .field("fsize_limit", fsize_limit),
    );
    let launch =
        Launch { program, args, working_dir: &folder.path, fsize_limit, sandbox, max_seconds: limits.max_sync_seconds };
    let outcome = handover::run(launch).map_err(|e| {
        Refusal::new("internal", "the central host could not run the sync; tell the administrator").with_detail(e)
    })?;
    drop(locks);
    let after = folder.database_size(database);
    sink.write(
        &line
            .field("event", "outcome")
            .field("verdict", "done")
            .field("exit", outcome.exit)
            .field("seconds", format!("{:.3}", outcome.seconds))
            .field_opt("replica_bytes", after),
    );
    Ok(outcome.exit.status())
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
