//! A fixed list of endpoints.

use super::{Discover, DiscoverError, Endpoint, IntoEndpoint, Update, validate_set};
use crate::BoxError;

/// A source that publishes one set and never changes it. Made by [`fixed`].
#[derive(Clone, Debug)]
pub struct Fixed {
    endpoints: Vec<Endpoint>,
    published: bool,
}

/// A fixed set of endpoints, validated now: a duplicate or an invalid entry is an error here.
///
/// ```
/// # fn main() -> Result<(), proxyless::discover::DiscoverError> {
/// let discover = proxyless::discover::fixed(["127.0.0.1:8081", "127.0.0.1:8082"])?;
/// assert!(proxyless::discover::fixed(["127.0.0.1:8081", "127.0.0.1:8081"]).is_err());
/// # Ok(()) }
/// ```
pub fn fixed<I>(endpoints: I) -> Result<Fixed, DiscoverError>
where
    I: IntoIterator,
    I::Item: IntoEndpoint,
{
    let endpoints = endpoints
        .into_iter()
        .map(IntoEndpoint::into_endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    validate_set(&endpoints)?;
    Ok(Fixed {
        endpoints,
        published: false,
    })
}

impl Fixed {
    /// The endpoints this source publishes.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

impl Discover for Fixed {
    async fn next_update(&mut self) -> Option<Result<Update, BoxError>> {
        if self.published {
            // A fixed set never changes: stay pending rather than end, so nothing is logged.
            std::future::pending::<()>().await;
        }
        self.published = true;
        Some(Ok(Update::Reset(self.endpoints.clone())))
    }
}
