//! The gate: what sshd runs for every worker login. Who is asking, what for, may they, where exactly, then hand the
//! SSH channel to sqlite3_rsync or refuse. Plain blocking code, no async runtime: it starts in about a millisecond.
//!
//! The flow, top to bottom: `serve` finds the party (`party_of`, or the key's holder in the store), `plan` parses the
//! command and decides against the policy (pure but for reading the policy), `survey` looks at the party's tree
//! without changing it, and `act` creates, locks, sandboxes and hands over. `explain` runs `plan` and `survey` and
//! prints what `act` would do. Every refusal is a `refusal::RefusalCode`, recorded in one place.

pub mod audit;
mod central;
pub mod command;
pub mod decide;
mod explain;
pub mod handover;
mod keys_command;
pub mod memory;
pub mod refusal;
pub mod reply;
pub mod rsync_version;
mod settle;
pub mod transport;
pub mod unchanged;

use crate::access::RunOwner;
use crate::broker::GateOutcome;
use crate::config::Config;
use crate::fs::confine::{PartyTree, RunFolder};
use crate::fs::sandbox::Sandbox;
use crate::log::Line;
use crate::names::is_party_name;
use crate::policy::Policy;
use crate::store::LedgerRow;
use audit::Sink;
use central::Central;
use central::Finished;
use clap::{Parser, Subcommand};
use command::Request;
use decide::{decide, Action, Decision};
use handover::{Exit, HandoverError, Launch, Locks};
use memory::ChildMemory;
use refusal::{Recorder, Refusal, RefusalCode};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub use explain::explain;
pub use keys_command::authorized_keys_for;
pub use refusal::REFUSED;

#[derive(Parser)]
#[command(name = "evosync-gate", version, about = "SSH forced command that lets a party push its run replicas")]
struct Cli {
    /// Configuration file [default: $EVOSYNC_CONFIG, else /etc/evosync/evosync.yaml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The party this key belongs to (authorized_keys mode); otherwise taken from the account name evosync-NAME.
    #[arg(long)]
    party: Option<String>,
    /// The registered key this session logged in with; the state store names its party.
    #[arg(long)]
    key: Option<String>,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Subcommand)]
