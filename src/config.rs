//! The host configuration: `/etc/evosync/evosync.yaml`, or `--config FILE`, or `EVOSYNC_CONFIG`.

use crate::size::ByteSize;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/evosync/evosync.yaml";
pub const CONFIG_ENV: &str = "EVOSYNC_CONFIG";
/// The account of the service, and of every party's gate in shared-account mode.
pub const SHARED_ACCOUNT: &str = "evosync";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Party trees live at `replica_root/PARTY/RUN/`.
    pub replica_root: PathBuf,
    /// One `PARTY.yaml` policy each.
    pub policies_dir: PathBuf,
    /// Locks, and the state store.
    pub state_dir: PathBuf,
    /// Absolute path of the sqlite3_rsync the gate runs, whatever program the worker names.
    pub sqlite3_rsync: PathBuf,
    /// syslog facility for the audit lines.
    #[serde(default)]
    pub syslog_facility: SyslogFacility,
    /// Also append every audit line to this file (useful where no syslog daemon runs).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// How long a push waits for another push of the same replica, or for a free party slot, before it is refused.
    #[serde(default = "default_lock_wait_seconds")]
    pub lock_wait_seconds: u64,
    /// The authorized_keys file evosync manages (its `# BEGIN evosync` block); none in AuthorizedKeysCommand mode.
    #[serde(default)]
    pub authorized_keys: Option<PathBuf>,
    /// The gate as sshd runs it, for the `command=` of each key line.
    #[serde(default = "default_gate")]
    pub gate: PathBuf,
    /// Which account owns a party's tree: `shared` (the `evosync` account) or `per-party` (`evosync-NAME`).
    #[serde(default)]
    pub account_mode: AccountMode,
    /// The broker socket `evosync serve` answers the gates on (default `state_dir/gate.sock`; in per-party-account
    /// mode it must lie where the party accounts can reach it, e.g. /run/evosync/gate.sock).
    #[serde(default)]
    pub gate_socket: Option<PathBuf>,
    /// Where the gates keep their lock files, one folder per party (default `state_dir/locks`). In per-party-account
    /// mode it must lie outside `state_dir`, which the party accounts cannot enter.
    #[serde(default)]
    pub locks_dir: Option<PathBuf>,
    /// Where `evosync serve` listens; loopback unless the administrator says otherwise.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where verified runs are published for readers, one folder of symlinks per run (none: nothing is published,
    /// pushes are still verified).
    #[serde(default)]
    pub catalog_root: Option<PathBuf>,
    /// Where the verified copies the catalog links to live, one folder per run (default: beside `catalog_root`,
    /// named after it with `-verified`).
    #[serde(default)]
    pub verified_root: Option<PathBuf>,
    /// The group whose accounts read the catalog (and, through it, the party trees), read-only. A group of its own:
    /// the service's group also opens the state store, which no reader may.
    #[serde(default = "default_catalog_group")]
    pub catalog_group: String,
    /// How long a run with some of its policy's databases verified waits for the others before it is published
    /// without them (`600`, `10m`, `1h`).
    #[serde(default = "default_publish_partial_after", deserialize_with = "crate::time::deserialize_seconds")]
    pub publish_partial_after: u64,
    /// What one verification of a pushed database may cost: seconds of its time budget, and its memory.
    #[serde(default)]
    pub verify: VerifyLimits,
    /// The catalog's work: how many copies and checks run at once.
    #[serde(default)]
    pub catalog: CatalogSettings,
    /// Bounds on the HTTP service's connections: how many, and how long each may idle or stall.
    #[serde(default)]
    pub http: HttpLimits,
    /// Serve `/metrics` only on this address (e.g. `127.0.0.1:9464`); the main listener then answers 404 for it.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// TLS on `listen`: the certificate chain (PEM, the server's certificate first) and its private key (PEM). Both
    /// or neither; `evosync serve` re-reads them on SIGHUP. Without them `listen` speaks plain HTTP, which it does
    /// only on a loopback address unless `allow_plain_http` says otherwise.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Plain HTTP on a `listen` address other than loopback (a TLS proxy in front on a network of its own).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// The local sshd that `GET /api/sync/ssh` (the SSH tunnel over WebSocket) joins, as ADDRESS:PORT
    /// (e.g. `127.0.0.1:22`); none: the endpoint is off (404).
    #[serde(default)]
    pub tunnel_ssh: Option<String>,
    /// A cgroup v2 folder delegated to the gate accounts, inside which the gate's sessions run: each sync's child
    /// gets a cgroup beneath it with `memory.max` at the policy's `max_sync_memory`. Without it (or where the gate
    /// cannot use it) the child's memory is held by RLIMIT_AS.
    #[serde(default)]
    pub sync_cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Connections open at once; the next one waits in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (the first request's and each later one's).
    pub header_timeout_seconds: u64,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout_seconds: u64,
    /// How long a request body may deliver nothing before the request is dropped (and its temp file removed).
    pub body_stall_seconds: u64,
    /// How long an SSH tunnel may carry no byte either way before the service closes it.
    pub tunnel_idle_seconds: u64,
    /// A connection closed after an answer that left its request's body unread (401, 413, 507…) first reads and
    /// discards what the client still sends, so that a client that writes its whole body before reading gets the
    /// answer rather than a reset: for at most this long in all…
    pub linger_seconds: u64,
    /// …and no longer than this without a byte…
    pub linger_idle_seconds: u64,
    /// …and no more than this many bytes.
    pub linger_bytes: ByteSize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 4096,
            header_timeout_seconds: 10,
            idle_timeout_seconds: 60,
            body_stall_seconds: 30,
            tunnel_idle_seconds: 300,
            linger_seconds: 5,
            linger_idle_seconds: 2,
            linger_bytes: ByteSize(8 << 20),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AccountMode {
    #[default]
    Shared,
    PerParty,
}

