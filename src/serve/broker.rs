//! The broker socket (`gate_socket`): where the gates ask the service what they may not, or should not, work out
//! alone (`crate::broker` has the protocol and the rule of who may ask what).
//!
//! The caller is known by SO_PEERCRED. Only a gate holding a replica's lock may reserve room for its push, and only
//! the connection that reserved it may report the push's end, while the lock is still held: a party's account cannot
//! make the service check or copy anything by talking to the socket. A connection holds its reservations until it
//! reports the push's end or closes, so a gate that dies gives its room back.

use super::error::ApiError;
use super::state::{blocking, Shared};
use crate::access::{self, Change, ClaimError, KeyState, Reserved, RunOwner};
use crate::broker::{self, Answer, Peer, Request};
use crate::catalog::pipeline::PushAnswer;
use crate::fs::{locks, sys};
use crate::log::{Line, SERVE};
use crate::store::{AuditEntry, LedgerRow};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Gate connections open at once (each holds one push or one refusal).
const MAX_CONNECTIONS: usize = 1024;

/// Binds the socket: refuses when another service answers on it, replaces a stale one.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another evosync serve answers on {}", path.display()),
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; move it away", path.display()),
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // Anyone may connect; what each caller may ask is decided by its SO_PEERCRED (`broker::may_act_for`).
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    Ok(listener)
}

