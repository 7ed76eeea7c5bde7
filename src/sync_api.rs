//! The sync REST API the workers already speak (`X-Sync-API-Key`), per party: register a run, list and upload
//! analysis files, a run's status; plus `/metrics`, `/admin/events` and `/openapi.json`.
//!
//! A party sees only its own runs: another party's run answers exactly as a run that does not exist.

use crate::confine::{ConfineError, PartyTree, ReplicaRoot, RunFolder};
use crate::http::{ApiError, Shared};
use crate::ingest::{self, PendingFile, StoredFile};
use crate::policy::Policy;
use crate::secrets::{self, API_KEY_PREFIX};
use crate::store::{self, FileRecord, Store};
use axum::body::Bytes;
use axum::extract::{FromRequest, Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

pub const API_KEY_HEADER: &str = "x-sync-api-key";

/// In-memory state of the sync endpoints: rate buckets, party usage, policies, counters, events.
pub struct SyncState {
    buckets: Mutex<HashMap<String, Bucket>>,
    usage: Mutex<HashMap<String, Usage>>,
    policies: Mutex<HashMap<String, CachedPolicy>>,
    key_touched: Mutex<HashMap<String, Instant>>,
    pub metrics: Metrics,
    pub events: broadcast::Sender<String>,
    pub dir_syncer: ingest::DirSyncer,
    /// Files being made durable at once: enough concurrent fsyncs for the disk to merge their flushes, few enough
    /// that the blocking threads stay free for the store lookups every request needs.
    disk_slots: tokio::sync::Semaphore,
    /// The replica root, opened on first use and kept (moving it needs a restart).
    replica_root: std::sync::OnceLock<Arc<ReplicaRoot>>,
    /// Bytes of small files held in memory while they arrive (bounded by `SMALL_FILES_BUDGET`).
    held_bytes: std::sync::atomic::AtomicUsize,
    /// Stored files' records go to one writer thread that commits them in batches: uploads never queue on the
    /// store's write lock. The records only cache hashes for listings (checked against size and mtime), so one
    /// lost in a crash costs a re-hash, never a file.
    records: Mutex<Option<std::sync::mpsc::Sender<RecordMessage>>>,
}

impl SyncState {
    pub fn new(store_path: std::path::PathBuf) -> SyncState {
        let (sender, receiver) = std::sync::mpsc::channel::<RecordMessage>();
        std::thread::spawn(move || record_writer(&store_path, receiver));
        SyncState {
            buckets: Mutex::default(),
            usage: Mutex::default(),
            policies: Mutex::default(),
            key_touched: Mutex::default(),
            metrics: Metrics::default(),
            events: broadcast::channel(1024).0,
            dir_syncer: ingest::DirSyncer::default(),
            held_bytes: std::sync::atomic::AtomicUsize::new(0),
            replica_root: std::sync::OnceLock::new(),
            disk_slots: tokio::sync::Semaphore::new(DISK_SLOTS),
            records: Mutex::new(Some(sender)),
        }
    }

    /// Queues a stored file's record for the writer thread. Should that thread be gone, the record is lost and the
    /// next listing hashes the file again.
    fn remember(&self, record: FileRecord) {
        if !self.send_record(RecordMessage::File(record)) {
            eprintln!("evosync-serve event=store-error error=\"the record writer has stopped\"");
        }
    }

    fn replica_root(&self, path: &std::path::Path) -> Result<Arc<ReplicaRoot>, ConfineError> {
        if let Some(root) = self.replica_root.get() {
            return Ok(root.clone());
        }
        let root = Arc::new(ReplicaRoot::open(path)?);
        Ok(self.replica_root.get_or_init(|| root).clone())
    }

    /// Returns once every record queued before the call is in the store (or after two seconds at most).
    fn settle_records(&self) {
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if self.send_record(RecordMessage::Settle(ack)) {
            let _ = done.recv_timeout(Duration::from_secs(2));
        }
    }

    fn send_record(&self, message: RecordMessage) -> bool {
        let sent = self.records.lock().ok().and_then(|sender| sender.as_ref().map(|s| s.send(message).is_ok()));
        sent == Some(true)
    }
}

enum RecordMessage {
    File(FileRecord),
    /// Answered once the records sent before it are committed.
    Settle(std::sync::mpsc::SyncSender<()>),
}

/// Files made durable at once (see `SyncState::disk_slots`).
const DISK_SLOTS: usize = 32;

/// How long the record writer waits for more records once one has come.
const RECORD_LINGER: Duration = Duration::from_millis(20);

/// Commits file records in batches of whatever has queued up.
fn record_writer(store_path: &std::path::Path, receiver: std::sync::mpsc::Receiver<RecordMessage>) {
    let Ok(store) = Store::open(store_path) else { return };
    while let Ok(first) = receiver.recv() {
        if matches!(first, RecordMessage::File(_)) {
            // Let a busy stream of uploads gather: one transaction and one wake-up per batch, not per file.
            std::thread::sleep(RECORD_LINGER);
        }
        let (mut batch, mut waiting) = (Vec::new(), Vec::new());
        for message in std::iter::once(first).chain(receiver.try_iter().take(4095)) {
            match message {
                RecordMessage::File(record) => batch.push(record),
                RecordMessage::Settle(ack) => waiting.push(ack),
            }
        }
        let written = store.in_transaction(|store| {
            for record in &batch {
                store.record_file(record)?;
            }
            Ok(())
        });
        if let Err(error) = written {
            eprintln!("evosync-serve event=store-error error={error:?}");
        }
        for ack in waiting {
            let _ = ack.send(());
        }
    }
}

/// A policy with the modification time of the file it came from.
type CachedPolicy = (Option<std::time::SystemTime>, Arc<Policy>);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A party's bytes on disk: measured by a walk now and then, kept current by the uploads in between.
struct Usage {
    bytes: u64,
    measured: Instant,
}

const USAGE_REFRESH: Duration = Duration::from_secs(30);

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub fn add(&self, name_and_labels: &str, by: u64) {
        if let Ok(mut counters) = self.counters.lock() {
            *counters.entry(name_and_labels.to_owned()).or_default() += by;
        }
    }

    fn render(&self, pushes: &[(String, u64)]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let mut declared = std::collections::BTreeSet::new();
        for (key, value) in &counters {
            let name = key.split('{').next().unwrap_or(key);
            if declared.insert(name.to_owned()) {
                out.push_str(&format!("# TYPE {name} counter\n"));
            }
            out.push_str(&format!("{key} {value}\n"));
        }
        out.push_str("# TYPE evosync_pushes_total counter\n");
        for (exit, count) in pushes {
            out.push_str(&format!("evosync_pushes_total{{outcome=\"{}\"}} {count}\n", label(exit)));
        }
        out
    }
}

