//! The dashboard at `/ui/`: its routes over HTTP, and the page in a real
//! browser (headless Chromium from Debian, driven over WebDriver by
//! chromium-driver; `make ui-deps` installs both, and `make test` runs it).
//!
//! The browser test starts a 3-node cluster, opens node 1's page, sees the
//! leader and every member, edits a key, sees writes made through other
//! nodes appear without a reload, is refused a check-and-set save over a
//! newer write, and deletes a key. It leaves a screenshot of the page in
//! `target/ui-test/dashboard.png` (and in `$QUORUMD_UI_SCREENSHOT` when set,
//! which is how `docs/dashboard.png` is made).

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::{free_port, wait_until, TestCluster, WAIT};
use serde_json::{json, Value};

/// The page's size budget, as the node enforces it at build time.
const MAX_PAGE_BYTES: usize = 64 * 1024;

#[test]
fn the_ui_routes_answer_over_http() {
    let mut c = TestCluster::of("uiroutes", 3);
    c.start_all();
    let (leader, term) = c.wait_agreed_leader(&[1, 2, 3]);

    let page = c.get(2, "/ui/").expect("GET /ui/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.body.len() <= MAX_PAGE_BYTES,
        "{} bytes",
        page.body.len()
    );
    assert!(page.body.contains("<title>quorumd</title>"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'"), "{csp}");

    let moved = c.get(2, "/ui").expect("GET /ui");
    assert_eq!(moved.status, 301);
    assert_eq!(moved.header("location"), Some("/ui/"));
    assert_eq!(c.get(2, "/ui/nope").expect("GET").status, 404);
    assert_eq!(c.call(2, "POST", "/ui/", b"").status, 405);

    // Every member, as node 3 sees it, with each one's own status.
    c.kv_put(1, "a", b"1");
    let nodes = c.get(3, "/ui/nodes").expect("GET /ui/nodes");
    assert_eq!(nodes.status, 200, "{}", nodes.body);
    let nodes = nodes.json().expect("JSON");
    assert_eq!(nodes["node_id"], 3);
    assert_eq!(nodes["leader_id"], leader);
    let members = nodes["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{nodes}");
    for m in members {
        let id = m["id"].as_u64().expect("id");
        let role = if id == leader { "leader" } else { "follower" };
        assert_eq!(m["role"], role, "{m}");
        assert_eq!(m["term"], term, "{m}");
        assert_eq!(m["voter"], true, "{m}");
        assert!(m["applied_index"].as_u64().is_some_and(|a| a > 1), "{m}");
        assert!(m["lag"].as_u64().is_some(), "{m}");
        assert!(m["error"].is_null(), "{m}");
        assert_eq!(m["admin"], c.admin(id).to_string());
    }

    // A dead member is one row with the reason, and the page still answers
    // at once.
    c.signal(3, libc::SIGKILL);
    let started = std::time::Instant::now();
    let nodes = c
        .get(1, "/ui/nodes")
        .expect("GET /ui/nodes")
        .json()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    let dead = nodes["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 3)
        .cloned()
        .expect("node 3 listed");
    assert!(dead["error"].as_str().is_some(), "{dead}");
    assert!(dead["applied_index"].is_null(), "{dead}");
}

#[test]
fn with_tls_the_ui_needs_a_client_certificate_like_every_route() {
    let mut c = TestCluster::new(common::Spec::new("uitls", 3).with_tls());
    c.start_all();
    c.wait_agreed_leader(&[1, 2, 3]);
    let certs = c.dir.path().join(common::CERTS_SUBDIR);
    let anonymous = common::Https {
        config: common::tls_client(&certs.join("ca.pem"), None),
        server_name: "node-1.uitls".into(),
    };
    for path in ["/ui/", "/ui/nodes"] {
        let r = common::https_within(
            c.admin(1),
            Some(&anonymous),
            "GET",
            path,
            b"",
            Duration::from_secs(5),
        )
        .expect("an answer");
        assert_eq!(r.status, 401, "{path}: {}", r.body);
    }
    assert_eq!(c.get(1, "/ui/").expect("GET").status, 200);
    // Node 1 asks the others over HTTPS with its own certificate.
    let nodes = c.get(1, "/ui/nodes").expect("GET").json().unwrap();
    for m in nodes["members"].as_array().unwrap() {
        assert!(m["error"].is_null(), "{m}");
        assert!(m["role"].is_string(), "{m}");
    }
}

#[test]
fn the_dashboard_works_in_a_real_browser() {
    let mut c = TestCluster::of("uibrowser", 3);
    c.start_all();
    let (leader, _) = c.wait_agreed_leader(&[1, 2, 3]);
    c.kv_put(2, "app/greeting", b"hello");
    c.kv_put(2, "app/color", b"blue");
    c.kv_put(3, "config/replicas", b"3");

    let browser = Browser::start();
    browser.go(&format!("http://{}/ui/", c.admin(1)));

    // The leader, and every member healthy with its role.
    browser.wait_for("the leader in the header", || {
        browser.text("#leader") == format!("node {leader}")
    });
    browser.wait_for("three healthy members", || {
        browser.eval(
            "const rows = [...document.querySelectorAll('#members tbody tr')];
             return rows.length === 3 && rows.every(r => r.querySelector('.health').textContent === 'healthy');",
        ) == json!(true)
    });
    let role = browser.eval(&format!(
        "return document.querySelector('#members tr[data-id=\"{leader}\"] .badge').textContent"
    ));
    assert_eq!(role, json!("leader"));

    // Edit a key in the browser; every node reads the new value.
    browser.wait_for("app/greeting in the key list", || {
        browser.exists("#keys li[data-key='app/greeting']")
    });
    browser.click("#keys li[data-key='app/greeting']");
    browser.wait_for("app/greeting in the editor", || {
        browser.value("#value") == "hello"
    });
    browser.clear("#value");
    browser.type_into("#value", "edited in the browser");
    browser.click("#save");
    browser.wait_for("the save confirmed", || {
        browser.text("#message").starts_with("saved")
    });
    for id in [1, 2, 3] {
        assert_eq!(
            c.kv_get(id, "app/greeting", "").as_deref(),
            Some("edited in the browser")
        );
    }

    // A key written through another node appears without a reload.
    c.kv_put(3, "app/from-node-3", b"written through node 3");
    browser.wait_for("app/from-node-3 in the key list", || {
        browser.exists("#keys li[data-key='app/from-node-3']")
    });
    // The loaded key, changed through another node, is shown anew.
    c.kv_put(2, "app/greeting", b"changed through node 2");
    browser.wait_for("the new value in the editor", || {
        browser.value("#value") == "changed through node 2"
    });

    // An edit over a newer write is refused by check-and-set.
    browser.type_into("#value", " and by me");
    c.kv_put(3, "app/greeting", b"a newer write");
    browser.wait_for("a warning that the key changed", || {
        browser.text("#message").contains("changed on the server")
    });
    browser.click("#save");
    browser.wait_for("the save refused", || {
        browser.text("#message").contains("check-and-set refused")
    });
    assert_eq!(
        c.kv_get(1, "app/greeting", "").as_deref(),
        Some("a newer write")
    );

    // Reload, then delete with check-and-set.
    browser.click("#reload");
    browser.wait_for("the newer value loaded", || {
        browser.value("#value") == "a newer write"
    });
    browser.click("#delete");
    browser.wait_for("the delete confirmed", || {
        browser.text("#message").starts_with("deleted")
    });
    assert_eq!(c.kv_get(2, "app/greeting", ""), None);
    browser.wait_for("app/greeting gone from the list", || {
        !browser.exists("#keys li[data-key='app/greeting']")
    });

    // A screenshot of the page with a key loaded.
    browser.click("#keys li[data-key='app/from-node-3']");
    browser.wait_for("app/from-node-3 in the editor", || {
        browser.value("#value") == "written through node 3"
    });
    // Every member shown applying past the key (the table polls each second).
    browser.wait_for("the members at the key's index", || {
        browser.eval(
            "const want = Number(document.querySelector('#keys li.selected .idx').textContent);
             const cells = [...document.querySelectorAll('#members td.applied')];
             return cells.length === 3 && cells.every(c => Number(c.textContent) >= want);",
        ) == json!(true)
    });
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-test");
    std::fs::create_dir_all(&dir).expect("create target/ui-test");
    std::fs::write(dir.join("dashboard.png"), &png).expect("write the screenshot");
    if let Some(path) = std::env::var_os("QUORUMD_UI_SCREENSHOT") {
        std::fs::write(path, &png).expect("write $QUORUMD_UI_SCREENSHOT");
    }
}

/// A headless Chromium driven over the W3C WebDriver protocol (JSON over
/// HTTP) by chromium-driver. The protocol is a handful of requests, so the
/// test speaks it with the harness's own HTTP client instead of pulling an
/// async WebDriver crate and its runtime into the test build.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    fn start() -> Browser {
        let driver = which("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromium-driver is not installed: `make ui-deps` installs headless Chromium and \
                 its driver (apt-get install chromium chromium-driver)"
            )
        });
        let chromium = which("chromium")
            .unwrap_or_else(|| panic!("chromium is not installed: `make ui-deps` installs it"));
        let port = free_port();
        let profile = tempfile::Builder::new()
            .prefix("quorumd-ui-chromium-")
            .tempdir()
            .expect("a profile dir");
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut browser = Browser {
            driver: child,
            port,
            session: String::new(),
            _profile: profile,
        };
        let up = wait_until(WAIT, || {
            browser
                .call("GET", "/status", None)
                .is_ok_and(|v| v["ready"] == json!(true))
        });
        assert!(up, "chromedriver did not answer on port {port}");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!(
            "--user-data-dir={}",
            browser._profile.path().display()
        )])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let session = browser
            .call("POST", "/session", Some(caps))
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"));
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {session}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`, or the error it reported.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) =
            exchange(addr, method, path, &body).map_err(|e| format!("{method} {path}: {e}"))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path}: {status} is not JSON ({e}): {text}"))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status} {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn go(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    fn eval(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    fn exists(&self, css: &str) -> bool {
        self.eval(&format!(
            "return document.querySelector({}) !== null",
            json!(css)
        )) == json!(true)
    }

    fn text(&self, css: &str) -> String {
        let v = self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.textContent : ''",
            json!(css)
        ));
        v.as_str().unwrap_or_default().to_string()
    }

    fn value(&self, css: &str) -> String {
        let v = self.eval(&format!(
            "const e = document.querySelector({}); return e ? e.value : ''",
            json!(css)
        ));
        v.as_str().unwrap_or_default().to_string()
    }

    fn element(&self, css: &str) -> String {
        let found = self.session_call(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_string()
    }

    /// A real click, as a user makes it.
    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn clear(&self, css: &str) {
        let id = self.element(css);
        self.session_call("POST", &format!("/element/{id}/clear"), Some(json!({})));
    }

    /// Keystrokes, as a user types them (appended at the end).
    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session_call(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.session_call("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64"))
            .expect("a base64 screenshot")
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        if !wait_until(WAIT, &mut cond) {
            let page = self.eval("return document.body.innerText");
            panic!(
                "timed out after {WAIT:?} waiting for {what}; the page shows:\n{}",
                page.as_str().unwrap_or_default()
            );
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One HTTP/1.1 exchange with chromedriver, which keeps the connection
/// open whatever the request asks: the answer is read by its
/// `Content-Length`.
fn exchange(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut writer = stream.try_clone()?;
    write!(
        writer,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("bad header {header:?}")))?;
            }
        }
    }
    let mut answer = vec![0; length];
    reader.read_exact(&mut answer)?;
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

/// `name` on `PATH`, if there.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
