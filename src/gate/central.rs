//! Where the gate's shared state lives: whose key, whose run, how much room, and where the records go.
//!
//! When `evosync serve` runs, the gate asks it over the broker socket (`crate::broker`): the service holds every
//! party's quota book, so a push's room is reserved against the uploads and pushes in flight, and a gate running as
//! a party's own account (which cannot open the store) still gets its claims, ledger row and audit records in. The
//! reservation lasts as long as the connection: a gate that dies gives it back.
//!
//! Without the service the gate opens the store itself (shared-account mode); a push of a party with a byte quota
//! then holds the party's quota lock for its whole run, so two pushes never count the same room. A host with neither
//! keeps its records in syslog and `audit_log` only.

use super::refusal::{Refusal, RefusalCode};
use crate::access::{self, ClaimError, Headroom, KeyState, OverQuota, RunOwner, Usage};
use crate::broker::{self, Answer, GateRecord, Request};
use crate::catalog::push::AfterPush;
use crate::config::Config;
use crate::fs::confine::{ConfineError, PartyTree};
use crate::fs::locks;
use crate::policy::Limits;
use crate::store::{AuditEntry, LedgerRow, Store};
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the gate waits for the service's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(60);

pub enum Central {
    Service(Broker),
    Store(Store),
    /// There is a store, but this account cannot open it and the service does not answer (a party account with the
    /// service down): nothing that needs the central record may happen.
    Unreachable(String),
    /// No store on this host (never `evosync init`): records go to syslog and `audit_log` only.
    Absent,
}

/// A connection to the service's broker socket.
pub struct Broker {
    stream: RefCell<BufReader<UnixStream>>,
    /// The verification's budget, which the answer to a push's end may take.
    verify_seconds: u64,
}

/// Room granted for a push: the child's RLIMIT_FSIZE, held until dropped.
pub struct Grant {
    pub fsize_limit: u64,
    /// Standalone: whether the replica had work waiting already (`catalog::push::started`).
    pub had_pending: bool,
    /// Standalone only: the party's quota lock, held for the whole push.
    _quota_lock: Option<locks::Held>,
}

impl Central {
    /// The service when it answers on `gate_socket`, else the store when this account can open it, else nothing.
    pub fn connect(config: &Config) -> Central {
        if let Ok(broker) = Broker::connect(&config.gate_socket(), config.verify.seconds) {
            return Central::Service(broker);
        }
        let store_path = config.store_path();
        match store_path.try_exists() {
            Ok(false) => Central::Absent,
            _ => match Store::open_existing(&store_path) {
                Ok(store) => Central::Store(store),
                Err(error) => Central::Unreachable(format!(
                    "the service does not answer on {} and {error}",
                    config.gate_socket().display()
                )),
            },
        }
    }

    /// Whether there is no central record at all (not merely an unreachable one).
    pub fn is_absent(&self) -> bool {
        matches!(self, Central::Absent)
    }

    /// The party a registered SSH key speaks for, when the key may log in now (defence in depth: the
    /// authorized_keys file may lag behind a revoke).
    pub fn key_holder(&self, id: &str) -> Result<String, Refusal> {
        let unavailable = |e: String| Refusal::with_detail(RefusalCode::KeysUnavailable, e);
        match self {
            Central::Service(broker) => match broker.ask(&Request::Key { id: id.to_owned() }).map_err(unavailable)? {
                Answer::Key { party } => Ok(party),
                Answer::KeyUnknown => Err(RefusalCode::KeyUnknown.into()),
                Answer::KeyRefused { state, party } => Err(key_refusal(state, party)),
                other => Err(unavailable(format!("unexpected answer {other:?}"))),
            },
            Central::Store(store) => {
                let found = store.ssh_key_with_party(id).map_err(|e| unavailable(e.to_string()))?;
                let Some((key, party_enabled)) = found else { return Err(RefusalCode::KeyUnknown.into()) };
                match KeyState::of_ssh_key(&key, party_enabled, crate::time::now()) {
                    KeyState::Active => {}
                    state => return Err(key_refusal(state, key.party)),
                }
                let _ = store.touch_ssh_key(&key.id);
                Ok(key.party)
            }
            Central::Unreachable(why) => Err(unavailable(why.clone())),
            Central::Absent => Err(unavailable("this host has no state store (evosync init)".into())),
        }
    }

    /// Whose tunnel, if any, the SSH session came through (`transport`; only the service knows its tunnels).
    pub fn tunnel_of(&self, session: super::transport::SshSession) -> Result<super::transport::Via, Refusal> {
        use super::transport::Via;
        let unverifiable = |e: String| Refusal::with_detail(RefusalCode::TunnelUnverifiable, e);
        let Central::Service(broker) = self else { return Ok(Via::Direct) };
        let request = Request::Transport { client: session.client, server: session.server };
        match broker.ask(&request).map_err(unverifiable)? {
            Answer::Direct => Ok(Via::Direct),
            Answer::Tunnel { party } => Ok(Via::Tunnel { party }),
            other => Err(unverifiable(format!("unexpected answer {other:?}"))),
        }
    }