enum Tool {
    /// Print the decision for a command line, and its reason, without running or changing anything.
    Explain {
        #[arg(long)]
        party: String,
        /// The command as sshd would pass it in SSH_ORIGINAL_COMMAND.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run by the gate itself after a push broke off, sandboxed in the run folder: settles the replica (rolls back what
    /// was not committed, checkpoints the log), so that it reads as its last complete transaction left it.
    #[command(hide = true)]
    SettleReplica { database: PathBuf },
    /// For sshd's AuthorizedKeysCommand (`%u %t %k`): prints the key's line when it is active, nothing otherwise.
    AuthorizedKeys {
        /// The account logging in (%u).
        user: String,
        /// The key type (%t).
        key_type: String,
        /// The base64 key (%k).
        key: String,
    },
}

/// `evosync-gate`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = Config::locate(cli.config.as_deref());
    let config = Config::load(&config_path);
    match cli.command {
        Some(Tool::Explain { party, command }) => match config {
            Ok(config) => {
                let (allowed, text) = explain(&config, &party, &command.join(" "));
                println!("{text}");
                ExitCode::from(if allowed { 0 } else { 1 })
            }
            Err(error) => {
                eprintln!("evosync-gate: {error}");
                ExitCode::from(2)
            }
        },
        Some(Tool::SettleReplica { database }) => match settle::main(&database) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Some(Tool::AuthorizedKeys { user, key_type, key }) => {
            let line = config
                .map_err(|e| e.to_string())
                .and_then(|c| authorized_keys_for(&c, &config_path, &user, &key_type, &key).map_err(|e| e.to_string()));
            match line {
                Ok(line) => {
                    if let Some(line) = line {
                        println!("{line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("evosync-gate: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        None => {
            // The account name costs an NSS lookup; only per-party-account mode needs it.
            let account = if cli.party.is_none() && cli.key.is_none() { crate::fs::sys::account_name() } else { None };
            let invocation = Invocation {
                party: cli.party,
                key: cli.key,
                account,
                command: std::env::var("SSH_ORIGINAL_COMMAND").ok(),
                ssh_connection: std::env::var("SSH_CONNECTION").ok(),
            };
            let status = match config {
                Ok(config) => serve(&config, &invocation),
                Err(error) => refuse_unconfigured(&invocation, &error.to_string()),
            };
            ExitCode::from(status.clamp(0, 255) as u8)
        }
    }
}

/// Without a configuration there is no audit sink but syslog and stderr (which sshd sends to the worker).
fn refuse_unconfigured(invocation: &Invocation, detail: &str) -> i32 {
    let command_line = invocation.command.as_deref();
    let recorder = Recorder {
        sink: Sink::new(Default::default(), None),
        central: Central::Absent,
        actor: "gate".into(),
        listening: command_line.and_then(command::looks_like_sqlite3_rsync),
        command_line: None,
        transport: Default::default(),
    };
    recorder.refuse(Line::new(), "", "", &Refusal::with_detail(RefusalCode::BrokenConfig, detail))
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
    /// `SSH_CONNECTION` (`CLIENT_IP CLIENT_PORT SERVER_IP SERVER_PORT`): whether the session came through the
    /// service's tunnel (`transport`).
    pub ssh_connection: Option<String>,
}

/// Everything decided before looking at the tree.
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
                let detail = format!("account '{account}' is not evosync-NAME and no --party was given");
                return Err(Refusal::with_detail(RefusalCode::NotAPartyAccount, detail));
            }
        },
        (None, None) => return Err(RefusalCode::NoParty.into()),
    };
    checked_party(party)
}

fn checked_party(party: String) -> Result<String, Refusal> {
    if is_party_name(&party) {
        Ok(party)
    } else {
        Err(RefusalCode::BadPartyName(party).into())
    }
}

/// Parses, loads the policy and decides. Pure apart from reading the policy file.
pub fn plan(config: &Config, party: &str, command_line: Option<&str>) -> Result<Plan, Refusal> {
    let request = command::parse(command_line.unwrap_or("")).map_err(RefusalCode::Command)?;
    let policy = Policy::load(&config.policy_path(party), party)
        .map_err(|e| Refusal::with_detail(RefusalCode::NoPolicy { party: party.to_owned() }, e))?;
    let decision = decide(&request, &policy).map_err(RefusalCode::Denied)?;
    if matches!(request, Request::Sync(_)) && policy.require_sandbox && crate::fs::sys::landlock_abi_version() == 0 {
        return Err(RefusalCode::SandboxRequired.into());
    }
    Ok(Plan { party: party.to_owned(), policy, decision })
}

/// Serves one SSH session. Returns the process exit status.
pub fn serve(config: &Config, invocation: &Invocation) -> i32 {
    let command_line = invocation.command.as_deref();
    let mut recorder = Recorder {
        sink: Sink::new(config.syslog_facility, config.audit_log.as_deref()),
        // The service when it runs (the only way in for a per-party account), else the store, else nothing.
        central: Central::connect(config),
        actor: match &invocation.key {
            Some(key) => format!("gate:key:{key}"),
            None => "gate".to_owned(),
        },
        listening: command_line.and_then(command::looks_like_sqlite3_rsync),
        command_line,
        transport: Default::default(),
    };
    // First how the session came in, so that every record of a tunnelled one says so.
    let session = invocation.ssh_connection.as_deref().and_then(transport::SshSession::parse);
    let via = match transport::via(&recorder.central, session, config.tunnel_ssh.is_some()) {
        Ok(via) => via,
        Err(refusal) => return recorder.refuse(recorder.base(), "", "", &refusal),
    };
    recorder.transport = via.transport();
    let key_party = match &invocation.key {
        Some(key) => match key_holder(&recorder.central, key, invocation.party.as_deref()) {
            Ok(party) => Some(party),
            Err(refusal) => return recorder.refuse(recorder.base().field("key", key), "", "", &refusal),
        },
        None => None,
    };
    let party = match key_party.map(Ok).unwrap_or_else(|| party_of(invocation)) {
        Ok(party) => party,
        Err(refusal) => return recorder.refuse(recorder.base(), "", "", &refusal),
    };
    let with_key = |line: Line| line.field_opt("key", invocation.key.as_deref());
    // The one-party rule, before the command is even parsed: nothing is looked at or created for a mismatch.
    if let Err(refusal) = transport::one_party(&via, &party) {
        return recorder.refuse(with_key(recorder.base().field("party", &party)), &party, "", &refusal);
    }
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
            .field("action", plan.decision.action.name()),
    );
    let subject = match &plan.decision.database {
        Some(database) => format!("{}/{database}", plan.decision.run),
        None => plan.decision.run.clone(),
    };
    let acted = survey(config, &plan, &recorder.central)
        .and_then(|survey| act(config, &plan, survey, &recorder, invocation.key.as_deref(), line.clone(), &subject));
    match acted {
        Ok(status) => status,
        Err(refusal) => recorder.refuse(line, &plan.party, &subject, &refusal),
    }
}

