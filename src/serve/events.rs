//! `/admin/events`: Server-Sent Events of pushes (followed from the ledger the gates write) and of uploads as they
//! happen.

use super::auth::AdminCaller;
use super::state::{blocking, Shared};
use crate::time::rfc3339;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often the ledger is looked at for new pushes.
const LEDGER_POLL: Duration = Duration::from_millis(500);

/// Server-Sent Events of pushes (from the ledger) and uploads as they happen. Admin token required.
#[utoipa::path(get, path = "/admin/events", responses((status = 200, content_type = "text/event-stream")), security(("admin_token" = [])))]
pub async fn events(
    _admin: AdminCaller,
    State(state): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.events.subscribe();
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
        tokio::time::sleep(LEDGER_POLL).await;
        if state.events.receiver_count() == 0 {
            if let Ok(id) = blocking(&state, |_, store| Ok(store.last_ledger_id()?)).await {
                last = id;
            }
            continue;
        }
        let after = last;
        let Ok(rows) = blocking(&state, move |_, store| Ok(store.ledger_after(after, 100)?)).await else { continue };
        for (id, row) in rows {
            last = id;
            state.announce(&serde_json::json!({ "type": "push", "party": row.party, "key": row.key_id,
                "run": row.run, "database": row.database, "at": rfc3339(row.started_at), "seconds": row.seconds,
                "exit": row.exit, "replica_bytes": row.replica_bytes }));
        }
    }
}
