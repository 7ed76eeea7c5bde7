//! evosync-gate: what sshd runs instead of the worker's command (authorized_keys `command=` or `ForceCommand`).

use clap::{Parser, Subcommand};
use evosync::config::Config;
use evosync::gate::{self, Invocation, Refusal};
use std::path::PathBuf;
use std::process::ExitCode;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_path = Config::locate(cli.config.as_deref());
    let config = Config::load(&config_path);
    match cli.command {
        Some(Tool::Explain { party, command }) => {
            let config = match config {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("evosync-gate: {error}");
                    return ExitCode::from(2);
                }
            };
            let (allowed, text) = gate::explain(&config, &party, &command.join(" "));
            println!("{text}");
            ExitCode::from(if allowed { 0 } else { 1 })
        }
        Some(Tool::AuthorizedKeys { user, key_type, key }) => match config {
            Ok(config) => match evosync::gate::authorized_keys_for(&config, &config_path, &user, &key_type, &key) {
                Ok(Some(line)) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Ok(None) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("evosync-gate: {error}");
                    ExitCode::FAILURE
                }
            },
            Err(error) => {
                eprintln!("evosync-gate: {error}");
                ExitCode::FAILURE
            }
        },
        None => {
            // The account name costs an NSS lookup; only per-party-account mode needs it.
            let account = if cli.party.is_none() && cli.key.is_none() { account_name() } else { None };
            let invocation = Invocation {
                party: cli.party,
                key: cli.key,
                account,
                command: std::env::var("SSH_ORIGINAL_COMMAND").ok(),
            };
            let status = match config {
                Ok(config) => gate::serve(&config, &invocation),
                Err(error) => refuse_unconfigured(&invocation, &error.to_string()),
            };
            ExitCode::from(status.clamp(0, 255) as u8)
        }
    }
}

/// Without a configuration there is no audit sink but stderr (which sshd sends to the worker) and syslog.
fn refuse_unconfigured(invocation: &Invocation, detail: &str) -> i32 {
    let refusal = Refusal {
        code: "config",
        reason: "the central host's configuration is broken; tell the administrator".into(),
        detail: Some(detail.into()),
    };
    let listening = invocation.command.as_deref().and_then(evosync::command::looks_like_sqlite3_rsync);
    let sink = evosync::audit::Sink::new(Default::default(), None);
    sink.write(
        &evosync::audit::Line::new()
            .field("event", "decision")
            .field("verdict", "refuse")
            .field("code", refusal.code)
            .field("reason", &refusal.reason)
            .private_field_opt("detail", refusal.detail.as_deref())
            .warning(),
    );
    evosync::reply::refuse(listening, &refusal.reason);
    gate::REFUSED
}

fn account_name() -> Option<String> {
    let uid = nix::unistd::getuid();
    nix::unistd::User::from_uid(uid).ok().flatten().map(|user| user.name)
}
