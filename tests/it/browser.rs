//! The operator pages in a real browser: Debian's headless Chromium driven through chromedriver
//! (W3C WebDriver over HTTP on 127.0.0.1, spoken here with `reqwest`: a handful of JSON calls,
//! so no WebDriver crate and its TLS stack are needed). The pages render, a filter set in the
//! form round-trips through the URL, the hostile row shows as text and runs nothing, and both
//! colour schemes keep text readable. Screenshots go to `target/ui-screenshots/`.
//!
//! Without `chromium` and `chromedriver` these tests print a line and pass, except under
//! `CI=true`, where they fail (`.ci/run` installs both).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{TestEnv, eventually};
use crate::ui::{UiServer, row_id, seed};

/// One browser at a time: the machine may have two cores.
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A chromedriver process and one session of headless Chromium with a fresh profile.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts chromedriver and a session, or `None` (after saying why) when the browser is not
    /// installed and `CI` is not `true`.
    async fn start() -> Option<Browser> {
        let (Some(chromium), Some(chromedriver)) = (find(&["chromium", "chromium-browser"]), find(&["chromedriver"]))
        else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "chromium and chromedriver are required under CI=true (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipped: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
            return None;
        };
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            listener.local_addr().expect("an address").port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("chromedriver to answer", || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                let status: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                status["value"]["ready"].as_bool().filter(|ready| *ready)
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("a profile dir");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session starts: {created}"))
            .to_owned();
        Some(Browser { driver, base, session, http, _profile: profile })
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, url).timeout(Duration::from_secs(60));
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.map(|value| value["value"].clone()).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, value) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 200, "POST {path}: {value}");
        value
    }

    async fn get(&self, path: &str) -> Value {
        let (status, value) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {value}");
        value
    }

    async fn open(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_owned()
    }

    async fn element(&self, css: &str) -> String {
        let found = self.post("/element", json!({"using": "css selector", "value": css})).await;
        found
            .as_object()
            .and_then(|object| object.values().next())
            .and_then(Value::as_str)
            .expect("an element")
            .to_owned()
    }

    async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.get(&format!("/element/{element}/text")).await.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` in the page through the driver (DevTools, outside the page's CSP).
    async fn evaluate(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []})).await
    }

    /// Whether an alert (or confirm, or prompt) is open: the sign that page script ran.
    async fn alert_open(&self) -> bool {
        self.call(reqwest::Method::GET, "/alert/text", None).await.0 == 200
    }

    async fn colour_scheme(&self, scheme: &str) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Emulation.setEmulatedMedia", "params": {"features": [{"name": "prefers-color-scheme", "value": scheme}]}}),
        )
        .await;
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        use base64::Engine as _;
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64 PNG")).expect("a PNG");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).expect("the screenshot dir");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).expect("the screenshot is written");
        path
    }
}

fn find(names: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .find_map(|name| std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()))
        .map(|found| found.display().to_string())
}

#[tokio::test]
async fn the_pages_render_in_a_browser_and_a_filter_round_trips_through_the_url() {
    let _one = BROWSER.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;

    browser.open(&server.url("/ui/")).await;
    assert_eq!(browser.text("h1").await, "Overview");
    browser.screenshot("overview-light").await;
    browser.open(&server.url("/ui/tickets")).await;
    browser
        .post(&format!("/element/{}/click", browser.element("input[name=state][value=failed]").await), json!({}))
        .await;
    let workspace = browser.element("input[name=workspace]").await;
    browser.post(&format!("/element/{workspace}/value"), json!({"text": "ws-a"})).await;
    browser
        .post(&format!("/element/{}/click", browser.element("form.filters button[type=submit]").await), json!({}))
        .await;
    let url = eventually("the filtered page to load", || async {
        Some(browser.url().await).filter(|url| url.contains("workspace=ws-a"))
    })
    .await;
    assert!(url.contains("state=failed"), "{url}");
    let rows = browser.evaluate("return Array.from(document.querySelectorAll('tbody tr')).length").await;
    assert_eq!(rows, json!(1), "only the failed ticket of ws-a");
    let kept = browser.evaluate("return document.querySelector('input[name=state][value=failed]').checked").await;
    assert_eq!(kept, json!(true), "the form shows the filter from the URL");
    browser.screenshot("tickets-filtered").await;
    browser.open(&server.url(&format!("/ui/tickets/{}", row_id(&env, "t-3").await))).await;
    assert!(browser.text("h1").await.contains("t-3"));
    browser.screenshot("ticket").await;
    browser.open(&server.url("/ui/deliveries")).await;
    assert_eq!(browser.text("h1").await, "Webhook deliveries");
    browser.screenshot("deliveries").await;
}

#[tokio::test]
async fn the_hostile_row_shows_as_text_and_runs_nothing_in_a_browser() {
    let _one = BROWSER.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    for path in ["/ui/tickets".to_owned(), format!("/ui/tickets/{}", row_id(&env, "<script>alert(1)</script>").await)] {
        browser.open(&server.url(&path)).await;
        assert!(!browser.alert_open().await, "{path}: page script ran");
        let text = browser.evaluate("return document.body.innerText").await;
        assert!(text.as_str().unwrap_or_default().contains("<script>alert(1)</script>"), "{path}: {text}");
        let injected = browser.evaluate("return document.querySelectorAll('script, img').length").await;
        assert_eq!(injected, json!(0), "{path}: no element came from the data");
    }
    browser.screenshot("hostile-ticket").await;
}

#[tokio::test]
async fn both_colour_schemes_keep_text_readable() {
    let _one = BROWSER.lock().await;
    let Some(browser) = Browser::start().await else { return };
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let mut backgrounds = Vec::new();
    for scheme in ["light", "dark"] {
        browser.colour_scheme(scheme).await;
        for path in ["/ui/", "/ui/tickets"] {
            browser.open(&server.url(path)).await;
            // Every element with text of its own: its colour against the page background.
            let pairs = browser
                .evaluate(
                    "const bg = getComputedStyle(document.body).backgroundColor;
                     return [bg, Array.from(document.querySelectorAll('body *'))
                       .filter(e => Array.from(e.childNodes).some(n => n.nodeType === 3 && n.textContent.trim()))
                       .map(e => getComputedStyle(e).color)];",
                )
                .await;
            let background = rgb(pairs[0].as_str().expect("a colour"));
            let colours: Vec<[f64; 3]> =
                pairs[1].as_array().expect("colours").iter().map(|colour| rgb(colour.as_str().unwrap())).collect();
            assert!(colours.len() > 10, "{path}: text found");
            let worst = colours.iter().map(|colour| contrast(*colour, background)).fold(f64::MAX, f64::min);
            assert!(worst >= 4.5, "{scheme} {path}: contrast {worst:.2} below WCAG AA 4.5");
            backgrounds.push(luminance(background));
            let page = if path == "/ui/" { "overview" } else { "tickets" };
            browser.screenshot(&format!("{page}-{scheme}-scheme")).await;
        }
    }
    assert!(backgrounds[0] > 0.8 && backgrounds[2] < 0.1, "light and dark backgrounds differ: {backgrounds:?}");
}

/// `rgb(r, g, b)` or `rgba(r, g, b, a)` as 0..1 channels.
fn rgb(css: &str) -> [f64; 3] {
    let inner = css.trim_start_matches("rgba(").trim_start_matches("rgb(").trim_end_matches(')');
    let mut channels = inner.split(',').map(|part| part.trim().parse::<f64>().expect("a channel") / 255.0);
    [channels.next().unwrap(), channels.next().unwrap(), channels.next().unwrap()]
}

/// WCAG relative luminance.
fn luminance([r, g, b]: [f64; 3]) -> f64 {
    let linear = |c: f64| if c <= 0.039_28 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) };
    0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
}

/// WCAG contrast ratio, 1 to 21.
fn contrast(a: [f64; 3], b: [f64; 3]) -> f64 {
    let (light, dark) = {
        let (x, y) = (luminance(a), luminance(b));
        if x > y { (x, y) } else { (y, x) }
    };
    (light + 0.05) / (dark + 0.05)
}
