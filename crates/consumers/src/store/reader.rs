//! [`StoreReader`]: read-only access to a consumer's store, for the API.

use std::path::PathBuf;

use invsync_core::channel::{channel_available, ChannelConfig};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use uuid::Uuid;

use crate::ConsumerError;

use super::time;
use super::{ChannelAvailability, DeadLetter, StoreAvailability, ViewRow};

/// Read-only access to a consumer's store, for the API.
#[derive(Clone)]
pub struct StoreReader {
    path: PathBuf,
    consumer: String,
}

impl StoreReader {
    pub(crate) fn new(path: PathBuf, consumer: String) -> Self {
        Self { path, consumer }
    }

    /// Runs `f` on a fresh read-only connection in a blocking task.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, ConsumerError> {
        let path = self.path.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            f(&conn)
        })
        .await??)
    }

    /// The stored envelope of a dead letter, if this consumer holds it.
    pub async fn dead_letter_envelope(&self, id: Uuid) -> Result<Option<String>, ConsumerError> {
        self.read(move |c| {
            c.query_row(
                "SELECT envelope FROM dead_letters WHERE id = ?1",
                [id.as_bytes()],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// The newest version of a stock row this consumer applied, delivered or parked.
    pub async fn seen_version(&self, store: &str, sku: &str) -> Result<Option<i64>, ConsumerError> {
        let key = (store.to_owned(), sku.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT version FROM seen WHERE store_id = ?1 AND sku = ?2",
                [&key.0, &key.1],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    /// A SKU's availability per store in the view.
    pub async fn availability(&self, sku: String) -> Result<Vec<StoreAvailability>, ConsumerError> {
        let mut found = self.availability_of(vec![sku]).await?;
        Ok(found.pop().unwrap_or_default())
    }

    /// Every store's availability of each SKU, in the order asked, in one read.
    pub async fn availability_of(
        &self,
        skus: Vec<String>,
    ) -> Result<Vec<Vec<StoreAvailability>>, ConsumerError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT store_id, available, version FROM availability WHERE sku = ?1 ORDER BY store_id",
            )?;
            let mut out = Vec::with_capacity(skus.len());
            for sku in skus {
                let rows = stmt.query_map([sku], |r| {
                    Ok(StoreAvailability {
                        store_id: r.get(0)?,
                        available: r.get(1)?,
                        version: r.get(2)?,
                    })
                })?;
                out.push(rows.collect::<rusqlite::Result<Vec<_>>>()?);
            }
            Ok(out)
        })
        .await
    }

    /// A page of the whole view in (store, sku) order, after the cursor.
    /// Channel availability of each SKU, computed from the view (`None` when the view
    /// knows no such channel).
    pub async fn channel_availability(
        &self,
        channel: String,
        skus: Vec<String>,
    ) -> Result<Option<Vec<ChannelAvailability>>, ConsumerError> {
        self.read(move |c| {
            let Some(config) = c
                .prepare_cached("SELECT config FROM view_channels WHERE channel_id = ?1")?
                .query_row([&channel], |r| r.get::<_, String>(0))
                .optional()?
            else {
                return Ok(None);
            };
            // Written by this consumer from a checked event; unreadable only if the
            // file was altered.
            let Ok(config) = serde_json::from_str::<ChannelConfig>(&config) else {
                return Err(rusqlite::Error::InvalidColumnType(
                    0,
                    "config".into(),
                    rusqlite::types::Type::Text,
                ));
            };
            let mut level = c.prepare_cached(
                "SELECT available, version FROM availability WHERE sku = ?1 AND store_id = ?2",
            )?;
            let mut buffer = c.prepare_cached(
                "SELECT safety_stock FROM view_safety
                 WHERE channel_id = ?1 AND sku = ?2 AND store_id = ?3",
            )?;
            let mut out = Vec::with_capacity(skus.len());
            for sku in skus {
                let mut stores = Vec::with_capacity(config.locations().len());
                for l in config.locations() {
                    let store = l.store_id.as_str();
                    let (available, version) = level
                        .query_row(params![sku, store], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?
                        .unwrap_or((0_i64, 0_i64));
                    let safety: Option<i64> = buffer
                        .query_row(params![channel, sku, store], |r| r.get(0))
                        .optional()?
                        .flatten();
                    stores.push(StoreAvailability {
                        store_id: store.to_owned(),
                        available: channel_available(available, safety.unwrap_or(l.safety_stock)),
                        version,
                    });
                }
                out.push(ChannelAvailability {
                    available: stores.iter().map(|s| s.available).sum(),
                    sku,
                    stores,
                });
            }
            Ok(Some(out))
        })
        .await
    }

    pub async fn view_rows(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<ViewRow>, ConsumerError> {
        self.read(move |c| {
            let (store, sku) = after.unwrap_or_default();
            let mut stmt = c.prepare_cached(
                "SELECT store_id, sku, on_hand, reserved, available, version FROM availability
                 WHERE (store_id, sku) > (?1, ?2) ORDER BY store_id, sku LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![store, sku, limit as i64], |r| {
                Ok(ViewRow {
                    store_id: r.get(0)?,
                    sku: r.get(1)?,
                    on_hand: r.get(2)?,
                    reserved: r.get(3)?,
                    available: r.get(4)?,
                    version: r.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, ConsumerError> {
        let consumer = self.consumer.clone();
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT id, log_offset, envelope, attempts, last_error, failed_at
                 FROM dead_letters ORDER BY failed_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                Ok(DeadLetter {
                    id: Uuid::from_slice(&id).unwrap_or_default(),
                    consumer: consumer.clone(),
                    offset: r.get(1)?,
                    envelope: r.get(2)?,
                    attempts: r.get(3)?,
                    last_error: r.get(4)?,
                    failed_at: time(r.get(5)?),
                })
            })?;
            rows.collect()
        })
        .await
    }
}
