//! What the benchmark binaries share: the daemon binary they measure, process CPU time, the file
//! system a database is on, quantiles and options from the environment. Each benchmark uses a
//! part of it.

#![allow(dead_code, reason = "each benchmark binary uses a part of this module")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use flink_ticketd::simulator::{Scenario, Simulator, SimulatorSettings, Step};
use tokio_util::sync::CancellationToken;

/// The access key the benchmarks' simulator accepts.
pub(crate) const KEY_ID: &str = "bench-key";
pub(crate) const KEY_SECRET: &str = "bench-secret";

/// The simulated API on a free loopback port, in this process: every ticket answers `EXECUTING`
/// once, then `FINISHED` with success.
pub(crate) async fn start_simulator(shutdown: &CancellationToken) -> Simulator {
    let scenario = Scenario { default: vec![Step::status("EXECUTING"), Step::finished_ok()], tickets: Vec::new() };
    Simulator::start(
        "127.0.0.1:0".parse().expect("an address"),
        SimulatorSettings {
            credentials: vec![(KEY_ID.to_owned(), KEY_SECRET.to_owned())],
            scenario,
            clock_offset_secs: 0,
        },
        shutdown.clone(),
    )
    .await
    .expect("the simulator starts")
}

/// The daemon binary measured: this build's (release), or `BENCH_DAEMON` to compare another.
pub(crate) fn daemon_binary() -> PathBuf {
    std::env::var_os("BENCH_DAEMON").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_flink-ticketd")), PathBuf::from)
}

/// `flink-ticketd --config CONFIG run`, its own log on this process's stderr.
pub(crate) fn spawn_daemon(config: &Path) -> Child {
    Command::new(daemon_binary())
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the daemon starts")
}

/// Stops a daemon the way systemd does (SIGTERM) and waits for it.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// utime + stime of a process, in clock ticks (see [`ticks_per_second`]).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// The kernel's USER_HZ, 100 on every Linux architecture this daemon targets.
pub(crate) fn ticks_per_second() -> f64 {
    100.0
}

/// The file system `path` is on, from /proc/mounts (the longest mount point that prefixes it).
pub(crate) fn file_system_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (device, mount, kind) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            path.starts_with(mount).then(|| (mount.len(), format!("{kind} on {device}, mounted at {mount}")))
        })
        .max()
        .map_or_else(|| "file system unknown".to_owned(), |(_, described)| described)
}

/// The `q` quantile (nearest rank) of `values`.
pub(crate) fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// An option from the environment, or `default` when unset or unreadable.
pub(crate) fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}
