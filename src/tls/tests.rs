//! Tests of the `tls` module with certificates made by rcgen: verification rules, bundles, SVID
//! loading and real TLS 1.3 handshakes over an in-memory pipe.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair, KeyUsagePurpose as Ku, SanType,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A CA of one trust domain (a root, or an intermediate when made by `Ca::intermediate`).
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    td: TrustDomain,
}

fn ca_params(td: &str, common_name: &str, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign];
    params.subject_alt_names = vec![uri(&format!("spiffe://{td}"))];
    params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
    params.not_after = not_after;
    params
}

impl Ca {
    /// A root CA for `td`, valid for a day.
    fn new(td: &str) -> Self {
        Self::named(td, &format!("{td} root"))
    }

    /// A root CA for `td` with the given common name.
    fn named(td: &str, common_name: &str) -> Self {
        let params = ca_params(
            td,
            common_name,
            OffsetDateTime::now_utc() + Duration::days(1),
        );
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
            td: TrustDomain::parse(td).unwrap(),
        }
    }

    /// An intermediate CA signed by this CA.
    fn intermediate(&self) -> Ca {
        let params = ca_params(
            self.td.as_str(),
            &format!("{} intermediate", self.td),
            OffsetDateTime::now_utc() + Duration::days(1),
        );
        Ca {
            issuer: CertifiedIssuer::signed_by(params, KeyPair::generate().unwrap(), &self.issuer)
                .unwrap(),
            td: self.td.clone(),
        }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::from_der(self.td.clone(), vec![self.der()]).unwrap()
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(Ia5String::try_from(s).unwrap())
}

/// What a leaf certificate should look like; `Default` is a valid X.509-SVID without a URI.
struct Leaf {
    sans: Vec<SanType>,
    key_usages: Vec<Ku>,
    is_ca: IsCa,
    ekus: Vec<Eku>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Default for Leaf {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            sans: Vec::new(),
            key_usages: vec![Ku::DigitalSignature, Ku::KeyEncipherment],
            is_ca: IsCa::ExplicitNoCa,
            ekus: vec![Eku::ServerAuth, Eku::ClientAuth],
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::hours(1),
        }
    }
}

impl Leaf {
    /// A valid SVID leaf for `id`.
    fn svid(id: &str) -> Self {
        Self {
            sans: vec![uri(id)],
            ..Self::default()
        }
    }
}

/// An issued leaf certificate and its key.
struct Issued {
    cert: CertificateDer<'static>,
    pem: String,
    key: KeyPair,
}

impl Issued {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key.serialize_der()).into()
    }
}

fn issue(ca: &Ca, leaf: Leaf) -> Issued {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = leaf.sans;
    params.key_usages = leaf.key_usages;
    params.is_ca = leaf.is_ca;
    params.extended_key_usages = leaf.ekus;
    params.not_before = leaf.not_before;
    params.not_after = leaf.not_after;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    Issued {
        cert: cert.der().clone(),
        pem: cert.pem(),
        key,
    }
}

fn bundles(cas: &[&Ca]) -> TrustBundleSet {
    let mut set = TrustBundleSet::new();
    for ca in cas {
        set.insert(ca.bundle());
    }
    set
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

/// Verifies a leaf alone (no intermediates) as a server, under `AnyInTrustedDomains`.
fn verify_leaf(leaf: &Issued, set: &TrustBundleSet) -> Result<SpiffeId, VerifyError> {
    verify_svid(
        &leaf.cert,
        &[],
        set,
        Usage::Server,
        &IdentityPolicy::AnyInTrustedDomains,
        UnixTime::now(),
    )
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn shared(set: TrustBundleSet) -> SharedBundles {
    Arc::new(ArcSwap::from_pointee(set))
}

fn localhost() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into())
}

const WEB: &str = "spiffe://a.test/ns/prod/sa/web";
const DB: &str = "spiffe://a.test/ns/prod/sa/db";

// ---------------------------------------------------------------------------
// verify_svid: accepted chains
// ---------------------------------------------------------------------------

#[test]
fn accepts_a_valid_svid_for_server_and_client_usage() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let set = bundles(&[&ca]);
    for usage in [Usage::Server, Usage::Client] {
        let got = verify_svid(
            &leaf.cert,
            &[],
            &set,
            usage,
            &IdentityPolicy::Exact(id(WEB)),
            UnixTime::now(),
        );
        assert_eq!(got, Ok(id(WEB)), "{usage:?}");
    }
}

#[test]
fn server_verifier_accepts_an_ip_addressed_dial() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let verifier = SpiffeServerVerifier::new(
        shared(bundles(&[&ca])),
        IdentityPolicy::Exact(id(WEB)),
        ring(),
    );
    let verdict = verifier.verify_server_cert(&leaf.cert, &[], &localhost(), &[], UnixTime::now());
    assert!(verdict.is_ok(), "{verdict:?}");
    assert_eq!(verifier.policy(), &IdentityPolicy::Exact(id(WEB)));

    // Ignoring the name must not mean ignoring the chain: a forged chain dialed by IP fails on
    // the chain, not on the (absent) name.
    let forger = Ca::new("a.test");
    let forged = issue(&forger, Leaf::svid(WEB));
    let error = verifier
        .verify_server_cert(&forged.cert, &[], &localhost(), &[], UnixTime::now())
        .unwrap_err();
    assert!(
        matches!(
            VerifyError::find(&error),
            Some(VerifyError::ChainInvalid { .. })
        ),
        "{error:?}"
    );
}

