//! The submit commands of the other kinds through the real binary against the simulated API:
//! `validate`, `resource-plan` and `hot-update` with `--wait` (exit codes and what each prints),
//! the submit bodies the simulator saw, and `enqueue`/`list`/`show` with `--kind`.

use flink_ticketd::domain::TicketKind;

use crate::harness::TestEnv;

const PLAN: &str = "{ \"ssgProfiles\" :[ {\"name\":\"默认-ä\",\"cpu\":1.0} ],\n  \"nodes\":[] }";

fn scenario() -> String {
    format!(
        r#"
[[tickets]]
kind = "validate"
draft = "draft-ok"
steps = [{{ status = "EXECUTING" }}, {{ status = "FINISHED", success = true, validation_result = "VALIDATION_RESULT_VALID_INSERT_QUERY" }}]

[[tickets]]
kind = "validate"
draft = "draft-bad"
steps = [{{ status = "FINISHED", success = false, message = "draft validation failed", errors = [{{ line = 3, column = 8, message = "Object 'orders' not found" }}], config_errors = [{{ reason = "ENGINE_VERSION", message = "engine version not supported" }}] }}]

[[tickets]]
kind = "resource_plan"
deployment = "dep-ok"
steps = [{{ status = "EXECUTING" }}, {{ status = "FINISHED", plan = {plan} }}]

[[tickets]]
kind = "resource_plan"
deployment = "dep-failed"
steps = [{{ status = "FAILED", message = "create resource plan failed" }}]

[[tickets]]
kind = "hot_update"
job = "job-failed"
steps = [{{ status = "HOT_UPDATING" }}, {{ status = "FAILED", reason = "RescaleFailed", message = "not enough resources" }}]
"#,
        plan = toml::Value::String(PLAN.to_owned())
    )
}

fn args<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command, "--namespace", "ns", "--workspace", "ws-1"];
    args.extend_from_slice(extra);
    args
}

