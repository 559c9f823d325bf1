//! The operator pages over real HTTP: each page and filter against a real SQLite file, values
//! escaped, the security headers, who may see the pages (loopback, basic auth), the query budget,
//! and that every metric the Grafana dashboard and the alert rules name exists in `/metrics`.
//!
//! The server is the daemon's own router and state (`daemon::build`), served on 127.0.0.1:0.
//! A client that is not on loopback is played by `MockConnectInfo`, the address axum hands the
//! pages when no real one is attached.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use flink_ticketd::clock::SystemClock;
use flink_ticketd::daemon;
use flink_ticketd::http::{self, BasicAuth, HttpState, RetentionView, UiSettings};
use flink_ticketd::retention::RunLog;
use flink_ticketd::service::Liveness;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestEnv, quote};

/// A page server over `env`'s database.
pub(crate) struct UiServer {
    pub(crate) address: SocketAddr,
    pub(crate) state: HttpState,
    shutdown: CancellationToken,
}

impl Drop for UiServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Who the server believes the client is.
pub(crate) enum Client {
    /// The real peer address (loopback in tests).
    Real,
    /// Every request seems to come from this address.
    Seen(SocketAddr),
}

impl UiServer {
    pub(crate) async fn start(env: &TestEnv, client: Client, ui: UiSettings) -> UiServer {
        UiServer::start_with(env, client, ui, |_| {}).await
    }

    /// [`UiServer::start`] with the configuration changed by `adjust`.
    pub(crate) async fn start_with(
        env: &TestEnv,
        client: Client,
        ui: UiSettings,
        adjust: impl FnOnce(&mut flink_ticketd::config::Config),
    ) -> UiServer {
        let config = env.config(adjust);
        let parts =
            daemon::build(&config, Arc::new(SystemClock), Duration::from_millis(100)).await.expect("the parts build");
        let liveness = Arc::new(Liveness::new(Duration::from_secs(15)));
        liveness.watch("poll", Arc::clone(&parts.poller.heartbeat.progress));
        let state = HttpState {
            store: parts.store.clone(),
            metrics: Arc::clone(&parts.metrics),
            liveness,
            poller: Arc::clone(&parts.poller),
            clock: Arc::new(SystemClock),
            credentials: parts.credentials.clone(),
            started_at: chrono::Utc::now(),
            retention: RetentionView {
                schedule: config.retention.schedule.clone(),
                keep: config.retention.keep,
                log: Arc::new(RunLog::default()),
            },
            ui,
            ui_slots: Arc::new(tokio::sync::Semaphore::new(http::UI_QUERY_SLOTS)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        let shutdown = CancellationToken::new();
        match client {
            Client::Real => {
                tokio::spawn(http::serve(listener, state.clone(), shutdown.clone()));
            }
            Client::Seen(peer) => {
                let app = http::router(state.clone()).layer(MockConnectInfo(peer));
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await.expect("serves")
                });
            }
        }
        UiServer { address, state, shutdown }
    }

    pub(crate) async fn loopback(env: &TestEnv) -> UiServer {
        UiServer::start(env, Client::Real, UiSettings { enabled: true, ..UiSettings::default() }).await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) async fn get(&self, path: &str) -> Page {
        Page::from(reqwest::get(self.url(path)).await.expect("the server answers")).await
    }
}

pub(crate) struct Page {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    async fn from(response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        Page { status, headers, body: response.text().await.expect("a body") }
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
    }

