//! The gate's line to the service: a UNIX socket (`gate_socket` in the configuration) on which `evosync serve`
//! answers what a gate may not, or should not, work out alone: whose key this is, whose run, how much room is left
//! once the uploads and the other pushes in flight have their share, and where its records go.
//!
//! A gate running as a party's own account (per-party mode) cannot open the state store at all; this socket is how
//! its claims, its ledger row and its audit records still reach it. The service knows the caller by SO_PEERCRED, and
//! `may_act_for` decides what that caller may ask about.
//!
//! Framing: one JSON object per line each way, a line at most `MAX_LINE` bytes. The protocol types and the peer rule
//! live here because both wings speak them: `gate::central` (blocking client) and `serve::broker` (tokio server).

use crate::access::{KeyState, OverQuota, RunOwner};
use crate::store::LedgerRow;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The longest line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// The socket's file name in `state_dir`, where it is when the configuration says nothing (shared-account mode: the
/// gate runs as the service's own account and can enter `state_dir`).
pub const SOCKET_FILE: &str = "gate.sock";

/// Where `evosync init --account-mode per-party` puts it: outside `state_dir`, which party accounts cannot enter
/// (systemd's `RuntimeDirectory=evosync` makes the folder).
pub const PER_PARTY_SOCKET: &str = "/run/evosync/gate.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Which party holds SSH key `id`, and may it log in now?
    Key { id: String },
    /// Whose is `run`, seen from `party`? Changes nothing.
    RunOwner { party: String, run: String },
    /// Claims `run` for `party` (its folder exists now).
    Claim { party: String, run: String },
    /// Room for a push of `run/database`, which holds `current_bytes` now and would add `new_files` files and
    /// folders. Only a gate holding the replica's lock may ask; from here until `Finish` the replica counts as being
    /// pushed (`catalog::pipeline`). Held until `Finish`, or until this connection closes.
    Reserve { party: String, run: String, database: String, current_bytes: u64, new_files: u64 },
    /// One of the gate's own records for the hash-chained audit trail.
    Audit(GateRecord),
    /// The push reserved on this connection has ended: its ledger row. Releases the reservation; answered once the
    /// push's schema passed (`Done`) or did not (`Refused`).
    Finish { ledger: LedgerRow },
    /// Did the SSH session from `client` to `server` (sshd's `SSH_CONNECTION`) come through the service's tunnel,
    /// and with whose API key? Changes nothing.
    Transport { client: SocketAddr, server: SocketAddr },
}

/// What a gate may record in the audit trail: its decision on a session and a push's outcome, for its own party, in
/// the gate's words. The service writes it as the gate's (`gate:…` actor, `gate` action); nothing else can be said
/// through it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateRecord {
    pub party: String,
    /// `gate` or `gate:key:ID`.
    pub actor: String,
    /// `RUN` or `RUN/DATABASE` (empty before the command named one).
    pub subject: String,
    pub outcome: GateOutcome,
    pub detail: String,
}

/// The outcomes a gate records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateOutcome {
    Allow,
    /// Refused, with the refusal's code (`gate::refusal::RefusalCode::label`).
    Refuse(String),
    /// The sync ended with this exit (`0`, `signal-9`, `timeout`, `memory_limit`).
    Done(String),
}

impl GateOutcome {
    /// As the audit trail's `outcome` column holds it.
    pub fn text(&self) -> String {
        match self {
            GateOutcome::Allow => "allow".into(),
            GateOutcome::Refuse(code) => format!("refuse:{code}"),
            GateOutcome::Done(exit) => format!("done:{exit}"),
        }
    }
}

impl Request {
    /// The party a request speaks for (`Key` names none: the answer does).
    pub fn party(&self) -> Option<&str> {
        match self {
            Request::Key { .. } | Request::Transport { .. } => None,
            Request::RunOwner { party, .. }
            | Request::Claim { party, .. }
            | Request::Reserve { party, .. }
            | Request::Audit(GateRecord { party, .. }) => Some(party),
            Request::Finish { ledger } => Some(&ledger.party),
        }
    }

