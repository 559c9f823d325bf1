//! The cloud integration end to end over the simulator and loopback fakes: `deploy` (with and
//! without `--wait`, with and without a daemon), per-ticket regions, clock skew, temporary
//! credentials in the daemon (OIDC against a fake STS: refresh after a refused token, a pause when
//! they expire and cannot be refreshed), keep-alive reuse, proxies, and what `check-config` says
//! about credentials.

use std::sync::Arc;
use std::time::Duration;

use flink_ticketd::clock::{Clock, ManualClock};
use flink_ticketd::domain::TicketState;
use flink_ticketd::flink::CredentialError;
use flink_ticketd::flink::credentials::ChainEnvironment;
use flink_ticketd::simulator::{Scenario, Step};
use serde_json::json;
use sqlx::Connection as _;
use url::Url;

use crate::harness::{FakeHttp, HANG, KEY_SECRET, TestEnv, eventually};

const DRAFTS: &str = r#"
[[tickets]]
draft = "draft-ok"
steps = [{ status = "INIT" }, { status = "EXECUTING" }, { status = "FINISHED", success = true, deployment_id = "dep-ok" }]

[[tickets]]
draft = "draft-bad-sql"

[[tickets.steps]]
status = "EXECUTING"

[[tickets.steps]]
status = "FINISHED"
success = false
message = "The SQL is invalid."
validation_result = "VALIDATION_RESULT_INVALID_QUERY"
errors = [{ line = 3, column = 10, end_line = 3, end_column = 14, message = "Object 'orders' not found" }]
"#;

fn deploy_args<'a>(draft_id: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["deploy", "--namespace", "ns", "--workspace", "ws-1", "--draft-id", draft_id];
    args.extend_from_slice(extra);
    args
}

/// The test configuration without the explicit access key, so the default chain applies.
fn config_without_keys(env: &TestEnv) -> std::path::PathBuf {
    let text: String = env
        .config_text()
        .lines()
        .filter(|line| !line.starts_with("access_key_"))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = env.dir.path().join("chain.toml");
    std::fs::write(&path, text).expect("the config file is written");
    path
}

fn sts_answer(key: &str, expires_at: chrono::DateTime<chrono::Utc>) -> (u16, String) {
    let body = json!({
        "RequestId": "sts-request",
        "Credentials": {
            "AccessKeyId": key,
            "AccessKeySecret": format!("{key}-secret"),
            "SecurityToken": format!("{key}-token"),
            "Expiration": expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }
    });
    (200, body.to_string())
}

/// OIDC (RRSA) variables pointing at `sts`, with a token file in the test's temp dir.
fn oidc_chain(env: &TestEnv, sts: &FakeHttp) -> ChainEnvironment {
    let token_file = env.dir.path().join("oidc-token");
    std::fs::write(&token_file, "oidc-token").expect("the token file is written");
    let mut chain = ChainEnvironment::from_vars([
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token_file.to_str().expect("a UTF-8 path")),
        ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/ticketd"),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/ack"),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ]);
    chain.sts_endpoint = Some(Url::parse(&sts.base_url).expect("a URL"));
    chain
}

#[tokio::test]
async fn deploy_wait_exits_zero_when_the_draft_deploys() {
    let env = TestEnv::new(DRAFTS).await;
    let deployed =
        env.cli_async(&env.config_file(), &deploy_args("draft-ok", &["--target", "queue-a", "--wait"]), &[]).await;
    assert_eq!(deployed.code, Some(0), "{}", deployed.stderr);
    let ticket_id = deployed.stdout.lines().next().expect("the ticket ID comes first").trim().to_owned();
    assert!(deployed.stdout.contains("succeeded: deployment dep-ok"), "{}", deployed.stdout);
    let row = env.ticket(&ticket_id).await;
    assert_eq!((row.state.as_str(), row.polls), ("succeeded", 3));
    let requests = env.sim.requests();
    assert_eq!(requests[0].draft_id.as_deref(), Some("draft-ok"));
    assert_eq!(requests[0].ticket_id.as_deref(), Some(ticket_id.as_str()));
}

