//! The broker socket (`gate_socket`): where the gates ask the service what they may not, or should not, work out
//! alone (`crate::broker` has the protocol and the rule of who may ask what).
//!
//! The caller is known by SO_PEERCRED. A connection holds the quota reservations it was granted until it reports
//! the push's end or closes, so a gate that dies gives its room back.

use super::state::{blocking, Shared};
use crate::access::{self, ClaimError, KeyState, OverQuota, Reserved, RunOwner};
use crate::broker::{self, Answer, KeyRefusal, Owner, Peer, QuotaRefusal, Request};
use crate::fs::confine::PartyTree;
use crate::fs::sys;
use crate::log::{Line, SERVE};
use crate::store::{AuditEntry, LedgerRow};
use std::path::Path;
use std::sync::Arc;
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

/// Answers the gates until the service stops.
pub async fn serve(state: Shared, listener: UnixListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            answer(state, stream).await;
            drop(slot);
        });
    }
}

/// One gate's questions, in order, until it closes the connection.
async fn answer(state: Shared, stream: UnixStream) {
    let Ok(credentials) = stream.peer_cred() else { return };
    let uid = credentials.uid();
    let account = tokio::task::spawn_blocking(move || sys::account_of(uid)).await.ok().flatten();
    let peer = Peer { uid, account };
    let mut held: Vec<Reserved> = Vec::new();
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
                Some(request) => handle(&state, &peer, request, &mut held).await,
                None => Answer::Failed { error: "not a request this service knows".into() },
            },
            _ => Answer::Failed { error: "an overlong or unterminated line".into() },
        };
        if writer.write_all(&broker::encode(&answer)).await.is_err() {
            break;
        }
    }
    // Whatever the gate did not report back is given back now.
    for reserved in held {
        state.quota.settle(&reserved, Default::default(), Default::default());
        state.quota.stale(&reserved.party);
    }
}