/// The party a registered key speaks for, when the key may be used now and its line names that party.
fn key_holder(central: &Central, key: &str, party_flag: Option<&str>) -> Result<String, Refusal> {
    let party = central.key_holder(key)?;
    if party_flag.is_some_and(|p| p != party) {
        return Err(RefusalCode::KeyOfAnotherParty.into());
    }
    Ok(party)
}

/// What the party's tree holds for a plan, found before anything is created: the checks that can refuse a push on
/// what is there run here, so a refused push leaves no trace in the tree.
pub struct Survey {
    tree: PartyTree,
    /// The run folder, when it exists already.
    existing: Option<RunFolder>,
    /// Bytes the replica and its companions hold now.
    current_bytes: u64,
    /// Entries a push would add (the run folder, the database and its WAL companions).
    new_files: u64,
}

/// Looks at the tree (and whose the run is) for `plan`; changes nothing.
pub fn survey(config: &Config, plan: &Plan, central: &Central) -> Result<Survey, Refusal> {
    let party = &plan.party;
    let tree = PartyTree::open(&config.replica_root, party)
        .map_err(|e| Refusal::with_detail(RefusalCode::NoTree { party: party.clone() }, e))?;
    let (limits, decision) = (&plan.policy.limits, &plan.decision);
    let run = &decision.run;
    let existing = tree.existing_run_folder(run)?;
    let creatable = |tree: &PartyTree| tree.may_create_run(run, plan.policy.create_runs, limits.max_runs);
    let Some(database) = decision.database.as_deref() else {
        check_owner(central, plan)?;
        if existing.is_none() {
            creatable(&tree)?;
        }
        return Ok(Survey { tree, existing, current_bytes: 0, new_files: 1 });
    };
    let pushing = matches!(decision.action, Action::Push { .. });
    let (current_bytes, new_files) = match &existing {
        Some(folder) => (folder.check_database(database)?, folder.new_entries(database)),
        None if pushing => (0, 4),
        None => return Err(RefusalCode::NothingToPull { run: run.clone() }.into()),
    };
    if !pushing && existing.as_ref().and_then(|f| f.database_size(database)).is_none() {
        let code = RefusalCode::NoReplicaToPull { run: run.clone(), database: database.to_owned() };
        return Err(code.into());
    }
    if pushing {
        check_owner(central, plan)?;
        if existing.is_none() {
            creatable(&tree)?;
        }
    }
    Ok(Survey { tree, existing, current_bytes, new_files })
}

