//! `/metrics`: Prometheus text of the service's counters (requests by route, bytes, refusals by reason, slow key
//! hashes) and of the pushes the gates recorded in the ledger, by outcome. Served on `metrics_listen` alone when the
//! configuration names one.

use super::state::{blocking, Shared};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counters by `name{labels}`.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
    /// Counters of seconds (what verifications took, say).
    seconds: Mutex<BTreeMap<String, f64>>,
}

impl Metrics {
    pub fn add(&self, name_and_labels: &str, by: u64) {
        if let Ok(mut counters) = self.counters.lock() {
            match counters.get_mut(name_and_labels) {
                Some(count) => *count += by,
                None => {
                    counters.insert(name_and_labels.to_owned(), by);
                }
            }
        }
    }

    /// Adds `seconds` to a counter of seconds.
    pub fn add_seconds(&self, name_and_labels: &str, seconds: f64) {
        if let Ok(mut counters) = self.seconds.lock() {
            *counters.entry(name_and_labels.to_owned()).or_default() += seconds;
        }
    }

    fn render(&self, pushes: &[(String, u64)]) -> String {
        let mut out = String::new();
        let counters = self.counters.lock().map(|c| c.clone()).unwrap_or_default();
        let seconds = self.seconds.lock().map(|c| c.clone()).unwrap_or_default();
        let mut declared = BTreeSet::new();
        let lines = counters
            .iter()
            .map(|(key, value)| (key, value.to_string()))
            .chain(seconds.iter().map(|(key, value)| (key, format!("{value:.6}"))));
        for (key, value) in lines {
            let name = key.split('{').next().unwrap_or(key);
            if declared.insert(name.to_owned()) {
                let _ = writeln!(out, "# TYPE {name} counter");
            }
            let _ = writeln!(out, "{key} {value}");
        }
        out.push_str("# TYPE evosync_pushes_total counter\n");
        for (exit, count) in pushes {
            let _ = writeln!(out, "evosync_pushes_total{{outcome=\"{}\"}} {count}", label(exit));
        }
        out
    }
}

/// A label value made safe for the exposition format.
pub fn label(value: &str) -> String {
    value.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect()
}

/// Middleware on the workers' routes: counts each request by route, whatever becomes of it.
pub async fn count_requests(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(path) = request.extensions().get::<MatchedPath>() {
        state.metrics.add(&format!("evosync_http_requests_total{{route=\"{}\"}}", route_name(path.as_str())), 1);
    }
    next.run(request).await
}

fn route_name(path: &str) -> &'static str {
    match path {
        "/api/sync/register/{run}" => "register",
        "/api/sync/analysis/{run}/list" => "list",
        "/api/sync/analysis/{run}" => "upload",
        "/api/sync/status/{run}" => "status",
        super::tunnel::PATH => "tunnel",
        _ => "other",
    }
}

/// Prometheus text: requests, bytes, refusals by reason, pushes by outcome.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain")))]
pub async fn metrics(State(state): State<Shared>) -> Response {
    let pushes = blocking(&state, |_, store| Ok(store.pushes_by_exit()?)).await.unwrap_or_default();
    let mut body = state.metrics.render(&pushes);
    let _ = writeln!(
        body,
        "# TYPE evosync_slow_hashes_total counter\nevosync_slow_hashes_total {}",
        state.auth.verifier.slow_hashes()
    );
    super::tunnel::render_open(&state, &mut body);
    if let Some(pipeline) = state.pipeline.get() {
        let _ = writeln!(body, "# TYPE evosync_catalog_queue gauge\nevosync_catalog_queue {}", pipeline.queue_length());
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response()
}
