//! Trust bundles: the root certificates of one trust domain ([`TrustBundle`]) and bundles keyed
//! by trust domain ([`TrustBundleSet`]), loaded from PEM, DER or SPIFFE bundle JSON.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::Value;

use super::error::TlsError;
use super::x509;
use crate::identity::TrustDomain;

/// The JWK `use` of X.509 authorities in a SPIFFE bundle.
const X509_SVID_USE: &str = "x509-svid";

/// The root certificates (X.509 authorities) of one trust domain.
///
/// Peers claiming an ID of this trust domain are verified against these roots only. Every root
/// is checked when loaded: it must parse, be a CA (basicConstraints `cA=true`, and keyUsage, if
/// present, with `keyCertSign`) and not have expired. An expired root fails
/// [`from_pem`](TrustBundle::from_pem) and [`from_der`](TrustBundle::from_der) with
/// [`TlsError::Expired`]; in a SPIFFE bundle document it is left out with a warning instead,
/// since such documents come from machines that may not have pruned an old root yet, and failing
/// would also keep out the new roots the same document brings. A root that is not valid *yet* is
/// accepted, so that a new root can be published ahead of its use.
///
/// rustls-webpki ignores the dates of roots during verification, so a root that expires after
/// loading stays trusted until the bundle is reloaded: reload bundles before their roots expire.
///
/// Cloning is cheap (the roots are shared).
///
/// ```no_run
/// use proxyless::identity::TrustDomain;
/// use proxyless::tls::{TrustBundle, TrustBundleSet};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let td = TrustDomain::parse("example.org")?;
/// let bundle = TrustBundle::from_pem(td, &std::fs::read("bundle.pem")?)?;
/// let mut bundles = TrustBundleSet::new();
/// bundles.insert(bundle);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Arc<[CertificateDer<'static>]>,
    anchors: Arc<[TrustAnchor<'static>]>,
    sequence: Option<u64>,
    refresh_hint: Option<Duration>,
}