#[test]
fn client_verifier_accepts_a_client_svid() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let verifier = SpiffeClientVerifier::new(
        shared(bundles(&[&ca])),
        IdentityPolicy::AnyInTrustedDomains,
        ring(),
        true,
    );
    assert!(verifier.offer_client_auth());
    assert!(verifier.client_auth_mandatory());
    assert!(verifier.root_hint_subjects().is_empty());
    let verdict = verifier.verify_client_cert(&leaf.cert, &[], UnixTime::now());
    assert!(verdict.is_ok(), "{verdict:?}");
}

#[test]
fn accepts_a_leaf_without_extended_key_usage() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            ekus: vec![],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(verify_leaf(&leaf, &bundles(&[&ca])), Ok(id(WEB)));
}

#[test]
fn accepts_a_chain_through_an_intermediate_and_needs_it() {
    let root = Ca::new("a.test");
    let intermediate = root.intermediate();
    let leaf = issue(&intermediate, Leaf::svid(WEB));
    let set = bundles(&[&root]);
    let policy = IdentityPolicy::AnyInTrustedDomains;
    let with = verify_svid(
        &leaf.cert,
        &[intermediate.der()],
        &set,
        Usage::Client,
        &policy,
        UnixTime::now(),
    );
    assert_eq!(with, Ok(id(WEB)));
    let without = verify_leaf(&leaf, &set);
    assert!(
        matches!(without, Err(VerifyError::ChainInvalid { .. })),
        "{without:?}"
    );
}

#[test]
fn other_san_types_beside_the_uri_are_allowed() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            sans: vec![
                SanType::DnsName(Ia5String::try_from("web.prod.svc").unwrap()),
                uri(WEB),
                SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ],
            ..Leaf::default()
        },
    );
    assert_eq!(verify_leaf(&leaf, &bundles(&[&ca])), Ok(id(WEB)));
}

// ---------------------------------------------------------------------------
// verify_svid: refused chains, one test per rule
// ---------------------------------------------------------------------------

#[test]
fn refuses_two_uri_sans() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            sans: vec![uri(WEB), uri(DB)],
            ..Leaf::default()
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::MultipleUriSans { count: 2 })
    );
}

#[test]
fn refuses_a_leaf_without_uri_san() {
    let ca = Ca::new("a.test");
    let dns_only = issue(
        &ca,
        Leaf {
            sans: vec![SanType::DnsName(Ia5String::try_from("web.a.test").unwrap())],
            ..Leaf::default()
        },
    );
    let set = bundles(&[&ca]);
    assert_eq!(verify_leaf(&dns_only, &set), Err(VerifyError::NoUriSan));
    // Without any subjectAltName extension at all.
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "no san");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![Ku::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let got = verify_svid(
        cert.der(),
        &[],
        &set,
        Usage::Server,
        &IdentityPolicy::AnyInTrustedDomains,
        UnixTime::now(),
    );
    assert_eq!(got, Err(VerifyError::NoUriSan));
}

#[test]
fn refuses_an_id_without_path() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid("spiffe://a.test"));
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::IdIsTrustDomainOnly {
            id: id("spiffe://a.test")
        })
    );
}

#[test]
fn refuses_a_non_spiffe_uri() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid("https://a.test/ns/prod/sa/web"));
    let got = verify_leaf(&leaf, &bundles(&[&ca]));
    assert!(
        matches!(
            got,
            Err(VerifyError::InvalidId(SpiffeIdError::WrongScheme { .. }))
        ),
        "{got:?}"
    );
}

#[test]
fn refuses_a_ca_leaf() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
            key_usages: vec![Ku::DigitalSignature],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::LeafIsCa)
    );
}

#[test]
fn refuses_key_cert_sign_and_crl_sign_on_the_leaf() {
    let ca = Ca::new("a.test");
    let set = bundles(&[&ca]);
    let cert_sign = issue(
        &ca,
        Leaf {
            key_usages: vec![Ku::DigitalSignature, Ku::KeyCertSign],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&cert_sign, &set),
        Err(VerifyError::ForbiddenKeyUsage {
            usage: "keyCertSign"
        })
    );
    let crl_sign = issue(
        &ca,
        Leaf {
            key_usages: vec![Ku::DigitalSignature, Ku::CrlSign],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&crl_sign, &set),
        Err(VerifyError::ForbiddenKeyUsage { usage: "cRLSign" })
    );
}

#[test]
fn refuses_a_leaf_without_digital_signature() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            key_usages: vec![Ku::KeyEncipherment],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::MissingDigitalSignature)
    );
}

