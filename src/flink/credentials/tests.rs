//! Tests of the credential chain: [`plan`] over injected environments and temporary home
//! directories, and every remote source against fakes (STS, the ECS metadata service, a
//! credentials URI) served by axum on 127.0.0.1. Time is a [`ManualClock`]; nothing sleeps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use chrono::{DateTime, TimeZone as _, Utc};
use secrecy::ExposeSecret as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::ManualClock;

/// Only catches hangs; nothing waits for it to pass.
const HANG: Duration = Duration::from_secs(20);

fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
}

fn expiring(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One request a fake saw.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
}

type Answer = (StatusCode, String);

type Respond = Box<dyn FnMut(&Seen) -> Answer + Send>;

/// A loopback HTTP server answering every request with `respond`, optionally holding answers
/// until the test releases them.
struct Fake {
    base: Url,
    state: FakeState,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct FakeState {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Arc<Mutex<Respond>>,
    /// Held answers wait for a permit.
    gate: Arc<Semaphore>,
    held: Arc<std::sync::atomic::AtomicBool>,
    /// How many requests arrived so far.
    arrived: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Fake {
    async fn start(respond: impl FnMut(&Seen) -> Answer + Send + 'static) -> Fake {
        let state = FakeState {
            seen: Arc::default(),
            respond: Arc::new(Mutex::new(Box::new(respond))),
            gate: Arc::new(Semaphore::new(0)),
            held: Arc::default(),
            arrived: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let base = Url::parse(&format!("http://{}", listener.local_addr().expect("a bound address"))).unwrap();
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().fallback(answer).with_state(state.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Fake { base, state, shutdown }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    fn set(&self, respond: impl FnMut(&Seen) -> Answer + Send + 'static) {
        *self.state.respond.lock().unwrap() = Box::new(respond);
    }

    /// From now on answers wait for [`Fake::release`].
    fn hold(&self) {
        self.state.held.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
        self.state.gate.add_permits(1000);
    }

    /// Waits until `count` requests have arrived (answered or held).
    async fn wait_for_requests(&self, count: usize) {
        let mut arrived = self.state.arrived.subscribe();
        tokio::time::timeout(HANG, arrived.wait_for(|seen| *seen >= count))
            .await
            .expect("the requests arrive")
            .expect("the fake is running");
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn answer(State(state): State<FakeState>, method: Method, uri: Uri, headers: HeaderMap) -> Answer {
    let query = uri
        .query()
        .map(|query| url::form_urlencoded::parse(query.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let seen = Seen { method, path: uri.path().to_owned(), query, headers };
    state.seen.lock().unwrap().push(seen.clone());
    state.arrived.send_modify(|arrived| *arrived += 1);
    if state.held.load(Ordering::SeqCst) {
        let _permit = state.gate.acquire().await.expect("the gate is never closed");
    }
    (state.respond.lock().unwrap())(&seen)
}

/// A fake STS whose n-th answer (from 1) is key `STS.n`, expiring n - 1 hours after `expires`.
async fn numbered_sts(expires: DateTime<Utc>) -> Fake {
    let calls = AtomicUsize::new(0);
    Fake::start(move |_| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        sts_success(&format!("STS.{n}"), expires + chrono::Duration::hours(i64::try_from(n).unwrap() - 1))
    })
    .await
}

fn sts_success(key: &str, expires_at: DateTime<Utc>) -> Answer {
    let body = serde_json::json!({
        "RequestId": "sts-req",
        "AssumedRoleUser": {"Arn": "acs:ram::1:role/ticketd/flink-ticketd", "AssumedRoleId": "1:x"},
        "Credentials": {
            "AccessKeyId": key,
            "AccessKeySecret": format!("{key}-secret"),
            "SecurityToken": format!("{key}-token"),
            "Expiration": expiring(expires_at),
        }
    });
    (StatusCode::OK, body.to_string())
}

fn metadata_success(key: &str, expires_at: DateTime<Utc>) -> Answer {
    let body = serde_json::json!({
        "AccessKeyId": key,
        "AccessKeySecret": format!("{key}-secret"),
        "Expiration": expiring(expires_at),
        "SecurityToken": format!("{key}-token"),
        "LastUpdated": "2026-11-28T11:00:00Z",
        "Code": "Success",
    });
    (StatusCode::OK, body.to_string())
}

/// An environment with no variables, no home and no metadata service (disabled).
fn empty_env() -> ChainEnvironment {
    ChainEnvironment::from_vars([("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")])
}

fn env_with(vars: &[(&str, &str)]) -> ChainEnvironment {
    ChainEnvironment::from_vars(vars.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())))
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start_time()))
}

fn provider(plan: Plan, clock: &Arc<ManualClock>) -> CredentialProvider {
    CredentialProvider::new(plan, None, Arc::clone(clock) as Arc<dyn Clock>).expect("the provider builds")
}

async fn get(provider: &CredentialProvider) -> Result<Arc<Credentials>, CredentialError> {
    tokio::time::timeout(HANG, provider.credentials()).await.expect("getting credentials does not hang")
}

/// An OIDC environment against `sts`, with the token file in `dir`.
fn oidc_env(sts: &Fake, dir: &tempfile::TempDir) -> ChainEnvironment {
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "oidc-token-1\n").unwrap();
    let mut env = env_with(&[
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", token_file.to_str().unwrap()),
        ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/ticketd"),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/ack"),
        ("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true"),
    ]);
    env.sts_endpoint = Some(sts.base.clone());
    env
}

#[test]
fn explicit_keys_win_over_every_other_source() {
    let explicit = Credentials {
        access_key_id: "cfg".to_owned(),
        access_key_secret: SecretString::from("s".to_owned()),
        security_token: None,
    };
    let env = env_with(&[("ALIBABA_CLOUD_ACCESS_KEY_ID", "env"), ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s")]);
    let plan = plan(Some(&explicit), &env).unwrap();
    assert_eq!(plan.describe(), "configuration (flink.access_key_id)");
}

#[tokio::test]
async fn environment_keys_with_a_token_come_before_oidc_and_files() {
    let env = env_with(&[
        ("ALIBABA_CLOUD_ACCESS_KEY_ID", " id "),
        ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
        ("ALIBABA_CLOUD_SECURITY_TOKEN", "token"),
        ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/nonexistent"),
        ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/x"),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "acs:ram::1:oidc-provider/x"),
    ]);
    let plan = plan(None, &env).unwrap();
    assert!(plan.describe().starts_with("environment (ALIBABA_CLOUD_ACCESS_KEY_ID with"), "{}", plan.describe());
    let credentials = get(&provider(plan, &clock())).await.unwrap();
    assert_eq!(credentials.access_key_id, "id");
    assert_eq!(credentials.security_token.as_ref().unwrap().expose_secret(), "token");
}

#[test]
fn half_set_environment_keys_are_an_error_naming_the_missing_variable() {
    let error = plan(None, &env_with(&[("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")])).unwrap_err();
    assert!(error.to_string().contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET is not"), "{error}");
}

#[test]
fn partly_configured_oidc_is_an_error_naming_what_is_missing() {
    let error = plan(None, &env_with(&[("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/x")])).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("ALIBABA_CLOUD_OIDC_TOKEN_FILE and ALIBABA_CLOUD_OIDC_PROVIDER_ARN"), "{text}");
}

#[tokio::test]
async fn cli_profile_is_chosen_by_alibaba_cloud_profile_or_current() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aliyun")).unwrap();
    std::fs::write(
        home.path().join(".aliyun/config.json"),
        r#"{"current": "sts", "profiles": [
            {"name": "ak", "mode": "AK", "access_key_id": "AK-cli", "access_key_secret": "s"},
            {"name": "sts", "mode": "StsToken", "access_key_id": "STS-cli", "access_key_secret": "s", "sts_token": "t"}
        ]}"#,
    )
    .unwrap();
    let home_text = home.path().to_str().unwrap();
    let current = plan(None, &env_with(&[("HOME", home_text)])).unwrap();
    assert!(current.describe().contains("aliyun CLI profile \"sts\""), "{}", current.describe());
    assert!(current.describe().contains("mode StsToken"));
    let credentials = get(&provider(current, &clock())).await.unwrap();
    assert_eq!(credentials.access_key_id, "STS-cli");
    assert!(credentials.security_token.is_some());

    let named = plan(None, &env_with(&[("HOME", home_text), ("ALIBABA_CLOUD_PROFILE", "ak")])).unwrap();
    let credentials = get(&provider(named, &clock())).await.unwrap();
    assert_eq!((credentials.access_key_id.as_str(), credentials.security_token.is_none()), ("AK-cli", true));
}

#[test]
fn unsupported_cli_profile_mode_is_an_error_naming_the_mode() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aliyun")).unwrap();
    std::fs::write(
        home.path().join(".aliyun/config.json"),
        r#"{"current": "sso", "profiles": [{"name": "sso", "mode": "CloudSSO"}]}"#,
    )
    .unwrap();
    let error = plan(None, &env_with(&[("HOME", home.path().to_str().unwrap())])).unwrap_err();
    assert!(matches!(error, CredentialError::Invalid(_)));
    assert!(error.to_string().contains("mode \"CloudSSO\""), "{error}");
}

