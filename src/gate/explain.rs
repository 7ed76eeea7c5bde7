//! `evosync-gate explain`: a dry run over the same plan and survey a real session uses, printed instead of acted on.
//! Nothing is created, locked, recorded or run.

use super::central::Central;
use super::decide::Action;
use super::refusal::Refusal;
use super::{checked_party, plan, survey, sync_arguments, Plan, Survey};
use crate::config::Config;

/// The decision for `command_line` as `party`, and its reason. Returns (allowed, text).
pub fn explain(config: &Config, party: &str, command_line: &str) -> (bool, String) {
    // The service or the store, where one answers: the run-owner check needs it.
    let central = Central::connect(config);
    let surveyed = checked_party(party.to_owned())
        .and_then(|party| plan(config, &party, Some(command_line)))
        .and_then(|plan| survey(config, &plan, &central).map(|survey| (plan, survey)));
    match surveyed {
        Ok((plan, survey)) => (true, describe(config, &plan, &survey)),
        Err(refusal) => (false, Refusal::explained(&refusal)),
    }
}

fn describe(config: &Config, plan: &Plan, survey: &Survey) -> String {
    let decision = &plan.decision;
    let run_note = if survey.run_exists() { "exists" } else { "would be created" };
    let mut text = format!("allow: {} of run '{}' (run folder {run_note})", decision.action.name(), decision.run);
    let (Some(database), Action::Push { wal_only, commcheck } | Action::Pull { wal_only, commcheck }) =
        (&decision.database, &decision.action)
    else {
        return text;
    };
    let run_folder = survey.tree.path().join(&decision.run);
    let args = sync_arguments(decision, (*wal_only, *commcheck), std::path::Path::new(database));
    let shown: Vec<String> = args.iter().map(|a| shell_words::quote(&a.to_string_lossy()).into_owned()).collect();
    text.push_str(&format!(
        "\nwould run: {} {}\nin: {}",
        config.sqlite3_rsync.display(),
        shown.join(" "),
        run_folder.display()
    ));
    let limits = &plan.policy.limits;
    text.push_str(&format!(
        "\nlimits: file size {}, memory {}, {} s, {} concurrent syncs",
        limits.max_db_bytes, limits.max_sync_memory, limits.max_sync_seconds, limits.max_concurrent_syncs
    ));
    text
}
