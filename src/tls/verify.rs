//! Verification of a peer's X.509-SVID ([`verify_svid`]) and the rustls verifiers built on it
//! ([`SpiffeServerVerifier`] for clients, [`SpiffeClientVerifier`] for servers).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, SignatureVerificationAlgorithm, UnixTime};

use super::bundle::TrustBundleSet;
use super::error::{VerifyError, to_rustls_error};
use super::policy::IdentityPolicy;
use super::x509;
use crate::identity::{SpiffeId, TrustDomain};

/// The role the peer's certificate must be valid for (its extendedKeyUsage, if present).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Usage {
    /// The peer is a server: `serverAuth`.
    Server,
    /// The peer is a client: `clientAuth`.
    Client,
}

/// Bundles shared with a rotation task, which swaps in a whole new set.
pub(crate) type SharedBundles = Arc<ArcSwap<TrustBundleSet>>;

/// Verifies a peer certificate chain as an X.509-SVID and returns the peer's SPIFFE ID.
///
/// Signatures are checked with the ring provider's algorithms; see [`verify_svid_with`] for the
/// order of checks.
// Used by the connector and acceptor built on this module; the verifiers call
#[cfg(test)]
pub(crate) fn verify_svid(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    usage: Usage,
    policy: &IdentityPolicy,
    now: UnixTime,
) -> Result<SpiffeId, VerifyError> {
    let provider = rustls::crypto::ring::default_provider();
    verify_svid_with(
        end_entity,
        intermediates,
        bundles,
        usage,
        policy,
        now,
        provider.signature_verification_algorithms.all,
    )
}

/// [`verify_svid`] with the given signature algorithms. The order of checks, where the first
/// failure decides the error:
///
/// 1. The leaf parses and has exactly one URI subjectAltName holding a valid SPIFFE ID.
/// 2. The ID's trust domain selects its bundle from `bundles`.
/// 3. rustls-webpki verifies the chain against that bundle's roots only, for `usage`
///    (extendedKeyUsage, if present, must allow the role), without any name check. Errors other
///    than the validity period end verification here; a validity error is held back until the
///    leaf rules have run.
/// 4. The X.509-SVID leaf rules (basicConstraints, keyUsage, non-empty path).
/// 5. The held-back validity error ([`VerifyError::Expired`], [`VerifyError::NotYetValid`]).
/// 6. The policy ([`VerifyError::NotAuthorized`]).
pub(crate) fn verify_svid_with(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &TrustBundleSet,
    usage: Usage,
    policy: &IdentityPolicy,
    now: UnixTime,
    algorithms: &[&dyn SignatureVerificationAlgorithm],
) -> Result<SpiffeId, VerifyError> {
    // 1. The claimed identity.
    let leaf = x509::parse(end_entity).map_err(|reason| VerifyError::Malformed { reason })?;
    let (id, uri) = x509::spiffe_id(&leaf)?;

    // 2. The bundle of the claimed trust domain, and no other.
    let trust_domain = id.trust_domain();
    let bundle = bundles
        .get(trust_domain)
        .ok_or_else(|| VerifyError::UnknownTrustDomain {
            trust_domain: trust_domain.clone(),
        })?;
    if bundle.anchors().is_empty() {
        return Err(VerifyError::ChainInvalid {
            reason: format!("the trust bundle of {trust_domain} holds no root certificate"),
        });
    }

    // 3. The chain.
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| VerifyError::Malformed {
        reason: format!("rustls-webpki cannot parse the leaf ({e:?})"),
    })?;
    let result = match usage {
        Usage::Server => ee.verify_for_usage(
            algorithms,
            bundle.anchors(),
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        ),
        Usage::Client => ee.verify_for_usage(
            algorithms,
            bundle.anchors(),
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        ),
    };
    let held_back = match result {
        Ok(_) => None,
        Err(e) => match chain_error(e, trust_domain) {
            ChainError::Validity(e) => Some(e),
            ChainError::Fatal(e) => return Err(e),
        },
    };
    // Both parsers must read the same single URI from the signed certificate.
    let mut webpki_uris = ee.valid_uri_names();
    if webpki_uris.next() != Some(uri) || webpki_uris.next().is_some() {
        return Err(VerifyError::Malformed {
            reason: "x509-parser and rustls-webpki disagree on the URI subjectAltName".to_owned(),
        });
    }

    // 4. The leaf rules rustls-webpki does not check.
    x509::check_leaf(&leaf, &id)?;

    // 5. Dates.
    if let Some(e) = held_back {
        return Err(e);
    }

    // 6. Authorization.
    if !policy.allows(&id) {
        return Err(VerifyError::NotAuthorized {
            peer: id,
            policy: policy.to_string(),
        });
    }
    Ok(id)
}