    /// The row ids linked as `tickets/N` from a list, in page order.
    fn ticket_links(&self) -> Vec<i64> {
        let mut ids = Vec::new();
        for piece in self.body.split("href=\"tickets/").skip(1) {
            let id = piece.split('"').next().and_then(|id| id.parse().ok()).expect("a row id in the link");
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The `older` link's query string, HTML entities undone.
    fn older_link(&self, page: &str) -> Option<String> {
        let start = self.body.find(&format!("rel=\"next\" href=\"{page}?"))?;
        let href = self.body[start..].split("href=\"").nth(1)?.split('"').next()?;
        Some(href.replace("&amp;", "&"))
    }
}

/// Seven tickets: three in workspace `ws-a` (one failed with `Throttling.User`), three in `ws-b`,
/// and one whose ID and message are HTML and script; plus deliveries for two of them.
pub(crate) async fn seed(env: &TestEnv) {
    for (ticket, workspace) in [("t-1", "ws-a"), ("t-2", "ws-b"), ("t-3", "ws-a"), ("t-4", "ws-b"), ("t-5", "ws-a")] {
        env.insert(ticket, "default-namespace", workspace).await;
    }
    env.insert("t-6", "default-namespace", "ws-b").await;
    env.insert("<script>alert(1)</script>", "default-namespace", "ws-b").await;
    env.execute_sql(
        "UPDATE tickets SET state = 'failed', error_code = 'Throttling.User', polls = 4,
            error_message = 'slow down <b>now</b>', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
            request_id = 'REQ-3'
         WHERE ticket_id = 't-3';
         UPDATE tickets SET state = 'succeeded', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE ticket_id = 't-4';
         UPDATE tickets SET message = '<img src=x onerror=alert(2)>' WHERE ticket_id LIKE '<script>%';",
    )
    .await;
    let body = r#"{"type":"ticket.failed","data":{"ticket_id":"t-3","note":"<i>signed</i>"}}"#;
    env.execute_sql(&format!(
        "INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, state, attempts, last_http_status, last_error)
         SELECT id, 'https://user:pw@hooks.example.com/flink?token=abc', 'tkt_' || id || '_0.failed', 'ticket.failed', {body}, 'dead', 9, 500, 'HTTP 500'
         FROM tickets WHERE ticket_id = 't-3';
         INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload, state, attempts)
         SELECT id, 'https://hooks.example.com/flink', 'tkt_' || id || '_0.succeeded', 'ticket.succeeded', '{{}}', 'delivered', 1
         FROM tickets WHERE ticket_id = 't-4';
         INSERT INTO webhook_attempts (delivery, attempt, at, duration_ms, http_status, error)
         SELECT id, 1, created_at, 1234, 500, 'HTTP 500 <from receiver>' FROM webhook_deliveries WHERE state = 'dead';",
        body = quote(body)
    ))
    .await;
}

pub(crate) async fn row_id(env: &TestEnv, ticket_id: &str) -> i64 {
    env.ticket(ticket_id).await.id.0
}

#[tokio::test]
async fn overview_shows_readiness_tickets_by_state_and_the_webhook_backlog() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let page = server.get("/ui/").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.header("content-type").starts_with("text/html"));
    for expected in [
        "Ready: the database answers",
        "Polling is not paused globally.",
        "No workspace is paused.",
        "href=\"tickets?state=pending\"",
        "requests/s now",
        "1 dead</a>",
        "0 waiting</a>",
        "Finished tickets older than",
        env!("CARGO_PKG_VERSION"),
        "href=\"style.css\"",
    ] {
        assert!(page.body.contains(expected), "{expected:?} missing from the overview:\n{}", page.body);
    }
    // Five pending, one failed, one succeeded.
    assert!(page.body.contains("state-pending\">pending</span></a></td><td class=\"num\">5</td>"), "{}", page.body);
    assert!(!page.body.contains("http-equiv=\"refresh\""), "no auto-refresh unless asked");
    let refreshed = server.get("/ui/?refresh=1").await;
    assert!(refreshed.body.contains("http-equiv=\"refresh\" content=\"5\""), "refresh is never faster than 5 s");
}

#[tokio::test]
async fn every_page_and_error_carries_the_strict_headers() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let id = row_id(&env, "t-3").await;
    for path in [
        "/ui/".to_owned(),
        "/ui/tickets".to_owned(),
        format!("/ui/tickets/{id}"),
        "/ui/deliveries".to_owned(),
        "/ui/tickets/999999".to_owned(),
        "/ui/tickets?state=bogus".to_owned(),
        "/ui/style.css".to_owned(),
    ] {
        let page = server.get(&path).await;
        assert_eq!(page.header("content-security-policy"), http::CSP, "{path}");
        assert!(page.header("content-security-policy").contains("default-src 'none'"), "{path}");
        assert_eq!(page.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(page.header("referrer-policy"), "no-referrer", "{path}");
        assert!(!page.body.contains("<script"), "{path}: no script element on any page");
    }
    let css = server.get("/ui/style.css").await;
    assert!(css.header("content-type").starts_with("text/css"));
    assert!(css.body.contains("prefers-color-scheme: dark"));
    let posted = reqwest::Client::new().post(server.url("/ui/tickets")).send().await.expect("an answer");
    assert_eq!(posted.status().as_u16(), 405, "the pages are GET only");
}