#[tokio::test]
async fn deploy_wait_exits_one_and_prints_validation_errors_as_line_column_message() {
    let env = TestEnv::new(DRAFTS).await;
    let deployed = env.cli_async(&env.config_file(), &deploy_args("draft-bad-sql", &["--wait"]), &[]).await;
    assert_eq!(deployed.code, Some(1), "{}", deployed.stderr);
    assert!(deployed.stderr.lines().any(|line| line == "3:10: Object 'orders' not found"), "{}", deployed.stderr);
    let last = deployed.stderr.lines().last().expect("a final error line");
    assert!(last.starts_with("flink-ticketd: ticket "), "{last}");
    assert!(last.contains(" failed: FINISHED; VALIDATION_RESULT_INVALID_QUERY; The SQL is invalid."), "{last}");
}

#[tokio::test]
async fn deploy_wait_finishes_alongside_a_daemon_polling_the_same_database() {
    let env = TestEnv::new(DRAFTS).await;
    let daemon = env.spawn_daemon(|_| {}).await;
    let deployed = env.cli_async(&env.config_file(), &deploy_args("draft-ok", &["--wait", "--json"]), &[]).await;
    assert_eq!(deployed.code, Some(0), "{}", deployed.stderr);
    let row: serde_json::Value = serde_json::from_str(&deployed.stdout).expect("--wait --json prints the final row");
    assert_eq!((row["state"].as_str(), row["polls"].as_i64()), (Some("succeeded"), Some(3)));
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn deploy_without_wait_prints_the_ticket_id_and_queues_it_with_its_region() {
    let env = TestEnv::new(DRAFTS).await;
    let deployed = env
        .cli_async(&env.config_file(), &deploy_args("draft-ok", &["--region", "eu-central-1", "--skip-validate"]), &[])
        .await;
    assert_eq!(deployed.code, Some(0), "{}", deployed.stderr);
    let ticket_id = deployed.stdout.trim();
    assert_eq!(deployed.stdout.lines().count(), 1, "only the ID: {}", deployed.stdout);
    let row = env.ticket(ticket_id).await;
    assert_eq!((row.state.as_str(), row.region.as_deref(), row.polls), ("pending", Some("eu-central-1"), 0));
}

#[tokio::test]
async fn unknown_region_is_refused_by_deploy_and_enqueue_before_anything_is_sent() {
    let env = TestEnv::new(DRAFTS).await;
    let deployed = env.cli(&deploy_args("draft-ok", &["--region", "mars-1"]));
    assert_eq!(deployed.code, Some(2), "{}", deployed.stderr);
    assert!(
        deployed.stderr.contains("--region: unknown region \"mars-1\"; known regions: cn-qingdao"),
        "{}",
        deployed.stderr
    );
    let queued = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "--region", "mars-1", "t-1"]);
    assert_eq!(queued.code, Some(2), "{}", queued.stderr);
    assert!(queued.stderr.contains("unknown region \"mars-1\""), "{}", queued.stderr);
    assert!(env.sim.requests().is_empty());
    assert!(env.tickets("t-1").await.is_empty());
}

#[tokio::test]
async fn ticket_with_an_unknown_region_is_refused_at_insert_or_failed_as_invalid_ticket_even_with_an_endpoint_override()
{
    let env = TestEnv::new("").await;
    let driven = env.driven(|_| {}).await;
    let insert =
        "INSERT INTO tickets (ticket_id, namespace, workspace, region) VALUES ('t-mars', 'ns', 'ws', 'mars-1')";
    let url = format!("sqlite://{}", env.db_path.display());
    let mut connection = sqlx::SqliteConnection::connect(&url).await.expect("a plain connection");
    let refused = sqlx::raw_sql(insert).execute(&mut connection).await.expect_err("the insert is refused");
    assert!(refused.to_string().contains("region_must_be_known"), "{refused}");
    connection.close().await.expect("the connection closes");
    // A row written with the checks switched off still never reaches the network.
    env.execute_sql(&format!("PRAGMA ignore_check_constraints = ON; {insert}")).await;
    env.execute_sql(
        "INSERT INTO tickets (ticket_id, namespace, workspace, region) VALUES ('t-eu', 'ns', 'ws', 'eu-west-1')",
    )
    .await;
    driven.settle().await;
    let refused = env.ticket("t-mars").await;
    assert_eq!((refused.state.as_str(), refused.error_code.as_deref()), ("failed", Some("InvalidTicket")));
    assert!(refused.error_message.as_deref().unwrap_or("").contains("unknown region \"mars-1\""), "{refused:?}");
    assert_eq!(env.ticket("t-eu").await.state, TicketState::Succeeded, "a known region goes to the override");
    assert_eq!(env.sim.polls_of("t-mars"), 0);
    driven.stop().await;
}

