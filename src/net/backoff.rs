//! Exponential backoff with jitter for redials.
//!
//! Delays double from `BASE` up to `MAX`; each is drawn uniformly from the upper half
//! of its step so that nodes restarted together do not redial in lockstep. A
//! connection that stayed up for [`RESET_AFTER`] resets the sequence.

use std::time::Duration;

pub(super) const BASE: Duration = Duration::from_millis(500);
pub(super) const MAX: Duration = Duration::from_secs(30);
pub(super) const RESET_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(super) struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub(super) fn new(seed: u64) -> Self {
        Backoff { attempt: 0, rng: seed | 1 }
    }

    /// The delay before the next attempt; each call moves one step up.
    pub(super) fn next_delay(&mut self) -> Duration {
        let step = BASE.saturating_mul(1u32 << self.attempt.min(16)).min(MAX);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let jitter_ms = self.random() % (half.as_millis() as u64 + 1);
        half + Duration::from_millis(jitter_ms)
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter needs spread, not unpredictability.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(99);
        let mut prev_cap = Duration::ZERO;
        for i in 0..20u32 {
            let d = b.next_delay();
            let cap = BASE.saturating_mul(1 << i.min(16)).min(MAX);
            assert!(d >= cap / 2 && d <= cap, "attempt {i}: {d:?} outside [{:?}, {cap:?}]", cap / 2);
            assert!(cap >= prev_cap);
            prev_cap = cap;
        }
        assert!(b.next_delay() >= MAX / 2);
        b.reset();
        assert!(b.next_delay() <= BASE);
    }

    #[test]
    fn two_nodes_do_not_redial_in_lockstep() {
        let mut a = Backoff::new(1);
        let mut b = Backoff::new(2);
        let same = (0..10).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 3);
    }
}
