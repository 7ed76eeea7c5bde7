//! `evosync`, the administrator's command line: clap, dispatch, and text or JSON output. The operations themselves are
//! in `admin` (shared with the admin HTTP API); `evosync serve` starts the service in `serve`.
//!
//! Every command takes `--config` and `--json`, and on failure exits non-zero with one line saying what to fix.

use crate::access::KeyState;
use crate::admin::init::{init, InitSettings};
use crate::admin::Admin;
use crate::config::Config;
use crate::policy::Policy;
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "evosync", version, long_version = LONG_VERSION.as_str(), about = "Administer the evosync central host")]
struct Cli {
    /// Configuration file [default: $EVOSYNC_CONFIG, else /etc/evosync/evosync.yaml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Machine-readable output (JSON) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the configuration, folders, state store and an admin token (printed once).
    Init(InitArgs),
    /// Parties: add, list, show, disable, enable.
    Party {
        #[command(subcommand)]
        command: PartyCommand,
    },
    /// SSH keys of parties: add, list, revoke.
    SshKey {
        #[command(subcommand)]
        command: SshKeyCommand,
    },
    /// API keys of parties for the HTTP endpoints: issue, list, revoke.
    ApiKey {
        #[command(subcommand)]
        command: ApiKeyCommand,
    },
    /// The managed authorized_keys file: write it from the store, or check it for drift.
    AuthorizedKeys {
        #[command(subcommand)]
        command: AuthorizedKeysCommand,
    },
    /// The hash-chained audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Party policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Admin tokens for the HTTP API: issue (the default: printed once), list, revoke, rotate.
    AdminToken {
        #[command(subcommand)]
        command: Option<AdminTokenCommand>,
    },
    /// Run the HTTP service (admin API and the workers' sync endpoints).
    Serve,
    /// Copy the state store into FILE while the service and the gates run: one consistent moment, checked in the copy
    /// (integrity, the audit chain), written atomically with mode 0600. Replicas and the catalog are files: back
    /// them up with the file system.
    Backup { file: PathBuf },
    /// Put the backup FILE in the state store's place: refused while `evosync serve` runs; the file is checked
    /// first; the replaced store is kept beside it (state.db.replaced-TIME).
    Restore { file: PathBuf },
    /// Look the host over (binaries and versions, Landlock, seccomp, the memory limit's cgroup, sshd, folders and
    /// their modes, accounts) and say what to fix; exit 1 when something must be fixed.
    Doctor {
        /// The sshd binary whose `-t` checks the configuration.
        #[arg(long, default_value = "/usr/sbin/sshd")]
        sshd: PathBuf,
        /// The sshd_config to check (with the snippets it includes).
        #[arg(long, default_value = "/etc/ssh/sshd_config")]
        sshd_config: PathBuf,
    },
    /// The published catalog of verified runs.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// On a worker: carry ssh over HTTPS to the central host's SSH tunnel (for ssh's ProxyCommand; stdin and stdout
    /// are the SSH connection). Needs no configuration file.
    Tunnel(TunnelArgs),
}

#[derive(clap::Args)]
struct TunnelArgs {
    /// The tunnel endpoint: wss://HOST[:PORT]/api/sync/ssh (ws:// only to a service on the same machine).
    #[arg(long)]
    url: String,
    /// A file holding the party's API key (evs_…), as `evosync api-key issue` printed it.
    #[arg(long)]
    api_key_file: PathBuf,
    /// PEM file of the CA that signed the service's certificate [default: the system's trust roots].
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// List where the catalog differs from the verdicts in the store (exit 1 when it does); --repair mends it.
    Check {
        #[arg(long)]
        repair: bool,
    },
    /// Check one replica's schema and print the verdict as JSON (the service runs this while a push's worker waits).
    #[command(hide = true)]
    Inspect { party: String, run: String, database: String },
    /// Bring one replica's verified copy up to date, checked before it commits, and print what it did as JSON (the
    /// service's catalog pipeline runs this after a push).
    #[command(hide = true)]
    Apply { party: String, run: String, database: String },
}