/// Answers the gates until `shutdown` resolves; then, with no new connection taken, lets the pushes in flight report
/// their end for up to `grace` (a push whose gate reserved room and has not finished yet), and returns.
pub async fn serve(
    state: Shared,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let pushing = Arc::new(tokio::sync::Notify::new());
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot { Ok(slot) => slot, Err(_) => return },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else { continue };
        let (state, pushing) = (state.clone(), pushing.clone());
        tokio::spawn(async move {
            answer(state, stream).await;
            drop(slot);
            pushing.notify_waiters();
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + grace;
    while state.pushes_in_flight.load(std::sync::atomic::Ordering::Acquire) > 0 {
        let notified = pushing.notified();
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            Line::of(SERVE)
                .field("event", "shutdown")
                .field("pushes_unreported", state.pushes_in_flight.load(std::sync::atomic::Ordering::Acquire))
                .to_stderr();
            break;
        }
    }
}

/// A push reserved on one connection: its room, its replica, and what the catalog said when it started.
struct Pushing {
    reserved: Reserved,
    run: String,
    database: String,
    current_bytes: u64,
    new_files: u64,
    had_pending: bool,
}

/// One gate's questions, in order, until it closes the connection.
async fn answer(state: Shared, stream: UnixStream) {
    let Ok(credentials) = stream.peer_cred() else { return };
    let uid = credentials.uid();
    let account = tokio::task::spawn_blocking(move || sys::account_of(uid)).await.ok().flatten();
    let peer = Peer { uid, account };
    let mut held: Vec<Pushing> = Vec::new();
    let mut ended: Vec<(String, String, String)> = Vec::new();
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        match (&mut reader).take(broker::MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let answer = match line.pop() {
            Some(b'\n') => match broker::decode::<Request>(&line) {
                Some(request) => handle(&state, &peer, request, &mut held, &mut ended).await,
                None => Answer::Failed { error: "not a request this service knows".into() },
            },
            _ => Answer::Failed { error: "an overlong or unterminated line".into() },
        };
        if writer.write_all(&broker::encode(&answer)).await.is_err() {
            break;
        }
    }
    // The gate has gone, and with it its hold on the replicas' locks: their copies and checks may start.
    if let Some(pipeline) = state.pipeline.get() {
        for (party, run, database) in ended {
            pipeline.queue_job(&party, &run, &database);
        }
    }
    // Whatever the gate did not report back is given back now; what its push changed only a walk knows.
    for pushing in held {
        state.quota.settle(&pushing.reserved, Default::default(), Default::default());
        state.pushes_in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let (state, party) = (state.clone(), pushing.reserved.party.clone());
        tokio::task::spawn_blocking(move || {
            if let Ok(store) = crate::store::Store::open_existing(&state.config.store_path()) {
                super::catalog::walk_one(&state, &store, &party);
            }
        });
    }
}

/// Logs a question the caller may not ask, and answers `Forbidden`.
fn forbidden(peer: &Peer, party: &str, reason: &str) -> Answer {
    Line::of(SERVE)
        .field("event", "broker-refuse")
        .field("uid", peer.uid)
        .field_opt("account", peer.account.as_deref())
        .field("party", party)
        .field("reason", reason)
        .warning()
        .to_stderr();
    Answer::Forbidden { reason: reason.to_owned() }
}

async fn handle(
    state: &Shared,
    peer: &Peer,
    request: Request,
    held: &mut Vec<Pushing>,
    ended: &mut Vec<(String, String, String)>,
) -> Answer {
    let service_uid = sys::effective_ids().0;
    if let Some(party) = request.party() {
        if !broker::may_act_for(peer, service_uid, party) {
            return forbidden(peer, party, "another party's");
        }
    }
    if !request.names_are_plain() {
        return forbidden(peer, request.party().unwrap_or(""), "a run, database or party that is not one plain name");
    }
    match request {
        Request::Reserve { party, run, database, current_bytes, new_files } => {
            reserve(state, peer, (party, run, database), current_bytes, new_files, held).await
        }
        Request::Finish { ledger } => finish(state, peer, ledger, held, ended).await,
        request => ask(state, peer, request, service_uid).await,
    }
}

/// The questions that change nothing but a record.
async fn ask(state: &Shared, peer: &Peer, request: Request, service_uid: u32) -> Answer {
    let trusted = broker::trusted(peer, service_uid);
    let caller = peer.account.clone();
    let result = blocking(state, move |state, store| {
        Ok(match request {
            Request::Key { id } => match store.ssh_key_with_party(&id)? {
                // A party account learns only of its own party's keys.
                Some((key, _)) if !trusted && caller.as_deref() != Some(&*format!("evosync-{}", key.party)) => {
                    Answer::KeyUnknown
                }
                None => Answer::KeyUnknown,
                Some((key, party_enabled)) => match KeyState::of_ssh_key(&key, party_enabled, crate::time::now()) {
                    KeyState::Active => {
                        let _ = store.touch_ssh_key(&key.id);
                        Answer::Key { party: key.party }
                    }
                    state => Answer::KeyRefused { state, party: key.party },
                },
            },
            Request::RunOwner { party, run } => Answer::Owner { owner: access::run_owner(store, &party, &run)? },
            Request::Claim { party, run } => match access::claim_run(store, &party, &run) {
                Ok(()) => Answer::Done,
                Err(ClaimError::Owned(_)) => Answer::RunOwned,
                Err(ClaimError::Store(error)) => return Err(error.into()),
            },
            Request::Audit(record) => {
                let outcome = record.outcome.text();
                let entry = AuditEntry {
                    actor: &record.actor,
                    action: crate::store::AuditAction::Gate,
                    party: &record.party,
                    subject: &record.subject,
                    outcome: &outcome,
                    detail: &record.detail,
                };
                store.append_audit(&entry)?;
                Answer::Done
            }
            Request::Transport { client, server } => {
                super::tunnel::transport_answer(state, trusted, caller.as_deref(), client, server)
            }
            Request::Reserve { .. } | Request::Finish { .. } => unreachable!("answered before"),
        })
    })
    .await;
    result.unwrap_or_else(|error| Answer::Failed { error: error.to_string() })
}

/// Room for a push, asked by a gate that holds the replica's lock; from here the replica counts as being pushed.
async fn reserve(
    state: &Shared,
    peer: &Peer,
    (party, run, database): (String, String, String),
    current_bytes: u64,
    new_files: u64,
    held: &mut Vec<Pushing>,
) -> Answer {
    let locks_dir = state.config.locks_dir();
    let (p, r, d) = (party.clone(), run.clone(), database.clone());
    let lock_held = tokio::task::spawn_blocking(move || locks::replica_is_held(&locks_dir, &p, &r, &d)).await;
    if !matches!(lock_held, Ok(Ok(true))) {
        return forbidden(peer, &party, "reserve without the replica's lock");
    }
    let result = blocking(state, move |state, store| {
        let policy = state.auth.policy(state, &party)?;
        let copy_bytes = state.homes().ok().map_or(0, |homes| copy_size(&homes, &run, &database));
        match state.quota.reserve_push(&party, &policy.limits, current_bytes, copy_bytes, new_files) {
            Ok((fsize_limit, reserved)) => {
                let had_pending = match state.pipeline.get() {
                    Some(pipeline) => pipeline.push_started(store, &party, &run, &database),
                    None => crate::catalog::push::started(store, &party, &run, &database),
                };
                let had_pending = match had_pending {
                    Ok(had_pending) => had_pending,
                    Err(error) => {
                        state.quota.settle(&reserved, Default::default(), Default::default());
                        return Err(error.into());
                    }
                };
                let pushing = Pushing { reserved, run, database, current_bytes, new_files, had_pending };
                Ok((Answer::Granted { fsize_limit }, Some(pushing)))
            }
            Err(over) => Ok((Answer::OverQuota { over }, None)),
        }
    })
    .await;
    match result {
        Ok((answer, Some(pushing))) => {
            state.pushes_in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            held.push(pushing);
            answer
        }
        Ok((answer, None)) => answer,
        Err(error) => Answer::Failed { error: error.to_string() },
    }
}

/// The bytes the verified copy of `run/database` holds (its database file and `-wal`).
fn copy_size(homes: &crate::catalog::home::Homes, run: &str, database: &str) -> u64 {
    let Ok(Some(home)) = homes.find(run) else { return 0 };
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| sys::stat_in(&home.fd, &format!("{database}{suffix}")).ok().flatten())
        .map(|stat| stat.st_size.max(0) as u64)
        .sum()
}

