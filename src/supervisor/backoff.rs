//! Restart delays for crashed workers.
//!
//! Pure arithmetic over durations the caller measures, so the policy can be
//! tested without clocks or processes. The default is PM2's exponential
//! policy, which is known to keep a crash-looping worker from forking
//! without end while bringing a one-off crash back almost at once.

use std::time::Duration;

/// When to start a worker again after it died.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Delay after the first crash (or the first after a reset).
    initial: Duration,
    /// Each further crash multiplies the previous delay by this.
    factor: f64,
    /// The delay never grows past this.
    max: Duration,
    /// A worker that ran this long before dying was healthy: its crash
    /// starts the sequence again from `initial`.
    reset_after: Duration,
    /// The delay handed out last; None until the first crash or after a reset.
    last: Option<Duration>,
}

impl Default for Backoff {
    /// 100 ms, ×1.5 per crash, at most 15 s, reset after 30 s of healthy running.
    fn default() -> Self {
        Backoff::new(
            Duration::from_millis(100),
            1.5,
            Duration::from_secs(15),
            Duration::from_secs(30),
        )
    }
}

impl Backoff {
    pub fn new(initial: Duration, factor: f64, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            factor,
            max,
            reset_after,
            last: None,
        }
    }

    /// A worker died after running for `ran_for`: how long to wait before
    /// starting its replacement.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.last = None;
        }
        let next = match self.last {
            None => self.initial,
            Some(prev) => prev.mul_f64(self.factor),
        }
        .min(self.max);
        self.last = Some(next);
        next
    }

    /// Forget past crashes.
    pub fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_millis(10);

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn grows_by_half_from_100ms() {
        let mut b = Backoff::default();
        let got: Vec<u128> = (0..6).map(|_| ms(b.on_exit(SHORT))).collect();
        assert_eq!(got, [100, 150, 225, 337, 506, 759]);
    }

    #[test]
    fn caps_at_15s() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..40).map(|_| b.on_exit(SHORT)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(15)));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(15));
        // Monotonic until the cap.
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn thirty_healthy_seconds_reset_the_sequence() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.on_exit(SHORT);
        }
        assert!(b.on_exit(Duration::from_secs(29)) > Duration::from_secs(1));
        assert_eq!(
            b.on_exit(Duration::from_secs(30)),
            Duration::from_millis(100)
        );
        assert_eq!(b.on_exit(SHORT), Duration::from_millis(150));
    }

    #[test]
    fn explicit_reset() {
        let mut b = Backoff::default();
        b.on_exit(SHORT);
        b.on_exit(SHORT);
        b.reset();
        assert_eq!(b.on_exit(SHORT), Duration::from_millis(100));
    }

    #[test]
    fn a_six_second_crash_loop_forks_a_handful_of_times() {
        // A worker that dies instantly, restarted for 6 s: count restarts.
        let mut b = Backoff::default();
        let (mut t, mut forks) = (Duration::ZERO, 0);
        while t < Duration::from_secs(6) {
            t += b.on_exit(Duration::ZERO);
            forks += 1;
        }
        assert!(forks <= 12, "{forks} forks");
    }
}
