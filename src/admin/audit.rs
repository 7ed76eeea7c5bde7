//! The audit trail's growth: `evosync audit archive --before DATE FILE` writes the older records to FILE (landed
//! durably, never over an existing file) and then seals them out of the store (`store::audit_archive`);
//! `evosync audit verify [--archive FILE]…` checks the chain from its seal, and each archive on its own and against
//! the seal it belongs to.

use super::{Admin, AdminError, Result};
use crate::fs::landing::PendingFile;
use crate::fs::sys;
use crate::store::{verify_archive, ArchiveCheck, ChainCheck, Seal};
use crate::time::parse_date;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An archive holds what the audit trail held: its owner alone may read it.
pub const ARCHIVE_MODE: u32 = 0o600;

#[derive(Debug, Serialize)]
pub struct ArchiveReport {
    pub file: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// Records archived, and left in the store (the `audit.archive` record that names the seal among them).
    pub records: u64,
    pub remaining: u64,
    pub seal: Seal,
}

#[derive(Debug, Serialize)]
pub struct AuditVerification {
    pub chain: ChainCheck,
    /// Where the chain in the store starts, when records were archived.
    pub seal: Option<Seal>,
    pub archives: Vec<ArchiveVerdict>,
}

impl AuditVerification {
    /// The chain and every archive given hold.
    pub fn intact(&self) -> bool {
        matches!(self.chain, ChainCheck::Intact { .. }) && self.archives.iter().all(|a| a.check.problem.is_none())
    }
}

#[derive(Debug, Serialize)]
pub struct ArchiveVerdict {
    pub file: PathBuf,
    #[serde(flatten)]
    pub check: ArchiveCheck,
}

impl Admin<'_> {
    /// Archives every audit record older than `before` into `file`, then seals them out of the store.
    pub fn archive_audit(&self, before: &str, file: &Path) -> Result<ArchiveReport> {
        let before = parse_date(before).map_err(AdminError::Invalid)?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AdminError::Invalid(format!("{} names no file", file.display())))?;
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if std::fs::symlink_metadata(file).is_ok() {
            return Err(AdminError::Invalid(format!(
                "{} exists; an archive never replaces a file (name another)",
                file.display()
            )));
        }
        let plan = self.store.plan_audit_archive(before)?;
        let dir = sys::open_dir(folder)
            .map_err(|e| AdminError::Io { what: format!("opening {}", folder.display()), source: e.into() })?;
        let writing = super::io(format!("writing {}", file.display()));
        let mut pending = PendingFile::begin_with_mode(Arc::new(dir), name, ARCHIVE_MODE).map_err(writing)?;
        {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, IntoPending(&mut pending));
            self.store.write_audit_archive(&plan, &mut out)?;
            out.flush().map_err(super::io(format!("writing {}", file.display())))?;
        }
        let stored = pending.finish_new().map_err(|e| AdminError::Invalid(format!("{}: {e}", file.display())))?;
        let archive = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned()).display().to_string();
        let seal = self.store.seal_audit_archive(&plan, &stored.sha256, &archive, &self.actor).map_err(|e| {
            AdminError::Invalid(format!(
                "{e}; the archive {archive} was written but nothing was removed from the store: remove it and run \
                 the archive again"
            ))
        })?;
        let remaining = self.store.summary()?.counts.audit_records;
        Ok(ArchiveReport {
            file: file.to_owned(),
            bytes: stored.bytes,
            sha256: stored.sha256,
            records: plan.records,
            remaining,
            seal,
        })
    }

    /// The chain from its start, and each archive in `archives` on its own and against its seal.
    pub fn verify_audit(&self, archives: &[PathBuf]) -> Result<AuditVerification> {
        let chain = self.store.verify_audit()?;
        let seals = self.store.audit_seals()?;
        let mut verdicts = Vec::new();
        for file in archives {
            let reader = std::fs::File::open(file).map_err(super::io(format!("cannot read {}", file.display())))?;
            let check = verify_archive(reader, &seals).map_err(super::io(format!("reading {}", file.display())))?;
            verdicts.push(ArchiveVerdict { file: file.clone(), check });
        }
        Ok(AuditVerification { chain, seal: seals.last().cloned(), archives: verdicts })
    }
}

/// `io::Write` into a file being landed.
struct IntoPending<'a>(&'a mut PendingFile);

impl Write for IntoPending<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
