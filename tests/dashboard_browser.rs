//! The dashboard in a real browser (issue 12): headless Chromium over WebDriver against `evosync serve` on loopback,
//! with a real sshd, the stock sqlite3_rsync and the workers' API feeding it:
//! - signing in with the admin token shows both parties; the session cookie is HttpOnly and SameSite=Strict, out of
//!   the page's reach; revoking the admin token ends the session at the next page;
//! - a push made during the test (with the catalog's verdict on it), an upload and a refused push appear in the live
//!   feed without a reload; the run's replicas are verified again from its page;
//! - revoking an SSH key in the page refuses that key's next ssh login (and no other key's);
//! - markup in a template name, an ecosystem variant, a key comment and an API key name shows as text, and runs not;
//! - an action with a forged or missing CSRF token, from another site on the same host, or after signing out is
//!   refused, and the same action from the page itself works.
//!
//! - over TLS (a certificate made in the test), the session cookie is also `Secure`, and the live feed streams.
//!
//! Each test saves 1280×800 screenshots in `target/tmp/dashboard-screenshots/` (one is `docs/dashboard.png`).

mod common;

use common::{evosync_json, http, make_db, Browser, Service, Sshd};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;

const RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DR_CMA-MAE_dashboard";
const BETA_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DS_beta";
/// Registered through the workers' API with markup in its metadata.
const MARKED_RUN: &str = "01KFYA32R09C5KJYNH1SM2W1DT_markup";
const TEMPLATE: &str = "<script>window.__xss = 'template'</script>";
const VARIANT: &str = "\"><svg onload=\"window.__xss = 'variant'\"></svg>";
const COMMENT: &str = "<img src=x onerror=\"window.__xss = 'comment'\">";
const KEY_NAME: &str = "<b onmouseover=\"window.__xss = 'name'\">worker</b>";

/// A central host: `evosync init` with a managed authorized_keys file, parties acme and beta with an SSH key each,
/// an API key for acme, sshd, and the service.
struct Central {
    dir: tempfile::TempDir,
    /// `https` when the service speaks TLS (with a certificate made in the test), else `http`.
    scheme: &'static str,
    config: PathBuf,
    sshd: Sshd,
    service: Service,
    admin_token: String,
    api_key: String,
    acme_key: (PathBuf, String),
    beta_key: (PathBuf, String),
}

impl Central {
    fn start(name: &str) -> Central {
        Central::start_with(name, false)
    }

