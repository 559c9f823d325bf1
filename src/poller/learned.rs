//! The learned schedule: where to poll a running ticket, given how long earlier tickets of the
//! same (workspace, namespace) took. Pure: the history, the elapsed time and the limits are
//! arguments, so plain `#[test]`s cover it; loading the history is `history.rs`'s job.
//!
//! Each finished ticket gives a [`Sample`]: the run time lies between the last poll that saw it
//! running and the poll that saw its final status (both measured from `created_at`). The samples
//! are smoothed into a distribution over a logarithmic grid of instants, and a dynamic programme
//! chooses, from every grid instant, the next one to poll at: it minimises the expected number of
//! polls plus `lambda` times the expected detection lag as a fraction of the run time, with
//! `lambda` searched so that the expected lag is `target_lag`. Polls are therefore dense where
//! tickets usually finish and sparse elsewhere. Beyond the learned range ([`LearnedSchedule::
//! next_after`] answers `None`) the caller falls back to the fixed backoff.
//!
//! Bounded: at most [`MAX_SAMPLES`] samples and [`MAX_GRID`] grid instants per schedule.
//! Robust: samples beyond [`OUTLIER_FACTOR`] times the median are left to the fallback, so one
//! stuck deploy neither stretches the grid nor moves the early polls.

use std::time::Duration;

/// Most samples a schedule is learned from (the most recent ones).
pub const MAX_SAMPLES: usize = 64;

/// Fewest samples a schedule is learned from; with fewer, the fixed backoff applies.
pub const MIN_SAMPLES: usize = 5;

/// Samples longer than this many times the median are outliers: left out of the schedule.
pub const OUTLIER_FACTOR: f64 = 8.0;

/// Most instants of one schedule's grid.
pub const MAX_GRID: usize = 160;

/// Ratio between neighbouring grid instants, unless [`MAX_GRID`] forces a coarser one.
const GRID_RATIO: f64 = 1.025;

/// Narrowest smoothing (standard deviation in log-time) of a sample, so that a history of
/// identical run times still gives a distribution rather than one instant.
const MIN_BANDWIDTH: f64 = 0.06;

/// Widest smoothing (standard deviation in log-time).
const MAX_BANDWIDTH: f64 = 0.35;

/// What one finished ticket says about run time, both measured from its `created_at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The last poll that saw it still running (zero if none did).
    pub running_seen: Duration,
    /// The poll that saw its final status.
    pub finish_seen: Duration,
}

impl Sample {
    /// The estimate of the true run time: the middle of the interval in which it finished.
    pub fn estimate(&self) -> Duration {
        if self.running_seen.is_zero() || self.running_seen >= self.finish_seen {
            return self.finish_seen;
        }
        (self.running_seen + self.finish_seen) / 2
    }
}

/// The limits a learned schedule keeps to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// Aimed-at expected detection lag, as a fraction of the run time (`poll.target_lag`).
    pub target_lag: f64,
    /// Shortest wait between two polls.
    pub min_interval: Duration,
    /// Longest wait between two polls (`poll.max_interval`).
    pub max_interval: Duration,
}

/// Where the polls of a running ticket go, learned from [`Sample`]s; see the module doc.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedSchedule {
    /// Instants after `created_at`, in seconds, increasing; `instants[0]` is 0 (the first poll).
    instants: Vec<f64>,
    /// From instant `i`, the index of the next instant to poll at (`0` past the last).
    next: Vec<u16>,
    /// Samples used (outliers excluded).
    samples: usize,
    /// Outliers left out.
    outliers: usize,
    /// Median run-time estimate of the samples used.
    median: Duration,
    /// Expected polls of a ticket, the first one included.
    expected_polls: f64,
    /// Expected detection lag as a fraction of the run time.
    expected_lag: f64,
}

/// The next poll a learned schedule places.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedPoll {
    /// When, measured from `created_at`.
    pub after_created: Duration,
    /// Which poll of the schedule it is (the first poll, at enqueue, is 1).
    pub number: usize,
    /// How many polls the schedule places in all.
    pub of: usize,
}

