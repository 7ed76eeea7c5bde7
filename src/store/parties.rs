//! Parties: who may sync at all, and whether they may now.

use super::{is_constraint, Result, Store, StoreError};
use crate::time::now;
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Party {
    pub name: String,
    pub enabled: bool,
    pub created_at: i64,
}

impl Store {
    pub fn add_party(&self, name: &str) -> Result<Party> {
        let at = now();
        match self.conn.execute("INSERT INTO parties (name, enabled, created_at) VALUES (?1, 1, ?2)", params![name, at])
        {
            Ok(_) => Ok(Party { name: name.to_owned(), enabled: true, created_at: at }),
            Err(e) if is_constraint(&e) => Err(StoreError::PartyExists(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    pub fn party(&self, name: &str) -> Result<Option<Party>> {
        Ok(self
            .conn
            .query_row("SELECT name, enabled, created_at FROM parties WHERE name = ?1", [name], party_row)
            .optional()?)
    }

    pub fn require_party(&self, name: &str) -> Result<Party> {
        self.party(name)?.ok_or_else(|| StoreError::NoSuchParty(name.to_owned()))
    }

    pub fn parties(&self) -> Result<Vec<Party>> {
        let mut statement = self.conn.prepare("SELECT name, enabled, created_at FROM parties ORDER BY name")?;
        let rows = statement.query_map([], party_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn set_party_enabled(&self, name: &str, enabled: bool) -> Result<Party> {
        if self.conn.execute("UPDATE parties SET enabled = ?2 WHERE name = ?1", params![name, enabled])? == 0 {
            return Err(StoreError::NoSuchParty(name.to_owned()));
        }
        self.require_party(name)
    }
}

fn party_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Party> {
    Ok(Party { name: row.get(0)?, enabled: row.get(1)?, created_at: row.get(2)? })
}