    /// With `tls`, the service speaks TLS (`tls_cert`, `tls_key`) and no run is registered (the workers' API is then
    /// HTTPS too, which this rig's plain client does not speak).
    fn start_with(name: &str, tls: bool) -> Central {
        let dir = common::test_dir(name);
        let root = dir.path().to_owned();
        let sshd = Sshd::start("");
        let keys_file = sshd.empty_authorized_keys("evosync");
        let port = common::free_loopback_port();
        let (config, init) = common::init_central(&root, port, &["--authorized-keys", keys_file.to_str().unwrap()]);
        let admin_token = init["admin_token"].as_str().unwrap().to_owned();
        let cli = |args: &[&str]| {
            let (ok, value, said) = evosync_json(&config, args);
            assert!(ok, "evosync {args:?}: {said}");
            value
        };
        let mut keys = Vec::new();
        for (party, comment) in [("acme", COMMENT), ("beta", "beta's lab")] {
            cli(&["party", "add", party]);
            let (key, _) = sshd.new_client_key(party);
            let public = key.with_extension("pub");
            let added = cli(&["ssh-key", "add", party, "--public-key", public.to_str().unwrap(), "--comment", comment]);
            keys.push((key, added["key"]["id"].as_str().unwrap().to_owned()));
        }
        let api_key = cli(&["api-key", "issue", "acme", "--name", KEY_NAME])["api_key"].as_str().unwrap().to_owned();
        if tls {
            let pki = common::Pki::new(&root, "tls");
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.push_str(&format!("tls_cert: {}\ntls_key: {}\n", pki.cert.display(), pki.key.display()));
            std::fs::write(&config, text).unwrap();
        }
        let service = Service::start(&config, port);
        let beta_key = keys.pop().unwrap();
        let acme_key = keys.pop().unwrap();
        let scheme = if tls { "https" } else { "http" };
        let central = Central { dir, scheme, config, sshd, service, admin_token, api_key, acme_key, beta_key };
        if tls {
            return central;
        }
        let registration = json!({ "templateName": TEMPLATE, "ecosystemVariant": VARIANT, "startedAt": "2026-11-25" });
        let (status, _, body) = http(
            port,
            "POST",
            &format!("/api/sync/register/{MARKED_RUN}"),
            &[("X-Sync-API-Key", &central.api_key), ("Content-Type", "application/json")],
            registration.to_string().as_bytes(),
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        central
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.service.port)
    }

    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let (ok, value, said) = evosync_json(&self.config, args);
        assert!(ok, "evosync {args:?}: {said}");
        value
    }

    fn worker_db(&self) -> PathBuf {
        let path = self.dir.path().join("worker.sqlite");
        if !path.exists() {
            make_db(&path, "genomes", 200, 800);
        }
        path
    }

    /// The worker's push of genomes.sqlite into `run`, with `key`.
    fn push(&self, key: &Path, run: &str) -> Output {
        let remote = format!("/data/evorun-sync/{run}/genomes.sqlite");
        self.sshd.sqlite3_rsync(key, &self.worker_db(), "evosync", &remote, &[])
    }

    fn upload(&self, run: &str, name: &str) -> u16 {
        let path = format!("/api/sync/analysis/{run}?filename={name}&subdir=analysisResults");
        http(self.service.port, "POST", &path, &[("X-Sync-API-Key", &self.api_key)], b"{\"coverage\": 0.5}").0
    }

    fn store(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("state/state.db")).unwrap()
    }

    fn party_enabled(&self, party: &str) -> bool {
        self.store().query_row("SELECT enabled FROM parties WHERE name = ?1", [party], |r| r.get(0)).unwrap()
    }

    fn admin_token_id(&self) -> &str {
        &self.admin_token["evsadm_".len().."evsadm_".len() + 16]
    }

    /// Signs in through the form, as an administrator would.
    fn sign_in(&self, browser: &Browser) {
        browser.goto(&self.url("/dashboard/"));
        browser.wait_for("the sign-in form", |b| b.find("form#sign-in").is_some());
        browser.type_into("#token", &self.admin_token);
        browser.click("form#sign-in button[type=submit]");
        wait_for_heading(browser, "Overview");
    }
}

fn wait_for_heading(browser: &Browser, heading: &str) {
    browser.wait_for(&format!("the heading '{heading}'"), |b| b.text("h1").is_some_and(|h| h.starts_with(heading)));
}

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// How many rows of the live feed's list, added by its script, are of `kind` and mention `text`.
fn live_rows(browser: &Browser, kind: &str, text: &str) -> u64 {
    let script = "return [...document.querySelectorAll('#live-feed li.live.' + arguments[0])]\
                  .filter(li => li.textContent.includes(arguments[1])).length";
    browser.script(script, json!([kind, text])).as_u64().unwrap_or(0)
}