fn label(value: &str) -> String {
    value.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect()
}

/// Who is calling, once the API key checked out.
pub struct Caller {
    pub party: String,
    pub key_id: String,
    pub policy: Arc<Policy>,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// One log line in one write: stderr is unbuffered, and `eprintln!` would write it in pieces.
fn log_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Refusals are counted by reason and logged as one line.
fn refusal(state: &Shared, reason: &str, error: ApiError) -> ApiError {
    state.sync.metrics.add(&format!("evosync_refusals_total{{reason=\"{reason}\"}}"), 1);
    log_line(&format!(
        "evosync-serve event=refuse reason={reason} status={} message={:?}\n",
        error.status.as_u16(),
        error.message
    ));
    error
}

impl SyncState {
    /// The API key's party, when the key may be used now.
    fn authenticate(&self, shared: &Shared, store: &Store, presented: Option<&str>) -> Result<Caller, ApiError> {
        let presented = presented.ok_or_else(|| {
            refusal(shared, "no-key", unauthorized("send the party's API key in the X-Sync-API-Key header"))
        })?;
        let Some((id, secret)) = secrets::parse(API_KEY_PREFIX, presented.trim()) else {
            return Err(refusal(shared, "bad-key", unauthorized("the X-Sync-API-Key is not a valid key")));
        };
        let found = store.api_key(id).map_err(ApiError::from)?;
        let Some((key, party_enabled)) = found else {
            return Err(refusal(shared, "bad-key", unauthorized("the X-Sync-API-Key is not a valid key")));
        };
        if !shared.api_keys.check(id, secret, &key.secret_hash) {
            return Err(refusal(shared, "bad-key", unauthorized("the X-Sync-API-Key is not a valid key")));
        }
        match store::key_state(key.revoked_at, key.expires_at, true, store::now()) {
            Some("revoked") => return Err(refusal(shared, "revoked-key", unauthorized("this API key was revoked"))),
            Some(_) => return Err(refusal(shared, "expired-key", unauthorized("this API key has expired"))),
            None => {}
        }
        if !party_enabled {
            let message = format!("party '{}' is disabled on this host", key.party);
            return Err(refusal(shared, "party-disabled", ApiError::new(StatusCode::FORBIDDEN, message)));
        }
        self.touch(store, &key.id);
        let policy = self.policy(shared, &key.party).map_err(|e| {
            let message = format!("party '{}' has no usable policy on this host; tell the administrator", key.party);
            eprintln!("evosync-serve event=policy-error party={} error={e:?}", key.party);
            refusal(shared, "policy", ApiError::new(StatusCode::FORBIDDEN, message))
        })?;
        Ok(Caller { party: key.party, key_id: key.id, policy })
    }

