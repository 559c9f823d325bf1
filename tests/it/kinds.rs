//! Every ticket kind end to end: rows queued with a plain SQL insert naming the kind, polled by
//! the daemon on the kind's own path of the simulated API, recorded in the kind's columns and
//! announced by signed webhooks to a real receiver; the migration that brought the kinds.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flink_ticketd::config::Config;
use flink_ticketd::domain::{RowId, TicketKind, TicketState, TicketStatus};
use flink_ticketd::store::{Store, StoreSettings};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Connection as _;

use crate::harness::{Received, TestEnv, WebhookSink, quote, stored_text};

const SECRET: &str = "whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQtbnVtYmVyLTE=";

/// A plan with the spacing, key order and non-ASCII text of a real one, none of which may change.
const PLAN: &str = "{ \"ssgProfiles\" :[ {\"name\":\"默认-ä\",\"cpu\":1.0,  \"heap\":\"1 gb\"} ],\n\t\"nodes\":[],\"edges\" : [],\"vertices\":{\"zz\":[\"b\"],\"aa\":[]} }";

fn scenario() -> String {
    format!(
        r#"
[[tickets]]
kind = "validate"
prefix = "v-pass"
steps = [{{ status = "EXECUTING" }}, {{ status = "FINISHED", success = true, validation_result = "VALIDATION_RESULT_VALID_INSERT_QUERY" }}]

[[tickets]]
kind = "validate"
prefix = "v-bad"
steps = [{{ status = "FINISHED", success = false, message = "draft validation failed", validation_result = "VALIDATION_RESULT_INVALID_QUERY", errors = [{{ line = 3, column = 8, end_line = 3, end_column = 14, message = "Object 'orders' not found" }}], config_errors = [{{ reason = "ENGINE_VERSION", message = "engine version not supported" }}] }}]

[[tickets]]
kind = "validate"
prefix = "v-failed"
steps = [{{ status = "FAILED", message = "the check did not complete" }}]

[[tickets]]
kind = "validate"
prefix = "v-quiet"
steps = [{{ status = "FINISHED" }}]

[[tickets]]
kind = "resource_plan"
prefix = "p-ok"
steps = [{{ status = "EXECUTING", message = "planning" }}, {{ status = "FINISHED", plan = {plan} }}]

[[tickets]]
kind = "resource_plan"
prefix = "p-failed"
steps = [{{ status = "FAILED", message = "create resource plan failed" }}]

[[tickets]]
kind = "resource_plan"
prefix = "p-empty"
steps = [{{ status = "FINISHED", plan = "" }}]

[[tickets]]
kind = "hot_update"
prefix = "h-ok"
steps = [{{ status = "INIT" }}, {{ status = "HOT_UPDATING" }}, {{ status = "HOT_UPDATED" }}]

[[tickets]]
kind = "hot_update"
prefix = "h-failed"
steps = [{{ status = "HOT_UPDATING" }}, {{ status = "FAILED", reason = "RescaleFailed", message = "not enough resources" }}]

[[tickets]]
kind = "hot_update"
prefix = "h-reason"
steps = [{{ status = "FAILED", reason = "RescaleFailed" }}]

[[tickets]]
kind = "deploy"
id = "same-1"
steps = [{{ status = "FINISHED", success = true }}]

[[tickets]]
kind = "validate"
id = "same-1"
steps = [{{ status = "FINISHED", success = false, errors = [{{ line = 1, column = 2, message = "bad" }}] }}]
"#,
        plan = toml::Value::String(PLAN.to_owned())
    )
}

fn with_webhooks(url: &str) -> impl FnOnce(&mut Config) + use<> {
    let url = flink_ticketd::webhook::parse_webhook_url(url).expect("a receiver URL");
    move |config: &mut Config| {
        config.webhook.urls = vec![url];
        config.webhook.secrets = vec![flink_ticketd::webhook::decode_webhook_secret(SECRET).expect("a secret")];
        config.webhook.schedule = vec![Duration::from_millis(10)];
    }
}

