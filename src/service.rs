//! Running under a service manager: the systemd notification protocol (READY, STOPPING and
//! WATCHDOG keep-alives, through the `sd-notify` crate) and the liveness of the daemon's loops.
//!
//! Each long-running loop counts its iterations in a progress counter and bumps it at least every
//! [`Heartbeat::every`] even while it waits (for a due row, or for a free slot while every slot is
//! busy with a slow API). [`Liveness`] samples those counters; a loop whose counter has not moved
//! for its stall window is stuck. [`keep_alive`] sends `WATCHDOG=1` only while no loop is stuck,
//! so a stuck loop lets systemd's `WatchdogSec=` restart the service, while a slow API (requests
//! in flight, loops still turning) does not. `/readyz` reads the same verdict.
//!
//! No SQL and no HTTP here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a loop may go without counting progress before it is stuck when no watchdog is set
/// (only `/readyz` looks then).
pub const DEFAULT_STALL_WINDOW: Duration = Duration::from_secs(15);

/// Longest a loop waits without counting progress, whatever the watchdog.
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(1);

/// A message to the service manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1`: the database is migrated and the HTTP listener is bound.
    Ready,
    /// `STOPPING=1`: shutdown began.
    Stopping,
    /// `WATCHDOG=1`: the loops are making progress.
    Watchdog,
}

type SendNotice = dyn Fn(Notice) + Send + Sync;

/// The link to the service manager: where notices go and the watchdog interval it expects.
#[derive(Clone)]
pub struct Supervisor {
    /// `WATCHDOG_USEC` (for this process), if the watchdog is enabled.
    pub watchdog: Option<Duration>,
    send: Arc<SendNotice>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("watchdog", &self.watchdog).finish_non_exhaustive()
    }
}

impl Supervisor {
    /// systemd as the environment describes it: notices go to `$NOTIFY_SOCKET` (nowhere when it
    /// is unset), and the watchdog is `$WATCHDOG_USEC` when `$WATCHDOG_PID` is unset or ours.
    pub fn from_env() -> Supervisor {
        let warned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let send = move |notice: Notice| {
            let state = match notice {
                Notice::Ready => sd_notify::NotifyState::Ready,
                Notice::Stopping => sd_notify::NotifyState::Stopping,
                Notice::Watchdog => sd_notify::NotifyState::Watchdog,
            };
            if let Err(error) = sd_notify::notify(&[state]) {
                // Said once: a socket that refuses one notice refuses them all.
                if !warned.swap(true, Ordering::Relaxed) {
                    warn!(error = %error, "notifying the service manager failed");
                }
            }
        };
        Supervisor { watchdog: sd_notify::watchdog_enabled().filter(|usec| !usec.is_zero()), send: Arc::new(send) }
    }

    /// A supervisor that hands notices to `send` (tests, or no service manager at all).
    pub fn new(watchdog: Option<Duration>, send: impl Fn(Notice) + Send + Sync + 'static) -> Supervisor {
        Supervisor { watchdog, send: Arc::new(send) }
    }

    /// Sends one notice.
    pub fn notify(&self, notice: Notice) {
        (self.send)(notice);
    }

    /// How long a loop may go without progress before it counts as stuck: half the watchdog
    /// interval, so a stuck loop is noticed (and keep-alives stop) well before systemd gives up.
    pub fn stall_window(&self) -> Duration {
        self.watchdog.map_or(DEFAULT_STALL_WINDOW, |watchdog| watchdog / 2)
    }

    /// How often the loops count progress while they wait: a quarter of the stall window, at
    /// most [`MAX_HEARTBEAT`].
    pub fn heartbeat(&self) -> Duration {
        (self.stall_window() / 4).clamp(Duration::from_millis(1), MAX_HEARTBEAT)
    }
}

/// A loop's progress counter and how often it must move while the loop waits.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Bumped on every iteration and every heartbeat.
    pub progress: Arc<AtomicU64>,
    /// Longest wait between bumps.
    pub every: Duration,
}

impl Heartbeat {
    /// A fresh counter that must move every `every`.
    pub fn new(every: Duration) -> Heartbeat {
        Heartbeat { progress: Arc::new(AtomicU64::new(0)), every: every.max(Duration::from_millis(1)) }
    }

    /// Counts one step of progress.
    pub fn beat(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// Sleeps for `duration`, beating at least every [`Heartbeat::every`]. Cancel-safe.
    pub async fn sleep(&self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            self.beat();
            let now = Instant::now();
            if now >= until {
                return;
            }
            tokio::time::sleep_until(until.min(now + self.every)).await;
        }
    }

    /// Waits for a permit of `semaphore`, beating while every permit is taken: a loop whose
    /// slots are all busy with slow requests is waiting, not stuck. Cancel-safe.
    pub async fn acquire(&self, semaphore: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        loop {
            self.beat();
            if let Ok(permit) = tokio::time::timeout(self.every, Arc::clone(semaphore).acquire_owned()).await {
                return permit.expect("the loops never close their semaphore");
            }
        }
    }
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat::new(MAX_HEARTBEAT)
    }
}

/// Whether a loop whose counter last moved at `last_change` is still live at `now`. Pure.
pub fn is_live(last_change: Instant, now: Instant, window: Duration) -> bool {
    now.saturating_duration_since(last_change) <= window
}

/// The verdict of [`Liveness`] on every loop.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Names of the loops whose counters have not moved within the stall window.
    pub stuck: Vec<&'static str>,
}

impl Verdict {
    /// Whether every loop is making progress.
    pub fn live(&self) -> bool {
        self.stuck.is_empty()
    }
}

