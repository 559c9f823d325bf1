//! Faults around the daemon: a lease that lapses mid-poll, outside writers and backups competing
//! for SQLite's lock, a full disk, the database file removed or replaced, the API unreachable for
//! longer than the deadlines, and the wall clock stepping forward and back.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use flink_ticketd::clock::{Clock, ManualClock, format_instant, parse_instant};
use flink_ticketd::domain::{TicketState, TicketStatus};

use crate::harness::{TestEnv, eventually, eventually_within, outside_connection, quote};

#[tokio::test]
async fn a_poll_whose_lease_was_taken_back_cannot_overwrite_the_result_of_a_later_claim() {
    // While the first (slow) poll is in flight, its lease is taken back from outside (as by a
    // process handing leases back), so the ticket is claimed again and finished meanwhile; the
    // first poll's result must then be dropped, and its lease extensions write nothing.
    let env = TestEnv::new(
        r#"
        [[tickets]]
        id = "t-slow"
        steps = [{ status = "EXECUTING", delay_ms = 1200 }, { status = "FINISHED", success = true, deployment_id = "dep-1" }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|config| config.poll.lease = Duration::from_millis(300)).await;
    env.insert("t-slow", "ns", "ws").await;
    let store = env.store().await;
    eventually("the first poll to hold the lease", || async {
        let rows = store.find_tickets("t-slow", None, None, None).await.expect("tickets are read");
        rows.into_iter().find(|row| row.lease_owner.is_some())
    })
    .await;
    store.close().await;
    env.execute_sql(
        "UPDATE tickets SET lease_owner = NULL, lease_until = NULL,
                            next_poll_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE ticket_id = 't-slow'",
    )
    .await;
    eventually("both polls to be answered", || async { (env.sim.requests().len() == 2).then_some(()) }).await;
    // Graceful shutdown waits for the first poll's write to be attempted.
    daemon.stop().await.expect("clean shutdown");

    let ticket = env.ticket("t-slow").await;
    assert_eq!(ticket.state, TicketState::Succeeded);
    assert_eq!(
        ticket.ticket_status.as_ref().map(TicketStatus::as_wire),
        Some("FINISHED"),
        "the stale EXECUTING answer was not written"
    );
    assert_eq!(ticket.deploy_success, Some(true));
    assert_eq!(ticket.polls, 1, "only the poll that held the lease is recorded");
    assert!(ticket.lease_owner.is_none());
}

/// Rows per second each outside writer inserts.
const OUTSIDE_ROWS_PER_SECOND: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_writers_and_backups_never_see_a_locked_database_while_the_daemon_runs_flat_out() {
    let run_for = Duration::from_secs(6);
    let env = TestEnv::new("").await;
    env.store().await.close().await;
    // A deep queue keeps the daemon claiming and recording the whole time.
    let mut queue = String::new();
    for index in 0..1500 {
        queue.push_str(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('queued-{index}', 'ns', 'ws');\n"
        ));
    }
    env.execute_sql(&queue).await;
    let daemon = env.spawn_binary(&[]);
    let stop = Arc::new(AtomicBool::new(false));

    // Writer 1: its own sqlx connection, one autocommit INSERT every 10 ms.
    let sqlx_writer = {
        let pool = outside_connection(&format!("sqlite://{}", env.db_path.display())).await;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let pace = Duration::from_millis(1000 / OUTSIDE_ROWS_PER_SECOND);
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let sql = format!(
                    "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('sqlx-{index}', 'ns', 'ws')"
                );
                match sqlx::query(&sql).execute(&pool).await {
                    Ok(_) => index += 1,
                    Err(error) => errors.push(error.to_string()),
                }
                latencies.push(started.elapsed());
                tokio::time::sleep(pace.saturating_sub(started.elapsed())).await;
            }
            pool.close().await;
            (index, latencies, errors)
        })
    };
    // Writer 2: the sqlite3 shell, ten single-row INSERTs every 100 ms.
    let shell_writer = {
        let db = env.db_path.clone();
        let stop = Arc::clone(&stop);
        tokio::task::spawn_blocking(move || {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut index = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut script = String::from(".timeout 5000\n.bail on\n");
                for offset in 0..OUTSIDE_ROWS_PER_SECOND / 10 {
                    script.push_str(&format!(
                        "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('shell-{}', 'ns', 'ws');\n",
                        index + offset
                    ));
                }
                match sqlite3(&db, &script) {
                    Ok(()) => index += OUTSIDE_ROWS_PER_SECOND / 10,
                    Err(error) => errors.push(error),
                }
                latencies.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
            (index, latencies, errors)
        })
    };
    // Reader: `.backup` through the sqlite3 shell every 500 ms.
    let backups = {
        let db = env.db_path.clone();
        let dir = env.dir.path().to_path_buf();
        let stop = Arc::clone(&stop);
        tokio::task::spawn_blocking(move || {
            let mut taken = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let target = dir.join(format!("backup-{}.db", taken.len()));
                match sqlite3(&db, &format!(".timeout 5000\n.backup '{}'\n", target.display())) {
                    Ok(()) => taken.push(target),
                    Err(error) => errors.push(error),
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            (taken, errors)
        })
    };

    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let (sqlx_rows, sqlx_latencies, sqlx_errors) = sqlx_writer.await.expect("the sqlx writer joins");
    let (shell_rows, shell_latencies, shell_errors) = shell_writer.await.expect("the shell writer joins");
    let (backups, backup_errors) = backups.await.expect("the backup reader joins");
    assert!(sqlx_errors.is_empty(), "the sqlx writer failed: {sqlx_errors:?}");
    assert!(shell_errors.is_empty(), "the sqlite3 shell failed: {shell_errors:?}");
    assert!(backup_errors.is_empty(), "a backup failed: {backup_errors:?}");
    assert!(sqlx_rows >= 100 && shell_rows >= 100 && backups.len() >= 3, "the writers and the reader ran");

    // No row lost: every insert that reported success is in the table, and the daemon finishes
    // them all.
    env.wait_all_final().await;
    let store = env.store().await;
    let rows = store.list_tickets(None, None, 1_000_000).await.expect("tickets are read");
    store.close().await;
    let count = |prefix: &str| rows.iter().filter(|row| row.key.ticket_id.starts_with(prefix)).count() as u64;
    assert_eq!((count("sqlx-"), count("shell-"), count("queued-")), (sqlx_rows, shell_rows, 1500));
    assert!(rows.iter().all(|row| row.state == TicketState::Succeeded));
    let latest = backups.last().expect("a backup");
    assert_eq!(sqlite3_output(latest, "PRAGMA integrity_check;").trim(), "ok", "the last backup is consistent");

    daemon.signal(15);
    let log = daemon.log_text();
    assert_eq!(daemon.wait(), Some(0));
    for line in log.lines() {
        let lower = line.to_ascii_lowercase();
        assert!(!lower.contains("locked") && !lower.contains("busy"), "the daemon met the lock: {line}");
    }
    let max = |latencies: &[Duration]| latencies.iter().max().copied().unwrap_or_default();
    eprintln!(
        "contention: {sqlx_rows} rows through sqlx (max {:?} per insert), {shell_rows} rows through the sqlite3 shell \
         (max {:?} per 10-row invocation), {} backups, 0 lock errors, 0 rows lost",
        max(&sqlx_latencies),
        max(&shell_latencies),
        backups.len()
    );
}

