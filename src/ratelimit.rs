//! One global request-rate limit shared by every ticket: a reservation-based token bucket
//! (each caller reserves the next free slot, so waiters are served in order and nobody spins),
//! which throttling answers slow down for a while.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a throttling answer halves the rate.
pub const SLOWDOWN: Duration = Duration::from_secs(30);

/// The rate never drops below the configured rate divided by this.
pub const MAX_SLOWDOWN_FACTOR: f64 = 16.0;

/// A shared requests-per-second limit.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    next_free: Instant,
    slowdown: f64,
    slow_until: Instant,
}

impl RateLimiter {
    /// A limiter of `rate` requests per second that allows `burst` back-to-back requests after a
    /// quiet period.
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        let now = Instant::now();
        RateLimiter {
            rate: rate.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State { next_free: now, slowdown: 1.0, slow_until: now }),
        }
    }

    /// Waits for this caller's slot; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let now = Instant::now();
        let slot = self.reserve(now);
        if slot > now {
            tokio::time::sleep_until(slot).await;
            slot - now
        } else {
            Duration::ZERO
        }
    }

    /// Halves the rate (down to the floor) for [`SLOWDOWN`]; called on a throttling answer.
    pub fn slow_down(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("the limiter mutex is never poisoned: no code panics holding it");
        state.slowdown = if now < state.slow_until { (state.slowdown * 2.0).min(MAX_SLOWDOWN_FACTOR) } else { 2.0 };
        state.slow_until = now + SLOWDOWN;
    }

    /// The rate in force now, in requests per second.
    pub fn current_rate(&self) -> f64 {
        let state = self.state.lock().expect("the limiter mutex is never poisoned: no code panics holding it");
        self.rate / effective_slowdown(&state, Instant::now())
    }

    /// The configured rate, in requests per second.
    pub fn configured_rate(&self) -> f64 {
        self.rate
    }

    /// Whether a throttling answer slowed the limiter and the slowdown still holds.
    pub fn is_slowed(&self) -> bool {
        let state = self.state.lock().expect("the limiter mutex is never poisoned: no code panics holding it");
        effective_slowdown(&state, Instant::now()) > 1.0
    }

    /// GCRA: `next_free` is the theoretical arrival time of the next request; a caller may go
    /// up to `burst - 1` intervals ahead of it.
    fn reserve(&self, now: Instant) -> Instant {
        let mut state = self.state.lock().expect("the limiter mutex is never poisoned: no code panics holding it");
        let interval = Duration::from_secs_f64(effective_slowdown(&state, now) / self.rate);
        let tolerance = interval.mul_f64(self.burst - 1.0);
        let arrival = state.next_free.max(now);
        state.next_free = arrival + interval;
        arrival.checked_sub(tolerance).map_or(now, |slot| slot.max(now))
    }
}

fn effective_slowdown(state: &State, now: Instant) -> f64 {
    if now < state.slow_until { state.slowdown } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_slots_are_spaced_by_the_interval() {
        let limiter = RateLimiter::new(10.0, 3);
        let now = Instant::now();
        let slots: Vec<Instant> = (0..5).map(|_| limiter.reserve(now)).collect();
        assert!(slots[0] <= now && slots[1] <= now && slots[2] <= now);
        let spacing = slots[4] - slots[3];
        assert!((spacing.as_secs_f64() - 0.1).abs() < 1e-6, "{spacing:?}");
        assert!(slots[3] >= now);
    }

    #[test]
    fn throttling_halves_the_rate_and_compounds_to_a_floor() {
        let limiter = RateLimiter::new(16.0, 1);
        limiter.slow_down();
        assert!((limiter.current_rate() - 8.0).abs() < 1e-9);
        for _ in 0..10 {
            limiter.slow_down();
        }
        assert!((limiter.current_rate() - 1.0).abs() < 1e-9);
    }
}