#[test]
fn refuses_a_leaf_without_key_usage_or_basic_constraints() {
    let ca = Ca::new("a.test");
    let set = bundles(&[&ca]);
    let no_ku = issue(
        &ca,
        Leaf {
            key_usages: vec![],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(verify_leaf(&no_ku, &set), Err(VerifyError::MissingKeyUsage));
    let no_bc = issue(
        &ca,
        Leaf {
            is_ca: IsCa::NoCa,
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&no_bc, &set),
        Err(VerifyError::MissingBasicConstraints)
    );
}

#[test]
fn refuses_the_wrong_extended_key_usage_for_the_role() {
    let ca = Ca::new("a.test");
    let set = bundles(&[&ca]);
    let server_only = issue(
        &ca,
        Leaf {
            ekus: vec![Eku::ServerAuth],
            ..Leaf::svid(WEB)
        },
    );
    let policy = IdentityPolicy::AnyInTrustedDomains;
    let now = UnixTime::now();
    assert_eq!(
        verify_svid(&server_only.cert, &[], &set, Usage::Server, &policy, now),
        Ok(id(WEB))
    );
    assert_eq!(
        verify_svid(&server_only.cert, &[], &set, Usage::Client, &policy, now),
        Err(VerifyError::WrongExtendedKeyUsage)
    );
}

#[test]
fn refuses_an_unknown_trust_domain() {
    let a = Ca::new("a.test");
    let c = Ca::new("c.test");
    let leaf = issue(&c, Leaf::svid("spiffe://c.test/x"));
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&a])),
        Err(VerifyError::UnknownTrustDomain {
            trust_domain: td("c.test")
        })
    );
}

#[test]
fn refuses_a_leaf_signed_by_another_trust_domains_ca() {
    // b.test's CA issues a certificate claiming an ID of a.test; both bundles are trusted.
    let a = Ca::new("a.test");
    let b = Ca::new("b.test");
    let forged = issue(&b, Leaf::svid(WEB));
    let got = verify_leaf(&forged, &bundles(&[&a, &b]));
    assert!(
        matches!(&got, Err(VerifyError::ChainInvalid { reason }) if reason.contains("a.test")),
        "{got:?}"
    );
}

#[test]
fn refuses_a_leaf_signed_by_an_impostor_ca_with_the_same_name() {
    let genuine = Ca::named("a.test", "shared name");
    let impostor = Ca::named("a.test", "shared name");
    let forged = issue(&impostor, Leaf::svid(WEB));
    let got = verify_leaf(&forged, &bundles(&[&genuine]));
    assert!(
        matches!(got, Err(VerifyError::ChainInvalid { .. })),
        "{got:?}"
    );
}

#[test]
fn refuses_an_expired_leaf() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            not_before: rcgen::date_time_ymd(2019, 1, 1),
            not_after: rcgen::date_time_ymd(2020, 1, 1),
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::Expired {
            not_after: "2020-01-01T00:00:00Z".to_owned()
        })
    );
}

#[test]
fn refuses_a_leaf_that_is_not_valid_yet() {
    let ca = Ca::new("a.test");
    let now = OffsetDateTime::now_utc();
    let leaf = issue(
        &ca,
        Leaf {
            not_before: now + Duration::hours(1),
            not_after: now + Duration::hours(2),
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::NotYetValid)
    );
}

#[test]
fn an_expired_leaf_that_also_breaks_a_leaf_rule_reports_the_rule() {
    let ca = Ca::new("a.test");
    let leaf = issue(
        &ca,
        Leaf {
            not_before: rcgen::date_time_ymd(2019, 1, 1),
            not_after: rcgen::date_time_ymd(2020, 1, 1),
            key_usages: vec![Ku::KeyEncipherment],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        verify_leaf(&leaf, &bundles(&[&ca])),
        Err(VerifyError::MissingDigitalSignature)
    );
}

#[test]
fn refuses_valid_but_unexpected_ids_under_each_policy() {
    let a = Ca::new("a.test");
    let b = Ca::new("b.test");
    let set = bundles(&[&a, &b]);
    let web = issue(&a, Leaf::svid(WEB));
    let other_td = issue(&b, Leaf::svid("spiffe://b.test/ns/prod/sa/web"));
    let now = UnixTime::now();
    let check = |leaf: &Issued, policy: &IdentityPolicy| {
        verify_svid(&leaf.cert, &[], &set, Usage::Server, policy, now)
    };

    let exact = IdentityPolicy::Exact(id(DB));
    assert_eq!(
        check(&web, &exact),
        Err(VerifyError::NotAuthorized {
            peer: id(WEB),
            policy: format!("exactly {DB}"),
        })
    );
    let one_of = IdentityPolicy::OneOf(vec![id(DB), id("spiffe://a.test/ns/prod/sa/cache")]);
    assert!(matches!(
        check(&web, &one_of),
        Err(VerifyError::NotAuthorized { ref peer, .. }) if *peer == id(WEB)
    ));
    let member_of = IdentityPolicy::MemberOf(td("a.test"));
    assert_eq!(check(&web, &member_of), Ok(id(WEB)));
    assert_eq!(
        check(&other_td, &member_of),
        Err(VerifyError::NotAuthorized {
            peer: id("spiffe://b.test/ns/prod/sa/web"),
            policy: "any ID in trust domain a.test".to_owned(),
        })
    );
    assert!(check(&other_td, &IdentityPolicy::AnyInTrustedDomains).is_ok());
    assert!(check(&web, &IdentityPolicy::OneOf(vec![])).is_err());
}

#[test]
fn refuses_garbage_without_panicking() {
    let ca = Ca::new("a.test");
    let set = bundles(&[&ca]);
    let valid = issue(&ca, Leaf::svid(WEB)).cert;
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x30],
        vec![0x30, 0x82, 0xff, 0xff],
        b"not a certificate".to_vec(),
        valid.as_ref()[..valid.len() / 2].to_vec(),
        [valid.as_ref(), &[0u8]].concat(),
    ];
    for input in inputs {
        let got = verify_leaf(
            &Issued {
                cert: CertificateDer::from(input.clone()),
                pem: String::new(),
                key: KeyPair::generate().unwrap(),
            },
            &set,
        );
        assert!(
            matches!(got, Err(VerifyError::Malformed { .. })),
            "{input:?}: {got:?}"
        );
    }
}

