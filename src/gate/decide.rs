//! Policy evaluation: a parsed request and a party's policy in, a decision or a denial out. Pure.
//!
//! The party sees its own tree as `/`. `RUN/DB`, `/RUN/DB` and `PREFIX/RUN/DB` (for each policy prefix) all name the
//! replica `replica_root/PARTY/RUN/DB`; nothing else names anything.

use super::command::{Direction, Request, SyncRequest};
use crate::names::MAX_SEGMENT_BYTES;
use crate::policy::Policy;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Push { wal_only: bool, commcheck: bool },
    Pull { wal_only: bool, commcheck: bool },
    MakeRunDir,
}

impl Action {
    /// As the audit line's `action=` and `explain` name it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Push { .. } => "push",
            Action::Pull { .. } => "pull",
            Action::MakeRunDir => "mkdir",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub run: String,
    /// The database file name; `None` for `mkdir`.
    pub database: Option<String>,
    /// The worker-side name passed through to sqlite3_rsync (only used in its messages).
    pub peer_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("party '{0}' may not push: its policy has push: false")]
    PushDisabled(String),
    #[error("party '{0}' may not pull: its policy has pull: false")]
    PullDisabled(String),
    #[error("'{path}' does not name a {want}; write {example}{prefixes}")]
    PathShape { path: String, want: &'static str, example: &'static str, prefixes: String },
    #[error("'{run}' is not an allowed run folder name (pattern: {pattern})")]
    RunName { run: String, pattern: String },
    #[error("a run folder name is at most {max} bytes; this one is {len} (shorten its label)")]
    RunTooLong { len: usize, max: usize },
    #[error("'{database}' is not an allowed database (allowed: {allowed})")]
    Database { database: String, allowed: String },
}

pub fn decide(request: &Request, policy: &Policy) -> Result<Decision, Denial> {
    match request {
        Request::Sync(sync) => decide_sync(sync, policy),
        Request::MakeRunDir { path } => {
            if !policy.push {
                return Err(Denial::PushDisabled(policy.party.clone()));
            }
            let segments = party_segments(path, policy);
            let [run] = segments.as_slice() else {
                return Err(path_shape(path, "run folder", "PREFIX/RUN", policy));
            };
            let run = checked_run(run, policy)?;
            Ok(Decision { action: Action::MakeRunDir, run, database: None, peer_name: String::new() })
        }
    }
}

fn decide_sync(sync: &SyncRequest, policy: &Policy) -> Result<Decision, Denial> {
    let (wal_only, commcheck) = (sync.wal_only, sync.commcheck);
    let (action, host_path, peer_name) = match sync.direction {
        Direction::Push if policy.push => (Action::Push { wal_only, commcheck }, &sync.path, &sync.peer_name),
        Direction::Pull if policy.pull => (Action::Pull { wal_only, commcheck }, &sync.path, &sync.peer_name),
        Direction::Push => return Err(Denial::PushDisabled(policy.party.clone())),
        Direction::Pull => return Err(Denial::PullDisabled(policy.party.clone())),
    };
    let segments = party_segments(host_path, policy);
    let [run, database] = segments.as_slice() else {
        return Err(path_shape(host_path, "replica", "PREFIX/RUN/DATABASE", policy));
    };
    let run = checked_run(run, policy)?;
    if !policy.databases.iter().any(|allowed| allowed == database) {
        return Err(Denial::Database { database: database.to_string(), allowed: policy.databases.join(", ") });
    }
    Ok(Decision { action, run, database: Some(database.to_string()), peer_name: peer_name.clone() })
}

/// The path's segments below the party root, with one policy prefix (or a lone leading '/') taken off.
/// Empty, `.` and `..` segments are kept so that the shape check refuses them.
fn party_segments<'a>(path: &'a str, policy: &Policy) -> Vec<&'a str> {
    let below_root = policy
        .path_prefixes
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix.as_str())?.strip_prefix('/'))
        .or_else(|| path.strip_prefix('/'))
        .unwrap_or(path);
    let segments: Vec<&str> = below_root.split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Vec::new();
    }
    segments
}

fn checked_run(run: &str, policy: &Policy) -> Result<String, Denial> {
    if run.len() > MAX_SEGMENT_BYTES {
        return Err(Denial::RunTooLong { len: run.len(), max: MAX_SEGMENT_BYTES });
    }
    if policy.allows_run_name(run) {
        Ok(run.to_owned())
    } else {
        Err(Denial::RunName { run: run.to_owned(), pattern: policy.run_pattern_text().to_owned() })
    }
}

