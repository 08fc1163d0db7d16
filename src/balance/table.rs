//! The endpoint table: an immutable snapshot of the endpoints, their clients and loads.
//!
//! The discovery driver builds a new table for every change and publishes it with one atomic
//! swap; requests pick from whichever table they load. A table is never mutated, so a pick needs
//! no lock, and requests in flight to a removed endpoint keep their own references to its client
//! and load until they finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;

use super::health::Health;
use super::{BalanceConfig, MakeEndpoint};
use crate::discover::{DiscoverError, Endpoint, Update, validate_update};
use crate::load::EndpointLoad;

/// One endpoint in a table.
#[derive(Debug)]
pub(crate) struct Slot<S> {
    pub(crate) endpoint: Endpoint,
    pub(crate) service: S,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) health: Arc<Health>,
}

/// An immutable endpoint table.
#[derive(Debug)]
pub(crate) struct Table<S> {
    pub(crate) slots: Vec<Arc<Slot<S>>>,
    /// Running sums of weights, for weighted picks.
    pub(crate) cumulative_weights: Vec<u64>,
    pub(crate) version: u64,
    pub(crate) published_at: Instant,
}

/// What an update changed, for the debug log.
#[derive(Debug, Default)]
pub(crate) struct Diff {
    pub(crate) added: Vec<SocketAddr>,
    pub(crate) removed: Vec<SocketAddr>,
    pub(crate) updated: Vec<SocketAddr>,
}

impl Diff {
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.updated.is_empty()
    }
}

impl<S> Table<S> {
    pub(crate) fn empty() -> Self {
        Self {
            slots: Vec::new(),
            cumulative_weights: Vec::new(),
            version: 0,
            published_at: Instant::now(),
        }
    }

