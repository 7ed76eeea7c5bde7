//! Every reason a push (or pull, or `mkdir`) can be refused, in one enum, and the one place a refusal is recorded and
//! sent to the worker.
//!
//! A code's `Display` is the text the worker reads (`ERROR: evosync-gate: …`); its `label` is the `code=` field of the
//! audit line. Details about the host's own set-up travel beside it in `Refusal::detail`, for the host's log only.

use super::central::Central;
use super::command::{CommandError, Direction};
use super::decide::Denial;
use super::handover::HandoverError;
use crate::broker::{GateOutcome, GateRecord};
use crate::fs::confine::ConfineError;
use crate::fs::sandbox::SandboxError;
use crate::log::Line;
use crate::store::Transport;
use std::fmt;

/// Exit status of a refusal (sqlite3_rsync itself exits 1 on errors).
pub const REFUSED: i32 = 1;

#[derive(Debug)]
pub enum RefusalCode {
    /// No usable configuration on this host.
    BrokenConfig,
    /// The Unix account is not `evosync-NAME` and no `--party` was given.
    NotAPartyAccount,
    NoParty,
    BadPartyName(String),
    Command(CommandError),
    NoPolicy {
        party: String,
    },
    Denied(Denial),
    /// The policy requires a sandbox this kernel cannot give.
    SandboxRequired,
    Sandbox(SandboxError),
    KeyUnknown,
    KeyRevoked,
    KeyExpired,
    PartyDisabled {
        party: String,
    },
    /// The key's authorized_keys line names another party than the store does.
    KeyOfAnotherParty,
    /// The session came through a tunnel opened with another party's API key (`transport`); `party` is the SSH
    /// key's.
    TunnelOfAnotherParty {
        party: String,
    },
    /// The gate cannot ask the service whether this session came through its tunnel, and it may have.
    TunnelUnverifiable,
    NoTree {
        party: String,
    },
    Confine(ConfineError),
    NothingToPull {
        run: String,
    },
    NoReplicaToPull {
        run: String,
        database: String,
    },
    RunOwned {
        run: String,
    },
    Busy(HandoverError),
    KeysUnavailable,
    LocksUnavailable,
    RunsUnreadable,
    RunNotRecorded,
    SyncNotStarted,
    /// The service could not say how much room the party has.
    QuotaUnknown,
    /// Another push of the party holds its quota lock (standalone, no service).
    QuotaBusy {
        party: String,
        waited: u64,
    },
    /// The configured sqlite3_rsync predates the release that checks every ORIGIN_BEGIN's page size, or is not
    /// sqlite3_rsync at all (the detail says which; see `rsync_version`).
    Sqlite3RsyncTooOld,
}

impl RefusalCode {
    /// The audit line's `code=` and the store's `refuse:CODE` outcome.
    pub fn label(&self) -> &'static str {
        use RefusalCode::*;
        match self {
            BrokenConfig => "config",
            NotAPartyAccount | NoParty | BadPartyName(_) => "party",
            Command(_) => "command",
            NoPolicy { .. } => "policy",
            Denied(_) => "denied",
            SandboxRequired | Sandbox(_) => "sandbox",
            KeyUnknown | KeyRevoked | KeyExpired | PartyDisabled { .. } | KeyOfAnotherParty => "key",
            NoTree { .. } | Confine(_) | NothingToPull { .. } | NoReplicaToPull { .. } => "confine",
            RunOwned { .. } => "run",
            TunnelOfAnotherParty { .. } | TunnelUnverifiable => "tunnel",
            Busy(_) | QuotaBusy { .. } => "busy",
            KeysUnavailable | LocksUnavailable | RunsUnreadable | RunNotRecorded | SyncNotStarted | QuotaUnknown => {
                "internal"
            }
            Sqlite3RsyncTooOld => "sqlite3_rsync",
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RefusalCode::*;
        match self {
            BrokenConfig => f.write_str("the central host's configuration is broken; tell the administrator"),
            NotAPartyAccount => f.write_str("this account is not set up for a party; tell the administrator"),
            NoParty => f.write_str("no party given (--party NAME or an evosync-NAME account)"),
            BadPartyName(party) => write!(f, "'{party}' is not a party name; tell the administrator"),
            Command(error) => error.fmt(f),
            NoPolicy { party } => {
                write!(f, "party '{party}' has no usable policy on this host; tell the administrator")
            }
            Denied(denial) => denial.fmt(f),
            SandboxRequired => {
                f.write_str("this host cannot sandbox the sync that your policy requires; tell the administrator")
            }
            Sandbox(error) => error.fmt(f),
            KeyUnknown => f.write_str("this SSH key is not registered on this host; ask the administrator"),
            KeyRevoked => f.write_str("this SSH key was revoked; ask the administrator for a new one"),
            KeyExpired => f.write_str("this SSH key has expired; ask the administrator to renew it"),
            PartyDisabled { party } => write!(f, "party '{party}' is disabled on this host; ask the administrator"),
            KeyOfAnotherParty => f.write_str("this key's line names another party; tell the administrator"),
            TunnelOfAnotherParty { party } => write!(
                f,
                "this SSH key is party '{party}''s, but the tunnel was opened with another party's API key; use one \
                 party's API key and SSH key together"
            ),
            TunnelUnverifiable => f.write_str(
                "the central host cannot tell whether this session came through its tunnel; tell the administrator",
            ),
            NoTree { party } => write!(f, "party '{party}' has no tree on this host; tell the administrator"),
            Confine(error) => error.fmt(f),
            NothingToPull { run } => write!(f, "there is no run '{run}' to pull from"),
            NoReplicaToPull { run, database } => write!(f, "there is no replica '{run}/{database}' to pull"),
            RunOwned { run } => {
                write!(f, "run '{run}' belongs to another party; name your runs with your own ULIDs")
            }
            Busy(error) => error.fmt(f),
            KeysUnavailable => f.write_str("the central host cannot check keys now; tell the administrator"),
            LocksUnavailable => f.write_str("the central host cannot take its locks; tell the administrator"),
            RunsUnreadable => f.write_str("the central host cannot read its runs; tell the administrator"),
            RunNotRecorded => f.write_str("the central host cannot record the run; tell the administrator"),
            SyncNotStarted => f.write_str("the central host could not run the sync; tell the administrator"),
            QuotaUnknown => f.write_str("the central host cannot count your quota now; tell the administrator"),
            QuotaBusy { party, waited } => write!(
                f,
                "another push of party '{party}' is taking its quota's room; try again later (waited {waited}s)"
            ),
            Sqlite3RsyncTooOld => f.write_str(
                "the central host's sqlite3_rsync is too old to be run safely (it needs SQLite 3.53.4 or newer); \
                 tell the administrator",
            ),
        }
    }
}

