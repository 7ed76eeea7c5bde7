//! The sync REST API the workers already speak (`X-Sync-API-Key`), per party: register a run, list the analysis
//! files of a folder, a run's status. Uploads are in `upload`.
//!
//! A party sees only its own runs: another party's run answers exactly as a run that does not exist.

use super::auth::Caller;
use super::body::{read_bounded, JSON_BODY_LIMIT};
use super::error::ApiError;
use super::state::{blocking, AppState, Shared};
use super::upload::quota_refusal;
use crate::access::Usage;
use crate::access::{self, ClaimError, RunOwner};
use crate::fs::confine::{open_beneath, open_beneath_counting, ConfineError, PartyTree, RunFolder};
use crate::fs::{landing, sys};
use crate::log::{Line, SERVE};
use crate::names::{check_subdir, DEFAULT_SUBDIR};
use crate::store::{FileRecord, Store};
use crate::time::{hex, now, rfc3339, rfc3339_ns};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// The caller's run folder in its tree (where its replicas are). Another party's run, or one that does not exist,
/// is "not found" alike; `create` makes the folder (and claims the run) where the policy allows. Its analysis files
/// are in its home in the catalog (`catalog::home`).
pub fn open_run(
    state: &AppState,
    store: &Store,
    caller: &Caller,
    run: &str,
    create: bool,
) -> Result<(PartyTree, RunFolder), ApiError> {
    if run.len() > crate::names::MAX_SEGMENT_BYTES {
        return Err(ApiError::RunTooLong { len: run.len(), max: crate::names::MAX_SEGMENT_BYTES });
    }
    if !caller.policy.allows_run_name(run) {
        return Err(ApiError::RunName { run: run.to_owned(), pattern: caller.policy.run_pattern_text().to_owned() });
    }
    let owner = access::run_owner(store, &caller.party, run)?;
    if owner == RunOwner::Another {
        return Err(ApiError::OtherPartysRun { run: run.to_owned(), registering: create });
    }
    let tree = party_tree(state, &caller.party)?;
    let folder = if create {
        tree.run_folder(run, caller.policy.create_runs, caller.policy.limits.max_runs)
    } else {
        tree.existing_run_folder(run).and_then(|f| f.ok_or(ConfineError::RunMissing { run: run.to_owned() }))
    };
    let folder = folder.map_err(|e| match e {
        ConfineError::RunMissing { .. } if !create => ApiError::NoSuchRun { run: run.to_owned() },
        e => ApiError::Confine(e),
    })?;
    if owner == RunOwner::Asker {
        return Ok((tree, folder)); // no write to the store on the hot path of an upload
    }
    match access::claim_run(store, &caller.party, run) {
        Ok(()) => Ok((tree, folder)),
        Err(ClaimError::Owned(run)) => Err(ApiError::OtherPartysRun { run, registering: false }),
        Err(ClaimError::Store(e)) => Err(e.into()),
    }
}

/// The party's tree beneath the replica root.
fn party_tree(state: &AppState, party: &str) -> Result<PartyTree, ApiError> {
    state.replica_root().and_then(|root| PartyTree::open_in(&root, party)).map_err(|e| {
        Line::of(SERVE).field("event", "confine-error").field("party", party).field("error", e).to_stderr();
        ApiError::NoTree
    })
}

// ---- register ----

#[derive(Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    template_name: Option<serde_json::Value>,
    ecosystem_variant: Option<serde_json::Value>,
    started_at: Option<serde_json::Value>,
}

/// The most a registration field may hold: the metadata is kept in the state store, outside the party's quota, and
/// shown by every `/status`.
pub const REGISTRATION_FIELD_LIMIT: usize = 1024;

impl Registration {
    /// templateName, ecosystemVariant and startedAt as text, each at most `REGISTRATION_FIELD_LIMIT` bytes.
    fn fields(&self) -> Result<[Option<String>; 3], ApiError> {
        let text = |field: &'static str, value: &Option<serde_json::Value>| {
            let text = match value {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            if text.len() > REGISTRATION_FIELD_LIMIT {
                return Err(ApiError::FieldTooLong { field, limit: REGISTRATION_FIELD_LIMIT });
            }
            Ok(Some(text))
        };
        Ok([
            text("templateName", &self.template_name)?,
            text("ecosystemVariant", &self.ecosystem_variant)?,
            text("startedAt", &self.started_at)?,
        ])
    }
}

/// Claims the run folder for the party, stores its metadata, creates `analysisResults/`.
#[utoipa::path(post, path = "/api/sync/register/{run}", request_body = Registration,
    params(("run" = String, Path, description = "run folder name, ULID_label")),
    responses((status = 201, description = "registered (again: unchanged)"), (status = 401), (status = 403), (status = 409)))]
