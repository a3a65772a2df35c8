//! The storefront projection: per (store, sku) availability as the Ecommerce channel
//! sees it, in the consumer's own store. Eventually consistent, version-guarded. The
//! view's table and SQL are the store's ([`crate::store`]).

use crate::store::StoreReader;
pub use crate::store::{ChannelAvailability, StoreAvailability, ViewRow};
use crate::{ConsumerError, Sink};

/// The storefront consumer: keeps the availability view, no external effect.
pub struct Storefront;

impl Sink for Storefront {
    fn keeps_view(&self) -> bool {
        true
    }
}

/// Reads the view (read-only; works while the ledger is down).
#[derive(Clone)]
pub struct StorefrontReader {
    store: StoreReader,
}

impl StorefrontReader {
    pub fn new(store: StoreReader) -> Self {
        Self { store }
    }

    pub async fn availability(&self, sku: String) -> Result<Vec<StoreAvailability>, ConsumerError> {
        self.store.availability(sku).await
    }

    /// Every store's availability of each SKU, in the order asked, in one read.
    pub async fn availability_of(
        &self,
        skus: Vec<String>,
    ) -> Result<Vec<Vec<StoreAvailability>>, ConsumerError> {
        self.store.availability_of(skus).await
    }

    /// Channel availability of up to 100 SKUs; `None` when the channel is unknown.
    pub async fn channel_availability(
        &self,
        channel: String,
        skus: Vec<String>,
    ) -> Result<Option<Vec<ChannelAvailability>>, ConsumerError> {
        self.store.channel_availability(channel, skus).await
    }

    /// A page of the whole view in (store, sku) order, after the cursor.
    pub async fn rows(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<ViewRow>, ConsumerError> {
        self.store.view_rows(after, limit).await
    }
}