#[derive(clap::Args)]
struct InitArgs {
    #[arg(long, default_value = "/srv/evosync/replicas")]
    replica_root: PathBuf,
    #[arg(long, default_value = "/etc/evosync/policies")]
    policies_dir: PathBuf,
    #[arg(long, default_value = "/var/lib/evosync")]
    state_dir: PathBuf,
    #[arg(long, default_value = "/usr/local/bin/sqlite3_rsync")]
    sqlite3_rsync: PathBuf,
    /// The authorized_keys file to manage; leave out for AuthorizedKeysCommand mode.
    #[arg(long)]
    authorized_keys: Option<PathBuf>,
    #[arg(long, default_value = "/usr/local/bin/evosync-gate")]
    gate: PathBuf,
    #[arg(long, default_value = "127.0.0.1:4004")]
    listen: String,
    /// shared (one `evosync` account) or per-party (`evosync-NAME` accounts).
    #[arg(long, default_value = "shared")]
    account_mode: String,
    /// The gates' lock folders [default: state_dir/locks; per-party: /var/lib/evosync-locks]
    #[arg(long)]
    locks_dir: Option<PathBuf>,
    /// The socket between the gates and the service [default: state_dir/gate.sock; per-party: /run/evosync/gate.sock]
    #[arg(long)]
    gate_socket: Option<PathBuf>,
    /// Publish verified runs for readers here (one folder of symlinks per run).
    #[arg(long)]
    catalog_root: Option<PathBuf>,
    /// The group of the catalog's readers (read-only).
    #[arg(long, default_value = "evosync-readers")]
    catalog_group: String,
}

#[derive(Subcommand)]
enum PartyCommand {
    /// Register a party: writes its policy from the template unless one exists, and creates its tree.
    Add {
        name: String,
    },
    List,
    Show {
        name: String,
    },
    /// Every key of the party stops at once.
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
}