#[test]
fn refuses_everything_when_the_bundle_has_no_roots() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let mut set = TrustBundleSet::new();
    set.add_spiffe_json(td("a.test"), br#"{"keys": []}"#)
        .unwrap();
    let got = verify_leaf(&leaf, &set);
    assert!(
        matches!(got, Err(VerifyError::ChainInvalid { .. })),
        "{got:?}"
    );
}

#[test]
fn verifiers_follow_swapped_bundles() {
    let a = Ca::new("a.test");
    let leaf = issue(&a, Leaf::svid(WEB));
    let cell = shared(TrustBundleSet::new());
    let verifier = SpiffeServerVerifier::new(cell.clone(), IdentityPolicy::Exact(id(WEB)), ring());
    let before = verifier.verify_server_cert(&leaf.cert, &[], &localhost(), &[], UnixTime::now());
    let before = before.unwrap_err();
    assert!(matches!(
        VerifyError::find(&before),
        Some(VerifyError::UnknownTrustDomain { .. })
    ));
    cell.store(Arc::new(bundles(&[&a])));
    let after = verifier.verify_server_cert(&leaf.cert, &[], &localhost(), &[], UnixTime::now());
    assert!(after.is_ok(), "{after:?}");
}

#[test]
fn reads_the_id_of_a_verified_certificate() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    assert_eq!(spiffe_id_of_verified(&leaf.cert), Ok(id(WEB)));
}

#[test]
fn errors_read_as_sentences() {
    let e = VerifyError::NotAuthorized {
        peer: id(WEB),
        policy: IdentityPolicy::Exact(id(DB)).to_string(),
    };
    assert_eq!(
        e.to_string(),
        format!("peer {WEB} is not authorized: the policy accepts exactly {DB}")
    );
    let e = TlsError::NotAnSvid(VerifyError::LeafIsCa);
    assert!(
        e.to_string()
            .starts_with("the certificate is not a valid X.509-SVID: ")
    );
    assert!(std::error::Error::source(&e).is_some());
}

// ---------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------

#[test]
fn policies_allow_what_they_name() {
    let web = id(WEB);
    let db = id(DB);
    let foreign = id("spiffe://b.test/ns/prod/sa/web");
    assert!(IdentityPolicy::Exact(web.clone()).allows(&web));
    assert!(!IdentityPolicy::Exact(web.clone()).allows(&db));
    let one_of = IdentityPolicy::OneOf(vec![web.clone(), foreign.clone()]);
    assert!(one_of.allows(&web) && one_of.allows(&foreign) && !one_of.allows(&db));
    assert!(!IdentityPolicy::OneOf(vec![]).allows(&web));
    let member = IdentityPolicy::MemberOf(td("a.test"));
    assert!(member.allows(&web) && member.allows(&db) && !member.allows(&foreign));
    assert!(IdentityPolicy::AnyInTrustedDomains.allows(&foreign));
}

