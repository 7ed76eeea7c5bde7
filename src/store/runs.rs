//! Runs (each run folder belongs to exactly one party) and the analysis files stored in them.

use super::{Result, Store, StoreError};
use crate::time::now;
use rusqlite::{params, OptionalExtension};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub name: String,
    pub party: String,
    pub created_at: i64,
    pub template_name: Option<String>,
    pub ecosystem_variant: Option<String>,
    pub started_at: Option<String>,
}

/// An analysis file the service stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileRecord {
    pub party: String,
    pub run: String,
    pub subdir: String,
    pub name: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub sha256: String,
    pub stored_at: i64,
}

/// The columns a `FileRecord` is read from, in its order.
pub(super) const FILE_COLUMNS: &str = "party, run, subdir, name, size, mtime_ns, sha256, stored_at";

/// One row of `FILE_COLUMNS`.
pub(super) fn file_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    Ok(FileRecord {
        party: r.get(0)?,
        run: r.get(1)?,
        subdir: r.get(2)?,
        name: r.get(3)?,
        size: r.get::<_, i64>(4)?.max(0) as u64,
        mtime_ns: r.get(5)?,
        sha256: r.get(6)?,
        stored_at: r.get(7)?,
    })
}

impl Store {
    /// Claims `run` for `party`: `Ok(true)` when newly claimed, `Ok(false)` when the party had it already.
    pub fn claim_run(&self, party: &str, run: &str) -> Result<bool> {
        let inserted = self.conn.execute(
            "INSERT INTO runs (name, party, created_at) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO NOTHING",
            params![run, party, now()],
        )?;
        if inserted == 1 {
            return Ok(true);
        }
        let owner: String = self.conn.query_row("SELECT party FROM runs WHERE name = ?1", [run], |r| r.get(0))?;
        if owner == party {
            Ok(false)
        } else {
            Err(StoreError::RunOwned { run: run.to_owned(), owner })
        }
    }

    pub fn run(&self, name: &str) -> Result<Option<Run>> {
        let sql =
            "SELECT name, party, created_at, template_name, ecosystem_variant, started_at FROM runs WHERE name = ?1";
        Ok(self.conn.prepare_cached(sql)?.query_row([name], run_row).optional()?)
    }

    pub fn runs(&self, party: Option<&str>) -> Result<Vec<Run>> {
        let sql = "SELECT name, party, created_at, template_name, ecosystem_variant, started_at FROM runs \
                   WHERE (?1 IS NULL OR party = ?1) ORDER BY party, name";
        let mut statement = self.conn.prepare(sql)?;
        let rows = statement.query_map([party], run_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Stores a run's registration metadata once; a second registration changes nothing.
    pub fn set_run_metadata(
        &self,
        run: &str,
        template: Option<&str>,
        variant: Option<&str>,
        started: Option<&str>,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET template_name = coalesce(template_name, ?2), ecosystem_variant = coalesce(ecosystem_variant, ?3), \
             started_at = coalesce(started_at, ?4) WHERE name = ?1",
            params![run, template, variant, started],
        )?;
        Ok(())
    }
}

impl Store {
    /// Remembers a stored file's size, mtime and SHA-256, so listings need not read files again.
    pub fn record_file(&self, file: &FileRecord) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO analysis_files (party, run, subdir, name, size, mtime_ns, sha256, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (party, run, subdir, name) DO UPDATE SET
                   size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256, stored_at = excluded.stored_at",
            )?
            .execute(params![
                file.party,
                file.run,
                file.subdir,
                file.name,
                file.size as i64,
                file.mtime_ns,
                file.sha256,
                file.stored_at
            ])?;
        Ok(())
    }

    /// What the store remembers of the files in one folder.
    pub fn files_in(&self, party: &str, run: &str, subdir: &str) -> Result<Vec<FileRecord>> {
        let mut statement = self.conn.prepare_cached(&format!(
            "SELECT {FILE_COLUMNS} FROM analysis_files WHERE party = ?1 AND run = ?2 AND subdir = ?3"
        ))?;
        let rows = statement.query_map([party, run, subdir], file_record)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Per folder of a run: how many files were uploaded, and when the newest came.
    pub fn file_counts(&self, party: &str, run: &str) -> Result<Vec<(String, u64, i64)>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT subdir, count(*), max(stored_at) FROM analysis_files WHERE party = ?1 AND run = ?2 \
             GROUP BY subdir ORDER BY subdir",
        )?;
        let rows = statement
            .query_map([party, run], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        name: row.get(0)?,
        party: row.get(1)?,
        created_at: row.get(2)?,
        template_name: row.get(3)?,
        ecosystem_variant: row.get(4)?,
        started_at: row.get(5)?,
    })
}
