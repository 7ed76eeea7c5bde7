//! A real browser for the dashboard's tests: Debian's headless Chromium, driven over W3C WebDriver by Debian's
//! chromedriver on a loopback port, with a fresh profile each time. The WebDriver calls are plain JSON over HTTP
//! (`exchange`), so no client library stands between the test and the protocol. One browser runs at a time in a test
//! process (the machine's cores are few and shared); each waits its turn.
//!
//! Chromium runs as root here, hence `--no-sandbox`; the background-networking flags keep it from reaching for the
//! network (there is none). `scripts/setup-test-env.sh` installs both packages.

use super::sshd::free_port;
use super::SETUP_HINT;
use base64ct::Encoding as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The size of every screenshot, and of the page's viewport.
pub const SCREEN: (u32, u32) = (1280, 800);
/// How long `wait_for` waits for the page to get where the test expects (a generous bound, never a measurement).
const PATIENCE: Duration = Duration::from_secs(60);
/// WebDriver's name for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

static ONE_BROWSER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A headless Chromium with a WebDriver session, closed on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: tempfile::TempDir,
    /// Where this test's screenshots go.
    shots: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

/// Where the screenshots of test `test` go: `target/tmp/dashboard-screenshots/TEST-NAME.png`, kept after the run.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots")
}

impl Browser {
    /// Starts chromedriver and a browser session; `test` names the screenshots.
    pub fn start(test: &str) -> Browser {
        Browser::launch(test, false)
    }

    /// A browser that accepts the test's own certificate authority (WebDriver's `acceptInsecureCerts`), for a
    /// service speaking TLS with a certificate made in the test.
    pub fn start_accepting_test_certificates(test: &str) -> Browser {
        Browser::launch(test, true)
    }

    fn launch(test: &str, accept_insecure_certificates: bool) -> Browser {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(Path::new(program).exists(), "{program} is missing: {SETUP_HINT}");
        }
        let turn = ONE_BROWSER_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let profile = tempfile::Builder::new().prefix("chromium-").tempdir().unwrap();
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", profile.path().join("chromedriver.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).unwrap();
        let mut browser =
            Browser { driver, port, session: String::new(), profile, shots: shots.join(test), _turn: turn };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(browser.driver.try_wait().unwrap().is_none(), "chromedriver exited");
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Chromium sometimes fails to start on a loaded machine ("session not created"): try a few times, each with a
        // profile of its own (a failed start may leave its profile locked).
        let mut attempt = 0;
        let created = loop {
            attempt += 1;
            let user_data = browser.profile.path().join(format!("profile-{attempt}"));
            let capabilities = json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "acceptInsecureCerts": accept_insecure_certificates,
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", format!("--user-data-dir={}", user_data.display()),
                        format!("--window-size={},{}", SCREEN.0, SCREEN.1),
                    ],
                },
            }}});
            match browser.call("POST", "/session", capabilities) {
                Ok(created) => break created,
                Err(e) if attempt < 3 => eprintln!("new session, attempt {attempt}: {e}; trying again"),
                Err(e) => panic!("new session after {attempt} attempts: {e}"),
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        browser.session = created["sessionId"].as_str().expect("a session id").to_owned();
        // Headless windows lose some of their height to the window frame; the page itself is made exactly 1280×800.
        browser.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": SCREEN.0, "height": SCREEN.1, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// One WebDriver command; `Err` with WebDriver's message when it fails.
    fn call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let body = if method == "GET" || method == "DELETE" { Vec::new() } else { body.to_string().into_bytes() };
        let (status, answer) = exchange(self.port, method, path, &body).map_err(|e| format!("{method} {path}: {e}"))?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| format!("{method} {path}: {e}"))?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("{method} {path}: {} {}", value["error"], value["message"]))
        }
    }

    fn session_call(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn cdp(&self, command: &str, params: Value) {
        self.session_call("POST", "/goog/cdp/execute", json!({ "cmd": command, "params": params }))
            .unwrap_or_else(|e| panic!("{command}: {e}"));
    }

    /// Loads `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", json!({ "url": url })).unwrap_or_else(|e| panic!("{url}: {e}"));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", Value::Null)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The element `css` selects now, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let found = self.session_call("POST", "/element", json!({ "using": "css selector", "value": css })).ok()?;
        found[ELEMENT].as_str().map(str::to_owned)
    }

    fn element(&self, css: &str) -> String {
        self.wait_for(&format!("an element {css}"), |b| b.find(css).is_some());
        self.find(css).unwrap_or_else(|| panic!("no element {css}"))
    }

    /// Clicks the element `css` selects (waiting for it to be there).
    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/click"), json!({}))
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Types `text` into the field `css` selects.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/value"), json!({ "text": text }))
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// The rendered text of the element `css` selects, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css)?;
        self.session_call("GET", &format!("/element/{id}/text"), Value::Null).ok()?.as_str().map(str::to_owned)
    }

    /// Runs `script` in the page (WebDriver's scripts are not the page's: its Content-Security-Policy does not
    /// apply to them) and returns what it returns.
    pub fn script(&self, script: &str, args: Value) -> Value {
        self.session_call("POST", "/execute/sync", json!({ "script": script, "args": args }))
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits until `ready` holds, up to `PATIENCE`; then fails the test, with a screenshot of where the page was.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !ready(self) {
            if Instant::now() > deadline {
                let shot = self.screenshot("failed");
                let text = self.text("body").unwrap_or_default();
                panic!("waited in vain for {what} at {} (screenshot {}):\n{text}", self.url(), shot.display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The browser's cookies for the current page, as WebDriver lists them (HttpOnly ones included).
    pub fn cookies(&self) -> Vec<Value> {
        let cookies = self.session_call("GET", "/cookie", Value::Null).unwrap_or_default();
        cookies.as_array().cloned().unwrap_or_default()
    }

    /// Saves a 1280×800 PNG of the page as `TEST-NAME.png`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let encoded =
            self.session_call("GET", "/screenshot", Value::Null).unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64ct::Base64::decode_vec(encoded.as_str().unwrap_or_default()).unwrap();
        let path =
            self.shots.with_file_name(format!("{}-{name}.png", self.shots.file_name().unwrap().to_string_lossy()));
        std::fs::write(&path, &png).unwrap();
        assert_eq!(png_size(&png), SCREEN, "{}", path.display());
        path
    }
}

/// One request to chromedriver and its answer (status, body). Read by its Content-Length: chromedriver says
/// `Connection: close` but keeps the connection open.
fn exchange(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    // Longer than any page load the tests wait for, so a slow one fails with WebDriver's message, not this.
    stream.set_read_timeout(Some(PATIENCE * 2))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match stream.read(&mut chunk)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => received.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while received.len() < end + length {
        match stream.read(&mut chunk)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => received.extend_from_slice(&chunk[..n]),
        }
    }
    Ok((status, received[end..end + length].to_vec()))
}

/// Width and height from a PNG's header.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24, "not a PNG");
    let number = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (number(16), number(20))
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), Value::Null);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
