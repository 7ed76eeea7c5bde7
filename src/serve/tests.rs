//! The router in process (tower `oneshot`, no socket, no root): authentication on every route, the rate limit,
//! another party's run answering as a missing one, the body and form limits, admin token states, failed key checks
//! meeting 429 before any slow hash, and `/metrics` moving to its own listener.

use super::router;
use super::state::{AppState, Shared};
use crate::admin::Admin;
use crate::config::Config;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_router";
const OTHER_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DS_theirs";
const MISSING_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DT_none";

struct Rig {
    _dir: tempfile::TempDir,
    state: Shared,
    acme_key: String,
    beta_key: String,
    admin_token: String,
}

impl Rig {
    fn new(acme_extra: &str) -> Rig {
        Rig::with_config(acme_extra, "")
    }

    fn with_config(acme_extra: &str, config_extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = format!(
            "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\n{config_extra}",
            root.display()
        );
        for folder in ["replicas", "policies", "state", "catalog", "catalog-verified"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        let config_path = root.join("evosync.yaml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::parse(&text).unwrap();
        let admin = Admin::open(&config, &config_path, "test".into()).unwrap();
        let mut keys = Vec::new();
        for (party, extra) in [("acme", acme_extra), ("beta", "")] {
            admin.add_party(party).unwrap();
            let policy = format!("party: {party}\npush: true\ncreate_runs: true\n{extra}");
            std::fs::write(config.policy_path(party), policy).unwrap();
            keys.push(admin.issue_api_key(party, None, None).unwrap().api_key);
        }
        let admin_token = admin.issue_admin_token(None, None).unwrap().admin_token;
        drop(admin);
        let state = AppState::new(config, config_path);
        Rig { _dir: dir, state, beta_key: keys.pop().unwrap(), acme_key: keys.pop().unwrap(), admin_token }
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, String) {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(seconds) = retry_after {
            text.push_str(&format!("\nretry-after: {seconds}"));
        }
        (status, text)
    }

    async fn as_party(&self, key: &str, method: &str, path: &str) -> (StatusCode, String) {
        self.call(method, path, &[("X-Sync-API-Key", key)], "").await
    }
}

fn worker_routes(run: &str) -> Vec<(&'static str, String)> {
    vec![
        ("POST", format!("/api/sync/register/{run}")),
        ("GET", format!("/api/sync/analysis/{run}/list")),
        ("POST", format!("/api/sync/analysis/{run}?filename=a.json")),
        ("GET", format!("/api/sync/status/{run}")),
    ]
}

const ADMIN_ROUTES: [(&str, &str); 17] = [
    ("GET", "/admin/parties"),
    ("POST", "/admin/parties"),
    ("GET", "/admin/parties/acme"),
    ("POST", "/admin/parties/acme/disable"),
    ("POST", "/admin/parties/acme/enable"),
    ("GET", "/admin/ssh-keys"),
    ("POST", "/admin/ssh-keys"),
    ("DELETE", "/admin/ssh-keys/x"),
    ("GET", "/admin/api-keys"),
    ("POST", "/admin/api-keys"),
    ("DELETE", "/admin/api-keys/x"),
    ("POST", "/admin/authorized-keys/write"),
    ("GET", "/admin/authorized-keys/check"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/runs"),
    ("GET", "/admin/events"),
    ("GET", "/admin/parties?party=acme"),
];

#[tokio::test]
async fn every_route_asks_who_is_calling() {
    let rig = Rig::new("");
    let forged = {
        let (id, _) = rig.acme_key.trim_start_matches("evs_").split_once('_').unwrap();
        format!("evs_{id}_{}", "1".repeat(64))
    };
    for (method, path) in worker_routes(RUN) {
        for key in [None, Some("nonsense"), Some(forged.as_str()), Some(rig.admin_token.as_str())] {
            let headers: Vec<(&str, &str)> = key.map(|k| ("X-Sync-API-Key", k)).into_iter().collect();
            let (status, body) = rig.call(method, &path, &headers, "").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with {key:?}: {body}");
        }
    }
    for (method, path) in ADMIN_ROUTES {
        let (status, body) = rig.call(method, path, &[], "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {body}");
        let as_worker = format!("Bearer {}", rig.acme_key);
        let (status, _) = rig.call(method, path, &[("Authorization", &as_worker)], "{}").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} with a party's API key");
    }
    let bearer = format!("Bearer {}", rig.admin_token);
    assert_eq!(rig.call("GET", "/admin/parties", &[("Authorization", &bearer)], "").await.0, StatusCode::OK);
    assert_eq!(rig.as_party(&rig.acme_key, "POST", &format!("/api/sync/register/{RUN}")).await.0, StatusCode::CREATED);

    // Each refusal was counted by its reason, whatever the handler.
    let (_, metrics) = rig.call("GET", "/metrics", &[], "").await;
    assert!(metrics.contains("evosync_refusals_total{reason=\"no-key\"} 4"), "{metrics}");
    assert!(metrics.contains("evosync_refusals_total{reason=\"bad-key\"} 12"), "{metrics}");
    assert!(metrics.contains("evosync_refusals_total{reason=\"admin-token\"} 34"), "{metrics}");
}

#[tokio::test]
async fn the_rate_limit_comes_with_the_caller() {
    let rig = Rig::new("uploads:\n  requests_per_second: 2\n");
    let status_path = format!("/api/sync/status/{MISSING_RUN}");
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(rig.as_party(&rig.acme_key, "GET", &status_path).await);
    }
    let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(limited.len() >= 2, "{answers:?}");
    assert!(limited.iter().all(|(_, body)| body.contains("retry-after: ") && body.contains("too many requests")));
    // Another party has a bucket of its own.
    assert_eq!(rig.as_party(&rig.beta_key, "GET", &status_path).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_partys_run_answers_as_a_missing_one() {
    let rig = Rig::new("");
    assert_eq!(
        rig.as_party(&rig.beta_key, "POST", &format!("/api/sync/register/{OTHER_RUN}")).await.0,
        StatusCode::CREATED
    );
    for ((method, theirs), (_, missing)) in worker_routes(OTHER_RUN).into_iter().zip(worker_routes(MISSING_RUN)) {
        let (status, body) = rig.as_party(&rig.acme_key, method, &theirs).await;
        if theirs.contains("/register/") {
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            continue;
        }
        let (missing_status, missing_body) = rig.as_party(&rig.acme_key, method, &missing).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {theirs}: {body}");
        assert_eq!(
            (status, body.replace(OTHER_RUN, "RUN")),
            (missing_status, missing_body.replace(MISSING_RUN, "RUN"))
        );
    }
    assert!(!rig._dir.path().join("replicas/acme").join(OTHER_RUN).exists(), "nothing was made for acme");
}

/// A multipart body with boundary `XyZ`: `(field name, file name, content)` per part.
fn form(parts: &[(&str, Option<&str>, &str)]) -> String {
    let mut body = String::new();
    for (name, filename, content) in parts {
        let filename = filename.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
        body.push_str(&format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n{content}\r\n"
        ));
    }
    body.push_str("--XyZ--\r\n");
    body
}

#[tokio::test]
async fn bodies_fields_and_forms_are_bounded_and_say_which_limit() {
    let rig = Rig::new("uploads:\n  max_parts_per_request: 2\n");
    let key = [("X-Sync-API-Key", rig.acme_key.as_str())];
    let register = format!("/api/sync/register/{RUN}");
    let (status, body) =
        rig.call("POST", &register, &key, &format!("{{\"templateName\":\"{}\"}}", "t".repeat(70_000))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("64KiB limit"), "{body}");
    let (status, body) =
        rig.call("POST", &register, &key, &format!("{{\"templateName\":\"{}\"}}", "t".repeat(1025))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("templateName is over the 1KiB limit"), "{body}");
    let (status, body) =
        rig.call("POST", &register, &key, &format!("{{\"startedAt\":[\"{}\"]}}", "s".repeat(1100))).await;
    assert!(status == StatusCode::BAD_REQUEST && body.contains("startedAt"), "{body}");
    assert_eq!(rig.call("POST", &register, &key, r#"{"templateName":"CMA-MAE"}"#).await.0, StatusCode::CREATED);

    let bearer = format!("Bearer {}", rig.admin_token);
    let (status, body) = rig
        .call(
            "POST",
            "/admin/parties",
            &[("Authorization", &bearer)],
            &format!("{{\"name\":\"{}\"}}", "a".repeat(70_000)),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    let upload = format!("/api/sync/analysis/{RUN}");
    let headers = [("X-Sync-API-Key", rig.acme_key.as_str()), ("Content-Type", "multipart/form-data; boundary=XyZ")];
    let long_subdir = format!("analysisResults/{}", "a".repeat(5000));
    let cases: [(String, StatusCode, &str); 5] = [
        (
            form(&[("subdir", None, &long_subdir), ("file", Some("a.json"), "{}")]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "4KiB limit for a text field",
        ),
        (
            form(&[("file", Some("a.json"), "{}"), ("file", Some("b.json"), "{}"), ("file", Some("c.json"), "{}")]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 2 file parts",
        ),
        (
            form(&[("subdir", None, "analysisResults/a/b/c/d/e"), ("file", Some("a.json"), "{}")]),
            StatusCode::BAD_REQUEST,
            "at most 4 folders",
        ),
        (
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: {}\r\n\r\n", "p".repeat(9000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "8192-byte limit for part headers",
        ),
        (
            "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.json\"\r\n\r\n{}".to_owned(),
            StatusCode::BAD_REQUEST,
            "ended before its closing boundary",
        ),
    ];
    for (body, expected, says) in cases {
        let (status, answer) = rig.call("POST", &upload, &headers, &body).await;
        assert_eq!(status, expected, "{answer}");
        assert!(answer.contains(says), "{says}: {answer}");
    }
    let (status, answer) = rig
        .call(
            "POST",
            &upload,
            &headers,
            &form(&[("subdir", None, "analysisResults/a/b/c/d"), ("file", Some("a.json"), "{}")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "four folders deep is fine: {answer}");
}

#[tokio::test]
async fn revoked_and_expired_admin_tokens_are_refused_on_their_next_request() {
    let rig = Rig::new("");
    let config = rig.state.config.clone();
    let admin = Admin::open(&config, &rig.state.config_path, "test".into()).unwrap();
    let issued = admin.issue_admin_token(Some("ops"), None).unwrap();
    let bearer = format!("Bearer {}", issued.admin_token);
    let headers = [("Authorization", bearer.as_str())];
    let call = || rig.call("GET", "/admin/parties", &headers, "");
    assert_eq!(call().await.0, StatusCode::OK);
    admin
        .store
        .connection()
        .execute("UPDATE admin_tokens SET expires_at = 1 WHERE id = ?1", [&issued.token.id])
        .unwrap();
    let (status, body) = call().await;
    assert!(status == StatusCode::UNAUTHORIZED && body.contains("expired"), "{body}");
    admin.revoke_admin_token(&issued.token.id).unwrap();
    let (status, body) = call().await;
    assert!(status == StatusCode::UNAUTHORIZED && body.contains("revoked"), "{body}");
}

#[tokio::test]
async fn wrong_secrets_meet_429_before_any_slow_hash_and_the_valid_key_stays_served() {
    let rig = Rig::new("");
    let status_path = format!("/api/sync/status/{MISSING_RUN}");
    assert_eq!(rig.as_party(&rig.acme_key, "GET", &status_path).await.0, StatusCode::NOT_FOUND, "verified once");
    let (id, _) = rig.acme_key.trim_start_matches("evs_").split_once('_').unwrap();
    let mut answers = Vec::new();
    for n in 0..30u32 {
        answers.push(rig.as_party(&format!("evs_{id}_{n:064x}"), "GET", &status_path).await);
    }
    let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(limited.len() >= 20, "{answers:?}");
    assert!(limited
        .iter()
        .all(|(_, body)| body.contains("too many failed key checks") && body.contains("retry-after:")));
    assert!(rig.state.auth.verifier.slow_hashes() <= 7, "{} slow hashes", rig.state.auth.verifier.slow_hashes());
    assert_eq!(rig.as_party(&rig.acme_key, "GET", &status_path).await.0, StatusCode::NOT_FOUND, "still served");
    let (_, metrics) = rig.call("GET", "/metrics", &[], "").await;
    assert!(metrics.contains("evosync_refusals_total{reason=\"auth-rate\"}"), "{metrics}");
}

#[tokio::test]
async fn metrics_move_to_their_own_listener() {
    let rig = Rig::with_config("", "metrics_listen: 127.0.0.1:9464\n");
    assert_eq!(rig.call("GET", "/metrics", &[], "").await.0, StatusCode::NOT_FOUND);
    let request = Request::builder().uri("/metrics").body(Body::empty()).unwrap();
    let response = super::metrics_router(rig.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let request = Request::builder().uri("/healthz").body(Body::empty()).unwrap();
    let response = super::metrics_router(rig.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
