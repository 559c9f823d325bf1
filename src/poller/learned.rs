//! The learned schedule: where to poll a running ticket, given how long earlier tickets of the
//! same (workspace, namespace) took. Pure: the history, the elapsed time and the limits are
//! arguments, so plain `#[test]`s cover it; loading the history is `history.rs`'s job.
//!
//! Each finished ticket gives a [`RunSample`]: the run time lies between the last poll that saw it
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

use crate::domain::RunSample;

/// Most samples a schedule is learned from (the most recent ones).
pub const MAX_SAMPLES: usize = 64;

/// Fewest samples a schedule is learned from; with fewer, the fixed backoff applies.
pub const MIN_SAMPLES: usize = 5;

/// Samples longer than this many times the median are outliers: left out of the schedule.
pub const OUTLIER_FACTOR: f64 = 8.0;

/// Most instants of one schedule's grid.
const MAX_GRID: usize = 160;

/// Ratio between neighbouring grid instants, unless [`MAX_GRID`] forces a coarser one.
const GRID_RATIO: f64 = 1.025;

/// Narrowest smoothing (standard deviation in log-time) of a sample, so that a history of
/// identical run times still gives a distribution rather than one instant.
const MIN_BANDWIDTH: f64 = 0.06;

/// Widest smoothing (standard deviation in log-time).
const MAX_BANDWIDTH: f64 = 0.35;

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

