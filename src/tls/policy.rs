//! [`IdentityPolicy`]: which authenticated peer identities are acceptable.

use std::fmt;

use crate::identity::{SpiffeId, TrustDomain};

/// Which peer SPIFFE IDs are acceptable, checked after the peer's chain has been verified.
///
/// A policy only ever sees authenticated IDs: the verifier has already checked that the peer's
/// chain leads to a root of the trust domain its ID claims. So
/// [`AnyInTrustedDomains`](IdentityPolicy::AnyInTrustedDomains) means "any workload of a trust
/// domain we hold a bundle for", and [`MemberOf`](IdentityPolicy::MemberOf) narrows that to
/// one trust domain.
///
/// A client dialing an endpoint uses [`Exact`](IdentityPolicy::Exact) with the ID discovery
/// announced for it; a server usually accepts
/// [`AnyInTrustedDomains`](IdentityPolicy::AnyInTrustedDomains) and leaves finer decisions to
/// authorization.
///
/// ```
/// use proxyless::identity::{SpiffeId, TrustDomain};
/// use proxyless::tls::IdentityPolicy;
///
/// let web: SpiffeId = "spiffe://example.org/ns/prod/sa/web".parse()?;
/// let db: SpiffeId = "spiffe://example.org/ns/prod/sa/db".parse()?;
/// assert!(IdentityPolicy::Exact(web.clone()).allows(&web));
/// assert!(!IdentityPolicy::Exact(web.clone()).allows(&db));
/// assert!(IdentityPolicy::MemberOf(TrustDomain::parse("example.org")?).allows(&db));
/// assert_eq!(
///     IdentityPolicy::OneOf(vec![web, db]).to_string(),
///     "one of [spiffe://example.org/ns/prod/sa/web, spiffe://example.org/ns/prod/sa/db]"
/// );
/// # Ok::<(), proxyless::identity::SpiffeIdError>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityPolicy {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any of these IDs (none, if the list is empty).
    OneOf(Vec<SpiffeId>),
    /// Any ID of this trust domain.
    MemberOf(TrustDomain),
    /// Any ID whose chain verified, that is any ID of a trust domain in the bundle set.
    AnyInTrustedDomains,
}

impl IdentityPolicy {
    /// Whether the policy accepts this (already authenticated) ID.
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            IdentityPolicy::Exact(expected) => expected == id,
            IdentityPolicy::OneOf(expected) => expected.contains(id),
            IdentityPolicy::MemberOf(trust_domain) => id.is_member_of(trust_domain),
            IdentityPolicy::AnyInTrustedDomains => true,
        }
    }
}

/// Describes what the policy accepts, e.g. `exactly spiffe://example.org/web` or
/// `any ID in trust domain example.org`.
impl fmt::Display for IdentityPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPolicy::Exact(id) => write!(f, "exactly {id}"),
            IdentityPolicy::OneOf(ids) => {
                f.write_str("one of [")?;
                for (i, id) in ids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}")?;
                }
                f.write_str("]")
            }
            IdentityPolicy::MemberOf(td) => write!(f, "any ID in trust domain {td}"),
            IdentityPolicy::AnyInTrustedDomains => {
                f.write_str("any ID in a trust domain with a configured bundle")
            }
        }
    }
}
