//! What the catalog should hold, and making it so. `decide` is the publication rule, pure: a run is published once
//! every database its policy lists has passed its check, or, when some never arrive, `publish_partial_after` seconds
//! after the first passed; a run with a failed check is withdrawn. `expected` applies it to the store's verdicts,
//! and `reconcile` makes the catalog match (the service at start and after each verdict, `evosync catalog check`).

use super::publish::{Catalog, Links, RUN_FOLDERS};
use crate::config::Config;
use crate::policy::Policy;
use crate::store::{Store, Verification};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// Published with these databases.
    Publish(Vec<String>),
    /// Out of the catalog, for this reason.
    Withdraw(String),
    /// Not yet: some databases passed, the others may still come until then.
    Wait { until: i64 },
}

/// The publication rule for one run, given its policy's databases and the last verdict on each replica it has.
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

/// What should be published: for each run with verdicts, its decision and the links it should hold.
/// (With `only`, for that run alone.)
pub fn expected(
    store: &Store,
    config: &Config,
    now: i64,
    only: Option<&str>,
) -> crate::store::Result<BTreeMap<String, (Publication, Links)>> {
    let verdicts = store.verifications(only)?;
    let verified_root = config.verified_root();
    let mut by_run: BTreeMap<&str, (&str, Vec<&Verification>)> = BTreeMap::new();
    for verdict in &verdicts {
        // A database that passed counts once its verified copy exists (the service makes it right after the
        // verdict): readers open the copy, and must not find a run without it.
        let uncopied = verdict.ok
            && verified_root
                .as_ref()
                .is_some_and(|root| !super::copies::copy_path(root, &verdict.run, &verdict.database).is_file());
        let (_, counted) = by_run.entry(&verdict.run).or_insert((&verdict.party, Vec::new()));
        if !uncopied {
            counted.push(verdict);
        }
    }
    let mut policies: BTreeMap<String, Option<Policy>> = BTreeMap::new();
    let mut runs = BTreeMap::new();
    for (run, (party, verdicts)) in by_run {
        let party = party.to_owned();
        let policy = policies
            .entry(party.clone())
            .or_insert_with(|| Policy::load(&config.policy_path(&party), &party).ok())
            .clone();
        let Some(policy) = policy else {
            runs.insert(
                run.to_owned(),
                (Publication::Withdraw(format!("party {party} has no usable policy")), Links::new()),
            );
            continue;
        };
        let decision = decide(&policy.databases, &verdicts, now, config.publish_partial_after);
        let links = match &decision {
            Publication::Publish(databases) => links(config, &party, run, databases),
            _ => Links::new(),
        };
        runs.insert(run.to_owned(), (decision, links));
    }
    Ok(runs)
}

/// The links of a published run: the verified copies of its databases, and those of its folders (in the party's
/// tree) that exist.
pub fn links(config: &Config, party: &str, run: &str, databases: &[String]) -> Links {
    let replicas = std::fs::canonicalize(&config.replica_root).unwrap_or_else(|_| config.replica_root.clone());
    let folder = replicas.join(party).join(run);
    let mut links = Links::new();
    if let Some(verified) = config.verified_root() {
        let verified = std::fs::canonicalize(&verified).unwrap_or(verified);
        for database in databases {
            let copy = super::copies::copy_path(&verified, run, database);
            if copy.is_file() {
                links.insert(database.clone(), copy);
            }
        }
    }
    for name in RUN_FOLDERS {
        if folder.join(name).is_dir() {
            links.insert(name.to_owned(), folder.join(name));
        }
    }
    links
}

/// Where the catalog differs from what should be.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// Runs to publish, or to publish with other links.
    pub publish: Vec<String>,
    /// Runs published that should not be.
    pub withdraw: Vec<String>,
}

impl Drift {
    pub fn is_clean(&self) -> bool {
        self.publish.is_empty() && self.withdraw.is_empty()
    }
}

/// Compares the catalog with what should be; with `repair`, makes it so. Returns what differed.
/// (With `only`, looks at that run alone.)
pub fn reconcile(
    catalog: &Catalog,
    expected: &BTreeMap<String, (Publication, Links)>,
    repair: bool,
    only: Option<&str>,
) -> std::io::Result<Drift> {
    let published = match only {
        Some(run) => {
            catalog.published_run(run)?.map(|links| BTreeMap::from([(run.to_owned(), links)])).unwrap_or_default()
        }
        None => catalog.published()?,
    };
    let mut drift = Drift { publish: Vec::new(), withdraw: Vec::new() };
    for (run, (decision, links)) in expected {
        match decision {
            Publication::Publish(_) if published.get(run) != Some(links) => drift.publish.push(run.clone()),
            Publication::Withdraw(_) | Publication::Wait { .. } if published.contains_key(run) => {
                drift.withdraw.push(run.clone())
            }
            _ => {}
        }
    }
    drift.withdraw.extend(published.keys().filter(|run| !expected.contains_key(*run)).cloned());
    if repair {
        for run in &drift.publish {
            catalog.publish(run, &expected[run].1)?;
        }
        for run in &drift.withdraw {
            catalog.withdraw(run)?;
        }
    }
    Ok(drift)
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
