//! Which attempts are retried, how often, and how long to wait.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Response, StatusCode};

use super::backoff::Backoff;
use super::budget::{GrpcThrottle, RetryBudget, TpsBudget, Unlimited};
use crate::BoxError;
use crate::error::{
    BuildError, EndpointError, EndpointErrorKind, NoEndpoint, Overloaded, check_duration,
};

/// gRPC's UNAVAILABLE status code.
const GRPC_UNAVAILABLE: u16 = 14;

/// The retry settings; build with [`RetryPolicy::builder`].
///
/// | setting | default | precedent |
/// |---|---|---|
/// | [`max_attempts`](RetryPolicyBuilder::max_attempts) | 3, the first included | Envoy's 1 retry; gRPC caps at 5 |
/// | [`statuses`](RetryPolicyBuilder::statuses) | 502, 503, 504 | Envoy's `gateway-error` |
/// | [`grpc_codes`](RetryPolicyBuilder::grpc_codes) | UNAVAILABLE (14) | gRPC, Linkerd |
/// | [`methods`](RetryPolicyBuilder::methods) | GET, HEAD, OPTIONS, PUT, DELETE, TRACE | RFC 9110 idempotent methods |
/// | [`per_try_timeout`](RetryPolicyBuilder::per_try_timeout) | none | Envoy (until response headers) |
/// | [`deadline`](RetryPolicyBuilder::deadline) | none | — |
/// | [`backoff`](RetryPolicyBuilder::backoff) | exponential, full jitter, 25 ms → 250 ms | Envoy, Linkerd |
/// | [`budget`](RetryPolicyBuilder::budget) | 20 % + 10/s over 10 s | Finagle, Linkerd |
/// | [`replay_cap`](RetryPolicyBuilder::replay_cap) | 64 KiB | Linkerd |
/// | [`max_retry_after`](RetryPolicyBuilder::max_retry_after) | 10 s | — |
///
/// What is retried, whatever the settings:
///
/// - **never sent** (the connection failed, HTTP/2 `REFUSED_STREAM`, a pooled connection closed
///   before the request went out): always, whatever the method, since the server never saw it;
/// - **a response** whose status is in `statuses`, for a method in `methods`; a gRPC response
///   (`content-type: application/grpc`) whose `grpc-status` *header* is in `grpc_codes`, whatever
///   the method, as gRPC retry policies are per service (trailers are not awaited: a
///   trailers-only answer is how servers fail a call before any message);
/// - **other errors** (reset, per-try timeout), for a method in `methods`.
///
/// Never retried: [`NoEndpoint`] (the balancer already waited; waiting again only adds load),
/// [`Overloaded`] (load shedding: a retry would only add load), and 4xx statuses unless listed.
#[derive(Clone)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) statuses: Vec<StatusCode>,
    pub(crate) grpc_codes: Vec<u16>,
    pub(crate) methods: Vec<Method>,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Arc<dyn RetryBudget>,
    pub(crate) replay_cap: u64,
    pub(crate) max_retry_after: Duration,
    pub(crate) seed: Option<u64>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("statuses", &self.statuses)
            .field("grpc_codes", &self.grpc_codes)
            .field("methods", &self.methods)
            .field("per_try_timeout", &self.per_try_timeout)
            .field("deadline", &self.deadline)
            .field("backoff", &self.backoff)
            .field("replay_cap", &self.replay_cap)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            statuses: vec![
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::GATEWAY_TIMEOUT,
            ],
            grpc_codes: vec![GRPC_UNAVAILABLE],
            methods: vec![
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ],
            per_try_timeout: None,
            deadline: None,
            backoff: Backoff::default(),
            budget: Arc::new(TpsBudget::default()),
            replay_cap: 64 * 1024,
            max_retry_after: Duration::from_secs(10),
            seed: None,
        }
    }
}

