//! A party's policy (`policies_dir/PARTY.yaml`): what its SSH key may do on this host.
//!
//! Loading is strict: an unknown key, a bad value or an unreadable file is an error, and the gate denies on any error.

use crate::names::{is_party_name, is_plain_segment, MAX_SEGMENT_BYTES};
use crate::size::ByteSize;
use regex::Regex;
use serde::Deserialize;
use std::path::Path;

/// A ULID (26 characters of Crockford base32), optionally followed by `_label`.
pub const DEFAULT_RUN_PATTERN: &str = "[0-9A-HJKMNP-TV-Z]{26}(_[A-Za-z0-9._-]+)?";
pub const DEFAULT_DATABASES: [&str; 2] = ["genomes.sqlite", "features.sqlite"];

#[derive(Debug, Clone)]
pub struct Policy {
    pub party: String,
    pub push: bool,
    pub pull: bool,
    pub create_runs: bool,
    /// Virtual prefixes the worker may write before the run folder, e.g. `/data/evorun-sync`.
    pub path_prefixes: Vec<String>,
    pub run_pattern: Regex,
    pub databases: Vec<String>,
    pub limits: Limits,
    pub require_sandbox: bool,
    pub uploads: Uploads,
    /// May open the SSH tunnel over HTTPS (`GET /api/sync/ssh`, a WebSocket) with its API key.
    pub tunnel: bool,
    /// The tables each database may hold (the `schemas:` section, else the workers' defaults).
    pub schemas: crate::catalog::schema::Schemas,
}

/// What the analysis-file endpoints accept from the party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploads {
    /// File name endings accepted (`.json.gz`, `.json`); never `.sqlite*` or `.db*`, whatever is written here.
    pub extensions: Vec<String>,
    pub max_file_bytes: ByteSize,
    /// Requests per second to the sync endpoints (a token bucket with this many in reserve).
    pub requests_per_second: u32,
    /// File parts one upload request may carry.
    pub max_parts_per_request: u32,
    /// What a `.gz` file may inflate to (checked as it arrives, before readers see it): 413 above it.
    pub max_inflated_bytes: ByteSize,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            extensions: vec![".json.gz".into(), ".json".into()],
            max_file_bytes: ByteSize(200_000_000),
            requests_per_second: 200,
            max_parts_per_request: 256,
            max_inflated_bytes: ByteSize(64 << 20),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_runs: u64,
    pub max_db_bytes: ByteSize,
    pub max_party_bytes: Option<ByteSize>,
    pub max_concurrent_syncs: u32,
    pub max_sync_seconds: u64,
    /// Memory the sqlite3_rsync child of a push may use (cgroup v2 memory.max, else RLIMIT_AS).
    pub max_sync_memory: ByteSize,
    /// Files and folders in the party's tree.
    pub max_party_files: u64,
    /// SSH tunnels over WebSocket the party holds open at once.
    pub max_tunnels: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_runs: 1000,
            max_db_bytes: ByteSize(16 << 30),
            max_party_bytes: None,
            max_concurrent_syncs: 4,
            max_sync_seconds: 3600,
            max_sync_memory: ByteSize(1 << 30),
            max_party_files: 100_000,
            max_tunnels: 4,
        }
    }
}