impl LearnedSchedule {
    /// Learns a schedule from `samples` (any order; only the first [`MAX_SAMPLES`] are used).
    /// `None` with fewer than [`MIN_SAMPLES`] usable samples.
    pub fn learn(samples: &[Sample], bounds: &Bounds) -> Option<LearnedSchedule> {
        let mut estimates: Vec<f64> = samples
            .iter()
            .take(MAX_SAMPLES)
            .map(|sample| sample.estimate().as_secs_f64())
            .filter(|secs| secs.is_finite() && *secs > 0.0)
            .collect();
        if estimates.len() < MIN_SAMPLES {
            return None;
        }
        estimates.sort_by(f64::total_cmp);
        let median = quantile(&estimates, 0.5);
        let all = estimates.len();
        estimates.retain(|secs| *secs <= median * OUTLIER_FACTOR);
        let outliers = all - estimates.len();
        let bandwidth = bandwidth(&estimates);

        // The grid: instant 0 (the first poll), then geometric instants covering every smoothed
        // sample, starting no earlier than the shortest wait.
        let floor = bounds.min_interval.as_secs_f64().max(0.001);
        let low = (estimates[0] * (-1.5 * bandwidth).exp()).max(floor);
        let high = (estimates[estimates.len() - 1] * (1.5 * bandwidth).exp()).max(low * GRID_RATIO);
        let steps = ((high / low).ln() / GRID_RATIO.ln()).ceil().clamp(1.0, (MAX_GRID - 2) as f64);
        let ratio = (high / low).powf(1.0 / steps);
        let mut instants = vec![0.0];
        instants.extend((0..=steps as usize).map(|step| low * ratio.powi(step as i32)));

        // The share of run times that end in the cell just before each instant, from the samples
        // smoothed in log-time; mass below the grid ends before the first cell and counts in it.
        let cells = instants.len();
        let mut mass = vec![0.0; cells];
        for estimate in &estimates {
            let centre = estimate.ln();
            let weights: Vec<f64> = (1..cells)
                .map(|cell| {
                    let distance = (instants[cell].ln() - 0.5 * ratio.ln() - centre) / bandwidth;
                    (-0.5 * distance * distance).exp()
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                for (cell, weight) in weights.iter().enumerate() {
                    mass[cell + 1] += weight / total / estimates.len() as f64;
                }
            }
        }
        let table = Table::new(&instants, &mass, ratio);
        let (next, expected_polls, expected_lag) = table.fit(bounds);
        Some(LearnedSchedule {
            instants,
            next,
            samples: estimates.len(),
            outliers,
            median: Duration::from_secs_f64(median),
            expected_polls,
            expected_lag,
        })
    }

    /// The next poll for a ticket still running `elapsed` after its `created_at`: the planned
    /// instant after the last one already passed. `None` past the learned range.
    pub fn next_after(&self, elapsed: Duration) -> Option<LearnedPoll> {
        let elapsed = elapsed.as_secs_f64();
        let state = self.instants.partition_point(|instant| *instant <= elapsed).checked_sub(1)?;
        let next = usize::from(self.next[state]);
        if next == 0 {
            return None;
        }
        let number = self.path().iter().take_while(|index| **index < next).count() + 1;
        Some(LearnedPoll {
            after_created: Duration::from_secs_f64(self.instants[next]),
            number,
            of: self.path().len(),
        })
    }

    /// The planned instants of a ticket polled exactly on time, the first poll (0) included.
    pub fn planned(&self) -> Vec<Duration> {
        self.path().into_iter().map(|index| Duration::from_secs_f64(self.instants[index])).collect()
    }

    /// Samples the schedule was learned from (outliers excluded).
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Samples left out as outliers.
    pub fn outliers(&self) -> usize {
        self.outliers
    }

    /// The median run time of the samples.
    pub fn median(&self) -> Duration {
        self.median
    }

    /// Expected polls per ticket (the first included) and expected lag (fraction of run time),
    /// by the learned distribution.
    pub fn expectation(&self) -> (f64, f64) {
        (self.expected_polls, self.expected_lag)
    }

    fn path(&self) -> Vec<usize> {
        let mut path = vec![0];
        let mut at = 0;
        while self.next[at] != 0 {
            at = usize::from(self.next[at]);
            path.push(at);
        }
        path
    }
}

/// Prefix sums over the grid, so the lag of any interval between two polls costs O(1).
struct Table<'a> {
    instants: &'a [f64],
    /// `survival[i]`: share of run times beyond instant `i`.
    survival: Vec<f64>,
    /// Prefix sums of mass and of mass / run time.
    mass_sum: Vec<f64>,
    inverse_sum: Vec<f64>,
}

