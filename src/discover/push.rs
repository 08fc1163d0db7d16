//! A source your own code drives: set the whole set, insert, remove.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Discover, DiscoverError, Endpoint, Update, validate_set};
use crate::BoxError;

/// The handle that changes the set a [`PushDiscover`] publishes. Made by [`push`]; `Clone`.
///
/// Every change is validated before it is applied, so a bad set is refused here, with the
/// reason, and the balancer never sees it. Changes made in quick succession are coalesced: the
/// balancer applies the latest set.
#[derive(Clone, Debug)]
pub struct Pusher {
    tx: Arc<watch::Sender<Arc<Vec<Endpoint>>>>,
}

/// The [`Discover`] side of [`push`]; `Clone`, each clone sees the latest set.
#[derive(Clone, Debug)]
pub struct PushDiscover {
    rx: watch::Receiver<Arc<Vec<Endpoint>>>,
    published: bool,
}

/// A source fed by your code, starting empty.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use proxyless::discover::{Endpoint, push};
///
/// let (pusher, discover) = push();
/// pusher.set(vec![Endpoint::new("127.0.0.1:8081".parse()?)])?;
/// pusher.insert(Endpoint::new("127.0.0.1:8082".parse()?))?;
/// pusher.remove("127.0.0.1:8081".parse()?);
/// assert_eq!(pusher.endpoints().len(), 1);
/// # drop(discover);
/// # Ok(()) }
/// ```
pub fn push() -> (Pusher, PushDiscover) {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    (
        Pusher { tx: Arc::new(tx) },
        PushDiscover {
            rx,
            published: false,
        },
    )
}

impl Pusher {
    /// Replaces the whole set; a duplicate or invalid endpoint rejects it and keeps the old one.
    pub fn set(&self, endpoints: Vec<Endpoint>) -> Result<(), DiscoverError> {
        validate_set(&endpoints)?;
        self.tx.send_replace(Arc::new(endpoints));
        self.check_open()
    }

    /// Adds an endpoint, or replaces the one with the same address.
    pub fn insert(&self, endpoint: Endpoint) -> Result<(), DiscoverError> {
        endpoint.validate()?;
        self.tx.send_modify(|set| {
            let set = Arc::make_mut(set);
            match set.iter_mut().find(|e| e.addr() == endpoint.addr()) {
                Some(existing) => *existing = endpoint,
                None => set.push(endpoint),
            }
        });
        self.check_open()
    }

    /// Removes the endpoint with this address; returns whether it was there.
    pub fn remove(&self, addr: SocketAddr) -> bool {
        let mut removed = false;
        self.tx.send_if_modified(|set| {
            let before = set.len();
            Arc::make_mut(set).retain(|e| e.addr() != addr);
            removed = set.len() != before;
            removed
        });
        removed
    }

    /// The current set.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.tx.borrow().as_ref().clone()
    }

    /// Errors once no [`PushDiscover`] is left to read the set; the change is still recorded.
    fn check_open(&self) -> Result<(), DiscoverError> {
        if self.tx.is_closed() {
            Err(DiscoverError::Closed)
        } else {
            Ok(())
        }
    }
}

impl Discover for PushDiscover {
    async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
        if self.published {
            // Every pusher dropped: the set can no longer change.
            self.rx.changed().await.ok()?;
        }
        self.published = true;
        let set = self.rx.borrow_and_update().clone();
        Some(Ok(Update::Reset(set.as_ref().clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(([127, 0, 0, 1], port).into())
    }

    #[tokio::test]
    async fn publishes_the_current_set_then_changes() {
        let (pusher, mut discover) = push();
        pusher.set(vec![ep(1), ep(2)]).unwrap();
        assert_eq!(
            discover.next_update().await.unwrap().unwrap(),
            Update::Reset(vec![ep(1), ep(2)])
        );
        pusher.insert(ep(3).with_weight(2)).unwrap();
        pusher.insert(ep(1).with_weight(5)).unwrap();
        assert!(pusher.remove(ep(2).addr()));
        assert!(!pusher.remove(ep(9).addr()));
        assert_eq!(
            discover.next_update().await.unwrap().unwrap(),
            Update::Reset(vec![ep(1).with_weight(5), ep(3).with_weight(2)])
        );
    }

    #[tokio::test]
    async fn invalid_sets_are_refused_and_the_old_one_kept() {
        let (pusher, _discover) = push();
        pusher.set(vec![ep(1)]).unwrap();
        assert!(matches!(
            pusher.set(vec![ep(2), ep(2)]),
            Err(DiscoverError::Duplicate { .. })
        ));
        assert!(pusher.insert(ep(3).with_weight(0)).is_err());
        assert_eq!(pusher.endpoints(), vec![ep(1)]);
    }

    #[tokio::test]
    async fn ends_when_every_pusher_is_gone() {
        let (pusher, mut discover) = push();
        assert!(discover.next_update().await.is_some());
        drop(pusher);
        assert!(discover.next_update().await.is_none());
    }

    #[tokio::test]
    async fn reports_a_closed_balancer() {
        let (pusher, discover) = push();
        drop(discover);
        assert_eq!(pusher.set(vec![ep(1)]), Err(DiscoverError::Closed));
    }
}