    /// Whose `run` is, seen from `party`.
    pub fn run_owner(&self, party: &str, run: &str) -> Result<RunOwner, Refusal> {
        let unreadable = |e: String| Refusal::with_detail(RefusalCode::RunsUnreadable, e);
        match self {
            Central::Service(broker) => {
                match broker.ask(&Request::RunOwner { party: party.into(), run: run.into() }).map_err(unreadable)? {
                    Answer::Owner { owner } => Ok(owner),
                    other => Err(unreadable(format!("unexpected answer {other:?}"))),
                }
            }
            Central::Store(store) => access::run_owner(store, party, run).map_err(|e| unreadable(e.to_string())),
            Central::Unreachable(why) => Err(unreadable(why.clone())),
            Central::Absent => Ok(RunOwner::Nobody),
        }
    }

    /// Claims `run` for `party`: a run folder is one party's, across all parties.
    pub fn claim(&self, party: &str, run: &str) -> Result<(), Refusal> {
        let failed = |e: String| Refusal::with_detail(RefusalCode::RunNotRecorded, e);
        let owned = || Refusal::from(RefusalCode::RunOwned { run: run.to_owned() });
        match self {
            Central::Service(broker) => {
                match broker.ask(&Request::Claim { party: party.into(), run: run.into() }).map_err(failed)? {
                    Answer::Done => Ok(()),
                    Answer::RunOwned => Err(owned()),
                    other => Err(failed(format!("unexpected answer {other:?}"))),
                }
            }
            Central::Store(store) => access::claim_run(store, party, run).map_err(|e| match e {
                ClaimError::Owned(_) => owned(),
                ClaimError::Store(error) => failed(error.to_string()),
            }),
            Central::Unreachable(why) => Err(failed(why.clone())),
            Central::Absent => Ok(()),
        }
    }

    /// Room for a push of `run/database`, which holds `current_bytes` now and adds `new_files` entries; from here on
    /// the replica counts as being pushed (`catalog::push::started`). Returns the grant, and whether the replica had
    /// work waiting already (standalone; the service keeps that itself).
    pub fn reserve_push(
        &self,
        config: &Config,
        tree: &PartyTree,
        limits: &Limits,
        (run, database): (&str, &str),
        current_bytes: u64,
        new_files: u64,
    ) -> Result<Grant, Refusal> {
        let party = tree.party();
        if let Central::Service(broker) = self {
            let request = Request::Reserve {
                party: party.into(),
                run: run.into(),
                database: database.into(),
                current_bytes,
                new_files,
            };
            let failed = |e: String| Refusal::with_detail(RefusalCode::QuotaUnknown, e);
            return match broker.ask(&request).map_err(failed)? {
                Answer::Granted { fsize_limit } => Ok(Grant { fsize_limit, had_pending: false, _quota_lock: None }),
                Answer::OverQuota { over } => Err(over_quota(party, over)),
                other => Err(failed(format!("unexpected answer {other:?}"))),
            };
        }
        // Standalone: the party's pushes take their room one at a time.
        let quota_lock = match limits.max_party_bytes {
            Some(_) => Some(quota_lock(&config.locks_dir(), party, config.lock_wait_seconds)?),
            None => None,
        };
        let had_pending = match self {
            Central::Store(store) => crate::catalog::push::started(store, party, run, database)
                .map_err(|e| Refusal::with_detail(RefusalCode::RunNotRecorded, e))?,
            _ => false,
        };
        let homes = crate::catalog::home::Homes::open(config).ok();
        let runs = match self {
            Central::Store(store) => store.runs(Some(party)).map(|runs| runs.into_iter().map(|r| r.name).collect()),
            _ => Ok(Vec::new()),
        }
        .unwrap_or_default();
        let used = access::measure(tree, homes.as_ref(), &runs)
            .map_err(|e| Refusal::with_detail(RefusalCode::QuotaUnknown, e))?;
        let copy_bytes = homes.as_ref().map_or(0, |homes| copy_size(homes, run, database));
        let headroom = Headroom::of(limits, used, Usage::default());
        let (fsize_limit, _) =
            headroom.for_push(limits, current_bytes, copy_bytes, new_files).map_err(|over| over_quota(party, over))?;
        Ok(Grant { fsize_limit, had_pending, _quota_lock: quota_lock })
    }

    /// One of the gate's records in the hash-chained audit trail.
    pub fn audit(&self, record: GateRecord) -> Result<(), String> {
        match self {
            Central::Service(broker) => expect_done(broker.ask(&Request::Audit(record))?),
            Central::Store(store) => {
                let outcome = record.outcome.text();
                let entry = AuditEntry {
                    actor: &record.actor,
                    action: crate::store::AuditAction::Gate,
                    party: &record.party,
                    subject: &record.subject,
                    outcome: &outcome,
                    detail: &record.detail,
                };
                store.append_audit(&entry).map(drop).map_err(|e| e.to_string())
            }
            Central::Unreachable(why) => Err(why.clone()),
            Central::Absent => Err("no state store".into()),
        }
    }