async fn insert(env: &TestEnv, kind: &str, ticket_id: &str) {
    env.execute_sql(&format!(
        "INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ({}, 'ns', 'ws', {})",
        quote(ticket_id),
        quote(kind)
    ))
    .await;
}

/// The row of `ticket_id` of `kind`.
async fn row(env: &TestEnv, kind: TicketKind, ticket_id: &str) -> flink_ticketd::store::Ticket {
    let store = env.store().await;
    let mut rows = store.find_tickets(ticket_id, Some(kind), None, None).await.expect("rows are read");
    store.close().await;
    assert_eq!(rows.len(), 1, "one {kind} row {ticket_id}");
    rows.remove(0)
}

/// Checks the Standard Webhooks signature of a delivery, computed here independently.
fn assert_signed(request: &Received) {
    let key = BASE64.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", request.header("webhook-id"), request.header("webhook-timestamp")).as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert!(request.header("webhook-signature").split(' ').any(|signature| signature == expected), "signed");
}

/// Takes `count` webhooks from the sink, by (kind, ticket id).
async fn webhooks(sink: &mut WebhookSink, count: usize) -> std::collections::HashMap<(String, String), Received> {
    let mut seen = std::collections::HashMap::new();
    while seen.len() < count {
        let request = sink.next().await;
        assert_signed(&request);
        let body = request.json();
        let key =
            (body["data"]["kind"].as_str().unwrap().to_owned(), body["data"]["ticket_id"].as_str().unwrap().to_owned());
        seen.insert(key, request);
    }
    seen
}

/// Every finished ticket's webhook carries its kind and the raw `data` of the last answer, which
/// is the text stored in `result_json`, byte for byte.
async fn assert_announced(env: &TestEnv, request: &Received, ticket: &flink_ticketd::store::Ticket) {
    let body = request.json();
    assert_eq!(body["data"]["kind"], ticket.kind.as_str());
    assert_eq!(body["data"]["state"], ticket.state.as_str());
    assert_eq!(body["type"], format!("ticket.{}", ticket.state.as_str()));
    let stored = stored_text(&env.db_path, ticket.id, "result_json").await.expect("result_json is stored");
    let text = std::str::from_utf8(&request.body).unwrap();
    assert!(text.contains(&format!("\"result\":{stored}")), "data.result is the stored text: {text}");
    assert_eq!(body["data"]["result"], serde_json::from_str::<Value>(&stored).unwrap());
}