/// Watches the progress counters of the daemon's loops.
#[derive(Debug)]
pub struct Liveness {
    window: Duration,
    loops: Mutex<Vec<Watched>>,
    verdict: Mutex<Verdict>,
}

#[derive(Debug)]
struct Watched {
    name: &'static str,
    counter: Arc<AtomicU64>,
    last_value: u64,
    last_change: Instant,
}

impl Liveness {
    /// A watcher that calls a loop stuck after `window` without progress.
    pub fn new(window: Duration) -> Liveness {
        Liveness { window, loops: Mutex::new(Vec::new()), verdict: Mutex::new(Verdict::default()) }
    }

    /// Watches the loop `name` through its progress counter, counted as live from now.
    pub fn watch(&self, name: &'static str, counter: Arc<AtomicU64>) {
        let last_value = counter.load(Ordering::Relaxed);
        self.loops.lock().expect("the liveness mutex is never poisoned: no code panics holding it").push(Watched {
            name,
            counter,
            last_value,
            last_change: Instant::now(),
        });
    }

    /// Reads every counter at `now` and returns (and remembers) the verdict.
    pub fn sample(&self, now: Instant) -> Verdict {
        let mut loops = self.loops.lock().expect("the liveness mutex is never poisoned: no code panics holding it");
        let mut verdict = Verdict::default();
        for watched in loops.iter_mut() {
            let value = watched.counter.load(Ordering::Relaxed);
            if value != watched.last_value {
                watched.last_value = value;
                watched.last_change = now;
            }
            if !is_live(watched.last_change, now, self.window) {
                verdict.stuck.push(watched.name);
            }
        }
        drop(loops);
        *self.verdict.lock().expect("the liveness mutex is never poisoned: no code panics holding it") =
            verdict.clone();
        verdict
    }

    /// (loop name, time since its counter last moved) at `now`, for `/metrics` and the pages.
    /// Reading counts as a sample for the ages, not for the verdict.
    pub fn progress_ages(&self, now: Instant) -> Vec<(&'static str, Duration)> {
        let mut loops = self.loops.lock().expect("the liveness mutex is never poisoned: no code panics holding it");
        loops
            .iter_mut()
            .map(|watched| {
                let value = watched.counter.load(Ordering::Relaxed);
                if value != watched.last_value {
                    watched.last_value = value;
                    watched.last_change = now;
                }
                (watched.name, now.saturating_duration_since(watched.last_change))
            })
            .collect()
    }

    /// The verdict of the last [`Liveness::sample`].
    pub fn verdict(&self) -> Verdict {
        self.verdict.lock().expect("the liveness mutex is never poisoned: no code panics holding it").clone()
    }

    /// The stall window.
    pub fn window(&self) -> Duration {
        self.window
    }
}

/// Samples `liveness` every quarter of its window until `shutdown`, and sends `WATCHDOG=1` after
/// each sample that finds every loop live, when `supervisor` has a watchdog. A loop that gets
/// stuck is logged once at error; so is its recovery, at info.
pub async fn keep_alive(liveness: Arc<Liveness>, supervisor: Supervisor, shutdown: CancellationToken) {
    let period = (liveness.window() / 4).max(Duration::from_millis(1));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported: Vec<&'static str> = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let verdict = liveness.sample(Instant::now());
        if verdict.live() {
            if !reported.is_empty() {
                info!(loops = %reported.join(","), "loops making progress again");
                reported.clear();
            }
            if supervisor.watchdog.is_some() {
                supervisor.notify(Notice::Watchdog);
            }
        } else if verdict.stuck != reported {
            error!(
                loops = %verdict.stuck.join(","),
                window_ms = liveness.window().as_millis(),
                "loop made no progress; watchdog keep-alives stopped"
            );
            reported = verdict.stuck;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_live_within_its_window_and_stuck_after_it() {
        let start = Instant::now();
        let window = Duration::from_millis(200);
        assert!(is_live(start, start, window));
        assert!(is_live(start, start + window, window));
        assert!(!is_live(start, start + window + Duration::from_millis(1), window));
        // A sample taken before the last change (clock readings from two threads) is live.
        assert!(is_live(start + window, start, window));
    }

    #[test]
    fn a_frozen_counter_is_reported_stuck_and_a_moving_one_is_not() {
        let liveness = Liveness::new(Duration::from_millis(100));
        let moving = Arc::new(AtomicU64::new(0));
        let frozen = Arc::new(AtomicU64::new(0));
        liveness.watch("poll", Arc::clone(&moving));
        liveness.watch("delivery", Arc::clone(&frozen));
        let start = Instant::now();
        for step in 1..=5_u64 {
            moving.fetch_add(1, Ordering::Relaxed);
            let verdict = liveness.sample(start + Duration::from_millis(60 * step));
            if step <= 1 {
                assert!(verdict.live(), "{verdict:?}");
            } else {
                assert_eq!(verdict.stuck, vec!["delivery"]);
            }
        }
        frozen.fetch_add(1, Ordering::Relaxed);
        assert!(liveness.sample(start + Duration::from_millis(400)).live());
        assert!(liveness.verdict().live());
    }

    #[test]
    fn the_heartbeat_is_a_quarter_of_half_the_watchdog_and_at_most_a_second() {
        let supervisor = Supervisor::new(Some(Duration::from_millis(400)), |_| {});
        assert_eq!(supervisor.stall_window(), Duration::from_millis(200));
        assert_eq!(supervisor.heartbeat(), Duration::from_millis(50));
        let production = Supervisor::new(Some(Duration::from_secs(30)), |_| {});
        assert_eq!(production.heartbeat(), MAX_HEARTBEAT);
        assert_eq!(Supervisor::new(None, |_| {}).stall_window(), DEFAULT_STALL_WINDOW);
    }
}
