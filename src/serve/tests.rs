//! The router in process (tower `oneshot`, no socket, no root): authentication on every route, the rate limit, and
//! another party's run answering as a missing one.

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
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = format!(
            "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\n",
            root.display()
        );
        for folder in ["replicas", "policies", "state"] {
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
