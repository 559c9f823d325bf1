//! The real binary's user commands: output, exit codes, and what they change in the database.

use crate::harness::{KEY_SECRET, TestEnv};
use flink_ticketd::domain::TicketState;

#[tokio::test]
async fn enqueue_list_show_cancel_and_retry_work_on_the_database() {
    let env = TestEnv::new("").await;
    let queued = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "t-1", "t 2/ü"]);
    assert_eq!(queued.code, Some(0), "{}", queued.stderr);
    assert!(queued.stdout.contains("queued t-1") && queued.stdout.contains("queued t 2/ü"));

    let duplicate = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", "t-1"]);
    assert_eq!(duplicate.code, Some(2));
    assert!(duplicate.stderr.contains("already queued"), "{}", duplicate.stderr);
    let empty = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", ""]);
    assert_eq!(empty.code, Some(2));
    assert!(empty.stderr.contains("ticket_id_must_be_1_to_128_printable_chars"), "{}", empty.stderr);

    let listed = env.cli(&["list", "--json"]);
    assert_eq!(listed.code, Some(0), "{}", listed.stderr);
    let rows: serde_json::Value = serde_json::from_str(&listed.stdout).expect("list --json prints JSON");
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(rows[0]["state"], "pending");
    assert!(rows[0].get("lease_owner").is_none(), "internal columns stay out of the JSON");

    let table = env.cli(&["list", "--state", "pending"]);
    assert!(table.stdout.lines().next().unwrap().starts_with("TICKET_ID"));
    assert_eq!(table.stdout.lines().count(), 3);
    let bad_state = env.cli(&["list", "--state", "done"]);
    assert_eq!(bad_state.code, Some(2));

    let cancelled = env.cli(&["cancel", "t-1"]);
    assert_eq!(cancelled.code, Some(0), "{}", cancelled.stderr);
    assert_eq!(env.ticket("t-1").await.state, TicketState::Cancelled);
    let again = env.cli(&["cancel", "t-1"]);
    assert_eq!(again.code, Some(2));
    assert!(again.stderr.contains("already cancelled"), "{}", again.stderr);

    let retried = env.cli(&["retry", "t-1"]);
    assert_eq!(retried.code, Some(0), "{}", retried.stderr);
    let ticket = env.ticket("t-1").await;
    assert_eq!((ticket.state.as_str(), ticket.retries), ("pending", 1));

    let shown = env.cli(&["show", "t 2/ü", "--json"]);
    assert_eq!(shown.code, Some(0), "{}", shown.stderr);
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["ticket_id"], "t 2/ü");
    assert_eq!(shown["webhook_deliveries"], serde_json::json!([]));
    let missing = env.cli(&["show", "nope"]);
    assert_eq!(missing.code, Some(2));
    assert!(missing.stderr.starts_with("flink-ticketd: no ticket \"nope\""), "{}", missing.stderr);
}

#[tokio::test]
async fn show_asks_which_one_when_an_id_exists_in_two_workspaces() {
    let env = TestEnv::new("").await;
    env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws-a", "same"]);
    env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws-b", "same"]);
    let ambiguous = env.cli(&["show", "same"]);
    assert_eq!(ambiguous.code, Some(2));
    assert!(ambiguous.stderr.contains("--workspace ws-a"), "{}", ambiguous.stderr);
    let narrowed = env.cli(&["show", "same", "--workspace", "ws-b"]);
    assert_eq!(narrowed.code, Some(0), "{}", narrowed.stderr);
    assert!(narrowed.stdout.contains("ws-b"));
}