#[test]
fn signing_in_with_the_admin_token_shows_both_parties() {
    let central = Central::start("dash-sign-in");
    let browser = Browser::start("sign-in");
    browser.goto(&central.url("/dashboard/parties"));
    browser.wait_for("the sign-in form", |b| b.find("form#sign-in").is_some());
    assert!(browser.url().ends_with("/dashboard/sign-in"), "a page without a session sends to the form");
    browser.type_into("#token", &format!("evsadm_{}_{}", central.admin_token_id(), "0".repeat(64)));
    browser.click("form#sign-in button[type=submit]");
    browser.wait_for("the refusal", |b| b.text(".problem").is_some_and(|t| t.contains("not valid")));
    browser.screenshot("wrong-token");

    central.sign_in(&browser);
    let cookies = browser.cookies();
    let session = cookies.iter().find(|c| c["name"] == "evosync_dashboard").expect("the session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(session["path"], "/dashboard", "{session}");
    let visible = browser.script("return document.cookie", json!([]));
    assert!(!visible.as_str().unwrap_or_default().contains("evosync_dashboard"), "the page's scripts cannot read it");
    for party in ["acme", "beta"] {
        let row = browser.text(&format!("a[href=\"/dashboard/parties#party-{party}\"]"));
        assert_eq!(row.as_deref(), Some(party), "the overview lists {party}");
    }

    browser.goto(&central.url("/dashboard/parties"));
    wait_for_heading(&browser, "Parties");
    for party in ["acme", "beta"] {
        let heading = browser.text(&format!("#party-{party} h2")).unwrap_or_default();
        assert!(heading.starts_with(party) && heading.contains("enabled"), "{heading}");
        assert!(browser.find(&format!("#party-{party} meter")).is_some(), "{party}'s quota bars");
    }
    let acme_key = browser.text(&format!("#ssh-key-{}", central.acme_key.1)).unwrap();
    assert!(acme_key.contains("active") && acme_key.contains("never"), "{acme_key}");
    browser.screenshot("parties");

    // Revoking the admin token ends the session at its next request.
    central.cli(&["admin-token", "revoke", central.admin_token_id()]);
    browser.goto(&central.url("/dashboard/parties"));
    browser.wait_for("the sign-in form", |b| b.find("form#sign-in").is_some());
    browser.type_into("#token", &central.admin_token);
    browser.click("form#sign-in button[type=submit]");
    browser.wait_for("the refusal", |b| b.text(".problem").is_some_and(|t| t.contains("revoked")));
}

#[test]
fn a_push_made_during_the_test_appears_in_the_live_feed_without_a_reload() {
    let central = Central::start("dash-feed");
    let browser = Browser::start("live-feed");
    central.sign_in(&browser);
    browser.goto(&central.url("/dashboard/feed"));
    wait_for_heading(&browser, "Live feed");
    let live =
        |b: &Browser| b.script("return document.getElementById('live-status').dataset.state", json!([])) == "open";
    browser.wait_for("the event stream to open", live);
    browser.script("window.loadedOnce = 'still the same page'", json!([]));

    let output = central.push(&central.acme_key.0, RUN);
    assert!(output.status.success(), "the push: {}", said(&output));
    browser.wait_for("the push in the feed", |b| live_rows(b, "push", RUN) > 0);
    let row = browser.text("#live-feed li.live.push").unwrap();
    assert!(row.contains("acme") && row.contains("genomes.sqlite: exit 0"), "{row}");
    browser.wait_for("the catalog's verdict on the push", |b| live_rows(b, "verified", RUN) > 0);

    assert_eq!(central.upload(MARKED_RUN, "coverage_feed.json"), 200);
    browser.wait_for("the upload in the feed", |b| live_rows(b, "upload", "coverage_feed.json") > 0);

    let refused = central.push(&central.acme_key.0, "not-a-run");
    assert!(!refused.status.success(), "a run folder name the policy refuses");
    browser.wait_for("the gate's refusal in the feed", |b| live_rows(b, "refusal", "gate, ") > 0);

    let output = central.push(&central.beta_key.0, BETA_RUN);
    assert!(output.status.success(), "beta's push: {}", said(&output));
    browser.wait_for("beta's push in the feed", |b| live_rows(b, "push", BETA_RUN) > 0);

    let marker = browser.script("return window.loadedOnce", json!([]));
    assert_eq!(marker, "still the same page", "the rows came without a reload");
    browser.screenshot("feed");

    browser.goto(&central.url("/dashboard/"));
    wait_for_heading(&browser, "Overview");
    let tiles = browser.text(".tiles").unwrap();
    assert!(tiles.contains("pushes in 24 h"), "{tiles}");
    assert!(browser.find("svg.chart-svg rect.bar-push").is_some(), "the chart shows the push");
    browser.screenshot("overview");
    browser.goto(&central.url(&format!("/dashboard/runs/{RUN}")));
    wait_for_heading(&browser, RUN);
    assert!(browser.find("svg.chart-svg rect.bar-db0").is_some(), "the run's push history");
    browser.click("form.reverify button");
    browser.wait_for("the verdicts", |b| b.text(".flash").is_some_and(|t| t.contains("was verified again")));
    let flash = browser.text(".flash").unwrap();
    assert!(flash.contains("genomes.sqlite passed") || flash.contains("genomes.sqlite failed"), "{flash}");
    browser.screenshot("run");
}

#[test]
fn revoking_a_key_in_the_page_refuses_its_next_ssh_login() {
    let central = Central::start("dash-revoke");
    let (acme_key, acme_id) = central.acme_key.clone();
    let output = central.push(&acme_key, RUN);
    assert!(output.status.success(), "acme's key pushes before: {}", said(&output));

    let browser = Browser::start("revoke");
    central.sign_in(&browser);
    browser.goto(&central.url("/dashboard/parties"));
    wait_for_heading(&browser, "Parties");
    let row = format!("#ssh-key-{acme_id}");
    assert!(browser.text(&row).unwrap().contains("active"));
    browser.click(&format!("{row} details.confirm summary"));
    browser.click(&format!("{row} details.confirm button[type=submit]"));
    browser.wait_for("the revocation's message", |b| b.text(".flash").is_some_and(|t| t.contains("is revoked")));
    let state = browser.text(&format!("{row} .badge")).unwrap();
    assert_eq!(state, "revoked");
    assert!(browser.find(&format!("{row} details.confirm")).is_none(), "a revoked key offers no revoke");
    browser.screenshot("revoked");

    let output = central.push(&acme_key, RUN);
    assert!(!output.status.success(), "the revoked key's next login: {}", said(&output));
    assert!(said(&output).contains("Permission denied"), "refused by sshd at login: {}", said(&output));
    let output = central.push(&central.beta_key.0, BETA_RUN);
    assert!(output.status.success(), "beta's key still pushes: {}", said(&output));

    let actor: String = central
        .store()
        .query_row("SELECT actor FROM audit WHERE action = 'ssh-key.revoke' AND subject = ?1", [&acme_id], |r| r.get(0))
        .unwrap();
    assert_eq!(actor, format!("dashboard:{}", central.admin_token_id()), "audited like the admin API's actions");
    browser.goto(&central.url("/dashboard/audit"));
    wait_for_heading(&browser, "Audit trail");
    assert!(browser.text("#chain-check").unwrap().contains("intact"));
    assert!(browser.text("table.audit").unwrap().contains("ssh-key.revoke"));
}

#[test]
fn markup_in_names_shows_as_text_and_never_runs() {
    let central = Central::start("dash-markup");
    let output = central.push(&central.acme_key.0, RUN);
    assert!(output.status.success(), "{}", said(&output));
    assert_eq!(central.upload(MARKED_RUN, "coverage_markup.json"), 200);
    let browser = Browser::start("markup");
    central.sign_in(&browser);
    let pages = [
        "/dashboard/".to_owned(),
        "/dashboard/parties".to_owned(),
        "/dashboard/runs".to_owned(),
        format!("/dashboard/runs/{MARKED_RUN}"),
        "/dashboard/feed".to_owned(),
        "/dashboard/audit".to_owned(),
    ];
    for path in &pages {
        browser.goto(&central.url(path));
        browser.wait_for(&format!("{path} to render"), |b| b.find("main h1").is_some());
        // Hovering every element would fire any mouseover handler that made it into the page.
        browser.script(
            "document.querySelectorAll('b, img, svg').forEach(e => e.dispatchEvent(new MouseEvent('mouseover')))",
            json!([]),
        );
        assert_eq!(browser.script("return typeof window.__xss", json!([])), "undefined", "{path}: markup ran");
        assert_eq!(browser.script("return document.scripts.length", json!([])), 1, "{path}: only our script");
        let planted =
            "return document.querySelectorAll('img[src=\"x\"], [onload], [onerror], [onmouseover], b').length";
        assert_eq!(browser.script(planted, json!([])), 0, "{path}: no planted element");
    }
    browser.goto(&central.url("/dashboard/runs?party=acme"));
    wait_for_heading(&browser, "Runs");
    assert_eq!(browser.text(&format!("#run-{MARKED_RUN} td.template")).as_deref(), Some(TEMPLATE));
    browser.goto(&central.url(&format!("/dashboard/runs/{MARKED_RUN}")));
    wait_for_heading(&browser, MARKED_RUN);
    assert_eq!(browser.text("dd.template").as_deref(), Some(TEMPLATE));
    assert_eq!(browser.text("dd.variant").as_deref(), Some(VARIANT));
    browser.screenshot("run");
    browser.goto(&central.url("/dashboard/parties"));
    wait_for_heading(&browser, "Parties");
    assert!(browser.text(&format!("#ssh-key-{}", central.acme_key.1)).unwrap().contains(COMMENT));
    assert!(browser.text("#party-acme table.api-keys").unwrap().contains(KEY_NAME));
    browser.screenshot("parties");
}

#[test]
fn over_tls_the_session_cookie_is_secure() {
    let central = Central::start_with("dash-tls", true);
    let browser = Browser::start_accepting_test_certificates("tls");
    central.sign_in(&browser);
    assert!(browser.url().starts_with("https://"), "{}", browser.url());
    let cookies = browser.cookies();
    let session = cookies.iter().find(|c| c["name"] == "evosync_dashboard").expect("the session cookie");
    assert_eq!(
        (&session["secure"], &session["httpOnly"], &session["sameSite"]),
        (&json!(true), &json!(true), &json!("Strict"))
    );
    // The live feed's stream over TLS, and a push it shows.
    browser.goto(&central.url("/dashboard/feed"));
    let live =
        |b: &Browser| b.script("return document.getElementById('live-status').dataset.state", json!([])) == "open";
    browser.wait_for("the event stream to open", live);
    let output = central.push(&central.acme_key.0, RUN);
    assert!(output.status.success(), "the push: {}", said(&output));
    browser.wait_for("the push in the feed", |b| live_rows(b, "push", RUN) > 0);
    browser.screenshot("feed");
}

/// A page of another site on this host (another port): a form that posts to the dashboard, as an attacker's page
/// would. Serves it to whoever asks until the test ends.
fn attacker_page(target: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let page = format!(
        "<!DOCTYPE html><html><body><h1>Win a prize</h1><form method=\"post\" action=\"{target}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"go\" type=\"submit\">Claim</button>\
         </form></body></html>",
        "0".repeat(64)
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    format!("http://{address}/")
}

#[test]
fn actions_signed_out_without_the_csrf_token_or_from_another_site_are_refused() {
    let central = Central::start("dash-csrf");
    let browser = Browser::start("refused");
    central.sign_in(&browser);
    let switch = "#party-beta form.party-switch";

    // A forged CSRF token, then none at all.
    for tamper in [
        "document.querySelector(arguments[0] + ' input[name=csrf]').value = 'forged'",
        "document.querySelector(arguments[0] + ' input[name=csrf]').remove()",
    ] {
        browser.goto(&central.url("/dashboard/parties"));
        wait_for_heading(&browser, "Parties");
        browser.script(tamper, json!([switch]));
        browser.click(&format!("{switch} button"));
        wait_for_heading(&browser, "403");
        assert!(browser.text("#error-message").unwrap().contains("CSRF token"));
        assert!(central.party_enabled("beta"), "nothing was done");
    }
    browser.screenshot("forged-csrf");

    // Another site on the same host: the browser sends the session cookie along (same-site), but the request says
    // where it came from.
    let attacker = attacker_page(&central.url("/dashboard/parties/beta/disable"));
    browser.goto(&attacker);
    browser.click("#go");
    wait_for_heading(&browser, "403");
    assert!(browser.text("#error-message").unwrap().contains("another site"));
    assert!(central.party_enabled("beta"));
    browser.screenshot("cross-site");

    // Signed out: the old page's CSRF token does nothing.
    browser.goto(&central.url("/dashboard/parties"));
    wait_for_heading(&browser, "Parties");
    let csrf = browser.script("return document.querySelector('input[name=csrf]').value", json!([]));
    browser.click("form.sign-out button");
    browser.wait_for("the sign-in form", |b| b.find("form#sign-in").is_some());
    let replay = "const form = document.createElement('form'); form.method = 'post'; \
                  form.action = '/dashboard/parties/beta/disable'; const field = document.createElement('input'); \
                  field.type = 'hidden'; field.name = 'csrf'; field.value = arguments[0]; form.append(field); \
                  document.body.append(form); form.submit()";
    browser.script(replay, json!([csrf]));
    wait_for_heading(&browser, "401");
    assert!(browser.text("#error-message").unwrap().contains("sign in"));
    assert!(central.party_enabled("beta"));
    browser.screenshot("signed-out");

    // The same action from the page itself, signed in: done, and shown.
    central.sign_in(&browser);
    browser.goto(&central.url("/dashboard/parties"));
    wait_for_heading(&browser, "Parties");
    browser.click(&format!("{switch} button"));
    browser.wait_for("the action's message", |b| b.text(".flash").is_some_and(|t| t.contains("beta is disabled")));
    assert!(!central.party_enabled("beta"));
}