impl<'a> Table<'a> {
    fn new(instants: &'a [f64], mass: &[f64], ratio: f64) -> Table<'a> {
        let cells = instants.len();
        let mut mass_sum = vec![0.0; cells];
        let mut inverse_sum = vec![0.0; cells];
        for cell in 1..cells {
            // A run time in cell `cell` is taken at the cell's geometric centre.
            let centre = instants[cell] / ratio.sqrt();
            mass_sum[cell] = mass_sum[cell - 1] + mass[cell];
            inverse_sum[cell] = inverse_sum[cell - 1] + mass[cell] / centre.max(1e-9);
        }
        let total = mass_sum[cells - 1];
        let survival = mass_sum.iter().map(|sum| (total - sum).max(0.0)).collect();
        Table { instants, survival, mass_sum, inverse_sum }
    }

    /// Expected lag (fraction of run time, weighted by share) of run times ending between a poll
    /// at instant `from` and the next at instant `to`.
    fn lag(&self, from: usize, to: usize) -> f64 {
        let caught_inverse = self.inverse_sum[to] - self.inverse_sum[from];
        let caught = self.mass_sum[to] - self.mass_sum[from];
        (self.instants[to] * caught_inverse - caught).max(0.0)
    }

    /// The plan for the smallest `lambda` whose expected lag is within the target: the next
    /// instant from each instant, the expected polls and the expected lag.
    fn fit(&self, bounds: &Bounds) -> (Vec<u16>, f64, f64) {
        let target = bounds.target_lag.max(1e-4);
        let (mut low, mut high) = (1e-3_f64, 1e6_f64);
        let mut best = self.plan(high, bounds);
        for _ in 0..40 {
            let middle = (low * high).sqrt();
            let plan = self.plan(middle, bounds);
            if plan.2 <= target {
                high = middle;
                best = plan;
            } else {
                low = middle;
            }
            if high / low < 1.02 {
                break;
            }
        }
        best
    }

    /// The optimal plan for one `lambda` (backward induction over the grid).
    fn plan(&self, lambda: f64, bounds: &Bounds) -> (Vec<u16>, f64, f64) {
        let cells = self.instants.len();
        let last = cells - 1;
        let min_gap = bounds.min_interval.as_secs_f64();
        let max_gap = bounds.max_interval.as_secs_f64().max(min_gap);
        let mut cost = vec![0.0; cells];
        let mut next = vec![0u16; cells];
        for from in (0..last).rev() {
            let mut best = (f64::INFINITY, last);
            for to in from + 1..cells {
                let gap = self.instants[to] - self.instants[from];
                if gap < min_gap && to != last {
                    continue;
                }
                if gap > max_gap && to != from + 1 {
                    break;
                }
                let total = self.survival[from] + lambda * self.lag(from, to) + cost[to];
                if total < best.0 {
                    best = (total, to);
                }
            }
            cost[from] = best.0;
            next[from] = u16::try_from(best.1).unwrap_or(u16::MAX);
        }
        let (mut polls, mut lag, mut at) = (1.0, 0.0, 0);
        while at != last {
            let to = usize::from(next[at]);
            polls += self.survival[at];
            lag += self.lag(at, to);
            at = to;
        }
        (next, polls, lag)
    }
}

/// The smoothing of one sample in log-time: Silverman's rule of thumb on the log estimates,
/// within [`MIN_BANDWIDTH`] and [`MAX_BANDWIDTH`].
fn bandwidth(sorted: &[f64]) -> f64 {
    let logs: Vec<f64> = sorted.iter().map(|secs| secs.ln()).collect();
    let count = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / count;
    let deviation = (logs.iter().map(|log| (log - mean).powi(2)).sum::<f64>() / count).sqrt();
    let spread = (quantile(&logs, 0.75) - quantile(&logs, 0.25)) / 1.34;
    let scale = if spread > 0.0 { deviation.min(spread) } else { deviation };
    (0.9 * scale * count.powf(-0.2)).clamp(MIN_BANDWIDTH, MAX_BANDWIDTH)
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}