#[tokio::test]
async fn check_config_prints_the_effective_config_without_secrets() {
    let env = TestEnv::new("").await;
    let checked = env.cli(&["check-config"]);
    assert_eq!(checked.code, Some(0), "{}", checked.stderr);
    assert!(checked.stdout.contains("access_key_secret = \"[redacted]\""), "{}", checked.stdout);
    assert!(checked.stdout.contains("# credentials: configuration"), "{}", checked.stdout);
    assert!(!checked.stdout.contains(KEY_SECRET) && !checked.stderr.contains(KEY_SECRET));

    let config = env.dir.path().join("broken.toml");
    std::fs::write(
        &config,
        "[poll]\ninitial_interval = \"soon\"\n[flink]\naccess_key_id = \"AK\"\naccess_key_secret = \"s3cr3t-value\"\nmax_in_flight = 0\n",
    )
    .unwrap();
    let output = std::process::Command::new(crate::harness::binary())
        .args(["--config", config.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("poll.initial_interval") && stderr.contains("flink.max_in_flight"), "{stderr}");
    assert!(!stderr.contains("s3cr3t-value") && !String::from_utf8_lossy(&output.stdout).contains("s3cr3t-value"));
}

#[tokio::test]
async fn migrate_applies_the_schema_and_bad_usage_exits_two() {
    let env = TestEnv::new("").await;
    let migrated = env.cli(&["migrate"]);
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    assert!(migrated.stdout.contains("is up to date"));
    assert_eq!(env.cli(&["no-such-command"]).code, Some(2));
    let missing_config = std::process::Command::new(crate::harness::binary())
        .args(["--config", "/nonexistent/flink-ticketd.toml", "list"])
        .output()
        .unwrap();
    assert_eq!(missing_config.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing_config.stderr).contains("does not exist"));
}

#[tokio::test]
async fn output_piped_into_a_reader_that_stops_early_ends_quietly() {
    use std::io::Read as _;
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    env.execute_sql(&crate::harness::insert_tickets_sql((0..400).map(|n| format!("t-{n}")))).await;
    // Far more JSON than a pipe holds: the writer meets a closed pipe, as with `| head -1`.
    let mut child = std::process::Command::new(crate::harness::binary())
        .arg("--config")
        .arg(env.config_file())
        .args(["list", "--limit", "400", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).expect("some output arrives");
    drop(stdout);
    let output = child.wait_with_output().expect("the binary exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn list_show_and_webhooks_list_on_a_missing_database_fail_in_one_line_and_create_nothing() {
    let env = TestEnv::new("").await;
    let missing_dir = env.dir.path().join("not-there");
    let database = missing_dir.join("tickets.db");
    let database_text = database.display().to_string();
    let variables = [("FLINK_TICKETD_DATABASE__PATH", database_text.as_str())];
    for args in [&["list"][..], &["list", "--json"], &["show", "t-1"], &["webhooks", "list"]] {
        let output = env.cli_with(&env.config_file(), args, &variables);
        assert_eq!(output.code, Some(1), "{args:?}: {}", output.stderr);
        assert_eq!(output.stderr.trim_end().lines().count(), 1, "{args:?}: {}", output.stderr);
        assert!(output.stderr.contains(&format!("no database at {database_text}")), "{args:?}: {}", output.stderr);
        assert!(!missing_dir.exists(), "{args:?} created {}", missing_dir.display());
    }
}

#[tokio::test]
async fn enqueue_exits_1_when_the_database_fails_and_2_when_it_refuses_the_row() {
    use sqlx::Connection as _;
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    // Another program holds the write lock longer than enqueue waits for it.
    let mut holder =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", env.db_path.display())).await.expect("a connection");
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut holder).await.expect("the write lock is taken");
    let locked = env
        .cli_async(
            &env.config_file(),
            &["enqueue", "--namespace", "ns", "--workspace", "ws", "t-locked"],
            &[("FLINK_TICKETD_DATABASE__BUSY_TIMEOUT", "100ms")],
        )
        .await;
    assert_eq!(locked.code, Some(1), "{}", locked.stderr);
    assert!(locked.stderr.contains("database is locked"), "{}", locked.stderr);
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.expect("the write lock is released");
    holder.close().await.expect("the connection closes");

    let refused = env.cli(&["enqueue", "--namespace", "ns", "--workspace", "ws", ""]);
    assert_eq!(refused.code, Some(2), "{}", refused.stderr);
}
