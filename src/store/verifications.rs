//! Verifications of pushed replicas: the last verdict on each replica (and since when it has passed, the clock of a
//! partial publication), and each push's verdict in its ledger row.

use super::{Result, Store};
use rusqlite::{params, OptionalExtension};

/// The last verdict on one replica.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    pub party: String,
    pub run: String,
    pub database: String,
    pub ok: bool,
    pub at: i64,
    pub seconds: f64,
    pub reason: Option<String>,
    /// Since when the replica has passed without a failure in between; `None` after a failure.
    pub passing_since: Option<i64>,
}

impl Store {
    /// Records a verdict: the replica's current one, and the push's in its ledger row when there is one.
    pub fn record_verification(&self, verification: &Verification, ledger_id: Option<i64>) -> Result<()> {
        let v = verification;
        self.in_transaction(|store| {
            store.conn.execute(
                "INSERT INTO verifications (party, run, database, ok, at, seconds, reason, passing_since)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, CASE WHEN ?4 THEN ?5 END)
                 ON CONFLICT (party, run, database) DO UPDATE SET
                   ok = excluded.ok, at = excluded.at, seconds = excluded.seconds, reason = excluded.reason,
                   passing_since = CASE WHEN excluded.ok THEN coalesce(passing_since, excluded.at) END",
                params![v.party, v.run, v.database, v.ok, v.at, v.seconds, v.reason],
            )?;
            if let Some(id) = ledger_id {
                store.conn.execute(
                    "UPDATE sync_ledger SET verified = ?2, verify_seconds = ?3, verify_reason = ?4 WHERE id = ?1",
                    params![id, v.ok, v.seconds, v.reason],
                )?;
            }
            Ok(())
        })
    }

    /// The verdicts on a run's replicas, or on every replica.
    pub fn verifications(&self, run: Option<&str>) -> Result<Vec<Verification>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT party, run, database, ok, at, seconds, reason, passing_since FROM verifications \
             WHERE (?1 IS NULL OR run = ?1) ORDER BY run, database",
        )?;
        let rows = statement
            .query_map([run], |r| {
                Ok(Verification {
                    party: r.get(0)?,
                    run: r.get(1)?,
                    database: r.get(2)?,
                    ok: r.get(3)?,
                    at: r.get(4)?,
                    seconds: r.get(5)?,
                    reason: r.get(6)?,
                    passing_since: r.get(7)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The verdict on one replica.
    pub fn verification(&self, run: &str, database: &str) -> Result<Option<Verification>> {
        Ok(self.verifications(Some(run))?.into_iter().find(|v| v.database == database))
    }

    /// Forgets the verdicts of a run (its files are gone).
    pub fn forget_verifications(&self, run: &str) -> Result<()> {
        self.conn.execute("DELETE FROM verifications WHERE run = ?1", [run])?;
        Ok(())
    }

    /// The id of the newest ledger row of a replica.
    pub fn last_push_id(&self, party: &str, run: &str, database: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT max(id) FROM sync_ledger WHERE party = ?1 AND run = ?2 AND database = ?3",
                params![party, run, database],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }
}