fn default_catalog_group() -> String {
    "evosync-readers".into()
}

fn default_publish_partial_after() -> u64 {
    600
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CatalogSettings {
    /// Copies and checks running at once (`catalog::pipeline`), each a process of its own: by default half the
    /// cores (at least one), so that uploads and pushes keep the rest.
    pub max_parallel: usize,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        CatalogSettings { max_parallel: (cores / 2).max(1) }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyLimits {
    /// The time budget of one verification (its progress handler stops SQLite there).
    pub seconds: u64,
    /// The verifying process's memory (RLIMIT_AS and SQLite's hard heap limit below it).
    pub memory: ByteSize,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        VerifyLimits { seconds: 600, memory: ByteSize(1 << 30) }
    }
}

fn default_lock_wait_seconds() -> u64 {
    30
}

fn default_gate() -> PathBuf {
    PathBuf::from("/usr/local/bin/evosync-gate")
}

fn default_listen() -> String {
    "127.0.0.1:4004".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    #[default]
    Auth,
    Authpriv,
    Daemon,
    User,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source} (pass --config FILE or set {CONFIG_ENV})")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the configuration {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// The file to read: the explicit one, else `EVOSYNC_CONFIG`, else the default.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(path) = explicit {
            return path.to_owned();
        }
        match std::env::var_os(CONFIG_ENV) {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (key, path) in [
            ("replica_root", &config.replica_root),
            ("policies_dir", &config.policies_dir),
            ("state_dir", &config.state_dir),
            ("sqlite3_rsync", &config.sqlite3_rsync),
        ] {
            if !path.is_absolute() {
                return Err(format!("{key} must be an absolute path, not '{}'", path.display()));
            }
        }
        for (key, path) in [
            ("audit_log", &config.audit_log),
            ("authorized_keys", &config.authorized_keys),
            ("gate_socket", &config.gate_socket),
            ("catalog_root", &config.catalog_root),
            ("verified_root", &config.verified_root),
            ("locks_dir", &config.locks_dir),
            ("sync_cgroup", &config.sync_cgroup),
            ("tls_cert", &config.tls_cert),
            ("tls_key", &config.tls_key),
        ] {
            if let Some(path) = path {
                if !path.is_absolute() {
                    return Err(format!("{key} must be an absolute path, not '{}'", path.display()));
                }
            }
        }
        if !crate::keys::path_is_plain(&config.gate) {
            return Err(format!(
                "gate must be an absolute path of plain characters (it goes into authorized_keys), not '{}'",
                config.gate.display()
            ));
        }
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err("tls_cert and tls_key go together: give both (PEM files), or neither for plain HTTP".into());
        }
        for (key, address) in [
            ("listen", Some(&config.listen)),
            ("metrics_listen", config.metrics_listen.as_ref()),
            ("tunnel_ssh", config.tunnel_ssh.as_ref()),
        ] {
            if address.is_some_and(|a| a.parse::<std::net::SocketAddr>().is_err()) {
                return Err(format!("{key} must be ADDRESS:PORT (e.g. 127.0.0.1:4004), not '{}'", address.unwrap()));
            }
        }
        if config.catalog.max_parallel == 0 || config.catalog.max_parallel > 64 {
            return Err("catalog.max_parallel: must be between 1 and 64".into());
        }
        if config.verify.seconds == 0 || config.verify.memory.0 < 64 << 20 {
            return Err("verify: seconds must be at least 1 and memory at least 64MiB".into());
        }
        let http = &config.http;
        if http.max_connections == 0 || http.max_connections > 1_000_000 {
            return Err("http.max_connections: must be between 1 and 1000000".into());
        }
        for (key, seconds) in [
            ("http.header_timeout_seconds", http.header_timeout_seconds),
            ("http.idle_timeout_seconds", http.idle_timeout_seconds),
            ("http.body_stall_seconds", http.body_stall_seconds),
            ("http.tunnel_idle_seconds", http.tunnel_idle_seconds),
            ("http.linger_seconds", http.linger_seconds),
            ("http.linger_idle_seconds", http.linger_idle_seconds),
        ] {
            if seconds == 0 {
                return Err(format!("{key}: must be at least 1"));
            }
        }
        Ok(config)
    }

    /// The tunnel's sshd, when the tunnel endpoint is on (checked by `parse`).
    pub fn tunnel_ssh(&self) -> Option<std::net::SocketAddr> {
        self.tunnel_ssh.as_deref().and_then(|address| address.parse().ok())
    }

    /// Where a party's policy lives.
    pub fn policy_path(&self, party: &str) -> PathBuf {
        self.policies_dir.join(format!("{party}.yaml"))
    }

    /// The state store.
    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join(crate::store::STORE_FILE)
    }

    /// The account that owns a party's tree and runs its gate.
    pub fn tree_owner(&self, party: &str) -> String {
        match self.account_mode {
            AccountMode::Shared => SHARED_ACCOUNT.into(),
            AccountMode::PerParty => format!("evosync-{party}"),
        }
    }

    /// Where the gates keep their per-replica and per-party lock files.
    pub fn locks_dir(&self) -> PathBuf {
        self.locks_dir.clone().unwrap_or_else(|| self.state_dir.join("locks"))
    }

    /// Where published runs are: `catalog_root`, by default `catalog` beside `replica_root`.
    pub fn catalog_root(&self) -> PathBuf {
        self.catalog_root.clone().unwrap_or_else(|| self.replica_root.with_file_name("catalog"))
    }

    /// Where runs held back from readers are (`catalog::home`): `verified_root`, by default beside `catalog_root`,
    /// named after it with `-verified`. It must be on `catalog_root`'s file system (runs move between them).
    pub fn verified_root(&self) -> PathBuf {
        self.verified_root.clone().unwrap_or_else(|| {
            let catalog = self.catalog_root();
            let name =
                catalog.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "catalog".into());
            catalog.with_file_name(format!("{name}-verified"))
        })
    }

    /// The broker socket between the gates and the service.
    pub fn gate_socket(&self) -> PathBuf {
        self.gate_socket.clone().unwrap_or_else(|| self.state_dir.join(crate::broker::SOCKET_FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "replica_root: /srv/evosync/replicas\npolicies_dir: /etc/evosync/policies\n\
                           state_dir: /var/lib/evosync\nsqlite3_rsync: /usr/local/bin/sqlite3_rsync\n";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.syslog_facility, SyslogFacility::Auth);
        assert_eq!(config.lock_wait_seconds, 30);
        assert_eq!(config.http, HttpLimits::default());
        assert!(Config::parse(&format!("{MINIMAL}http:\n  max_connections: 0\n"))
            .unwrap_err()
            .contains("max_connections"));
        assert!(Config::parse(&format!("{MINIMAL}http:\n  max_conections: 5\n"))
            .unwrap_err()
            .contains("unknown field"));
        let lingering =
            Config::parse(&format!("{MINIMAL}http:\n  linger_bytes: 16MiB\n  linger_seconds: 10\n")).unwrap();
        assert_eq!((lingering.http.linger_bytes, lingering.http.linger_seconds), (ByteSize(16 << 20), 10));
        assert!(Config::parse(&format!("{MINIMAL}http:\n  linger_idle_seconds: 0\n"))
            .unwrap_err()
            .contains("http.linger_idle_seconds"));
        assert_eq!(config.policy_path("acme"), Path::new("/etc/evosync/policies/acme.yaml"));
    }

    #[test]
    fn unknown_keys_and_relative_paths_are_errors() {
        let unknown = format!("{MINIMAL}replica_roots: /x\n");
        assert!(Config::parse(&unknown).unwrap_err().contains("unknown field"));
        let relative = MINIMAL.replace("/usr/local/bin/sqlite3_rsync", "sqlite3_rsync");
        assert!(Config::parse(&relative).unwrap_err().contains("sqlite3_rsync must be an absolute path"));
        assert!(Config::parse("replica_root: /x\n").unwrap_err().contains("missing field"));
    }

    #[test]
    fn tls_needs_both_files_and_the_tunnel_an_address() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(
            (config.tls_cert.as_deref(), config.tunnel_ssh(), config.http.tunnel_idle_seconds),
            (None, None, 300)
        );
        let half = format!("{MINIMAL}tls_cert: /etc/evosync/tls/cert.pem\n");
        assert!(Config::parse(&half).unwrap_err().contains("tls_cert and tls_key go together"));
        let relative = format!("{MINIMAL}tls_cert: cert.pem\ntls_key: /k.pem\n");
        assert!(Config::parse(&relative).unwrap_err().contains("tls_cert must be an absolute path"));
        let named = format!("{MINIMAL}tunnel_ssh: localhost:22\n");
        assert!(Config::parse(&named).unwrap_err().contains("tunnel_ssh must be ADDRESS:PORT"));
        let tunnel = Config::parse(&format!("{MINIMAL}tunnel_ssh: 127.0.0.1:22\n")).unwrap();
        assert_eq!(tunnel.tunnel_ssh(), Some("127.0.0.1:22".parse().unwrap()));
    }
}
