//! The write side: reservations, adjustments and channels, each command run by the
//! engine on this back end's write path.

use super::rows;
use super::{in_snapshot, SqliteLedger};
use crate::error::LedgerError;
use crate::model::{AdjustmentOutcome, ReserveOutcome};
use crate::ReleaseLines;
use async_trait::async_trait;
use invsync_core::channel::{Channel, ChannelConfig, SafetyOverrides};
use invsync_core::{Adjust, ChannelId, OrderId, ReleaseReason, Reservation, Reserve, StoreId};
use uuid::Uuid;

#[async_trait]
impl crate::Reservations for SqliteLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(order.id = %cmd.order_id(), store.id = cmd.store_id().map(StoreId::as_str), channel.id = cmd.channel().map(ChannelId::as_str)))]
    async fn reserve(&self, cmd: Reserve) -> Result<ReserveOutcome, LedgerError> {
        self.write(move |e| e.reserve(&cmd)).await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(reservation.id = %id))]
    async fn release(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        reason: ReleaseReason,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError> {
        self.write(move |e| e.client_release(id, lines.as_ref(), reason, key.as_deref()))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(reservation.id = %id))]
    async fn fulfil(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError> {
        self.write(move |e| e.client_fulfil(id, lines.as_ref(), key.as_deref()))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"))]
    async fn expire_due(&self) -> Result<usize, LedgerError> {
        crate::in_chunks(crate::EXPIRY_CHUNK, || {
            self.write(|e| e.expire_due(crate::EXPIRY_CHUNK))
        })
        .await
    }

    async fn reservation(&self, id: Uuid) -> Result<Option<Reservation>, LedgerError> {
        self.read(move |c| rows::load_reservation(c, id)).await
    }

    async fn reservations_by_order(&self, order: OrderId) -> Result<Vec<Reservation>, LedgerError> {
        self.read(move |c| {
            in_snapshot(c, |c| {
                let ids = rows::reservation_ids(
                    c,
                    "SELECT id FROM reservations WHERE order_id = ?1 ORDER BY created_at, id",
                    [order.as_str()],
                )?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(rows::load_reservation(c, id)?);
                }
                Ok(out)
            })
        })
        .await
    }
}

#[async_trait]
impl crate::Adjustments for SqliteLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(store.id = %cmd.store_id, product.sku = %cmd.sku))]
    async fn adjust(&self, cmd: Adjust) -> Result<AdjustmentOutcome, LedgerError> {
        self.write(move |e| e.adjust(&cmd)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(commands = cmds.len()))]
    async fn adjust_many(&self, cmds: Vec<Adjust>) -> Vec<Result<AdjustmentOutcome, LedgerError>> {
        // Queued together, they usually share one batch (one fsync), yet each is
        // decided and answered on its own.
        let mut queued = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            queued.push(self.enqueue(move |e| e.adjust(&cmd)).await);
        }
        let mut out = Vec::with_capacity(queued.len());
        for answer in queued {
            out.push(match answer {
                Ok(answer) => Self::answer(answer).await,
                Err(err) => Err(err),
            });
        }
        out
    }
}

#[async_trait]
impl crate::Channels for SqliteLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(channel.id = %id))]
    async fn put_channel(
        &self,
        id: ChannelId,
        config: ChannelConfig,
        if_version: Option<i64>,
    ) -> Result<Channel, LedgerError> {
        self.write(move |e| e.put_channel(&id, config, if_version))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(channel.id = %id))]
    async fn set_safety_stock(
        &self,
        id: ChannelId,
        items: SafetyOverrides,
    ) -> Result<usize, LedgerError> {
        self.write(move |e| e.set_safety_stock(&id, &items)).await
    }

    async fn channel(&self, id: ChannelId) -> Result<Option<Channel>, LedgerError> {
        self.read(move |c| rows::load_channel(c, &id)).await
    }

    async fn channels(&self) -> Result<Vec<Channel>, LedgerError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT channel_id, version, config FROM channels ORDER BY channel_id",
            )?;
            let mut found = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(row) = found.next()? {
                out.push(crate::parts::channel(
                    &row.get::<_, String>(0)?,
                    row.get(1)?,
                    &row.get::<_, String>(2)?,
                )?);
            }
            Ok(out)
        })
        .await
    }
}