#[tokio::test]
async fn validate_tickets_pass_fail_with_positions_and_config_errors_or_fail_with_the_message() {
    let env = TestEnv::new(&scenario()).await;
    let mut sink = WebhookSink::accepting().await;
    let driven = env.driven(with_webhooks(&sink.url)).await;
    for id in ["v-pass", "v-bad", "v-failed", "v-quiet"] {
        insert(&env, "validate", id).await;
    }
    driven.settle().await;

    let passed = row(&env, TicketKind::Validate, "v-pass").await;
    assert_eq!(passed.state, TicketState::Succeeded);
    assert_eq!(passed.validation_result.as_deref(), Some("VALIDATION_RESULT_VALID_INSERT_QUERY"));
    assert_eq!(passed.deploy_success, Some(true));

    let bad = row(&env, TicketKind::Validate, "v-bad").await;
    assert_eq!((bad.state, bad.deploy_success), (TicketState::Failed, Some(false)));
    assert_eq!(bad.message.as_deref(), Some("draft validation failed"));
    let errors: Value =
        serde_json::from_str(&stored_text(&env.db_path, bad.id, "validation_errors").await.unwrap()).unwrap();
    assert_eq!(
        errors,
        json!([{"line": 3, "column": 8, "end_line": 3, "end_column": 14, "message": "Object 'orders' not found"}]),
        "string positions are stored as integers"
    );
    let config: Value =
        serde_json::from_str(&stored_text(&env.db_path, bad.id, "config_errors").await.unwrap()).unwrap();
    assert_eq!(config, json!([{"reason": "ENGINE_VERSION", "message": "engine version not supported"}]));

    let failed = row(&env, TicketKind::Validate, "v-failed").await;
    assert_eq!(failed.state, TicketState::Failed);
    assert_eq!(failed.ticket_status, Some(TicketStatus::Failed));
    assert_eq!(failed.message.as_deref(), Some("the check did not complete"));

    let quiet = row(&env, TicketKind::Validate, "v-quiet").await;
    assert_eq!(quiet.state, TicketState::Succeeded, "FINISHED without success and without problems passes");

    let announced = webhooks(&mut sink, 4).await;
    for ticket in [&passed, &bad, &failed, &quiet] {
        assert_announced(&env, &announced[&("validate".to_owned(), ticket.key.ticket_id.clone())], ticket).await;
    }
    let bad_body = announced[&("validate".to_owned(), "v-bad".to_owned())].json();
    assert_eq!(bad_body["data"]["config_errors"][0]["reason"], "ENGINE_VERSION");
    assert_eq!(bad_body["data"]["validation_errors"][0]["line"], 3);
    assert_eq!(bad_body["data"]["resource_plan"], Value::Null);
    driven.stop().await;
}

#[tokio::test]
async fn a_resource_plan_is_stored_and_announced_byte_for_byte_and_a_missing_plan_fails() {
    let env = TestEnv::new(&scenario()).await;
    let mut sink = WebhookSink::accepting().await;
    let driven = env.driven(with_webhooks(&sink.url)).await;
    for id in ["p-ok", "p-failed", "p-empty"] {
        insert(&env, "resource_plan", id).await;
    }
    driven.settle().await;

    let planned = row(&env, TicketKind::ResourcePlan, "p-ok").await;
    assert_eq!(planned.state, TicketState::Succeeded);
    assert_eq!(stored_text(&env.db_path, planned.id, "resource_plan").await.as_deref(), Some(PLAN));
    assert_eq!(planned.deploy_success, None, "a resource plan has no success field");

    let failed = row(&env, TicketKind::ResourcePlan, "p-failed").await;
    assert_eq!(failed.state, TicketState::Failed);
    assert_eq!(failed.message.as_deref(), Some("create resource plan failed"));

    let empty = row(&env, TicketKind::ResourcePlan, "p-empty").await;
    assert_eq!((empty.state, empty.error_code.as_deref()), (TicketState::Failed, Some("MissingPlan")));
    assert_eq!(empty.resource_plan, None);

    let announced = webhooks(&mut sink, 3).await;
    let plan_hook = &announced[&("resource_plan".to_owned(), "p-ok".to_owned())];
    assert_eq!(plan_hook.json()["data"]["resource_plan"], PLAN, "the webhook carries the same text");
    for ticket in [&planned, &failed, &empty] {
        assert_announced(&env, &announced[&("resource_plan".to_owned(), ticket.key.ticket_id.clone())], ticket).await;
    }
    assert_eq!(
        announced[&("resource_plan".to_owned(), "p-empty".to_owned())].json()["data"]["error_code"],
        "MissingPlan"
    );
    driven.stop().await;
}