#[tokio::test]
async fn disabled_cli_profile_falls_through_to_the_ini_file() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aliyun")).unwrap();
    std::fs::write(
        home.path().join(".aliyun/config.json"),
        r#"{"current": "x", "profiles": [{"name": "x", "mode": "CloudSSO"}]}"#,
    )
    .unwrap();
    std::fs::create_dir(home.path().join(".alibabacloud")).unwrap();
    std::fs::write(
        home.path().join(".alibabacloud/credentials.ini"),
        "[default]\nenable = true\ntype = access_key\naccess_key_id = AK-ini\naccess_key_secret = s-ini\n",
    )
    .unwrap();
    let env = env_with(&[("HOME", home.path().to_str().unwrap()), ("ALIBABA_CLOUD_CLI_PROFILE_DISABLED", "true")]);
    let plan = plan(None, &env).unwrap();
    assert!(plan.describe().starts_with("credentials file section [default]"), "{}", plan.describe());
    assert!(plan.skipped().iter().any(|skipped| skipped.contains("ALIBABA_CLOUD_CLI_PROFILE_DISABLED")));
    let credentials = get(&provider(plan, &clock())).await.unwrap();
    assert_eq!(credentials.access_key_id, "AK-ini");
    assert_eq!(credentials.access_key_secret.expose_secret(), "s-ini");
}

