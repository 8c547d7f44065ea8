//! The one retry policy: exponential backoff with full jitter, a floor and a cap, from
//! `backon`. Every retry logs what is retried, why, and when the next attempt comes.
//!
//! Two shapes of use: [`Policy::until_ok`] runs an operation until it succeeds (or the caller is
//! cancelled); [`Backoff`] hands out the delays for loops that keep state between attempts (a
//! workflow step that must be redone after a failure, with the backoff reset on success).

use std::{fmt::Display, future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// How to retry: delays start at `min`, double per failure up to `max`, each with random jitter,
/// for at most `attempts` attempts (`None`: until success or cancellation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts after the first before giving up; `None` for no limit.
    pub attempts: Option<usize>,
}

impl Policy {
    /// Retries forever, from `min` up to `max`.
    pub const fn forever(min: Duration, max: Duration) -> Self {
        Self { min, max, attempts: None }
    }

    /// Retries at most `attempts` times, from `min` up to `max`.
    pub const fn times(attempts: usize, min: Duration, max: Duration) -> Self {
        Self { min, max, attempts: Some(attempts) }
    }

    fn builder(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::new().with_jitter().with_min_delay(self.min).with_max_delay(self.max);
        match self.attempts {
            Some(n) => b.with_max_times(n),
            None => b.without_max_times(),
        }
    }

    /// The delays of this policy, for a loop that keeps its own state between attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff { policy: *self, inner: self.builder().build() }
    }

    /// Runs `op` until it succeeds, logging `what` and the error on every retry. `None` when
    /// `cancel` fired first or the attempts ran out (the last error is logged).
    pub async fn until_ok<T, E, F, Fut>(&self, what: &str, cancel: &CancellationToken, op: F) -> Option<T>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let run = op
            .retry(self.builder())
            .sleep(tokio::time::sleep)
            .notify(|error: &E, next: Duration| tracing::warn!(%error, retry_in = ?next, "{what} failed; retrying"));
        tokio::select! {
            _ = cancel.cancelled() => None,
            result = run => match result {
                Ok(v) => Some(v),
                Err(error) => {
                    tracing::error!(%error, attempts = ?self.attempts, "{what} failed; giving up");
                    None
                }
            },
        }
    }

    /// Runs `op` again while it fails with an error that `when` accepts, as often as this
    /// policy allows, logging `what` and the error on every retry; otherwise its result (an
    /// error `when` refuses, or the last one, is returned as it is).
    pub async fn while_err<T, E, W, F, Fut>(&self, what: &str, when: W, op: F) -> Result<T, E>
    where
        E: Display,
        W: FnMut(&E) -> bool,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        op.retry(self.builder())
            .sleep(tokio::time::sleep)
            .when(when)
            .notify(|error: &E, next: Duration| tracing::warn!(%error, retry_in = ?next, "{what} failed; retrying"))
            .await
    }
}

/// Delays of a [`Policy`], handed out one failure at a time.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    inner: backon::ExponentialBackoff,
}

impl Backoff {
    /// The delay before the next attempt, logged with `what` and the error that caused it;
    /// `None` when the attempts ran out.
    pub fn next_after(&mut self, what: &str, error: &dyn Display) -> Option<Duration> {
        let next = self.inner.next();
        match next {
            Some(d) => tracing::warn!(%error, retry_in = ?d, "{what} failed; retrying"),
            None => tracing::error!(%error, "{what} failed; giving up"),
        }
        next
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        *self = self.policy.backoff();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_until_ok_with_capped_jittered_delays() {
        let calls = AtomicU32::new(0);
        let policy = Policy::forever(Duration::from_millis(100), Duration::from_secs(1));
        let started = tokio::time::Instant::now();
        let got = policy
            .until_ok("test op", &CancellationToken::new(), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 5 { Err("not yet") } else { Ok(7) }
            })
            .await;
        assert_eq!(got, Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        // Five delays, each at most the cap plus its jitter (at most the delay again).
        assert!(started.elapsed() <= Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(started.elapsed() >= Duration::from_millis(100));
        let mut b = policy.backoff();
        for _ in 0..20 {
            let d = b.next_after("x", &"e").unwrap();
            assert!(d <= Duration::from_secs(2), "capped: {d:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_its_attempts_or_when_cancelled() {
        let calls = AtomicU32::new(0);
        let policy = Policy::times(2, Duration::from_millis(10), Duration::from_millis(20));
        let got: Option<()> = policy
            .until_ok("doomed", &CancellationToken::new(), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("no")
            })
            .await;
        assert_eq!((got, calls.load(Ordering::SeqCst)), (None, 3));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let got: Option<()> = Policy::forever(Duration::from_secs(1), Duration::from_secs(1))
            .until_ok("cancelled", &cancel, || async { Err::<(), _>("no") })
            .await;
        assert_eq!(got, None);
        // Only the errors it is told to retry, and those no more often than the policy says.
        let policy = Policy::times(3, Duration::from_millis(1), Duration::from_millis(2));
        let calls = AtomicU32::new(0);
        let got = policy
            .while_err(
                "busy",
                |e: &&str| *e == "busy",
                || async { if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err("busy") } else { Ok(7) } },
            )
            .await;
        assert_eq!((got, calls.swap(0, Ordering::SeqCst)), (Ok(7), 3));
        let got: Result<(), _> = policy.while_err("busy", |e: &&str| *e == "busy", || async { Err("busy") }).await;
        assert_eq!(got, Err("busy"));
        let got: Result<(), _> = policy
            .while_err(
                "busy",
                |e: &&str| *e == "busy",
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err("broken")
                },
            )
            .await;
        assert_eq!((got, calls.load(Ordering::SeqCst)), (Err("broken"), 1), "another error at once");
        let mut b = Policy::times(1, Duration::from_millis(1), Duration::from_millis(1)).backoff();
        assert!(b.next_after("x", &"e").is_some());
        assert!(b.next_after("x", &"e").is_none());
        b.reset();
        assert!(b.next_after("x", &"e").is_some());
    }
}