// ---------------------------------------------------------------------------
// Bundles
// ---------------------------------------------------------------------------

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn parses_a_spiffe_bundle_document() {
    let ca1 = Ca::new("a.test");
    let ca2 = Ca::new("a.test");
    let json = format!(
        r#"{{
            "spiffe_sequence": 7,
            "spiffe_refresh_hint": 300,
            "keys": [
                {{"kty": "EC", "use": "x509-svid", "x5c": ["{ca1}"]}},
                {{"kty": "EC", "use": "jwt-svid", "kid": "k1", "crv": "P-256", "x": "AA", "y": "AA"}},
                {{"kty": "EC", "use": "x509-svid"}},
                {{"kty": "EC", "use": "x509-svid", "x5c": []}},
                {{"kty": "EC", "use": "x509-svid-v2", "x5c": ["not base64!"]}},
                {{"kty": "EC", "x5c": ["not base64!"]}},
                {{"use": "x509-svid", "x5c": ["not base64!"]}},
                {{"kty": "RSA", "use": "x509-svid", "x5c": ["{ca2}", "ignored"]}}
            ]
        }}"#,
        ca1 = base64(&ca1.der()),
        ca2 = base64(&ca2.der()),
    );
    let bundle = TrustBundle::from_spiffe_json(td("a.test"), json.as_bytes()).unwrap();
    assert_eq!(bundle.trust_domain(), &td("a.test"));
    assert_eq!(bundle.roots(), [ca1.der(), ca2.der()]);
    assert_eq!(bundle.sequence(), Some(7));
    assert_eq!(
        bundle.refresh_hint(),
        Some(std::time::Duration::from_secs(300))
    );

    // Certificates of either root verify against it.
    let mut set = TrustBundleSet::new();
    set.add_spiffe_json(td("a.test"), json.as_bytes()).unwrap();
    assert_eq!(
        verify_leaf(&issue(&ca2, Leaf::svid(WEB)), &set),
        Ok(id(WEB))
    );
    assert_eq!(verify_leaf(&issue(&ca1, Leaf::svid(DB)), &set), Ok(id(DB)));
}

#[test]
fn an_empty_key_list_is_a_bundle_without_roots() {
    let bundle = TrustBundle::from_spiffe_json(td("a.test"), br#"{"keys": []}"#).unwrap();
    assert!(bundle.roots().is_empty());
    assert_eq!(bundle.sequence(), None);
    assert_eq!(bundle.refresh_hint(), None);
    // add_spiffe_json replaces what was there.
    let ca = Ca::new("a.test");
    let mut set = bundles(&[&ca]);
    set.add_spiffe_json(td("a.test"), br#"{"keys": []}"#)
        .unwrap();
    assert!(set.get(&td("a.test")).unwrap().roots().is_empty());
}

#[test]
fn refuses_bad_bundle_documents() {
    let json_error = |json: &str| match TrustBundle::from_spiffe_json(td("a.test"), json.as_bytes())
    {
        Err(TlsError::Json { reason }) => reason,
        other => panic!("{json}: expected a JSON error, got {other:?}"),
    };
    let bad_b64 = json_error(r#"{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["MII*"]}]}"#);
    assert!(bad_b64.contains("keys[0].x5c[0]"), "{bad_b64}");
    json_error(r#"{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": ["TWFu TWFu"]}]}"#);
    json_error(r#"{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": [42]}]}"#);
    json_error(r#"{"keys": [{"kty": "EC", "use": "x509-svid", "x5c": "TWFu"}]}"#);
    json_error(r#"{"keys": ["not an object"]}"#);
    json_error(r#"{"spiffe_sequence": 1}"#);
    json_error(r#"{"keys": {}}"#);
    json_error(r#"{"keys": [], "spiffe_sequence": -1}"#);
    json_error(r#"{"keys": [], "spiffe_refresh_hint": 1.5}"#);
    json_error(r#"{"keys": [], "keys": []}"#);
    json_error(r#"[]"#);
    json_error(r#"{"keys": []"#);
    json_error("");

    // Base64 of something that is not a certificate: a bundle error, not a JSON one.
    let not_der = format!(
        r#"{{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}}"#,
        base64(b"hello")
    );
    assert!(matches!(
        TrustBundle::from_spiffe_json(td("a.test"), not_der.as_bytes()),
        Err(TlsError::Bundle { .. })
    ));
}

#[test]
fn refuses_non_ca_roots_and_expired_pem_roots_and_skips_expired_json_roots() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let got = TrustBundle::from_der(td("a.test"), vec![leaf.cert.clone()]);
    assert!(matches!(got, Err(TlsError::Bundle { .. })), "{got:?}");
    let in_json = format!(
        r#"{{"keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{}"]}}]}}"#,
        base64(&leaf.cert)
    );
    let got = TrustBundle::from_spiffe_json(td("a.test"), in_json.as_bytes());
    assert!(matches!(got, Err(TlsError::Bundle { .. })), "{got:?}");

    let mut params = ca_params("a.test", "old root", rcgen::date_time_ymd(2020, 1, 1));
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    let expired = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    match TrustBundle::from_pem(td("a.test"), expired.pem().as_bytes()) {
        Err(TlsError::Expired { what, not_after }) => {
            assert!(what.contains("old root"), "{what}");
            assert_eq!(not_after, "2020-01-01T00:00:00Z");
        }
        other => panic!("expected Expired, got {other:?}"),
    }

    // In a bundle document, an expired root is left out and the others still load.
    let current = Ca::new("a.test");
    let json = format!(
        r#"{{"keys": [
            {{"kty": "EC", "use": "x509-svid", "x5c": ["{old}"]}},
            {{"kty": "EC", "use": "x509-svid", "x5c": ["{new}"]}}
        ]}}"#,
        old = base64(expired.der()),
        new = base64(&current.der()),
    );
    let bundle = TrustBundle::from_spiffe_json(td("a.test"), json.as_bytes()).unwrap();
    assert_eq!(bundle.roots(), [current.der()]);
}

#[test]
fn loads_roots_from_pem() {
    let a1 = Ca::new("a.test");
    let a2 = Ca::new("a.test");
    let pem = format!(
        "{}\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}{}",
        a1.issuer.pem(),
        a2.issuer.pem(),
        a1.issuer.pem()
    );
    let bundle = TrustBundle::from_pem(td("a.test"), pem.as_bytes()).unwrap();
    // The duplicate is kept once; the key section is skipped.
    assert_eq!(bundle.roots(), [a1.der(), a2.der()]);
    assert!(format!("{bundle:?}").contains("roots: 2"));

    assert_eq!(
        TrustBundle::from_pem(td("a.test"), b"").unwrap_err(),
        TlsError::NoCertificate
    );
    assert_eq!(
        TrustBundle::from_der(td("a.test"), vec![]).unwrap_err(),
        TlsError::NoCertificate
    );
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TrustBundle::from_pem(td("a.test"), broken),
        Err(TlsError::Pem { .. })
    ));
}

#[test]
fn parses_a_bundle_map_with_two_trust_domains() {
    let a = Ca::new("a.test");
    let b = Ca::new("b.test");
    let json = format!(
        r#"{{"trust_domains": {{
            "a.test": {{"spiffe_sequence": 1, "keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{a}"]}}]}},
            "spiffe://b.test": {{"spiffe_refresh_hint": 60, "keys": [{{"kty": "EC", "use": "x509-svid", "x5c": ["{b}"]}}]}}
        }}}}"#,
        a = base64(&a.der()),
        b = base64(&b.der()),
    );
    let set = TrustBundleSet::from_spiffe_bundle_map(json.as_bytes()).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(
        set.trust_domains().cloned().collect::<Vec<_>>(),
        [td("a.test"), td("b.test")]
    );
    assert_eq!(set.get(&td("a.test")).unwrap().roots(), [a.der()]);
    assert_eq!(set.get(&td("b.test")).unwrap().sequence(), None);
    assert_eq!(verify_leaf(&issue(&a, Leaf::svid(WEB)), &set), Ok(id(WEB)));
    let b_id = "spiffe://b.test/ns/x/sa/y";
    assert_eq!(
        verify_leaf(&issue(&b, Leaf::svid(b_id)), &set),
        Ok(id(b_id))
    );
}

