//! `POST /api/sync/analysis/RUN`: analysis files, as the workers upload them (multipart, a `subdir` field before one
//! or more `file` parts) or as a raw body (`?filename=&subdir=`). Each file lands whole or not at all, through
//! `fs::landing`, before the 200: in the run's home in the catalog (`catalog::home`), made in `.incoming` and renamed
//! in once it passed the catalog's check (`catalog::files`), so readers never see a file being made or one they
//! must not be given.
//!
//! A small file is held in memory until its last byte (within a budget shared by all uploads) and then written,
//! synced and renamed in one trip to a blocking thread; a larger one streams into its temp file as it arrives.
//!
//! A form is read through `multipart` (our own parser, bounded in what it holds): text fields of at most 4 KiB,
//! part headers of at most 8 KiB, at most `uploads.max_parts_per_request` file parts. A body that breaks off or
//! stalls (`body::StallGuard`) drops the file being received, and with it its temp file.

use super::auth::Caller;
use super::body::body_error;
use super::error::ApiError;
use super::multipart::{self, Event};
use super::state::{blocking, off_thread, Shared};
use super::sync_api::open_run;
use crate::access::{OverQuota, Reserved, Usage};
use crate::catalog::files::InflateCheck;
use crate::fs::confine::open_beneath_counting;
use crate::fs::landing::{DirSyncer, PendingFile, StoredFile};
use crate::log::{Line, SERVE};
use crate::names::{check_file_name, check_subdir, DEFAULT_SUBDIR};
use crate::policy::Limits;
use crate::store::FileRecord;
use crate::time::now;
use axum::body::{BodyDataStream, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Files up to this size are held in memory until their last byte and then written, synced and renamed in one
/// trip to a blocking thread; larger ones stream to their temp file as they arrive.
const SMALL_FILE_BYTES: usize = 256 * 1024;
/// What all small files being received may hold in memory at once; beyond it they stream too, so memory stays
/// bounded whatever the number of clients.
const SMALL_FILES_BUDGET: usize = 16 * 1024 * 1024;
/// Files made durable at once: enough concurrent fsyncs for the disk to merge their flushes, few enough that the
/// blocking threads stay free for the store lookups every request needs.
const DISK_SLOTS: usize = 32;

/// The upload path's shared state.
pub struct Uploads {
    dir_syncer: DirSyncer,
    disk_slots: tokio::sync::Semaphore,
    /// Bytes of small files held in memory while they arrive (bounded by `SMALL_FILES_BUDGET`).
    held_bytes: AtomicUsize,
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            dir_syncer: DirSyncer::default(),
            disk_slots: tokio::sync::Semaphore::new(DISK_SLOTS),
            held_bytes: AtomicUsize::new(0),
        }
    }
}

/// What one upload request holds of its party's quota: its declared length, reserved before a byte is taken, and
/// each part's entries (and, without a declared length, its bytes) before its first byte reaches the disk; handed
/// back with what was stored when the request ends, however it ends.
struct Hold {
    state: Shared,
    limits: Limits,
    /// Bytes reserved up front from the request's declared length; zero when it declared none.
    declared: u64,
    reserved: Reserved,
    added: Usage,
    removed: Usage,
}

impl Hold {
    /// Reserves `room` more, or refuses with 507.
    fn take(&mut self, room: Usage) -> Result<(), ApiError> {
        let more = self.state.quota.reserve(&self.reserved.party, &self.limits, room);
        let more = more.map_err(|over| quota_refusal(&self.reserved.party, &self.limits, over))?;
        self.reserved.absorb(more);
        Ok(())
    }

    /// Room for one file part about to reach the disk: its entries (the file and up to one folder per segment of
    /// its folder) and, when the request declared no length, `bytes`.
    fn take_part(&mut self, depth: usize, bytes: u64) -> Result<(), ApiError> {
        let bytes = if self.declared > 0 { 0 } else { bytes };
        self.take(Usage { bytes, files: 1 + depth as u64 })
    }

