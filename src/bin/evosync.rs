//! evosync: the administrator's command line.

use clap::{Parser, Subcommand};
use evosync::config::Config;
use evosync::policy::Policy;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "evosync", version, about = "Administer the evosync central host")]
struct Cli {
    /// Configuration file [default: $EVOSYNC_CONFIG, else /etc/evosync/evosync.yaml]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Party policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate every policy in policies_dir (or the files given) and say what is wrong where.
    Check {
        /// Policy files to check instead of every *.yaml in policies_dir.
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Policy { command: PolicyCommand::Check { files } } => policy_check(cli.config, files),
    }
}

fn policy_check(config: Option<PathBuf>, mut files: Vec<PathBuf>) -> ExitCode {
    if files.is_empty() {
        let config = match Config::load(&Config::locate(config.as_deref())) {
            Ok(config) => config,
            Err(error) => return fail(&error.to_string()),
        };
        let entries = match std::fs::read_dir(&config.policies_dir) {
            Ok(entries) => entries,
            Err(error) => return fail(&format!("cannot list {}: {error}", config.policies_dir.display())),
        };
        files = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return fail(&format!("no *.yaml policy in {}", config.policies_dir.display()));
        }
    }
    let mut broken = 0;
    for file in &files {
        let party = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        match Policy::load(file, party) {
            Ok(policy) => println!(
                "ok       {}: party {}, push {}, pull {}, create_runs {}",
                file.display(),
                policy.party,
                policy.push,
                policy.pull,
                policy.create_runs
            ),
            Err(error) => {
                broken += 1;
                println!("invalid  {error}");
            }
        }
    }
    if broken > 0 {
        eprintln!("evosync: {broken} of {} policies are invalid; their parties are refused until fixed", files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(reason: &str) -> ExitCode {
    eprintln!("evosync: {reason}");
    ExitCode::FAILURE
}
