//! The audit trail: every admin action and gate decision, hash-chained with SHA-256 so an edit or a deletion shows.
//! The chain starts at the genesis hash, or, once older records have been archived (`audit_archive`), at the newest
//! seal: the hash of the last archived record.

use super::audit_archive::{self, Seal};
use super::{Result, Store};
use crate::time::now;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

/// The `prev_hash` of record 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit record says happened: every kind of record the trail holds, one variant each, written under the
/// name `name` gives (the names the trail has always used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A gate's decision on a session, or a push's outcome.
    #[default]
    Gate,
    PartyAdd,
    PartyEnable,
    PartyDisable,
    SshKeyAdd,
    SshKeyRevoke,
    ApiKeyIssue,
    ApiKeyRevoke,
    AdminTokenIssue,
    AdminTokenRevoke,
    AdminTokenRotate,
    AuthorizedKeysWrite,
    /// An administrator had a run's replicas checked again (recorded once the verdicts are in).
    RunVerify,
    CatalogRepair,
    /// The catalog's verdict on a replica.
    Verify,
    Publish,
    Withdraw,
    StoreBackup,
    StoreRestore,
    AuditArchive,
    /// An admin action a crash cut short, undone at the next start.
    AdminUndo,
    #[cfg(test)]
    Test,
}

impl AuditAction {
    pub fn name(self) -> &'static str {
        use AuditAction::*;
        match self {
            Gate => "gate",
            PartyAdd => "party.add",
            PartyEnable => "party.enable",
            PartyDisable => "party.disable",
            SshKeyAdd => "ssh-key.add",
            SshKeyRevoke => "ssh-key.revoke",
            ApiKeyIssue => "api-key.issue",
            ApiKeyRevoke => "api-key.revoke",
            AdminTokenIssue => "admin-token.issue",
            AdminTokenRevoke => "admin-token.revoke",
            AdminTokenRotate => "admin-token.rotate",
            AuthorizedKeysWrite => "authorized-keys.write",
            RunVerify => "run.verify",
            CatalogRepair => "catalog.repair",
            Verify => "verify",
            Publish => "publish",
            Withdraw => "withdraw",
            StoreBackup => "store.backup",
            StoreRestore => "store.restore",
            AuditArchive => "audit.archive",
            AdminUndo => "admin.undo",
            #[cfg(test)]
            Test => "test",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An audit record before it is chained.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: AuditAction,
    pub party: &'a str,
    pub subject: &'a str,
    pub outcome: &'a str,
    pub detail: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
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
            return append_in(&self.conn, entry);
        }
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let record = append_in(&tx, entry)?;
        tx.commit()?;
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

    /// Walks the chain from its start (the genesis hash, or the newest seal) and reports the first record whose link
    /// or hash does not hold; a seal that does not hold, or whose record is missing, breaks it too.
    pub fn verify_audit(&self) -> Result<ChainCheck> {
        let seals = self.audit_seals()?;
        if let Some(broken) = audit_archive::check_seals(&seals) {
            return Ok(broken);
        }
        let newest = seals.last();
        let (mut expected_prev, mut expected_seq) = match newest {
            Some(seal) => (seal.last_hash.clone(), seal.last_seq + 1),
            None => (GENESIS.to_owned(), 1),
        };
        // The record `audit archive` wrote with the newest seal, in the same transaction.
        let mut sealed_by_record = newest.is_none();
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit ORDER BY seq",
        )?;
        let mut rows = statement.query([])?;
        let mut count = 0u64;
        while let Some(row) = rows.next()? {
            let record = audit_row(row)?;
            let broken = |reason: &str| Ok(ChainCheck::Broken { seq: record.seq, reason: reason.to_owned() });
            if record.seq != expected_seq {
                return broken(&format!("record {expected_seq} is missing"));
            }
            if record.prev_hash != expected_prev {
                return match (count, newest) {
                    (0, Some(seal)) => broken(&format!(
                        "its prev_hash is not the hash of the last archived record that the seal of records {}-{} \
                         names (the seal or the record was edited)",
                        seal.first_seq, seal.last_seq
                    )),
                    _ => broken("its prev_hash is not the hash of the record before"),
                };
            }
            if chain_hash(&record) != record.hash {
                return broken("its contents do not match its hash (edited)");
            }
            if !sealed_by_record && newest.is_some_and(|seal| audit_archive::is_seal_record(&record, seal)) {
                sealed_by_record = true;
            }
            expected_prev = record.hash;
            expected_seq += 1;
            count += 1;
        }
        if let (false, Some(seal)) = (sealed_by_record, newest) {
            return Ok(ChainCheck::Broken {
                seq: seal.last_seq + 1,
                reason: format!(
                    "no audit.archive record names the seal of records {}-{} (a seal written outside `evosync audit \
                     archive`)",
                    seal.first_seq, seal.last_seq
                ),
            });
        }
        Ok(ChainCheck::Intact { records: count })
    }

    /// The oldest record still in the store (1 until records are archived; 0 for an empty trail).
    pub fn first_audit_seq(&self) -> Result<i64> {
        Ok(self.conn.query_row("SELECT coalesce(min(seq), 0) FROM audit", [], |r| r.get(0))?)
    }

    /// Every seal, oldest first; the newest is where the chain in the store starts.
    pub fn audit_seals(&self) -> Result<Vec<Seal>> {
        audit_archive::seals(&self.conn)
    }
}

/// Appends one record inside the caller's write transaction.
pub(super) fn append_in(conn: &Connection, entry: &AuditEntry<'_>) -> Result<AuditRecord> {
    let last: Option<(i64, String)> = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (last_seq, prev_hash) = match last {
        Some(last) => last,
        // Every record archived: the chain goes on from the newest seal.
        None => match audit_archive::seals(conn)?.pop() {
            Some(seal) => (seal.last_seq, seal.last_hash),
            None => (0, GENESIS.to_owned()),
        },
    };
    let mut record = AuditRecord {
        seq: last_seq + 1,
        at: now(),
        actor: entry.actor.to_owned(),
        action: entry.action.name().to_owned(),
        party: entry.party.to_owned(),
        subject: entry.subject.to_owned(),
        outcome: entry.outcome.to_owned(),
        detail: entry.detail.to_owned(),
        prev_hash,
        hash: String::new(),
    };
    record.hash = chain_hash(&record);
    conn.execute(
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

/// SHA-256 over the previous hash and every field, each length-prefixed so no two records hash alike by accident.
pub(super) fn chain_hash(record: &AuditRecord) -> String {
    let (seq, at) = (record.seq.to_string(), record.at.to_string());
    hash_fields(&[
        &record.prev_hash,
        &seq,
        &at,
        &record.actor,
        &record.action,
        &record.party,
        &record.subject,
        &record.outcome,
        &record.detail,
    ])
}

/// SHA-256 over `fields`, each prefixed with its length.
pub(super) fn hash_fields(fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
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
