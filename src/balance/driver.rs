//! The discovery driver: a background task that applies updates to the endpoint table.
//!
//! It runs for as long as any clone of the [`Balance`](super::Balance) exists, so an idle client
//! still follows discovery, and stops when the last clone is dropped. Each update becomes a new
//! immutable table published with one atomic swap; requests waiting for an endpoint are woken.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::MakeEndpoint;
use super::shared::Shared;
use crate::discover::Discover;
use crate::error::chain_message;

/// Runs until `shutdown` resolves (every balancer clone dropped).
pub(crate) async fn run<D, M>(
    shared: Arc<Shared<M::Service>>,
    mut discover: D,
    make: M,
    mut shutdown: oneshot::Receiver<()>,
) where
    D: Discover,
    M: MakeEndpoint,
    M::Service: Clone,
{
    loop {
        let update = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            update = discover.next_update() => update,
        };
        match update {
            Some(Ok(update)) => {
                let current = shared.table.load();
                match current.apply(update, &make, shared.config()) {
                    Ok(Some((table, diff))) => {
                        tracing::debug!(
                            version = table.version,
                            endpoints = table.len(),
                            added = ?diff.added,
                            removed = ?diff.removed,
                            updated = ?diff.updated,
                            "discovery: endpoint table changed"
                        );
                        shared.publish(table);
                    }
                    Ok(None) => {
                        tracing::trace!("discovery: update changed nothing");
                        shared.discovery.last_error.store(None);
                    }
                    Err(rejected) => {
                        tracing::warn!(
                            error = %rejected,
                            kept = current.len(),
                            "discovery: update rejected; keeping the last good endpoint set"
                        );
                        shared.discovery.record_rejected(rejected.to_string());
                    }
                }
            }
            Some(Err(error)) => {
                let message = chain_message(&*error);
                tracing::warn!(
                    error = %message,
                    kept = shared.table.load().len(),
                    "discovery: source failed; keeping the last good endpoint set"
                );
                shared.discovery.record_error(message);
            }
            None => {
                tracing::debug!(
                    kept = shared.table.load().len(),
                    "discovery: source ended; keeping the endpoint set"
                );
                shared.discovery.record_ended();
                let _ = shutdown.await;
                return;
            }
        }
    }
}
