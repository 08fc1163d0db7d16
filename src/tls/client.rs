//! Client-side mTLS for the balancer's per-endpoint connections.
//!
//! Each endpoint's connector gets its own rustls client configuration: TLS 1.3 only, ALPN `h2`
//! and `http/1.1` (the server's choice decides the HTTP version), the workload's current SVID
//! presented, session resumption off (a resumed handshake would skip verification), and a
//! verifier that accepts the server only if it proves the identity discovery gave for the
//! endpoint ([`IdentityPolicy::Exact`]). Endpoints without an expected identity use plaintext,
//! unless [`ClientTls::strict`] demands mTLS everywhere, verified against
//! [`ClientTls::policy`] (by default, any identity in a trusted trust domain).
//!
//! The TLS server name is the endpoint's IP address: SVIDs carry no DNS names and the verifier
//! checks the SPIFFE ID instead (as Linkerd and Istio do). The verified peer identity is put in
//! every response's extensions as a [`PeerIdentity`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::rt::{Read, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tokio_rustls::client::TlsStream;

use super::{
    Identity, IdentityPolicy, PeerIdentity, SpiffeServerVerifier, TlsError, spiffe_id_of_verified,
};
use crate::BoxError;
use crate::discover::Endpoint;
use crate::http::Conn;

/// How the balancer's connections use mTLS; give it to
/// [`ClientBuilder::tls`](crate::http::ClientBuilder::tls) or
/// [`EndpointClients::tls`](crate::http::EndpointClients::tls).
#[derive(Clone, Debug)]
pub struct ClientTls {
    identity: Identity,
    strict: bool,
    policy: IdentityPolicy,
}

impl ClientTls {
    /// mTLS with `identity` for every endpoint that has an expected identity; plaintext for the
    /// others.
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            strict: false,
            policy: IdentityPolicy::AnyInTrustedDomains,
        }
    }

    /// Demands mTLS with every endpoint, also those discovery gave no identity for.
    pub fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Sets which server identities are accepted from endpoints without an expected identity,
    /// in strict mode (default: any identity of a trusted trust domain).
    pub fn policy(mut self, policy: IdentityPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The workload's identity material.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The TLS settings for one endpoint, or `None` for plaintext.
    pub(crate) fn for_endpoint(&self, endpoint: &Endpoint) -> Option<Arc<EndpointTls>> {
        let policy = match endpoint.identity() {
            Some(expected) => IdentityPolicy::Exact(expected.clone()),
            None if self.strict => self.policy.clone(),
            None => return None,
        };
        let connector = self.connector(policy);
        if let Err(error) = &connector {
            tracing::warn!(endpoint = %endpoint.addr(), %error, "mTLS configuration failed");
        }
        Some(Arc::new(EndpointTls {
            addr: endpoint.addr(),
            connector,
        }))
    }

    fn connector(&self, policy: IdentityPolicy) -> Result<tokio_rustls::TlsConnector, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = SpiffeServerVerifier::new(
            self.identity.shared_bundles(),
            policy,
            Arc::clone(&provider),
        );
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(self.identity.resolver());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

/// One endpoint's TLS client settings.
pub(crate) struct EndpointTls {
    addr: SocketAddr,
    connector: Result<tokio_rustls::TlsConnector, TlsError>,
}

impl std::fmt::Debug for EndpointTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointTls")
            .field("addr", &self.addr)
            .field("ready", &self.connector.is_ok())
            .finish()
    }
}

impl EndpointTls {
    /// Runs the mTLS handshake over `io`.
    pub(crate) async fn handshake<T>(&self, io: T) -> Result<Conn<T>, BoxError>
    where
        T: Read + Write + Connection + Unpin + Send + 'static,
    {
        let connector = self.connector.as_ref().map_err(|e| Box::new(e.clone()))?;
        let server_name = ServerName::IpAddress(self.addr.ip().into());
        let stream = connector
            .connect(server_name, TokioIo::new(io))
            .await
            .map_err(|e| handshake_error(self.addr, e))?;
        let session = stream.get_ref().1;
        let peer = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| spiffe_id_of_verified(leaf).ok())
            .map(PeerIdentity);
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        tracing::debug!(endpoint = %self.addr, peer = ?peer, h2, "mTLS handshake done");
        Ok(Conn::tls(TlsConn {
            io: TokioIo::new(stream),
            peer,
            h2,
        }))
    }
}

/// Keeps the verification reason (a [`VerifyError`](super::VerifyError)) in the error chain.
fn handshake_error(addr: SocketAddr, error: io::Error) -> BoxError {
    let reason = super::VerifyError::find(&error)
        .map(|e| e.to_string())
        .unwrap_or_else(|| error.to_string());
    Box::new(io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("mTLS handshake with {addr} failed: {reason}"),
    ))
}

/// An established mTLS connection.
#[derive(Debug)]
pub(crate) struct TlsConn<T> {
    io: TokioIo<TlsStream<TokioIo<T>>>,
    peer: Option<PeerIdentity>,
    h2: bool,
}

impl<T: Connection> TlsConn<T> {
    pub(crate) fn connected(&self) -> Connected {
        let mut connected = self.io.inner().get_ref().0.inner().connected();
        if self.h2 {
            connected = connected.negotiated_h2();
        }
        if let Some(peer) = &self.peer {
            connected = connected.extra(peer.clone());
        }
        connected
    }
}

impl<T> TlsConn<T> {
    pub(crate) fn io_mut(&mut self) -> &mut TokioIo<TlsStream<TokioIo<T>>> {
        &mut self.io
    }

    pub(crate) fn io(&self) -> &TokioIo<TlsStream<TokioIo<T>>> {
        &self.io
    }
}