    /// Records the key's last use at most once a minute, so requests do not all write the store.
    fn touch(&self, store: &Store, id: &str) {
        let due = self.key_touched.lock().map(|mut touched| {
            let now = Instant::now();
            let due = touched.get(id).is_none_or(|at| now.duration_since(*at) > Duration::from_secs(60));
            if due {
                touched.insert(id.to_owned(), now);
            }
            due
        });
        if due.unwrap_or(false) {
            let _ = store.touch_api_key(id);
        }
    }

    /// The party's policy, re-read when its file changes.
    fn policy(&self, shared: &Shared, party: &str) -> Result<Arc<Policy>, String> {
        let path = shared.config.policy_path(party);
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if let Ok(cache) = self.policies.lock() {
            if let Some((at, policy)) = cache.get(party) {
                if *at == modified && modified.is_some() {
                    return Ok(policy.clone());
                }
            }
        }
        let policy = Arc::new(Policy::load(&path, party).map_err(|e| e.to_string())?);
        if let Ok(mut cache) = self.policies.lock() {
            cache.insert(party.to_owned(), (modified, policy.clone()));
        }
        Ok(policy)
    }

    /// A token bucket per party: `requests_per_second`, with as many in reserve.
    fn admit(&self, party: &str, per_second: u32) -> Result<(), u64> {
        let rate = f64::from(per_second);
        let mut buckets = self.buckets.lock().map_err(|_| 1u64)?;
        let now = Instant::now();
        let bucket = buckets.entry(party.to_owned()).or_insert(Bucket { tokens: rate, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(rate);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    /// The party's bytes on disk now (replicas and analysis files alike).
    fn usage(&self, tree: &PartyTree) -> Result<u64, ConfineError> {
        if let Ok(usage) = self.usage.lock() {
            if let Some(known) = usage.get(tree.party()) {
                if known.measured.elapsed() < USAGE_REFRESH {
                    return Ok(known.bytes);
                }
            }
        }
        let bytes = tree.usage_bytes()?;
        if let Ok(mut usage) = self.usage.lock() {
            usage.insert(tree.party().to_owned(), Usage { bytes, measured: Instant::now() });
        }
        Ok(bytes)
    }

    fn add_usage(&self, party: &str, added: u64, removed: u64) {
        if let Ok(mut usage) = self.usage.lock() {
            if let Some(known) = usage.get_mut(party) {
                known.bytes = known.bytes.saturating_add(added).saturating_sub(removed);
            }
        }
    }
}

/// Runs blocking store and file-system work off the async threads, with a pooled store connection.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Shared, &Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let store = state.pool.take().map_err(ApiError::from)?;
        let result = work(&state, &store);
        state.pool.give_back(store);
        result
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
}

fn api_key(headers: &HeaderMap) -> Option<String> {
    headers.get(API_KEY_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn not_found_run(run: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("there is no run '{run}'"))
}

/// The caller's run folder. Another party's run, or one that does not exist, is "not found" alike.
fn open_run(
    shared: &Shared,
    store: &Store,
    caller: &Caller,
    run: &str,
    create: bool,
) -> Result<(PartyTree, RunFolder), ApiError> {
    if !caller.policy.allows_run_name(run) {
        let message = format!("'{run}' is not an allowed run name (pattern: {})", caller.policy.run_pattern_text());
        return Err(refusal(shared, "run-name", ApiError::new(StatusCode::BAD_REQUEST, message)));
    }
    let claimed = match store.run(run).map_err(ApiError::from)? {
        Some(owned) if owned.party != caller.party => {
            return Err(refusal(
                shared,
                "other-party",
                if create {
                    ApiError::new(StatusCode::CONFLICT, format!("run '{run}' belongs to another party"))
                } else {
                    not_found_run(run)
                },
            ))
        }
        Some(_) => true,
        None => false,
    };
    let tree = shared
        .sync
        .replica_root(&shared.config.replica_root)
        .and_then(|root| PartyTree::open_in(&root, &caller.party))
        .map_err(|e| {
            eprintln!("evosync-serve event=confine-error party={} error={e:?}", caller.party);
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the party has no tree on this host; tell the administrator",
            )
        })?;
    let folder = if create {
        tree.run_folder(run, caller.policy.create_runs, caller.policy.limits.max_runs)
    } else {
        tree.existing_run_folder(run).and_then(|f| f.ok_or(ConfineError::RunMissing { run: run.to_owned() }))
    };
    let folder = folder.map_err(|e| match e {
        ConfineError::RunMissing { .. } if !create => not_found_run(run),
        ConfineError::RunMissing { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        ConfineError::TooManyRuns { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        ConfineError::NotAFolder { .. } | ConfineError::NotRegular { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    })?;
    if claimed {
        return Ok((tree, folder)); // no write to the store on the hot path of an upload
    }
    match store.claim_run(&caller.party, run) {
        Ok(_) => Ok((tree, folder)),
        Err(store::StoreError::RunOwned { .. }) => Err(not_found_run(run)),
        Err(e) => Err(e.into()),
    }
}

// ---- register ----

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    template_name: Option<serde_json::Value>,
    ecosystem_variant: Option<serde_json::Value>,
    started_at: Option<serde_json::Value>,
}

fn as_text(value: &Option<serde_json::Value>) -> Option<String> {
    match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Claims the run folder for the party, stores its metadata, creates `analysisResults/`.
#[utoipa::path(post, path = "/api/sync/register/{run}", request_body = Registration,
    params(("run" = String, Path, description = "run folder name, ULID_label")),
    responses((status = 201, description = "registered (again: unchanged)"), (status = 401), (status = 403), (status = 409)))]
pub async fn register(
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    count(&state, "register");
    let key = api_key(&headers);
    let registration: Registration = if body.is_empty() {
        Registration { template_name: None, ecosystem_variant: None, started_at: None }
    } else {
        match serde_json::from_slice(&body) {
            Ok(registration) => registration,
            Err(e) => {
                return ApiError::new(StatusCode::BAD_REQUEST, format!("the body is not the registration JSON: {e}"))
                    .into_response()
            }
        }
    };
    let result = blocking(&state, move |shared, store| {
        let caller = shared.sync.authenticate(shared, store, key.as_deref())?;
        admit(shared, &caller)?;
        let (_, folder) = open_run(shared, store, &caller, &run, true)?;
        ingest::open_subdir(&folder.fd, &[ingest::DEFAULT_SUBDIR], true).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot create analysisResults: {e}"))
        })?;
        store
            .set_run_metadata(
                &run,
                as_text(&registration.template_name).as_deref(),
                as_text(&registration.ecosystem_variant).as_deref(),
                as_text(&registration.started_at).as_deref(),
            )
            .map_err(ApiError::from)?;
        Ok(serde_json::json!({ "run": run, "party": caller.party, "created": folder.created }))
    })
    .await;
    match result {
        Ok(value) => (StatusCode::CREATED, Json(value)).into_response(),
        Err(error) => error.into_response(),
    }
}

fn admit(shared: &Shared, caller: &Caller) -> Result<(), ApiError> {
    shared.sync.admit(&caller.party, caller.policy.uploads.requests_per_second).map_err(|wait| {
        let mut error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, format!("too many requests; retry in {wait} s"));
        error.retry_after = Some(wait);
        refusal(shared, "rate", error)
    })
}

fn count(state: &Shared, route: &str) {
    state.sync.metrics.add(&format!("evosync_http_requests_total{{route=\"{route}\"}}"), 1);
}

// ---- list ----

#[derive(Deserialize, utoipa::IntoParams)]
pub struct SubdirQuery {
    /// analysisResults (default), generationFeatures, or a folder under them.
    subdir: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Listed {
    name: String,
    size: u64,
    /// RFC 3339, UTC.
    modified: String,
    sha256: String,
}

/// The files in one folder of a run: names, sizes, modification times and SHA-256.
#[utoipa::path(get, path = "/api/sync/analysis/{run}/list", params(("run" = String, Path), SubdirQuery),
    responses((status = 200, description = "{\"files\": [...]}"), (status = 404, description = "{\"files\": []}: no such run or folder")))]
