//! Admin actions under way: before an action touches a file, it records here what would undo it; the transaction that
//! commits the action deletes the record. A record still here once its action's process is gone names an action that
//! never committed (`admin::atomic` undoes it).

use super::{Result, Store};
use crate::time::now;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What undoes an action that did not commit. Everything in it is safe to do again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Undo {
    /// Files the action creates, none of which existed when it began: removed while they still hold what the action
    /// wrote (one written over by hand since is someone else's now).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MadeFile>,
    /// Folders the action creates, none of which existed when it began: removed while still empty, deepest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<PathBuf>,
    /// The managed authorized_keys file may have been written ahead of the store: written again from the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub authorized_keys: bool,
    /// Folders the action writes through temp files (renamed into place when whole): a temp file a kill left there
    /// before its rename is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<PathBuf>,
}

/// A file an action makes, and the SHA-256 (hex) of what it writes there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MadeFile {
    pub path: PathBuf,
    pub sha256: String,
}

/// An action about to begin.
#[derive(Debug, Clone)]
pub struct Intent<'a> {
    pub actor: &'a str,
    pub action: super::AuditAction,
    pub party: &'a str,
    pub subject: &'a str,
    pub undo: Undo,
}

/// An action recorded as under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntentRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub party: String,
    pub subject: String,
    pub undo: Undo,
}

impl Store {
    /// Records an action as under way (committed at once, unless a transaction is open); returns its id.
    pub fn record_intent(&self, intent: &Intent<'_>) -> Result<i64> {
        let undo = serde_json::to_string(&intent.undo).unwrap_or_default();
        self.conn.execute(
            "INSERT INTO admin_intents (at, actor, action, party, subject, undo) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now(), intent.actor, intent.action.name(), intent.party, intent.subject, undo],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Every action recorded as under way, oldest first.
    pub fn intents(&self) -> Result<Vec<IntentRecord>> {
        let mut statement =
            self.conn.prepare("SELECT id, at, actor, action, party, subject, undo FROM admin_intents ORDER BY id")?;
        let rows = statement
            .query_map([], |r| {
                let undo: String = r.get(6)?;
                Ok(IntentRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    party: r.get(4)?,
                    subject: r.get(5)?,
                    // A record this version cannot read undoes nothing rather than something unknown.
                    undo: serde_json::from_str(&undo).unwrap_or_default(),
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// The action is committed or undone: its record goes (in the caller's transaction, when one is open).
    pub fn end_intent(&self, id: i64) -> Result<()> {
        self.conn.execute("DELETE FROM admin_intents WHERE id = ?1", [id])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_rolled_back_with_its_action_is_still_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(super::super::STORE_FILE)).unwrap();
        let made = MadeFile { path: "/p/acme.yaml".into(), sha256: "00".into() };
        let undo = Undo { files: vec![made], authorized_keys: true, ..Undo::default() };
        let intent = Intent {
            actor: "test",
            action: super::super::AuditAction::PartyAdd,
            party: "acme",
            subject: "acme",
            undo: undo.clone(),
        };
        let id = store.record_intent(&intent).unwrap();
        // The action's transaction fails after ending the intent: the record stays.
        let failed: std::result::Result<(), crate::store::StoreError> = store.immediate(|| {
            store.end_intent(id)?;
            store.add_party("acme")?;
            Err(crate::store::StoreError::PartyExists("acme".into()))
        });
        assert!(failed.is_err());
        let left = store.intents().unwrap();
        assert_eq!((left.len(), &left[0].undo), (1, &undo));
        assert!(store.party("acme").unwrap().is_none(), "rolled back with it");
        store.immediate::<_, crate::store::StoreError>(|| store.end_intent(id)).unwrap();
        assert!(store.intents().unwrap().is_empty());
    }
}