#[tokio::test]
async fn ticket_filters_narrow_the_list_newest_first_and_page_through_older_links() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let mut ws_a = Vec::new();
    for ticket in ["t-5", "t-3", "t-1"] {
        ws_a.push(row_id(&env, ticket).await);
    }
    let first = server.get("/ui/tickets?workspace=ws-a&limit=2").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.ticket_links(), ws_a[..2].to_vec(), "newest first, two per page");
    let older = first.older_link("tickets").expect("a full page links to older rows");
    assert!(older.contains("workspace=ws-a") && older.contains("limit=2"), "the filter is kept: {older}");
    let second = server.get(&format!("/ui/{older}")).await;
    assert_eq!(second.ticket_links(), ws_a[2..].to_vec());
    assert!(second.older_link("tickets").is_none(), "the last page has no older link");

    let failed = server.get("/ui/tickets?state=failed&state=succeeded").await;
    let mut expected = vec![row_id(&env, "t-4").await, ws_a[1]];
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(failed.ticket_links(), expected);
    assert!(failed.body.contains("value=\"failed\" checked"), "the form shows the filter in force");
    let by_kind = server.get("/ui/tickets?kind=deploy&workspace=ws-a").await;
    assert_eq!(by_kind.ticket_links(), ws_a);
    assert!(server.get("/ui/tickets?kind=validate").await.ticket_links().is_empty());
    let by_code = server.get("/ui/tickets?error_code=Throttling.User").await;
    assert_eq!(by_code.ticket_links(), vec![ws_a[1]]);
    let dead = server.get("/ui/tickets?dead_webhook=1").await;
    assert_eq!(dead.ticket_links(), vec![ws_a[1]]);
    let by_id = server.get("/ui/tickets?ticket_id=t-2&namespace=default-namespace").await;
    assert_eq!(by_id.ticket_links(), vec![row_id(&env, "t-2").await]);
    let none = server.get("/ui/tickets?namespace=elsewhere").await;
    assert!(none.ticket_links().is_empty() && none.body.contains("No ticket matches."));
}

#[tokio::test]
async fn bad_filters_get_a_400_that_says_what_is_wrong() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    for (path, says) in [
        ("/ui/tickets?state=done", "state:"),
        ("/ui/tickets?kind=bogus", "kind:"),
        ("/ui/tickets?limit=501", "limit: expected 1 to 500"),
        ("/ui/tickets?limit=0", "limit: expected 1 to 500"),
        ("/ui/tickets?older=abc", "older: expected a row id"),
        ("/ui/tickets?dead_webhook=yes", "dead_webhook: expected 1 or 0"),
        ("/ui/tickets?%3Cscript%3E=1", "unknown filter &quot;&lt;script&gt;"),
        ("/ui/deliveries?event_type=ticket.bogus", "event_type: expected"),
        ("/ui/deliveries?min_attempts=-1", "min_attempts: expected a count"),
        ("/ui/?refresh=soon", "refresh: expected a number"),
    ] {
        let page = server.get(path).await;
        assert_eq!(page.status, 400, "{path}");
        assert!(page.body.contains(says), "{path}: {says:?} missing from\n{}", page.body);
    }
    assert_eq!(server.get("/ui/tickets/not-a-number").await.status, 404);
}

#[tokio::test]
async fn hostile_values_render_as_text_on_every_page() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let id = row_id(&env, "<script>alert(1)</script>").await;
    let list = server.get("/ui/tickets").await;
    assert!(list.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{}", list.body);
    let detail = server.get(&format!("/ui/tickets/{id}")).await;
    assert_eq!(detail.status, 200);
    assert!(detail.body.contains("&lt;img src=x onerror=alert(2)&gt;"), "{}", detail.body);
    assert!(detail.body.contains("flink-ticketd cancel '&lt;script&gt;alert(1)&lt;/script&gt;'"), "{}", detail.body);
    for page in [&list, &detail] {
        assert!(!page.body.contains("<script") && !page.body.contains("<img"), "{}", page.body);
    }
    let failed = server.get(&format!("/ui/tickets/{}", row_id(&env, "t-3").await)).await;
    assert!(failed.body.contains("slow down &lt;b&gt;now&lt;/b&gt;"));
}