pub async fn list(
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    Query(query): Query<SubdirQuery>,
    headers: HeaderMap,
) -> Response {
    count(&state, "list");
    let key = api_key(&headers);
    let result = blocking(&state, move |shared, store| {
        let caller = shared.sync.authenticate(shared, store, key.as_deref())?;
        admit(shared, &caller)?;
        let subdir = query.subdir.unwrap_or_else(|| ingest::DEFAULT_SUBDIR.to_owned());
        let segments =
            ingest::check_subdir(&subdir).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
        let (_, folder) = match open_run(shared, store, &caller, &run, false) {
            Ok(found) => found,
            Err(e) if e.status == StatusCode::NOT_FOUND => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(dir) = ingest::open_subdir(&folder.fd, &segments, false)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        else {
            return Ok(None);
        };
        let known: HashMap<String, FileRecord> =
            store.files_in(&caller.party, &run, &subdir)?.into_iter().map(|f| (f.name.clone(), f)).collect();
        let mut files = Vec::new();
        for (name, stat) in
            crate::sys::list_dir(&dir).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        {
            if !crate::sys::is_regular_file(&stat) || name.starts_with(ingest::TEMP_PREFIX) {
                continue;
            }
            let size = stat.st_size.max(0) as u64;
            let mtime_ns = stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec;
            let sha256 = match known.get(&name) {
                Some(record) if record.size == size && record.mtime_ns == mtime_ns => record.sha256.clone(),
                // Put there some other way (or changed since): hash it once, remember it.
                _ => {
                    let sha256 = hash_file(&dir, &name).unwrap_or_default();
                    let record = FileRecord {
                        party: caller.party.clone(),
                        run: run.clone(),
                        subdir: subdir.clone(),
                        name: name.clone(),
                        size,
                        mtime_ns,
                        sha256: sha256.clone(),
                        stored_at: store::now(),
                    };
                    let _ = store.record_file(&record);
                    sha256
                }
            };
            files.push(Listed { modified: rfc3339_ns(mtime_ns), name, size, sha256 });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(files))
    })
    .await;
    match result {
        Ok(Some(files)) => Json(serde_json::json!({ "files": files })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(serde_json::json!({ "files": [] }))).into_response(),
        Err(error) if error.status == StatusCode::NOT_FOUND => {
            (StatusCode::NOT_FOUND, Json(serde_json::json!({ "files": [], "error": error.message }))).into_response()
        }
        Err(error) => error.into_response(),
    }
}

fn hash_file(dir: &OwnedFd, name: &str) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let fd = nix::fcntl::openat(
        Some(std::os::fd::AsRawFd::as_raw_fd(dir)),
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(ingest::hex(&hasher.finalize()))
}

fn rfc3339_ns(ns: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

// ---- upload ----

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
    run_fd: Arc<OwnedFd>,
    quota_left: Option<u64>,
}

/// Upload analysis files: `multipart/form-data` with a `subdir` field before one or more `file` parts, or a raw
/// body with `?filename=&subdir=`. Each file lands whole or not at all.
#[utoipa::path(post, path = "/api/sync/analysis/{run}", params(("run" = String, Path), RawUploadQuery),
    request_body(content_type = "multipart/form-data", description = "subdir field, then file parts"),
    responses((status = 200, description = "{\"stored\": [names]}"), (status = 400), (status = 401), (status = 403),
        (status = 404), (status = 413), (status = 429), (status = 507)))]
