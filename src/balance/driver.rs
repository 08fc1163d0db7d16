//! The balancer's background task: applies discovery updates to the endpoint table and runs the
//! outlier-detection sweep on its interval.
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
    let outlier = shared.config().outlier();
    let mut sweeps = outlier.is_enabled().then(|| {
        let mut sweeps = tokio::time::interval_at(
            tokio::time::Instant::now() + outlier.interval(),
            outlier.interval(),
        );
        sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweeps
    });
    let mut discovery_ended = false;
    loop {
        let update = tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = tick(&mut sweeps) => {
                shared.sweep_outliers();
                continue;
            }
            update = discover.next_update(), if !discovery_ended => update,
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
                discovery_ended = true;
            }
        }
    }
}

/// The next sweep tick, or never when outlier detection is off.
async fn tick(sweeps: &mut Option<tokio::time::Interval>) {
    match sweeps {
        Some(sweeps) => {
            sweeps.tick().await;
        }
        None => std::future::pending().await,
    }
}
