//! Classification: what each attempt's outcome says about the endpoint's health.
//!
//! Every attempt gets one [`Outcome`], which feeds the endpoint's load (failures are charged the
//! failure penalty), its circuit breaker and the outlier detector. [`DefaultClassify`] maps
//! responses and errors the way Envoy's outlier detection does:
//!
//! | attempt | outcome |
//! |---|---|
//! | 502, 503, 504 | [`GatewayError`](Outcome::GatewayError) |
//! | other 5xx | [`ServerError`](Outcome::ServerError) |
//! | 429 | [`Throttled`](Outcome::Throttled) |
//! | anything else (1xx–4xx) | [`Success`](Outcome::Success): the endpoint did its job |
//! | connection failed, reset, no response before the attempt deadline | [`LocalOrigin`](Outcome::LocalOrigin) |
//!
//! gRPC statuses are mapped to HTTP first, as Envoy maps them (`source/common/grpc/status.cc`):
//! UNKNOWN, INTERNAL, DATA_LOSS → 500; UNIMPLEMENTED → 501; UNAVAILABLE → 503;
//! DEADLINE_EXCEEDED → 504; RESOURCE_EXHAUSTED → 429; the other codes → 4xx (success for health).
//! The status is read from the response headers (a trailers-only response) or, failing that,
//! from the trailers at the end of the stream; a gRPC response that ends with no `grpc-status` at
//! all is a [`ServerError`](Outcome::ServerError) (hyper turns an h2 `RST_STREAM(NO_ERROR)` into
//! a clean end of stream, so "no status" must not pass for success). Envoy only reads headers.

use std::error::Error;

use http::{HeaderMap, StatusCode};

use crate::error::{EndpointError, EndpointErrorKind};

/// What one attempt says about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The endpoint answered (any status below 500 but 429).
    Success,
    /// A 5xx other than 502, 503 and 504.
    ServerError,
    /// 502, 503 or 504: the endpoint or something behind it is unavailable.
    GatewayError,
    /// The attempt failed on our side of the connection: connect failure, reset, timeout.
    LocalOrigin(LocalOrigin),
    /// 429 or gRPC RESOURCE_EXHAUSTED: the endpoint is shedding load.
    Throttled,
}

/// Which local-origin failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LocalOrigin {
    /// The connection could not be established.
    ConnectFailed,
    /// The connection or stream failed after the request was sent.
    Reset,
    /// No response headers before the attempt's deadline.
    Timeout,
}

impl Outcome {
    /// Whether the endpoint failed: everything but [`Success`](Outcome::Success).
    pub fn is_failure(self) -> bool {
        self != Outcome::Success
    }

    /// Whether Envoy counts it as a 5xx: server and gateway errors, and local-origin failures
    /// (counted as 503 or 504 when they are not split out).
    pub fn is_5xx(self) -> bool {
        matches!(
            self,
            Outcome::ServerError | Outcome::GatewayError | Outcome::LocalOrigin(_)
        )
    }

    /// Whether Envoy counts it as a gateway failure (502, 503, 504, local-origin failures).
    pub fn is_gateway_failure(self) -> bool {
        matches!(self, Outcome::GatewayError | Outcome::LocalOrigin(_))
    }

    /// Whether it is a local-origin failure.
    pub fn is_local_origin(self) -> bool {
        matches!(self, Outcome::LocalOrigin(_))
    }
}

/// Turns responses and errors into [`Outcome`]s. Implement it to change what counts as a
/// failure; [`DefaultClassify`] is used otherwise.
pub trait Classify: Send + Sync + 'static {
    /// Classifies response headers; `None` means the outcome depends on the trailers (a gRPC
    /// response with no status in its headers).
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome>;

    /// Classifies the end of a response whose headers did not decide it, with its trailers if
    /// it had any.
    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome;

    /// Classifies an error from the endpoint's client (or from the response body mid-stream).
    fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome;
}