#[tokio::test]
async fn ini_file_named_by_the_environment_uses_the_profile_section() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creds.ini");
    std::fs::write(
        &path,
        "[default]\ntype = access_key\naccess_key_id = AK-d\naccess_key_secret = s\n\
         [ci]\ntype = access_key\naccess_key_id = AK-ci\naccess_key_secret = s\n\
         [rsa]\ntype = rsa_key_pair\npublic_key_id = x\n",
    )
    .unwrap();
    let path_text = path.to_str().unwrap();
    let env = env_with(&[("ALIBABA_CLOUD_CREDENTIALS_FILE", path_text), ("ALIBABA_CLOUD_PROFILE", "ci")]);
    let credentials = get(&provider(plan(None, &env).unwrap(), &clock())).await.unwrap();
    assert_eq!(credentials.access_key_id, "AK-ci");

    let rsa = env_with(&[("ALIBABA_CLOUD_CREDENTIALS_FILE", path_text), ("ALIBABA_CLOUD_PROFILE", "rsa")]);
    let error = plan(None, &rsa).unwrap_err();
    assert!(error.to_string().contains("type \"rsa_key_pair\""), "{error}");

    let missing = env_with(&[("ALIBABA_CLOUD_CREDENTIALS_FILE", "/nonexistent/creds.ini")]);
    assert!(plan(None, &missing).unwrap_err().to_string().contains("/nonexistent/creds.ini"));
}

#[test]
fn without_any_source_the_plan_tries_the_metadata_service_then_the_credentials_uri() {
    let home = tempfile::tempdir().unwrap();
    let env = env_with(&[
        ("HOME", home.path().to_str().unwrap()),
        ("ALIBABA_CLOUD_CREDENTIALS_URI", "http://127.0.0.1:1/creds?token=hidden"),
    ]);
    let plan = plan(None, &env).unwrap();
    let described = plan.describe();
    assert!(
        described.starts_with("ECS RAM role of this instance (metadata service http://100.100.100.200/)"),
        "{described}"
    );
    assert!(described.contains(", else credentials URI http://127.0.0.1:1/creds"), "{described}");
    assert!(!described.contains("hidden"), "{described}");
    assert_eq!(plan.skipped().len(), 4, "{:?}", plan.skipped());
}

#[test]
fn with_the_metadata_service_disabled_and_nothing_else_there_are_no_credentials() {
    let error = plan(None, &empty_env()).unwrap_err();
    assert!(error.to_string().starts_with("no credentials found"), "{error}");
    assert!(error.to_string().contains("ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"), "{error}");
}