    /// Are the names it carries what a gate sends: a party name, runs and databases single plain path segments, an
    /// audit record a gate's? The service uses them in paths and keys, so a peer that sends others (only a broken or
    /// subverted gate would) is answered without anything done.
    pub fn names_are_plain(&self) -> bool {
        use crate::names::{is_party_name, is_plain_segment};
        match self {
            Request::Key { .. } | Request::Transport { .. } => true,
            Request::Audit(record) => {
                let actor_is_gate =
                    record.actor == "gate" || record.actor.strip_prefix("gate:key:").is_some_and(is_plain_segment);
                let subject_is_plain = record.subject.is_empty()
                    || record.subject.splitn(2, '/').all(is_plain_segment) && record.subject.split('/').count() <= 2;
                (record.party.is_empty() || is_party_name(&record.party))
                    && actor_is_gate
                    && subject_is_plain
                    && record.detail.len() <= 4096
            }
            Request::RunOwner { party, run } | Request::Claim { party, run } => {
                is_party_name(party) && is_plain_segment(run)
            }
            Request::Reserve { party, run, database, .. } => {
                is_party_name(party) && is_plain_segment(run) && is_plain_segment(database)
            }
            Request::Finish { ledger } => {
                is_party_name(&ledger.party) && is_plain_segment(&ledger.run) && is_plain_segment(&ledger.database)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Done,
    Key {
        party: String,
    },
    /// No such key, or (to a party's own account) another party's.
    KeyUnknown,
    /// The key may not log in now (`access::KeyState`, never `Active`).
    KeyRefused {
        state: KeyState,
        party: String,
    },
    Owner {
        owner: RunOwner,
    },
    /// The run belongs to another party.
    RunOwned,
    /// The push may write files up to `fsize_limit` bytes.
    Granted {
        fsize_limit: u64,
    },
    OverQuota {
        over: OverQuota,
    },
    /// The push ended, and what it left does not pass the schema its policy allows: the worker is told why.
    Refused {
        reason: String,
    },
    /// The SSH session came straight to sshd, not through the tunnel.
    Direct,
    /// The SSH session came through a tunnel opened with an API key of `party`; `None` when the caller, a party's own
    /// account, asked about another party's tunnel (whose it is is none of its business; that it is not its own is).
    Tunnel {
        party: Option<String>,
    },
    /// The caller may not ask this (another party's business, or a push it does not hold), and why.
    Forbidden {
        reason: String,
    },
    /// The service could not answer (its store failed, say); the gate refuses and logs `error`.
    Failed {
        error: String,
    },
}

/// Who is on the other end of the socket, by SO_PEERCRED.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    /// The account's name, when it has one.
    pub account: Option<String>,
}

/// What a caller may ask about `party`: root, the service's own account and the shared `evosync` account (the
/// shared-account gate runs as it) may ask about any party; a per-party account `evosync-NAME` only about party NAME;
/// anyone else about nothing.
pub fn may_act_for(peer: &Peer, service_uid: u32, party: &str) -> bool {
    trusted(peer, service_uid) || peer.account.as_deref().and_then(|a| a.strip_prefix("evosync-")) == Some(party)
}

/// Whether the caller may ask about any party (`Key` answers for others' keys as `Unknown` otherwise).
pub fn trusted(peer: &Peer, service_uid: u32) -> bool {
    peer.uid == 0 || peer.uid == service_uid || peer.account.as_deref() == Some(crate::config::SHARED_ACCOUNT)
}

/// One line of JSON, newline-terminated.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// Parses one line (without its newline); `None` for anything that is not exactly one message.
pub fn decode<T: for<'de> Deserialize<'de>>(line: &[u8]) -> Option<T> {
    if line.len() > MAX_LINE {
        return None;
    }
    serde_json::from_slice(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_account_speaks_for_its_party_alone() {
        let acme = Peer { uid: 1001, account: Some("evosync-acme".into()) };
        assert!(may_act_for(&acme, 999, "acme"));
        assert!(!may_act_for(&acme, 999, "beta"));
        assert!(!may_act_for(&acme, 999, "acme2"));
        let service = Peer { uid: 999, account: Some("evosync".into()) };
        assert!(may_act_for(&service, 999, "beta") && trusted(&service, 999));
        let stranger = Peer { uid: 1002, account: Some("mallory".into()) };
        assert!(!may_act_for(&stranger, 999, "mallory") && !trusted(&stranger, 999));
        let nameless = Peer { uid: 1003, account: None };
        assert!(!may_act_for(&nameless, 999, "acme"));
    }

    #[test]
    fn only_plain_names_pass() {
        let finish = |party: &str, run: &str, database: &str| Request::Finish {
            ledger: LedgerRow {
                party: party.into(),
                key_id: None,
                run: run.into(),
                database: database.into(),
                started_at: 0,
                seconds: 0.0,
                exit: "0".into(),
                replica_bytes: None,
                transport: Default::default(),
                changed: None,
            },
        };
        assert!(finish("acme", "01KFYA32R09C5KJYNH1SM2W1DR_run", "genomes.sqlite").names_are_plain());
        for (party, run, database) in [
            ("acme", "R", "../../x"),
            ("acme", "R/.", "genomes.sqlite"),
            ("acme", "..", "genomes.sqlite"),
            ("acme", "", "genomes.sqlite"),
            ("../acme", "R", "genomes.sqlite"),
        ] {
            assert!(!finish(party, run, database).names_are_plain(), "{party} {run} {database}");
        }
        assert!(!Request::Claim { party: "acme".into(), run: "a/b".into() }.names_are_plain());
        assert!(!Request::RunOwner { party: "ACME".into(), run: "R".into() }.names_are_plain());
        assert!(Request::Key { id: "anything".into() }.names_are_plain());
        let record = |actor: &str, subject: &str| {
            Request::Audit(GateRecord {
                party: "acme".into(),
                actor: actor.into(),
                subject: subject.into(),
                outcome: GateOutcome::Allow,
                detail: String::new(),
            })
        };
        assert!(record("gate", "R/genomes.sqlite").names_are_plain());
        assert!(record("gate:key:k1", "").names_are_plain());
        for (actor, subject) in [("admin", "R"), ("serve:catalog", "R"), ("gate", "R/a/b"), ("gate", "../R")] {
            assert!(!record(actor, subject).names_are_plain(), "{actor} {subject}");
        }
    }

    #[test]
    fn messages_round_trip_and_strangers_are_refused() {
        let request = Request::Reserve {
            party: "acme".into(),
            run: "R".into(),
            database: "genomes.sqlite".into(),
            current_bytes: 5,
            new_files: 2,
        };
        let line = encode(&request);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode::<Request>(&line[..line.len() - 1]), Some(request));
        assert_eq!(decode::<Request>(br#"{"op":"reserve","party":"acme"}"#), None);
        assert_eq!(decode::<Request>(br#"{"op":"key","id":"x","extra":1}"#), None);
        assert_eq!(decode::<Request>(&vec![b' '; MAX_LINE + 1]), None);
        let answer = Answer::OverQuota { over: OverQuota::Files { used: 3, max: 3 } };
        let line = encode(&answer);
        assert_eq!(decode::<Answer>(&line[..line.len() - 1]), Some(answer));
        let request =
            Request::Transport { client: "127.0.0.1:40000".parse().unwrap(), server: "[::1]:22".parse().unwrap() };
        let line = encode(&request);
        assert_eq!(decode::<Request>(&line[..line.len() - 1]), Some(request));
        assert_eq!(decode::<Request>(br#"{"op":"transport","client":"nope","server":"127.0.0.1:22"}"#), None);
    }
}
