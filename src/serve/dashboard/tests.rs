//! The dashboard through the service's whole router, in process (tower `oneshot`, no socket): sign-in and its
//! limits, the session cookie's attributes, sessions ending with their admin token, CSRF and same-origin checks on
//! every action, the security headers, the bounds on cookies, query strings and forms, escaping, and each page
//! rendering with data. The real-browser tests are `tests/dashboard_browser.rs`.

use super::session::{MAX_COOKIE_BYTES, MAX_FORM_BYTES, SESSION_COOKIE, SIGN_IN_COOKIE};
use crate::admin::Admin;
use crate::config::Config;
use crate::serve::router;
use crate::serve::state::{AppState, Shared};
use crate::store::{LedgerRow, Store, Transport};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use tower::ServiceExt;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_dash";
/// A run without replicas yet.
const EMPTY_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DV_empty";
const MARKUP: &str = "<script>alert(1)</script>";

struct Rig {
    dir: tempfile::TempDir,
    state: Shared,
    token: String,
    token_id: String,
    ssh_key_id: String,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    fn cookie_value(&self, name: &str) -> String {
        let cookie = self.set_cookie(name).unwrap_or_else(|| panic!("no {name} cookie: {:?}", self.headers));
        cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_owned()
    }

    fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("a form with a CSRF token") + 19;
        self.body[at..at + 64].to_owned()
    }
}

impl Rig {
    fn new() -> Rig {
        Rig::with_config("")
    }

    fn with_config(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = format!(
            "replica_root: {0}/replicas\npolicies_dir: {0}/policies\nstate_dir: {0}/state\n\
             sqlite3_rsync: /usr/local/bin/sqlite3_rsync\n{extra}",
            root.display()
        );
        for folder in ["replicas", "policies", "state", "catalog", "catalog-verified"] {
            std::fs::create_dir_all(root.join(folder)).unwrap();
        }
        let config_path = root.join("evosync.yaml");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::parse(&text).unwrap();
        let admin = Admin::open(&config, &config_path, "test".into()).unwrap();
        for party in ["acme", "beta"] {
            admin.add_party(party).unwrap();
            std::fs::write(config.policy_path(party), format!("party: {party}\npush: true\ncreate_runs: true\n"))
                .unwrap();
        }
        admin.issue_api_key("acme", Some(MARKUP), None).unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGaU5LeBsL4yM6a0HsXbVnUWqmi8Ctzt0O4bV2Nd3zZK lab";
        let ssh_key_id = admin.add_ssh_key("acme", key, None, None, Some(MARKUP)).unwrap().key.id;
        let issued = admin.issue_admin_token(Some("ops"), None).unwrap();
        admin.store.claim_run("acme", RUN).unwrap();
        admin.store.claim_run("beta", EMPTY_RUN).unwrap();
        admin.store.set_run_metadata(RUN, Some(MARKUP), Some("\"><img src=x>"), Some("2026-11-25")).unwrap();
        admin
            .store
            .record_sync(&LedgerRow {
                party: "acme".into(),
                key_id: Some(ssh_key_id.clone()),
                run: RUN.into(),
                database: "genomes.sqlite".into(),
                started_at: crate::time::now() - 60,
                seconds: 0.4,
                exit: "0".into(),
                replica_bytes: Some(4096),
                transport: Transport::Ssh,
                changed: None,
            })
            .unwrap();
        drop(admin);
        std::fs::create_dir_all(root.join("replicas/acme").join(RUN)).unwrap();
        std::fs::write(root.join("replicas/acme").join(RUN).join("genomes.sqlite"), [0u8; 4096]).unwrap();
        let state = AppState::new(config, config_path);
        Rig { dir, state, token: issued.admin_token, token_id: issued.token.id, ssh_key_id }
    }