    /// What a landed file changed.
    fn landed(&mut self, stored: &StoredFile, folders_created: u64) {
        self.added.bytes += stored.bytes;
        self.added.files += folders_created + u64::from(!stored.replaced);
        self.removed.bytes += stored.replaced_bytes;
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.state.quota.settle(&self.reserved, self.added, self.removed);
    }
}

/// 507 for a party over its quota: at it already, or about to pass it.
pub fn quota_refusal(party: &str, limits: &crate::policy::Limits, over: OverQuota) -> ApiError {
    match over {
        OverQuota::Bytes { used, max } if used >= max => ApiError::AtQuota {
            party: party.to_owned(),
            quota: limits.max_party_bytes.map(|q| q.to_string()).unwrap_or_default(),
        },
        OverQuota::Bytes { .. } => ApiError::OverQuota { party: party.to_owned() },
        OverQuota::Files { max, .. } => ApiError::TooManyFiles { party: party.to_owned(), max },
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct RawUploadQuery {
    /// For a raw body: the file's name.
    filename: Option<String>,
    /// For a raw body: the folder (default analysisResults).
    subdir: Option<String>,
}

/// What one upload request needs, resolved once.
struct UploadTarget {
    caller: Caller,
    run: String,
    /// The run's home: its files land beneath it.
    run_fd: Arc<OwnedFd>,
    /// Where they are made first (`catalog::home::INCOMING`).
    incoming: Arc<OwnedFd>,
    hold: Arc<Mutex<Hold>>,
}

/// Upload analysis files: `multipart/form-data` with a `subdir` field before one or more `file` parts, or a raw
/// body with `?filename=&subdir=`. Each file lands whole or not at all.
#[utoipa::path(post, path = "/api/sync/analysis/{run}", params(("run" = String, Path), RawUploadQuery),
    request_body(content_type = "multipart/form-data", description = "subdir field, then file parts"),
    responses((status = 200, description = "{\"stored\": [names]}"), (status = 400), (status = 401), (status = 403),
        (status = 404), (status = 413), (status = 429), (status = 507)))]
pub async fn upload(
    caller: Caller,
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    Query(query): Query<RawUploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<serde_json::Value>, ApiError> {
    let announced = announced_sha256(
        headers.get("repr-digest").and_then(|v| v.to_str().ok()),
        headers.get("x-content-sha256").and_then(|v| v.to_str().ok()),
    )
    .map_err(ApiError::BadDigestHeader)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let target = blocking(&state, move |state, store| {
        open_run(state, store, &caller, &run, false)?;
        let limits = caller.policy.limits.clone();
        let reserved = Reserved::none(&caller.party);
        let mut hold = Hold {
            state: state.clone(),
            limits,
            declared,
            reserved,
            added: Usage::default(),
            removed: Usage::default(),
        };
        // The whole declared body (and the run's home, should it have none yet), before a byte of it is taken.
        hold.take(Usage { bytes: declared, files: 1 })?;
        let homes = state.homes()?;
        let (home, made) = homes.find_or_make(&run)?;
        hold.added.files += u64::from(made);
        let incoming = homes.incoming().clone();
        Ok(UploadTarget { caller, run, run_fd: Arc::new(home.fd), incoming, hold: Arc::new(Mutex::new(hold)) })
    })
    .await?;

    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let stored = if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        receive_form(&state, &target, content_type, request, announced).await?
    } else {
        let name = query.filename.clone().ok_or_else(|| {
            ApiError::BadForm("send multipart/form-data, or a raw body with ?filename=NAME&subdir=FOLDER".into())
        })?;
        let subdir = query.subdir.clone().unwrap_or_else(|| DEFAULT_SUBDIR.to_owned());
        let body = Source::Raw(request.into_body().into_data_stream());
        vec![receive_file(&state, &target, &subdir, &name, body, announced).await?]
    };
    Ok(Json(serde_json::json!({ "stored": stored.iter().map(|f| &f.name).collect::<Vec<_>>(), "files": stored })))
}

