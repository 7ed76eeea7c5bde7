//! What the catalog should hold. `decide` is the publication rule, pure: a run is published once every database its
//! policy lists has passed its check and has its verified copy, or, when some never arrive, `publish_partial_after`
//! seconds after the first passed; a run with a failed check is withdrawn (and its copies removed). `decide_for`
//! applies it to one run, `drift` to the whole catalog at once (the pipeline's reconciler, `evosync catalog check`).

use super::home::{Homes, RunHome};
use crate::config::Config;
use crate::policy::Policy;
use crate::store::{Store, StoreError, Verification};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// Published with these databases.
    Publish(Vec<String>),
    /// Out of the catalog, for this reason.
    Withdraw(String),
    /// Not yet: some databases passed, the others may still come until then.
    Wait { until: i64 },
}

/// The publication rule for one run, given its policy's databases and the last verdict on each replica that has its
/// verified copy (or failed).
pub fn decide(databases: &[String], verdicts: &[&Verification], now: i64, partial_after: u64) -> Publication {
    if let Some(failed) = verdicts.iter().find(|v| !v.ok) {
        let reason = failed.reason.clone().unwrap_or_else(|| "its check failed".into());
        return Publication::Withdraw(format!("{}: {reason}", failed.database));
    }
    let passed: Vec<String> =
        databases.iter().filter(|d| verdicts.iter().any(|v| &v.database == *d)).cloned().collect();
    if passed.is_empty() {
        return Publication::Withdraw("no database of it has passed its check yet".into());
    }
    if passed.len() == databases.len() {
        return Publication::Publish(passed);
    }
    let since = verdicts.iter().filter_map(|v| v.passing_since).min().unwrap_or(now);
    let until = since.saturating_add(partial_after as i64);
    if now >= until {
        Publication::Publish(passed)
    } else {
        Publication::Wait { until }
    }
}

/// What one run should be, and what that takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub publication: Publication,
    /// A verdict failed: the run's copies go.
    pub failed: bool,
    /// The policy's databases.
    pub databases: Vec<String>,
    /// Databases whose replica passed but whose copy is missing, to be made again.
    pub rebuild: Vec<String>,
}

/// The rule for one run of `party`, with its verdicts and its home as they are.
pub fn decide_for(
    config: &Config,
    party: &str,
    verdicts: &[Verification],
    home: Option<&RunHome>,
    now: i64,
) -> Decision {
    let policy = match Policy::load(&config.policy_path(party), party) {
        Ok(policy) => policy,
        Err(_) => {
            let reason = format!("party {party} has no usable policy");
            return Decision {
                publication: Publication::Withdraw(reason),
                failed: false,
                databases: vec![],
                rebuild: vec![],
            };
        }
    };
    let has_copy = |database: &str| {
        home.is_some_and(|home| {
            crate::fs::sys::stat_in(&home.fd, database)
                .ok()
                .flatten()
                .is_some_and(|s| crate::fs::sys::is_regular_file(&s))
        })
    };
    let listed: Vec<&Verification> =
        verdicts.iter().filter(|v| v.party == party && policy.databases.contains(&v.database)).collect();
    let failed = listed.iter().any(|v| !v.ok);
    let counted: Vec<&Verification> = listed.iter().copied().filter(|v| !v.ok || has_copy(&v.database)).collect();
    let rebuild = if failed {
        Vec::new()
    } else {
        listed.iter().filter(|v| v.ok && !has_copy(&v.database)).map(|v| v.database.clone()).collect()
    };
    let publication = decide(&policy.databases, &counted, now, config.publish_partial_after);
    Decision { publication, failed, databases: policy.databases, rebuild }
}

/// Where the catalog differs from what its verdicts say: runs to publish and to withdraw (each with its party), and
/// copies to make again.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    pub publish: Vec<(String, String)>,
    pub withdraw: Vec<(String, String)>,
    pub rebuild: Vec<(String, String, String)>,
}

impl Drift {
    pub fn is_clean(&self) -> bool {
        self.publish.is_empty() && self.withdraw.is_empty() && self.rebuild.is_empty()
    }
}

/// The whole catalog against the verdicts: one pass over them, and one look at each run's home.
pub fn drift(store: &Store, config: &Config, homes: &Homes, now: i64) -> Result<Drift, StoreError> {
    let verdicts = store.verifications(None)?;
    let mut by_run: BTreeMap<&str, (&str, Vec<Verification>)> = BTreeMap::new();
    for verdict in &verdicts {
        by_run.entry(&verdict.run).or_insert((&verdict.party, Vec::new())).1.push(verdict.clone());
    }
    let published: BTreeSet<String> = homes.published().unwrap_or_default().into_iter().collect();
    let mut drift = Drift::default();
    for (run, (party, verdicts)) in &by_run {
        let home = homes.find(run).ok().flatten();
        let decision = decide_for(config, party, verdicts, home.as_ref(), now);
        let is_published = published.contains(*run);
        match decision.publication {
            Publication::Publish(_) if !is_published && home.is_some() => {
                drift.publish.push((party.to_string(), run.to_string()))
            }
            Publication::Withdraw(_) | Publication::Wait { .. } if is_published => {
                drift.withdraw.push((party.to_string(), run.to_string()))
            }
            Publication::Withdraw(_) if decision.failed && has_copies(home.as_ref(), &decision.databases) => {
                drift.withdraw.push((party.to_string(), run.to_string()))
            }
            _ => {}
        }
        drift.rebuild.extend(decision.rebuild.into_iter().map(|d| (party.to_string(), run.to_string(), d)));
    }
    // A published run with no verdict at all (its store was replaced, say) is no run readers may have.
    for run in published.iter().filter(|run| !by_run.contains_key(run.as_str())) {
        let party = store.run(run)?.map(|r| r.party).unwrap_or_default();
        drift.withdraw.push((party, run.clone()));
    }
    Ok(drift)
}

fn has_copies(home: Option<&RunHome>, databases: &[String]) -> bool {
    home.is_some_and(|home| databases.iter().any(|d| crate::fs::sys::stat_in(&home.fd, d).ok().flatten().is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(database: &str, ok: bool, passing_since: Option<i64>) -> Verification {
        Verification {
            party: "acme".into(),
            run: "R".into(),
            database: database.into(),
            ok,
            at: 100,
            seconds: 0.1,
            reason: (!ok).then(|| "it holds view 'v'".into()),
            passing_since,
        }
    }

    #[test]
    fn a_run_is_published_whole_or_after_its_wait_and_withdrawn_at_a_failure() {
        let databases = vec!["genomes.sqlite".to_owned(), "features.sqlite".to_owned()];
        let genomes = verdict("genomes.sqlite", true, Some(100));
        let features = verdict("features.sqlite", true, Some(150));
        assert_eq!(
            decide(&databases, &[&genomes, &features], 160, 600),
            Publication::Publish(databases.clone()),
            "both passed: published at once"
        );
        assert_eq!(decide(&databases, &[&genomes], 160, 600), Publication::Wait { until: 700 });
        assert_eq!(decide(&databases, &[&genomes], 700, 600), Publication::Publish(vec!["genomes.sqlite".into()]));
        let bad = verdict("features.sqlite", false, None);
        assert_eq!(
            decide(&databases, &[&genomes, &bad], 900, 600),
            Publication::Withdraw("features.sqlite: it holds view 'v'".into())
        );
        assert!(matches!(decide(&databases, &[], 900, 600), Publication::Withdraw(_)));
    }
}