    fn store(&self) -> Store {
        Store::open(&self.dir.path().join("state/state.db")).unwrap()
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::from(body.to_owned())).unwrap();
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 8 << 20).await.unwrap();
        Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    /// Signs in with `token` as a browser would: the form first (its double-submit cookie), then the post.
    async fn sign_in_with(&self, token: &str) -> Answer {
        let form = self.call("GET", "/dashboard/sign-in", &[], "").await;
        let nonce = form.cookie_value(SIGN_IN_COOKIE);
        assert_eq!(form.csrf(), nonce, "the form carries the cookie's value");
        let body = serde_urlencoded::to_string([("csrf", nonce.as_str()), ("token", token)]).unwrap();
        let cookie = format!("{SIGN_IN_COOKIE}={nonce}");
        let headers = [("cookie", cookie.as_str()), ("content-type", "application/x-www-form-urlencoded")];
        self.call("POST", "/dashboard/sign-in", &headers, &body).await
    }

    /// A signed-in session: its cookie header and a page's CSRF token.
    async fn session(&self) -> (String, String) {
        let signed_in = self.sign_in_with(&self.token).await;
        assert_eq!(signed_in.status, StatusCode::SEE_OTHER, "{}", signed_in.body);
        let cookie = format!("{SESSION_COOKIE}={}", signed_in.cookie_value(SESSION_COOKIE));
        let page = self.call("GET", "/dashboard/parties", &[("cookie", &cookie)], "").await;
        assert_eq!(page.status, StatusCode::OK);
        (cookie, page.csrf())
    }

    async fn post_form(&self, path: &str, cookie: &str, form: &str, extra: &[(&str, &str)]) -> Answer {
        let mut headers = vec![("cookie", cookie), ("content-type", "application/x-www-form-urlencoded")];
        headers.extend_from_slice(extra);
        self.call("POST", path, &headers, form).await
    }

    fn party_enabled(&self, party: &str) -> bool {
        self.store().party(party).unwrap().unwrap().enabled
    }
}

const PAGES: [&str; 7] = [
    "/dashboard/",
    "/dashboard/parties",
    "/dashboard/runs",
    "/dashboard/feed",
    "/dashboard/audit",
    "/dashboard/events",
    "/dashboard/runs/01KFYA32R09C5KJYNH1SM2W1DR_dash",
];

fn actions(rig: &Rig) -> Vec<String> {
    vec![
        "/dashboard/parties/beta/disable".into(),
        "/dashboard/parties/beta/enable".into(),
        "/dashboard/parties/beta/api-keys".into(),
        format!("/dashboard/ssh-keys/{}/revoke", rig.ssh_key_id),
        "/dashboard/api-keys/0123456789abcdef/revoke".into(),
        format!("/dashboard/runs/{EMPTY_RUN}/reverify"),
        "/dashboard/sign-out".into(),
    ]
}