/// What a form may hold besides its files' data: the parser holds no more than this of any part's headers or of a
/// preamble.
const FORM_LIMITS: multipart::Limits = multipart::Limits { part_headers: 8 * 1024, preamble: 8 * 1024 };
/// The most a text field (`subdir`) may hold.
const TEXT_FIELD_LIMIT: usize = 4 * 1024;

/// A multipart body, read through the parser as its events are asked for.
struct Form {
    parser: multipart::Parser,
    body: BodyDataStream,
}

impl Form {
    async fn next(&mut self) -> Result<Event, ApiError> {
        loop {
            if let Some(event) = self.parser.next_event()? {
                return Ok(event);
            }
            match self.body.next().await {
                Some(chunk) => self.parser.push(&chunk.map_err(body_error)?),
                None => self.parser.end_input(),
            }
        }
    }

    /// A text field's value, up to `TEXT_FIELD_LIMIT`.
    async fn text(&mut self, field: &str) -> Result<String, ApiError> {
        let mut text = Vec::new();
        loop {
            match self.next().await? {
                Event::Data(bytes) if text.len() + bytes.len() > TEXT_FIELD_LIMIT => {
                    return Err(ApiError::TextFieldTooLong { field: field.to_owned(), limit: TEXT_FIELD_LIMIT });
                }
                Event::Data(bytes) => text.extend_from_slice(&bytes),
                Event::PartEnd => break,
                event => return Err(out_of_order(&event)),
            }
        }
        String::from_utf8(text).map_err(|_| ApiError::BadForm(format!("form field '{field}' is not UTF-8")))
    }
}

/// An event where the parser's grammar allows none such (a part's data between parts, say): a bug, not the client's.
fn out_of_order(event: &Event) -> ApiError {
    let kind = match event {
        Event::Part(_) => "a part's start",
        Event::Data(_) => "data",
        Event::PartEnd => "a part's end",
        Event::End => "the form's end",
    };
    ApiError::Internal(format!("internal error: the form parser gave {kind} out of order"))
}

/// Where a file's bytes come from: a raw body, or one part of a form (until its end).
enum Source<'a> {
    Raw(BodyDataStream),
    Part(&'a mut Form),
}

impl Source<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        match self {
            Source::Raw(body) => body.next().await.transpose().map_err(body_error),
            Source::Part(form) => match form.next().await? {
                Event::Data(bytes) => Ok(Some(bytes)),
                Event::PartEnd => Ok(None),
                event => Err(out_of_order(&event)),
            },
        }
    }
}

/// The worker's form: a `subdir` field, then `file` parts, each landed as it ends. At most
/// `uploads.max_parts_per_request` file parts and as many text fields.
async fn receive_form(
    state: &Shared,
    target: &UploadTarget,
    content_type: &str,
    request: Request,
    announced: Option<[u8; 32]>,
) -> Result<Vec<StoredFile>, ApiError> {
    let boundary = multipart::boundary(content_type)?;
    let mut form =
        Form { parser: multipart::Parser::new(boundary, FORM_LIMITS), body: request.into_body().into_data_stream() };
    let max_parts = target.caller.policy.uploads.max_parts_per_request;
    let mut subdir = DEFAULT_SUBDIR.to_owned();
    let mut stored: Vec<StoredFile> = Vec::new();
    let (mut files, mut fields) = (0u32, 0u32);
    loop {
        let part = match form.next().await? {
            Event::Part(part) => part,
            Event::End => break,
            event => return Err(out_of_order(&event)),
        };
        match part.name.as_deref() {
            Some("subdir") => {
                fields += 1;
                if fields > max_parts {
                    return Err(ApiError::TooManyParts { limit: max_parts, stored: stored.len() });
                }
                subdir = form.text("subdir").await?.trim().to_owned();
            }
            Some("file") => {
                files += 1;
                if files > max_parts {
                    return Err(ApiError::TooManyParts { limit: max_parts, stored: stored.len() });
                }
                let name = part.filename.unwrap_or_default();
                let digest = if files == 1 { announced } else { None };
                let source = Source::Part(&mut form);
                stored.push(receive_file(state, target, &subdir, &name, source, digest).await?);
            }
            other => {
                let other = other.unwrap_or("");
                return Err(ApiError::BadForm(format!(
                    "unexpected form field {other:?}: send a subdir field, then file parts"
                )));
            }
        }
    }
    if stored.is_empty() {
        return Err(ApiError::BadForm("no file part in the form: send it as name=\"file\"".into()));
    }
    if files > 1 && announced.is_some() {
        // Digest headers describe one file; with several, nothing said which one.
        Line::of(SERVE)
            .field("event", "digest-ignored")
            .field("reason", "several-files")
            .field("run", &target.run)
            .to_stderr();
    }
    Ok(stored)
}