/// Where the polls of a running ticket go, learned from [`RunSample`]s; see the module doc.
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
    pub fn learn(samples: &[RunSample], bounds: &Bounds) -> Option<LearnedSchedule> {
        // (estimate in seconds, the estimate's own scatter in log-time, see `censoring`).
        let mut seen: Vec<(f64, Option<f64>)> = samples
            .iter()
            .take(MAX_SAMPLES)
            .map(|sample| (sample.estimate().as_secs_f64(), censoring(sample)))
            .filter(|(secs, _)| secs.is_finite() && *secs > 0.0)
            .collect();
        if seen.len() < MIN_SAMPLES {
            return None;
        }
        seen.sort_by(|left, right| left.0.total_cmp(&right.0));
        let all = seen.len();
        let median = quantile(&seen.iter().map(|(secs, _)| *secs).collect::<Vec<_>>(), 0.5);
        seen.retain(|(secs, _)| *secs <= median * OUTLIER_FACTOR);
        let outliers = all - seen.len();
        let estimates: Vec<f64> = seen.iter().map(|(secs, _)| *secs).collect();
        let bracketed: Vec<f64> = seen.iter().filter_map(|(_, scatter)| *scatter).collect();
        let scatter = if bracketed.is_empty() { 0.0 } else { bracketed.iter().sum::<f64>() / bracketed.len() as f64 };
        let bandwidth = bandwidth(&estimates, scatter);

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
        // A microsecond of slack: a planned instant read back from a `Duration` (nanoseconds,
        // rounded down) is still that instant.
        let elapsed = elapsed.as_secs_f64() + 1e-6;
        let state = self.instants.partition_point(|instant| *instant <= elapsed).checked_sub(1)?;
        let next = usize::from(self.next[state]);
        if next == 0 {
            return None;
        }
        let number = self.path().iter().take_while(|index| **index < next).count() + 1;
        Some(LearnedPoll { after_created: Duration::from_secs_f64(self.instants[next]), number, of: self.path().len() })
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

    /// The last instant the schedule plans: past it, the fixed backoff applies.
    pub fn range_end(&self) -> Duration {
        Duration::from_secs_f64(self.instants.last().copied().unwrap_or_default())
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

    /// The plan for the smallest `lambda` whose expected lag is within the target (or the
    /// closest the shortest wait allows): the next
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
        #[expect(clippy::needless_range_loop, reason = "`to` indexes the instants, the prefix sums and the costs")]
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

/// How far a sample's estimate may lie from its true run time, as a variance in log-time: the
/// run time lies anywhere between the two polls that bracket it, so the midpoint is off by the
/// spread of a uniform draw over that interval (width squared over 12). `None` for a ticket never
/// seen running, whose interval starts at zero.
fn censoring(sample: &RunSample) -> Option<f64> {
    let (running, finish) = (sample.running_seen.as_secs_f64(), sample.finish_seen.as_secs_f64());
    (running > 0.0 && running < finish).then(|| (finish / running).ln().powi(2) / 12.0)
}

/// The smoothing of one sample in log-time: Silverman's rule of thumb on the log estimates, less
/// the `scatter` (mean variance, see [`censoring`]) the estimates already carry from the polls
/// that bracketed them, so that the smoothed distribution is not wider than the run times it
/// stands for; within [`MIN_BANDWIDTH`] and [`MAX_BANDWIDTH`].
fn bandwidth(sorted: &[f64], scatter: f64) -> f64 {
    let logs: Vec<f64> = sorted.iter().map(|secs| secs.ln()).collect();
    let count = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / count;
    let deviation = (logs.iter().map(|log| (log - mean).powi(2)).sum::<f64>() / count).sqrt();
    let spread = (quantile(&logs, 0.75) - quantile(&logs, 0.25)) / 1.34;
    let scale = if spread > 0.0 { deviation.min(spread) } else { deviation };
    let rule = 0.9 * scale * count.powf(-0.2);
    (rule * rule - scatter).max(0.0).sqrt().clamp(MIN_BANDWIDTH, MAX_BANDWIDTH)
}

/// Linear-interpolated quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds { target_lag: 0.1, min_interval: Duration::from_secs(1), max_interval: Duration::from_secs(30) }
    }

    fn seen(running: f64, finish: f64) -> RunSample {
        RunSample { running_seen: Duration::from_secs_f64(running), finish_seen: Duration::from_secs_f64(finish) }
    }

    /// Run times spread evenly (in log-time) over `low..high`, each seen exactly.
    fn history(count: usize, low: f64, high: f64) -> Vec<RunSample> {
        (0..count)
            .map(|index| {
                let run = low * (high / low).powf(index as f64 / (count - 1).max(1) as f64);
                seen(run * 0.95, run * 1.05)
            })
            .collect()
    }

    fn secs(durations: &[Duration]) -> Vec<f64> {
        durations.iter().map(Duration::as_secs_f64).collect()
    }

    #[test]
    fn nothing_is_learned_from_fewer_than_five_finished_tickets() {
        assert_eq!(LearnedSchedule::learn(&[], &bounds()), None);
        assert_eq!(LearnedSchedule::learn(&history(MIN_SAMPLES - 1, 10.0, 14.0), &bounds()), None);
        let unusable = vec![seen(0.0, 0.0); 20];
        assert_eq!(LearnedSchedule::learn(&unusable, &bounds()), None, "zero run times teach nothing");
        assert!(LearnedSchedule::learn(&history(MIN_SAMPLES, 10.0, 14.0), &bounds()).is_some());
    }

    #[test]
    fn polls_gather_where_tickets_usually_finish() {
        let schedule = LearnedSchedule::learn(&history(40, 10.0, 14.0), &bounds()).unwrap();
        let planned = secs(&schedule.planned());
        assert_eq!(planned[0], 0.0, "the first poll is at enqueue");
        let inside = planned.iter().filter(|at| (9.0..=15.5).contains(*at)).count();
        assert!(inside * 2 > planned.len(), "most polls fall where tickets finish: {planned:?}");
        assert!(planned[1] > 5.0, "nothing finishes early, so nothing is asked early: {planned:?}");
        let (polls, lag) = schedule.expectation();
        assert!(polls < 6.0 && lag <= 0.1 + 1e-9, "{polls} polls, lag {lag}");
        assert_eq!(schedule.samples(), 40);
        assert!((schedule.median().as_secs_f64() - 11.8).abs() < 0.3, "{:?}", schedule.median());
    }

    #[test]
    fn polls_keep_the_shortest_and_the_longest_wait() {
        for (low, high) in [(0.2, 0.5), (10.0, 14.0), (4.0, 400.0)] {
            let schedule = LearnedSchedule::learn(&history(30, low, high), &bounds()).unwrap();
            let planned = secs(&schedule.planned());
            for pair in planned.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(gap <= 30.0 + 1e-9, "{low}..{high}: gap {gap} in {planned:?}");
                let last = pair[1] == *planned.last().unwrap();
                assert!(gap >= 1.0 - 1e-9 || last, "{low}..{high}: gap {gap} in {planned:?}");
            }
        }
    }

    #[test]
    fn the_schedule_ends_past_the_longest_run_and_answers_none_beyond() {
        let schedule = LearnedSchedule::learn(&history(30, 10.0, 14.0), &bounds()).unwrap();
        let end = schedule.range_end();
        assert!(end >= Duration::from_secs_f64(14.0), "{end:?}");
        assert_eq!(schedule.next_after(end), None);
        assert_eq!(schedule.next_after(end + Duration::from_secs(60)), None);
        let first = schedule.next_after(Duration::ZERO).unwrap();
        assert_eq!((first.number, first.of), (2, schedule.planned().len()));
        assert_eq!(first.after_created, schedule.planned()[1]);
    }

    #[test]
    fn a_late_poll_continues_with_the_next_planned_instant() {
        let schedule = LearnedSchedule::learn(&history(30, 10.0, 14.0), &bounds()).unwrap();
        let planned = schedule.planned();
        // A poll that came late, between two planned instants, is followed by the next one.
        let on_time = schedule.next_after(planned[2]).unwrap();
        assert!(on_time.after_created.abs_diff(planned[3]) < Duration::from_millis(1), "{on_time:?}");
        assert_eq!(on_time.number, 4);
        let late = (planned[2] + planned[3]) / 2;
        let next = schedule.next_after(late).unwrap();
        assert!(next.after_created > late, "{next:?} after {late:?}");
        assert!(next.after_created <= schedule.range_end(), "{next:?} vs {planned:?}");
    }

    #[test]
    fn a_few_outliers_do_not_move_the_polls_where_tickets_usually_finish() {
        let usual = history(40, 10.0, 14.0);
        let mut with_outliers = usual.clone();
        with_outliers.extend([seen(590.0, 600.0), seen(3000.0, 3600.0), seen(0.0, 0.05)]);
        let plain = LearnedSchedule::learn(&usual, &bounds()).unwrap();
        let robust = LearnedSchedule::learn(&with_outliers, &bounds()).unwrap();
        assert_eq!(robust.outliers(), 2, "the two stuck deploys are left out");
        assert!(robust.range_end() < Duration::from_secs(60), "{:?}", robust.range_end());
        let early = |schedule: &LearnedSchedule| -> Vec<f64> {
            secs(&schedule.planned()).into_iter().filter(|at| *at <= 14.0).collect()
        };
        let (plain, robust) = (early(&plain), early(&robust));
        assert!(plain.len().abs_diff(robust.len()) <= 1, "{plain:?} vs {robust:?}");
        for at in &robust[1..] {
            let nearest = plain.iter().map(|other| (other - at).abs()).fold(f64::INFINITY, f64::min);
            assert!(nearest <= 0.1 * at, "{at} has no close poll in {plain:?}");
        }
    }

    #[test]
    fn the_same_finished_tickets_give_the_same_schedule_in_any_order() {
        let samples = history(50, 4.0, 40.0);
        let mut reversed = samples.clone();
        reversed.reverse();
        let first = LearnedSchedule::learn(&samples, &bounds()).unwrap();
        assert_eq!(first, LearnedSchedule::learn(&samples, &bounds()).unwrap());
        assert_eq!(first, LearnedSchedule::learn(&reversed, &bounds()).unwrap());
    }

    #[test]
    fn only_the_most_recent_samples_count() {
        let mut samples = history(MAX_SAMPLES, 10.0, 14.0);
        samples.extend(history(100, 100.0, 140.0));
        let schedule = LearnedSchedule::learn(&samples, &bounds()).unwrap();
        assert_eq!(schedule.samples(), MAX_SAMPLES);
        assert!(schedule.range_end() < Duration::from_secs(30), "older samples were ignored");
    }

    #[test]
    fn a_lower_target_lag_costs_more_polls_and_meets_its_aim() {
        let samples = history(40, 4.0, 40.0);
        let mut previous = f64::INFINITY;
        for target_lag in [0.08, 0.1, 0.2, 0.4] {
            let schedule = LearnedSchedule::learn(&samples, &Bounds { target_lag, ..bounds() }).unwrap();
            let (polls, lag) = schedule.expectation();
            assert!(lag <= target_lag + 1e-9, "aim {target_lag}: expected lag {lag}");
            assert!(polls < previous, "aim {target_lag}: {polls} polls, not fewer than {previous}");
            previous = polls;
        }
    }

    #[test]
    fn a_run_time_is_estimated_from_the_middle_of_its_interval() {
        assert_eq!(seen(10.0, 12.0).estimate(), Duration::from_secs(11));
        assert_eq!(seen(0.0, 12.0).estimate(), Duration::from_secs(12), "never seen running");
        assert_eq!(seen(13.0, 12.0).estimate(), Duration::from_secs(12), "inconsistent: the finish counts");
    }
}
