//! The service mesh inside the client: discovery, P2C/PeakEWMA balancing, typed errors and live
//! endpoint state, as tower layers around hyper and tonic clients, with no sidecar.
//!
//! # Quick start
//!
//! ```no_run
//! # #[tokio::main]
//! # async fn main() -> Result<(), proxyless::BoxError> {
//! let client = proxyless::Client::builder()
//!     .discover(proxyless::discover::fixed(["127.0.0.1:8081", "127.0.0.1:8082"])?)
//!     .build()?; // Clone + tower::Service; invalid settings are an error here
//! let rsp = client.get("http://users/profile").await?;
//! # let _ = rsp; Ok(()) }
//! ```
//!
//! # The request path
//!
//! ```text
//! caller ──▶ Balance ──▶ per-endpoint client ──▶ network
//!              │  └ pick (P2C over PeakEWMA) from the current endpoint table; bounded wait
//!              └ discovery driver (background task) publishes endpoint tables
//! ```
//!
//! | module | holds |
//! |---|---|
//! | [`discover`] | [`Endpoint`](discover::Endpoint), the [`Discover`](discover::Discover) trait and its sources |
//! | [`balance`] | [`BalanceLayer`](balance::BalanceLayer), [`Balance`](balance::Balance), pickers, fail-fast |
//! | [`load`] | PeakEWMA and in-flight load |
//! | [`http`] | per-endpoint hyper-util clients and the batteries-included [`Client`] |
//! | [`identity`] | SPIFFE IDs |
//! | `tls` (feature `tls`) | SPIFFE trust bundles, SVIDs, X.509-SVID verification for rustls |
//! | [`error`] | typed errors, downcastable from [`BoxError`] |
//! | [`telemetry`] | snapshots of endpoint state |
//!
//! # Features
//!
//! - `tonic`: errors carry a `tonic::Status` as their source, so tonic generated clients report
//!   `UNAVAILABLE` instead of `UNKNOWN`.
//! - `tls`: mTLS with SPIFFE identities on rustls (ring provider): trust bundles (PEM and SPIFFE
//!   bundle JSON), SVIDs, and X.509-SVID verification.
//!
//! A tokio runtime is required: building a client spawns its discovery driver.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod balance;
pub mod breaker;
pub mod classify;
pub mod discover;
pub mod error;
pub mod http;
pub mod identity;
pub mod load;
pub mod outlier;
mod padded;
pub mod retry;
mod rng;
pub mod telemetry;
#[cfg(feature = "tls")]
pub mod tls;

pub use error::BoxError;
pub use http::Client;

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