/// Receives one file's body and puts it in place: whole, or not at all.
async fn receive_file(
    state: &Shared,
    target: &UploadTarget,
    subdir: &str,
    name: &str,
    mut body: Source<'_>,
    digest: Option<[u8; 32]>,
) -> Result<StoredFile, ApiError> {
    let segments = check_destination(target, subdir, name)?;
    let mut held = HeldChunks::new(&state.uploads.held_bytes);
    let mut streaming: Option<PendingFile> = None;
    let mut folders_created = 0;
    let mut received = 0u64;
    let mut check = InflateCheck::for_file(name, target.caller.policy.uploads.max_inflated_bytes.0);
    while let Some(chunk) = body.next_chunk().await? {
        received += chunk.len() as u64;
        check_limits(target, name, received)?;
        check.feed(&chunk).map_err(ApiError::File)?;
        let chunk = match &mut streaming {
            None => match held.keep(chunk) {
                Ok(()) => continue,
                Err(chunk) => chunk,
            },
            Some(_) => chunk,
        };
        let pending = match &mut streaming {
            Some(pending) => pending,
            None => {
                let (mut pending, created) = open_pending(target, segments.clone(), name).await?;
                folders_created = created;
                pending.write_chunks(&held.hand_over()).map_err(write_failed)?;
                streaming.insert(pending)
            }
        };
        pending.write_chunks(&[chunk]).map_err(write_failed)?;
    }
    check.finish().map_err(ApiError::File)?;
    let received = match streaming {
        Some(pending) => Received::Streamed(pending, folders_created),
        None => Received::Held { run_fd: target.run_fd.clone(), segments, chunks: std::mem::take(&mut held.chunks) },
    };
    let stored = put_in_place(state, target, subdir, name, received, digest).await;
    drop(held);
    stored
}

fn write_failed(error: std::io::Error) -> ApiError {
    ApiError::Storage(format!("cannot write the file: {error}"))
}

/// The folder segments and name of a file part, checked before any of its bytes are read.
fn check_destination(target: &UploadTarget, subdir: &str, name: &str) -> Result<Vec<String>, ApiError> {
    let segments = check_subdir(subdir)?.into_iter().map(str::to_owned).collect();
    check_file_name(name, &target.caller.policy.uploads.extensions)?;
    Ok(segments)
}

/// The per-file limit (413), as the bytes arrive. The quota holds by reservation: the request's declared length, or
/// `max_file_bytes` per part when it declared none.
fn check_limits(target: &UploadTarget, name: &str, received: u64) -> Result<(), ApiError> {
    let limit = target.caller.policy.uploads.max_file_bytes;
    if received > limit.0 {
        return Err(ApiError::TooLarge { name: name.to_owned(), limit: limit.to_string() });
    }
    Ok(())
}

/// Creates the temp file of a file that streams (its folder is created on the way), once its room is reserved.
/// Returns it with the number of folders made for it.
async fn open_pending(
    target: &UploadTarget,
    segments: Vec<String>,
    name: &str,
) -> Result<(PendingFile, u64), ApiError> {
    let (run_fd, incoming, hold, name) =
        (target.run_fd.clone(), target.incoming.clone(), target.hold.clone(), name.to_owned());
    let max_file_bytes = target.caller.policy.uploads.max_file_bytes.0;
    off_thread(move || begin_in(&run_fd, &incoming, &hold, &segments, &name, max_file_bytes)).await
}

