//! mTLS with SPIFFE identities: trust bundles, one's own X.509-SVID, identity policies and the
//! verification of peers' X.509-SVIDs, on rustls with the ring provider.
//!
//! Needs the `tls` feature.
//!
//! | item | holds |
//! |---|---|
//! | [`TrustBundle`] | the root certificates of one trust domain, from PEM, DER or SPIFFE bundle JSON |
//! | [`TrustBundleSet`] | bundles keyed by trust domain (local and federated), SPIFFE bundle maps |
//! | [`Svid`] | one's own certificate chain and private key, checked as an X.509-SVID when loaded |
//! | [`IdentityPolicy`] | which peer SPIFFE IDs are acceptable |
//! | [`VerifyError`] | why a peer's chain was refused |
//! | [`TlsError`] | why a certificate, key or bundle could not be loaded |
//! | [`Identity`] | a workload's SVID and trust bundles, in swap cells for rotation |
//! | [`ClientTls`] | mTLS for the balancer's per-endpoint connections |
//! | [`TlsAcceptor`] | mTLS for servers: client SVIDs required (or optional in permissive mode) |
//! | [`AuthorizeLayer`] | an allow policy over callers' identities: 403 or `PERMISSION_DENIED` |
//! | [`PeerIdentity`] | the verified identity of a connection's peer, in request or response extensions |
//! | [`Rotation`] | reloads an [`Identity`] from files or an [`IdentitySource`] on an interval |
//!
//! # Verifying a peer
//!
//! A peer's chain (leaf first) is checked in this order; the first failing check decides the
//! [`VerifyError`]:
//!
//! | step | check | error | done by |
//! |---|---|---|---|
//! | 1 | the leaf parses | [`Malformed`](VerifyError::Malformed) | x509-parser |
//! | 1 | exactly one URI subjectAltName | [`NoUriSan`](VerifyError::NoUriSan), [`MultipleUriSans`](VerifyError::MultipleUriSans) | x509-parser |
//! | 1 | it is a valid SPIFFE ID | [`InvalidId`](VerifyError::InvalidId) | [`crate::identity`] |
//! | 2 | a bundle exists for the ID's trust domain | [`UnknownTrustDomain`](VerifyError::UnknownTrustDomain) | |
//! | 3 | the chain leads to a root of **that** bundle, signatures valid, issuers are CAs, path length and name constraints hold | [`ChainInvalid`](VerifyError::ChainInvalid), [`LeafIsCa`](VerifyError::LeafIsCa) | rustls-webpki |
//! | 3 | extendedKeyUsage, where present, allows the role (`serverAuth` for servers, `clientAuth` for clients) | [`WrongExtendedKeyUsage`](VerifyError::WrongExtendedKeyUsage) | rustls-webpki |
//! | 4 | leaf basicConstraints present, `cA=false` | [`MissingBasicConstraints`](VerifyError::MissingBasicConstraints), [`LeafIsCa`](VerifyError::LeafIsCa) | x509-parser |
//! | 4 | leaf keyUsage present, no `keyCertSign`/`cRLSign`, has `digitalSignature` | [`MissingKeyUsage`](VerifyError::MissingKeyUsage), [`ForbiddenKeyUsage`](VerifyError::ForbiddenKeyUsage), [`MissingDigitalSignature`](VerifyError::MissingDigitalSignature) | x509-parser |
//! | 4 | the ID has a non-empty path (it names a workload) | [`IdIsTrustDomainOnly`](VerifyError::IdIsTrustDomainOnly) | |
//! | 5 | every certificate of the chain is within its validity period | [`Expired`](VerifyError::Expired), [`NotYetValid`](VerifyError::NotYetValid) | rustls-webpki |
//! | 6 | the [`IdentityPolicy`] accepts the ID | [`NotAuthorized`](VerifyError::NotAuthorized) | |
//!
//! Notes on the order:
//!
//! - The ID is read **before** the chain is verified only to pick the bundle; nothing trusts it
//!   until step 3 has passed, and the policy (step 6) only ever sees authenticated IDs. Roots are
//!   never pooled across trust domains, so a trust domain's CA cannot vouch for another trust
//!   domain's IDs (X509-SVID standard §5.2, SPIFFE bundle standard §6.2).
//! - No DNS or IP name is checked: SVIDs carry a URI, so a client dialing a pod by IP address
//!   works. The expected identity comes from the policy instead (one verifier per expected
//!   identity on the client side).
//! - rustls-webpki checks dates before signatures, so a validity error is held back until the
//!   leaf rules have run: a chain that is both expired and structurally wrong reports the
//!   structural error. A chain that fails for any other reason in step 3 stops there.
//! - After rustls-webpki has accepted the chain, its own reading of the URI subjectAltName must
//!   match x509-parser's, so that the two parsers cannot disagree about whose certificate it is.
//!
//! Not checked: revocation (SPIFFE relies on short-lived certificates), the criticality of
//! keyUsage, and whether extendedKeyUsage lists *both* `serverAuth` and `clientAuth` (a SHOULD
//! of the standard; only the purpose of the current role is required). URI name constraints on
//! CAs make rustls-webpki fail closed ([`ChainInvalid`](VerifyError::ChainInvalid)).
//!
//! # Precedent
//!
//! The rules are those of the SPIFFE X509-SVID standard (§4 and §5). go-spiffe's
//! `x509svid.Verify` checks the URI SAN, `cA` and the forbidden key usages of peers, but not
//! `digitalSignature` or the non-empty path, which it checks only on one's own SVID, and it
//! ignores extendedKeyUsage; this module applies every leaf rule to peers too. Like
//! spiffe-rustls and Linkerd, the chain is verified without a name check and the identity is
//! compared afterwards; the stock rustls server verifier cannot be used, since it always matches
//! the server name against DNS/IP names the SVID does not have.
//!
//! # Using the verifiers
//!
//! The crate-internal rustls verifiers (used by the connector and acceptor) read the current
//! [`TrustBundleSet`] from a swap cell on every handshake, so bundle rotation needs no new
//! configuration. They always use the ring provider passed to them, never a process-wide default.
//! A resumed TLS session skips verification altogether, so configurations built on them must
//! disable resumption. Errors reach rustls as
//! `InvalidCertificate(CertificateError::Other(..))` wrapping a [`VerifyError`];
//! [`VerifyError::find`] gets it back from a failed handshake.
//!
//! # Example
//!
//! ```
//! use proxyless::tls::TrustBundleSet;
//!
//! // A bundle map with one trust domain whose bundle has no usable key yet.
//! let bundles = TrustBundleSet::from_spiffe_bundle_map(
//!     br#"{"trust_domains": {"example.org": {"spiffe_sequence": 1, "keys": []}}}"#,
//! )?;
//! let td = "example.org".parse()?;
//! let bundle = bundles.get(&td).expect("loaded");
//! assert!(bundle.roots().is_empty());
//! assert_eq!(bundle.sequence(), Some(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod authorize;
mod bundle;
mod client;
mod error;
mod identity;
mod policy;
mod rotation;
mod server;
mod svid;
mod verify;
mod x509;

#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

pub use authorize::{Authorize, AuthorizeFuture, AuthorizeLayer};
pub use bundle::{TrustBundle, TrustBundleSet};
pub use client::ClientTls;
pub(crate) use client::{EndpointTls, TlsConn};
pub use error::{TlsError, VerifyError};
pub use identity::{Identity, PeerIdentity};
pub use policy::IdentityPolicy;
pub use rotation::{
    FileIdentity, IdentitySource, Rotation, RotationError, RotationHandle, RotationStats, reload,
};
pub use server::{AcceptError, Accepted, TlsAcceptor, WithPeerIdentity};
pub use svid::Svid;

// The names the connector, acceptor and Authorize layer build on.
pub(crate) use verify::{SharedBundles, SpiffeServerVerifier, spiffe_id_of_verified};
#[cfg(test)]
pub(crate) use verify::{SpiffeClientVerifier, Usage, verify_svid};
