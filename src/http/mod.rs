//! HTTP clients for balanced endpoints, over hyper-util.
//!
//! Two ways in:
//!
//! - [`Client::builder`](crate::Client::builder), the batteries-included client;
//! - [`EndpointClients`], a [`MakeEndpoint`](crate::balance::MakeEndpoint) made from *your*
//!   hyper-util builder, for your own `ServiceBuilder` stack.
//!
//! # Per-endpoint clients, logical authority
//!
//! Each endpoint gets its own pooled hyper-util client whose connector is pinned to the
//! endpoint's address ([`PinnedConnector`]). Requests keep the URI the caller wrote, so the
//! backend sees the logical `Host` (HTTP/1.1) or `:authority` (HTTP/2), e.g. `users`, not
//! `10.0.0.5:8080`. One shared client that rewrote URIs would get this wrong under HTTP/2, and
//! would pool every endpoint's connections under one key.
//!
//! A request whose URI is only a path (tonic's generated clients send `/pkg.Svc/Method`) gets
//! the configured [`Origin`]'s scheme and authority, or the endpoint's address if none is set.
//!
//! # Protocol
//!
//! Plaintext connections cannot negotiate HTTP/2, so the protocol is the client's choice:
//! HTTP/1.1 by default, HTTP/2 with prior knowledge (`http2_only`) for gRPC.

mod client;
mod connector;
mod endpoint;

pub use client::{Client, ClientBody, ClientBuilder};
pub use connector::{Conn, PinnedConnector};
pub use endpoint::{EndpointClient, EndpointClients, EndpointFuture, Origin};
