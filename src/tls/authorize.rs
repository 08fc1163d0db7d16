//! Request authorization by the caller's SPIFFE ID: [`AuthorizeLayer`] and [`Authorize`].
//!
//! The behaviour is documented on [`AuthorizeLayer`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use pin_project_lite::pin_project;

use super::identity::PeerIdentity;
use super::policy::IdentityPolicy;
use super::server::DisplayPeer;

/// The gRPC status code `PERMISSION_DENIED`.
const GRPC_PERMISSION_DENIED: &str = "7";

/// A tower layer that lets only allowed callers through.
///
/// # Behaviour
///
/// Each request's [`PeerIdentity`] is read from its extensions (put there per connection by
/// [`WithPeerIdentity`](super::WithPeerIdentity)). The request reaches the inner service when
///
/// - it has an identity and the layer's [`IdentityPolicy`] allows it, or
/// - it has no identity (plaintext or certificate-less client of a permissive acceptor) and the
///   layer was built with [`allow_unauthenticated`](AuthorizeLayer::allow_unauthenticated).
///
/// An authenticated caller the policy does not allow is refused even with
/// `allow_unauthenticated`: presenting a certificate never gives fewer rights than presenting
/// none, but a known identity is judged by the policy.
///
/// A refused request never reaches the inner service (whose readiness is still awaited, as
/// tower requires). The refusal is
///
/// - for gRPC (`content-type: application/grpc` or `application/grpc+…`): a trailers-only
///   response, HTTP 200 with `grpc-status: 7` (`PERMISSION_DENIED`) and a `grpc-message`, as
///   gRPC clients expect;
/// - otherwise: `403 Forbidden` with an empty body.
///
/// Each refusal is logged at `info` with the caller's ID (or `no identity`), the policy, the
/// method and the path. The response does not reveal the policy to the caller.
///
/// # Precedent
///
/// Istio's `AuthorizationPolicy` (ALLOW action, `principals`) and Linkerd's
/// `MeshTLSAuthentication` authorize by the mTLS peer identity; both refuse plaintext callers
/// once a policy names identities, which is this layer's default. Linkerd's
/// `all-unauthenticated` default inbound policy corresponds to `allow_unauthenticated`. Both
/// answer gRPC requests with `PERMISSION_DENIED` and other HTTP requests with 403.
///
/// # Response body
///
/// The response body is `http_body_util::Either<RB, Empty<Bytes>>`: the inner body on the
/// left, the empty refusal on the right. It is a `Body` with `Data = Bytes` whenever `RB` is,
/// so the layer works in hyper servers and in tonic's `Server::builder().layer(..)`.
///
/// ```
/// use proxyless::tls::{AuthorizeLayer, IdentityPolicy};
///
/// let layer = AuthorizeLayer::new(IdentityPolicy::MemberOf("example.org".parse()?))
///     .allow_unauthenticated(); // during a migration to mTLS
/// # let _ = layer;
/// # Ok::<(), proxyless::identity::SpiffeIdError>(())
/// ```
#[derive(Clone, Debug)]
pub struct AuthorizeLayer {
    rule: Arc<Rule>,
}

#[derive(Debug)]
struct Rule {
    policy: IdentityPolicy,
    allow_unauthenticated: bool,
}

impl AuthorizeLayer {
    /// Allows callers whose identity `policy` accepts; callers without identity are refused.
    pub fn new(policy: IdentityPolicy) -> Self {
        Self {
            rule: Arc::new(Rule {
                policy,
                allow_unauthenticated: false,
            }),
        }
    }

    /// Also lets callers without an identity through (permissive migrations). Callers with an
    /// identity the policy refuses are still refused.
    pub fn allow_unauthenticated(self) -> Self {
        Self {
            rule: Arc::new(Rule {
                policy: self.rule.policy.clone(),
                allow_unauthenticated: true,
            }),
        }
    }

    /// The policy callers' identities must satisfy.
    pub fn policy(&self) -> &IdentityPolicy {
        &self.rule.policy
    }

