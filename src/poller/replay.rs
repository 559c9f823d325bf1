//! A workload replayed against the poll schedules in simulated time: tickets arrive, run for a
//! known time, and are polled by [`next_running_poll`] (the function the daemon's `decide` uses)
//! with either the fixed backoff or the schedule learned from the tickets finished so far. It
//! counts polls and measures detection lag without waiting for real deploys; the benchmark and
//! the schedule's tests use it. No IO: the random draws come from a seeded generator.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::decide::{Policy, next_running_poll};
use super::learned::{Bounds, LearnedSchedule, MAX_SAMPLES};
use super::to_chrono;
use crate::domain::RunSample;

/// Tickets to replay: when each is enqueued and how long it truly runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// (enqueued after the start, true run time), in enqueue order.
    pub tickets: Vec<(Duration, Duration)>,
}

/// What a replay measured over the tickets after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replayed {
    /// Tickets measured.
    pub tickets: usize,
    /// Polls per ticket, the first poll (at enqueue) included.
    pub polls_per_ticket: f64,
    /// Mean detection lag (recorded finish minus true finish) as a fraction of the run time.
    pub lag_mean: f64,
    /// 90th percentile of the same.
    pub lag_p90: f64,
}

impl Workload {
    /// `count` deploys, one every `spacing`, with run times drawn from `mix` with `seed`.
    pub fn deploys(count: usize, spacing: Duration, mix: &RunTimes, seed: u64) -> Workload {
        let mut random = StdRng::seed_from_u64(seed);
        let (shortest, longest) = (mix.range.0.as_secs_f64(), mix.range.1.as_secs_f64());
        let tickets = (0..count)
            .map(|index| {
                let run = if random.random::<f64>() < mix.outliers {
                    shortest * ((longest / shortest).ln() * random.random::<f64>()).exp()
                } else {
                    loop {
                        // Box-Muller: a standard normal draw from two uniform ones.
                        let (first, second): (f64, f64) = (random.random(), random.random());
                        let normal = (-2.0 * (1.0 - first).ln()).sqrt() * (std::f64::consts::TAU * second).cos();
                        let run = mix.median.as_secs_f64() * (mix.spread * normal).exp();
                        if (shortest..=longest).contains(&run) {
                            break run;
                        }
                    }
                };
                (spacing * u32::try_from(index).unwrap_or(u32::MAX), Duration::from_secs_f64(run))
            })
            .collect();
        Workload { tickets }
    }
}

/// How run times are drawn: most are log-normal around `median` (deploys of one namespace take
/// similar times); a share `outliers` spreads log-uniformly over `range`, which bounds all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunTimes {
    /// Median of the usual run times.
    pub median: Duration,
    /// Standard deviation of the logarithm of the usual run times.
    pub spread: f64,
    /// Share of run times anywhere in `range` (0 to 1).
    pub outliers: f64,
    /// Shortest and longest run time.
    pub range: (Duration, Duration),
}

impl RunTimes {
    /// The benchmark's deploys: 4 s to 40 s, median about 12 s; four in five within about a
    /// quarter of 12 s (log-normal, spread 0.25), one in five anywhere in the range.
    pub const DEPLOYS: RunTimes = RunTimes {
        median: Duration::from_secs(12),
        spread: 0.25,
        outliers: 0.2,
        range: (Duration::from_secs(4), Duration::from_secs(40)),
    };
}