/// Envoy's classification, extended to gRPC trailers; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome> {
        if let Some(code) = grpc_status(headers) {
            return Some(http_outcome(grpc_to_http(code)));
        }
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc && status == StatusCode::OK {
            return None;
        }
        Some(http_outcome(status.as_u16()))
    }

    fn classify_end(&self, trailers: Option<&HeaderMap>) -> Outcome {
        match trailers.and_then(grpc_status) {
            Some(code) => http_outcome(grpc_to_http(code)),
            None => Outcome::ServerError,
        }
    }

    fn classify_error(&self, error: &(dyn Error + 'static)) -> Outcome {
        match error
            .downcast_ref::<EndpointError>()
            .map(EndpointError::kind)
        {
            Some(EndpointErrorKind::Connect) => Outcome::LocalOrigin(LocalOrigin::ConnectFailed),
            Some(EndpointErrorKind::Timeout) => Outcome::LocalOrigin(LocalOrigin::Timeout),
            _ => Outcome::LocalOrigin(LocalOrigin::Reset),
        }
    }
}

static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The `grpc-status` in a header map, if present and numeric.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    if headers.is_empty() {
        return None;
    }
    headers
        .get(&GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Envoy's mapping of gRPC status codes to HTTP statuses.
pub fn grpc_to_http(code: u16) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        2 | 13 | 15 => 500,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

fn http_outcome(status: u16) -> Outcome {
    match status {
        502..=504 => Outcome::GatewayError,
        500..=599 => Outcome::ServerError,
        429 => Outcome::Throttled,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn http_statuses() {
        let c = DefaultClassify;
        let none = HeaderMap::new();
        for (status, outcome) in [
            (200, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Throttled),
            (500, Outcome::ServerError),
            (501, Outcome::ServerError),
            (502, Outcome::GatewayError),
            (503, Outcome::GatewayError),
            (504, Outcome::GatewayError),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                c.classify_response(status, &none),
                Some(outcome),
                "{status}"
            );
        }
    }

    #[test]
    fn grpc_statuses_in_headers_and_trailers() {
        let c = DefaultClassify;
        let grpc = headers(&[("content-type", "application/grpc")]);
        assert_eq!(c.classify_response(StatusCode::OK, &grpc), None);
        for (code, outcome) in [
            ("0", Outcome::Success),
            ("5", Outcome::Success),
            ("2", Outcome::ServerError),
            ("4", Outcome::GatewayError),
            ("8", Outcome::Throttled),
            ("12", Outcome::ServerError),
            ("13", Outcome::ServerError),
            ("14", Outcome::GatewayError),
        ] {
            let mut trailers_only = grpc.clone();
            trailers_only.insert("grpc-status", code.parse().unwrap());
            assert_eq!(
                c.classify_response(StatusCode::OK, &trailers_only),
                Some(outcome),
                "headers {code}"
            );
            let trailers = headers(&[("grpc-status", code)]);
            assert_eq!(c.classify_end(Some(&trailers)), outcome, "trailers {code}");
        }
        assert_eq!(c.classify_end(None), Outcome::ServerError);
        assert_eq!(
            c.classify_end(Some(&HeaderMap::new())),
            Outcome::ServerError
        );
    }

    #[test]
    fn errors_are_local_origin() {
        let c = DefaultClassify;
        let addr = "127.0.0.1:1".parse().unwrap();
        let refused = EndpointError::new(
            addr,
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
        );
        assert_eq!(
            c.classify_error(&refused),
            Outcome::LocalOrigin(LocalOrigin::ConnectFailed)
        );
        let timeout = EndpointError::timeout(addr, std::time::Duration::from_secs(1));
        assert_eq!(
            c.classify_error(&timeout),
            Outcome::LocalOrigin(LocalOrigin::Timeout)
        );
        let other = std::io::Error::other("reset");
        assert_eq!(
            c.classify_error(&other),
            Outcome::LocalOrigin(LocalOrigin::Reset)
        );
    }
}