#[test]
fn refuses_bad_bundle_maps() {
    let map = |json: &str| TrustBundleSet::from_spiffe_bundle_map(json.as_bytes());
    let empty = r#"{"keys": []}"#;
    assert!(map(r#"{"trust_domains": {}}"#).unwrap().is_empty());
    for bad in [
        format!(r#"{{"trust_domains": {{"a.test": {empty}, "a.test": {empty}}}}}"#),
        format!(r#"{{"trust_domains": {{"a.test": {empty}, "spiffe://a.test": {empty}}}}}"#),
        r#"{"trust_domains": {"a.test": {"keys": 1}}}"#.to_owned(),
        r#"{"trust_domains": {"a.test": []}}"#.to_owned(),
        r#"{"trust_domains": []}"#.to_owned(),
        r#"{"bundles": {}}"#.to_owned(),
    ] {
        assert!(
            matches!(map(&bad), Err(TlsError::Json { .. })),
            "{bad}: {:?}",
            map(&bad)
        );
    }
    assert!(matches!(
        map(&format!(r#"{{"trust_domains": {{"A.test": {empty}}}}}"#)),
        Err(TlsError::InvalidTrustDomain(_))
    ));
}

#[test]
fn a_bundle_set_inserts_replaces_and_removes() {
    let a1 = Ca::new("a.test");
    let a2 = Ca::new("a.test");
    let mut set = TrustBundleSet::new();
    assert!(set.is_empty());
    assert!(set.insert(a1.bundle()).is_none());
    let old = set.insert(a2.bundle()).unwrap();
    assert_eq!(old.roots(), [a1.der()]);
    assert_eq!(set.iter().count(), 1);
    assert!(set.remove(&td("a.test")).is_some());
    assert!(set.get(&td("a.test")).is_none());
}

// ---------------------------------------------------------------------------
// Svid
// ---------------------------------------------------------------------------

#[test]
fn loads_an_svid_from_pem() {
    let root = Ca::new("a.test");
    let intermediate = root.intermediate();
    let leaf = issue(&intermediate, Leaf::svid(WEB));
    let chain = format!("{}{}", leaf.pem, intermediate.issuer.pem());
    let svid = Svid::from_pem(chain.as_bytes(), leaf.key.serialize_pem().as_bytes()).unwrap();
    assert_eq!(svid.spiffe_id(), &id(WEB));
    assert_eq!(svid.chain(), [leaf.cert.clone(), intermediate.der()]);
    assert!(svid.not_after() > std::time::SystemTime::now());
    assert!(svid.not_before() < std::time::SystemTime::now());
    let serial = svid.serial_hex();
    assert!(!serial.is_empty() && serial.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(Arc::ptr_eq(
        &svid.certified_key(),
        &svid.clone().certified_key()
    ));
    let debug = format!("{svid:?}");
    assert!(debug.contains(WEB) && debug.contains(&serial), "{debug}");
    assert!(!debug.contains("key:"), "{debug}");
}

#[test]
fn refuses_a_key_that_is_not_the_leafs() {
    let ca = Ca::new("a.test");
    let leaf = issue(&ca, Leaf::svid(WEB));
    let other = KeyPair::generate().unwrap();
    assert_eq!(
        Svid::from_pem(leaf.pem.as_bytes(), other.serialize_pem().as_bytes()).unwrap_err(),
        TlsError::KeyMismatch
    );
}

#[test]
fn refuses_an_svid_that_breaks_a_leaf_rule() {
    let ca = Ca::new("a.test");
    let ca_leaf = issue(
        &ca,
        Leaf {
            is_ca: IsCa::Ca(BasicConstraints::Unconstrained),
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        Svid::from_der(vec![ca_leaf.cert.clone()], ca_leaf.key_der()).unwrap_err(),
        TlsError::NotAnSvid(VerifyError::LeafIsCa)
    );
    let no_path = issue(&ca, Leaf::svid("spiffe://a.test"));
    assert!(matches!(
        Svid::from_der(vec![no_path.cert.clone()], no_path.key_der()),
        Err(TlsError::NotAnSvid(VerifyError::IdIsTrustDomainOnly { .. }))
    ));
    let no_ds = issue(
        &ca,
        Leaf {
            key_usages: vec![Ku::KeyAgreement],
            ..Leaf::svid(WEB)
        },
    );
    assert_eq!(
        Svid::from_der(vec![no_ds.cert.clone()], no_ds.key_der()).unwrap_err(),
        TlsError::NotAnSvid(VerifyError::MissingDigitalSignature)
    );
    // A non-CA certificate in the intermediate position.
    let good = issue(&ca, Leaf::svid(WEB));
    let other_leaf = issue(&ca, Leaf::svid(DB));
    assert!(matches!(
        Svid::from_der(
            vec![good.cert.clone(), other_leaf.cert.clone()],
            good.key_der()
        ),
        Err(TlsError::NotAnSvid(VerifyError::ChainInvalid { .. }))
    ));
}

#[test]
fn refuses_an_expired_svid_and_missing_parts() {
    let ca = Ca::new("a.test");
    let expired = issue(
        &ca,
        Leaf {
            not_before: rcgen::date_time_ymd(2019, 1, 1),
            not_after: rcgen::date_time_ymd(2020, 1, 1),
            ..Leaf::svid(WEB)
        },
    );
    assert!(matches!(
        Svid::from_der(vec![expired.cert.clone()], expired.key_der()),
        Err(TlsError::Expired { ref not_after, .. }) if not_after == "2020-01-01T00:00:00Z"
    ));
    let leaf = issue(&ca, Leaf::svid(WEB));
    let key_pem = leaf.key.serialize_pem();
    assert_eq!(
        Svid::from_pem(b"", key_pem.as_bytes()).unwrap_err(),
        TlsError::NoCertificate
    );
    assert_eq!(
        Svid::from_pem(leaf.pem.as_bytes(), leaf.pem.as_bytes()).unwrap_err(),
        TlsError::NoPrivateKey
    );
    assert!(matches!(
        Svid::from_pem(
            leaf.pem.as_bytes(),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ),
        Err(TlsError::Rustls(_))
    ));
}

// ---------------------------------------------------------------------------
// Real handshakes (TLS 1.3 over an in-memory pipe, server name = an IP address)
// ---------------------------------------------------------------------------

struct Peer {
    svid: Svid,
    key: PrivateKeyDer<'static>,
}

fn peer(ca: &Ca, spiffe_id: &str) -> Peer {
    let leaf = issue(ca, Leaf::svid(spiffe_id));
    Peer {
        svid: Svid::from_der(vec![leaf.cert.clone()], leaf.key_der()).unwrap(),
        key: leaf.key_der(),
    }
}

fn client_config(
    bundles: &SharedBundles,
    expect: IdentityPolicy,
    me: Option<&Peer>,
) -> Arc<rustls::ClientConfig> {
    let provider = ring();
    let verifier = SpiffeServerVerifier::new(bundles.clone(), expect, provider.clone());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match me {
        Some(me) => builder
            .with_client_auth_cert(me.svid.chain().to_vec(), me.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

fn server_config(bundles: &SharedBundles, me: &Peer, mandatory: bool) -> Arc<rustls::ServerConfig> {
    let provider = ring();
    let verifier = SpiffeClientVerifier::new(
        bundles.clone(),
        IdentityPolicy::AnyInTrustedDomains,
        provider.clone(),
        mandatory,
    );
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            me.svid.certified_key(),
        )));
    Arc::new(config)
}

type ClientStream = tokio_rustls::client::TlsStream<tokio::io::DuplexStream>;
type ServerStream = tokio_rustls::server::TlsStream<tokio::io::DuplexStream>;

/// Runs both sides of a handshake; each side's result.
async fn handshake(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
) -> (std::io::Result<ClientStream>, std::io::Result<ServerStream>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let connect = tokio_rustls::TlsConnector::from(client).connect(localhost(), client_io);
    let accept = tokio_rustls::TlsAcceptor::from(server).accept(server_io);
    tokio::join!(connect, accept)
}

#[tokio::test]
async fn mutual_tls_handshake_by_ip_exchanges_spiffe_ids() {
    let ca = Ca::new("a.test");
    let server = peer(&ca, DB);
    let client = peer(&ca, WEB);
    let set = shared(bundles(&[&ca]));
    let (client_side, server_side) = handshake(
        client_config(&set, IdentityPolicy::Exact(id(DB)), Some(&client)),
        server_config(&set, &server, true),
    )
    .await;
    let mut client_side = client_side.expect("client handshake");
    let mut server_side = server_side.expect("server handshake");

    // The server learns the client's identity from the verified chain.
    let presented = server_side
        .get_ref()
        .1
        .peer_certificates()
        .expect("client cert");
    assert_eq!(spiffe_id_of_verified(&presented[0]), Ok(id(WEB)));
    let seen_by_client = client_side
        .get_ref()
        .1
        .peer_certificates()
        .expect("server cert");
    assert_eq!(spiffe_id_of_verified(&seen_by_client[0]), Ok(id(DB)));
    assert_eq!(
        client_side.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // And data flows.
    client_side.write_all(b"ping").await.unwrap();
    client_side.flush().await.unwrap();
    let mut buf = [0u8; 4];
    server_side.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn handshake_fails_for_an_unexpected_server_id() {
    let ca = Ca::new("a.test");
    let server = peer(&ca, "spiffe://a.test/ns/prod/sa/impostor");
    let client = peer(&ca, WEB);
    let set = shared(bundles(&[&ca]));
    let (client_side, server_side) = handshake(
        client_config(&set, IdentityPolicy::Exact(id(DB)), Some(&client)),
        server_config(&set, &server, true),
    )
    .await;
    let error = client_side.expect_err("client must refuse the server");

    // Downcast by hand: io::Error -> rustls::Error -> OtherError -> VerifyError ...
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .expect("a rustls error inside the io::Error");
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = rustls_error
    else {
        panic!("unexpected rustls error {rustls_error:?}");
    };
    let by_hand = other
        .0
        .downcast_ref::<VerifyError>()
        .expect("a VerifyError");
    let expected = VerifyError::NotAuthorized {
        peer: id("spiffe://a.test/ns/prod/sa/impostor"),
        policy: format!("exactly {DB}"),
    };
    assert_eq!(by_hand, &expected);
    // ... and with the helper.
    assert_eq!(VerifyError::find(&error), Some(&expected));

    // The server sees the client's alert, which is not a verification error of its own.
    let server_error = server_side.expect_err("server must see the failure");
    assert_eq!(VerifyError::find(&server_error), None);
}

#[tokio::test]
async fn server_refuses_a_client_of_an_untrusted_domain_or_without_a_certificate() {
    let a = Ca::new("a.test");
    let c = Ca::new("c.test");
    let server = peer(&a, DB);
    let stranger = peer(&c, "spiffe://c.test/ns/x/sa/y");
    // The client trusts both domains, the server only its own.
    let client_bundles = shared(bundles(&[&a, &c]));
    let server_bundles = shared(bundles(&[&a]));

    let (client_side, server_side) = handshake(
        client_config(
            &client_bundles,
            IdentityPolicy::Exact(id(DB)),
            Some(&stranger),
        ),
        server_config(&server_bundles, &server, true),
    )
    .await;
    let server_error = server_side.expect_err("server must refuse the client");
    assert_eq!(
        VerifyError::find(&server_error),
        Some(&VerifyError::UnknownTrustDomain {
            trust_domain: td("c.test")
        })
    );
    // TLS 1.3 clients finish first; the refusal arrives on the first read.
    if let Ok(mut stream) = client_side {
        let mut buf = [0u8; 1];
        assert!(stream.read(&mut buf).await.is_err());
    }

    // No client certificate at all, while one is mandatory.
    let (_, server_side) = handshake(
        client_config(&server_bundles, IdentityPolicy::Exact(id(DB)), None),
        server_config(&server_bundles, &server, true),
    )
    .await;
    assert!(server_side.is_err());
}

#[tokio::test]
async fn permissive_server_lets_a_client_without_certificate_in() {
    let a = Ca::new("a.test");
    let server = peer(&a, DB);
    let set = shared(bundles(&[&a]));
    let (client_side, server_side) = handshake(
        client_config(&set, IdentityPolicy::Exact(id(DB)), None),
        server_config(&set, &server, false),
    )
    .await;
    assert!(client_side.is_ok());
    let server_side = server_side.expect("permissive server handshake");
    assert!(server_side.get_ref().1.peer_certificates().is_none());
}