impl TrustBundle {
    /// Loads the roots of `trust_domain` from PEM: one or more `CERTIFICATE` sections (other
    /// sections are skipped).
    ///
    /// Fails with [`TlsError::Pem`] on undecodable PEM, [`TlsError::NoCertificate`] without a
    /// certificate, [`TlsError::Bundle`] for a root that is not a CA and [`TlsError::Expired`]
    /// for an expired root.
    pub fn from_pem(trust_domain: TrustDomain, pem: &[u8]) -> Result<Self, TlsError> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "trust bundle",
                reason: e.to_string(),
            })?;
        Self::from_der(trust_domain, ders)
    }

    /// Loads the roots of `trust_domain` from DER certificates, with the checks of
    /// [`TrustBundle::from_pem`]. Duplicate certificates are kept once.
    pub fn from_der(
        trust_domain: TrustDomain,
        ders: Vec<CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        if ders.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let now = x509::unix_now();
        let mut roots = Roots::default();
        for (i, der) in ders.into_iter().enumerate() {
            roots.add(
                &trust_domain,
                &format!("root {i}"),
                der,
                now,
                Expired::Reject,
            )?;
        }
        Ok(roots.into_bundle(trust_domain, None, None))
    }

    /// Loads the roots of `trust_domain` from a SPIFFE bundle document (JSON).
    ///
    /// The document is a JWK Set (SPIFFE Trust Domain and Bundle standard §4, X509-SVID standard
    /// §6): an object with a `keys` array, and optionally `spiffe_sequence` (a non-negative
    /// integer) and `spiffe_refresh_hint` (seconds). Each key with `"use": "x509-svid"` and a
    /// `kty` contributes the certificate in `x5c[0]` (standard base64 of DER; further `x5c`
    /// entries are ignored). Keys with another or no `use` (such as `jwt-svid`), without `kty`, or
    /// with a missing or empty `x5c` are skipped. `"keys": []` is valid and gives a bundle
    /// without roots, which trusts nobody of that trust domain.
    ///
    /// An expired root is left out (with a warning), not an error: see [`TrustBundle`].
    ///
    /// Fails with [`TlsError::Json`] on invalid JSON, duplicate object keys, a missing `keys`,
    /// a wrongly typed member or bad base64, and with [`TlsError::Bundle`] for a certificate that
    /// is not a usable CA.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, TlsError> {
        let document = parse_json(json)?;
        Self::from_json_value(trust_domain, &document, "", x509::unix_now())
    }

    /// Builds a bundle from a parsed bundle document; `at` prefixes JSON paths in errors.
    fn from_json_value(
        trust_domain: TrustDomain,
        document: &Value,
        at: &str,
        now: i64,
    ) -> Result<Self, TlsError> {
        let json_err = |reason: String| TlsError::Json {
            reason: format!("{at}{reason}"),
        };
        let Some(document) = document.as_object() else {
            return Err(json_err("the bundle is not a JSON object".to_owned()));
        };
        let sequence = match document.get("spiffe_sequence") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| {
                json_err("spiffe_sequence is not a non-negative integer".to_owned())
            })?),
        };
        let refresh_hint = match document.get("spiffe_refresh_hint") {
            None => None,
            Some(v) => Some(Duration::from_secs(v.as_u64().ok_or_else(|| {
                json_err("spiffe_refresh_hint is not a non-negative integer".to_owned())
            })?)),
        };
        let keys = document
            .get("keys")
            .ok_or_else(|| json_err("the bundle has no \"keys\" member".to_owned()))?
            .as_array()
            .ok_or_else(|| json_err("\"keys\" is not an array".to_owned()))?;

        let mut roots = Roots::default();
        for (i, key) in keys.iter().enumerate() {
            let Some(key) = key.as_object() else {
                return Err(json_err(format!("keys[{i}] is not a JSON object")));
            };
            // Only X.509 authorities with a key type are ours; anything else is skipped, as the
            // standard asks for unknown uses.
            if key.get("use").and_then(Value::as_str) != Some(X509_SVID_USE) {
                continue;
            }
            if key.get("kty").and_then(Value::as_str).is_none() {
                tracing::debug!(trust_domain = %trust_domain, key = i, "skipping an x509-svid key without kty");
                continue;
            }
            let first = match key.get("x5c") {
                None => None,
                Some(Value::Array(chain)) => chain.first(),
                Some(_) => return Err(json_err(format!("keys[{i}].x5c is not an array"))),
            };
            let Some(first) = first else {
                tracing::debug!(trust_domain = %trust_domain, key = i, "skipping an x509-svid key without x5c");
                continue;
            };
            let encoded = first
                .as_str()
                .ok_or_else(|| json_err(format!("keys[{i}].x5c[0] is not a string")))?;
            let der = decode_base64(encoded).map_err(|why| {
                json_err(format!("keys[{i}].x5c[0] is not standard base64: {why}"))
            })?;
            roots.add(
                &trust_domain,
                &format!("{at}keys[{i}].x5c[0]"),
                CertificateDer::from(der),
                now,
                Expired::Skip,
            )?;
        }
        Ok(roots.into_bundle(trust_domain, sequence, refresh_hint))
    }

    /// The trust domain whose roots these are.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates (DER), in load order. Empty only for a bundle document with no
    /// usable key.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle document's `spiffe_sequence`, if it was loaded from JSON that had one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// The bundle document's `spiffe_refresh_hint`, if it was loaded from JSON that had one.
    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    /// The roots as rustls-webpki trust anchors, in the order of [`TrustBundle::roots`].
    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

/// Prints the trust domain, the number of roots and the JSON metadata, not the certificates.
impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .field("sequence", &self.sequence)
            .field("refresh_hint", &self.refresh_hint)
            .finish()
    }
}

/// What to do with an expired root.
#[derive(Clone, Copy)]
enum Expired {
    /// Fail the whole bundle (PEM and DER: a configuration file to fix).
    Reject,
    /// Leave it out (SPIFFE bundle documents: distributed by machines, which may not have pruned
    /// an old root yet; failing would also keep out the new roots the same document brings).
    Skip,
}