pub async fn upload(
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    Query(query): Query<RawUploadQuery>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    count(&state, "upload");
    match upload_inner(&state, run, query, &headers, request).await {
        Ok(stored) => Json(serde_json::json!({ "stored": stored.iter().map(|f| &f.name).collect::<Vec<_>>(),
            "files": stored }))
        .into_response(),
        Err(error) => error.into_response(),
    }
}

async fn upload_inner(
    state: &Shared,
    run: String,
    query: RawUploadQuery,
    headers: &HeaderMap,
    request: Request,
) -> Result<Vec<StoredFile>, ApiError> {
    let key = api_key(headers);
    let announced = ingest::announced_sha256(
        headers.get("repr-digest").and_then(|v| v.to_str().ok()),
        headers.get("x-content-sha256").and_then(|v| v.to_str().ok()),
    )
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let target = blocking(state, move |shared, store| {
        let caller = shared.sync.authenticate(shared, store, key.as_deref())?;
        admit(shared, &caller)?;
        let (tree, folder) = open_run(shared, store, &caller, &run, false)?;
        let quota_left = match caller.policy.limits.max_party_bytes {
            None => None,
            Some(quota) => {
                let used = shared
                    .sync
                    .usage(&tree)
                    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
                if used >= quota.0 {
                    let message = format!(
                        "party '{}' is at its quota (max_party_bytes {}); free space first",
                        caller.party, quota
                    );
                    return Err(refusal(shared, "quota", ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message)));
                }
                Some(quota.0 - used)
            }
        };
        Ok(UploadTarget { caller, run, run_fd: Arc::new(folder.fd), quota_left })
    })
    .await?;

    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut stored = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = axum::extract::Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("not a multipart body: {}", e.body_text())))?;
        let mut subdir = ingest::DEFAULT_SUBDIR.to_owned();
        let mut files = 0;
        while let Some(field) = multipart.next_field().await.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("the multipart body is broken: {}", e.body_text()))
        })? {
            match field.name() {
                Some("subdir") => {
                    let text = field.text().await.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
                    subdir = text.trim().to_owned();
                }
                Some("file") => {
                    files += 1;
                    let name = field.file_name().unwrap_or_default().to_owned();
                    let digest = if files == 1 { announced } else { None };
                    let earlier = stored_bytes(&stored);
                    stored.push(receive_file(state, &target, &subdir, &name, field, earlier, digest).await?);
                }
                other => {
                    let message = format!(
                        "unexpected form field {:?}: send a subdir field, then file parts",
                        other.unwrap_or("")
                    );
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, message));
                }
            }
        }
        if stored.is_empty() {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "no file part in the form: send it as name=\"file\""));
        }
        if files > 1 && announced.is_some() {
            // Digest headers describe one file; with several, nothing said which one.
            eprintln!("evosync-serve event=digest-ignored reason=several-files run={}", target.run);
        }
    } else {
        let name = query.filename.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "send multipart/form-data, or a raw body with ?filename=NAME&subdir=FOLDER",
            )
        })?;
        let subdir = query.subdir.clone().unwrap_or_else(|| ingest::DEFAULT_SUBDIR.to_owned());
        let body = request.into_body().into_data_stream();
        stored.push(receive_file(state, &target, &subdir, &name, body, 0, announced).await?);
    }
    Ok(stored)
}