#[tokio::test]
async fn a_hot_update_runs_init_hot_updating_hot_updated_and_a_failure_reports_its_message_or_reason() {
    let env = TestEnv::new(&scenario()).await;
    let mut sink = WebhookSink::accepting().await;
    let driven = env.driven(with_webhooks(&sink.url)).await;
    for id in ["h-ok", "h-failed", "h-reason"] {
        insert(&env, "hot_update", id).await;
    }
    driven.settle().await;

    let applied = row(&env, TicketKind::HotUpdate, "h-ok").await;
    assert_eq!(
        (applied.state, applied.ticket_status.clone()),
        (TicketState::Succeeded, Some(TicketStatus::HotUpdated))
    );
    assert_eq!(applied.polls, 3, "INIT, HOT_UPDATING, HOT_UPDATED");
    assert_eq!((applied.deploy_success, applied.validation_result.as_deref()), (None, None));

    let failed = row(&env, TicketKind::HotUpdate, "h-failed").await;
    assert_eq!(failed.state, TicketState::Failed);
    assert_eq!(failed.message.as_deref(), Some("not enough resources"));
    assert_eq!(failed.error_code.as_deref(), Some("RescaleFailed"));
    let reason = row(&env, TicketKind::HotUpdate, "h-reason").await;
    assert_eq!((reason.state, reason.message.as_deref()), (TicketState::Failed, Some("RescaleFailed")));

    let log = env.sim.requests();
    let polls: Vec<&str> = log
        .iter()
        .filter(|entry| entry.ticket_id.as_deref() == Some("h-ok"))
        .map(|entry| entry.path.as_str())
        .collect();
    assert_eq!(polls, ["/api/v2/namespaces/ns/jobs/hot-updates/h-ok"; 3]);
    assert!(log.iter().all(|entry| entry.action == "GetHotUpdateJobResult" && entry.http_status == Some(200)));

    let announced = webhooks(&mut sink, 3).await;
    for ticket in [&applied, &failed, &reason] {
        let request = &announced[&("hot_update".to_owned(), ticket.key.ticket_id.clone())];
        assert_announced(&env, request, ticket).await;
        assert_eq!(request.json()["data"]["result"]["jobHotUpdateId"], ticket.key.ticket_id.as_str());
    }
    driven.stop().await;
}

#[tokio::test]
async fn the_same_id_under_two_kinds_is_two_tickets_each_polled_on_its_own_path() {
    let env = TestEnv::new(&scenario()).await;
    let driven = env.driven(|_| {}).await;
    env.insert("same-1", "ns", "ws").await;
    insert(&env, "validate", "same-1").await;
    driven.settle().await;

    let deploy = row(&env, TicketKind::Deploy, "same-1").await;
    let validate = row(&env, TicketKind::Validate, "same-1").await;
    assert_ne!(deploy.id, validate.id);
    assert_eq!(deploy.state, TicketState::Succeeded, "the plain insert is a deploy ticket");
    assert_eq!(validate.state, TicketState::Failed);
    let paths: Vec<String> =
        env.sim.requests().into_iter().map(|entry| format!("{} {}", entry.action, entry.path)).collect();
    assert!(
        paths.contains(
            &"GetDeployDeploymentDraftResult /api/v2/namespaces/ns/deployment-drafts/tickets/same-1/async-deploy"
                .to_owned()
        ),
        "{paths:?}"
    );
    assert!(
        paths.contains(
            &"GetValidateDeploymentDraftResult /api/v2/namespaces/ns/deployment-drafts/tickets/same-1/async-validate"
                .to_owned()
        ),
        "{paths:?}"
    );
    assert_eq!(paths.len(), 2, "each polled once, on its own path");
    driven.stop().await;

    let url = format!("sqlite://{}", env.db_path.display());
    let mut shell = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let refused = |sql: &'static str| sqlx::raw_sql(sql);
    let unknown =
        refused("INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('x', 'ns', 'ws', 'savepoint')")
            .execute(&mut shell)
            .await
            .expect_err("an unknown kind is refused");
    assert!(unknown.to_string().contains("kind_must_be_known"), "{unknown}");
    let twice = refused(
        "INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('same-1', 'ns', 'ws', 'validate')",
    )
    .execute(&mut shell)
    .await
    .expect_err("the same kind and id twice is refused");
    assert!(twice.to_string().to_lowercase().contains("unique"), "{twice}");
    refused("INSERT INTO tickets (ticket_id, namespace, workspace, kind) VALUES ('same-1', 'ns', 'ws', 'hot_update')")
        .execute(&mut shell)
        .await
        .expect("a third kind of the same id is another ticket");
    shell.close().await.unwrap();
}

