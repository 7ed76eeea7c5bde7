//! The sync ledger: one row per push the gate ran (party, key, run, database, start, seconds, exit, size after, and
//! whether it came straight over SSH or through the service's WebSocket tunnel).

use super::{Result, Store};
use rusqlite::params;

/// Also the gate's message to the service when a push ends (`broker::Request::Finish`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRow {
    pub party: String,
    pub key_id: Option<String>,
    pub run: String,
    pub database: String,
    pub started_at: i64,
    pub seconds: f64,
    pub exit: String,
    pub replica_bytes: Option<u64>,
    #[serde(default)]
    pub transport: Transport,
    /// Whether the push changed the replica, as the gate read it from the replica's WAL (`gate::unchanged`);
    /// `None` when it could not tell.
    #[serde(default)]
    pub changed: Option<bool>,
}

/// How an SSH session reached sshd: straight, or through `evosync serve`'s tunnel (`GET /api/sync/ssh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Ssh,
    WebSocket,
}

impl Transport {
    /// The ledger's `transport` column and the audit line's `transport=`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ssh => "ssh",
            Transport::WebSocket => "websocket",
        }
    }

    fn from_name(name: &str) -> Transport {
        match name {
            "websocket" => Transport::WebSocket,
            _ => Transport::Ssh,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Store {
    /// Records a push; returns its row's id.
    pub fn record_sync(&self, row: &LedgerRow) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO sync_ledger (party, key_id, run, database, started_at, seconds, exit, replica_bytes, transport,
               changed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                row.party,
                row.key_id,
                row.run,
                row.database,
                row.started_at,
                row.seconds,
                row.exit,
                row.replica_bytes.map(|b| b as i64),
                row.transport.name(),
                row.changed
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The newest push of each database of a run.
    pub fn last_syncs(&self, party: &str, run: &str) -> Result<Vec<LedgerRow>> {
        let sql = "SELECT party, key_id, run, database, started_at, seconds, exit, replica_bytes, transport, \
                   changed FROM sync_ledger \
                   WHERE id IN (SELECT max(id) FROM sync_ledger WHERE party = ?1 AND run = ?2 GROUP BY database) \
                   ORDER BY database";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([party, run], ledger_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn ledger_after(&self, after_id: i64, limit: u32) -> Result<Vec<(i64, LedgerRow)>> {
        let sql = "SELECT party, key_id, run, database, started_at, seconds, exit, replica_bytes, transport, changed, \
                   id FROM sync_ledger WHERE id > ?1 ORDER BY id LIMIT ?2";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement
            .query_map(params![after_id, limit], |r| Ok((r.get(10)?, ledger_row(r)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Pushes by outcome, for metrics.
    pub fn pushes_by_exit(&self) -> Result<Vec<(String, u64)>> {
        let mut statement =
            self.conn.prepare_cached("SELECT exit, count(*) FROM sync_ledger GROUP BY exit ORDER BY exit")?;
        let rows = statement
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn last_ledger_id(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce(max(id), 0) FROM sync_ledger", [], |r| r.get(0))?)
    }
}

pub(super) fn ledger_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LedgerRow> {
    Ok(LedgerRow {
        party: row.get(0)?,
        key_id: row.get(1)?,
        run: row.get(2)?,
        database: row.get(3)?,
        started_at: row.get(4)?,
        seconds: row.get(5)?,
        exit: row.get(6)?,
        replica_bytes: row.get::<_, Option<i64>>(7)?.map(|b| b.max(0) as u64),
        transport: Transport::from_name(&row.get::<_, String>(8)?),
        changed: row.get(9)?,
    })
}