#[tokio::test]
async fn daemon_signs_with_the_api_clock_when_it_is_an_hour_ahead() {
    let env = TestEnv::with_clock_offset(Scenario::default(), 3600).await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-skew", "ns", "ws").await;
    driven.settle().await;
    let row = env.ticket("t-skew").await;
    assert_eq!((row.state.as_str(), row.polls), ("succeeded", 3));
    let answers: Vec<String> = env.sim.requests().into_iter().map(|request| request.answer).collect();
    assert_eq!(answers, ["rejected InvalidTimeStamp.Expired", "INIT", "EXECUTING", "FINISHED"]);
    driven.stop().await;
}

#[tokio::test]
async fn daemon_with_oidc_credentials_refreshes_once_after_an_invalid_security_token() {
    let scenario = Scenario::default()
        .with_ticket("t-token", vec![Step::error("InvalidSecurityToken.Expired"), Step::finished_ok()]);
    let env = TestEnv::with_scenario(scenario).await;
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    let sts = FakeHttp::start(move |_| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        sts_answer(&format!("STS.{n}"), expires)
    })
    .await;
    env.sim.set_credentials(vec![
        ("STS.1".to_owned(), "STS.1-secret".to_owned()),
        ("STS.2".to_owned(), "STS.2-secret".to_owned()),
    ]);
    let chain = oidc_chain(&env, &sts);
    let driven = env
        .driven(move |config| {
            config.flink.credentials = None;
            config.flink.credential_chain = chain;
        })
        .await;
    env.insert("t-token", "ns", "ws").await;
    driven.settle().await;
    let row = env.ticket("t-token").await;
    assert_eq!((row.state.as_str(), row.error_code.as_deref()), ("succeeded", None));
    assert_eq!(sts.count(), 2, "one fetch at start, one refresh after the refused token");
    assert_eq!(sts.seen()[1].query.get("Action").map(String::as_str), Some("AssumeRoleWithOIDC"));
    assert_eq!(env.sim.polls_of("t-token"), 2);
    driven.stop().await;
}

#[tokio::test]
async fn daemon_refuses_to_start_when_no_source_gives_credentials() {
    let env = TestEnv::new("").await;
    let daemon = env
        .spawn_daemon(|config| {
            config.flink.credentials = None;
            config.flink.credential_chain =
                ChainEnvironment::from_vars([("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")]);
        })
        .await;
    let outcome = tokio::time::timeout(HANG, daemon.handle).await.expect("run returns").expect("run joins");
    let error = outcome.expect_err("no credentials");
    assert!(matches!(error.downcast_ref(), Some(CredentialError::Invalid(_))), "{error:#}");
    let text = format!("{error:#}");
    assert!(text.starts_with("getting Alibaba Cloud credentials: no credentials found"), "{text}");
}

