//! Archiving old audit records without breaking the chain. The records up to a date go to a file (JSON lines: a
//! header naming the range and the hashes at both of its ends, then each record with its hashes); then one
//! transaction removes them from the store, leaves a seal (the range, the last archived record's hash, the archive's
//! SHA-256, chained to the seal before it) and appends an `audit.archive` record that names the seal. The chain in the
//! store then starts at the newest seal (`Store::verify_audit`); `verify_archive` checks a file on its own and that it
//! joins its seal.

use super::audit_chain::{append_in, chain_hash, hash_fields, AuditEntry, AuditRecord, ChainCheck, GENESIS};
use super::{Result, Store, StoreError};
use crate::time::{now, rfc3339};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};

/// The action of the record each archive leaves in the chain.
pub const ARCHIVE_ACTION: &str = "audit.archive";
/// The header's `format`, and its `version`.
pub const ARCHIVE_FORMAT: &str = "evosync-audit-archive";
pub const ARCHIVE_VERSION: u32 = 1;
/// No record of ours comes near this (the doors bound every field they store); a longer line ends the reading.
const MAX_LINE_BYTES: u64 = 16 << 20;

/// Where the chain in the store starts after an archive: records `first_seq..=last_seq` are in the archive whose
/// SHA-256 is `archive_sha256`; `hash` chains this seal to the one before (the genesis hash for the first).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Seal {
    pub id: i64,
    pub first_seq: i64,
    pub last_seq: i64,
    pub last_hash: String,
    pub archive_sha256: String,
    /// The archive file as `audit archive` was given it.
    pub archive: String,
    pub sealed_at: i64,
    pub hash: String,
}

impl Seal {
    fn expected_hash(&self, previous: &str) -> String {
        let (first, last, at) = (self.first_seq.to_string(), self.last_seq.to_string(), self.sealed_at.to_string());
        hash_fields(&[previous, &first, &last, &self.last_hash, &self.archive_sha256, &self.archive, &at])
    }

    fn range(&self) -> String {
        format!("{}-{}", self.first_seq, self.last_seq)
    }
}

/// The first line of an archive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveHeader {
    pub format: String,
    pub version: u32,
    pub first_seq: i64,
    pub last_seq: i64,
    pub records: u64,
    /// The hash the first record links to: the seal before's, or the genesis hash.
    pub prev_hash: String,
    pub last_hash: String,
    pub created_at: i64,
}

/// The records an archive will take: `first_seq..=last_seq`, every record older than the date.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchivePlan {
    pub first_seq: i64,
    pub last_seq: i64,
    pub records: u64,
    pub prev_hash: String,
    pub last_hash: String,
    /// The newest seal when the plan was made; another archive in between voids the plan.
    seal_id: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing the archive failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the audit chain breaks at record {seq}: {reason}; an archive would seal the break (see `evosync audit verify`)"
    )]
    Broken { seq: i64, reason: String },
    #[error("no audit record in the store is older than {0}; nothing to archive")]
    Nothing(String),
    #[error("the audit trail changed while it was being archived ({0}); nothing was removed")]
    Changed(String),
}

impl From<rusqlite::Error> for ArchiveError {
    fn from(error: rusqlite::Error) -> Self {
        ArchiveError::Store(error.into())
    }
}