#[test]
fn chain_environment_debug_shows_names_but_no_values() {
    let env = env_with(&[("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "very-secret"), ("UNRELATED", "x")]);
    let debug = format!("{env:?}");
    assert!(debug.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET") && !debug.contains("very-secret"), "{debug}");
    assert!(!debug.contains("UNRELATED"));
}

#[tokio::test]
async fn oidc_credentials_come_from_sts_and_the_token_file_is_read_on_every_refresh() {
    let expires = start_time() + chrono::Duration::hours(1);
    let sts = numbered_sts(expires).await;
    let dir = tempfile::tempdir().unwrap();
    let env = oidc_env(&sts, &dir);
    let plan = plan(None, &env).unwrap();
    assert!(plan.describe().starts_with("OIDC role acs:ram::1:role/ticketd"), "{}", plan.describe());
    let clock = clock();
    let provider = provider(plan, &clock);
    let first = get(&provider).await.unwrap();
    assert_eq!(first.access_key_id, "STS.1");
    assert_eq!(first.security_token.as_ref().unwrap().expose_secret(), "STS.1-token");

    let seen = sts.seen();
    let query = &seen[0].query;
    assert_eq!(seen[0].method, Method::GET);
    for (key, value) in [
        ("Action", "AssumeRoleWithOIDC"),
        ("Format", "JSON"),
        ("Version", "2015-04-01"),
        ("DurationSeconds", "3600"),
        ("RoleArn", "acs:ram::1:role/ticketd"),
        ("OIDCProviderArn", "acs:ram::1:oidc-provider/ack"),
        ("OIDCToken", "oidc-token-1"),
        ("RoleSessionName", "flink-ticketd"),
        ("Timestamp", "2026-11-28T12:00:00Z"),
    ] {
        assert_eq!(query.get(key).map(String::as_str), Some(value), "{key}");
    }

    // Before the refresh time nothing is fetched; after it the rotated token file is sent.
    clock.advance(chrono::Duration::minutes(44));
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.1");
    assert_eq!(sts.count(), 1);
    std::fs::write(dir.path().join("token"), "oidc-token-2").unwrap();
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.2");
    assert_eq!(sts.seen()[1].query.get("OIDCToken").map(String::as_str), Some("oidc-token-2"));
}

#[tokio::test]
async fn sts_refusal_at_start_is_reported_with_its_code() {
    let sts = Fake::start(|_| {
        let body = r#"{"RequestId":"r-1","Code":"AuthenticationFail.OIDCToken.Invalid","Message":"bad token"}"#;
        (StatusCode::BAD_REQUEST, body.to_owned())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let env = oidc_env(&sts, &dir);
    let clock = clock();
    let error = CredentialProvider::start(None, &env, None, clock as Arc<dyn Clock>).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("AuthenticationFail.OIDCToken.Invalid: bad token (request r-1)"), "{text}");
    assert!(!text.contains("oidc-token-1"), "the token leaked: {text}");
}

#[tokio::test]
async fn ecs_role_credentials_use_a_session_token_and_the_listed_role() {
    let expires = start_time() + chrono::Duration::hours(6);
    let metadata = Fake::start(move |seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("PUT", "/latest/api/token") => {
            assert_eq!(seen.headers["x-aliyun-ecs-metadata-token-ttl-seconds"], "21600");
            (StatusCode::OK, "session-token".to_owned())
        }
        (_, path) if seen.headers.get("x-aliyun-ecs-metadata-token").is_none_or(|token| token != "session-token") => {
            (StatusCode::UNAUTHORIZED, format!("no token for {path}"))
        }
        ("GET", "/latest/meta-data/ram/security-credentials/") => (StatusCode::OK, "ticketd-role\n".to_owned()),
        ("GET", "/latest/meta-data/ram/security-credentials/ticketd-role") => metadata_success("STS.ecs", expires),
        _ => (StatusCode::NOT_FOUND, String::new()),
    })
    .await;
    let env = ChainEnvironment { metadata_endpoint: Some(metadata.base.clone()), ..ChainEnvironment::default() };
    let provider = provider(plan(None, &env).unwrap(), &clock());
    let credentials = get(&provider).await.unwrap();
    assert_eq!(credentials.access_key_id, "STS.ecs");
    assert_eq!(credentials.security_token.as_ref().unwrap().expose_secret(), "STS.ecs-token");
    let paths: Vec<String> = metadata.seen().iter().map(|seen| format!("{} {}", seen.method, seen.path)).collect();
    assert_eq!(
        paths,
        [
            "PUT /latest/api/token",
            "GET /latest/meta-data/ram/security-credentials/",
            "GET /latest/meta-data/ram/security-credentials/ticketd-role"
        ]
    );
}

#[tokio::test]
async fn ecs_without_a_session_token_falls_back_unless_imdsv1_is_disabled() {
    let expires = start_time() + chrono::Duration::hours(6);
    let metadata = Fake::start(move |seen| match (seen.method.as_str(), seen.path.as_str()) {
        ("PUT", _) => (StatusCode::FORBIDDEN, String::new()),
        ("GET", "/latest/meta-data/ram/security-credentials/named-role") => metadata_success("STS.v1", expires),
        _ => (StatusCode::NOT_FOUND, String::new()),
    })
    .await;
    let mut env = env_with(&[("ALIBABA_CLOUD_ECS_METADATA", "named-role")]);
    env.metadata_endpoint = Some(metadata.base.clone());
    let credentials = get(&provider(plan(None, &env).unwrap(), &clock())).await.unwrap();
    assert_eq!(credentials.access_key_id, "STS.v1");
    // The role came from ALIBABA_CLOUD_ECS_METADATA, so nothing was listed.
    assert_eq!(metadata.count(), 2);

    let mut strict =
        env_with(&[("ALIBABA_CLOUD_ECS_METADATA", "named-role"), ("ALIBABA_CLOUD_IMDSV1_DISABLED", "true")]);
    strict.metadata_endpoint = Some(metadata.base.clone());
    let error = get(&provider(plan(None, &strict).unwrap(), &clock())).await.unwrap_err();
    assert!(error.to_string().contains("ALIBABA_CLOUD_IMDSV1_DISABLED=true"), "{error}");
    assert_eq!(metadata.count(), 3, "no request without a token was made");
}

#[tokio::test]
async fn secrets_and_tokens_from_sts_and_the_metadata_service_are_trimmed() {
    let expires = start_time() + chrono::Duration::hours(1);
    let padded = |key: &str| {
        serde_json::json!({
            "AccessKeyId": format!(" {key}\n"),
            "AccessKeySecret": format!("{key}-secret\n"),
            "SecurityToken": format!("\t{key}-token\r\n"),
            "Expiration": expiring(expires),
            "Code": "Success",
        })
    };
    let sts_body = serde_json::json!({"RequestId": "r", "Credentials": padded("STS.sts")}).to_string();
    let sts = Fake::start(move |_| (StatusCode::OK, sts_body.clone())).await;
    let dir = tempfile::tempdir().unwrap();
    let from_sts = get(&provider(plan(None, &oidc_env(&sts, &dir)).unwrap(), &clock())).await.unwrap();

    let metadata_body = padded("STS.ecs").to_string();
    let metadata = Fake::start(move |seen| match seen.method.as_str() {
        "PUT" => (StatusCode::OK, "session-token".to_owned()),
        _ => (StatusCode::OK, metadata_body.clone()),
    })
    .await;
    let mut env = env_with(&[("ALIBABA_CLOUD_ECS_METADATA", "role")]);
    env.metadata_endpoint = Some(metadata.base.clone());
    let from_metadata = get(&provider(plan(None, &env).unwrap(), &clock())).await.unwrap();

    for (credentials, key) in [(from_sts, "STS.sts"), (from_metadata, "STS.ecs")] {
        assert_eq!(credentials.access_key_id, key);
        assert_eq!(credentials.access_key_secret.expose_secret(), format!("{key}-secret"));
        assert_eq!(credentials.security_token.as_ref().unwrap().expose_secret(), format!("{key}-token"));
    }
}

/// A loopback address where nothing listens: connections are refused at once.
async fn closed_port() -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    Url::parse(&format!("http://{address}")).unwrap()
}

#[tokio::test]
async fn credentials_uri_is_used_when_the_metadata_service_does_not_answer() {
    let expires = start_time() + chrono::Duration::hours(1);
    let uri = Fake::start(move |seen| {
        assert_eq!(seen.path, "/v1/credentials");
        metadata_success("STS.uri", expires)
    })
    .await;
    let mut env = env_with(&[("ALIBABA_CLOUD_CREDENTIALS_URI", &format!("{}v1/credentials", uri.base))]);
    env.metadata_endpoint = Some(closed_port().await);
    let clock = clock();
    let provider = CredentialProvider::start(None, &env, None, Arc::clone(&clock) as Arc<dyn Clock>).await.unwrap();
    assert!(provider.name().starts_with("credentials URI http://127.0.0.1:"), "{}", provider.name());
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.uri");
    assert_eq!(uri.count(), 1);
}

#[tokio::test]
async fn start_fails_naming_every_source_tried_when_none_answers() {
    let env = ChainEnvironment { metadata_endpoint: Some(closed_port().await), ..ChainEnvironment::default() };
    let error = CredentialProvider::start(None, &env, None, clock() as Arc<dyn Clock>).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, CredentialError::Unavailable(_)));
    assert!(text.contains("ECS RAM role of this instance"), "{text}");
    assert!(text.contains("is this an ECS instance?"), "{text}");
    assert!(text.contains("ALIBABA_CLOUD_ACCESS_KEY_ID is not set"), "{text}");
}

#[tokio::test]
async fn many_concurrent_callers_due_for_a_refresh_cause_exactly_one_request() {
    let expires = start_time() + chrono::Duration::hours(1);
    let sts = numbered_sts(expires).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = provider(plan(None, &oidc_env(&sts, &dir)).unwrap(), &clock);
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.1");

    // Past the refresh time but before expiry: one caller refreshes, and while its request is
    // held by the fake every other caller signs with the current credentials.
    clock.advance(chrono::Duration::minutes(50));
    sts.hold();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { get(&provider).await.unwrap().access_key_id.clone() })
        })
        .collect();
    sts.wait_for_requests(2).await;
    sts.release();
    let mut keys = Vec::new();
    for caller in callers {
        keys.push(caller.await.unwrap());
    }
    assert_eq!(sts.count(), 2, "one initial fetch and exactly one refresh");
    assert_eq!(keys.iter().filter(|key| *key == "STS.2").count(), 1, "only the refreshing caller waited: {keys:?}");
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.2");
}