    /// Whether callers without an identity are let through.
    pub fn allows_unauthenticated(&self) -> bool {
        self.rule.allow_unauthenticated
    }
}

impl<S> tower_layer::Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            rule: Arc::clone(&self.rule),
        }
    }
}

/// The service made by [`AuthorizeLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S> {
    inner: S,
    rule: Arc<Rule>,
}

impl<S> Authorize<S> {
    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl Rule {
    fn admits(&self, peer: Option<&PeerIdentity>) -> bool {
        match peer {
            Some(peer) => self.policy.allows(&peer.0),
            None => self.allow_unauthenticated,
        }
    }
}

impl<S, B, RB> tower_service::Service<Request<B>> for Authorize<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<Either<RB, Empty<Bytes>>>;
    type Error = S::Error;
    type Future = AuthorizeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let peer = request.extensions().get::<PeerIdentity>();
        if self.rule.admits(peer) {
            return AuthorizeFuture {
                state: State::Inner {
                    future: self.inner.call(request),
                },
            };
        }
        tracing::info!(
            peer = %DisplayPeer(peer),
            policy = %self.rule.policy,
            method = %request.method(),
            path = %request.uri().path(),
            "authorize: request refused"
        );
        AuthorizeFuture {
            state: State::Refused {
                response: Some(refusal(&request, peer)),
            },
        }
    }
}

/// Whether the request is gRPC (`application/grpc`, `application/grpc+proto`, ...).
fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.trim_start();
            ct.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

fn refusal<B>(request: &Request<B>, peer: Option<&PeerIdentity>) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    if !is_grpc(request) {
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    }
    let message = match peer {
        Some(peer) => format!("caller {} is not authorized", peer.0),
        None => "caller has no authenticated identity".to_owned(),
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(
        "grpc-status",
        HeaderValue::from_static(GRPC_PERMISSION_DENIED),
    );
    if let Ok(value) = HeaderValue::from_str(&PercentEncoded(&message).to_string()) {
        headers.insert("grpc-message", value);
    }
    response
}

/// The percent-encoding of `grpc-message`: bytes outside printable ASCII, and `%`, as `%XX`.
struct PercentEncoded<'a>(&'a str);

impl fmt::Display for PercentEncoded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_bytes() {
            if (0x20..=0x7e).contains(&b) && b != b'%' {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

pin_project! {
    /// The future of [`Authorize`]: the inner service's response, or the refusal.
    #[derive(Debug)]
    pub struct AuthorizeFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        // The request was allowed.
        Inner {
            #[pin]
            future: F,
        },
        // The request was refused; the refusal until it is returned.
        Refused {
            response: Option<Response<Empty<Bytes>>>,
        },
    }
}

impl<F, RB, E> Future for AuthorizeFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<Either<RB, Empty<Bytes>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(Either::Left))),
            StateProj::Refused { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response.map(Either::Right))),
                // Polled again after completion: refuse again rather than panic.
                None => {
                    let mut response = Response::new(Either::Right(Empty::new()));
                    *response.status_mut() = StatusCode::FORBIDDEN;
                    Poll::Ready(Ok(response))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ct: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(ct) = ct {
            b = b.header(CONTENT_TYPE, ct);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn recognizes_grpc_content_types() {
        assert!(is_grpc(&request(Some("application/grpc"))));
        assert!(is_grpc(&request(Some("application/grpc+proto"))));
        assert!(is_grpc(&request(Some("Application/GRPC;charset=utf-8"))));
        assert!(!is_grpc(&request(Some("application/grpc-web"))));
        assert!(!is_grpc(&request(Some("application/json"))));
        assert!(!is_grpc(&request(Some("app"))));
        assert!(!is_grpc(&request(None)));
    }

    #[test]
    fn percent_encodes_grpc_messages() {
        assert_eq!(PercentEncoded("a b%c\né").to_string(), "a b%25c%0A%C3%A9");
    }
}