async fn handle(state: &Shared, peer: &Peer, request: Request, held: &mut Vec<Reserved>) -> Answer {
    let service_uid = sys::effective_ids().0;
    if let Some(party) = request.party() {
        if !broker::may_act_for(peer, service_uid, party) {
            Line::of(SERVE)
                .field("event", "broker-refuse")
                .field("uid", peer.uid)
                .field_opt("account", peer.account.as_deref())
                .field("party", party)
                .to_stderr();
            return Answer::Forbidden;
        }
    }
    if !request.names_are_plain() {
        Line::of(SERVE)
            .field("event", "broker-refuse")
            .field("uid", peer.uid)
            .field_opt("account", peer.account.as_deref())
            .field("reason", "names")
            .to_stderr();
        return Answer::Failed { error: "a run, database or party that is not one plain name".into() };
    }
    if let Request::Finish { ledger } = request {
        return finish(state, ledger, held).await;
    }
    let trusted = broker::trusted(peer, service_uid);
    let caller = peer.account.clone();
    let result = blocking(state, move |state, store| {
        Ok(match request {
            Request::Key { id } => match store.ssh_key_with_party(&id)? {
                // A party account learns only of its own party's keys.
                Some((key, _)) if !trusted && caller.as_deref() != Some(&*format!("evosync-{}", key.party)) => {
                    (Answer::KeyRefused { why: KeyRefusal::Unknown, party: None }, None)
                }
                None => (Answer::KeyRefused { why: KeyRefusal::Unknown, party: None }, None),
                Some((key, party_enabled)) => {
                    let answer = match KeyState::of_ssh_key(&key, party_enabled, crate::time::now()) {
                        KeyState::Active => {
                            let _ = store.touch_ssh_key(&key.id);
                            Answer::Key { party: key.party }
                        }
                        KeyState::Revoked => Answer::KeyRefused { why: KeyRefusal::Revoked, party: Some(key.party) },
                        KeyState::Expired => Answer::KeyRefused { why: KeyRefusal::Expired, party: Some(key.party) },
                        KeyState::PartyDisabled => {
                            Answer::KeyRefused { why: KeyRefusal::PartyDisabled, party: Some(key.party) }
                        }
                    };
                    (answer, None)
                }
            },
            Request::RunOwner { party, run } => {
                let owner = match access::run_owner(store, &party, &run)? {
                    RunOwner::Nobody => Owner::Nobody,
                    RunOwner::Asker => Owner::Asker,
                    RunOwner::Another => Owner::Another,
                };
                (Answer::Owner { owner }, None)
            }
            Request::Claim { party, run } => match access::claim_run(store, &party, &run) {
                Ok(()) => (Answer::Done, None),
                Err(ClaimError::Owned(_)) => (Answer::RunOwned, None),
                Err(ClaimError::Store(error)) => return Err(error.into()),
            },
            Request::Reserve { party, current_bytes, new_files, .. } => {
                let policy = state.auth.policy(state, &party)?;
                let tree = state.replica_root().and_then(|root| PartyTree::open_in(&root, &party));
                let tree = tree.map_err(super::error::ApiError::Confine)?;
                let limits = &policy.limits;
                match state.quota.reserve_push(&party, limits, current_bytes, new_files, || tree.usage()) {
                    Ok(Ok((fsize_limit, reserved))) => (Answer::Granted { fsize_limit }, Some(reserved)),
                    Ok(Err(OverQuota::Bytes { used, max })) => {
                        (Answer::OverQuota { why: QuotaRefusal::Bytes, used, max }, None)
                    }
                    Ok(Err(OverQuota::Files { used, max })) => {
                        (Answer::OverQuota { why: QuotaRefusal::Files, used, max }, None)
                    }
                    Err(error) => return Err(super::error::ApiError::Confine(error)),
                }
            }
            Request::Audit { party, actor, subject, outcome, detail } => {
                // A gate's records say they are a gate's, whoever sends them.
                let actor = if actor.starts_with("gate") { actor } else { format!("gate:{actor}") };
                let entry = AuditEntry {
                    actor: &actor,
                    action: "gate",
                    party: &party,
                    subject: &subject,
                    outcome: &outcome,
                    detail: &detail,
                };
                store.append_audit(&entry)?;
                (Answer::Done, None)
            }
            Request::Transport { client, server } => {
                (super::tunnel::transport_answer(state, trusted, caller.as_deref(), client, server), None)
            }
            Request::Finish { .. } => unreachable!("a push's end is answered before"),
        })
    })
    .await;
    match result {
        Ok((Answer::Granted { fsize_limit }, Some(reserved))) => {
            held.push(reserved);
            Answer::Granted { fsize_limit }
        }
        Ok((answer, _)) => answer,
        Err(error) => Answer::Failed { error: error.to_string() },
    }
}

/// A push has ended: its ledger row, its room back, then its replica checked and its run published or withdrawn,
/// all before the gate, which waits for this answer, lets the next push of the replica in.
async fn finish(state: &Shared, row: LedgerRow, held: &mut Vec<Reserved>) -> Answer {
    let (party, run, database) = (row.party.clone(), row.run.clone(), row.database.clone());
    // A gate never reports a push into another party's run (it refused it first); a verdict recorded under the
    // wrong party would reach that run's publication.
    let recorded = blocking(state, move |_, store| {
        if access::run_owner(store, &row.party, &row.run)? == RunOwner::Another {
            return Ok(None);
        }
        Ok(Some(store.record_sync(&row)?))
    });
    let id = match recorded.await {
        Ok(Some(id)) => id,
        Ok(None) => {
            Line::of(SERVE).field("event", "broker-refuse").field("party", &party).field("run", &run).to_stderr();
            return Answer::Failed { error: format!("run {run} is another party's") };
        }
        Err(error) => return Answer::Failed { error: error.to_string() },
    };
    // The push's room comes back; only a walk knows what it added.
    held.retain(|reserved| {
        let mine = reserved.party == party;
        if mine {
            state.quota.settle(reserved, Default::default(), Default::default());
        }
        !mine
    });
    state.quota.stale(&party);
    super::catalog::after_push_then_copy(state, &party, &run, &database, Some(id)).await;
    Answer::Done
}