/// Replays `workload`: the first poll of each ticket at its enqueue, then polls placed by
/// `policy` alone (`adaptive` is `None`) or by the schedule learned, within `adaptive`'s bounds,
/// from the tickets finished before each decision. The first `warm_up` tickets are polled but not
/// measured. `seed` drives the jitter.
pub fn replay(workload: &Workload, policy: &Policy, adaptive: Option<&Bounds>, warm_up: usize, seed: u64) -> Replayed {
    let start = DateTime::<Utc>::UNIX_EPOCH;
    let mut random = StdRng::seed_from_u64(seed);
    // (due, ticket); a ticket's first poll is at its enqueue.
    let mut due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>> = workload
        .tickets
        .iter()
        .enumerate()
        .map(|(index, (enqueued, _))| Reverse((start + to_chrono(*enqueued), index)))
        .collect();
    let mut polls = vec![0_u32; workload.tickets.len()];
    let mut running_seen = vec![Duration::ZERO; workload.tickets.len()];
    let mut streaks = vec![0_i64; workload.tickets.len()];
    let mut lags = vec![None; workload.tickets.len()];
    // Most recent first, as the daemon reads the history.
    let mut history: Vec<RunSample> = Vec::new();
    let mut learned: Option<(usize, Option<LearnedSchedule>)> = None;
    while let Some(Reverse((now, index))) = due.pop() {
        let (enqueued, run_time) = workload.tickets[index];
        let created = start + to_chrono(enqueued);
        let elapsed = (now - created).to_std().unwrap_or(Duration::ZERO);
        polls[index] += 1;
        if elapsed >= run_time {
            lags[index] = Some((elapsed - run_time).as_secs_f64() / run_time.as_secs_f64());
            history.insert(0, RunSample { running_seen: running_seen[index], finish_seen: elapsed });
            history.truncate(MAX_SAMPLES);
            continue;
        }
        running_seen[index] = elapsed;
        let schedule = adaptive.and_then(|bounds| {
            // Learned again only when the history changed, as the daemon's cache does.
            if learned.as_ref().is_none_or(|(size, _)| *size != history.len() || history.len() == MAX_SAMPLES) {
                learned = Some((history.len(), LearnedSchedule::learn(&history, bounds)));
            }
            learned.as_ref().and_then(|(_, schedule)| schedule.as_ref())
        });
        streaks[index] += 1;
        let (next, _) = next_running_poll(created, streaks[index] - 1, now, policy, schedule, random.random::<f64>());
        due.push(Reverse((next.max(now + chrono::Duration::milliseconds(1)), index)));
    }
    let measured: Vec<usize> = (warm_up..workload.tickets.len()).collect();
    let mut measured_lags: Vec<f64> = measured.iter().filter_map(|index| lags[*index]).collect();
    measured_lags.sort_by(f64::total_cmp);
    let count = measured.len().max(1) as f64;
    Replayed {
        tickets: measured.len(),
        polls_per_ticket: measured.iter().map(|index| f64::from(polls[*index])).sum::<f64>() / count,
        lag_mean: measured_lags.iter().sum::<f64>() / measured_lags.len().max(1) as f64,
        lag_p90: percentile(&measured_lags, 0.9),
    }
}

/// The `q` quantile (nearest rank) of sorted values; 0 for none.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poller::PollSettings;

    fn default_policy() -> Policy {
        Policy::from_settings(&PollSettings {
            initial_interval: Duration::from_secs(2),
            max_interval: Duration::from_secs(30),
            multiplier: 1.5,
            deadline: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
            adaptive: true,
            target_lag: 0.1,
        })
    }

    fn default_bounds() -> Bounds {
        Bounds { target_lag: 0.1, min_interval: Duration::from_secs(1), max_interval: Duration::from_secs(30) }
    }

    /// The benchmark's figures over `runs` workloads.
    fn averaged(adaptive: Option<&Bounds>, runs: u64) -> Replayed {
        let mut total = Replayed { tickets: 0, polls_per_ticket: 0.0, lag_mean: 0.0, lag_p90: 0.0 };
        for seed in 0..runs {
            let workload = Workload::deploys(60, Duration::from_secs(2), &RunTimes::DEPLOYS, seed);
            let one = replay(&workload, &default_policy(), adaptive, 30, seed + 1000);
            total.tickets += one.tickets;
            total.polls_per_ticket += one.polls_per_ticket / runs as f64;
            total.lag_mean += one.lag_mean / runs as f64;
            total.lag_p90 += one.lag_p90 / runs as f64;
        }
        total
    }

    #[test]
    fn the_deploy_workload_spreads_from_4_to_40_seconds_around_12() {
        let workload = Workload::deploys(600, Duration::from_secs(2), &RunTimes::DEPLOYS, 7);
        let mut runs: Vec<f64> = workload.tickets.iter().map(|(_, run)| run.as_secs_f64()).collect();
        runs.sort_by(f64::total_cmp);
        assert!(runs[0] >= 4.0 && runs[599] <= 40.0, "{} .. {}", runs[0], runs[599]);
        assert!((10.5..=13.5).contains(&runs[300]), "median {}", runs[300]);
        assert_eq!(workload.tickets[3].0, Duration::from_secs(6), "one every 2 s");
        assert_eq!(workload, Workload::deploys(600, Duration::from_secs(2), &RunTimes::DEPLOYS, 7), "seeded");
    }

    #[test]
    fn the_learned_schedule_polls_less_and_notices_sooner_than_the_backoff() {
        let fixed = averaged(None, 10);
        let adaptive = averaged(Some(&default_bounds()), 10);
        assert_eq!((fixed.tickets, adaptive.tickets), (300, 300));
        assert!(adaptive.polls_per_ticket < fixed.polls_per_ticket - 1.0, "{adaptive:?} vs {fixed:?}");
        assert!(adaptive.lag_mean <= 0.15 && adaptive.lag_p90 <= 0.35, "{adaptive:?}");
        assert!(fixed.lag_mean > 2.0 * adaptive.lag_mean, "{adaptive:?} vs {fixed:?}");
    }

    #[test]
    fn without_history_the_replay_is_the_backoff() {
        // A workload too short to learn from: both replays poll alike.
        let workload = Workload::deploys(4, Duration::from_secs(60), &RunTimes::DEPLOYS, 3);
        let fixed = replay(&workload, &default_policy(), None, 0, 11);
        let adaptive = replay(&workload, &default_policy(), Some(&default_bounds()), 0, 11);
        assert_eq!(fixed, adaptive);
    }
}