    fn from_slots(slots: Vec<Arc<Slot<S>>>, version: u64) -> Self {
        let mut total = 0u64;
        let cumulative_weights = slots
            .iter()
            .map(|slot| {
                total += u64::from(slot.endpoint.weight());
                total
            })
            .collect();
        Self {
            slots,
            cumulative_weights,
            version,
            published_at: Instant::now(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn total_weight(&self) -> u64 {
        self.cumulative_weights.last().copied().unwrap_or(0)
    }
}

impl<S: Clone> Table<S> {
    /// The table after `update`, or `None` when nothing changed.
    ///
    /// Endpoints that did not change keep their slot (client and load). An endpoint whose
    /// metadata changed but whose identity did not keeps its client and load in a new slot.
    /// Anything else gets a fresh client from `make`.
    pub(crate) fn apply<M>(
        &self,
        update: Update,
        make: &M,
        config: &BalanceConfig,
    ) -> Result<Option<(Self, Diff)>, DiscoverError>
    where
        M: MakeEndpoint<Service = S>,
    {
        validate_update(&update)?;
        let wanted: Vec<Endpoint> = match update {
            Update::Reset(endpoints) => endpoints,
            Update::Insert(endpoint) => {
                let mut endpoints: Vec<Endpoint> =
                    self.slots.iter().map(|s| s.endpoint.clone()).collect();
                match endpoints.iter_mut().find(|e| e.addr() == endpoint.addr()) {
                    Some(existing) => *existing = endpoint,
                    None => endpoints.push(endpoint),
                }
                endpoints
            }
            Update::Remove(addr) => self
                .slots
                .iter()
                .filter(|s| s.endpoint.addr() != addr)
                .map(|s| s.endpoint.clone())
                .collect(),
        };

        let current: HashMap<SocketAddr, &Arc<Slot<S>>> = self
            .slots
            .iter()
            .map(|slot| (slot.endpoint.addr(), slot))
            .collect();
        let mut diff = Diff::default();
        let now = Instant::now();
        let slots: Vec<Arc<Slot<S>>> = wanted
            .into_iter()
            .map(|endpoint| match current.get(&endpoint.addr()) {
                Some(slot) if slot.endpoint == endpoint => Arc::clone(slot),
                Some(slot) if slot.endpoint.identity() == endpoint.identity() => {
                    diff.updated.push(endpoint.addr());
                    Arc::new(Slot {
                        endpoint,
                        service: slot.service.clone(),
                        load: Arc::clone(&slot.load),
                        health: Arc::clone(&slot.health),
                    })
                }
                existing => {
                    if existing.is_some() {
                        diff.updated.push(endpoint.addr());
                    } else {
                        diff.added.push(endpoint.addr());
                    }
                    let load = EndpointLoad::new(
                        config.default_rtt(),
                        config.decay(),
                        config.failure_penalty(),
                        now,
                    );
                    Arc::new(Slot {
                        service: make.make_endpoint(&endpoint),
                        health: Arc::new(Health::new(config, endpoint.addr(), now)),
                        endpoint,
                        load: Arc::new(load),
                    })
                }
            })
            .collect();
        let kept: std::collections::HashSet<SocketAddr> =
            slots.iter().map(|s| s.endpoint.addr()).collect();
        diff.removed = self
            .slots
            .iter()
            .map(|s| s.endpoint.addr())
            .filter(|addr| !kept.contains(addr))
            .collect();

        let reordered = slots.len() != self.slots.len()
            || slots
                .iter()
                .zip(&self.slots)
                .any(|(new, old)| !Arc::ptr_eq(new, old));
        if diff.is_empty() && !reordered {
            return Ok(None);
        }
        Ok(Some((Self::from_slots(slots, self.version + 1), diff)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    /// A factory whose services are numbered in creation order.
    struct Counting(AtomicUsize);

    impl MakeEndpoint for Counting {
        type Service = usize;
        fn make_endpoint(&self, _: &Endpoint) -> usize {
            self.0.fetch_add(1, Ordering::SeqCst)
        }
    }

    fn apply(table: &Table<usize>, update: Update, make: &Counting) -> Table<usize> {
        table
            .apply(update, make, &BalanceConfig::default())
            .unwrap()
            .unwrap()
            .0
    }

    #[tokio::test]
    async fn unchanged_endpoints_keep_their_client_and_load() {
        let make = Counting(AtomicUsize::new(0));
        let t1 = apply(&Table::empty(), Update::Reset(vec![ep(1), ep(2)]), &make);
        t1.slots[0].load.start();
        let t2 = apply(&t1, Update::Reset(vec![ep(2), ep(1), ep(3)]), &make);
        assert!(Arc::ptr_eq(&t1.slots[0], &t2.slots[1]));
        assert!(Arc::ptr_eq(&t1.slots[1], &t2.slots[0]));
        assert_eq!(t2.slots[1].load.in_flight(), 1);
        assert_eq!(t2.slots[2].service, 2);
        assert_eq!(t2.version, 2);
    }

    #[tokio::test]
    async fn a_weight_change_keeps_client_and_load() {
        let make = Counting(AtomicUsize::new(0));
        let t1 = apply(&Table::empty(), Update::Reset(vec![ep(1)]), &make);
        let t2 = apply(&t1, Update::Insert(ep(1).with_weight(4)), &make);
        assert_eq!(t2.slots[0].service, 0);
        assert!(Arc::ptr_eq(&t1.slots[0].load, &t2.slots[0].load));
        assert_eq!(t2.total_weight(), 4);
    }

    #[tokio::test]
    async fn an_identity_change_gets_a_new_client() {
        let make = Counting(AtomicUsize::new(0));
        let t1 = apply(&Table::empty(), Update::Reset(vec![ep(1)]), &make);
        let id = crate::identity::SpiffeId::parse("spiffe://example.org/a").unwrap();
        let t2 = apply(&t1, Update::Insert(ep(1).with_identity(id)), &make);
        assert_eq!(t2.slots[0].service, 1);
        assert!(!Arc::ptr_eq(&t1.slots[0].load, &t2.slots[0].load));
    }

    #[tokio::test]
    async fn no_change_publishes_nothing() {
        let make = Counting(AtomicUsize::new(0));
        let t1 = apply(&Table::empty(), Update::Reset(vec![ep(1), ep(2)]), &make);
        let none = t1
            .apply(
                Update::Reset(vec![ep(1), ep(2)]),
                &make,
                &BalanceConfig::default(),
            )
            .unwrap();
        assert!(none.is_none());
        let none = t1
            .apply(
                Update::Remove(ep(9).addr()),
                &make,
                &BalanceConfig::default(),
            )
            .unwrap();
        assert!(none.is_none());
    }

    #[tokio::test]
    async fn invalid_sets_are_rejected_whole() {
        let make = Counting(AtomicUsize::new(0));
        let t1 = apply(&Table::empty(), Update::Reset(vec![ep(1)]), &make);
        let err = t1
            .apply(
                Update::Reset(vec![ep(2), ep(3), ep(2)]),
                &make,
                &BalanceConfig::default(),
            )
            .unwrap_err();
        assert_eq!(err, DiscoverError::Duplicate { addr: ep(2).addr() });
        assert_eq!(
            make.0.load(Ordering::SeqCst),
            1,
            "no client made for a rejected set"
        );
    }
}
