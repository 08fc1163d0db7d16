//! A source that calls an async closure for the full set on an interval.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{Discover, Endpoint, Update};
use crate::BoxError;
use crate::rng::Rng;

/// The first retry delay after a failed call.
const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);

/// A source polling a closure. Made by [`polling`].
pub struct Polling<F> {
    fetch: F,
    interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    next_call: Option<Instant>,
    failures: u32,
    last: Option<Vec<Endpoint>>,
    rng: Rng,
}

/// Calls `fetch` for the complete endpoint set now and then every `interval`.
///
/// A set equal to the previous one is not republished. A failed call is reported (the balancer
/// logs it, counts it and keeps the last good set) and retried after a jittered exponential
/// backoff: 100 ms doubling up to `interval`, each delay drawn uniformly from its upper half, as
/// Linkerd's discovery client backs off. Change the bounds with [`Polling::backoff`].
///
/// ```
/// use std::time::Duration;
/// use proxyless::discover::{Endpoint, polling};
///
/// let discover = polling(Duration::from_secs(30), || async {
///     // Ask your registry here.
///     Ok::<_, std::io::Error>(vec![Endpoint::new("127.0.0.1:8080".parse().unwrap())])
/// });
/// # drop(discover);
/// ```
pub fn polling<F, Fut, E>(interval: Duration, fetch: F) -> Polling<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<Endpoint>, E>> + Send,
    E: Into<BoxError>,
{
    let interval = interval.max(Duration::from_millis(1));
    Polling {
        fetch,
        interval,
        min_backoff: DEFAULT_MIN_BACKOFF.min(interval),
        max_backoff: interval,
        next_call: None,
        failures: 0,
        last: None,
        rng: Rng::from_entropy(),
    }
}

impl<F> Polling<F> {
    /// Sets the retry backoff after failed calls: from `min` doubling up to `max`.
    ///
    /// `max` below `min` is raised to `min`; a zero `min` is raised to one millisecond.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min.max(Duration::from_millis(1));
        self.max_backoff = max.max(self.min_backoff);
        self
    }

    /// Fixes the jitter's random sequence, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Rng::seeded(seed);
        self
    }

    fn backoff_delay(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        let ceiling = self
            .min_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        // Uniform in [ceiling / 2, ceiling]: jitter at every step, the cap included.
        ceiling.mul_f64(0.5 + 0.5 * self.rng.unit())
    }
}

impl<F, Fut, E> Discover for Polling<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<Endpoint>, E>> + Send,
    E: Into<BoxError>,
{
    async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
        loop {
            if let Some(at) = self.next_call {
                tokio::time::sleep_until(at).await;
            }
            match (self.fetch)().await {
                Ok(set) => {
                    self.failures = 0;
                    self.next_call = Some(Instant::now() + self.interval);
                    if self.last.as_ref() == Some(&set) {
                        continue;
                    }
                    self.last = Some(set.clone());
                    return Some(Ok(Update::Reset(set)));
                }
                Err(e) => {
                    self.failures = self.failures.saturating_add(1);
                    self.next_call = Some(Instant::now() + self.backoff_delay());
                    return Some(Err(e.into()));
                }
            }
        }
    }
}

impl<F> std::fmt::Debug for Polling<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polling")
            .field("interval", &self.interval)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    #[tokio::test(start_paused = true)]
    async fn polls_on_the_interval_and_skips_unchanged_sets() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let mut discover = polling(Duration::from_secs(10), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                // The set changes on the third call only.
                let port = if n < 2 { 1 } else { 2 };
                Ok::<_, std::io::Error>(vec![ep(port)])
            }
        });
        let start = Instant::now();
        assert_eq!(
            discover.next_update().await.unwrap().unwrap(),
            Update::Reset(vec![ep(1)])
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            discover.next_update().await.unwrap().unwrap(),
            Update::Reset(vec![ep(2)])
        );
        assert_eq!(start.elapsed(), Duration::from_secs(20));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_with_jitter_up_to_the_interval() {
        let mut discover = polling(Duration::from_secs(1), || async {
            Err::<Vec<Endpoint>, _>(std::io::Error::other("registry down"))
        })
        .seed(7);
        let mut previous = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..7 {
            let err = discover.next_update().await.unwrap().unwrap_err();
            assert_eq!(err.to_string(), "registry down");
            delays.push(previous.elapsed());
            previous = Instant::now();
        }
        assert_eq!(delays[0], Duration::ZERO);
        // Ceilings 100, 200, 400, 800, 1000, 1000 ms; each delay in the upper half of its ceiling.
        for (delay, ceiling_ms) in delays[1..].iter().zip([100u64, 200, 400, 800, 1000, 1000]) {
            let ceiling = Duration::from_millis(ceiling_ms);
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
    }
}
