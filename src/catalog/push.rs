//! What a push means for the catalog, as the store records it, whoever records it (the service for its gates, or a
//! gate alone on a host where the service is down): from the moment a gate holding the replica's lock reserves room
//! for a push, the replica counts as changing; when the push ends, its replica awaits its verdict, unless the push
//! changed nothing and no earlier push still waits for one. No crash between the two loses a push: a job left
//! `pushing` is done as `awaiting` at the next start (`pipeline`).

use crate::store::{LedgerRow, Store, StoreError};

/// A push is starting (its gate holds the replica's lock). Returns whether its replica had work waiting already.
pub fn started(store: &Store, party: &str, run: &str, database: &str) -> Result<bool, StoreError> {
    store.job_pushing(party, run, database, crate::time::now())
}

/// What the catalog must do about a push that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterPush {
    /// It changed nothing and nothing waited: no check, no copy.
    Nothing,
    /// Its replica must be checked: the schema while the worker waits (a push that ended well), the rest after.
    Check { ledger_id: i64, schema_now: bool },
}

/// Records a push's ledger row and what follows from it (`had_pending`: what `started` said).
pub fn ended(store: &Store, row: &LedgerRow, had_pending: bool) -> Result<AfterPush, StoreError> {
    store.in_transaction(|store| {
        let ledger_id = store.record_sync(row)?;
        let (party, run, database) = (&row.party, &row.run, &row.database);
        if row.changed == Some(false) && !had_pending {
            store.job_done(party, run, database)?;
            return Ok(AfterPush::Nothing);
        }
        store.job_awaiting(party, run, database, Some(ledger_id), crate::time::now())?;
        Ok(AfterPush::Check { ledger_id, schema_now: row.exit == "0" })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::JobState;

    fn row(exit: &str, changed: Option<bool>) -> LedgerRow {
        LedgerRow {
            party: "acme".into(),
            key_id: None,
            run: "R".into(),
            database: "genomes.sqlite".into(),
            started_at: 1,
            seconds: 0.1,
            exit: exit.into(),
            replica_bytes: Some(4096),
            transport: Default::default(),
            changed,
        }
    }

    #[test]
    fn an_unchanged_push_costs_nothing_unless_work_was_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let pending = started(&store, "acme", "R", "genomes.sqlite").unwrap();
        assert!(!pending);
        assert_eq!(ended(&store, &row("0", Some(false)), pending).unwrap(), AfterPush::Nothing);
        assert!(store.jobs().unwrap().is_empty());

        let pending = started(&store, "acme", "R", "genomes.sqlite").unwrap();
        let after = ended(&store, &row("0", None), pending).unwrap();
        assert!(matches!(after, AfterPush::Check { schema_now: true, .. }), "cannot tell: checked");
        // The next push changes nothing, but the last one's verdict is still due.
        let pending = started(&store, "acme", "R", "genomes.sqlite").unwrap();
        assert!(pending);
        assert!(matches!(ended(&store, &row("0", Some(false)), pending).unwrap(), AfterPush::Check { .. }));
        assert_eq!(store.jobs().unwrap()[0].state, JobState::Awaiting);

        // A push that broke off: its replica is checked, but not while its worker waits.
        let pending = started(&store, "acme", "R", "genomes.sqlite").unwrap();
        assert!(matches!(
            ended(&store, &row("signal-9", None), pending).unwrap(),
            AfterPush::Check { schema_now: false, .. }
        ));
    }
}