/// Carries out an allowed plan: the only part of the gate that writes.
fn act(
    config: &Config,
    plan: &Plan,
    survey: Survey,
    recorder: &Recorder<'_>,
    key: Option<&str>,
    line: Line,
    subject: &str,
) -> Result<i32, Refusal> {
    let (limits, decision, central) = (&plan.policy.limits, &plan.decision, &recorder.central);
    let (wal_only, commcheck, pushing) = match decision.action {
        Action::MakeRunDir => {
            let folder = survey.tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs)?;
            central.claim(&plan.party, &decision.run)?;
            let line = line.field("event", "decision").field("verdict", "allow").field("created", folder.created);
            let created = if folder.created { "created" } else { "exists" };
            recorder.record(&line, &plan.party, subject, GateOutcome::Allow, created);
            return Ok(0);
        }
        Action::Push { wal_only, commcheck } => (wal_only, commcheck, true),
        Action::Pull { wal_only, commcheck } => (wal_only, commcheck, false),
    };
    let program = config.sqlite3_rsync.as_path();
    rsync_version::check(program, &config.state_dir)
        .map_err(|e| Refusal::with_detail(RefusalCode::Sqlite3RsyncTooOld, e))?;
    if pushing {
        // The origin speaks first. Until it does, the push holds nothing: the stock client retries a failed attempt
        // without closing it, and that attempt must not keep the replica's lock from the retry; a session that
        // closes without a byte (stdin at its end) costs nothing at all.
        match crate::fs::sys::wait_for_channel(limits.max_sync_seconds) {
            crate::fs::sys::Channel::Data => {}
            quiet_or_closed => {
                let line = line
                    .field("event", "outcome")
                    .field("verdict", "nothing-sent")
                    .field("channel", format!("{quiet_or_closed:?}").to_lowercase());
                recorder.record(&line, &plan.party, subject, GateOutcome::Done("nothing-sent".into()), "");
                return Ok(0);
            }
        }
    }
    let database = decision.database.as_deref().unwrap_or_default();
    let locks = Locks::acquire(
        &config.locks_dir(),
        &plan.party,
        &decision.run,
        database,
        limits.max_concurrent_syncs,
        Duration::from_secs(config.lock_wait_seconds),
    )
    .map_err(|e| match e {
        HandoverError::LockFile { .. } => Refusal::with_detail(RefusalCode::LocksUnavailable, e),
        e => RefusalCode::Busy(e).into(),
    })?;
    // A pull writes nothing of the party's: its limit is the replica as it is.
    let grant = match pushing {
        true => Some(central.reserve_push(
            config,
            &survey.tree,
            limits,
            (&decision.run, database),
            survey.current_bytes,
            survey.new_files,
        )?),
        false => None,
    };
    let fsize_limit = grant.as_ref().map_or(survey.current_bytes.max(1), |g| g.fsize_limit);
    let folder = match survey.existing {
        Some(folder) => folder,
        None => survey.tree.run_folder(&decision.run, plan.policy.create_runs, limits.max_runs)?,
    };
    if pushing {
        central.claim(&plan.party, &decision.run)?;
    }
    // Armed before the child opens the replica: after it, the replica's log tells whether the push changed anything.
    let watch = if pushing { unchanged::watch(&folder, database) } else { None };
    let sandbox = Sandbox::prepare(program, &folder.fd, plan.policy.require_sandbox).map_err(RefusalCode::Sandbox)?;
    let memory = ChildMemory::prepare(limits.max_sync_memory, config.sync_cgroup.as_deref());
    let sandbox_summary = format!("{}; {}", sandbox.summary, memory.summary());
    let args = sync_arguments(decision, (wal_only, commcheck), Path::new(database));
    let allow = line
        .clone()
        .field("event", "decision")
        .field("verdict", "allow")
        .field("sandbox", &sandbox_summary)
        .field("fsize_limit", fsize_limit);
    recorder.record(&allow, &plan.party, subject, GateOutcome::Allow, &sandbox_summary);
    let started_at = crate::time::now();
    let run_folder = folder.fd.as_fd();
    let max_seconds = limits.max_sync_seconds;
    let launch = Launch { program, args, run_folder, fsize_limit, sandbox, memory, max_seconds };
    let outcome = handover::run(launch).map_err(|e| Refusal::with_detail(RefusalCode::SyncNotStarted, e))?;
    let stopped = stopped_reason(&outcome, limits);
    if pushing && !outcome.exit.succeeded() {
        // A child stopped mid-write leaves its log or journal for the next writer to settle; settle it now, so that
        // the replica reads as its last complete transaction left it to anyone, read-only openers included.
        if let Err(error) = settle::replica(config, &folder, database, limits.max_sync_memory) {
            recorder.store_error(format!("settling {subject} after the push broke off: {error}"));
        }
    }
    let changed = match (&watch, outcome.exit.succeeded()) {
        (Some(watch), true) => watch.changed(),
        _ => None,
    };
    drop(watch);
    let after = folder.database_size(database);
    if pushing {
        // Still under the replica lock, before anyone verifies or reads what was pushed.
        if let Err(error) = folder.keep_wal_companions(database, false) {
            recorder.store_error(error);
        }
    }
    let done = line
        .clone()
        .field("event", "outcome")
        .field("verdict", "done")
        .field("exit", outcome.exit)
        .field("seconds", format!("{:.3}", outcome.seconds))
        .field_opt("replica_bytes", after)
        .field_opt("peak_rss", outcome.peak_rss)
        .field_opt("changed", changed);
    recorder.record(&done, &plan.party, subject, GateOutcome::Done(outcome.exit.to_string()), "");
    if let Some(why) = &stopped {
        reply::refuse(recorder.listening, why);
    }
    if !pushing {
        drop((grant, locks));
        return Ok(outcome.exit.status());
    }
    let row = LedgerRow {
        party: plan.party.clone(),
        key_id: key.map(str::to_owned),
        run: decision.run.clone(),
        database: database.to_owned(),
        started_at,
        seconds: outcome.seconds,
        exit: outcome.exit.to_string(),
        replica_bytes: after,
        transport: recorder.transport,
        changed,
    };
    // Still under the replica lock: the push is recorded, and its schema checked, before the next one starts.
    let had_pending = grant.as_ref().is_some_and(|g| g.had_pending);
    let status = match central.finish(&row, had_pending) {
        Ok(()) => outcome.exit.status(),
        Err(Finished::Refused(reason)) => {
            let refused = line
                .field("event", "verdict")
                .field("verdict", "refuse")
                .field("code", "schema")
                .field("reason", &reason)
                .warning();
            recorder.record(&refused, &plan.party, subject, GateOutcome::Refuse("schema".into()), &reason);
            let told = format!(
                "the pushed database was received but is not published: {reason}; readers keep the last verified \
                 copy until the run is withdrawn"
            );
            reply::refuse(recorder.listening, &told);
            REFUSED
        }
        Err(Finished::Unrecorded(error)) => {
            recorder.store_error(error);
            outcome.exit.status()
        }
    };
    drop((grant, locks));
    Ok(status)
}