fn begin_in(
    run_fd: &OwnedFd,
    incoming: &Arc<OwnedFd>,
    hold: &Mutex<Hold>,
    segments: &[String],
    name: &str,
    bytes: u64,
) -> Result<(PendingFile, u64), ApiError> {
    hold.lock()
        .map_err(|_| ApiError::Internal("the quota hold is poisoned".into()))?
        .take_part(segments.len(), bytes)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (dir, created) = open_beneath_counting(run_fd, &segments, true)
        .map_err(|e| ApiError::FolderConflict(format!("cannot use folder {}: {e}", segments.join("/"))))?
        .ok_or_else(|| ApiError::Internal("folder vanished".into()))?;
    let pending = PendingFile::begin_staged(Arc::new(dir), incoming.clone(), name)
        .map_err(|e| ApiError::Internal(format!("cannot store the file: {e}")))?;
    Ok((pending, created))
}

/// A file whose last byte has arrived.
enum Received {
    /// Already in its temp file (with the folders made for it).
    Streamed(PendingFile, u64),
    /// Still in memory: written, synced and renamed in the same trip.
    Held { run_fd: Arc<OwnedFd>, segments: Vec<String>, chunks: Vec<Bytes> },
}

/// Makes the file durable and puts it in place (one trip to a blocking thread), then records and announces it.
async fn put_in_place(
    state: &Shared,
    target: &UploadTarget,
    subdir: &str,
    name: &str,
    received: Received,
    digest: Option<[u8; 32]>,
) -> Result<StoredFile, ApiError> {
    let (shared, party, run, subdir_owned, name_owned) =
        (state.clone(), target.caller.party.clone(), target.run.clone(), subdir.to_owned(), name.to_owned());
    let (hold, incoming) = (target.hold.clone(), target.incoming.clone());
    let _slot = state.uploads.disk_slots.acquire().await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let stored = off_thread(move || {
        let (pending, folders_created) = match received {
            Received::Streamed(pending, created) => (pending, created),
            Received::Held { run_fd, segments, chunks } => {
                let bytes = chunks.iter().map(|c| c.len() as u64).sum();
                let (mut pending, created) = begin_in(&run_fd, &incoming, &hold, &segments, &name_owned, bytes)?;
                pending.write_chunks(&chunks).map_err(write_failed)?;
                (pending, created)
            }
        };
        let stored = pending.finish_with(digest.as_ref(), &shared.uploads.dir_syncer)?;
        if let Ok(mut hold) = hold.lock() {
            hold.landed(&stored, folders_created);
        }
        shared.records.remember(FileRecord {
            party: party.clone(),
            run,
            subdir: subdir_owned,
            name: stored.name.clone(),
            size: stored.bytes,
            mtime_ns: stored.modified_ns,
            sha256: stored.sha256.clone(),
            stored_at: now(),
        });
        Ok(stored)
    })
    .await?;
    state.metrics.add("evosync_upload_bytes_total", stored.bytes);
    state.metrics.add("evosync_uploads_total", 1);
    let event = serde_json::json!({ "type": "upload", "party": target.caller.party, "key": target.caller.key_id,
        "run": target.run, "subdir": subdir, "name": stored.name, "bytes": stored.bytes, "sha256": stored.sha256,
        "replaced": stored.replaced_bytes > 0, "at": now() });
    Line::of(SERVE).field("event", "upload").payload(&event).to_stderr();
    state.announce(&event);
    Ok(stored)
}