#[tokio::test]
async fn the_ticket_page_shows_its_columns_request_id_first_deliveries_and_commands() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let id = row_id(&env, "t-3").await;
    let page = server.get(&format!("/ui/tickets/{id}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let request_id = page.body.find("REQ-3").expect("the request id is shown");
    for column in ["ticket_id", "workspace", "state", "error_code", "polls", "created_at", "finished_at"] {
        let at = page.body.find(&format!("<dt>{column}</dt>")).unwrap_or_else(|| panic!("{column} missing"));
        assert!(request_id < at, "request_id comes before {column}");
    }
    for expected in [
        "Throttling.User",
        "flink-ticketd retry t-3",
        "flink-ticketd webhooks resend",
        "tkt_",
        "&lt;i&gt;signed&lt;/i&gt;",
        "https://hooks.example.com/flink</dd>",
        "href=\"../style.css\"",
        "href=\"../tickets\"",
        "<h2>Timeline</h2>",
        "first poll",
        "<td>final</td>",
        "1234 ms",
        "HTTP 500 &lt;from receiver&gt;",
    ] {
        assert!(page.body.contains(expected), "{expected:?} missing:\n{}", page.body);
    }
    assert!(!page.body.contains("user:pw") && !page.body.contains("token=abc"), "no userinfo or query in URLs");
    assert!(page.body.contains("UTC") || page.body.contains("Z</time>"), "absolute UTC times");
}

#[tokio::test]
async fn delivery_filters_narrow_the_list_and_link_each_row_to_its_ticket() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    seed(&env).await;
    let t3 = row_id(&env, "t-3").await;
    let t4 = row_id(&env, "t-4").await;
    let all = server.get("/ui/deliveries").await;
    assert_eq!(all.ticket_links(), vec![t4, t3]);
    assert!(!all.body.contains("user:pw") && !all.body.contains("token"), "{}", all.body);
    for (query, expected) in [
        ("state=dead", vec![t3]),
        ("state=delivered", vec![t4]),
        ("event_type=ticket.succeeded", vec![t4]),
        ("min_attempts=2", vec![t3]),
        ("state=pending", vec![]),
    ] {
        let page = server.get(&format!("/ui/deliveries?{query}")).await;
        assert_eq!(page.status, 200, "{query}");
        assert_eq!(page.ticket_links(), expected, "{query}");
    }
    let paged = server.get("/ui/deliveries?limit=1").await;
    let older = paged.older_link("deliveries").expect("an older link");
    assert_eq!(server.get(&format!("/ui/{older}")).await.ticket_links(), vec![t3]);
}

#[tokio::test]
async fn a_client_off_loopback_gets_403_without_basic_auth() {
    let env = TestEnv::new("").await;
    let outside: SocketAddr = "203.0.113.7:50000".parse().unwrap();
    let server =
        UiServer::start(&env, Client::Seen(outside), UiSettings { enabled: true, ..UiSettings::default() }).await;
    for path in ["/ui/", "/ui/tickets", "/ui/style.css"] {
        let page = server.get(path).await;
        assert_eq!(page.status, 403, "{path}");
        assert!(page.body.contains("http.ui_auth_file"), "the 403 says how to open the pages");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
    }
    // The operational endpoints stay open to the scraper.
    assert_eq!(server.get("/metrics").await.status, 200);
    let loopback = "127.0.0.1:50000".parse().unwrap();
    let local =
        UiServer::start(&env, Client::Seen(loopback), UiSettings { enabled: true, ..UiSettings::default() }).await;
    assert_eq!(local.get("/ui/").await.status, 200);
}

#[tokio::test]
async fn with_basic_auth_every_client_needs_the_pair() {
    let env = TestEnv::new("").await;
    let auth = BasicAuth::parse("ops:correct horse").expect("a pair");
    let ui = UiSettings { enabled: true, auth: Some(auth), auth_file: None };
    let outside: SocketAddr = "198.51.100.4:1234".parse().unwrap();
    for server in [
        UiServer::start(&env, Client::Seen(outside), ui.clone()).await,
        UiServer::start(&env, Client::Real, ui.clone()).await,
    ] {
        let anonymous = server.get("/ui/").await;
        assert_eq!(anonymous.status, 401);
        assert!(anonymous.header("www-authenticate").starts_with("Basic realm="));
        let client = reqwest::Client::new();
        let wrong = client.get(server.url("/ui/")).basic_auth("ops", Some("wrong")).send().await.unwrap();
        assert_eq!(wrong.status().as_u16(), 401);
        let right = client.get(server.url("/ui/")).basic_auth("ops", Some("correct horse")).send().await.unwrap();
        assert_eq!(right.status().as_u16(), 200);
        assert_eq!(right.headers()["content-security-policy"], http::CSP);
    }
}