/// A refusal: its code (what the worker reads) and what only the host's log may see.
#[derive(Debug)]
pub struct Refusal {
    pub code: RefusalCode,
    pub detail: Option<String>,
}

impl Refusal {
    pub fn with_detail(code: RefusalCode, detail: impl fmt::Display) -> Refusal {
        Refusal { code, detail: Some(detail.to_string()) }
    }

    /// As `explain` prints it.
    pub fn explained(&self) -> String {
        match &self.detail {
            Some(detail) => format!("refuse ({}): {}\ndetail: {detail}", self.code.label(), self.code),
            None => format!("refuse ({}): {}", self.code.label(), self.code),
        }
    }
}

impl From<RefusalCode> for Refusal {
    fn from(code: RefusalCode) -> Refusal {
        Refusal { code, detail: None }
    }
}

impl From<ConfineError> for Refusal {
    fn from(error: ConfineError) -> Refusal {
        RefusalCode::Confine(error).into()
    }
}

/// What one session writes its records to: the audit sink and the central record (the service or the store).
pub struct Recorder<'a> {
    pub sink: super::audit::Sink,
    pub central: Central,
    pub actor: String,
    /// Whether a stock sqlite3_rsync reads our stdout, and as which side.
    pub listening: Option<Direction>,
    pub command_line: Option<&'a str>,
    /// How the session reached sshd: every record of a tunnelled one says `transport=websocket`.
    pub transport: Transport,
}

impl Recorder<'_> {
    /// A line with the fields every record of this session carries.
    pub fn base(&self) -> Line {
        let line = Line::new().field_opt("command", self.command_line);
        match self.transport {
            Transport::Ssh => line,
            Transport::WebSocket => line.field("transport", self.transport),
        }
    }

    /// One audit line, and one record in the hash-chained trail; stderr only when neither took it.
    pub fn record(&self, line: &Line, party: &str, subject: &str, outcome: GateOutcome, detail: &str) {
        let logged = self.sink.write_host_side(line);
        let stored = !self.central.is_absent() && {
            let tunnelled;
            let detail = match self.transport {
                Transport::Ssh => detail,
                Transport::WebSocket => {
                    tunnelled = format!("transport=websocket; {detail}");
                    tunnelled.trim_end_matches("; ")
                }
            };
            let record = GateRecord {
                party: party.to_owned(),
                actor: self.actor.clone(),
                subject: subject.to_owned(),
                outcome,
                detail: detail.to_owned(),
            };
            match self.central.audit(record) {
                Ok(()) => true,
                Err(error) => {
                    self.store_error(error);
                    false
                }
            }
        };
        if !logged && !stored {
            line.to_stderr();
        }
    }

    /// A store write that failed after the decision: the host's log hears of it; the push is not undone for it.
    pub fn store_error(&self, error: impl fmt::Display) {
        self.sink.write(&Line::new().field("event", "store-error").field("error", error).warning());
    }

    /// Records the refusal and tells the worker. Returns the gate's exit status.
    pub fn refuse(&self, line: Line, party: &str, subject: &str, refusal: &Refusal) -> i32 {
        let reason = refusal.code.to_string();
        let line = line
            .field("event", "decision")
            .field("verdict", "refuse")
            .field("code", refusal.code.label())
            .field("reason", &reason)
            .private_field_opt("detail", refusal.detail.as_deref())
            .warning();
        let detail = match &refusal.detail {
            Some(detail) => format!("{reason}; {detail}"),
            None => reason.clone(),
        };
        self.record(&line, party, subject, GateOutcome::Refuse(refusal.code.label().to_owned()), &detail);
        super::reply::refuse(self.listening, &reason);
        REFUSED
    }
}
