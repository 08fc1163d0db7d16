//! [`Svid`]: one's own X.509-SVID, the certificate chain and private key presented to peers.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{TlsError, VerifyError};
use super::x509;
use crate::identity::SpiffeId;

/// One's own X.509-SVID: a certificate chain (leaf first, then intermediates) and the leaf's
/// private key.
///
/// Loading checks what a peer will check, so a bad SVID fails here rather than in every
/// handshake: the leaf follows every X.509-SVID leaf rule (exactly one URI subjectAltName with a
/// SPIFFE ID that has a path, basicConstraints `cA=false`, keyUsage with `digitalSignature` and
/// without `keyCertSign`/`cRLSign`), every further certificate is a CA, the leaf has not expired,
/// and the key belongs to the leaf. The chain is not verified against a trust bundle (peers do
/// that), and a `notBefore` in the future is accepted, to tolerate clock skew right after
/// issuance.
///
/// Cloning is cheap. `Debug` never prints the key.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svid = proxyless::tls::Svid::from_pem(
///     &std::fs::read("svid.pem")?,
///     &std::fs::read("svid_key.pem")?,
/// )?;
/// println!("I am {} (serial {})", svid.spiffe_id(), svid.serial_hex());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Svid {
    id: SpiffeId,
    certified: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
    serial: String,
}

impl Svid {
    /// Loads an SVID from PEM: `chain_pem` holds the leaf then any intermediates as
    /// `CERTIFICATE` sections, `key_pem` the leaf's private key (PKCS#8, SEC1 or PKCS#1; the first
    /// key section is used).
    ///
    /// Fails with [`TlsError::Pem`], [`TlsError::NoCertificate`] or [`TlsError::NoPrivateKey`]
    /// on bad input, [`TlsError::NotAnSvid`] when the chain breaks an X.509-SVID rule,
    /// [`TlsError::Expired`] when the leaf has expired, and [`TlsError::KeyMismatch`] when the key
    /// is not the leaf's.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem {
                what: "certificate chain",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey,
            e => TlsError::Pem {
                what: "private key",
                reason: e.to_string(),
            },
        })?;
        Self::from_der(chain, key)
    }

    /// Loads an SVID from DER (leaf first), with the checks of [`Svid::from_pem`].
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        Self::from_der_at(chain, key, x509::unix_now())
    }

    fn from_der_at(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        now: i64,
    ) -> Result<Self, TlsError> {
        let Some((leaf_der, rest)) = chain.split_first() else {
            return Err(TlsError::NoCertificate);
        };
        let leaf = x509::parse(leaf_der)
            .map_err(|reason| TlsError::NotAnSvid(VerifyError::Malformed { reason }))?;
        let (id, _) = x509::spiffe_id(&leaf).map_err(TlsError::NotAnSvid)?;
        x509::check_leaf(&leaf, &id).map_err(TlsError::NotAnSvid)?;
        for (i, der) in rest.iter().enumerate() {
            let position = i + 1;
            let cert = x509::parse(der).map_err(|why| {
                TlsError::NotAnSvid(VerifyError::Malformed {
                    reason: format!("certificate {position} of the chain: {why}"),
                })
            })?;
            x509::check_ca(&cert).map_err(|why| {
                TlsError::NotAnSvid(VerifyError::ChainInvalid {
                    reason: format!("certificate {position} of the chain cannot sign: {why}"),
                })
            })?;
        }
        let not_before = x509::not_before(&leaf);
        let not_after = x509::not_after(&leaf);
        if not_after < now {
            return Err(TlsError::Expired {
                what: format!("the X.509-SVID of {id}"),
                not_after: x509::format_unix(not_after),
            });
        }
        let serial = x509::serial_hex(&leaf);

        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch
            }
            e => TlsError::Rustls(e.to_string()),
        })?;
        Ok(Self {
            id,
            certified: Arc::new(certified),
            not_before,
            not_after,
            serial,
        })
    }

    /// The SPIFFE ID in the leaf certificate.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    /// The certificate chain (DER), leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The leaf's `notBefore`.
    pub fn not_before(&self) -> SystemTime {
        x509::system_time_from_unix(self.not_before)
    }

    /// The leaf's `notAfter`: renew well before it (SPIRE and Istio renew at half-life).
    pub fn not_after(&self) -> SystemTime {
        x509::system_time_from_unix(self.not_after)
    }

    /// The leaf's serial number as lowercase hex without leading zero bytes, for logs.
    pub fn serial_hex(&self) -> String {
        self.serial.clone()
    }

    /// The chain and signing key, as rustls certificate resolvers hand them out. The same `Arc`
    /// for every call on one `Svid` (and its clones).
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }
}

/// Prints the ID, serial, validity and chain length; never the key.
impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.id)
            .field("serial", &self.serial)
            .field("not_before", &x509::format_unix(self.not_before))
            .field("not_after", &x509::format_unix(self.not_after))
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}