#[tokio::test]
async fn daemon_pauses_instead_of_stopping_when_credentials_expire_and_cannot_be_refreshed() {
    let scenario = Scenario::default().with_ticket("t-long", vec![Step::status("EXECUTING")]);
    let env = TestEnv::with_scenario(scenario).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let start = clock.now();
    let sts = FakeHttp::start(move |_| sts_answer("STS.1", start + chrono::Duration::hours(1))).await;
    env.sim.set_credentials(vec![
        ("STS.1".to_owned(), "STS.1-secret".to_owned()),
        ("STS.2".to_owned(), "STS.2-secret".to_owned()),
    ]);
    let chain = oidc_chain(&env, &sts);
    let daemon = env
        .spawn_daemon_with_clock(Arc::clone(&clock) as Arc<dyn Clock>, move |config| {
            config.flink.credentials = None;
            config.flink.credential_chain = chain;
            config.poll.deadline = Duration::from_secs(24 * 3600);
        })
        .await;
    env.insert("t-long", "ns", "ws").await;
    // The row's next_poll_at comes from SQLite's clock, a moment after the manual clock's start.
    clock.advance(chrono::Duration::seconds(1));
    // Recorded, not only answered: a result written after the jump below would be scheduled
    // from the jumped clock, and that clock never moves on by itself.
    eventually("the first poll to be recorded", || async { (env.ticket("t-long").await.polls >= 1).then_some(()) })
        .await;

    sts.set(|_| (503, "<html>unavailable</html>".to_owned()));
    clock.advance(chrono::Duration::hours(2));
    let paused = eventually("the ticket to show why it waits", || async {
        let row = env.ticket("t-long").await;
        (row.error_code.as_deref() == Some("CredentialsUnavailable")).then_some(row)
    })
    .await;
    assert_eq!(paused.state, TicketState::Pending);
    assert!(paused.error_message.unwrap_or_default().contains("HTTP 503"));
    assert!(!daemon.handle.is_finished(), "the daemon keeps running, paused");

    let polls_before = env.sim.polls_of("t-long");
    sts.set(move |_| sts_answer("STS.2", start + chrono::Duration::hours(5)));
    clock.advance(chrono::Duration::minutes(2));
    eventually("polling to resume with fresh credentials", || async {
        let row = env.ticket("t-long").await;
        (env.sim.polls_of("t-long") > polls_before && row.error_code.is_none()).then_some(())
    })
    .await;
    daemon.stop().await.expect("the daemon stops cleanly");
}

#[tokio::test]
async fn polls_reuse_one_keep_alive_connection() {
    let env = TestEnv::new("").await;
    let driven = env.driven(|_| {}).await;
    env.insert("t-1", "ns", "ws").await;
    driven.settle().await;
    assert_eq!(env.ticket("t-1").await.polls, 3);
    assert_eq!(env.sim.connections_accepted(), 1, "three polls over one connection");
    driven.stop().await;
}

#[tokio::test]
async fn http_proxy_variable_routes_api_requests_through_the_proxy_and_no_proxy_bypasses_it() {
    let env = TestEnv::new(DRAFTS).await;
    let proxy = FakeHttp::start(|_| {
        (200, json!({"requestId": "via-proxy", "success": true, "data": {"ticketId": "t-proxied"}}).to_string())
    })
    .await;
    let proxy_url = proxy.base_url.clone();
    let config = env.config_file();
    let proxied = env.cli_async(&config, &deploy_args("draft-ok", &[]), &[("HTTP_PROXY", &proxy_url)]).await;
    assert_eq!(proxied.code, Some(0), "{}", proxied.stderr);
    assert_eq!(proxied.stdout.trim(), "t-proxied");
    let seen = proxy.seen();
    assert_eq!(seen.len(), 1);
    let expected = format!("{}api/v2/namespaces/ns/deployment-drafts/async-deploy", env.sim.base_url() + "/");
    assert_eq!(seen[0].uri, expected, "the proxy gets the absolute URI");
    assert!(env.sim.requests().is_empty());

    let direct = env
        .cli_async(&config, &deploy_args("draft-ok", &[]), &[("HTTP_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")])
        .await;
    assert_eq!(direct.code, Some(0), "{}", direct.stderr);
    assert_eq!(proxy.count(), 1, "NO_PROXY bypasses the proxy");
    assert_eq!(env.sim.requests().len(), 1);
}