fn path_shape(path: &str, want: &'static str, example: &'static str, policy: &Policy) -> Denial {
    let prefixes = if policy.path_prefixes.is_empty() {
        " (with '/' as PREFIX: your tree is the root)".to_owned()
    } else {
        format!(" with PREFIX one of: {}, or /", policy.path_prefixes.join(", "))
    };
    Denial::PathShape { path: path.to_owned(), want, example, prefixes }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::command::parse;

    const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run";

    fn policy(extra: &str) -> Policy {
        Policy::parse(&format!(
            "party: acme\npush: true\ncreate_runs: true\npath_prefixes: [/data/evorun-sync]\n{extra}"
        ))
        .unwrap()
    }

    fn decide_text(command: &str, policy: &Policy) -> Result<Decision, Denial> {
        decide(&parse(command).expect(command), policy)
    }

    #[test]
    fn every_spelling_of_a_replica_names_the_same_one() {
        let policy = policy("");
        for path in [
            format!("{RUN}/genomes.sqlite"),
            format!("/{RUN}/genomes.sqlite"),
            format!("/data/evorun-sync/{RUN}/genomes.sqlite"),
        ] {
            let decision = decide_text(&format!("sqlite3_rsync --replica genomes.sqlite {path} 2>/dev/null"), &policy);
            assert_eq!(
                decision,
                Ok(Decision {
                    action: Action::Push { wal_only: false, commcheck: false },
                    run: RUN.into(),
                    database: Some("genomes.sqlite".into()),
                    peer_name: "genomes.sqlite".into(),
                }),
                "{path}"
            );
        }
    }

    #[test]
    fn mkdir_names_a_run() {
        let decision = decide_text(&format!("mkdir -p \"/data/evorun-sync/{RUN}\""), &policy("")).unwrap();
        assert_eq!((decision.action, decision.run.as_str(), decision.database), (Action::MakeRunDir, RUN, None));
    }

    #[test]
    fn denials_name_what_to_fix() {
        let policy = policy("");
        let cases = [
            (
                format!("sqlite3_rsync --replica g /data/evorun-sync/{RUN}/../other/genomes.sqlite"),
                "does not name a replica",
            ),
            (format!("sqlite3_rsync --replica g /data/evorun-sync/{RUN}/x/genomes.sqlite"), "does not name a replica"),
            (format!("sqlite3_rsync --replica g /data/evorun-sync//{RUN}/genomes.sqlite"), "does not name a replica"),
            (format!("sqlite3_rsync --replica g /etc/{RUN}/genomes.sqlite"), "PREFIX one of: /data/evorun-sync"),
            (format!("sqlite3_rsync --replica g ./{RUN}/genomes.sqlite"), "does not name a replica"),
            (format!("sqlite3_rsync --replica g /{RUN}/genomes.sqlite-wal"), "not an allowed database"),
            (format!("sqlite3_rsync --replica g /{RUN}/lineage.sqlite"), "not an allowed database"),
            ("sqlite3_rsync --replica g /not-a-ulid/genomes.sqlite".into(), "not an allowed run folder name"),
            ("sqlite3_rsync --replica g /../genomes.sqlite".into(), "does not name a replica"),
            ("sqlite3_rsync --replica g /genomes.sqlite".into(), "does not name a replica"),
            (format!("sqlite3_rsync --origin /{RUN}/genomes.sqlite local.sqlite"), "may not pull"),
            (format!("sqlite3_rsync --replica g ./{RUN}"), "does not name a replica"),
            ("mkdir -p /data/evorun-sync".into(), "does not name a run folder"),
            (format!("mkdir -p /data/evorun-sync/{RUN}/sub"), "does not name a run folder"),
            ("mkdir -p /data/evorun-sync/..".into(), "does not name a run folder"),
        ];
        for (command, expected) in cases {
            let denial = decide_text(&command, &policy).unwrap_err().to_string();
            assert!(denial.contains(expected), "{command}: {denial}");
        }
    }

    #[test]
    fn pull_uses_the_origin_path_and_needs_the_policy() {
        let policy = policy("pull: true\n");
        let decision =
            decide_text(&format!("sqlite3_rsync --origin /{RUN}/genomes.sqlite mine.sqlite"), &policy).unwrap();
        assert_eq!(decision.action, Action::Pull { wal_only: false, commcheck: false });
        assert_eq!((decision.run.as_str(), decision.peer_name.as_str()), (RUN, "mine.sqlite"));
    }

    #[test]
    fn a_party_without_push_may_neither_push_nor_make_folders() {
        let policy = Policy::parse("party: acme\npull: true\n").unwrap();
        for command in [format!("sqlite3_rsync --replica g /{RUN}/genomes.sqlite"), format!("mkdir -p /{RUN}")] {
            assert_eq!(decide_text(&command, &policy), Err(Denial::PushDisabled("acme".into())));
        }
    }
}