/// Which budget a [`RetryPolicy`] uses.
#[derive(Clone)]
#[non_exhaustive]
pub enum Budget {
    /// Finagle's budget: `ratio` of requests plus `min_per_sec`, over `ttl` (default 0.2, 10, 10 s).
    Tps {
        /// Deposit window, 1 s to 60 s.
        ttl: Duration,
        /// Retries per second allowed whatever the traffic.
        min_per_sec: u32,
        /// Retries per request, 0 to 1000.
        ratio: f64,
    },
    /// gRPC's retry throttling (gRFC A6).
    GrpcThrottle {
        /// Bucket size, above 0 and at most 1000.
        max_tokens: f64,
        /// Tokens regained per success, at least 0.001.
        token_ratio: f64,
    },
    /// No budget: only `max_attempts` bounds retries. Not recommended.
    Unlimited,
    /// Your own.
    Custom(Arc<dyn RetryBudget>),
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Tps {
                ttl,
                min_per_sec,
                ratio,
            } => f
                .debug_struct("Tps")
                .field("ttl", ttl)
                .field("min_per_sec", min_per_sec)
                .field("ratio", ratio)
                .finish(),
            Budget::GrpcThrottle {
                max_tokens,
                token_ratio,
            } => f
                .debug_struct("GrpcThrottle")
                .field("max_tokens", max_tokens)
                .field("token_ratio", token_ratio)
                .finish(),
            Budget::Unlimited => f.write_str("Unlimited"),
            Budget::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl RetryPolicy {
    /// A builder starting from the defaults.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: Self::default(),
            budget: None,
        }
    }

    /// Attempts per request, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The budget shared by all requests under this policy.
    pub fn budget(&self) -> &Arc<dyn RetryBudget> {
        &self.budget
    }

    pub(crate) fn retries_method(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}

/// Builds a validated [`RetryPolicy`].
#[derive(Debug)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
    budget: Option<Budget>,
}

impl RetryPolicyBuilder {
    /// Sets the attempts per request, the first included (default 3; 1 to 10; 1 disables retries).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// Sets the HTTP statuses that are retried (default 502, 503, 504).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.policy.statuses = statuses.into_iter().collect();
        self
    }

    /// Sets the gRPC status codes that are retried (default 14, UNAVAILABLE).
    pub fn grpc_codes(mut self, codes: impl IntoIterator<Item = u16>) -> Self {
        self.policy.grpc_codes = codes.into_iter().collect();
        self
    }

    /// Sets the methods whose failed responses and errors are retried (default: the idempotent
    /// ones). Never-sent requests are retried whatever their method.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.policy.methods = methods.into_iter().collect();
        self
    }

    /// Sets a timeout for each attempt's response headers (default none; 1 ms to 1 h).
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        self.policy.per_try_timeout = Some(timeout);
        self
    }

    /// Sets a deadline across all attempts and backoffs (default none; 1 ms to 1 h).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = Some(deadline);
        self
    }

    /// Sets the backoff (default exponential with full jitter, 25 ms to 250 ms); checked by
    /// [`build`](Self::build).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.policy.backoff = backoff;
        self
    }

    /// Sets the budget (default [`Budget::Tps`] with 20 %, 10/s, 10 s).
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Sets how many request body bytes are kept for replay (default 64 KiB; at most 16 MiB).
    pub fn replay_cap(mut self, bytes: u64) -> Self {
        self.policy.replay_cap = bytes;
        self
    }

    /// Sets the longest `Retry-After` honoured (default 10 s; up to 1 h): a response asking for
    /// a longer wait is returned rather than retried.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.policy.max_retry_after = max;
        self
    }

    /// Fixes the jitter's random sequence, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.policy.seed = Some(seed);
        self
    }

    /// Checks every setting and returns the policy, or says which one is out of range.
    pub fn build(mut self) -> Result<RetryPolicy, BuildError> {
        self.policy.backoff.validate()?;
        let p = &self.policy;
        if !(1..=10).contains(&p.max_attempts) {
            return Err(invalid(format!(
                "max_attempts is {}; it must be between 1 and 10",
                p.max_attempts
            )));
        }
        for (name, value) in [
            ("per_try_timeout", p.per_try_timeout),
            ("deadline", p.deadline),
        ] {
            if let Some(value) = value {
                check_duration(name, value, Duration::from_millis(1))?;
            }
        }
        check_duration("max_retry_after", p.max_retry_after, Duration::ZERO)?;
        if p.replay_cap > 16 * 1024 * 1024 {
            return Err(invalid(format!(
                "replay_cap is {} bytes; it must be at most 16 MiB",
                p.replay_cap
            )));
        }
        if let Some(code) = p.grpc_codes.iter().find(|c| **c > 16) {
            return Err(invalid(format!("gRPC status code {code} does not exist")));
        }
        if let Some(budget) = self.budget {
            self.policy.budget = match budget {
                Budget::Tps {
                    ttl,
                    min_per_sec,
                    ratio,
                } => Arc::new(TpsBudget::new(ttl, min_per_sec, ratio)?),
                Budget::GrpcThrottle {
                    max_tokens,
                    token_ratio,
                } => Arc::new(GrpcThrottle::new(max_tokens, token_ratio)?),
                Budget::Unlimited => Arc::new(Unlimited),
                Budget::Custom(budget) => budget,
            };
        }
        Ok(self.policy)
    }
}

