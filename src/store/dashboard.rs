//! Read-only summaries for the dashboard (`serve::dashboard`): pushes, uploads and gate refusals per hour, the newest
//! records of each kind, a run's push history, and the audit trail newest first. Nothing here writes.
//!
//! The ledger and the audit trail have no index on time, and grow for ever; "the last 24 hours" is found by a binary
//! search over their row ids instead of a scan (`first_row_since`), which holds because rows are appended in time
//! order: the audit's `at` is taken under the write lock, and a ledger row is written when its push ends, so its
//! `started_at` trails its id by at most one push's length (`ORDER_SLACK` covers that).

use super::audit_chain::audit_row;
use super::ledger::ledger_row;
use super::runs::{file_record, FILE_COLUMNS};
use super::{AuditRecord, FileRecord, LedgerRow, Result, Store};
use rusqlite::{params, OptionalExtension};

/// How far a row's time may run behind a later row's: the longest a push can take and still be recorded.
const ORDER_SLACK: i64 = 86_400;

/// How many of the newest audit records a search for recent ones of note looks through, so that a trail without
/// any is not read whole on every page.
const NOTABLE_SCAN: i64 = 100_000;

/// Pushes that started in one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HourlyPushes {
    /// Unix seconds divided by 3600.
    pub hour: i64,
    pub pushes: u64,
    /// Those whose exit was not 0.
    pub failed: u64,
    /// The replicas' sizes after these pushes, added up.
    pub bytes: u64,
}

/// Analysis files stored in one hour (a replaced file counts once, at its newest version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HourlyUploads {
    pub hour: i64,
    pub files: u64,
    pub bytes: u64,
}

/// A ledger row with its id and the catalog's verdict on that push.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRecord {
    pub id: i64,
    pub row: LedgerRow,
    pub verified: Option<bool>,
    pub verify_seconds: Option<f64>,
    pub verify_reason: Option<String>,
}

/// `ledger_row`'s columns first, then this file's.
const PUSH_COLUMNS: &str = "party, key_id, run, database, started_at, seconds, exit, replica_bytes, transport, \
                            changed, id, verified, verify_seconds, verify_reason";

fn push_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<PushRecord> {
    Ok(PushRecord {
        row: ledger_row(row)?,
        id: row.get(10)?,
        verified: row.get(11)?,
        verify_seconds: row.get(12)?,
        verify_reason: row.get(13)?,
    })
}