/// Runs a script through the sqlite3 shell; `Err` with its stderr when it fails or complains.
fn sqlite3(db: &Path, script: &str) -> Result<(), String> {
    let mut child = Command::new("sqlite3")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("sqlite3 does not start: {error}"))?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).map_err(|error| error.to_string())?;
    let output = child.wait_with_output().map_err(|error| error.to_string())?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() && stderr.trim().is_empty() { Ok(()) } else { Err(stderr) }
}

/// What the sqlite3 shell prints for `sql`.
fn sqlite3_output(db: &Path, sql: &str) -> String {
    let output = Command::new("sqlite3").arg(db).arg(sql).output().expect("sqlite3 runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "4m") at `dir`; `Err` when mounting is not permitted.
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).expect("the mount point is created");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|error| error.to_string())?;
        if output.status.success() {
            Ok(Tmpfs { dir: dir.to_path_buf() })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[tokio::test]
async fn a_full_disk_is_reported_and_survived_and_work_resumes_when_space_returns() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "slow-"
        steps = [{ status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
                 { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
                 { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
                 { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
                 { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" }, { status = "EXECUTING" },
                 { status = "FINISHED", success = true }]
        "#,
    )
    .await;
    let mount_point = env.dir.path().join("small-disk");
    let tmpfs = match Tmpfs::mount(&mount_point, "16m") {
        Ok(tmpfs) => tmpfs,
        Err(error) => panic!("mounting a tmpfs needs root (CI runs as root): {error}"),
    };
    let db = tmpfs.dir.join("tickets.db");
    let db_text = db.display().to_string();
    let tickets = 300;
    let mut queue = String::from("BEGIN;\n");
    for index in 0..tickets {
        queue.push_str(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace) VALUES ('slow-{index}', 'ns', 'ws');\n"
        ));
    }
    queue.push_str("COMMIT;\n");
    let migrated = env.cli_with(&env.config_file(), &["migrate"], &[("FLINK_TICKETD_DATABASE__PATH", &db_text)]);
    assert_eq!(migrated.code, Some(0), "{}", migrated.stderr);
    sqlite3(&db, &queue).expect("the queue is inserted");
    let daemon = env.spawn_binary(&[("FLINK_TICKETD_DATABASE__PATH", &db_text)]);
    eventually("polling to start", || async { (env.sim.requests().len() > 50).then_some(()) }).await;

    // Fill the disk to the last byte.
    let filler_path = tmpfs.dir.join("filler");
    let mut filler = std::fs::File::create(&filler_path).expect("the filler is created");
    let chunk = vec![0u8; 4096];
    while filler.write_all(&chunk).is_ok() {}
    let _ = filler.sync_all();
    drop(filler);
    let reported = eventually("the daemon to report the full disk", || async {
        daemon.log_text().lines().find(|line| line.contains("disk is full")).map(str::to_owned)
    })
    .await;
    assert!(reported.contains("ERROR"), "reported as an error: {reported}");
    // Claims cannot take a lease on a full disk either: the daemon keeps trying, once a second.
    eventually("the daemon to keep trying while the disk is full", || async {
        (daemon.log_text().matches("disk is full").count() >= 3).then_some(())
    })
    .await;
    assert!(daemon_is_running(&daemon), "a full disk does not stop the daemon");
    assert_eq!(sqlite3_output(&db, "PRAGMA integrity_check;").trim(), "ok", "consistent while full");

    std::fs::remove_file(&filler_path).expect("space returns");
    let store_settings =
        flink_ticketd::store::StoreSettings { path: db.clone(), busy_timeout: Duration::from_secs(5), max_readers: 1 };
    let store = flink_ticketd::store::Store::open_without_migrating(&store_settings).await.expect("the store opens");
    eventually_within(Duration::from_secs(60), "every ticket to finish once space returned", || async {
        let counts = store.count_tickets_by_state().await.expect("counts are read");
        (counts == vec![("succeeded".to_owned(), tickets)]).then_some(())
    })
    .await;
    store.close().await;
    daemon.signal(15);
    assert_eq!(daemon.wait(), Some(0));
    assert_eq!(sqlite3_output(&db, "PRAGMA integrity_check;").trim(), "ok", "consistent after");
    drop(tmpfs);
}

fn daemon_is_running(daemon: &crate::harness::BinaryDaemon) -> bool {
    Path::new(&format!("/proc/{}", daemon.pid())).exists()
        && !std::fs::read_to_string(format!("/proc/{}/stat", daemon.pid())).unwrap_or_default().contains(") Z ")
}

#[tokio::test]
async fn a_database_file_removed_or_replaced_under_the_daemon_stops_it_with_an_error() {
    for replace in [false, true] {
        let env = TestEnv::new("").await;
        env.store().await.close().await;
        let mut daemon = env.spawn_binary(&[]);
        eventually("the daemon to start", || async { daemon.log_text().contains("daemon started").then_some(()) })
            .await;
        if replace {
            let other = env.dir.path().join("other.db");
            std::fs::copy(&env.db_path, &other).expect("a copy of the database");
            std::fs::rename(&other, &env.db_path).expect("the copy replaces the database");
        } else {
            std::fs::remove_file(&env.db_path).expect("the database is removed");
        }
        let daemon_child = std::sync::Mutex::new(&mut daemon.child);
        let status = eventually("the daemon to exit", || async {
            daemon_child.lock().expect("not poisoned").try_wait().expect("waitable")
        })
        .await;
        assert_eq!(status.code(), Some(1), "a runtime failure, so that systemd restarts it");
        let log = daemon.log_text();
        let expected = if replace { "was replaced by another file" } else { "was removed" };
        let line =
            log.lines().find(|line| line.contains(expected)).unwrap_or_else(|| panic!("no clear error in {log}"));
        assert!(line.starts_with("flink-ticketd: the database file"), "{line}");
    }
}

#[tokio::test]
async fn with_the_api_unreachable_tickets_expire_at_their_deadlines_and_nothing_else_changes() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "never-"
        steps = [{ status = "EXECUTING" }]
        "#,
    )
    .await;
    let daemon = env.spawn_daemon(|_| {}).await;
    env.insert("done-before", "ns", "ws").await;
    let done = env.wait_final("done-before").await;
    let deadline = format_instant(Utc::now() + chrono::Duration::seconds(2));
    for index in 0..3 {
        env.execute_sql(&format!(
            "INSERT INTO tickets (ticket_id, namespace, workspace, deadline_at) VALUES ('never-{index}', 'ns', 'ws', {})",
            quote(&deadline)
        ))
        .await;
    }
    env.insert("never-long", "ns", "ws").await;
    eventually("every ticket to be polled once", || async {
        ["never-0", "never-1", "never-2", "never-long"].iter().all(|id| env.sim.polls_of(id) > 0).then_some(())
    })
    .await;
    env.stop_simulator();

    for index in 0..3 {
        let ticket = env.wait_final(&format!("never-{index}")).await;
        assert_eq!(ticket.state, TicketState::Expired);
        assert_eq!(ticket.error_code.as_deref(), Some("NetworkError"), "{:?}", ticket.error_message);
        let finished = ticket.finished_at.expect("finished");
        let deadline = parse_instant(&deadline).expect("an instant");
        assert!(finished >= deadline, "not before its deadline");
        assert!(finished - deadline < chrono::Duration::seconds(2), "at its deadline, not long after: {finished}");
    }
    let long = env.ticket("never-long").await;
    assert_eq!((long.state.as_str(), long.error_code.as_deref()), ("pending", Some("NetworkError")), "still trying");
    assert_eq!(env.ticket("done-before").await, done, "a finished ticket is left alone");
    daemon.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_wall_clock_step_forward_or_back_neither_expires_tickets_en_masse_nor_strands_them() {
    let env = TestEnv::new(
        r#"
        [[tickets]]
        prefix = "never-"
        steps = [{ status = "EXECUTING" }]
        "#,
    )
    .await;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    // The manual clock follows real time, until the test steps it.
    let ticking = {
        let clock = Arc::clone(&clock);
        tokio::spawn(async move {
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let now = Instant::now();
                clock.advance(chrono::Duration::from_std(now - last).expect("small"));
                last = now;
            }
        })
    };
    let daemon = env
        .spawn_daemon_with_clock(Arc::clone(&clock) as Arc<dyn Clock>, |config| {
            config.poll.deadline = Duration::from_secs(3600);
        })
        .await;
    let ids: Vec<String> = (0..5).map(|index| format!("never-{index}")).collect();
    for id in &ids {
        env.insert(id, "ns", "ws").await;
    }
    let polled_past = |counts: HashMap<String, usize>, more: usize| {
        let env = &env;
        let ids = &ids;
        async move { ids.iter().all(|id| env.sim.polls_of(id) >= counts.get(id).copied().unwrap_or(0) + more).then_some(()) }
    };
    let counts = || ids.iter().map(|id| (id.clone(), env.sim.polls_of(id))).collect::<HashMap<_, _>>();
    eventually("every ticket to be polled", || polled_past(HashMap::new(), 2)).await;

    clock.advance(chrono::Duration::minutes(10));
    let before = counts();
    eventually("polling to go on after a step forward", || polled_past(before.clone(), 3)).await;
    for id in &ids {
        assert_eq!(
            env.ticket(id).await.state,
            TicketState::Pending,
            "{id}: a step forward within the deadline expires nothing"
        );
    }

    clock.advance(chrono::Duration::hours(-2));
    let before = counts();
    eventually("polling to go on after a step back", || polled_past(before.clone(), 3)).await;
    let horizon = clock.now() + chrono::Duration::minutes(5);
    for id in &ids {
        let ticket = env.ticket(id).await;
        assert_eq!(ticket.state, TicketState::Pending);
        assert!(
            ticket.next_poll_at < horizon,
            "{id} is due at {} though the clock says {}",
            format_instant(ticket.next_poll_at),
            format_instant(clock.now())
        );
    }
    daemon.stop().await.expect("clean shutdown");
    ticking.abort();
}
