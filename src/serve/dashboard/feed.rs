//! The live feed: what happens on the host as it happens. Pushes and uploads (and the catalog's verdicts,
//! publications and withdrawals) come from the service's event stream (`AppState::events`); refusals come from two
//! places: the service's own, handed over by the refusal middleware (`Feed::refused`), and the gate's, read from the
//! audit trail (`refuse:CODE`) by a follower that runs while anyone watches, as do admin actions.
//!
//! `/dashboard/events` streams them to signed-in pages (Server-Sent Events; the page's script adds each as a row, as
//! text). The stream ends when its session does. `recent` renders the same history on the server, for the first paint
//! and for browsers without JavaScript. The service's refusals are kept in memory only: the newest `RECENT` for the
//! page, and counts per hour and reason for the last day.

use super::pages::{bytes, clip, seconds, when};
use super::session::SignedIn;
use crate::serve::state::{blocking, Shared};
use crate::store::{AuditRecord, Store, StoreError, Transport};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::broadcast;

/// Service refusals kept for the feed's first paint.
const RECENT: usize = 100;
/// How long a message in the feed may be: messages quote what the caller sent.
const MESSAGE_CHARS: usize = 300;
/// How often the audit follower looks for new records.
const AUDIT_POLL: Duration = Duration::from_millis(500);
/// How often an open stream checks that its session (and its admin token) still holds.
const SESSION_RECHECK: Duration = Duration::from_secs(5);
/// Hours of refusal counts kept.
const HOURS_KEPT: i64 = 25;

/// A refusal of the service's own.
#[derive(Debug, Clone)]
struct ServiceRefusal {
    at: i64,
    reason: &'static str,
    status: u16,
    message: String,
    client: Option<String>,
}

pub struct Feed {
    /// Refusals and admin actions, as JSON, for open streams.
    sender: broadcast::Sender<String>,
    recent: Mutex<VecDeque<ServiceRefusal>>,
    /// Service refusals per (hour, reason).
    hourly: Mutex<BTreeMap<(i64, &'static str), u64>>,
    pub(super) following: AtomicBool,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed {
            sender: broadcast::channel(256).0,
            recent: Mutex::new(VecDeque::new()),
            hourly: Mutex::new(BTreeMap::new()),
            following: AtomicBool::new(false),
        }
    }
}

impl Feed {
    /// A refusal the service answered (called by the refusal middleware for every one).
    pub fn refused(&self, reason: &'static str, status: u16, message: &str, client: Option<SocketAddr>) {
        let at = crate::time::now();
        let refusal = ServiceRefusal {
            at,
            reason,
            status,
            message: clip(message, MESSAGE_CHARS),
            client: client.map(|c| c.ip().to_string()),
        };
        if self.sender.receiver_count() > 0 {
            let event = serde_json::json!({ "type": "refusal", "source": "service", "reason": reason,
                "status": status, "message": refusal.message, "client": refusal.client, "at": at });
            let _ = self.sender.send(event.to_string());
        }
        if let Ok(mut hourly) = self.hourly.lock() {
            *hourly.entry((at / 3600, reason)).or_default() += 1;
            let oldest = at / 3600 - HOURS_KEPT;
            while hourly.first_key_value().is_some_and(|((hour, _), _)| *hour < oldest) {
                hourly.pop_first();
            }
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(refusal);
        }
    }

    /// The service's refusals since `since`, by reason, most frequent first.
    pub fn service_refusals_since(&self, since: i64) -> Vec<(String, u64)> {
        let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
        if let Ok(hourly) = self.hourly.lock() {
            for ((hour, reason), count) in hourly.iter() {
                if *hour * 3600 + 3599 >= since {
                    *counts.entry(reason).or_default() += count;
                }
            }
        }
        let mut counts: Vec<(String, u64)> = counts.into_iter().map(|(r, c)| (r.to_owned(), c)).collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }

    pub(super) fn subscribe(&self, state: &Shared) -> broadcast::Receiver<String> {
        let receiver = self.sender.subscribe();
        if !self.following.swap(true, Ordering::AcqRel) {
            tokio::spawn(follow_audit(state.clone()));
        }
        receiver
    }
}