fn invalid(message: String) -> BuildError {
    BuildError::InvalidConfig(message)
}

/// What the policy says about one attempt's outcome.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not a failure the policy retries: return it.
    Final,
    /// A failure the policy retries, if attempts, budget and body allow.
    Retry {
        /// Wait this long instead of the backoff (`Retry-After`, gRPC pushback).
        after: Option<Duration>,
    },
    /// A failure the policy would retry, but the server said not to (negative or malformed
    /// gRPC pushback, or a `Retry-After` above the maximum).
    Refused,
}

impl RetryPolicy {
    pub(crate) fn judge_response<B>(
        &self,
        response: &Response<B>,
        method_retryable: bool,
        grpc: bool,
    ) -> Verdict {
        let headers = response.headers();
        if grpc {
            let failed = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u16>().ok())
                .is_some_and(|code| self.grpc_codes.contains(&code));
            if failed {
                return match grpc_pushback(headers) {
                    Pushback::None => Verdict::Retry { after: None },
                    Pushback::After(delay) => Verdict::Retry { after: Some(delay) },
                    Pushback::Stop => Verdict::Refused,
                };
            }
        }
        if method_retryable && self.statuses.contains(&response.status()) {
            return match retry_after(headers) {
                Some(delay) if delay > self.max_retry_after => Verdict::Refused,
                after => Verdict::Retry { after },
            };
        }
        Verdict::Final
    }

    pub(crate) fn judge_error(&self, error: &BoxError, method_retryable: bool) -> Verdict {
        if error.is::<NoEndpoint>() || error.is::<Overloaded>() {
            return Verdict::Final;
        }
        if never_sent(error) || method_retryable {
            Verdict::Retry { after: None }
        } else {
            Verdict::Final
        }
    }
}

/// Whether a final response is a success for gRPC retry throttling (gRFC A6 refills tokens on
/// successful calls only): below 500, and for gRPC, OK or no status yet in the headers (the
/// normal case, with the status in the trailers).
pub(crate) fn succeeded<B>(response: &Response<B>) -> bool {
    !response.status().is_server_error()
        && crate::classify::grpc_status(response.headers()).is_none_or(|code| code == 0)
}