fn stored_bytes(stored: &[StoredFile]) -> u64 {
    stored.iter().map(|f| f.bytes).sum()
}

/// Files up to this size are held in memory until their last byte and then written, synced and renamed in one
/// trip to a blocking thread; larger ones stream to their temp file as they arrive.
const SMALL_FILE_BYTES: usize = 256 * 1024;
/// What all small files being received may hold in memory at once; beyond it they stream too, so memory stays
/// bounded whatever the number of clients.
const SMALL_FILES_BUDGET: usize = 16 * 1024 * 1024;

/// A small file's chunks, held against the shared budget until the file is written or dropped.
struct HeldChunks<'a> {
    budget: &'a std::sync::atomic::AtomicUsize,
    chunks: Vec<Bytes>,
    bytes: usize,
}

impl<'a> HeldChunks<'a> {
    fn new(budget: &'a std::sync::atomic::AtomicUsize) -> Self {
        HeldChunks { budget, chunks: Vec::new(), bytes: 0 }
    }

    /// Keeps `chunk` if the file is still small and the budget allows; gives it back otherwise.
    fn keep(&mut self, chunk: Bytes) -> Result<(), Bytes> {
        use std::sync::atomic::Ordering;
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
}

impl HeldChunks<'_> {
    /// The chunks, for a file that streams from here on; their bytes go back to the budget.
    fn hand_over(&mut self) -> Vec<Bytes> {
        self.budget.fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
        self.bytes = 0;
        std::mem::take(&mut self.chunks)
    }
}

impl Drop for HeldChunks<'_> {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The folder segments and name of a file part, checked before any of its bytes are read.
fn check_destination(state: &Shared, target: &UploadTarget, subdir: &str, name: &str) -> Result<Vec<String>, ApiError> {
    let segments = ingest::check_subdir(subdir)
        .map_err(|e| refusal(state, "name", ApiError::new(StatusCode::BAD_REQUEST, e.to_string())))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    ingest::check_file_name(name, &target.caller.policy.uploads.extensions)
        .map_err(|e| refusal(state, "name", ApiError::new(StatusCode::BAD_REQUEST, e.to_string())))?;
    Ok(segments)
}