/// A push has ended: accepted only from the connection that reserved it, while its gate still holds the replica's
/// lock. Its room comes back, its ledger row is recorded, and the catalog checks its schema before the gate, which
/// waits for this answer, lets the worker go and the next push of the replica in.
async fn finish(
    state: &Shared,
    peer: &Peer,
    row: LedgerRow,
    held: &mut Vec<Pushing>,
    ended: &mut Vec<(String, String, String)>,
) -> Answer {
    let Some(at) =
        held.iter().position(|p| p.reserved.party == row.party && p.run == row.run && p.database == row.database)
    else {
        return forbidden(peer, &row.party, "finish without a push reserved on this connection");
    };
    let locks_dir = state.config.locks_dir();
    let (p, r, d) = (row.party.clone(), row.run.clone(), row.database.clone());
    let lock_held = tokio::task::spawn_blocking(move || locks::replica_is_held(&locks_dir, &p, &r, &d)).await;
    if !matches!(lock_held, Ok(Ok(true))) {
        return forbidden(peer, &row.party, "finish without the replica's lock");
    }
    let pushing = held.remove(at);
    state.quota.settle(&pushing.reserved, Default::default(), Default::default());
    let grown = row.replica_bytes.map(|after| after as i64 - pushing.current_bytes as i64).unwrap_or_default();
    let files = if row.replica_bytes.is_some() && pushing.current_bytes == 0 { pushing.new_files as i64 } else { 0 };
    state.quota.change(&row.party, Change { bytes: grown, files });
    let had_pending = pushing.had_pending;
    let replica = (row.party.clone(), row.run.clone(), row.database.clone());
    let answer = blocking(state, move |state, store| {
        // A gate never reports a push into another party's run (it refused it first); a verdict recorded under the
        // wrong party would reach that run's publication.
        if access::run_owner(store, &row.party, &row.run)? == RunOwner::Another {
            return Ok(None);
        }
        let ended = match state.pipeline.get() {
            Some(pipeline) => {
                pipeline.push_ended(store, &row, had_pending).map_err(|e| ApiError::Internal(e.to_string()))?
            }
            None => {
                crate::catalog::push::ended(store, &row, had_pending)?;
                PushAnswer::Accepted
            }
        };
        Ok(Some(ended))
    })
    .await;
    state.pushes_in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    match answer {
        Ok(Some(PushAnswer::Accepted)) => {
            ended.push(replica);
            Answer::Done
        }
        Ok(Some(PushAnswer::Refused(reason))) => Answer::Refused { reason },
        Ok(None) => forbidden(peer, "", "a push into another party's run"),
        Err(error) => Answer::Failed { error: error.to_string() },
    }
}