/// Follows the audit trail for the gate's refusals and admin actions while anyone watches the feed.
async fn follow_audit(state: Shared) {
    let mut last = last_audit_seq(&state).await.unwrap_or(0);
    loop {
        tokio::time::sleep(AUDIT_POLL).await;
        let feed = &state.dashboard.feed;
        if feed.sender.receiver_count() == 0 {
            // Nobody watches: stop, and let the next page to subscribe start a follower again. A page that
            // subscribed just now saw `following` still set and started none: this one goes on for it.
            feed.following.store(false, Ordering::Release);
            if feed.sender.receiver_count() == 0 || feed.following.swap(true, Ordering::AcqRel) {
                return;
            }
            if let Ok(seq) = last_audit_seq(&state).await {
                last = seq;
            }
            continue;
        }
        let after = last;
        let Ok(records) = blocking(&state, move |_, store| Ok(store.audit(after, 200)?)).await else { continue };
        for record in records {
            last = record.seq;
            if let Some(event) = audit_event(&record) {
                let _ = feed.sender.send(event.to_string());
            }
        }
    }
}

async fn last_audit_seq(state: &Shared) -> Result<i64, crate::serve::error::ApiError> {
    blocking(state, |_, store| Ok(store.last_audit_seq()?)).await
}

/// Who acts for a person: the command line, the admin API, the dashboard.
const PEOPLE: [&str; 3] = ["cli:", "http:", "dashboard:"];

/// What the feed shows of an audit record: the gate's refusals, and what administrators did. The gate's other records
/// are the pushes the ledger reports, and the catalog's (verdicts, publications, withdrawals) come as events of their
/// own.
fn audit_event(record: &AuditRecord) -> Option<serde_json::Value> {
    if let Some(code) = record.outcome.strip_prefix("refuse:") {
        return Some(serde_json::json!({ "type": "refusal", "source": "gate", "reason": code,
            "party": record.party, "message": clip(&record.detail, MESSAGE_CHARS), "at": record.at }));
    }
    if !PEOPLE.iter().any(|prefix| record.actor.starts_with(prefix)) {
        return None;
    }
    Some(serde_json::json!({ "type": "admin", "action": record.action, "actor": record.actor,
        "party": record.party, "subject": record.subject, "at": record.at }))
}

/// How a push came, when not over plain SSH.
fn tunnelled(transport: Transport) -> &'static str {
    match transport {
        Transport::Ssh => "",
        Transport::WebSocket => " (through the tunnel)",
    }
}

/// A record of note as a row of the server-rendered feed (`recent_notable_audit` chose it).
fn audit_item(record: AuditRecord) -> FeedItem {
    let detail = clip(&record.detail, MESSAGE_CHARS);
    let (kind, outcome, run, text) = if let Some(code) = record.outcome.strip_prefix("refuse:") {
        ("refusal", "bad", String::new(), format!("gate, {code}: {detail}"))
    } else if record.action == "publish" {
        ("published", "ok", record.subject, "published in the catalog".to_owned())
    } else if record.action == "withdraw" {
        ("withdrawn", "bad", record.subject, format!("withdrawn from the catalog: {detail}"))
    } else {
        ("admin", "ok", String::new(), format!("{} {} by {}", record.action, record.subject, record.actor))
    };
    FeedItem { at: record.at, when: when(record.at), kind, outcome, party: record.party, run, text }
}