#[tokio::test]
async fn check_config_names_the_credential_source_without_contacting_it() {
    let env = TestEnv::new("").await;
    let config = config_without_keys(&env);

    let nothing = env.cli_with(&config, &["check-config"], &[]);
    assert_eq!(nothing.code, Some(2), "{}", nothing.stdout);
    assert!(nothing.stderr.contains("credentials: no credentials found"), "{}", nothing.stderr);

    let ecs = env.cli_with(&config, &["check-config"], &[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "false")]);
    assert_eq!(ecs.code, Some(0), "{}", ecs.stderr);
    assert!(
        ecs.stdout.contains("# credentials: ECS RAM role of this instance (metadata service http://100.100.100.200/)"),
        "{}",
        ecs.stdout
    );

    let from_env = env.cli_with(
        &config,
        &["check-config"],
        &[("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAI-env"), ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", KEY_SECRET)],
    );
    assert_eq!(from_env.code, Some(0), "{}", from_env.stderr);
    assert!(
        from_env.stdout.contains("# credentials: environment (ALIBABA_CLOUD_ACCESS_KEY_ID)"),
        "{}",
        from_env.stdout
    );
    assert!(!from_env.stdout.contains(KEY_SECRET) && !from_env.stderr.contains(KEY_SECRET));

    let home = env.dir.path().join("home");
    std::fs::create_dir_all(home.join(".aliyun")).expect("the CLI config dir is created");
    std::fs::write(
        home.join(".aliyun/config.json"),
        r#"{"current": "ci", "profiles": [{"name": "ci", "mode": "RamRoleArn", "access_key_id": "a"}]}"#,
    )
    .expect("the CLI config is written");
    let unsupported = env.cli_with(&config, &["check-config"], &[]);
    assert_eq!(unsupported.code, Some(2), "{}", unsupported.stdout);
    assert!(
        unsupported.stderr.contains("uses mode \"RamRoleArn\", which flink-ticketd does not support"),
        "{}",
        unsupported.stderr
    );
}

/// A TLS front on 127.0.0.1 for `upstream` (the simulator): it serves the fixture certificate,
/// issued by `tests/fixtures/test-ca.pem` for 127.0.0.1, and forwards the bytes unchanged.
async fn tls_front(upstream: std::net::SocketAddr, shutdown: tokio_util::sync::CancellationToken) -> String {
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(fixture("localhost-cert.pem"))
        .expect("the certificate fixture opens")
        .collect::<Result<_, _>>()
        .expect("the certificate fixture parses");
    let key = PrivateKeyDer::from_pem_file(fixture("localhost-key.pem")).expect("the key fixture parses");
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .expect("the fixture key matches its certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    format!("https://{address}")
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[tokio::test]
async fn extra_ca_bundle_lets_the_daemon_reach_an_endpoint_with_a_private_certificate() {
    use flink_ticketd::flink::{FlinkError, TicketRef};

    let env = TestEnv::new("").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let endpoint = Url::parse(&tls_front(env.sim.local_addr(), shutdown.clone()).await).expect("a URL");

    let untrusting = env.client_for(endpoint.clone());
    let ticket = TicketRef { namespace: "ns", workspace: "ws", ticket_id: "t-0", region: None };
    let refused = untrusting.get_deploy_result(ticket).await.expect_err("the private CA is not trusted by default");
    assert!(matches!(&refused, FlinkError::Network(message) if message.contains("certificate")), "{refused}");

    let driven = env
        .driven(move |config| {
            config.flink.client.endpoints.override_url = Some(endpoint);
            config.flink.client.ca_file = Some(fixture("test-ca.pem"));
        })
        .await;
    env.insert("t-1", "ns", "ws").await;
    driven.settle().await;
    assert_eq!(env.ticket("t-1").await.state, TicketState::Succeeded);
    driven.stop().await;
    shutdown.cancel();
}

#[tokio::test]
async fn run_and_deploy_exit_two_naming_what_was_looked_at_when_no_source_gives_credentials() {
    let env = TestEnv::new(DRAFTS).await;
    let config = config_without_keys(&env);
    for args in [vec!["run"], deploy_args("draft-ok", &["--wait"])] {
        let failed = env.cli_with(&config, &args, &[]);
        assert_eq!(failed.code, Some(2), "{args:?}: {}", failed.stderr);
        assert!(failed.stderr.contains("no credentials found"), "{}", failed.stderr);
        assert!(failed.stderr.contains("ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"), "{}", failed.stderr);
    }
    assert!(env.sim.requests().is_empty());
}