pub async fn register(
    caller: Caller,
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let body = read_bounded(request, JSON_BODY_LIMIT).await?;
    let registration: Registration = if body.is_empty() {
        Registration { template_name: None, ecosystem_variant: None, started_at: None }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRegistration(e.to_string()))?
    };
    let [template_name, ecosystem_variant, started_at] = registration.fields()?;
    let answer = blocking(&state, move |state, store| {
        // The run folder, its home in the catalog and its analysisResults/ count against max_party_files like any
        // upload's folders.
        let room = Usage { bytes: 0, files: 3 };
        let reserved = state.quota.reserve(&caller.party, &caller.policy.limits, room);
        let reserved = reserved.map_err(|over| quota_refusal(&caller.party, &caller.policy.limits, over))?;
        let created = (|| {
            let (_, folder) = open_run(state, store, &caller, &run, true)?;
            let (home, made) = state.homes()?.find_or_make(&run)?;
            let (_, results) = open_beneath_counting(&home.fd, &[DEFAULT_SUBDIR], true)
                .map_err(|e| ApiError::Internal(format!("cannot create analysisResults: {e}")))?
                .ok_or_else(|| ApiError::Internal("analysisResults vanished".into()))?;
            Ok::<_, ApiError>((folder, u64::from(made) + results))
        })();
        let added = match &created {
            Ok((folder, made)) => Usage { bytes: 0, files: u64::from(folder.created) + made },
            Err(_) => Usage::default(),
        };
        state.quota.settle(&reserved, added, Usage::default());
        let (folder, _) = created?;
        store.set_run_metadata(&run, template_name.as_deref(), ecosystem_variant.as_deref(), started_at.as_deref())?;
        Ok(serde_json::json!({ "run": run, "party": caller.party, "created": folder.created }))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
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
    caller: Caller,
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
    Query(query): Query<SubdirQuery>,
) -> Response {
    let listed = blocking(&state, move |state, store| {
        let subdir = query.subdir.unwrap_or_else(|| DEFAULT_SUBDIR.to_owned());
        let segments = check_subdir(&subdir)?;
        open_run(state, store, &caller, &run, false)?;
        let Some(home) = state.homes()?.find(&run)? else { return Ok(None) };
        let Some(dir) = open_beneath(&home.fd, &segments, false).map_err(|e| ApiError::Internal(e.to_string()))? else {
            return Ok(None);
        };
        list_folder(state, store, &caller, &run, &subdir, &dir).map(Some)
    })
    .await;
    let no_files = || serde_json::Map::from_iter([("files".to_owned(), serde_json::json!([]))]);
    match listed {
        Ok(Some(files)) => Json(serde_json::json!({ "files": files })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, Json(no_files())).into_response(),
        Err(error) if error.status() == StatusCode::NOT_FOUND => error.answer(no_files()),
        Err(error) => error.into_response(),
    }
}

/// Each regular file of the folder with its SHA-256: from the records when size and mtime still match, else hashed
/// now and remembered.
fn list_folder(
    state: &AppState,
    store: &Store,
    caller: &Caller,
    run: &str,
    subdir: &str,
    dir: &OwnedFd,
) -> Result<Vec<Listed>, ApiError> {
    let known: HashMap<String, FileRecord> =
        store.files_in(&caller.party, run, subdir)?.into_iter().map(|f| (f.name.clone(), f)).collect();
    let mut files = Vec::new();
    for (name, stat) in sys::list_dir(dir).map_err(|e| ApiError::Internal(e.to_string()))? {
        if !sys::is_regular_file(&stat) || name.starts_with(landing::TEMP_PREFIX) {
            continue;
        }
        let size = stat.st_size.max(0) as u64;
        let mtime_ns = stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec;
        let sha256 = match known.get(&name) {
            Some(record) if record.size == size && record.mtime_ns == mtime_ns => record.sha256.clone(),
            // Put there some other way (or changed since): hash it once, remember it.
            _ => {
                let sha256 = hash_file(dir, &name).unwrap_or_default();
                state.records.remember(FileRecord {
                    party: caller.party.clone(),
                    run: run.to_owned(),
                    subdir: subdir.to_owned(),
                    name: name.clone(),
                    size,
                    mtime_ns,
                    sha256: sha256.clone(),
                    stored_at: now(),
                });
                sha256
            }
        };
        files.push(Listed { modified: rfc3339_ns(mtime_ns), name, size, sha256 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

fn hash_file(dir: &OwnedFd, name: &str) -> std::io::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = sys::open_file_in(dir, name)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

// ---- status ----

/// The party's view of a run: each replica's size and last push, analysis file counts and the newest upload.
#[utoipa::path(get, path = "/api/sync/status/{run}", params(("run" = String, Path)),
    responses((status = 200), (status = 401), (status = 404)))]
pub async fn status(
    caller: Caller,
    State(state): State<Shared>,
    UrlPath(run): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = blocking(&state, move |state, store| {
        let (_, folder) = open_run(state, store, &caller, &run, false)?;
        state.records.settle(); // counts include every upload answered before this request
        let pushes = store.last_syncs(&caller.party, &run)?;
        let verdicts = store.verifications(Some(&run))?;
        let replicas: Vec<_> = caller
            .policy
            .databases
            .iter()
            .map(|database| {
                serde_json::json!({
                    "database": database,
                    "bytes": folder.database_size(database),
                    "last_push": pushes.iter().find(|p| &p.database == database).map(|p| serde_json::json!({
                        "at": rfc3339(p.started_at), "seconds": p.seconds, "exit": p.exit,
                        "ok": p.exit == "0", "replica_bytes": p.replica_bytes })),
                    "verification": verdicts.iter().find(|v| &v.database == database)
                        .map(crate::catalog::VerificationView::from),
                })
            })
            .collect();
        let analysis: Vec<_> = store
            .file_counts(&caller.party, &run)?
            .into_iter()
            .map(|(subdir, files, newest)| {
                serde_json::json!({ "subdir": subdir, "files": files, "newest_upload": rfc3339(newest) })
            })
            .collect();
        let registered = store.run(&run)?;
        let published = crate::catalog::is_published(&state.config, &run);
        Ok(serde_json::json!({ "run": run, "party": caller.party, "published": published, "replicas": replicas,
            "analysis": analysis,
            "template_name": registered.as_ref().and_then(|r| r.template_name.clone()),
            "ecosystem_variant": registered.as_ref().and_then(|r| r.ecosystem_variant.clone()),
            "started_at": registered.and_then(|r| r.started_at) }))
    })
    .await?;
    Ok(Json(answer))
}