/// Receives one file's body and puts it in place: whole, or not at all.
async fn receive_file<E: std::fmt::Display>(
    state: &Shared,
    target: &UploadTarget,
    subdir: &str,
    name: &str,
    body: impl futures_util::Stream<Item = Result<Bytes, E>>,
    earlier: u64,
    digest: Option<[u8; 32]>,
) -> Result<StoredFile, ApiError> {
    let segments = check_destination(state, target, subdir, name)?;
    let mut body = std::pin::pin!(body);
    let mut held = HeldChunks::new(&state.sync.held_bytes);
    let mut streaming: Option<PendingFile> = None;
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("the upload broke off: {e}")))?;
        received += chunk.len() as u64;
        check_limits(state, target, name, received, earlier)?;
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
                let mut pending = open_pending(target, segments.clone(), name).await?;
                pending.write_chunks(&held.hand_over()).map_err(write_failed)?;
                streaming.insert(pending)
            }
        };
        pending.write_chunks(&[chunk]).map_err(write_failed)?;
    }
    let received = match streaming {
        Some(pending) => Received::Streamed(pending),
        None => Received::Held { run_fd: target.run_fd.clone(), segments, chunks: std::mem::take(&mut held.chunks) },
    };
    let stored = put_in_place(state, target, subdir, name, received, digest).await;
    drop(held);
    stored
}

fn write_failed(error: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INSUFFICIENT_STORAGE, format!("cannot write the file: {error}"))
}

/// The per-file limit (413) and the party's quota (507), as the bytes arrive.
fn check_limits(
    state: &Shared,
    target: &UploadTarget,
    name: &str,
    received: u64,
    earlier: u64,
) -> Result<(), ApiError> {
    let limit = target.caller.policy.uploads.max_file_bytes;
    if received > limit.0 {
        let message = format!("'{name}' is over the {limit} limit per file; nothing was stored");
        return Err(refusal(state, "too-large", ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)));
    }
    if let Some(left) = target.quota_left {
        if earlier + received > left {
            let message = format!(
                "party '{}' would go over its quota (max_party_bytes); nothing was stored",
                target.caller.party
            );
            return Err(refusal(state, "quota", ApiError::new(StatusCode::INSUFFICIENT_STORAGE, message)));
        }
    }
    Ok(())
}

/// Creates the temp file of a file that streams (its folder is created on the way).
async fn open_pending(target: &UploadTarget, segments: Vec<String>, name: &str) -> Result<PendingFile, ApiError> {
    let run_fd = target.run_fd.clone();
    let name = name.to_owned();
    off_thread(move || begin_in(&run_fd, &segments, &name)).await
}

fn begin_in(run_fd: &OwnedFd, segments: &[String], name: &str) -> Result<PendingFile, ApiError> {
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let dir = ingest::open_subdir(run_fd, &segments, true)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("cannot use folder {}: {e}", segments.join("/"))))?
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "folder vanished"))?;
    PendingFile::begin(Arc::new(dir), name)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot store the file: {e}")))
}

/// Blocking file-system work (no store connection) off the async threads.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}")))?
}

/// A file whose last byte has arrived.
enum Received {
    /// Already in its temp file.
    Streamed(PendingFile),
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
    let _slot = state
        .sync
        .disk_slots
        .acquire()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let stored = off_thread(move || {
        let pending = match received {
            Received::Streamed(pending) => pending,
            Received::Held { run_fd, segments, chunks } => {
                let mut pending = begin_in(&run_fd, &segments, &name_owned)?;
                pending.write_chunks(&chunks).map_err(write_failed)?;
                pending
            }
        };
        let stored = pending.finish_with(digest.as_ref(), &shared.sync.dir_syncer).map_err(|e| match e {
            ingest::FinishError::DigestMismatch { .. } => {
                refusal(&shared, "digest", ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
            }
            ingest::FinishError::Io(_) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, e.to_string()),
        })?;
        shared.sync.remember(FileRecord {
            party: party.clone(),
            run,
            subdir: subdir_owned,
            name: stored.name.clone(),
            size: stored.bytes,
            mtime_ns: stored.modified_ns,
            sha256: stored.sha256.clone(),
            stored_at: store::now(),
        });
        shared.sync.add_usage(&party, stored.bytes, stored.replaced_bytes);
        Ok(stored)
    })
    .await?;
    state.sync.metrics.add("evosync_upload_bytes_total", stored.bytes);
    state.sync.metrics.add("evosync_uploads_total", 1);
    let event = serde_json::json!({ "type": "upload", "party": target.caller.party, "key": target.caller.key_id,
        "run": target.run, "subdir": subdir, "name": stored.name, "bytes": stored.bytes, "sha256": stored.sha256,
        "replaced": stored.replaced_bytes > 0, "at": store::now() });
    let event = event.to_string();
    log_line(&format!("evosync-serve event=upload {event}\n"));
    if state.sync.events.receiver_count() > 0 {
        let _ = state.sync.events.send(event);
    }
    Ok(stored)
}

// ---- status ----

/// The party's view of a run: each replica's size and last push, analysis file counts and the newest upload.
#[utoipa::path(get, path = "/api/sync/status/{run}", params(("run" = String, Path)),
    responses((status = 200), (status = 401), (status = 404)))]
