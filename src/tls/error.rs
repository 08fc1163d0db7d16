//! Errors of the `tls` module: [`VerifyError`] (a peer's certificate was refused) and
//! [`TlsError`] (our own certificates, keys or bundles could not be loaded).

use std::fmt;
use std::sync::Arc;

use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain};

/// Why a certificate chain was refused as an X.509-SVID.
///
/// Returned by the SPIFFE verifiers during the TLS handshake, where rustls carries it as
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`VerifyError::find`] digs it
/// out of a handshake error again. Also returned, wrapped in [`TlsError::NotAnSvid`], when one's
/// own SVID breaks a rule.
///
/// The variants follow the order in which a chain is checked (see the [module docs](super)): the
/// first failing check decides the error.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The leaf certificate has no URI subjectAltName, so it names no SPIFFE ID.
    NoUriSan,
    /// The leaf certificate has more than one URI subjectAltName; an X.509-SVID has exactly one.
    MultipleUriSans {
        /// How many URI subjectAltNames the certificate has.
        count: usize,
    },
    /// The leaf certificate's URI subjectAltName is not a valid SPIFFE ID.
    InvalidId(SpiffeIdError),
    /// The leaf certificate's SPIFFE ID has an empty path: it names a trust domain, not a
    /// workload.
    IdIsTrustDomainOnly {
        /// The ID found in the certificate.
        id: SpiffeId,
    },
    /// No trust bundle is configured for the trust domain of the certificate's SPIFFE ID.
    UnknownTrustDomain {
        /// The trust domain the certificate claims.
        trust_domain: TrustDomain,
    },
    /// The chain does not lead to a root of the claimed trust domain (unknown issuer, bad
    /// signature, intermediate not a CA, ...).
    ChainInvalid {
        /// What failed, in words.
        reason: String,
    },
    /// A certificate of the chain has expired.
    Expired {
        /// The expired certificate's `notAfter`, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
        not_after: String,
    },
    /// A certificate of the chain is not valid yet (its `notBefore` is in the future).
    NotYetValid,
    /// The leaf certificate is a CA (basicConstraints `cA=true`).
    LeafIsCa,
    /// The leaf certificate's keyUsage lacks `digitalSignature`.
    MissingDigitalSignature,
    /// The leaf certificate's keyUsage has a bit an X.509-SVID leaf must not have.
    ForbiddenKeyUsage {
        /// The forbidden bit: `"keyCertSign"` or `"cRLSign"`.
        usage: &'static str,
    },
    /// The leaf certificate has no basicConstraints extension.
    MissingBasicConstraints,
    /// The leaf certificate has no keyUsage extension.
    MissingKeyUsage,
    /// A certificate's extendedKeyUsage does not allow the needed purpose (`serverAuth` for a
    /// server, `clientAuth` for a client).
    WrongExtendedKeyUsage,
    /// The chain is a valid X.509-SVID, but the identity policy does not accept its SPIFFE ID.
    NotAuthorized {
        /// The peer's (authenticated) SPIFFE ID.
        peer: SpiffeId,
        /// What the policy accepts, in words (the policy's `Display`).
        policy: String,
    },
    /// A certificate cannot be parsed, or the parsers disagree on its content.
    Malformed {
        /// What failed, in words.
        reason: String,
    },
}