/// The submit requests the simulator saw, as (action, body).
fn submits(env: &TestEnv) -> Vec<(String, String)> {
    env.sim
        .requests()
        .into_iter()
        .filter(|entry| entry.answer == "submitted")
        .map(|entry| (entry.action, entry.body.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn validate_wait_exits_zero_on_a_passing_draft_and_one_with_compiler_style_errors() {
    let env = TestEnv::new(&scenario()).await;
    let passed = env.cli_async(&env.config_file(), &args("validate", &["--draft-id", "draft-ok", "--wait"]), &[]).await;
    assert_eq!(passed.code, Some(0), "{}", passed.stderr);
    let ticket_id = passed.stdout.lines().next().expect("the ticket ID comes first").trim().to_owned();
    assert!(
        passed.stdout.contains("succeeded: the draft passed (VALIDATION_RESULT_VALID_INSERT_QUERY)"),
        "{}",
        passed.stdout
    );
    let row = env.ticket(&ticket_id).await;
    assert_eq!((row.kind, row.state.as_str()), (TicketKind::Validate, "succeeded"));

    let failed = env
        .cli_async(
            &env.config_file(),
            &args("validate", &["--draft-id", "draft-bad", "--target", "queue-a", "--wait"]),
            &[],
        )
        .await;
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    let lines: Vec<&str> = failed.stderr.lines().collect();
    let position = lines.iter().position(|line| *line == "3:8: Object 'orders' not found").expect(&failed.stderr);
    assert_eq!(lines[position + 1], "ENGINE_VERSION: engine version not supported", "{}", failed.stderr);
    assert!(lines.last().unwrap().contains(" failed: FINISHED; draft validation failed"), "{}", failed.stderr);

    assert_eq!(
        submits(&env),
        [
            ("ValidateDeploymentDraftAsync".to_owned(), r#"{"deploymentDraftId":"draft-ok"}"#.to_owned()),
            (
                "ValidateDeploymentDraftAsync".to_owned(),
                r#"{"deploymentDraftId":"draft-bad","deploymentTargetName":"queue-a"}"#.to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn resource_plan_wait_prints_the_plan_alone_on_stdout_byte_for_byte() {
    let env = TestEnv::new(&scenario()).await;
    let planned = env
        .cli_async(
            &env.config_file(),
            &args(
                "resource-plan",
                &[
                    "--deployment-id",
                    "dep-ok",
                    "--conf",
                    "taskmanager.numberOfTaskSlots=2",
                    "--conf",
                    "a=b=c",
                    "--wait",
                ],
            ),
            &[],
        )
        .await;
    assert_eq!(planned.code, Some(0), "{}", planned.stderr);
    assert_eq!(planned.stdout, PLAN, "stdout is the plan, so `> plan.json` keeps it exactly");
    let ticket_id = planned.stderr.lines().next().expect("the ticket ID on stderr").trim().to_owned();
    let row = env.ticket(&ticket_id).await;
    assert_eq!((row.kind, row.deployment_id.as_deref()), (TicketKind::ResourcePlan, Some("dep-ok")));
    assert_eq!(row.resource_plan.as_deref(), Some(PLAN));

    let failed = env
        .cli_async(&env.config_file(), &args("resource-plan", &["--deployment-id", "dep-failed", "--wait"]), &[])
        .await;
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert_eq!(failed.stdout, "", "no plan, nothing on stdout");
    assert!(failed.stderr.contains("failed: FAILED; create resource plan failed"), "{}", failed.stderr);

    assert_eq!(
        submits(&env),
        [
            (
                "GenerateResourcePlanWithFlinkConfAsync".to_owned(),
                r#"{"a":"b=c","taskmanager.numberOfTaskSlots":"2"}"#.to_owned()
            ),
            ("GenerateResourcePlanWithFlinkConfAsync".to_owned(), String::new()),
        ],
        "the configuration is a JSON object of strings; none means no body"
    );
    let bad = env.cli(&args("resource-plan", &["--deployment-id", "dep-ok", "--conf", "no-equals-sign"]));
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("KEY=VALUE"), "{}", bad.stderr);
}

#[tokio::test]
async fn hot_update_wait_sends_no_body_and_exits_by_the_outcome() {
    let env = TestEnv::new(&scenario()).await;
    let applied = env.cli_async(&env.config_file(), &args("hot-update", &["--job-id", "job-ok", "--wait"]), &[]).await;
    assert_eq!(applied.code, Some(0), "{}", applied.stderr);
    assert!(applied.stdout.contains("succeeded: the hot update was applied"), "{}", applied.stdout);
    let ticket_id = applied.stdout.lines().next().unwrap().trim().to_owned();
    let row = env.ticket(&ticket_id).await;
    assert_eq!((row.kind, row.polls), (TicketKind::HotUpdate, 3), "INIT, HOT_UPDATING, HOT_UPDATED");

    let failed =
        env.cli_async(&env.config_file(), &args("hot-update", &["--job-id", "job-failed", "--wait"]), &[]).await;
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(failed.stderr.contains("failed: FAILED; not enough resources; RescaleFailed"), "{}", failed.stderr);

    let log = env.sim.requests();
    let submit = log.iter().find(|entry| entry.action == "HotUpdateJob").expect("a submit");
    assert_eq!(
        (submit.path.as_str(), submit.body.as_deref()),
        ("/api/v2/namespaces/ns/jobs/job-ok%3AhotUpdate", Some(""))
    );
}

#[tokio::test]
async fn enqueue_list_and_show_take_a_kind_and_refuse_an_unknown_one() {
    let env = TestEnv::new(&scenario()).await;
    for kind in ["deploy", "validate"] {
        let queued = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "--kind", kind, "t-1"]);
        assert_eq!(queued.code, Some(0), "{}", queued.stderr);
    }
    let unknown = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "--kind", "savepoint", "t-2"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("resource_plan"), "{}", unknown.stderr);

    let listed = env.cli(&["list", "--kind", "validate", "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    assert_eq!(rows.as_array().map(Vec::len), Some(1));
    assert_eq!(rows[0]["kind"], "validate");

    let ambiguous = env.cli(&["show", "t-1"]);
    assert_eq!(ambiguous.code, Some(2), "{}", ambiguous.stderr);
    assert!(ambiguous.stderr.contains("--kind validate"), "{}", ambiguous.stderr);
    let shown = env.cli(&["show", "t-1", "--kind", "validate"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    assert!(shown.stdout.lines().any(|line| line.split_whitespace().eq(["kind", "validate"])), "{}", shown.stdout);
}

/// Kills the `simulate` process this test started when the test ends.
struct Simulate(std::process::Child);

impl Drop for Simulate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_submit_commands_work_against_the_simulate_command_with_the_example_scenario() {
    let env = TestEnv::new("").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let config = env.dir.path().join("simulate.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = {db:?}\n\n[flink]\nendpoint = {base:?}\naccess_key_id = \"flink-ticketd-demo\"\n\
             access_key_secret = \"flink-ticketd-demo-secret\"\n\n[poll]\ninitial_interval = \"20ms\"\n\
             max_interval = \"100ms\"\n",
            db = env.db_path.display().to_string(),
        ),
    )
    .unwrap();
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/config/simulator-example.toml");
    let _simulate = Simulate(
        std::process::Command::new(crate::harness::binary())
            .args(["--config", config.to_str().unwrap(), "simulate", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--scenario", scenario])
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("simulate starts"),
    );
    let http = reqwest::Client::new();
    crate::harness::eventually("simulate to answer", || async {
        http.get(format!("{base}/_sim/healthz")).send().await.ok().filter(|answer| answer.status() == 200)
    })
    .await;

    let plan = env.cli_with(
        &config,
        &args("resource-plan", &["--deployment-id", "737d0921-c5ac-47fc-9ba9-07a1e0b40001", "--wait"]),
        &[],
    );
    assert_eq!(plan.code, Some(0), "{}", plan.stderr);
    assert_eq!(plan.stdout, r#"{ "ssgProfiles" : [ {"name":"默认", "cpu":1.0} ],  "nodes":[] }"#);

    let validate = env.cli_with(&config, &args("validate", &["--draft-id", "draft-bad-config", "--wait"]), &[]);
    assert_eq!(validate.code, Some(1), "{}", validate.stderr);
    assert!(validate.stderr.contains("3:8: Object 'orders' not found\nENGINE_VERSION: engine version not supported\n"));

    let failed = env.cli_with(&config, &args("hot-update", &["--job-id", "job-short-of-resources", "--wait"]), &[]);
    assert_eq!(failed.code, Some(1), "{}", failed.stderr);
    assert!(failed.stderr.contains("not enough resources"), "{}", failed.stderr);
    let applied = env.cli_with(&config, &args("hot-update", &["--job-id", "job-any", "--wait"]), &[]);
    assert_eq!(applied.code, Some(0), "{}", applied.stderr);

    let log: serde_json::Value =
        http.get(format!("{base}/_sim/requests")).send().await.unwrap().json().await.expect("the request log");
    let submits: Vec<(String, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["answer"] == "submitted")
        .map(|entry| (entry["action"].as_str().unwrap().to_owned(), entry["body"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        submits,
        [
            ("GenerateResourcePlanWithFlinkConfAsync".to_owned(), String::new()),
            ("ValidateDeploymentDraftAsync".to_owned(), r#"{"deploymentDraftId":"draft-bad-config"}"#.to_owned()),
            ("HotUpdateJob".to_owned(), String::new()),
            ("HotUpdateJob".to_owned(), String::new()),
        ]
    );
}