impl Store {
    /// What `audit archive --before` would take: every record before the first one stamped `before` or later. The
    /// whole chain must verify first.
    pub fn plan_audit_archive(&self, before: i64) -> std::result::Result<ArchivePlan, ArchiveError> {
        if let ChainCheck::Broken { seq, reason } = self.verify_audit()? {
            return Err(ArchiveError::Broken { seq, reason });
        }
        let newest = seals(&self.conn)?.pop();
        let nothing = || ArchiveError::Nothing(rfc3339(before));
        let (first, newest_seq): (Option<i64>, Option<i64>) =
            self.conn.query_row("SELECT min(seq), max(seq) FROM audit", [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (Some(first), Some(newest_seq)) = (first, newest_seq) else { return Err(nothing()) };
        let stop: Option<i64> =
            self.conn.query_row("SELECT min(seq) FROM audit WHERE at >= ?1", [before], |r| r.get(0))?;
        let last = stop.map_or(newest_seq, |stop| stop - 1);
        if last < first {
            return Err(nothing());
        }
        let last_hash: String = self.conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [last], |r| r.get(0))?;
        Ok(ArchivePlan {
            first_seq: first,
            last_seq: last,
            records: (last - first + 1) as u64,
            prev_hash: newest.as_ref().map_or_else(|| GENESIS.to_owned(), |seal| seal.last_hash.clone()),
            last_hash,
            seal_id: newest.map(|seal| seal.id),
        })
    }

    /// Writes the planned records to `out` (the header, then one JSON line per record), checking every link again
    /// as it goes.
    pub fn write_audit_archive(
        &self,
        plan: &ArchivePlan,
        out: &mut impl Write,
    ) -> std::result::Result<(), ArchiveError> {
        let header = ArchiveHeader {
            format: ARCHIVE_FORMAT.to_owned(),
            version: ARCHIVE_VERSION,
            first_seq: plan.first_seq,
            last_seq: plan.last_seq,
            records: plan.records,
            prev_hash: plan.prev_hash.clone(),
            last_hash: plan.last_hash.clone(),
            created_at: now(),
        };
        write_line(out, &header)?;
        let mut statement = self.conn.prepare(
            "SELECT seq, at, actor, action, party, subject, outcome, detail, prev_hash, hash FROM audit \
             WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
        let mut rows = statement.query([plan.first_seq, plan.last_seq])?;
        let (mut expected_seq, mut expected_prev) = (plan.first_seq, plan.prev_hash.clone());
        while let Some(row) = rows.next()? {
            let record = super::audit_chain::audit_row(row)?;
            if let Some(problem) = link_problem(&record, expected_seq, &expected_prev) {
                return Err(ArchiveError::Changed(problem));
            }
            write_line(out, &record)?;
            expected_seq += 1;
            expected_prev = record.hash;
        }
        if expected_seq != plan.last_seq + 1 || expected_prev != plan.last_hash {
            return Err(ArchiveError::Changed(format!(
                "records {}-{} are no longer whole",
                plan.first_seq, plan.last_seq
            )));
        }
        Ok(())
    }

    /// In one transaction: removes the planned records, leaves the seal and appends the `audit.archive` record that
    /// names it. `archive_sha256` is the written archive's.
    pub fn seal_audit_archive(
        &self,
        plan: &ArchivePlan,
        archive_sha256: &str,
        archive: &str,
        actor: &str,
    ) -> std::result::Result<Seal, ArchiveError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, rusqlite::TransactionBehavior::Immediate)?;
        let mut earlier = seals(&tx)?;
        let previous = earlier.pop();
        if previous.as_ref().map(|seal| seal.id) != plan.seal_id {
            return Err(ArchiveError::Changed("another archive sealed records meanwhile".into()));
        }
        let (count, low): (i64, Option<i64>) =
            tx.query_row("SELECT count(*), min(seq) FROM audit WHERE seq <= ?1", [plan.last_seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let last_hash: Option<String> =
            tx.query_row("SELECT hash FROM audit WHERE seq = ?1", [plan.last_seq], |r| r.get(0)).optional()?;
        if low != Some(plan.first_seq) || count as u64 != plan.records || last_hash.as_deref() != Some(&plan.last_hash)
        {
            return Err(ArchiveError::Changed(format!(
                "records {}-{} are no longer whole",
                plan.first_seq, plan.last_seq
            )));
        }
        tx.execute("DELETE FROM audit WHERE seq BETWEEN ?1 AND ?2", [plan.first_seq, plan.last_seq])?;
        let mut seal = Seal {
            id: 0,
            first_seq: plan.first_seq,
            last_seq: plan.last_seq,
            last_hash: plan.last_hash.clone(),
            archive_sha256: archive_sha256.to_owned(),
            archive: archive.to_owned(),
            sealed_at: now(),
            hash: String::new(),
        };
        seal.hash = seal.expected_hash(previous.as_ref().map_or(GENESIS, |seal| seal.hash.as_str()));
        tx.execute(
            "INSERT INTO audit_seals (first_seq, last_seq, last_hash, archive_sha256, archive, sealed_at, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                seal.first_seq,
                seal.last_seq,
                seal.last_hash,
                seal.archive_sha256,
                seal.archive,
                seal.sealed_at,
                seal.hash
            ],
        )?;
        seal.id = tx.last_insert_rowid();
        let detail = format!("seal={} records={} archive_sha256={}", seal.hash, seal.range(), seal.archive_sha256);
        append_in(
            &tx,
            &AuditEntry {
                actor,
                action: super::AuditAction::AuditArchive,
                subject: archive,
                outcome: "ok",
                detail: &detail,
                ..Default::default()
            },
        )?;
        tx.commit()?;
        Ok(seal)
    }
}

fn write_line(out: &mut impl Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

/// Why `record` does not continue a chain at `expected_seq` after `expected_prev`.
fn link_problem(record: &AuditRecord, expected_seq: i64, expected_prev: &str) -> Option<String> {
    if record.seq != expected_seq {
        Some(format!("record {expected_seq} is missing"))
    } else if record.prev_hash != expected_prev {
        Some(format!("record {}: its prev_hash is not the hash of the record before", record.seq))
    } else if chain_hash(record) != record.hash {
        Some(format!("record {}: its contents do not match its hash (edited)", record.seq))
    } else {
        None
    }
}

/// Every seal, oldest first.
pub(super) fn seals(conn: &Connection) -> Result<Vec<Seal>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, first_seq, last_seq, last_hash, archive_sha256, archive, sealed_at, hash FROM audit_seals ORDER BY id",
    )?;
    let rows = statement
        .query_map([], |r| {
            Ok(Seal {
                id: r.get(0)?,
                first_seq: r.get(1)?,
                last_seq: r.get(2)?,
                last_hash: r.get(3)?,
                archive_sha256: r.get(4)?,
                archive: r.get(5)?,
                sealed_at: r.get(6)?,
                hash: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The first seal that does not hold: each must start where the one before ended (record 1 for the first), and
/// match its hash, which chains it to the one before.
pub(super) fn check_seals(seals: &[Seal]) -> Option<ChainCheck> {
    let (mut previous, mut next_first) = (GENESIS, 1);
    for seal in seals {
        let broken = |reason: String| Some(ChainCheck::Broken { seq: seal.last_seq + 1, reason });
        if seal.first_seq != next_first || seal.last_seq < seal.first_seq {
            return broken(format!(
                "the seal of records {} does not follow the one before (it should start at record {next_first})",
                seal.range()
            ));
        }
        if seal.expected_hash(previous) != seal.hash {
            return broken(format!("the seal of records {} does not match its hash (edited)", seal.range()));
        }
        previous = &seal.hash;
        next_first = seal.last_seq + 1;
    }
    None
}

/// Whether `record` is the `audit.archive` record written with `seal`.
pub(super) fn is_seal_record(record: &AuditRecord, seal: &Seal) -> bool {
    record.action == ARCHIVE_ACTION
        && record.detail.split(' ').next().and_then(|field| field.strip_prefix("seal=")) == Some(seal.hash.as_str())
}

/// What `verify_archive` found in one archive file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ArchiveCheck {
    /// Of the whole file.
    pub sha256: String,
    pub header: Option<ArchiveHeader>,
    /// Records read whole before the end or the first problem.
    pub records: u64,
    /// The seal it joins (`None` with a problem).
    pub seal: Option<i64>,
    /// The first problem; `None` when the archive is intact and joins its seal.
    pub problem: Option<String>,
}

/// Reads an archive whole: the header, every record's link and hash, the count and the last hash the header names,
/// then whether it joins one of `seals` (its SHA-256, its last hash, and its first link to the seal before).
pub fn verify_archive(reader: impl Read, seals: &[Seal]) -> std::io::Result<ArchiveCheck> {
    let mut hashing = std::io::BufReader::new(Hashing { inner: reader, hasher: Sha256::new() });
    let (header, records, problem) = read_archive(&mut hashing)?;
    // The digest is of the whole file, whatever stopped the reading.
    std::io::copy(&mut hashing, &mut std::io::sink())?;
    let sha256 = crate::time::hex(&hashing.into_inner().hasher.finalize());
    let mut check = ArchiveCheck { sha256, header, records, seal: None, problem };
    if check.problem.is_none() {
        match join(check.header.as_ref().expect("no problem, so a header"), &check.sha256, seals) {
            Ok(seal) => check.seal = Some(seal),
            Err(problem) => check.problem = Some(problem),
        }
    }
    Ok(check)
}

type ReadArchive = (Option<ArchiveHeader>, u64, Option<String>);

fn read_archive(reader: &mut impl BufRead) -> std::io::Result<ReadArchive> {
    let mut line = Vec::new();
    let mut next_line = |reader: &mut dyn BufRead| -> std::io::Result<Option<Vec<u8>>> {
        line.clear();
        let read = reader.take(MAX_LINE_BYTES).read_until(b'\n', &mut line)?;
        Ok((read > 0).then(|| line.clone()))
    };
    let Some(first) = next_line(reader)? else {
        return Ok((None, 0, Some("the file is empty".into())));
    };
    let header: ArchiveHeader = match serde_json::from_slice(&first) {
        Ok(header) => header,
        Err(error) => {
            let problem = format!("not an evosync audit archive: its first line is no archive header ({error})");
            return Ok((None, 0, Some(problem)));
        }
    };
    if header.format != ARCHIVE_FORMAT || header.version != ARCHIVE_VERSION {
        let problem = format!(
            "not an evosync audit archive of a version this evosync reads ({} {}; this one reads {ARCHIVE_FORMAT} \
             {ARCHIVE_VERSION})",
            header.format, header.version
        );
        return Ok((Some(header), 0, Some(problem)));
    }
    let (mut expected_seq, mut expected_prev, mut records) = (header.first_seq, header.prev_hash.clone(), 0u64);
    while let Some(bytes) = next_line(reader)? {
        let line_number = records + 2;
        let record: AuditRecord = match serde_json::from_slice(&bytes) {
            Ok(record) => record,
            Err(error) => {
                let problem = format!("line {line_number} is not an audit record ({error})");
                return Ok((Some(header), records, Some(problem)));
            }
        };
        if let Some(problem) = link_problem(&record, expected_seq, &expected_prev) {
            return Ok((Some(header), records, Some(problem)));
        }
        expected_seq += 1;
        expected_prev = record.hash;
        records += 1;
    }
    let problem = if records != header.records || expected_seq != header.last_seq + 1 {
        Some(format!(
            "its header announces records {}-{} ({}), the file holds {records} from record {}",
            header.first_seq, header.last_seq, header.records, header.first_seq
        ))
    } else if expected_prev != header.last_hash {
        Some("its last record's hash is not the one its header names".into())
    } else {
        None
    };
    Ok((Some(header), records, problem))
}

/// The seal an intact archive belongs to, or why it belongs to none.
fn join(header: &ArchiveHeader, sha256: &str, seals: &[Seal]) -> std::result::Result<i64, String> {
    let range = format!("{}-{}", header.first_seq, header.last_seq);
    let Some(index) = seals.iter().position(|s| s.first_seq == header.first_seq && s.last_seq == header.last_seq)
    else {
        let known: Vec<String> = seals.iter().map(Seal::range).collect();
        return Err(format!(
            "it holds records {range}, which no seal of this store names (the store's seals: {})",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        ));
    };
    let seal = &seals[index];
    if seal.archive_sha256 != sha256 {
        return Err(format!(
            "its SHA-256 is {sha256}, not the {} the seal of records {range} recorded (the file was changed)",
            seal.archive_sha256
        ));
    }
    if seal.last_hash != header.last_hash {
        return Err(format!("its last hash is not the one the seal of records {range} holds"));
    }
    let before = if index == 0 { GENESIS } else { seals[index - 1].last_hash.as_str() };
    if header.prev_hash != before {
        return Err(format!("its first record does not link to the end of the records sealed before {range}"));
    }
    Ok(seal.id)
}

/// Passes bytes through, hashing them.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STORE_FILE;

    fn store_with(records: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
        for n in 0..records {
            append(&store, &n.to_string());
        }
        (dir, store)
    }

    fn append(store: &Store, subject: &str) {
        let entry = AuditEntry {
            actor: "cli:root",
            action: crate::store::AuditAction::Test,
            subject,
            outcome: "ok",
            ..Default::default()
        };
        store.append_audit(&entry).unwrap();
    }

    /// Stamps records `from_seq` on with `at` and chains them again, as if they had been written then.
    fn restamp(store: &Store, from_seq: i64, at: i64) {
        let records = store.audit(from_seq - 1, u32::MAX).unwrap();
        let mut prev: String = store
            .connection()
            .query_row("SELECT prev_hash FROM audit WHERE seq = ?1", [from_seq], |r| r.get(0))
            .unwrap();
        for mut record in records {
            record.at = at;
            record.prev_hash = prev;
            record.hash = chain_hash(&record);
            store
                .connection()
                .execute(
                    "UPDATE audit SET at = ?2, prev_hash = ?3, hash = ?4 WHERE seq = ?1",
                    params![record.seq, record.at, record.prev_hash, record.hash],
                )
                .unwrap();
            prev = record.hash;
        }
    }

    /// Archives everything before `before` into memory; returns the archive's bytes and the seal.
    fn archive(store: &Store, before: i64) -> (Vec<u8>, Seal) {
        let plan = store.plan_audit_archive(before).unwrap();
        let mut bytes = Vec::new();
        store.write_audit_archive(&plan, &mut bytes).unwrap();
        let sha = crate::time::hex(&Sha256::digest(&bytes));
        let seal = store.seal_audit_archive(&plan, &sha, "archive.jsonl", "cli:root").unwrap();
        (bytes, seal)
    }

    fn problem(bytes: &[u8], store: &Store) -> Option<String> {
        verify_archive(bytes, &store.audit_seals().unwrap()).unwrap().problem
    }

    #[test]
    fn archived_records_leave_a_seal_the_chain_verifies_from() {
        let (_dir, store) = store_with(10);
        restamp(&store, 7, now() + 1000);
        let (first, seal) = archive(&store, now() + 500);
        assert_eq!((seal.first_seq, seal.last_seq), (1, 6));
        // Records 7-10 and the audit.archive record (11) that names the seal.
        assert_eq!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 5 });
        assert_eq!(store.first_audit_seq().unwrap(), 7);
        let last = store.audit(10, 1).unwrap().remove(0);
        assert_eq!((last.action.as_str(), last.outcome.as_str()), (ARCHIVE_ACTION, "ok"));
        assert!(is_seal_record(&last, &seal));
        let check = verify_archive(first.as_slice(), &store.audit_seals().unwrap()).unwrap();
        assert_eq!((check.problem, check.seal, check.records), (None, Some(seal.id), 6));
        // The chain goes on after the seal, and a second archive takes what the first left, its record too.
        append(&store, "after");
        let (second, newer) = archive(&store, now() + 2000);
        assert_eq!((newer.first_seq, newer.last_seq), (7, 12));
        assert_eq!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 1 });
        assert_eq!(problem(&first, &store), None, "the first archive still joins its seal");
        assert_eq!(problem(&second, &store), None);
        append(&store, "later");
        assert_eq!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 2 });
        assert!(matches!(store.plan_audit_archive(now() - 100_000), Err(ArchiveError::Nothing(_))));
    }

    #[test]
    fn every_record_archived_the_next_one_links_to_the_seal() {
        let (_dir, store) = store_with(3);
        let (_, seal) = archive(&store, now() + 10);
        assert_eq!((seal.first_seq, seal.last_seq), (1, 3));
        // Only the seal's own record is left; archive that too: the table is empty inside the transaction.
        let (_, again) = archive(&store, now() + 10);
        assert_eq!((again.first_seq, again.last_seq), (4, 4));
        assert_eq!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 1 });
        assert_eq!(store.audit(0, 10).unwrap()[0].prev_hash, again.last_hash);
    }

    #[test]
    fn a_tampered_archive_is_found() {
        let (_dir, store) = store_with(8);
        let (bytes, _) = archive(&store, now() + 10);
        let text = String::from_utf8(bytes.clone()).unwrap();
        // A record's detail edited.
        let edited = text.replacen("\"detail\":\"\"", "\"detail\":\"edited\"", 1);
        assert!(problem(edited.as_bytes(), &store).unwrap().contains("do not match its hash (edited)"));
        // A record taken out.
        let mut lines: Vec<&str> = text.lines().collect();
        lines.remove(3);
        let cut = lines.join("\n") + "\n";
        assert!(problem(cut.as_bytes(), &store).unwrap().contains("record 3 is missing"));
        // Edited and chained again throughout, header and all: the file no longer is the one the seal recorded.
        let mut header: ArchiveHeader = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let mut prev = header.prev_hash.clone();
        let mut rechained = Vec::new();
        for line in text.lines().skip(1) {
            let mut record: AuditRecord = serde_json::from_str(line).unwrap();
            if record.seq == 2 {
                record.detail = "forged".into();
            }
            record.prev_hash = prev;
            record.hash = chain_hash(&record);
            prev = record.hash.clone();
            rechained.push(record);
        }
        header.last_hash = prev;
        let mut forged = Vec::new();
        write_line(&mut forged, &header).unwrap();
        for record in &rechained {
            write_line(&mut forged, record).unwrap();
        }
        assert!(problem(&forged, &store).unwrap().contains("the file was changed"));
        // One byte more at the end.
        let mut longer = bytes.clone();
        longer.push(b'\n');
        assert!(problem(&longer, &store).is_some());
        assert!(problem(b"", &store).unwrap().contains("empty"));
        assert!(problem(b"SQLite format 3\0", &store).unwrap().contains("not an evosync audit archive"));
        assert_eq!(problem(&bytes, &store), None);
    }

    #[test]
    fn a_tampered_seal_is_found() {
        let (_dir, store) = store_with(8);
        let (bytes, seal) = archive(&store, now() + 10);
        let conn = store.connection();
        let broken = |store: &Store| match store.verify_audit().unwrap() {
            ChainCheck::Broken { reason, .. } => reason,
            intact => panic!("{intact:?}"),
        };
        conn.execute("UPDATE audit_seals SET archive_sha256 = ?1", [GENESIS]).unwrap();
        assert!(broken(&store).contains("does not match its hash (edited)"));
        assert!(problem(&bytes, &store).unwrap().contains("the file was changed"));
        conn.execute("UPDATE audit_seals SET archive_sha256 = ?1", [&seal.archive_sha256]).unwrap();
        assert_eq!(problem(&bytes, &store), None);
        // The seal's hash made again over a forged last hash: the first record left no longer links to it.
        let forged = Seal { last_hash: GENESIS.to_owned(), ..seal.clone() };
        let hash = forged.expected_hash(GENESIS);
        conn.execute("UPDATE audit_seals SET last_hash = ?1, hash = ?2", [GENESIS, &hash]).unwrap();
        assert!(broken(&store).contains("the seal of records 1-8"));
        conn.execute("UPDATE audit_seals SET last_hash = ?1, hash = ?2", [&seal.last_hash, &seal.hash]).unwrap();
        assert!(matches!(store.verify_audit().unwrap(), ChainCheck::Intact { .. }));
        // The seal removed: the chain no longer starts at record 1.
        conn.execute("DELETE FROM audit_seals", []).unwrap();
        assert!(broken(&store).contains("record 1 is missing"));
        conn.execute(
            "INSERT INTO audit_seals (id, first_seq, last_seq, last_hash, archive_sha256, archive, sealed_at, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                seal.id,
                seal.first_seq,
                seal.last_seq,
                seal.last_hash,
                seal.archive_sha256,
                seal.archive,
                seal.sealed_at,
                seal.hash
            ],
        )
        .unwrap();
        // The record naming the seal removed (the newest, so no gap shows): found too.
        conn.execute("DELETE FROM audit WHERE action = ?1", [ARCHIVE_ACTION]).unwrap();
        assert!(broken(&store).contains("no audit.archive record names the seal"));
    }

    #[test]
    fn a_broken_chain_is_not_archived_and_a_plan_overtaken_seals_nothing() {
        let (_dir, store) = store_with(5);
        store.connection().execute("UPDATE audit SET detail = 'edited' WHERE seq = 2", []).unwrap();
        assert!(matches!(store.plan_audit_archive(now() + 10), Err(ArchiveError::Broken { seq: 2, .. })));
        store.connection().execute("UPDATE audit SET detail = '' WHERE seq = 2", []).unwrap();
        let plan = store.plan_audit_archive(now() + 10).unwrap();
        archive(&store, now() + 10);
        let late = store.seal_audit_archive(&plan, GENESIS, "late.jsonl", "cli:root");
        assert!(matches!(late, Err(ArchiveError::Changed(_))), "{late:?}");
        assert_eq!(store.audit_seals().unwrap().len(), 1);
        assert!(matches!(store.verify_audit().unwrap(), ChainCheck::Intact { records: 1 }));
    }
}
