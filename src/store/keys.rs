//! Credentials: SSH keys (the gate's), API keys (the workers' HTTP calls) and admin tokens (the admin API). Only
//! hashes of secrets are kept.

use super::{is_constraint, Result, Store, StoreError};
use crate::time::now;
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SshKey {
    pub id: String,
    pub party: String,
    pub algorithm: String,
    pub blob: String,
    pub fingerprint: String,
    pub comment: String,
    pub from: Vec<String>,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub id: String,
    pub party: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl Store {
    pub fn add_ssh_key(&self, key: &SshKey) -> Result<()> {
        self.require_party(&key.party)?;
        let inserted = self.conn.execute(
            "INSERT INTO ssh_keys (id, party, algorithm, blob, fingerprint, comment, from_cidrs, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                key.id,
                key.party,
                key.algorithm,
                key.blob,
                key.fingerprint,
                key.comment,
                key.from.join(","),
                key.expires_at,
                key.created_at
            ],
        );
        match inserted {
            Ok(_) => Ok(()),
            Err(e) if is_constraint(&e) => {
                let party: String = self
                    .conn
                    .query_row(
                        "SELECT party FROM ssh_keys WHERE fingerprint = ?1 OR blob = ?2",
                        params![key.fingerprint, key.blob],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or_default();
                Err(StoreError::KeyRegistered { fingerprint: key.fingerprint.clone(), party })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn ssh_keys(&self, party: Option<&str>) -> Result<Vec<SshKey>> {
        let sql = format!("{SSH_KEY_SELECT} WHERE (?1 IS NULL OR party = ?1) ORDER BY party, created_at, id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([party], ssh_key_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// By id or by `SHA256:` fingerprint.
    pub fn ssh_key(&self, id_or_fingerprint: &str) -> Result<Option<SshKey>> {
        let sql = format!("{SSH_KEY_SELECT} WHERE id = ?1 OR fingerprint = ?1");
        Ok(self.conn.query_row(&sql, [id_or_fingerprint], ssh_key_row).optional()?)
    }

    /// The one indexed lookup AuthorizedKeysCommand makes: the key sshd was presented, with its party's state.
    pub fn ssh_key_by_blob(&self, algorithm: &str, blob: &str) -> Result<Option<(SshKey, bool)>> {
        let sql = format!("{SSH_KEY_WITH_PARTY} WHERE k.blob = ?1 AND k.algorithm = ?2");
        Ok(self.conn.query_row(&sql, [blob, algorithm], ssh_key_with_party_row).optional()?)
    }

    /// A key with its party's state, for the gate.
    pub fn ssh_key_with_party(&self, id: &str) -> Result<Option<(SshKey, bool)>> {
        let sql = format!("{SSH_KEY_WITH_PARTY} WHERE k.id = ?1");
        Ok(self.conn.query_row(&sql, [id], ssh_key_with_party_row).optional()?)
    }

    pub fn revoke_ssh_key(&self, id_or_fingerprint: &str) -> Result<SshKey> {
        let key = self.ssh_key(id_or_fingerprint)?.ok_or_else(|| StoreError::NoSuchSshKey(id_or_fingerprint.into()))?;
        self.conn.execute(
            "UPDATE ssh_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
            params![key.id, now()],
        )?;
        Ok(self.ssh_key(&key.id)?.unwrap_or(key))
    }

    pub fn touch_ssh_key(&self, id: &str) -> Result<()> {
        self.conn.execute("UPDATE ssh_keys SET last_used_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }

    /// Every SSH key with its party's state (`access::active_ssh_keys` says which may log in now).
    pub fn ssh_keys_with_party(&self) -> Result<Vec<(SshKey, bool)>> {
        let sql = format!("{SSH_KEY_WITH_PARTY} ORDER BY k.party, k.created_at, k.id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], ssh_key_with_party_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

impl Store {
    pub fn add_api_key(&self, key: &ApiKey) -> Result<()> {
        self.require_party(&key.party)?;
        self.conn.execute(
            "INSERT INTO api_keys (id, party, name, secret_hash, expires_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key.id, key.party, key.name, key.secret_hash, key.expires_at, key.created_at],
        )?;
        Ok(())
    }

    pub fn api_keys(&self, party: Option<&str>) -> Result<Vec<ApiKey>> {
        let sql = format!("{API_KEY_SELECT} WHERE (?1 IS NULL OR k.party = ?1) ORDER BY k.party, k.created_at, k.id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows =
            statement.query_map([party], |r| api_key_row(r).map(|(k, _)| k))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// An API key with its party's state.
    pub fn api_key(&self, id: &str) -> Result<Option<(ApiKey, bool)>> {
        let sql = format!("{API_KEY_SELECT} WHERE k.id = ?1");
        Ok(self.conn.prepare_cached(&sql)?.query_row([id], api_key_row).optional()?)
    }

    pub fn revoke_api_key(&self, id: &str) -> Result<ApiKey> {
        if self
            .conn
            .execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1", params![id, now()])?
            == 0
        {
            return Err(StoreError::NoSuchApiKey(id.to_owned()));
        }
        self.api_key(id)?.map(|(k, _)| k).ok_or_else(|| StoreError::NoSuchApiKey(id.to_owned()))
    }

    pub fn touch_api_key(&self, id: &str) -> Result<()> {
        self.conn.execute("UPDATE api_keys SET last_used_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }
}

/// An admin token of the HTTP admin API. Its secret is never kept, only an argon2id hash of it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl Store {
    pub fn add_admin_token(&self, token: &AdminToken) -> Result<()> {
        self.conn.execute(
            "INSERT INTO admin_tokens (id, hash, name, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![token.id, token.secret_hash, token.name, token.created_at, token.expires_at],
        )?;
        Ok(())
    }

    /// One token, for the service's check on every admin request.
    pub fn admin_token(&self, id: &str) -> Result<Option<AdminToken>> {
        let sql = format!("{ADMIN_TOKEN_SELECT} WHERE id = ?1");
        Ok(self.conn.prepare_cached(&sql)?.query_row([id], admin_token_row).optional()?)
    }

    pub fn admin_tokens(&self) -> Result<Vec<AdminToken>> {
        let sql = format!("{ADMIN_TOKEN_SELECT} ORDER BY created_at, id");
        let mut statement = self.conn.prepare(&sql)?;
        let rows = statement.query_map([], admin_token_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub fn revoke_admin_token(&self, id: &str) -> Result<AdminToken> {
        self.conn.execute(
            "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
            params![id, now()],
        )?;
        self.admin_token(id)?.ok_or_else(|| StoreError::NoSuchAdminToken(id.to_owned()))
    }

    pub fn touch_admin_token(&self, id: &str) -> Result<()> {
        self.conn.execute("UPDATE admin_tokens SET last_used_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }
}

const SSH_KEY_SELECT: &str = "SELECT id, party, algorithm, blob, fingerprint, comment, from_cidrs, expires_at, \
                              created_at, revoked_at, last_used_at FROM ssh_keys";
const SSH_KEY_WITH_PARTY: &str = "SELECT k.id, k.party, k.algorithm, k.blob, k.fingerprint, k.comment, \
                                  k.from_cidrs, k.expires_at, k.created_at, k.revoked_at, k.last_used_at, p.enabled \
                                  FROM ssh_keys k JOIN parties p ON p.name = k.party";
const API_KEY_SELECT: &str = "SELECT k.id, k.party, k.name, k.secret_hash, k.expires_at, k.created_at, k.revoked_at, \
                              k.last_used_at, p.enabled FROM api_keys k JOIN parties p ON p.name = k.party";

const ADMIN_TOKEN_SELECT: &str =
    "SELECT id, name, hash, created_at, expires_at, revoked_at, last_used_at FROM admin_tokens";

fn admin_token_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AdminToken> {
    Ok(AdminToken {
        id: row.get(0)?,
        name: row.get(1)?,
        secret_hash: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        revoked_at: row.get(5)?,
        last_used_at: row.get(6)?,
    })
}

fn ssh_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SshKey> {
    let from: String = row.get(6)?;
    Ok(SshKey {
        id: row.get(0)?,
        party: row.get(1)?,
        algorithm: row.get(2)?,
        blob: row.get(3)?,
        fingerprint: row.get(4)?,
        comment: row.get(5)?,
        from: from.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        expires_at: row.get(7)?,
        created_at: row.get(8)?,
        revoked_at: row.get(9)?,
        last_used_at: row.get(10)?,
    })
}

fn ssh_key_with_party_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(SshKey, bool)> {
    Ok((ssh_key_row(row)?, row.get(11)?))
}

fn api_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(ApiKey, bool)> {
    Ok((
        ApiKey {
            id: row.get(0)?,
            party: row.get(1)?,
            name: row.get(2)?,
            secret_hash: row.get(3)?,
            expires_at: row.get(4)?,
            created_at: row.get(5)?,
            revoked_at: row.get(6)?,
            last_used_at: row.get(7)?,
        },
        row.get(8)?,
    ))
}