    /// The push's ledger row (and, with the service, the end of its reservation). With the service, its answer comes
    /// once the pushed schema was checked: `Err(Refused)` when it did not pass. Standalone, the replica awaits the
    /// service's next start.
    pub fn finish(&self, row: &LedgerRow, had_pending: bool) -> Result<(), Finished> {
        match self {
            Central::Service(broker) => {
                let ledger = row.clone();
                // The service checks the schema before it answers: as long as the check's own budget, and then some.
                let wait = Duration::from_secs(broker.verify_seconds.saturating_add(60));
                match broker.ask_within(&Request::Finish { ledger }, wait).map_err(Finished::Unrecorded)? {
                    Answer::Done => Ok(()),
                    Answer::Refused { reason } => Err(Finished::Refused(reason)),
                    other => Err(Finished::Unrecorded(format!("the service answered {other:?}"))),
                }
            }
            Central::Store(store) => match crate::catalog::push::ended(store, row, had_pending) {
                Ok(AfterPush::Nothing | AfterPush::Check { .. }) => Ok(()),
                Err(error) => Err(Finished::Unrecorded(error.to_string())),
            },
            Central::Unreachable(why) => Err(Finished::Unrecorded(why.clone())),
            Central::Absent => Ok(()),
        }
    }
}

/// Why a push's end did not end well on the central side.
#[derive(Debug)]
pub enum Finished {
    /// What the push left does not pass its policy's schema: the worker is told this.
    Refused(String),
    /// The push's record could not be kept (the service went away, say).
    Unrecorded(String),
}

/// The bytes the verified copy of `run/database` holds (its database file and `-wal`), where the gate can see it.
fn copy_size(homes: &crate::catalog::home::Homes, run: &str, database: &str) -> u64 {
    let Ok(Some(home)) = homes.find(run) else { return 0 };
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| crate::fs::sys::stat_in(&home.fd, &format!("{database}{suffix}")).ok().flatten())
        .map(|stat| stat.st_size.max(0) as u64)
        .sum()
}

fn key_refusal(state: KeyState, party: String) -> Refusal {
    match state {
        KeyState::Revoked => RefusalCode::KeyRevoked,
        KeyState::Expired => RefusalCode::KeyExpired,
        KeyState::PartyDisabled | KeyState::Active => RefusalCode::PartyDisabled { party },
    }
    .into()
}

fn expect_done(answer: Answer) -> Result<(), String> {
    match answer {
        Answer::Done => Ok(()),
        other => Err(format!("the service answered {other:?}")),
    }
}

fn over_quota(party: &str, over: OverQuota) -> Refusal {
    let error = match over {
        OverQuota::Bytes { used, max } => ConfineError::OverQuota { party: party.to_owned(), used, max },
        OverQuota::Files { used, max } => ConfineError::TooManyFiles { party: party.to_owned(), count: used, max },
    };
    error.into()
}

/// The party's quota lock (standalone pushes), waited for up to `wait_seconds`.
fn quota_lock(locks_dir: &Path, party: &str, wait_seconds: u64) -> Result<locks::Held, Refusal> {
    let failed = |e: locks::LockFileError| Refusal::with_detail(RefusalCode::LocksUnavailable, e);
    let path = locks::party_dir(locks_dir, party).map_err(failed)?.join("quota.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_seconds);
    locks::first_free(&[path], deadline)
        .map_err(failed)?
        .ok_or_else(|| RefusalCode::QuotaBusy { party: party.to_owned(), waited: wait_seconds }.into())
}

impl Broker {
    fn connect(path: &Path, verify_seconds: u64) -> std::io::Result<Broker> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(ANSWER_WAIT))?;
        stream.set_write_timeout(Some(ANSWER_WAIT))?;
        Ok(Broker { stream: RefCell::new(BufReader::new(stream)), verify_seconds })
    }

    /// One question, one answer.
    fn ask(&self, request: &Request) -> Result<Answer, String> {
        self.ask_within(request, ANSWER_WAIT)
    }

    /// One question, one answer within `wait`.
    fn ask_within(&self, request: &Request, wait: Duration) -> Result<Answer, String> {
        let mut stream = self.stream.borrow_mut();
        stream.get_ref().set_read_timeout(Some(wait)).map_err(|e| format!("the service's socket: {e}"))?;
        stream.get_mut().write_all(&broker::encode(request)).map_err(|e| format!("the service's socket: {e}"))?;
        let mut line = Vec::new();
        stream
            .by_ref()
            .take(broker::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("the service's socket: {e}"))?;
        if line.pop() != Some(b'\n') {
            return Err("the service closed the socket or sent an overlong line".into());
        }
        match broker::decode::<Answer>(&line) {
            Some(Answer::Failed { error }) => Err(format!("the service failed: {error}")),
            Some(Answer::Forbidden { reason }) => Err(format!("the service refused this account's question: {reason}")),
            Some(answer) => Ok(answer),
            None => Err("the service's answer is not one the gate knows".into()),
        }
    }
}