/// The YAML as written; turned into a [`Policy`] only after every value is checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    party: String,
    #[serde(default)]
    push: bool,
    #[serde(default)]
    pull: bool,
    #[serde(default)]
    create_runs: bool,
    #[serde(default)]
    path_prefixes: Vec<String>,
    #[serde(default)]
    run_pattern: Option<String>,
    #[serde(default)]
    databases: Option<Vec<String>>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    require_sandbox: bool,
    #[serde(default)]
    uploads: UploadsFile,
    #[serde(default)]
    tunnel: bool,
    #[serde(default)]
    schemas: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadsFile {
    extensions: Option<Vec<String>>,
    max_file_bytes: Option<ByteSize>,
    requests_per_second: Option<u32>,
    max_parts_per_request: Option<u32>,
    max_inflated_bytes: Option<ByteSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_runs: Option<u64>,
    max_db_bytes: Option<ByteSize>,
    max_party_bytes: Option<ByteSize>,
    max_concurrent_syncs: Option<u32>,
    max_sync_seconds: Option<u64>,
    max_sync_memory: Option<ByteSize>,
    max_party_files: Option<u64>,
    max_tunnels: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("no policy for party '{party}' at {path}: {source}")]
    Read { party: String, path: String, source: std::io::Error },
    #[error("the policy {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// Reads and checks `path`, which must be the policy of `party`.
    pub fn load(path: &Path, party: &str) -> Result<Policy, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            party: party.to_owned(),
            path: shown.clone(),
            source,
        })?;
        let policy = Policy::parse(&text).map_err(|message| PolicyError::Invalid { path: shown.clone(), message })?;
        if policy.party != party {
            return Err(PolicyError::Invalid {
                path: shown,
                message: format!("it names party '{}' but its file is for party '{party}'", policy.party),
            });
        }
        Ok(policy)
    }

    /// Parses and checks a policy; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let file: PolicyFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if !is_party_name(&file.party) {
            return Err(format!(
                "party: '{}' is not a party name (1-32 of a-z, 0-9, '-', '_', starting with a letter or digit)",
                file.party
            ));
        }
        for prefix in &file.path_prefixes {
            check_prefix(prefix).map_err(|why| format!("path_prefixes: '{prefix}' {why}"))?;
        }
        let pattern = file.run_pattern.as_deref().unwrap_or(DEFAULT_RUN_PATTERN);
        let run_pattern = Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("run_pattern: '{pattern}' is not a regular expression: {e}"))?;
        let databases = match file.databases {
            Some(list) => list,
            None => DEFAULT_DATABASES.iter().map(|s| s.to_string()).collect(),
        };
        if databases.is_empty() {
            return Err("databases: the list is empty; name at least one database file".into());
        }
        for name in &databases {
            if !is_plain_segment(name) || !name.ends_with(".sqlite") && !name.ends_with(".db") {
                return Err(format!("databases: '{name}' must be a plain file name ending in .sqlite or .db"));
            }
        }
        let defaults = Limits::default();
        let limits = Limits {
            max_runs: file.limits.max_runs.unwrap_or(defaults.max_runs),
            max_db_bytes: file.limits.max_db_bytes.unwrap_or(defaults.max_db_bytes),
            max_party_bytes: file.limits.max_party_bytes,
            max_concurrent_syncs: file.limits.max_concurrent_syncs.unwrap_or(defaults.max_concurrent_syncs),
            max_sync_seconds: file.limits.max_sync_seconds.unwrap_or(defaults.max_sync_seconds),
            max_sync_memory: file.limits.max_sync_memory.unwrap_or(defaults.max_sync_memory),
            max_party_files: file.limits.max_party_files.unwrap_or(defaults.max_party_files),
            max_tunnels: file.limits.max_tunnels.unwrap_or(defaults.max_tunnels),
        };
        if limits.max_concurrent_syncs == 0 || limits.max_concurrent_syncs > 64 {
            return Err("limits.max_concurrent_syncs: must be between 1 and 64".into());
        }
        if limits.max_sync_seconds == 0 {
            return Err("limits.max_sync_seconds: must be at least 1".into());
        }
        if limits.max_db_bytes.0 == 0 {
            return Err("limits.max_db_bytes: must be more than 0".into());
        }
        if limits.max_sync_memory.0 < 16 << 20 {
            return Err("limits.max_sync_memory: must be at least 16MiB (sqlite3_rsync needs some to start)".into());
        }
        if limits.max_party_files == 0 {
            return Err("limits.max_party_files: must be at least 1".into());
        }
        if limits.max_tunnels == 0 || limits.max_tunnels > 1024 {
            return Err("limits.max_tunnels: must be between 1 and 1024 (tunnel: false turns the tunnel off)".into());
        }
        let upload_defaults = Uploads::default();
        let uploads = Uploads {
            extensions: file.uploads.extensions.unwrap_or(upload_defaults.extensions),
            max_file_bytes: file.uploads.max_file_bytes.unwrap_or(upload_defaults.max_file_bytes),
            requests_per_second: file.uploads.requests_per_second.unwrap_or(upload_defaults.requests_per_second),
            max_parts_per_request: file.uploads.max_parts_per_request.unwrap_or(upload_defaults.max_parts_per_request),
            max_inflated_bytes: file.uploads.max_inflated_bytes.unwrap_or(upload_defaults.max_inflated_bytes),
        };
        for extension in &uploads.extensions {
            let plain = extension.starts_with('.')
                && extension.len() > 1
                && extension[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
            if !plain || extension.contains(".sqlite") || extension.contains(".db") {
                return Err(format!(
                    "uploads.extensions: '{extension}' must look like .json.gz, and never name a database (.sqlite, .db)"
                ));
            }
        }
        if uploads.requests_per_second == 0 {
            return Err("uploads.requests_per_second: must be at least 1".into());
        }
        if uploads.max_parts_per_request == 0 {
            return Err("uploads.max_parts_per_request: must be at least 1".into());
        }
        let schemas = crate::catalog::schema::schemas_for(&databases, file.schemas)?;
        Ok(Policy {
            schemas,
            uploads,
            party: file.party,
            push: file.push,
            pull: file.pull,
            create_runs: file.create_runs,
            tunnel: file.tunnel,
            path_prefixes: file.path_prefixes,
            run_pattern,
            databases,
            limits,
            require_sandbox: file.require_sandbox,
        })
    }

    /// A run folder name this party may use: one plain segment that matches `run_pattern`.
    pub fn allows_run_name(&self, run: &str) -> bool {
        run.len() <= MAX_SEGMENT_BYTES && is_plain_segment(run) && self.run_pattern.is_match(run)
    }

    /// The pattern as the administrator wrote it (without the anchors added here).
    pub fn run_pattern_text(&self) -> &str {
        let text = self.run_pattern.as_str();
        text.strip_prefix("^(?:").and_then(|t| t.strip_suffix(")$")).unwrap_or(text)
    }
}

fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    let rest = prefix.strip_prefix('/').ok_or("must be absolute (start with '/')")?;
    if rest.is_empty() {
        return Err("must name a folder, not '/' (the party root is always '/')");
    }
    if rest.split('/').all(is_plain_segment) {
        Ok(())
    } else {
        Err("must be made of plain segments ([A-Za-z0-9._-], no '.', '..', empty or trailing '/')")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "\
party: acme
push: true
pull: false
create_runs: true
path_prefixes: [/data/evorun-sync]
databases: [genomes.sqlite, features.sqlite]
limits:
  max_runs: 10
  max_db_bytes: 8GiB
  max_party_bytes: 100GiB
  max_concurrent_syncs: 2
  max_sync_seconds: 600
require_sandbox: true
";

    #[test]
    fn full_policy_parses() {
        let policy = Policy::parse(FULL).unwrap();
        assert!(policy.push && !policy.pull && policy.create_runs && policy.require_sandbox);
        assert_eq!(policy.limits.max_db_bytes, ByteSize(8 << 30));
        assert_eq!(policy.limits.max_party_bytes, Some(ByteSize(100 << 30)));
        assert_eq!(policy.run_pattern_text(), DEFAULT_RUN_PATTERN);
    }

    #[test]
    fn omitted_keys_deny_by_default() {
        let policy = Policy::parse("party: acme\n").unwrap();
        assert!(!policy.push && !policy.pull && !policy.create_runs);
        assert_eq!(policy.databases, DEFAULT_DATABASES);
        assert_eq!(policy.limits, Limits::default());
    }

    #[test]
    fn default_run_pattern() {
        let policy = Policy::parse("party: acme\n").unwrap();
        let long_label = format!("01KFYA32R09C5KJYNH1SM2W1DR_{}", "x".repeat(228));
        for ok in ["01KFYA32R09C5KJYNH1SM2W1DR", "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_run", long_label.as_str()] {
            assert!(policy.allows_run_name(ok), "{ok}");
        }
        let too_long = format!("01KFYA32R09C5KJYNH1SM2W1DR_{}", "x".repeat(229));
        for bad in [
            "01KFYA32R09C5KJYNH1SM2W1D",
            "01KFYA32R09C5KJYNH1SM2W1DRX",
            "01kfya32r09c5kjynh1sm2w1dr",
            "01KFYA32R09C5KJYNH1SM2W1DR_",
            "01KFYA32R09C5KJYNH1SM2W1DR_a/b",
            "01KFYA32R09C5KJYNH1SM2W1DR_a b",
            "01KFYA32R09C5KJYNH1SM2W1DU",
            too_long.as_str(),
            "..",
        ] {
            assert!(!policy.allows_run_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_wide_pattern_cannot_widen_past_a_plain_segment() {
        let policy = Policy::parse("party: acme\nrun_pattern: '.*'\n").unwrap();
        assert!(policy.allows_run_name("anything"));
        for bad in ["..", "a/b", ".git", "-x", ""] {
            assert!(!policy.allows_run_name(bad), "{bad}");
        }
    }

    #[test]
    fn broken_policies_say_what_is_wrong_where() {
        let cases = [
            ("party: acme\npush: yes please\n", "push"),
            ("party: acme\npsuh: true\n", "unknown field `psuh`"),
            ("party: acme\nlimits:\n  max_db_bytes: lots\n", "not a size"),
            ("party: acme\nlimits:\n  max_dbbytes: 1GiB\n", "unknown field `max_dbbytes`"),
            ("party: acme\nrun_pattern: '('\n", "run_pattern"),
            ("party: acme\npath_prefixes: [data]\n", "must be absolute"),
            ("party: acme\npath_prefixes: [/data/../etc]\n", "plain segments"),
            ("party: acme\npath_prefixes: [/]\n", "not '/'"),
            ("party: acme\ndatabases: [../x.sqlite]\n", "databases"),
            ("party: acme\ndatabases: [notes.txt]\n", "databases"),
            ("party: acme\ndatabases: []\n", "empty"),
            ("party: Acme\n", "party name"),
            ("party: acme\nlimits:\n  max_concurrent_syncs: 0\n", "max_concurrent_syncs"),
            ("push: true\n", "missing field `party`"),
            ("", "missing field"),
            ("- a\n- b\n", "invalid type"),
        ];
        for (text, expected) in cases {
            let error = Policy::parse(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