impl VerifyError {
    /// Finds the `VerifyError` behind an error of a TLS handshake, if a SPIFFE verifier caused it.
    ///
    /// Walks the error and its sources, looking through the `std::io::Error` returned by
    /// tokio-rustls and through `rustls::Error::InvalidCertificate(CertificateError::Other(..))`.
    /// Returns `None` when the handshake failed for another reason (a network error, an alert
    /// sent by the peer, ...).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a VerifyError> {
        let mut current = Some(error);
        // Bounded, in case of a cyclic chain of sources.
        for _ in 0..32 {
            let e = current?;
            if let Some(found) = e.downcast_ref::<VerifyError>() {
                return Some(found);
            }
            if let Some(TlsError::NotAnSvid(found)) = e.downcast_ref::<TlsError>() {
                return Some(found);
            }
            if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
                e.downcast_ref::<rustls::Error>()
            {
                return other.0.downcast_ref::<VerifyError>();
            }
            current = match e.downcast_ref::<std::io::Error>() {
                // `io::Error::source` skips the wrapped error itself: take it directly.
                Some(io) => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        None
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::NoUriSan => f.write_str(
                "the certificate has no URI subjectAltName, so it carries no SPIFFE ID",
            ),
            VerifyError::MultipleUriSans { count } => write!(
                f,
                "the certificate has {count} URI subjectAltNames, but an X.509-SVID has exactly one"
            ),
            VerifyError::InvalidId(e) => write!(
                f,
                "the certificate's URI subjectAltName is not a valid SPIFFE ID: {e}"
            ),
            VerifyError::IdIsTrustDomainOnly { id } => write!(
                f,
                "the certificate's SPIFFE ID {id} has no path, so it names a trust domain, not a workload"
            ),
            VerifyError::UnknownTrustDomain { trust_domain } => write!(
                f,
                "no trust bundle is configured for trust domain {trust_domain}, which the certificate claims"
            ),
            VerifyError::ChainInvalid { reason } => {
                write!(f, "the certificate chain does not verify: {reason}")
            }
            VerifyError::Expired { not_after } => {
                write!(f, "the certificate chain has expired (not valid after {not_after})")
            }
            VerifyError::NotYetValid => {
                f.write_str("the certificate chain is not valid yet (notBefore is in the future)")
            }
            VerifyError::LeafIsCa => f.write_str(
                "the leaf certificate is a CA (basicConstraints cA=true), which an X.509-SVID leaf must not be",
            ),
            VerifyError::MissingDigitalSignature => {
                f.write_str("the leaf certificate's keyUsage lacks digitalSignature")
            }
            VerifyError::ForbiddenKeyUsage { usage } => write!(
                f,
                "the leaf certificate's keyUsage has {usage}, which an X.509-SVID leaf must not have"
            ),
            VerifyError::MissingBasicConstraints => {
                f.write_str("the leaf certificate has no basicConstraints extension")
            }
            VerifyError::MissingKeyUsage => {
                f.write_str("the leaf certificate has no keyUsage extension")
            }
            VerifyError::WrongExtendedKeyUsage => f.write_str(
                "the certificate's extendedKeyUsage does not allow this role (serverAuth for a server, clientAuth for a client)",
            ),
            VerifyError::NotAuthorized { peer, policy } => {
                write!(f, "peer {peer} is not authorized: the policy accepts {policy}")
            }
            VerifyError::Malformed { reason } => {
                write!(f, "the certificate is malformed: {reason}")
            }
        }
    }
}

impl std::error::Error for VerifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            VerifyError::InvalidId(e) => Some(e),
            _ => None,
        }
    }
}

/// Wraps a `VerifyError` the way the verifiers hand it to rustls, so that
/// [`VerifyError::find`] gets it back.
pub(crate) fn to_rustls_error(error: VerifyError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(error),
    )))
}

/// Our own certificate, key or trust bundle could not be loaded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// PEM input could not be decoded.
    Pem {
        /// What was being read: `"certificate chain"`, `"private key"` or `"trust bundle"`.
        what: &'static str,
        /// The decoder's complaint.
        reason: String,
    },
    /// The input holds no certificate.
    NoCertificate,
    /// The input holds no private key (PKCS#8, SEC1 or PKCS#1 PEM section).
    NoPrivateKey,
    /// The private key does not belong to the leaf certificate.
    KeyMismatch,
    /// Our own certificate chain is not a valid X.509-SVID.
    NotAnSvid(VerifyError),
    /// A trust bundle holds an unusable root certificate.
    Bundle {
        /// Which root and why, in words.
        reason: String,
    },
    /// A SPIFFE bundle document is not valid JSON or does not have the bundle's shape.
    Json {
        /// Where in the document and why, in words.
        reason: String,
    },
    /// A trust domain name (a bundle map key) is invalid.
    InvalidTrustDomain(SpiffeIdError),
    /// A certificate being loaded has already expired.
    Expired {
        /// Which certificate, in words.
        what: String,
        /// Its `notAfter`, as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
        not_after: String,
    },
    /// rustls refused the certificate or key.
    Rustls(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { what, reason } => {
                write!(f, "cannot decode the PEM {what}: {reason}")
            }
            TlsError::NoCertificate => f.write_str("no certificate found in the input"),
            TlsError::NoPrivateKey => f.write_str(
                "no private key found in the input (expected a PKCS#8, SEC1 or PKCS#1 PEM section)",
            ),
            TlsError::KeyMismatch => {
                f.write_str("the private key does not match the leaf certificate's public key")
            }
            TlsError::NotAnSvid(e) => write!(f, "the certificate is not a valid X.509-SVID: {e}"),
            TlsError::Bundle { reason } => write!(f, "invalid trust bundle: {reason}"),
            TlsError::Json { reason } => write!(f, "invalid SPIFFE bundle JSON: {reason}"),
            TlsError::InvalidTrustDomain(e) => write!(f, "invalid trust domain: {e}"),
            TlsError::Expired { what, not_after } => {
                write!(f, "{what} expired at {not_after}")
            }
            TlsError::Rustls(reason) => {
                write!(f, "rustls refused the certificate or key: {reason}")
            }
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::NotAnSvid(e) => Some(e),
            TlsError::InvalidTrustDomain(e) => Some(e),
            _ => None,
        }
    }
}