pub async fn status(State(state): State<Shared>, UrlPath(run): UrlPath<String>, headers: HeaderMap) -> Response {
    count(&state, "status");
    let key = api_key(&headers);
    let result = blocking(&state, move |shared, store| {
        let caller = shared.sync.authenticate(shared, store, key.as_deref())?;
        admit(shared, &caller)?;
        let (_, folder) = open_run(shared, store, &caller, &run, false)?;
        shared.sync.settle_records(); // counts include every upload answered before this request
        let pushes = store.last_syncs(&caller.party, &run)?;
        let replicas: Vec<_> = caller
            .policy
            .databases
            .iter()
            .map(|database| {
                serde_json::json!({
                    "database": database,
                    "bytes": folder.database_size(database),
                    "last_push": pushes.iter().find(|p| &p.database == database).map(|p| serde_json::json!({
                        "at": store::rfc3339(p.started_at), "seconds": p.seconds, "exit": p.exit,
                        "ok": p.exit == "0", "replica_bytes": p.replica_bytes })),
                })
            })
            .collect();
        let analysis: Vec<_> = store
            .file_counts(&caller.party, &run)?
            .into_iter()
            .map(|(subdir, files, newest)| serde_json::json!({ "subdir": subdir, "files": files, "newest_upload": store::rfc3339(newest) }))
            .collect();
        let registered = store.run(&run)?;
        Ok(serde_json::json!({ "run": run, "party": caller.party, "replicas": replicas, "analysis": analysis,
            "template_name": registered.as_ref().and_then(|r| r.template_name.clone()),
            "ecosystem_variant": registered.as_ref().and_then(|r| r.ecosystem_variant.clone()),
            "started_at": registered.and_then(|r| r.started_at) }))
    })
    .await;
    match result {
        Ok(value) => Json(value).into_response(),
        Err(error) => error.into_response(),
    }
}

// ---- metrics, events, openapi ----

/// Prometheus text: requests, bytes, refusals by reason, pushes by outcome.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Shared>) -> Response {
    let pushes = blocking(&state, |_, store| Ok(store.pushes_by_exit()?)).await.unwrap_or_default();
    let body = state.sync.metrics.render(&pushes);
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response()
}

/// Server-Sent Events of pushes (from the ledger) and uploads as they happen. Admin token required.
#[utoipa::path(get, path = "/admin/events", responses((status = 200, content_type = "text/event-stream")), security(("admin_token" = [])))]
pub async fn events(
    State(state): State<Shared>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let receiver = state.sync.events.subscribe();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(data) => return Some((Ok(Event::default().data(data)), receiver)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Feeds pushes the gates record in the ledger into the event stream.
pub async fn follow_ledger(state: Shared) {
    let mut last = blocking(&state, |_, store| Ok(store.last_ledger_id()?)).await.unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if state.sync.events.receiver_count() == 0 {
            if let Ok(id) = blocking(&state, |_, store| Ok(store.last_ledger_id()?)).await {
                last = id;
            }
            continue;
        }
        let after = last;
        let Ok(rows) = blocking(&state, move |_, store| Ok(store.ledger_after(after, 100)?)).await else { continue };
        for (id, row) in rows {
            last = id;
            let event = serde_json::json!({ "type": "push", "party": row.party, "key": row.key_id, "run": row.run,
                "database": row.database, "at": store::rfc3339(row.started_at), "seconds": row.seconds, "exit": row.exit,
                "replica_bytes": row.replica_bytes });
            let _ = state.sync.events.send(event.to_string());
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "evosync", description = "Central side of kromosynth run sync: the workers' sync API and the admin API."),
    paths(register, list, upload, status, metrics, events,
        crate::http::list_parties, crate::http::add_party, crate::http::show_party, crate::http::disable_party,
        crate::http::enable_party, crate::http::list_ssh_keys, crate::http::add_ssh_key, crate::http::revoke_ssh_key,
        crate::http::list_api_keys, crate::http::issue_api_key, crate::http::revoke_api_key,
        crate::http::write_authorized_keys, crate::http::check_authorized_keys, crate::http::audit, crate::http::runs,
        crate::http::healthz, openapi_json),
    components(schemas(Registration, Listed, crate::http::NewParty, crate::http::NewSshKey, crate::http::NewApiKey)),
    modifiers(&Security)
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Sync-API-Key"))));
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    Json(<ApiDoc as utoipa::OpenApi>::openapi()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
}