/// Roots being collected for a bundle.
#[derive(Default)]
struct Roots {
    ders: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl Roots {
    /// Checks one root (`label` names it in errors) and adds it unless already present. An
    /// expired root is an error, or with [`Expired::Skip`] is left out with a warning.
    fn add(
        &mut self,
        trust_domain: &TrustDomain,
        label: &str,
        der: CertificateDer<'static>,
        now: i64,
        expired: Expired,
    ) -> Result<(), TlsError> {
        if self.ders.contains(&der) {
            return Ok(());
        }
        let bundle_err = |why: String| TlsError::Bundle {
            reason: format!("{label} of trust domain {trust_domain}: {why}"),
        };
        let cert = x509::parse(&der).map_err(bundle_err)?;
        x509::check_ca(&cert)
            .map_err(|why| bundle_err(format!("{} is unusable: {why}", x509::subject(&cert))))?;
        let not_after = x509::not_after(&cert);
        if not_after < now {
            let what = format!(
                "root certificate {} ({label} of trust domain {trust_domain})",
                x509::subject(&cert)
            );
            let not_after = x509::format_unix(not_after);
            return match expired {
                Expired::Reject => Err(TlsError::Expired { what, not_after }),
                Expired::Skip => {
                    tracing::warn!(%what, %not_after, "skipping an expired root certificate");
                    Ok(())
                }
            };
        }
        let anchor = webpki::anchor_from_trusted_cert(&der)
            .map_err(|e| bundle_err(format!("not usable as a trust anchor ({e})")))?
            .to_owned();
        self.ders.push(der);
        self.anchors.push(anchor);
        Ok(())
    }

    fn into_bundle(
        self,
        trust_domain: TrustDomain,
        sequence: Option<u64>,
        refresh_hint: Option<Duration>,
    ) -> TrustBundle {
        TrustBundle {
            trust_domain,
            roots: self.ders.into(),
            anchors: self.anchors.into(),
            sequence,
            refresh_hint,
        }
    }
}

/// Trust bundles keyed by trust domain: the local trust domain's and federated ones.
///
/// A peer is verified against the bundle of the trust domain its SPIFFE ID claims, and only that
/// one: roots are never pooled across trust domains, so one trust domain cannot vouch for
/// another's IDs. A peer of a trust domain without a bundle is refused.
///
/// For rotation, build a new set and swap it in whole (the verifiers read the set from a swap
/// cell), rather than mutating one in place.
#[derive(Clone, Debug, Default)]
pub struct TrustBundleSet {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustBundleSet {
    /// An empty set, which trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a bundle, replacing (and returning) the one held for the same trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) -> Option<TrustBundle> {
        self.bundles.insert(bundle.trust_domain.clone(), bundle)
    }

    /// Removes and returns the bundle of a trust domain.
    pub fn remove(&mut self, trust_domain: &TrustDomain) -> Option<TrustBundle> {
        self.bundles.remove(trust_domain)
    }

    /// The bundle of a trust domain.
    pub fn get(&self, trust_domain: &TrustDomain) -> Option<&TrustBundle> {
        self.bundles.get(trust_domain)
    }

    /// The trust domains with a bundle, in order.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> + '_ {
        self.bundles.keys()
    }

    /// The bundles, ordered by trust domain.
    pub fn iter(&self) -> impl Iterator<Item = &TrustBundle> + '_ {
        self.bundles.values()
    }

    /// How many trust domains have a bundle.
    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    /// Whether no trust domain has a bundle.
    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }

    /// Loads a SPIFFE bundle document (JSON) for one trust domain, as
    /// [`TrustBundle::from_spiffe_json`] does, and replaces the bundle held for that trust
    /// domain. On error the set is unchanged.
    pub fn add_spiffe_json(
        &mut self,
        trust_domain: TrustDomain,
        json: &[u8],
    ) -> Result<(), TlsError> {
        self.insert(TrustBundle::from_spiffe_json(trust_domain, json)?);
        Ok(())
    }

    /// Loads a bundle map: `{"trust_domains": {"<trust domain>": <bundle document>, ...}}`.
    ///
    /// Keys are trust domain names (`example.org`) or trust domain IDs (`spiffe://example.org`);
    /// each value is a bundle document as for [`TrustBundle::from_spiffe_json`]. Duplicate keys
    /// (anywhere in the document, and also two keys naming the same trust domain) are rejected,
    /// as is the whole map when one bundle is invalid. Members other than `trust_domains` are
    /// ignored.
    pub fn from_spiffe_bundle_map(json: &[u8]) -> Result<Self, TlsError> {
        let document = parse_json(json)?;
        let map = document
            .as_object()
            .ok_or_else(|| TlsError::Json {
                reason: "the bundle map is not a JSON object".to_owned(),
            })?
            .get("trust_domains")
            .ok_or_else(|| TlsError::Json {
                reason: "the bundle map has no \"trust_domains\" member".to_owned(),
            })?
            .as_object()
            .ok_or_else(|| TlsError::Json {
                reason: "\"trust_domains\" is not a JSON object".to_owned(),
            })?;
        let now = x509::unix_now();
        let mut set = Self::new();
        for (key, document) in map {
            let trust_domain = TrustDomain::parse(key).map_err(TlsError::InvalidTrustDomain)?;
            let at = format!("trust_domains[{key:?}].");
            let bundle = TrustBundle::from_json_value(trust_domain.clone(), document, &at, now)?;
            if set.insert(bundle).is_some() {
                return Err(TlsError::Json {
                    reason: format!(
                        "trust domain {trust_domain} appears twice in \"trust_domains\""
                    ),
                });
            }
        }
        Ok(set)
    }
}

/// Parses JSON, rejecting duplicate object keys (which `serde_json::Value` would silently merge).
fn parse_json(json: &[u8]) -> Result<Value, TlsError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| TlsError::Json {
        reason: e.to_string(),
    })?;
    if let Some(key) = first_duplicate_key(json) {
        return Err(TlsError::Json {
            reason: format!("duplicate key {key:?} in a JSON object"),
        });
    }
    Ok(value)
}