#[tokio::test]
async fn with_http_ui_off_the_pages_are_not_served() {
    let env = TestEnv::new("").await;
    let server = UiServer::start(&env, Client::Real, UiSettings::default()).await;
    assert_eq!(server.get("/ui/").await.status, 404);
    assert_eq!(server.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn pages_answer_503_while_both_query_slots_are_taken_and_metrics_still_answer() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    let slots = Arc::clone(&server.state.ui_slots);
    let held = slots.acquire_many(http::UI_QUERY_SLOTS as u32).await.expect("the slots");
    let busy = server.get("/ui/tickets").await;
    assert_eq!(busy.status, 503);
    assert_eq!(busy.header("retry-after"), "5");
    assert_eq!(server.get("/metrics").await.status, 200, "/metrics does not wait for the pages");
    drop(held);
    assert_eq!(server.get("/ui/tickets").await.status, 200);
}

#[tokio::test]
async fn ui_auth_file_problems_stop_the_configuration() {
    let env = TestEnv::new("").await;
    let check = |content: Option<&str>| {
        let file = env.dir.path().join("ui-auth");
        let _ = std::fs::remove_file(&file);
        if let Some(content) = content {
            std::fs::write(&file, content).unwrap();
        }
        let config = env.config_file_with("");
        let text = std::fs::read_to_string(&config).unwrap().replace(
            "[http]\nlisten = \"\"",
            &format!("[http]\nlisten = \"\"\nui_auth_file = {:?}", file.display().to_string()),
        );
        std::fs::write(&config, text).unwrap();
        flink_ticketd::config::load(Some(&config))
    };
    let missing = check(None).expect_err("a missing file is refused").to_string();
    assert!(missing.contains("http.ui_auth_file"), "{missing}");
    let malformed = check(Some("only-a-user-name-and-hunter2\n")).expect_err("no colon").to_string();
    assert!(malformed.contains("user:password") && !malformed.contains("hunter2"), "{malformed}");
    let config = check(Some("ops:hunter2\n")).expect("a good file");
    assert!(config.ui.auth.is_some());
    assert!(!config.describe().contains("hunter2"), "check-config never shows the password");
}

#[tokio::test]
async fn every_metric_named_by_the_dashboard_and_the_alert_rules_exists_in_metrics() {
    let env = TestEnv::new("").await;
    let server = UiServer::loopback(&env).await;
    let page = server.get("/metrics").await;
    assert_eq!(page.status, 200);
    // Every series name a family yields, from its `# TYPE` line, so that a family with no sample
    // yet (a counter nobody has bumped) counts too.
    let mut exposed = BTreeSet::new();
    for line in page.body.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            exposed.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in ["deploy/grafana/flink-ticketd.json", "deploy/prometheus/flink-ticketd.rules.yml"] {
        let text = std::fs::read_to_string(root.join(file)).expect("the file exists");
        let named = metric_names(&text);
        assert!(named.len() > 5, "{file} names few metrics: {named:?}");
        for name in named {
            assert!(exposed.contains(&name), "{file} names {name}, which /metrics does not expose:\n{exposed:#?}");
            checked += 1;
        }
    }
    assert!(checked > 20);
}

/// Every `flink_ticketd_*` identifier in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("flink_ticketd_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn the_overview_names_a_paused_workspace_with_its_reason_and_next_probe() {
    let env = TestEnv::new("[[tickets]]\nprefix = \"denied-\"\nsteps = [{ error = \"NoPermission\" }]").await;
    let ui = UiSettings { enabled: true, ..UiSettings::default() };
    // Pauses start at a minute, so the page is read well within the pause.
    let server = UiServer::start_with(&env, Client::Real, ui, |config| {
        config.poll.initial_interval = Duration::from_secs(60);
        config.poll.max_interval = Duration::from_secs(60);
    })
    .await;
    env.insert("denied-1", "default-namespace", "closed-<ws>").await;
    flink_ticketd::claim_loop::drain(&server.state.poller).await.expect("the ticket is claimed");
    let page = server.get("/ui/").await;
    assert_eq!(page.status, 200);
    for expected in [
        "href=\"tickets?workspace=closed-%3Cws%3E\">closed-&lt;ws&gt;</a>",
        "NoPermission",
        "Polling is not paused globally.",
    ] {
        assert!(page.body.contains(expected), "{expected:?} missing:\n{}", page.body);
    }
    assert!(page.body.contains("(in 59 s)") || page.body.contains("(in 1 min"), "the next probe is a minute away");
    let metrics = server.get("/metrics").await;
    assert!(metrics.body.lines().any(|line| line == "flink_ticketd_workspaces_paused 1"), "{}", metrics.body);
    let ticket = env.ticket("denied-1").await;
    let events = server.state.store.ticket_events(ticket.id).await.unwrap();
    assert_eq!(events.iter().map(|event| event.kind.as_str()).collect::<Vec<_>>(), ["first_poll", "pause"]);
}
