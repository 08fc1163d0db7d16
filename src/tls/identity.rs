//! A workload's identity material, held in swap cells so it can rotate without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{SharedBundles, Svid, TrustBundleSet};
use crate::identity::SpiffeId;

/// The verified SPIFFE ID of a connection's peer.
///
/// Servers find it in each request's extensions (the client that called), clients in each
/// response's extensions (the endpoint that answered).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity(pub SpiffeId);

/// What a workload presents and trusts: its own [`Svid`] and the [`TrustBundleSet`] it verifies
/// peers against. `Clone`: clones share the same cells.
///
/// New handshakes read the current material; connections already established keep theirs.
/// Replace the material with [`rotate_svid`](Identity::rotate_svid) and
/// [`rotate_bundles`](Identity::rotate_bundles) (or let a reloading source do it).
#[derive(Clone, Debug)]
pub struct Identity {
    svid: Arc<ArcSwap<Svid>>,
    bundles: SharedBundles,
}

impl Identity {
    /// Material made of `svid` and `bundles`.
    pub fn new(svid: Svid, bundles: TrustBundleSet) -> Self {
        Self {
            svid: Arc::new(ArcSwap::from_pointee(svid)),
            bundles: Arc::new(ArcSwap::from_pointee(bundles)),
        }
    }

    /// The current SVID.
    pub fn svid(&self) -> Arc<Svid> {
        self.svid.load_full()
    }

    /// The current trust bundles.
    pub fn bundles(&self) -> Arc<TrustBundleSet> {
        self.bundles.load_full()
    }

    /// This workload's SPIFFE ID (the current SVID's).
    pub fn spiffe_id(&self) -> SpiffeId {
        self.svid.load().spiffe_id().clone()
    }

    /// Presents `svid` from the next handshake on.
    pub fn rotate_svid(&self, svid: Svid) {
        tracing::debug!(
            id = %svid.spiffe_id(),
            serial = %svid.serial_hex(),
            "identity: new SVID"
        );
        self.svid.store(Arc::new(svid));
    }

    /// Verifies peers against `bundles` from the next handshake on.
    pub fn rotate_bundles(&self, bundles: TrustBundleSet) {
        tracing::debug!(trust_domains = bundles.len(), "identity: new trust bundles");
        self.bundles.store(Arc::new(bundles));
    }

    pub(crate) fn shared_bundles(&self) -> SharedBundles {
        Arc::clone(&self.bundles)
    }

    /// A certificate resolver for rustls clients and servers that presents the current SVID.
    pub(crate) fn resolver(&self) -> Arc<SvidResolver> {
        Arc::new(SvidResolver {
            svid: Arc::clone(&self.svid),
        })
    }
}

/// Presents the current SVID in every handshake, client or server side.
#[derive(Debug)]
pub(crate) struct SvidResolver {
    svid: Arc<ArcSwap<Svid>>,
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.svid.load().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.svid.load().certified_key())
    }
}