#[tokio::test]
async fn without_a_session_pages_send_to_the_sign_in_form_and_actions_are_refused() {
    let rig = Rig::new();
    for path in PAGES {
        let answer = rig.call("GET", path, &[], "").await;
        assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/dashboard/sign-in"), "{path}");
        let forged = format!("{SESSION_COOKIE}={}", "ab".repeat(32));
        let answer = rig.call("GET", path, &[("cookie", &forged)], "").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}: an unknown session id");
    }
    for path in actions(&rig) {
        let answer = rig.post_form(&path, "", "csrf=x", &[]).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(answer.body.contains("sign in to the dashboard"), "{path}: {}", answer.body);
        assert!(answer.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    }
    assert!(rig.party_enabled("beta"));
    assert_eq!(rig.call("GET", "/dashboard", &[], "").await.location(), "/dashboard/");
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_refuses_bad_tokens_and_forged_forms() {
    let rig = Rig::new();
    let signed_in = rig.sign_in_with(&rig.token).await;
    assert_eq!((signed_in.status, signed_in.location()), (StatusCode::SEE_OTHER, "/dashboard/"));
    let cookie = signed_in.set_cookie(SESSION_COOKIE).unwrap();
    assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("; Path=/dashboard") && cookie.contains("; Max-Age=28800"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure attribute");
    assert!(signed_in.set_cookie(SIGN_IN_COOKIE).unwrap().contains("Max-Age=0"), "the form's cookie is cleared");

    for bad in
        ["", "nonsense", "evsadm_0123456789abcdef_00", &rig.token.replace(&rig.token[rig.token.len() - 4..], "0000")]
    {
        let answer = rig.sign_in_with(bad).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{bad}");
        assert!(answer.set_cookie(SESSION_COOKIE).is_none());
        assert!(answer.body.contains("id=\"sign-in\"") && answer.body.contains("the admin token is not valid"));
    }
    // The double-submit token: missing or not the cookie's.
    let body = serde_urlencoded::to_string([("csrf", "ab".repeat(32).as_str()), ("token", rig.token.as_str())]);
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let answer = rig.call("POST", "/dashboard/sign-in", &form, &body.unwrap()).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(answer.set_cookie(SESSION_COOKIE).is_none());
    let cross_site = [("content-type", "application/x-www-form-urlencoded"), ("sec-fetch-site", "cross-site")];
    assert_eq!(rig.call("POST", "/dashboard/sign-in", &cross_site, "token=x").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn under_tls_the_cookies_are_secure() {
    // The router does not read the files; `evosync serve` loads them before it listens.
    let rig = Rig::with_config("tls_cert: /etc/evosync/tls/cert.pem\ntls_key: /etc/evosync/tls/key.pem\n");
    let signed_in = rig.sign_in_with(&rig.token).await;
    for name in [SESSION_COOKIE, SIGN_IN_COOKIE] {
        let cookie = signed_in.set_cookie(name).unwrap();
        assert!(cookie.ends_with("; Secure"), "{cookie}");
    }
    let (cookie, csrf) = rig.session().await;
    let signed_out = rig.post_form("/dashboard/sign-out", &cookie, &format!("csrf={csrf}"), &[]).await;
    assert!(signed_out.set_cookie(SESSION_COOKIE).unwrap().ends_with("Max-Age=0; Secure"));
}

#[tokio::test]
async fn behind_a_tls_proxy_the_cookies_are_secure_too() {
    let rig = Rig::with_config("listen: 10.0.0.5:4004\nallow_plain_http: true\n");
    let signed_in = rig.sign_in_with(&rig.token).await;
    for name in [SESSION_COOKIE, SIGN_IN_COOKIE] {
        let cookie = signed_in.set_cookie(name).unwrap();
        assert!(cookie.ends_with("; Secure"), "{cookie}");
    }
}

#[tokio::test]
async fn unknown_dashboard_paths_get_the_error_page_with_the_headers() {
    let rig = Rig::new();
    for (method, path) in [("GET", "/dashboard/nope"), ("GET", "/dashboard/runs/a/b"), ("POST", "/dashboard/x/y")] {
        let answer = rig.call(method, path, &[], "").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.headers.contains_key(header::CONTENT_SECURITY_POLICY), "{path}");
        assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert!(answer.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "{path}");
    }
    assert_eq!(rig.call("GET", "/dashboard/runs", &[], "").await.status, StatusCode::SEE_OTHER, "routes still match");
}

#[tokio::test]
async fn wrong_tokens_at_the_sign_in_form_cost_no_more_hashes_than_the_verifier_allows() {
    let rig = Rig::new();
    let before = rig.state.auth.verifier.slow_hashes();
    for _ in 0..20 {
        assert_eq!(
            rig.sign_in_with("evsadm_0123456789abcdef_".to_owned().as_str()).await.status,
            StatusCode::UNAUTHORIZED
        );
        let unknown = format!("evsadm_0123456789abcdef_{}", "0".repeat(64));
        assert_eq!(rig.sign_in_with(&unknown).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(rig.state.auth.verifier.slow_hashes(), before, "malformed tokens and unknown ids cost no hash");
    let id = &rig.token["evsadm_".len().."evsadm_".len() + 16];
    let mut limited = 0;
    for n in 0..20 {
        let wrong = format!("evsadm_{id}_{:064x}", n);
        let answer = rig.sign_in_with(&wrong).await;
        match answer.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(answer.headers.contains_key(header::RETRY_AFTER));
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    let hashes = rig.state.auth.verifier.slow_hashes() - before;
    assert!(hashes <= 5, "{hashes} slow hashes for 20 wrong secrets");
    assert_eq!(limited, 20 - hashes as usize);
    assert_eq!(rig.state.dashboard.sessions.len(), 0);
}

#[tokio::test]
async fn every_action_needs_the_sessions_csrf_token_and_the_same_origin() {
    let rig = Rig::new();
    let (cookie, csrf) = rig.session().await;
    for path in actions(&rig) {
        for form in ["", "csrf=", &format!("csrf={}", "ab".repeat(32))] {
            let answer = rig.post_form(&path, &cookie, form, &[]).await;
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path} {form}: {}", answer.body);
            assert!(answer.body.contains("CSRF"));
        }
        let form = format!("csrf={csrf}");
        let answer = rig.post_form(&path, &cookie, &form, &[("sec-fetch-site", "cross-site")]).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{path}");
        let foreign = [("host", "127.0.0.1:4004"), ("origin", "http://attacker.example")];
        assert_eq!(rig.post_form(&path, &cookie, &form, &foreign).await.status, StatusCode::FORBIDDEN, "{path}");
    }
    assert!(rig.party_enabled("beta"), "nothing was done");
    assert!(rig.store().ssh_key(&rig.ssh_key_id).unwrap().unwrap().revoked_at.is_none());

    let same_origin =
        [("host", "127.0.0.1:4004"), ("origin", "http://127.0.0.1:4004"), ("sec-fetch-site", "same-origin")];
    let answer = rig.post_form("/dashboard/parties/beta/disable", &cookie, &format!("csrf={csrf}"), &same_origin).await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/dashboard/parties#party-beta"));
    assert!(!rig.party_enabled("beta"));
    let page = rig.call("GET", "/dashboard/parties", &[("cookie", &cookie)], "").await;
    assert!(page.body.contains("Party beta is disabled"), "the action's result is shown once");
    let again = rig.call("GET", "/dashboard/parties", &[("cookie", &cookie)], "").await;
    assert!(!again.body.contains("Party beta is disabled"));
    let audit = rig.store().audit(0, 1000).unwrap();
    let record = audit.iter().find(|r| r.action == "party.disable").unwrap();
    assert_eq!(record.actor, format!("dashboard:{}", rig.token_id), "audited with the token behind the session");

    let form = format!("csrf={csrf}");
    let answer = rig.post_form(&format!("/dashboard/ssh-keys/{}/revoke", rig.ssh_key_id), &cookie, &form, &[]).await;
    assert_eq!(answer.status, StatusCode::SEE_OTHER);
    assert!(rig.store().ssh_key(&rig.ssh_key_id).unwrap().unwrap().revoked_at.is_some());
    let answer = rig.post_form(&format!("/dashboard/runs/{EMPTY_RUN}/reverify"), &cookie, &form, &[]).await;
    assert_eq!(answer.location(), format!("/dashboard/runs/{EMPTY_RUN}"), "{}", answer.body);
    let page = rig.call("GET", answer.location(), &[("cookie", &cookie)], "").await;
    assert!(page.body.contains("has no replica to verify yet"), "{}", page.body);
    let audit = rig.store().audit(0, 1000).unwrap();
    assert!(audit
        .iter()
        .any(|r| r.action == "run.verify" && r.subject == EMPTY_RUN && r.actor.starts_with("dashboard:")));
}

#[tokio::test]
async fn an_issued_api_key_is_shown_once_and_never_cached() {
    let rig = Rig::new();
    let (cookie, csrf) = rig.session().await;
    let form =
        serde_urlencoded::to_string([("csrf", csrf.as_str()), ("name", "worker <7>"), ("expires", "2099-01-31")]);
    let answer = rig.post_form("/dashboard/parties/beta/api-keys", &cookie, &form.unwrap(), &[]).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let at = answer.body.find("evs_").unwrap();
    let key = &answer.body[at..at + 4 + 16 + 1 + 64];
    assert!(crate::secrets::parse("evs_", key).is_some(), "{key}");
    assert!(answer.body.contains("worker &#60;7&#62;") || answer.body.contains("worker &lt;7&gt;"));
    let keys = rig.store().api_keys(Some("beta")).unwrap();
    assert_eq!((keys.len(), keys[0].name.as_str()), (1, "worker <7>"));
    let page = rig.call("GET", "/dashboard/parties", &[("cookie", &cookie)], "").await;
    assert!(!page.body.contains(key), "the key is never shown again");
    let long = format!("csrf={csrf}&name={}", "n".repeat(65));
    assert_eq!(
        rig.post_form("/dashboard/parties/beta/api-keys", &cookie, &long, &[]).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_revoked_or_expired_admin_token_ends_its_sessions_at_the_next_request() {
    let rig = Rig::new();
    let (cookie, csrf) = rig.session().await;
    let (other_cookie, _) = rig.session().await;
    assert_eq!(rig.state.dashboard.sessions.len(), 2);
    rig.store().revoke_admin_token(&rig.token_id).unwrap();
    let answer = rig.call("GET", "/dashboard/", &[("cookie", &cookie)], "").await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/dashboard/sign-in"));
    assert_eq!(rig.state.dashboard.sessions.len(), 0, "every session of the token ended");
    assert_eq!(rig.call("GET", "/dashboard/", &[("cookie", &other_cookie)], "").await.status, StatusCode::SEE_OTHER);
    let answer = rig.post_form("/dashboard/parties/beta/disable", &cookie, &format!("csrf={csrf}"), &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(rig.party_enabled("beta"));
    assert_eq!(rig.sign_in_with(&rig.token).await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sign_out_ends_the_session() {
    let rig = Rig::new();
    let (cookie, csrf) = rig.session().await;
    let answer = rig.post_form("/dashboard/sign-out", &cookie, &format!("csrf={csrf}"), &[]).await;
    assert_eq!((answer.status, answer.location()), (StatusCode::SEE_OTHER, "/dashboard/sign-in"));
    assert!(answer.set_cookie(SESSION_COOKIE).unwrap().contains("Max-Age=0"));
    assert_eq!(rig.call("GET", "/dashboard/", &[("cookie", &cookie)], "").await.status, StatusCode::SEE_OTHER);
    let replayed = rig.post_form("/dashboard/parties/beta/disable", &cookie, &format!("csrf={csrf}"), &[]).await;
    assert_eq!(replayed.status, StatusCode::UNAUTHORIZED, "the old cookie and CSRF token do nothing");
    assert!(rig.party_enabled("beta"));
}

#[tokio::test]
async fn cookies_query_strings_and_forms_are_bounded() {
    let rig = Rig::new();
    let (cookie, csrf) = rig.session().await;
    let huge = format!("{cookie}; other={}", "x".repeat(MAX_COOKIE_BYTES));
    let answer = rig.call("GET", "/dashboard/", &[("cookie", &huge)], "").await;
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let long_query = format!("/dashboard/runs?party={}", "a".repeat(2000));
    assert_eq!(rig.call("GET", &long_query, &[("cookie", &cookie)], "").await.status, StatusCode::URI_TOO_LONG);
    for bad in ["/dashboard/runs?state=nope", "/dashboard/runs?party=NOT%20A%20PARTY", "/dashboard/runs?page=x"] {
        assert_eq!(rig.call("GET", bad, &[("cookie", &cookie)], "").await.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let big_form = format!("csrf={csrf}&name={}", "n".repeat(MAX_FORM_BYTES));
    let answer = rig.post_form("/dashboard/parties/beta/api-keys", &cookie, &big_form, &[]).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    let answer = rig
        .call("POST", "/dashboard/parties/beta/disable", &[("cookie", &cookie), ("content-type", "text/plain")], "")
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let long_run = format!("/dashboard/runs/{}", "r".repeat(300));
    assert_eq!(rig.call("GET", &long_run, &[("cookie", &cookie)], "").await.status, StatusCode::NOT_FOUND);
    assert!(rig.party_enabled("beta"));
}

#[tokio::test]
async fn every_page_renders_with_its_figures_escaped_and_carries_the_security_headers() {
    let rig = Rig::new();
    let (cookie, _) = rig.session().await;
    for path in PAGES.iter().filter(|p| !p.ends_with("events")) {
        let answer = rig.call("GET", path, &[("cookie", &cookie)], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        let csp = answer.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
        assert_eq!(answer.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
        assert!(!answer.body.contains(MARKUP) && !answer.body.contains("<img src=x"), "{path}: raw markup");
        assert!(!answer.body.contains(" style="), "{path}: no inline style (the policy forbids it)");
        let scripts = answer.body.matches("<script").count();
        assert_eq!(scripts, 1, "{path}: our one script, nothing inline");
        assert!(answer.body.contains("<script src=\"/dashboard/assets/dashboard.js\" defer></script>"));
    }
    let runs = rig.call("GET", "/dashboard/runs", &[("cookie", &cookie)], "").await;
    assert!(runs.body.contains("&#60;script&#62;alert(1)&#60;/script&#62;") || runs.body.contains("&lt;script&gt;"));
    assert!(runs.body.contains(RUN) && runs.body.contains("4.0 KiB"));
    let parties = rig.call("GET", "/dashboard/parties", &[("cookie", &cookie)], "").await;
    assert!(parties.body.contains("id=\"party-acme\"") && parties.body.contains("id=\"party-beta\""));
    assert!(parties.body.contains("<meter"), "quota bars");
    let run = rig.call("GET", &format!("/dashboard/runs/{RUN}"), &[("cookie", &cookie)], "").await;
    assert!(run.body.contains("<svg") && run.body.contains("The one push so far"));
    let overview = rig.call("GET", "/dashboard/", &[("cookie", &cookie)], "").await;
    assert!(overview.body.contains("<svg") && overview.body.contains("Pushes, uploads and bytes per hour"));
    let audit = rig.call("GET", "/dashboard/audit", &[("cookie", &cookie)], "").await;
    assert!(audit.body.contains("The hash chain is intact"), "{}", audit.body);
    rig.store().connection().execute("UPDATE audit SET detail = 'edited' WHERE seq = 2", []).unwrap();
    let audit = rig.call("GET", "/dashboard/audit", &[("cookie", &cookie)], "").await;
    assert!(audit.body.contains("The hash chain breaks at record 2"), "{}", audit.body);

    let error = rig.call("GET", "/dashboard/runs/nope", &[("cookie", &cookie)], "").await;
    assert_eq!(error.status, StatusCode::NOT_FOUND);
    assert!(error.headers.contains_key(header::CONTENT_SECURITY_POLICY), "error pages carry the headers too");
}

#[tokio::test]
async fn assets_are_embedded_and_revalidated_by_etag() {
    let rig = Rig::new();
    for (name, kind) in [("dashboard.css", "text/css"), ("dashboard.js", "text/javascript"), ("icon.svg", "image/svg")]
    {
        let answer = rig.call("GET", &format!("/dashboard/assets/{name}"), &[], "").await;
        assert_eq!(answer.status, StatusCode::OK, "{name}");
        assert!(answer.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
        assert_eq!(answer.headers[header::CACHE_CONTROL], "no-cache");
        let etag = answer.headers[header::ETAG].to_str().unwrap().to_owned();
        let again = rig.call("GET", &format!("/dashboard/assets/{name}"), &[("if-none-match", &etag)], "").await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    }
    assert_eq!(rig.call("GET", "/dashboard/assets/secret.txt", &[], "").await.status, StatusCode::NOT_FOUND);
    let script = rig.call("GET", "/dashboard/assets/dashboard.js", &[], "").await.body;
    assert!(!script.contains("innerHTML") && script.contains("textContent"), "events are added as text");
}

#[tokio::test]
async fn refusals_are_counted_for_the_overview() {
    let rig = Rig::new();
    let (cookie, _) = rig.session().await;
    rig.call("GET", "/api/sync/status/x", &[], "").await;
    rig.call("GET", "/admin/parties", &[("authorization", "Bearer nope")], "").await;
    let overview = rig.call("GET", "/dashboard/", &[("cookie", &cookie)], "").await;
    assert!(overview.body.contains("<td>no-key</td>") && overview.body.contains("<td>admin-token</td>"));
    let feed = rig.call("GET", "/dashboard/feed", &[("cookie", &cookie)], "").await;
    assert!(feed.body.contains("service, no-key (401)"), "{}", feed.body);
}

#[tokio::test]
async fn a_live_feed_that_falls_behind_says_how_many_events_it_missed() {
    use futures_util::StreamExt;
    let rig = Rig::new();
    let (cookie, _) = rig.session().await;
    let request = Request::builder().uri("/dashboard/events").header("cookie", &cookie).body(Body::empty()).unwrap();
    let response = router(rig.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // More events than the channel keeps, while the page reads nothing.
    for n in 0..1100 {
        let _ = rig.state.events.send(format!("{{\"type\":\"upload\",\"n\":{n}}}"));
    }
    let mut body = response.into_body().into_data_stream();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("\"type\":\"lagged\"") && first.contains("\"missed\":76"), "{first}");
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&next).contains("\"n\":76"), "then the oldest kept");
}

#[tokio::test]
async fn the_audit_follower_runs_only_while_a_page_watches() {
    use std::sync::atomic::Ordering;
    let rig = Rig::new();
    let feed = &rig.state.dashboard.feed;
    let watching = feed.subscribe(&rig.state);
    assert!(feed.following.load(Ordering::Acquire));
    drop(watching);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while feed.following.load(Ordering::Acquire) {
        assert!(std::time::Instant::now() < deadline, "the follower still runs with nobody watching");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The next page starts it again.
    let _watching = feed.subscribe(&rig.state);
    assert!(feed.following.load(Ordering::Acquire));
}

#[tokio::test]
async fn the_audit_page_checks_the_chain_from_its_seal_after_an_archive() {
    use sha2::Digest;
    let rig = Rig::new();
    let (cookie, _) = rig.session().await;
    let store = rig.store();
    let plan = store.plan_audit_archive(crate::time::now() + 10).unwrap();
    let mut archive = Vec::new();
    store.write_audit_archive(&plan, &mut archive).unwrap();
    let sha = crate::time::hex(&sha2::Sha256::digest(&archive));
    store.seal_audit_archive(&plan, &sha, "audit-1.jsonl", "cli:root").unwrap();
    let audit = rig.call("GET", "/dashboard/audit", &[("cookie", &cookie)], "").await;
    assert!(audit.body.contains("The hash chain is intact: 1 records"), "{}", audit.body);
    assert!(audit.body.contains(&format!("from the seal of records 1-{}", plan.last_seq)), "{}", audit.body);
    assert!(audit.body.contains(&sha) && audit.body.contains("audit.archive"));
    assert!(!audit.body.contains("older"), "nothing older is left in the store to page to");
}