impl Store {
    /// The lowest row id of `table` whose `column` (unix seconds) may be `since` or later: a binary search over the
    /// ids, each step one rowid lookup. `table` and `column` are names from this file, never input.
    fn first_row_since(&self, table: &'static str, id: &'static str, column: &'static str, since: i64) -> Result<i64> {
        let (low, high): (Option<i64>, Option<i64>) =
            self.conn
                .query_row(&format!("SELECT min({id}), max({id}) FROM {table}"), [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (Some(mut low), Some(mut high)) = (low, high) else { return Ok(0) };
        let mut at_or_after = self
            .conn
            .prepare_cached(&format!("SELECT {column} FROM {table} WHERE {id} >= ?1 ORDER BY {id} LIMIT 1"))?;
        // The first id whose time is `since` or later, or `high + 1` when none is.
        high += 1;
        while low < high {
            let middle = low + (high - low) / 2;
            let at: Option<i64> = at_or_after.query_row([middle], |r| r.get(0)).optional()?;
            if at.is_some_and(|at| at >= since) {
                high = middle;
            } else {
                low = middle + 1;
            }
        }
        Ok(low)
    }

    /// Pushes per hour that started at `since` or later, oldest hour first; hours without pushes are left out.
    pub fn hourly_pushes(&self, since: i64) -> Result<Vec<HourlyPushes>> {
        let first = self.first_row_since("sync_ledger", "id", "started_at", since - ORDER_SLACK)?;
        let mut statement = self.conn.prepare_cached(
            "SELECT started_at / 3600, count(*), sum(exit != '0'), sum(coalesce(replica_bytes, 0)) FROM sync_ledger \
             WHERE id >= ?1 AND started_at >= ?2 GROUP BY 1 ORDER BY 1",
        )?;
        let rows = statement
            .query_map(params![first, since], |r| {
                Ok(HourlyPushes {
                    hour: r.get(0)?,
                    pushes: r.get::<_, i64>(1)?.max(0) as u64,
                    failed: r.get::<_, i64>(2)?.max(0) as u64,
                    bytes: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Pushes since `since` per party: (party, pushes, failed ones).
    pub fn pushes_by_party_since(&self, since: i64) -> Result<Vec<(String, u64, u64)>> {
        let first = self.first_row_since("sync_ledger", "id", "started_at", since - ORDER_SLACK)?;
        let mut statement = self.conn.prepare_cached(
            "SELECT party, count(*), sum(exit != '0') FROM sync_ledger WHERE id >= ?1 AND started_at >= ?2 \
             GROUP BY party ORDER BY party",
        )?;
        let rows = statement
            .query_map(params![first, since], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get::<_, i64>(2)?.max(0) as u64))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Analysis files stored per hour at `since` or later, oldest hour first. (The files' table has no index on
    /// time: this reads it whole, once per overview.)
    pub fn hourly_uploads(&self, since: i64) -> Result<Vec<HourlyUploads>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT stored_at / 3600, count(*), sum(size) FROM analysis_files WHERE stored_at >= ?1 GROUP BY 1 \
             ORDER BY 1",
        )?;
        let rows = statement
            .query_map([since], |r| {
                Ok(HourlyUploads {
                    hour: r.get(0)?,
                    files: r.get::<_, i64>(1)?.max(0) as u64,
                    bytes: r.get::<_, i64>(2)?.max(0) as u64,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The gate's refusals since `since`, by code (`refuse:CODE` in the audit trail), most frequent first.
    pub fn gate_refusals_since(&self, since: i64) -> Result<Vec<(String, u64)>> {
        let first = self.first_row_since("audit", "seq", "at", since)?;
        let mut statement = self.conn.prepare_cached(
            "SELECT substr(outcome, 8), count(*) FROM audit WHERE seq >= ?1 AND at >= ?2 \
             AND outcome LIKE 'refuse:%' GROUP BY 1 ORDER BY 2 DESC, 1",
        )?;
        let rows = statement
            .query_map(params![first, since], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest pushes, newest first.
    pub fn recent_pushes(&self, limit: u32) -> Result<Vec<PushRecord>> {
        let sql = format!("SELECT {PUSH_COLUMNS} FROM sync_ledger ORDER BY id DESC LIMIT ?1");
        let mut statement = self.conn.prepare_cached(&sql)?;
        let rows = statement.query_map([limit], push_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// A run's pushes, newest first.
    pub fn run_pushes(&self, party: &str, run: &str, limit: u32) -> Result<Vec<PushRecord>> {
        let sql =
            format!("SELECT {PUSH_COLUMNS} FROM sync_ledger WHERE party = ?1 AND run = ?2 ORDER BY id DESC LIMIT ?3");
        let mut statement = self.conn.prepare_cached(&sql)?;
        let rows =
            statement.query_map(params![party, run, limit], push_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest push of every replica of every run.
    pub fn latest_pushes(&self) -> Result<Vec<PushRecord>> {
        let sql = format!(
            "SELECT {PUSH_COLUMNS} FROM sync_ledger WHERE id IN \
             (SELECT max(id) FROM sync_ledger GROUP BY party, run, database)"
        );
        let mut statement = self.conn.prepare_cached(&sql)?;
        let rows = statement.query_map([], push_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest analysis files stored, newest first.
    pub fn recent_uploads(&self, limit: u32) -> Result<Vec<FileRecord>> {
        let mut statement = self
            .conn
            .prepare_cached(&format!("SELECT {FILE_COLUMNS} FROM analysis_files ORDER BY stored_at DESC LIMIT ?1"))?;
        let rows = statement.query_map([limit], file_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest audit records of note, newest first, among the last `NOTABLE_SCAN`: the gate's refusals
    /// (`refuse:CODE`), the catalog's publications and withdrawals, and what administrators did (actors `cli:`,
    /// `http:`, `dashboard:`).
    pub fn recent_notable_audit(&self, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
             WHERE seq > (SELECT coalesce(max(seq), 0) FROM audit) - ?1 AND (outcome LIKE 'refuse:%' \
             OR action IN ('publish', 'withdraw') OR actor LIKE 'cli:%' OR actor LIKE 'http:%' \
             OR actor LIKE 'dashboard:%') ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows =
            statement.query_map(params![NOTABLE_SCAN, limit], audit_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Audit records before `before` (or the newest), newest first.
    pub fn audit_newest_first(&self, before: Option<i64>, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
             WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = statement
            .query_map(params![before.unwrap_or(i64::MAX), limit], audit_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The newest audit record's sequence number (0 for an empty trail).
    pub fn last_audit_seq(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce(max(seq), 0) FROM audit", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditAction, AuditEntry, STORE_FILE};

    fn push(store: &Store, run: &str, started_at: i64, exit: &str, bytes: u64) {
        store
            .record_sync(&LedgerRow {
                party: "acme".into(),
                key_id: None,
                run: run.into(),
                database: "genomes.sqlite".into(),
                started_at,
                seconds: 1.0,
                exit: exit.into(),
                replica_bytes: Some(bytes),
                transport: crate::store::Transport::Ssh,
                changed: None,
            })
            .unwrap();
    }

    #[test]
    fn hourly_pushes_count_only_the_window_and_find_it_by_search() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        assert!(store.hourly_pushes(0).unwrap().is_empty(), "an empty ledger");
        let base = 1_800_000_000; // an hour's start
        for n in 0..500 {
            push(&store, "R", base - 10 * 86_400 + n * 60, "0", 1);
        }
        push(&store, "R", base + 10, "0", 100);
        push(&store, "R", base + 20, "memory_limit", 50);
        push(&store, "R", base + 3600, "0", 7);
        let hours = store.hourly_pushes(base).unwrap();
        assert_eq!(
            hours,
            [
                HourlyPushes { hour: base / 3600, pushes: 2, failed: 1, bytes: 150 },
                HourlyPushes { hour: base / 3600 + 1, pushes: 1, failed: 0, bytes: 7 },
            ]
        );
        assert_eq!(store.first_row_since("sync_ledger", "id", "started_at", base).unwrap(), 501);
        assert_eq!(store.first_row_since("sync_ledger", "id", "started_at", base + 7200).unwrap(), 504);
        let newest = store.recent_pushes(2).unwrap();
        assert_eq!((newest[0].id, newest[1].row.exit.as_str()), (503, "memory_limit"));
        assert_eq!(store.run_pushes("acme", "R", 1).unwrap()[0].id, 503);
        assert_eq!(store.latest_pushes().unwrap().len(), 1);
        assert_eq!(store.pushes_by_party_since(base).unwrap(), [("acme".to_owned(), 3, 1)]);
    }

    #[test]
    fn gate_refusals_are_counted_by_code_and_records_of_note_found_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        for outcome in ["allow", "refuse:command", "refuse:run", "refuse:command", "ok"] {
            store
                .append_audit(&AuditEntry { actor: "gate", action: AuditAction::Gate, outcome, ..Default::default() })
                .unwrap();
        }
        for (actor, action) in [
            ("serve:catalog", AuditAction::Verify),
            ("serve:catalog", AuditAction::Withdraw),
            ("cli:root", AuditAction::PartyAdd),
        ] {
            store.append_audit(&AuditEntry { actor, action, outcome: "ok", ..Default::default() }).unwrap();
        }
        let counts = store.gate_refusals_since(0).unwrap();
        assert_eq!(counts, [("command".to_owned(), 2), ("run".to_owned(), 1)]);
        assert!(store.gate_refusals_since(crate::time::now() + 10).unwrap().is_empty());
        let recent: Vec<i64> = store.recent_notable_audit(10).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(recent, [8, 7, 4, 3, 2]);
        let page: Vec<i64> = store.audit_newest_first(Some(4), 2).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(page, [3, 2]);
        assert_eq!(store.last_audit_seq().unwrap(), 8);
    }
}