/// A rustls-webpki error, sorted.
enum ChainError {
    /// A certificate is outside its validity period: reported after the leaf rules.
    Validity(VerifyError),
    /// Anything else: reported at once.
    Fatal(VerifyError),
}

// The deprecated variants are matched for completeness; rustls-webpki 0.103 returns the
// `*Context` forms.
#[allow(deprecated)]
fn chain_error(error: webpki::Error, trust_domain: &TrustDomain) -> ChainError {
    use webpki::Error as E;
    let fatal = |reason: String| ChainError::Fatal(VerifyError::ChainInvalid { reason });
    match error {
        E::CertExpired { not_after, .. } => {
            let secs = i64::try_from(not_after.as_secs()).unwrap_or(i64::MAX);
            ChainError::Validity(VerifyError::Expired {
                not_after: x509::format_unix(secs),
            })
        }
        E::CertNotValidYet { .. } => ChainError::Validity(VerifyError::NotYetValid),
        E::CaUsedAsEndEntity => ChainError::Fatal(VerifyError::LeafIsCa),
        E::RequiredEkuNotFound | E::RequiredEkuNotFoundContext(_) | E::EmptyEkuExtension => {
            ChainError::Fatal(VerifyError::WrongExtendedKeyUsage)
        }
        E::UnknownIssuer => fatal(format!(
            "no path leads to a root of trust domain {trust_domain} (unknown issuer)"
        )),
        E::InvalidSignatureForPublicKey => fatal(format!(
            "a signature does not verify on the way to a root of trust domain {trust_domain}"
        )),
        E::EndEntityUsedAsCa => fatal("an issuing certificate is not a CA".to_owned()),
        other => fatal(format!(
            "rustls-webpki refused it against the roots of trust domain {trust_domain} ({other:?})"
        )),
    }
}

/// What both rustls verifiers share: the bundles, the policy and the signature algorithms.
#[derive(Debug)]
struct SvidChecker {
    bundles: SharedBundles,
    policy: IdentityPolicy,
    provider: Arc<CryptoProvider>,
}

impl SvidChecker {
    /// Verifies a chain as an SVID for `usage`, reading the bundles current at this handshake.
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: Usage,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let bundles = self.bundles.load();
        verify_svid_with(
            end_entity,
            intermediates,
            &bundles,
            usage,
            &self.policy,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .map(drop)
        .map_err(to_rustls_error)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls `ServerCertVerifier` for SPIFFE: used by a client to verify the server's X.509-SVID.
///
/// One verifier per expected identity (per endpoint): the policy is fixed at construction, since
/// rustls passes a verifier only the `ServerName`, which cannot carry a SPIFFE ID. The server name
/// is ignored: SVIDs hold a URI and no DNS/IP names, so dialing an IP address is fine. Bundles
/// are read from the swap cell on every handshake.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    checker: SvidChecker,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        bundles: SharedBundles,
        policy: IdentityPolicy,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            checker: SvidChecker {
                bundles,
                policy,
                provider,
            },
        }
    }

    /// The identity policy the server must satisfy.
    #[cfg(test)]
    pub(crate) fn policy(&self) -> &IdentityPolicy {
        &self.checker.policy
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.checker
            .verify(end_entity, intermediates, Usage::Server, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checker.schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        None
    }
}

/// A rustls `ClientCertVerifier` for SPIFFE: used by a server to verify clients' X.509-SVIDs.
///
/// With `mandatory`, a client without a certificate is refused during the handshake; without it
/// (permissive mode), such a client is let in and the connection simply has no peer certificate,
/// while a client that does present one must still pass verification. Sends no CA names in its
/// certificate request.
#[derive(Debug)]
pub(crate) struct SpiffeClientVerifier {
    checker: SvidChecker,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(
        bundles: SharedBundles,
        policy: IdentityPolicy,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Self {
        Self {
            checker: SvidChecker {
                bundles,
                policy,
                provider,
            },
            mandatory,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.checker
            .verify(end_entity, intermediates, Usage::Client, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.checker.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.checker.schemes()
    }
}

/// The SPIFFE ID of a certificate that has **already been verified** (for example the first of
/// `peer_certificates()` after a handshake with one of the verifiers above): only the URI
/// subjectAltName rules are applied, no chain or leaf rule.
pub(crate) fn spiffe_id_of_verified(
    end_entity: &CertificateDer<'_>,
) -> Result<SpiffeId, VerifyError> {
    let leaf = x509::parse(end_entity).map_err(|reason| VerifyError::Malformed { reason })?;
    x509::spiffe_id(&leaf).map(|(id, _)| id)
}