/// `/dashboard/events`: the feed as Server-Sent Events, while the session holds.
pub async fn events(
    session: SignedIn,
    State(state): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let watch = Watch {
        events: state.events.subscribe(),
        refusals: state.dashboard.feed.subscribe(&state),
        recheck: tokio::time::interval(SESSION_RECHECK),
        state,
        session,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        let data = watch.next().await?;
        Some((Ok(Event::default().data(data)), watch))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

struct Watch {
    events: broadcast::Receiver<String>,
    refusals: broadcast::Receiver<String>,
    recheck: tokio::time::Interval,
    state: Shared,
    session: SignedIn,
}

impl Watch {
    /// The next event, or `None` when the stream ends (the session ended, or the service is stopping).
    async fn next(&mut self) -> Option<String> {
        loop {
            let received = tokio::select! {
                received = self.events.recv() => received,
                received = self.refusals.recv() => received,
                _ = self.recheck.tick() => {
                    if !self.session_holds() {
                        return None;
                    }
                    continue;
                }
            };
            match received {
                Ok(data) => return Some(data),
                // Too slow a reader, or a flood of refusals: say how many rows the page lacks, rather than nothing.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(
                        serde_json::json!({ "type": "lagged", "missed": missed,
                        "at": crate::time::now() })
                        .to_string(),
                    )
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    fn session_holds(&self) -> bool {
        let now = crate::time::now();
        if !self.state.dashboard.sessions.keep_open(&self.session, now) {
            return false;
        }
        let token = self.state.pool.with(|store| store.admin_token(&self.session.token_id));
        matches!(token, Ok(Some(token)) if crate::access::KeyState::of_admin_token(&token, now).is_active())
    }
}

/// One row of the feed as the server renders it.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub at: i64,
    pub when: String,
    /// `push`, `upload`, `refusal`, `admin`.
    pub kind: &'static str,
    /// `ok` or `bad`: how the row is coloured.
    pub outcome: &'static str,
    pub party: String,
    pub run: String,
    pub text: String,
}

/// The newest `limit` events the store and the service's memory know of, newest first.
pub fn recent(state: &Shared, store: &Store, limit: usize) -> Result<Vec<FeedItem>, StoreError> {
    let each = limit as u32;
    let mut items = Vec::new();
    for push in store.recent_pushes(each)? {
        let row = push.row;
        let ok = row.exit == "0";
        let size = row.replica_bytes.map(bytes).unwrap_or_else(|| "no replica".into());
        let verdict = match (push.verified, push.verify_reason) {
            (Some(true), _) => ", verified".to_owned(),
            (Some(false), reason) => format!(", verification failed: {}", reason.unwrap_or_default()),
            (None, _) => String::new(),
        };
        items.push(FeedItem {
            at: row.started_at,
            when: when(row.started_at),
            kind: "push",
            outcome: if ok && !verdict.contains("failed") { "ok" } else { "bad" },
            party: row.party,
            run: row.run,
            text: format!(
                "{}: exit {} after {}, replica {size}{verdict}{}",
                row.database,
                row.exit,
                seconds(row.seconds),
                tunnelled(row.transport)
            ),
        });
    }
    for file in store.recent_uploads(each)? {
        items.push(FeedItem {
            at: file.stored_at,
            when: when(file.stored_at),
            kind: "upload",
            outcome: "ok",
            party: file.party,
            run: file.run,
            text: format!("{}/{} ({})", file.subdir, file.name, bytes(file.size)),
        });
    }
    items.extend(store.recent_notable_audit(each)?.into_iter().map(audit_item));
    let service: Vec<ServiceRefusal> =
        state.dashboard.feed.recent.lock().map(|recent| recent.iter().cloned().collect()).unwrap_or_default();
    for refusal in service {
        let client = refusal.client.map(|c| format!(" from {c}")).unwrap_or_default();
        items.push(FeedItem {
            at: refusal.at,
            when: when(refusal.at),
            kind: "refusal",
            outcome: "bad",
            party: String::new(),
            run: String::new(),
            text: format!("service, {} ({}){client}: {}", refusal.reason, refusal.status, refusal.message),
        });
    }
    items.sort_by_key(|item| std::cmp::Reverse(item.at));
    items.truncate(limit);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_refusals_are_counted_per_reason_and_kept_bounded() {
        let feed = Feed::default();
        for n in 0..(RECENT + 20) {
            feed.refused(if n % 3 == 0 { "csrf" } else { "admin-token" }, 401, &"x".repeat(1000), None);
        }
        assert_eq!(feed.recent.lock().unwrap().len(), RECENT);
        assert!(feed.recent.lock().unwrap().iter().all(|r| r.message.chars().count() <= MESSAGE_CHARS + 1));
        let counts = feed.service_refusals_since(crate::time::now() - 60);
        assert_eq!(counts, [("admin-token".to_owned(), 80), ("csrf".to_owned(), 40)]);
        assert!(feed.service_refusals_since(crate::time::now() + 7200).is_empty());
        feed.hourly.lock().unwrap().insert((0, "old"), 5);
        feed.refused("csrf", 403, "again", None);
        assert!(!feed.hourly.lock().unwrap().contains_key(&(0, "old")), "counts older than a day go");
    }

    #[test]
    fn the_gates_refusals_and_admin_actions_are_shown_and_its_other_records_are_not() {
        let record = |action: &str, outcome: &str| AuditRecord {
            seq: 1,
            at: 5,
            actor: "a".into(),
            action: action.into(),
            party: "acme".into(),
            subject: "s".into(),
            outcome: outcome.into(),
            detail: "d".into(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        assert_eq!(audit_event(&record("gate", "refuse:run")).unwrap()["reason"], "run");
        assert!(audit_event(&record("gate", "allow")).is_none());
        assert!(audit_event(&record("gate", "done:0")).is_none());
        assert!(audit_event(&record("verify", "refuse")).is_none(), "the catalog's come as events");
        let by = |actor: &str| AuditRecord { actor: actor.into(), ..record("ssh-key.revoke", "ok") };
        assert_eq!(audit_event(&by("dashboard:0123")).unwrap()["type"], "admin");
        assert_eq!(audit_event(&by("cli:root")).unwrap()["actor"], "cli:root");
    }
}