#[tokio::test]
async fn many_concurrent_callers_with_expired_credentials_wait_for_one_request() {
    let expires = start_time() + chrono::Duration::hours(1);
    let sts = numbered_sts(expires).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = provider(plan(None, &oidc_env(&sts, &dir)).unwrap(), &clock);
    get(&provider).await.unwrap();

    clock.advance(chrono::Duration::minutes(61));
    sts.hold();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { get(&provider).await.unwrap().access_key_id.clone() })
        })
        .collect();
    sts.wait_for_requests(2).await;
    sts.release();
    for caller in callers {
        assert_eq!(caller.await.unwrap(), "STS.2", "no caller signs with expired credentials");
    }
    assert_eq!(sts.count(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_old_credentials_until_they_expire() {
    let expires = start_time() + chrono::Duration::hours(1);
    let sts = Fake::start(move |_| sts_success("STS.old", expires)).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = provider(plan(None, &oidc_env(&sts, &dir)).unwrap(), &clock);
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.old");

    sts.set(|_| (StatusCode::SERVICE_UNAVAILABLE, "<html>down</html>".to_owned()));
    clock.advance(chrono::Duration::minutes(50));
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.old", "kept through the failed refresh");
    assert_eq!(sts.count(), 2);
    // Within the retry delay nobody asks STS again.
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.old");
    assert_eq!(sts.count(), 2);

    clock.advance(chrono::Duration::minutes(11));
    let error = get(&provider).await.unwrap_err();
    assert!(matches!(error, CredentialError::Unavailable(_)));
    assert!(error.to_string().contains("HTTP 503"), "{error}");
    assert_eq!(sts.count(), 3);

    // STS is back: after the retry delay the next caller gets fresh credentials.
    sts.set(move |_| sts_success("STS.new", expires + chrono::Duration::hours(2)));
    clock.advance(chrono::Duration::from_std(RETRY_AFTER_FAILURE).unwrap());
    assert_eq!(get(&provider).await.unwrap().access_key_id, "STS.new");
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once_however_many_requests_saw_it() {
    let expires = start_time() + chrono::Duration::hours(1);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let sts = Fake::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        sts_success(&format!("STS.{n}"), expires)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let provider = provider(plan(None, &oidc_env(&sts, &dir)).unwrap(), &clock);
    let rejected = get(&provider).await.unwrap();
    let first = provider.refresh_after_rejection(&rejected).await.unwrap();
    let second = provider.refresh_after_rejection(&rejected).await.unwrap();
    assert_eq!((first.access_key_id.as_str(), second.access_key_id.as_str()), ("STS.2", "STS.2"));
    assert_eq!(sts.count(), 2);
    let fixed = CredentialProvider::fixed("test", (*rejected).clone());
    assert!(fixed.refresh_after_rejection(&rejected).await.is_err());
}