/// Why the worker's sync stopped on this host, when a signal or a limit stopped it: one line it reads as
/// `ERROR: evosync-gate: …`.
fn stopped_reason(outcome: &handover::Outcome, limits: &crate::policy::Limits) -> Option<String> {
    let after = "the replica is left as its last complete transaction left it; push again";
    match outcome.exit {
        Exit::Code(_) => None,
        Exit::MemoryLimit => Some(format!(
            "the sync needed more memory than this host gives it (max_sync_memory: {}) and was stopped; the replica \
             keeps its previous content",
            limits.max_sync_memory
        )),
        Exit::TimedOut => Some(format!(
            "the sync took longer than this host allows (max_sync_seconds: {}) and was stopped; {after}",
            limits.max_sync_seconds
        )),
        Exit::Signal(signal) if outcome.forwarded.is_some() => Some(format!(
            "the central host stopped the sync ({} reached its session: sshd or the host is shutting down or \
             restarting); {after}",
            signal_name(signal)
        )),
        Exit::Signal(signal) => Some(format!(
            "the sync process on the central host was killed ({}: stopped by the host's administrator or its \
             out-of-memory killer); {after}",
            signal_name(signal)
        )),
    }
}

fn signal_name(signal: i32) -> String {
    crate::fs::sys::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// Refuses a run another party owns, before anything is created for it.
fn check_owner(central: &Central, plan: &Plan) -> Result<(), Refusal> {
    match central.run_owner(&plan.party, &plan.decision.run)? {
        RunOwner::Another => Err(RefusalCode::RunOwned { run: plan.decision.run.clone() }.into()),
        _ => Ok(()),
    }
}

/// The argument vector for the configured sqlite3_rsync: the mode, the accepted flags, then the names in the order
/// the mode expects. This host's side is the database's bare name: the child runs in its run folder, so nothing it is
/// given, and nothing it prints (`--commcheck` echoes both names), names a folder of this host.
pub fn sync_arguments(decision: &Decision, (wal_only, commcheck): (bool, bool), host_side: &Path) -> Vec<OsString> {
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
        args.extend([peer, host_side.into()]);
    } else {
        args.extend([host_side.into(), peer]);
    }
    args
}

impl Survey {
    fn run_exists(&self) -> bool {
        self.existing.is_some()
    }
}
