//! The write side: reservations, adjustments and channels, each command run by the
//! engine on this back end's write path.

use super::{batch, rows};
use super::{in_snapshot, lane_place, PgLedger};
use crate::error::LedgerError;
use crate::model::{AdjustmentOutcome, ReserveOutcome};
use crate::ReleaseLines;
use async_trait::async_trait;
use invsync_core::channel::{Channel, ChannelConfig, SafetyOverrides};
use invsync_core::{
    Adjust, ChannelId, OrderId, ReleaseReason, Reservation, Reserve, StoreId, Target,
};
use uuid::Uuid;

#[async_trait]
impl crate::Reservations for PgLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(order.id = %cmd.order_id(), store.id = cmd.store_id().map(StoreId::as_str), channel.id = cmd.channel().map(ChannelId::as_str)))]
    async fn reserve(&self, cmd: Reserve) -> Result<ReserveOutcome, LedgerError> {
        let first = cmd.lines().iter().map(|(sku, _)| sku.to_string()).min();
        let key = (lane_place(cmd.target()), first);
        let skus = cmd.lines().iter().map(|(sku, _)| sku.clone());
        let prefetch = match cmd.target() {
            Target::Store(store) => batch::Prefetch {
                idempotency_key: Some(cmd.idempotency_key()),
                rows: skus
                    .map(|sku| (store.to_string(), sku.to_string()))
                    .collect(),
                ..batch::Prefetch::default()
            },
            Target::Channel(channel) => batch::Prefetch {
                idempotency_key: Some(cmd.idempotency_key()),
                channel: Some((channel.clone(), skus.collect())),
                ..batch::Prefetch::default()
            },
        };
        self.coalesced(key, prefetch, move |e| e.reserve(&cmd))
            .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(reservation.id = %id))]
    async fn release(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        reason: ReleaseReason,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError> {
        let lane = self.lane_of_reservation(id).await?;
        self.coalesced(lane, batch::Prefetch::holding(id), move |e| {
            e.client_release(id, lines.as_ref(), reason, key.as_deref())
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(reservation.id = %id))]
    async fn fulfil(
        &self,
        id: Uuid,
        lines: ReleaseLines,
        key: Option<String>,
    ) -> Result<Reservation, LedgerError> {
        let lane = self.lane_of_reservation(id).await?;
        self.coalesced(lane, batch::Prefetch::holding(id), move |e| {
            e.client_fulfil(id, lines.as_ref(), key.as_deref())
        })
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
            in_snapshot(c, |tx| {
                let ids: Vec<Uuid> = tx
                    .query(
                        "SELECT id FROM reservations WHERE order_id = $1 ORDER BY created_at, id",
                        &[&order.as_str()],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(rows::load_reservation(tx, id)?);
                }
                Ok(out)
            })
        })
        .await
    }
}

#[async_trait]
impl crate::Adjustments for PgLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(store.id = %cmd.store_id, product.sku = %cmd.sku))]
    async fn adjust(&self, cmd: Adjust) -> Result<AdjustmentOutcome, LedgerError> {
        let key = (cmd.store_id.to_string(), Some(cmd.sku.to_string()));
        let prefetch = batch::Prefetch {
            rows: vec![(cmd.store_id.to_string(), cmd.sku.to_string())],
            ..batch::Prefetch::default()
        };
        self.coalesced(key, prefetch, move |e| e.adjust(&cmd)).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(commands = cmds.len()))]
    async fn adjust_many(&self, cmds: Vec<Adjust>) -> Vec<Result<AdjustmentOutcome, LedgerError>> {
        // Queued together, so the lanes commit them in a few shared transactions.
        futures::future::join_all(cmds.into_iter().map(|cmd| self.adjust(cmd))).await
    }
}

#[async_trait]
impl crate::Channels for PgLedger {
    #[tracing::instrument(level = "debug", skip_all, err(level = "debug"), fields(channel.id = %id))]
    async fn put_channel(
        &self,
        id: ChannelId,
        config: ChannelConfig,
        if_version: Option<i64>,
    ) -> Result<Channel, LedgerError> {
        self.write(move |e| e.put_channel(&id, config.clone(), if_version))
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
        self.read(move |c| {
            c.query_opt(
                "SELECT version, config FROM channels WHERE channel_id = $1",
                &[&id.as_str()],
            )?
            .map(|r| crate::parts::channel(id.as_str(), r.try_get(0)?, r.try_get::<_, &str>(1)?))
            .transpose()
        })
        .await
    }

    async fn channels(&self) -> Result<Vec<Channel>, LedgerError> {
        self.read(|c| {
            c.query(
                "SELECT channel_id, version, config FROM channels ORDER BY channel_id",
                &[],
            )?
            .iter()
            .map(|r| {
                crate::parts::channel(
                    r.try_get::<_, &str>(0)?,
                    r.try_get(1)?,
                    r.try_get::<_, &str>(2)?,
                )
            })
            .collect()
        })
        .await
    }
}