#[tokio::test]
async fn the_kinds_migration_keeps_every_row_id_and_delivery_and_makes_them_deploy_tickets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("before-kinds.db");
    {
        let mut connection = crate::harness::database_before(&path, 20261203000003).await;
        sqlx::raw_sql(
            "INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (4, 'kept', 'ns', 'ws');
             INSERT INTO tickets (id, ticket_id, namespace, workspace, state, finished_at, validation_errors)
                 VALUES (9, 'done', 'ns', 'ws', 'failed', '2026-12-01T10:00:00.000Z', '[{\"line\":1,\"column\":2,\"end_line\":null,\"end_column\":null,\"message\":\"m\"}]');
             INSERT INTO tickets (id, ticket_id, namespace, workspace) VALUES (30, 'deleted', 'ns', 'ws');
             INSERT INTO webhook_deliveries (id, ticket, url, webhook_id, event_type, payload)
                 VALUES (17, 9, 'http://127.0.0.1:9/hook', 'tkt_9_0.failed', 'ticket.failed', '{}');
             INSERT INTO webhook_deliveries (id, ticket, url, webhook_id, event_type, payload)
                 VALUES (40, 30, 'http://127.0.0.1:9/hook', 'tkt_30_0.succeeded', 'ticket.succeeded', '{}');
             DELETE FROM tickets WHERE id = 30;",
        )
        .execute(&mut connection)
        .await
        .expect("the old rows are written");
        connection.close().await.unwrap();
    }

    let store =
        Store::open(&StoreSettings { path: path.clone(), busy_timeout: Duration::from_secs(5), max_readers: 2 })
            .await
            .expect("the migration applies");
    let rows = store.list_tickets(None, None, 100).await.unwrap();
    let mut kept: Vec<(RowId, TicketKind, &str)> =
        rows.iter().map(|row| (row.id, row.kind, row.key.ticket_id.as_str())).collect();
    kept.sort();
    assert_eq!(kept, [(RowId(4), TicketKind::Deploy, "kept"), (RowId(9), TicketKind::Deploy, "done")]);
    let done = rows.iter().find(|row| row.id == RowId(9)).unwrap();
    assert_eq!((done.state, done.validation_errors.len()), (TicketState::Failed, 1));
    assert_eq!((done.resource_plan.as_ref(), done.result_json.as_ref(), done.config_errors.len()), (None, None, 0));
    let deliveries = store.deliveries_of_ticket(9).await.unwrap();
    assert_eq!(deliveries.iter().map(|delivery| delivery.id).collect::<Vec<_>>(), [17], "deliveries keep their ids");
    store.close().await;

    let url = format!("sqlite://{}", path.display());
    let mut shell = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('after', 'ns', 'ws')")
        .execute(&mut shell)
        .await
        .expect("a plain insert still works");
    let (id, kind): (i64, String) =
        sqlx::query_as("SELECT id, kind FROM tickets WHERE ticket_id = 'after'").fetch_one(&mut shell).await.unwrap();
    assert!(id > 30, "ids continue above every id ever used: {id}");
    assert_eq!(kind, "deploy");
    sqlx::raw_sql("INSERT INTO webhook_deliveries (ticket, url, webhook_id, event_type, payload) VALUES (4, 'http://127.0.0.1:9/h', 'x', 'ticket.failed', '{}')")
        .execute(&mut shell)
        .await
        .unwrap();
    let delivery: i64 =
        sqlx::query_scalar("SELECT max(id) FROM webhook_deliveries").fetch_one(&mut shell).await.unwrap();
    assert!(delivery > 40, "delivery ids continue above every id ever used: {delivery}");
    shell.close().await.unwrap();
}
