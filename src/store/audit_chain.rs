//! The audit trail: every admin action and gate decision, hash-chained with SHA-256 so an edit or a deletion shows.

use super::{Result, Store};
use crate::time::now;
use rusqlite::{params, OptionalExtension};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit record before it is chained.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub party: &'a str,
    pub subject: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub party: String,
    pub subject: String,
    pub outcome: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum ChainCheck {
    Intact { records: u64 },
    Broken { seq: i64, reason: String },
}

impl Store {
    /// Appends one record to the hash chain; concurrent writers are serialised by SQLite's write lock. Inside a
    /// transaction already open on this connection (`Store::immediate`, which holds the write lock) the record joins
    /// it, and stands or falls with the change it records.
    pub fn append_audit(&self, entry: &AuditEntry<'_>) -> Result<AuditRecord> {
        if !self.conn.is_autocommit() {
            return self.chain_record(entry);
        }
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let record = self.chain_record(entry)?;
        tx.commit()?;
        Ok(record)
    }

    /// Links and inserts one record; the caller holds the write lock.
    fn chain_record(&self, entry: &AuditEntry<'_>) -> Result<AuditRecord> {
        let (last_seq, prev_hash): (i64, String) = self
            .conn
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, GENESIS.to_owned()));
        let mut record = AuditRecord {
            seq: last_seq + 1,
            at: now(),
            actor: entry.actor.to_owned(),
            action: entry.action.to_owned(),
            party: entry.party.to_owned(),
            subject: entry.subject.to_owned(),
            outcome: entry.outcome.to_owned(),
            detail: entry.detail.to_owned(),
            prev_hash,
            hash: String::new(),
        };
        record.hash = chain_hash(&record);
        self.conn.execute(
            "INSERT INTO audit (seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                record.seq,
                record.at,
                record.actor,
                record.action,
                record.party,
                record.subject,
                record.outcome,
                record.detail,
                record.prev_hash,
                record.hash
            ],
        )?;
        Ok(record)
    }

    /// Records after `after_seq`, oldest first.
    pub fn audit(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after_seq, limit], audit_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Walks the chain and reports the first record whose link or hash does not hold.
    pub fn verify_audit(&self) -> Result<ChainCheck> {
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        let (mut expected_prev, mut expected_seq, mut count) = (GENESIS.to_owned(), 1i64, 0u64);
        while let Some(row) = rows.next()? {
            let record = audit_row(row)?;
            let broken = |reason: &str| Ok(ChainCheck::Broken { seq: record.seq, reason: reason.to_owned() });
            if record.seq != expected_seq {
                return broken(&format!("record {expected_seq} is missing"));
            }
            if record.prev_hash != expected_prev {
                return broken("its prev_hash is not the hash of the record before");
            }
            if chain_hash(&record) != record.hash {
                return broken("its contents do not match its hash (edited)");
            }
            expected_prev = record.hash;
            expected_seq += 1;
            count += 1;
        }
        Ok(ChainCheck::Intact { records: count })
    }
}

/// SHA-256 over the previous hash and every field, each length-prefixed so no two records hash alike by accident.
fn chain_hash(record: &AuditRecord) -> String {
    let mut hasher = Sha256::new();
    let seq = record.seq.to_string();
    let at = record.at.to_string();
    for field in [
        record.prev_hash.as_str(),
        &seq,
        &at,
        &record.actor,
        &record.action,
        &record.party,
        &record.subject,
        &record.outcome,
        &record.detail,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    crate::time::hex(&hasher.finalize())
}

pub(super) fn audit_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: row.get(0)?,
        at: row.get(1)?,
        actor: row.get(2)?,
        action: row.get(3)?,
        party: row.get(4)?,
        subject: row.get(5)?,
        outcome: row.get(6)?,
        detail: row.get(7)?,
        prev_hash: row.get(8)?,
        hash: row.get(9)?,
    })
}
