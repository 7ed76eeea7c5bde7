//! The catalog's work list and each party's usage as last measured.
//!
//! A job is one replica whose last push has not had its verdict yet (`catalog::pipeline`): `pushing` from the moment
//! a gate holding the replica's lock reserves room for a push, `awaiting` once the push has ended well and passed the
//! schema check its worker waited for. The row goes when the verdict is recorded, in the same transaction, so a
//! crash at any point leaves the job to be done again at the next start.

use super::{Result, Store};
use crate::access::Usage;
use rusqlite::{params, OptionalExtension};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// A gate holds the replica's lock and is pushing.
    Pushing,
    /// The push ended; the copy and its full check are due.
    Awaiting,
}

impl JobState {
    fn from_name(name: &str) -> JobState {
        match name {
            "pushing" => JobState::Pushing,
            _ => JobState::Awaiting,
        }
    }
}

/// One replica the catalog has yet to give its verdict on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Job {
    pub party: String,
    pub run: String,
    pub database: String,
    pub state: JobState,
    /// The push it is for, when there was one (a re-verification has none).
    pub ledger_id: Option<i64>,
    /// Since when it has been waiting (unix seconds).
    pub since: i64,
}

const JOB_COLUMNS: &str = "party, run, database, state, ledger_id, since";

fn job(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
    Ok(Job {
        party: r.get(0)?,
        run: r.get(1)?,
        database: r.get(2)?,
        state: JobState::from_name(&r.get::<_, String>(3)?),
        ledger_id: r.get(4)?,
        since: r.get(5)?,
    })
}

impl Store {
    /// Marks a replica as being pushed. Returns whether it had work waiting already (an earlier push without its
    /// verdict yet), which a push that changes nothing must not drop.
    pub fn job_pushing(&self, party: &str, run: &str, database: &str, now: i64) -> Result<bool> {
        self.in_transaction(|store| {
            let before = store.job(party, run, database)?;
            store.conn.execute(
                "INSERT INTO catalog_jobs (party, run, database, state, ledger_id, since) VALUES (?1, ?2, ?3, 'pushing', NULL, ?4)
                 ON CONFLICT (party, run, database) DO UPDATE SET state = 'pushing'",
                params![party, run, database, now],
            )?;
            Ok(before.is_some())
        })
    }

    /// Marks a replica's work as due: after a push (`ledger_id`), or for a re-verification or a missing copy.
    pub fn job_awaiting(&self, party: &str, run: &str, database: &str, ledger_id: Option<i64>, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO catalog_jobs (party, run, database, state, ledger_id, since) VALUES (?1, ?2, ?3, 'awaiting', ?4, ?5)
             ON CONFLICT (party, run, database) DO UPDATE SET state = 'awaiting',
               ledger_id = coalesce(excluded.ledger_id, ledger_id)",
            params![party, run, database, ledger_id, now],
        )?;
        Ok(())
    }

    /// Drops a replica's job (its push changed nothing, or its verdict is recorded).
    pub fn job_done(&self, party: &str, run: &str, database: &str) -> Result<()> {
        self.conn.execute(
            "DELETE FROM catalog_jobs WHERE party = ?1 AND run = ?2 AND database = ?3",
            params![party, run, database],
        )?;
        Ok(())
    }

    pub fn job(&self, party: &str, run: &str, database: &str) -> Result<Option<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM catalog_jobs WHERE party = ?1 AND run = ?2 AND database = ?3");
        Ok(self.conn.prepare_cached(&sql)?.query_row(params![party, run, database], job).optional()?)
    }

    /// Every job, oldest first.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM catalog_jobs ORDER BY since, party, run, database");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], job)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Keeps a party's measured usage, so that a restarted service has a figure before its first walk ends.
    pub fn remember_usage(&self, party: &str, usage: Usage, now: i64) -> Result<()> {
        self.conn.execute(
            "INSERT INTO party_usage (party, bytes, files, measured_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (party) DO UPDATE SET bytes = excluded.bytes, files = excluded.files,
               measured_at = excluded.measured_at",
            params![party, usage.bytes as i64, usage.files as i64, now],
        )?;
        Ok(())
    }

    /// Every party's usage as last remembered.
    pub fn remembered_usage(&self) -> Result<Vec<(String, Usage)>> {
        let mut statement = self.conn.prepare("SELECT party, bytes, files FROM party_usage")?;
        let rows = statement
            .query_map([], |r| {
                let usage =
                    Usage { bytes: r.get::<_, i64>(1)?.max(0) as u64, files: r.get::<_, i64>(2)?.max(0) as u64 };
                Ok((r.get(0)?, usage))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_lives_from_the_push_to_its_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        assert!(!store.job_pushing("acme", "R", "genomes.sqlite", 10).unwrap());
        assert_eq!(store.job("acme", "R", "genomes.sqlite").unwrap().unwrap().state, JobState::Pushing);
        store.job_awaiting("acme", "R", "genomes.sqlite", Some(7), 11).unwrap();
        let job = store.job("acme", "R", "genomes.sqlite").unwrap().unwrap();
        assert_eq!((job.state, job.ledger_id, job.since), (JobState::Awaiting, Some(7), 10));
        assert!(store.job_pushing("acme", "R", "genomes.sqlite", 12).unwrap(), "work was waiting already");
        store.job_awaiting("acme", "R", "genomes.sqlite", None, 13).unwrap();
        assert_eq!(store.jobs().unwrap()[0].ledger_id, Some(7), "a re-verification keeps the push it is for");
        store.job_done("acme", "R", "genomes.sqlite").unwrap();
        assert!(store.jobs().unwrap().is_empty());
        store.remember_usage("acme", Usage { bytes: 5, files: 2 }, 1).unwrap();
        store.remember_usage("acme", Usage { bytes: 6, files: 3 }, 2).unwrap();
        assert_eq!(store.remembered_usage().unwrap(), [("acme".to_owned(), Usage { bytes: 6, files: 3 })]);
    }
}