/// The first key that appears twice in one JSON object of `json`, if any.
///
/// `json` must already be known to be valid JSON (serde_json parsed it): this only tracks nesting
/// and object keys, decoding each key with serde_json so that escapes compare equal
/// (`"a"` and `"\u0061"` are the same key).
fn first_duplicate_key(json: &[u8]) -> Option<String> {
    enum Frame {
        Object {
            keys: HashSet<String>,
            expect_key: bool,
        },
        Array,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while let Some(&byte) = json.get(i) {
        match byte {
            b'{' => stack.push(Frame::Object {
                keys: HashSet::new(),
                expect_key: true,
            }),
            b'[' => stack.push(Frame::Array),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => {
                if let Some(Frame::Object { expect_key, .. }) = stack.last_mut() {
                    *expect_key = true;
                }
            }
            b'"' => {
                let end = string_end(json, i)?;
                if let Some(Frame::Object { keys, expect_key }) = stack.last_mut()
                    && *expect_key
                {
                    *expect_key = false;
                    let key: String = serde_json::from_slice(json.get(i..=end)?).ok()?;
                    if keys.contains(&key) {
                        return Some(key);
                    }
                    keys.insert(key);
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the `"` closing the JSON string that opens at `start`.
fn string_end(json: &[u8], start: usize) -> Option<usize> {
    let mut i = start.checked_add(1)?;
    loop {
        match json.get(i)? {
            b'\\' => i = i.checked_add(2)?,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
}

/// Decodes standard base64 (RFC 4648 §4: `A-Z a-z 0-9 + /`, `=` padding required, no
/// whitespace, unused bits zero), as JWK `x5c` entries are encoded (RFC 7517 §4.7).
fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn sextet(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() {
        return Err("the string is empty".to_owned());
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "its length {} is not a multiple of 4 (padding missing?)",
            bytes.len()
        ));
    }
    let groups = bytes.len() / 4;
    let mut out = Vec::with_capacity(groups * 3);
    for (g, group) in bytes.chunks_exact(4).enumerate() {
        let last = g + 1 == groups;
        let mut acc: u32 = 0;
        let mut padding = 0usize;
        for (j, &c) in group.iter().enumerate() {
            let offset = g * 4 + j;
            if c == b'=' {
                if !last || j < 2 {
                    return Err(format!("misplaced '=' at offset {offset}"));
                }
                padding += 1;
                acc <<= 6;
                continue;
            }
            if padding > 0 {
                return Err(format!("data after '=' at offset {offset}"));
            }
            let v = sextet(c).ok_or_else(|| {
                format!("invalid character {:?} at offset {offset}", char::from(c))
            })?;
            acc = (acc << 6) | v;
        }
        let [_, b0, b1, b2] = acc.to_be_bytes();
        match padding {
            0 => out.extend_from_slice(&[b0, b1, b2]),
            1 if b2 == 0 => out.extend_from_slice(&[b0, b1]),
            2 if b1 == 0 && b2 == 0 => out.push(b0),
            _ => return Err("non-zero bits before the padding".to_owned()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_standard_base64() {
        assert_eq!(decode_base64("TWFu").unwrap(), b"Man");
        assert_eq!(decode_base64("TWE=").unwrap(), b"Ma");
        assert_eq!(decode_base64("TQ==").unwrap(), b"M");
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
    }

    #[test]
    fn rejects_bad_base64() {
        for bad in [
            "", "TWF", "TWE", "T===", "TQ=A", "TQ==TWFu", "TW-u", "TW_u", "TW u", "TWFu\n", "TR==",
            "TWF=", "é===",
        ] {
            assert!(decode_base64(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn finds_duplicate_keys_at_any_depth() {
        assert_eq!(first_duplicate_key(br#"{"a":1,"b":{"a":2}}"#), None);
        assert_eq!(first_duplicate_key(br#"[{"a":1},{"a":1}]"#), None);
        assert_eq!(first_duplicate_key(br#"{"k":"a","a":"k"}"#), None);
        assert_eq!(
            first_duplicate_key(br#"{"a":1,"a":2}"#),
            Some("a".to_owned())
        );
        assert_eq!(
            first_duplicate_key(br#"{"x":[{"q\"":1,"q\"":2}]}"#),
            Some("q\"".to_owned())
        );
        assert_eq!(
            first_duplicate_key(br#"{"a":1,"\u0061":2}"#),
            Some("a".to_owned())
        );
        assert_eq!(
            first_duplicate_key(br#"{"a":{"b":[1,{"c":"}"}]},"a":0}"#),
            Some("a".to_owned())
        );
    }
}
