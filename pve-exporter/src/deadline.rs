//! The time by which a scrape's answer must go out, and the back-off of what is known stuck.
//!
//! - [`Deadline`]: every wait of a collection ends by it. Prometheus says its scrape timeout in
//!   the `X-Prometheus-Scrape-Timeout-Seconds` header; the deadline is that minus a margin for
//!   the answer's way back (`--scrape-timeout-offset`), else `--scrape-timeout`.
//! - The deadline of the collection a thread works for is also kept in a thread-local
//!   ([`enter`], [`current`]): the timed gates ([`crate::host::BlockingGate`]), command runs and
//!   API requests cap their own limits by it without every reader passing it down. A thread
//!   with no deadline entered (start-up, tests) waits its configured limits only.
//! - [`Backoff`]: something that timed out (a VM's monitor, a hung mount behind a gate, an API
//!   node) is not waited on by the following scrapes; it is tried again at growing intervals
//!   (off the scrape path where the caller can, see the callers) and rejoins when it answers.

use std::{
    cell::Cell,
    time::{Duration, Instant},
};

/// The least time a scrape is given, however small the header's timeout less the offset.
const MIN_BUDGET: Duration = Duration::from_millis(100);
/// Header values above this are taken as this: a scrape that would wait minutes helps nobody.
const MAX_BUDGET: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn at(when: Instant) -> Self {
        Self(when)
    }

    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn instant(self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn left(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn passed(self) -> bool {
        Instant::now() >= self.0
    }

    /// `limit`, shortened to the time left.
    pub fn cap(self, limit: Duration) -> Duration {
        limit.min(self.left())
    }

    /// The earlier of the deadline and `now + limit`.
    pub fn cap_instant(self, limit: Duration) -> Instant {
        self.0.min(Instant::now() + limit)
    }
}

/// A scrape's time budget: the header's timeout (seconds, as Prometheus sends it) less
/// `offset`, else `default`. At least [`MIN_BUDGET`], at most [`MAX_BUDGET`].
pub fn scrape_budget(header: Option<&str>, default: Duration, offset: Duration) -> Duration {
    let from_header = header
        .and_then(|h| h.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_BUDGET.as_secs_f64())).saturating_sub(offset));
    from_header.unwrap_or(default).clamp(MIN_BUDGET, MAX_BUDGET)
}

thread_local! {
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// The deadline of the collection this thread works for, if any.
pub fn current() -> Option<Deadline> {
    CURRENT.with(Cell::get)
}

/// `limit` capped by this thread's collection deadline.
pub fn cap(limit: Duration) -> Duration {
    current().map_or(limit, |d| d.cap(limit))
}

/// Work for the collection of `deadline` on this thread until the guard drops.
pub fn enter(deadline: Deadline) -> Entered {
    Entered(CURRENT.with(|c| c.replace(Some(deadline))))
}

/// Restores the thread's previous deadline.
pub struct Entered(Option<Deadline>);

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// First wait after a timeout; it doubles with each further one, up to [`BACKOFF_MAX`].
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One thing's back-off: how often it timed out in a row and when it may be tried again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

/// What the caller may do with a thing under [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not stuck: use it.
    Go,
    /// Stuck, and its next try is not due: do not wait on it (the time left until the try).
    Wait(Duration),
    /// Stuck, and a try is due: try it again (off the scrape path where the caller can).
    Retry,
}

impl Backoff {
    pub fn verdict(&self, now: Instant) -> Verdict {
        match self.retry_at {
            None => Verdict::Go,
            Some(t) if now >= t => Verdict::Retry,
            Some(t) => Verdict::Wait(t - now),
        }
    }

    pub fn stuck(&self) -> bool {
        self.retry_at.is_some()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// It timed out (again): the next try waits twice as long as the last, at most [`BACKOFF_MAX`].
    pub fn failed(&mut self, now: Instant) {
        let wait = BACKOFF_FIRST.saturating_mul(1u32 << self.failures.min(16)).min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
    }

    /// It answered: it rejoins at once.
    pub fn recovered(&mut self) {
        *self = Self::default();
    }

    /// A try was started: until it ends, the thing is not tried again.
    pub fn trying(&mut self, now: Instant, limit: Duration) {
        self.retry_at = Some(now + limit.max(BACKOFF_FIRST));
    }

    /// Why a stuck thing is skipped, for the collector's error.
    pub fn describe(&self, now: Instant) -> String {
        match self.verdict(now) {
            Verdict::Go => "not stuck".into(),
            Verdict::Wait(d) => {
                format!("timed out {} time(s) in a row: not waited on, tried again in {:.0?}", self.failures, d)
            }
            Verdict::Retry => format!("timed out {} time(s) in a row: being tried again", self.failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_from_the_header() {
        let (d, o) = (Duration::from_secs(5), Duration::from_millis(500));
        assert_eq!(scrape_budget(Some("10"), d, o), Duration::from_millis(9500));
        assert_eq!(scrape_budget(Some("2.5"), d, o), Duration::from_secs(2));
        assert_eq!(scrape_budget(None, d, o), d);
        for bad in ["", "x", "-1", "0", "NaN", "inf"] {
            assert_eq!(scrape_budget(Some(bad), d, o), d, "{bad:?}");
        }
        assert_eq!(scrape_budget(Some("0.2"), d, o), MIN_BUDGET);
        assert_eq!(scrape_budget(Some("1e9"), d, o), MAX_BUDGET - o);
    }

    #[test]
    fn deadline_caps() {
        let d = Deadline::after(Duration::from_secs(3600));
        assert!(d.cap(Duration::from_secs(1)) == Duration::from_secs(1));
        assert!(d.cap(Duration::from_secs(7200)) <= Duration::from_secs(3600));
        let past = Deadline::at(Instant::now());
        assert!(past.passed());
        assert_eq!(past.cap(Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn thread_deadline_nests_and_restores() {
        assert_eq!(current(), None);
        assert_eq!(cap(Duration::from_secs(9)), Duration::from_secs(9));
        let d = Deadline::after(Duration::from_secs(1));
        {
            let _g = enter(d);
            assert_eq!(current(), Some(d));
            assert!(cap(Duration::from_secs(9)) <= Duration::from_secs(1));
            std::thread::spawn(|| assert_eq!(current(), None, "per thread")).join().unwrap();
        }
        assert_eq!(current(), None);
    }

    #[test]
    fn backoff_grows_and_recovers() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.verdict(t0), Verdict::Go);
        b.failed(t0);
        assert_eq!(b.verdict(t0), Verdict::Wait(BACKOFF_FIRST));
        assert_eq!(b.verdict(t0 + BACKOFF_FIRST), Verdict::Retry);
        b.failed(t0);
        assert_eq!(b.verdict(t0), Verdict::Wait(BACKOFF_FIRST * 2));
        for _ in 0..40 {
            b.failed(t0);
        }
        assert_eq!(b.verdict(t0), Verdict::Wait(BACKOFF_MAX), "bounded");
        assert!(b.describe(t0).contains("42 time(s)"));
        b.recovered();
        assert_eq!(b.verdict(t0), Verdict::Go);
        assert!(!b.stuck());
    }
}