/// A small file's chunks, held against the shared budget until the file is written or dropped.
struct HeldChunks<'a> {
    budget: &'a AtomicUsize,
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl<'a> HeldChunks<'a> {
    fn new(budget: &'a AtomicUsize) -> Self {
        HeldChunks { budget, chunks: Vec::new(), bytes: 0 }
    }

    /// Keeps `chunk` if the file is still small and the budget allows; gives it back otherwise.
    fn keep(&mut self, chunk: Bytes) -> Result<(), Bytes> {
        if self.bytes + chunk.len() > SMALL_FILE_BYTES {
            return Err(chunk);
        }
        let reserved = self.budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            (used + chunk.len() <= SMALL_FILES_BUDGET).then_some(used + chunk.len())
        });
        if reserved.is_err() {
            return Err(chunk);
        }
        self.bytes += chunk.len();
        self.chunks.push(chunk);
        Ok(())
    }

    /// The chunks, for a file that streams from here on; their bytes go back to the budget.
    fn hand_over(&mut self) -> Vec<Bytes> {
        self.budget.fetch_sub(self.bytes, Ordering::AcqRel);
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}

impl Drop for HeldChunks<'_> {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The SHA-256 a request announces: `Repr-Digest: sha-256=:BASE64:` (RFC 9530) or `X-Content-SHA256: HEX`.
pub fn announced_sha256(repr_digest: Option<&str>, x_content_sha256: Option<&str>) -> Result<Option<[u8; 32]>, String> {
    if let Some(value) = repr_digest {
        for member in value.split(',') {
            let member = member.trim();
            if let Some(encoded) = member.strip_prefix("sha-256=:").and_then(|m| m.strip_suffix(':')) {
                let bytes = <base64ct::Base64 as base64ct::Encoding>::decode_vec(encoded)
                    .map_err(|_| "Repr-Digest: sha-256 is not valid base64")?;
                return bytes.try_into().map(Some).map_err(|_| "Repr-Digest: sha-256 is not 32 bytes".to_owned());
            }
        }
    }
    if let Some(value) = x_content_sha256 {
        let value = value.trim();
        if value.len() != 64 {
            return Err("X-Content-SHA256 must be 64 hex digits".into());
        }
        return crate::time::from_hex::<32>(value).map(Some).ok_or_else(|| "X-Content-SHA256 is not hex".into());
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::hex;

    #[test]
    fn small_files_are_held_within_the_budget_and_give_it_back() {
        let budget = AtomicUsize::new(0);
        let mut held = HeldChunks::new(&budget);
        assert!(held.keep(Bytes::from(vec![0u8; 1000])).is_ok());
        assert!(held.keep(Bytes::from(vec![0u8; SMALL_FILE_BYTES])).is_err(), "over the size of a small file");
        assert_eq!(budget.load(Ordering::Acquire), 1000);
        drop(held);
        assert_eq!(budget.load(Ordering::Acquire), 0);

        let budget = AtomicUsize::new(SMALL_FILES_BUDGET - 10);
        let mut held = HeldChunks::new(&budget);
        assert!(held.keep(Bytes::from(vec![0u8; 20])).is_err(), "the budget is spent: the file streams instead");
        assert!(held.keep(Bytes::from(vec![0u8; 10])).is_ok());
        assert_eq!(held.hand_over().len(), 1);
        assert_eq!(budget.load(Ordering::Acquire), SMALL_FILES_BUDGET - 10, "handed over, the bytes are free");
        drop(held);
        assert_eq!(budget.load(Ordering::Acquire), SMALL_FILES_BUDGET - 10);
    }

    #[test]
    fn announced_digests() {
        // sha-256 of "hello"
        let hex_digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let b64 = "LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=";
        let from_hex = announced_sha256(None, Some(hex_digest)).unwrap().unwrap();
        let from_repr = announced_sha256(Some(&format!("sha-512=:AAAA:, sha-256=:{b64}:")), None).unwrap().unwrap();
        assert_eq!(from_hex, from_repr);
        assert_eq!(hex(&from_hex), hex_digest);
        assert!(announced_sha256(Some("sha-256=:@@@@:"), None).is_err());
        assert!(announced_sha256(None, Some("abc")).is_err());
        assert_eq!(announced_sha256(None, None).unwrap(), None);
    }
}