#[derive(Subcommand)]
enum SshKeyCommand {
    /// Register a party's SSH public key.
    Add {
        party: String,
        /// The .pub file, or - for standard input.
        #[arg(long)]
        public_key: String,
        /// Last day of use: 2027-01-31 (midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// Source addresses allowed: CIDR[,CIDR].
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        comment: Option<String>,
    },
    List {
        party: Option<String>,
    },
    /// Revoke by key id or SHA256: fingerprint.
    Revoke {
        key: String,
    },
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Issue an API key for a party (printed once).
    Issue {
        party: String,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        party: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
enum AdminTokenCommand {
    /// Issue an admin token (printed once). It expires after 90 days unless --expires says otherwise.
    Issue {
        #[arg(long)]
        name: Option<String>,
        /// Last day of use: 2027-01-31 (midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
    },
    /// Every admin token with its state (active, revoked, expired); never the secrets.
    List,
    /// Revoke a token: the service refuses it from its next request on.
    Revoke { id: String },
    /// Issue a new token (printed once) and revoke the one it replaces: ID, or without ID every active token.
    Rotate { id: Option<String> },
}

#[derive(Subcommand)]
enum AuthorizedKeysCommand {
    /// Regenerate the managed block from the store.
    Write,
    /// Report drift between the file and the store (exit 1 when they differ).
    Check,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain from its start (or its seal, after an archive); reports the first record where it breaks
    /// (exit 1). With --archive, also checks each archive file and that it joins its seal.
    Verify {
        /// An archive written by `audit archive` (repeatable).
        #[arg(long = "archive")]
        archives: Vec<PathBuf>,
    },
    /// Move the records older than DATE into FILE (JSON lines with their hashes; never over an existing file), then
    /// remove them from the store in one transaction that leaves a seal where the chain now starts.
    Archive {
        /// 2027-01-31 (midnight UTC) or an RFC 3339 time: every record before the first one stamped then or later.
        #[arg(long)]
        before: String,
        file: PathBuf,
    },
    /// Print audit records.
    List {
        #[arg(long, default_value_t = 0)]
        after: i64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate every policy in policies_dir (or the files given) and say what is wrong where.
    Check { files: Vec<PathBuf> },
}

/// A failure: one line for the administrator.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.to_string())
    }
}

type Outcome = Result<ExitCode, Failure>;

/// `evosync`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(Failure(reason)) => {
            if json {
                println!("{}", serde_json::json!({ "error": reason }));
            }
            eprintln!("evosync: {reason}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Outcome {
    let config_path = Config::locate(cli.config.as_deref());
    let json = cli.json;
    match cli.command {
        Command::Init(args) => init_host(&config_path, args, json),
        Command::Policy { command: PolicyCommand::Check { files } } => policy_check(&config_path, files, json),
        Command::Doctor { sshd, sshd_config } => doctor(config_path, sshd, sshd_config, json),
        Command::Catalog { command: CatalogCommand::Inspect { party, run, database } } => {
            let verdict = crate::catalog::inspect::run(&config_path, &party, &run, &database).map_err(Failure)?;
            println!("{}", serde_json::to_string(&verdict)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog { command: CatalogCommand::Apply { party, run, database } } => {
            let applied = crate::catalog::apply::run(&config_path, &party, &run, &database).map_err(Failure)?;
            println!("{}", serde_json::to_string(&applied)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tunnel(args) => {
            let options = crate::worker::tunnel::Options {
                url: args.url,
                api_key_file: args.api_key_file,
                ca_file: args.ca_file,
            };
            crate::worker::tunnel::run(&options).map_err(|e| Failure(format!("tunnel: {e}")))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve => {
            let config = Config::load(&config_path)?;
            crate::serve::serve(config, config_path).map_err(Failure::from)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { file } => {
            let config = Config::load(&config_path)?;
            let report = crate::admin::backup::backup(&config, &config_path, &file, actor())?;
            show(json, &report, || {
                format!(
                    "backup {} ({} bytes, sha256 {})
{}",
                    report.file.display(),
                    report.bytes,
                    report.sha256,
                    holds(&report.holds)
                )
            })
        }
        Command::Restore { file } => {
            let config = Config::load(&config_path)?;
            let report = crate::admin::backup::restore(&config, &config_path, &file, actor())?;
            show(json, &report, || {
                let replaced = match &report.replaced {
                    Some(path) => format!("the replaced store is kept as {}", path.display()),
                    None => "there was no store to replace".to_owned(),
                };
                let keys = match report.authorized_keys_lines {
                    Some(lines) => format!("; authorized_keys rewritten ({lines} key lines)"),
                    None => String::new(),
                };
                format!(
                    "restored {} (sha256 {}) as {}
{}
{replaced}{keys}
next: evosync catalog check --repair (if \
                     there is a catalog), then start the service",
                    report.file.display(),
                    report.sha256,
                    report.store.display(),
                    holds(&report.holds)
                )
            })
        }
        command => {
            let config = Config::load(&config_path)?;
            let admin = Admin::open(&config, &config_path, actor())?;
            administer(&admin, command, json)
        }
    }
}

fn actor() -> String {
    format!("cli:{}", crate::fs::sys::account_name().unwrap_or_else(|| crate::fs::sys::uid().to_string()))
}

fn administer(admin: &Admin<'_>, command: Command, json: bool) -> Outcome {
    match command {
        Command::Party { command } => match command {
            PartyCommand::Add { name } => {
                let party = admin.add_party(&name)?;
                show(json, &party, || {
                    format!(
                        "party {} added; policy {}, tree {}",
                        party.name,
                        admin.config.policy_path(&name).display(),
                        admin.config.replica_root.join(&name).display()
                    )
                })
            }
            PartyCommand::List => {
                let parties = admin.parties()?;
                show(json, &parties, || {
                    parties
                        .iter()
                        .map(|p| format!("{:<24} {}", p.name, if p.enabled { "enabled" } else { "disabled" }))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
            PartyCommand::Show { name } => {
                let view = admin.show_party(&name)?;
                show(json, &view, || {
                    format!(
                        "party {} ({})\npolicy {}\n{} ssh keys, {} api keys, {} runs",
                        view.party.name,
                        if view.party.enabled { "enabled" } else { "disabled" },
                        view.policy,
                        view.ssh_keys.len(),
                        view.api_keys.len(),
                        view.runs
                    )
                })
            }
            PartyCommand::Disable { name } => {
                let party = admin.set_party_enabled(&name, false)?;
                show(json, &party, || format!("party {name} disabled: every key of it stops now"))
            }
            PartyCommand::Enable { name } => {
                let party = admin.set_party_enabled(&name, true)?;
                show(json, &party, || format!("party {name} enabled"))
            }
        },
        Command::SshKey { command } => match command {
            SshKeyCommand::Add { party, public_key, expires, from, comment } => {
                let text = read_input(&public_key)?;
                let added =
                    admin.add_ssh_key(&party, &text, expires.as_deref(), from.as_deref(), comment.as_deref())?;
                show(json, &added, || {
                    format!("key {}\n{}\n{}", added.key.id, added.key.fingerprint, added.authorized_keys_line)
                })
            }
            SshKeyCommand::List { party } => {
                let keys = admin.ssh_keys(party.as_deref())?;
                show(json, &keys, || {
                    key_lines(
                        &keys,
                        |k| (k.revoked_at, k.expires_at),
                        |k, state| format!("{}  {:<16} {}  {}  {}", k.id, k.party, k.fingerprint, state, k.comment),
                    )
                })
            }
            SshKeyCommand::Revoke { key } => {
                let key = admin.revoke_ssh_key(&key)?;
                show(json, &key, || format!("key {} of party {} revoked", key.id, key.party))
            }
        },
        Command::ApiKey { command } => match command {
            ApiKeyCommand::Issue { party, expires, name } => {
                let issued = admin.issue_api_key(&party, name.as_deref(), expires.as_deref())?;
                show(json, &issued, || {
                    format!(
                        "{}\n(api key {} of party {}; shown once, keep it secret)",
                        issued.api_key, issued.key.id, party
                    )
                })
            }
            ApiKeyCommand::List { party } => {
                let keys = admin.api_keys(party.as_deref())?;
                show(json, &keys, || {
                    key_lines(
                        &keys,
                        |k| (k.revoked_at, k.expires_at),
                        |k, state| format!("{}  {:<16} {}  {}", k.id, k.party, state, k.name),
                    )
                })
            }
            ApiKeyCommand::Revoke { id } => {
                let key = admin.revoke_api_key(&id)?;
                show(json, &key, || format!("api key {} of party {} revoked", key.id, key.party))
            }
        },
        Command::AuthorizedKeys { command } => match command {
            AuthorizedKeysCommand::Write => {
                let lines = admin.write_authorized_keys()?;
                show(json, &serde_json::json!({ "lines": lines }), || format!("{lines} key lines written"))
            }
            AuthorizedKeysCommand::Check => {
                let drift = admin.check_authorized_keys()?;
                let clean = drift.is_clean();
                let value =
                    serde_json::json!({ "clean": clean, "missing": drift.missing, "unexpected": drift.unexpected });
                let code = show(json, &value, || {
                    let mut text = if clean { "authorized_keys matches the store".to_owned() } else { String::new() };
                    for line in &drift.missing {
                        text.push_str(&format!("missing (key does not work yet): {line}\n"));
                    }
                    for line in &drift.unexpected {
                        text.push_str(&format!("unexpected (key works though it should not): {line}\n"));
                    }
                    text.trim_end().to_owned()
                })?;
                Ok(if clean { code } else { ExitCode::FAILURE })
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Verify { archives } => {
                let verification = admin.verify_audit(&archives)?;
                let intact = verification.intact();
                let mut value = match &verification.chain {
                    crate::store::ChainCheck::Intact { records } => {
                        serde_json::json!({ "intact": intact, "records": records })
                    }
                    crate::store::ChainCheck::Broken { seq, reason } => {
                        serde_json::json!({ "intact": false, "first_broken": seq, "reason": reason })
                    }
                };
                value["seal"] = serde_json::to_value(&verification.seal)?;
                value["archives"] = serde_json::to_value(&verification.archives)?;
                show(json, &value, || {
                    let mut lines = vec![match &verification.chain {
                        crate::store::ChainCheck::Intact { records } => match &verification.seal {
                            Some(seal) => format!(
                                "audit chain intact: {records} records from record {} on, joined to the seal of \
                                 records {}-{} (archived {} into {}, sha256 {})",
                                seal.last_seq + 1,
                                seal.first_seq,
                                seal.last_seq,
                                crate::time::rfc3339(seal.sealed_at),
                                seal.archive,
                                seal.archive_sha256
                            ),
                            None => format!("audit chain intact: {records} records"),
                        },
                        crate::store::ChainCheck::Broken { seq, reason } => {
                            format!("audit chain broken at record {seq}: {reason}")
                        }
                    }];
                    for archive in &verification.archives {
                        let range = archive
                            .check
                            .header
                            .as_ref()
                            .map(|h| format!("records {}-{}", h.first_seq, h.last_seq))
                            .unwrap_or_default();
                        lines.push(match &archive.check.problem {
                            None => format!("archive {}: intact, {range}, joins its seal", archive.file.display()),
                            Some(problem) => format!("archive {}: {problem}", archive.file.display()),
                        });
                    }
                    lines.join("\n")
                })?;
                Ok(if intact { ExitCode::SUCCESS } else { ExitCode::FAILURE })
            }
            AuditCommand::Archive { before, file } => {
                let report = admin.archive_audit(&before, &file)?;
                show(json, &report, || {
                    format!(
                        "archived records {}-{} ({}) into {} ({} bytes, sha256 {}); {} records left in the store, the \
                         chain now starts at the seal\nkeep the archive off this host",
                        report.seal.first_seq,
                        report.seal.last_seq,
                        report.records,
                        report.file.display(),
                        report.bytes,
                        report.sha256,
                        report.remaining
                    )
                })
            }
            AuditCommand::List { after, limit } => {
                let records = admin.audit_records(after, limit)?;
                show(json, &records, || {
                    records
                        .iter()
                        .map(|r| {
                            format!(
                                "{} {} {} {} party={} subject={} {} {}",
                                r.seq,
                                crate::time::rfc3339(r.at),
                                r.actor,
                                r.action,
                                r.party,
                                r.subject,
                                r.outcome,
                                r.detail
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
        },
        Command::AdminToken { command } => {
            match command.unwrap_or(AdminTokenCommand::Issue { name: None, expires: None }) {
                AdminTokenCommand::Issue { name, expires } => {
                    let issued = admin.issue_admin_token(name.as_deref(), expires.as_deref())?;
                    show(json, &issued, || {
                        format!(
                            "{}\n(admin token {}, expires {}; shown once, keep it secret)",
                            issued.admin_token,
                            issued.token.id,
                            issued.token.expires_at.map(crate::time::rfc3339).unwrap_or_else(|| "never".into())
                        )
                    })
                }
                AdminTokenCommand::List => {
                    let tokens = admin.admin_tokens()?;
                    show(json, &tokens, || {
                        key_lines(
                            &tokens,
                            |t| (t.revoked_at, t.expires_at),
                            |t, state| {
                                let expires = t.expires_at.map(crate::time::rfc3339).unwrap_or_else(|| "never".into());
                                format!("{}  {:<8} expires {}  {}", t.id, state, expires, t.name)
                            },
                        )
                    })
                }
                AdminTokenCommand::Revoke { id } => {
                    let token = admin.revoke_admin_token(&id)?;
                    show(json, &token, || format!("admin token {} revoked", token.id))
                }
                AdminTokenCommand::Rotate { id } => {
                    let rotated = admin.rotate_admin_token(id.as_deref())?;
                    show(json, &rotated, || {
                        let revoked: Vec<&str> = rotated.revoked.iter().map(|t| t.id.as_str()).collect();
                        format!(
                            "{}\n(admin token {}; shown once; revoked: {})",
                            rotated.issued.admin_token,
                            rotated.issued.token.id,
                            if revoked.is_empty() { "none".to_owned() } else { revoked.join(", ") }
                        )
                    })
                }
            }
        }
        Command::Catalog { command: CatalogCommand::Check { repair } } => {
            let check = admin.check_catalog(repair)?;
            let clean = check.is_clean();
            let value = serde_json::json!({ "clean": clean, "repaired": check.repaired, "publish": check.drift.publish,
                "withdraw": check.drift.withdraw, "rebuild": check.drift.rebuild, "pending": check.pending,
                "strays": check.strays, "unreadable": check.unreadable });
            let code = show(json, &value, || {
                let mut lines: Vec<String> = Vec::new();
                let drift = &check.drift;
                lines.extend(drift.publish.iter().map(|(party, run)| format!("{run} ({party}) should be published")));
                lines.extend(
                    drift.withdraw.iter().map(|(party, run)| format!("{run} ({party}) should not be published")),
                );
                lines.extend(drift.rebuild.iter().map(|(party, run, database)| {
                    format!("{run}/{database} ({party}) passed but has no verified copy")
                }));
                lines.extend(check.pending.iter().map(|job| {
                    format!(
                        "{}/{} ({}) awaits its verdict since {}",
                        job.run,
                        job.database,
                        job.party,
                        crate::time::rfc3339(job.since)
                    )
                }));
                lines.extend(check.strays.iter().map(|stray| {
                    format!("{stray} in catalog_root is not a plain file or folder (a reader would follow it out)")
                }));
                lines.extend(
                    check
                        .unreadable
                        .iter()
                        .map(|entry| format!("{entry} in catalog_root is out of its readers' reach (group or mode)")),
                );
                if let Some(repaired) = &check.repaired {
                    lines.push(format!("repair: {repaired}"));
                } else if lines.is_empty() {
                    lines.push("the catalog matches the verdicts".to_owned());
                }
                lines.join("\n")
            })?;
            Ok(if clean || repair { code } else { ExitCode::FAILURE })
        }
        Command::Init(_)
        | Command::Policy { .. }
        | Command::Serve
        | Command::Backup { .. }
        | Command::Restore { .. }
        | Command::Doctor { .. }
        | Command::Tunnel(_)
        | Command::Catalog { command: CatalogCommand::Inspect { .. } | CatalogCommand::Apply { .. } } => {
            unreachable!("handled before the store opens")
        }
    }
}

/// What a store holds, in two lines.
fn holds(summary: &crate::store::Summary) -> String {
    let c = &summary.counts;
    let last = match &summary.last_audit {
        Some(r) => {
            format!("audit to record {} ({} {} {} {})", r.seq, crate::time::rfc3339(r.at), r.actor, r.action, r.outcome)
        }
        None => "no audit record".to_owned(),
    };
    format!(
        "schema {}: {} parties, {} SSH keys, {} API keys, {} admin tokens, {} runs, {} analysis files, {} verdicts, \
         {} audit records\nledger to push {}; {last}; the audit chain verified",
        summary.schema_version,
        c.parties,
        c.ssh_keys,
        c.api_keys,
        c.admin_tokens,
        c.runs,
        c.analysis_files,
        c.verifications,
        c.audit_records,
        summary.last_ledger_id
    )
}

/// Prints `value` as JSON, or the text `human` makes.
fn show<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Outcome {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(source: &str) -> Result<String, Failure> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        Ok(text)
    } else {
        std::fs::read_to_string(source).map_err(|e| Failure(format!("cannot read {source}: {e}")))
    }
}

fn init_host(config_path: &Path, args: InitArgs, json: bool) -> Outcome {
    let settings = InitSettings {
        replica_root: args.replica_root,
        policies_dir: args.policies_dir,
        state_dir: args.state_dir,
        sqlite3_rsync: args.sqlite3_rsync,
        authorized_keys: args.authorized_keys,
        gate: args.gate,
        listen: args.listen,
        account_mode: args.account_mode,
        locks_dir: args.locks_dir,
        gate_socket: args.gate_socket,
        catalog_root: args.catalog_root,
        catalog_group: args.catalog_group,
    };
    let report = init(config_path, &settings, actor())?;
    show(json, &report, || {
        let notes: String = report.notes.iter().map(|note| format!("\nnote: {note}")).collect();
        format!(
            "configuration {}\nstate store {}\nadmin token (shown once; only its hash is kept):\n{}{notes}",
            report.config.display(),
            report.store.display(),
            report.admin_token
        )
    })
}

fn policy_check(config_path: &Path, mut files: Vec<PathBuf>, json: bool) -> Outcome {
    if files.is_empty() {
        let config = Config::load(config_path)?;
        let entries = std::fs::read_dir(&config.policies_dir)
            .map_err(|e| Failure(format!("cannot list {}: {e}", config.policies_dir.display())))?;
        files = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Failure(format!("no *.yaml policy in {}", config.policies_dir.display())));
        }
    }
    let mut results = Vec::new();
    for file in &files {
        let party = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        results.push(match Policy::load(file, party) {
            Ok(policy) => serde_json::json!({
                "file": file, "ok": true, "party": policy.party, "push": policy.push, "pull": policy.pull,
                "create_runs": policy.create_runs,
            }),
            Err(error) => serde_json::json!({ "file": file, "ok": false, "error": error.to_string() }),
        });
    }
    let broken = results.iter().filter(|r| r["ok"] == false).count();
    show(json, &results, || {
        results
            .iter()
            .map(|r| match r["ok"].as_bool() {
                Some(true) => format!(
                    "ok       {}: party {}, push {}, pull {}, create_runs {}",
                    r["file"].as_str().unwrap_or_default(),
                    r["party"].as_str().unwrap_or_default(),
                    r["push"],
                    r["pull"],
                    r["create_runs"]
                ),
                _ => format!("invalid  {}", r["error"].as_str().unwrap_or_default()),
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if broken > 0 {
        eprintln!("evosync: {broken} of {} policies are invalid; their parties are refused until fixed", files.len());
        Ok(ExitCode::FAILURE)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn doctor(config_path: PathBuf, sshd: PathBuf, sshd_config: PathBuf, json: bool) -> Outcome {
    use crate::admin::doctor;
    let config = Config::load(&config_path).map_err(|e| e.to_string());
    let host = doctor::Host { config_path, config, sshd, sshd_config };
    let findings = doctor::examine(&host);
    let healthy = !doctor::has_failures(&findings);
    let value = serde_json::json!({ "ok": healthy, "checks": findings });
    show(json, &value, || doctor::render(&findings).trim_end().to_owned())?;
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// One line per key, each with the key's state now: active, revoked or expired.
fn key_lines<K>(
    keys: &[K],
    revoked_and_expires: impl Fn(&K) -> (Option<i64>, Option<i64>),
    line: impl Fn(&K, &str) -> String,
) -> String {
    let now = crate::time::now();
    keys.iter()
        .map(|key| {
            let (revoked_at, expires_at) = revoked_and_expires(key);
            line(key, KeyState::of(revoked_at, expires_at, true, now).label())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `evosync --version`: the program's version and the SQLite it reads and writes with.
static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{} (SQLite {})", env!("CARGO_PKG_VERSION"), crate::store::sqlite_version().0));