/// Whether the error says the request never reached the server.
pub(crate) fn never_sent(error: &BoxError) -> bool {
    if let Some(endpoint) = error.downcast_ref::<EndpointError>() {
        if endpoint.kind() == EndpointErrorKind::Connect {
            return true;
        }
        if endpoint.kind() == EndpointErrorKind::Timeout {
            return false;
        }
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    if let Some(endpoint) = error.downcast_ref::<EndpointError>() {
        current = Some(endpoint.inner());
    }
    while let Some(e) = current {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return true;
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        current = e.source();
    }
    false
}

enum Pushback {
    None,
    After(Duration),
    Stop,
}

/// gRFC A6: `grpc-retry-pushback-ms` ≥ 0 means retry after that long; negative, malformed or
/// repeated means do not retry.
fn grpc_pushback(headers: &HeaderMap) -> Pushback {
    let mut values = headers.get_all("grpc-retry-pushback-ms").iter();
    let Some(value) = values.next() else {
        return Pushback::None;
    };
    if values.next().is_some() {
        return Pushback::Stop;
    }
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
    {
        Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
        _ => Pushback::Stop,
    }
}

/// `Retry-After` in delta-seconds; an HTTP-date or a malformed value is ignored (as Envoy does).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn gateway_errors_are_retried_for_idempotent_methods_only() {
        let policy = RetryPolicy::default();
        for status in [502, 503, 504] {
            assert_eq!(
                policy.judge_response(&response(status, &[]), true, false),
                Verdict::Retry { after: None }
            );
            assert_eq!(
                policy.judge_response(&response(status, &[]), false, false),
                Verdict::Final
            );
        }
        for status in [200, 404, 429, 500] {
            assert_eq!(
                policy.judge_response(&response(status, &[]), true, false),
                Verdict::Final
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.judge_response(&response(503, &[("retry-after", "2")]), true, false),
            Verdict::Retry {
                after: Some(Duration::from_secs(2))
            }
        );
        assert_eq!(
            policy.judge_response(&response(503, &[("retry-after", "60")]), true, false),
            Verdict::Refused
        );
        assert_eq!(
            policy.judge_response(
                &response(503, &[("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT")]),
                true,
                false
            ),
            Verdict::Retry { after: None }
        );
    }

    #[test]
    fn grpc_statuses_and_pushback() {
        let policy = RetryPolicy::default();
        let unavailable = [("grpc-status", "14")];
        assert_eq!(
            policy.judge_response(&response(200, &unavailable), false, true),
            Verdict::Retry { after: None }
        );
        assert_eq!(
            policy.judge_response(&response(200, &[("grpc-status", "13")]), false, true),
            Verdict::Final
        );
        assert_eq!(
            policy.judge_response(&response(200, &unavailable), false, false),
            Verdict::Final,
            "a grpc-status on a non-gRPC request means nothing"
        );
        let with = |pushback: &'static str| {
            policy.judge_response(
                &response(
                    200,
                    &[("grpc-status", "14"), ("grpc-retry-pushback-ms", pushback)],
                ),
                false,
                true,
            )
        };
        assert_eq!(
            with("150"),
            Verdict::Retry {
                after: Some(Duration::from_millis(150))
            }
        );
        assert_eq!(
            with("0"),
            Verdict::Retry {
                after: Some(Duration::ZERO)
            }
        );
        assert_eq!(with("-1"), Verdict::Refused);
        assert_eq!(with("soon"), Verdict::Refused);
        assert_eq!(with("99999999999"), Verdict::Refused);
    }

    #[test]
    fn no_endpoint_is_never_retried_and_connect_errors_always_are() {
        let policy = RetryPolicy::default();
        let no_endpoint: BoxError = Box::new(NoEndpoint::new(Duration::from_secs(3), 0, 0));
        assert_eq!(policy.judge_error(&no_endpoint, true), Verdict::Final);
        let overloaded: BoxError = Box::new(Overloaded::service(1024));
        assert_eq!(policy.judge_error(&overloaded, true), Verdict::Final);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect: BoxError = Box::new(EndpointError::new(
            "127.0.0.1:1".parse().unwrap(),
            Box::new(refused),
        ));
        assert_eq!(
            policy.judge_error(&connect, false),
            Verdict::Retry { after: None }
        );
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let reset: BoxError = Box::new(EndpointError::new(
            "127.0.0.1:1".parse().unwrap(),
            Box::new(reset),
        ));
        assert_eq!(policy.judge_error(&reset, false), Verdict::Final);
        assert_eq!(
            policy.judge_error(&reset, true),
            Verdict::Retry { after: None }
        );
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert!(RetryPolicy::builder().max_attempts(0).build().is_err());
        assert!(RetryPolicy::builder().max_attempts(11).build().is_err());
        assert!(
            RetryPolicy::builder()
                .per_try_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        assert!(RetryPolicy::builder().grpc_codes([17]).build().is_err());
        assert!(
            RetryPolicy::builder()
                .backoff(Backoff::Exponential {
                    base: Duration::ZERO,
                    max: Duration::ZERO
                })
                .build()
                .is_err()
        );
        assert!(
            RetryPolicy::builder()
                .budget(Budget::Tps {
                    ttl: Duration::from_secs(100),
                    min_per_sec: 10,
                    ratio: 0.2
                })
                .build()
                .is_err()
        );
    }
}
