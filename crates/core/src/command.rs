//! The commands the ledger accepts, built from already-validated parts. Constructors
//! check the rules that span fields (non-empty lines, no SKU twice), so a command that
//! exists is a command the ledger can apply without re-checking its shape.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::DomainError;
use crate::ids::{ChannelId, ExternalRef, IdempotencyKey, OrderId, Sku, StoreId};
use crate::quantity::{Delta, LineQuantity, OnHandCount, TtlSeconds};

/// A request whose shape is wrong; `field` names the offending part of the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    pub field: String,
    pub message: String,
}

impl RequestError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Most lines one reservation (or one release/fulfil) may carry.
pub const MAX_LINES: usize = 500;

/// Checks a list of (sku, quantity) lines: 1..=500 of them, no SKU twice.
pub fn check_lines(lines: &[(Sku, LineQuantity)], field: &str) -> Result<(), RequestError> {
    if lines.is_empty() {
        return Err(RequestError::new(field, "must have at least one line"));
    }
    if lines.len() > MAX_LINES {
        return Err(RequestError::new(
            field,
            format!("must have at most {MAX_LINES} lines"),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(lines.len());
    for (i, (sku, _)) in lines.iter().enumerate() {
        if !seen.insert(sku) {
            return Err(RequestError::new(
                format!("{field}[{i}].sku"),
                format!("sku {sku} appears more than once"),
            ));
        }
    }
    Ok(())
}

/// The lines of a release or a fulfilment, validated: 1 to 500 of them, no SKU twice.
/// Only [`Lines::new`] and [`Lines::at_stores`] make one, so the ledger never sees a
/// SKU named twice (which would take from one reservation line twice). A line may
/// name the location (`store_id`) of the allocation it acts on (channels.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    lines: Vec<(Sku, LineQuantity)>,
    /// One per line; all `None` when no line names a location.
    stores: Vec<Option<StoreId>>,
}

impl Lines {
    /// Checks the lines; an error names `field` (and the index of a repeated SKU).
    pub fn new(lines: Vec<(Sku, LineQuantity)>, field: &str) -> Result<Self, RequestError> {
        let stores = vec![None; lines.len()];
        Self::at_stores(lines, stores, field)
    }

    /// Lines, each naming the location it acts on or not (`stores[i]`).
    pub fn at_stores(
        lines: Vec<(Sku, LineQuantity)>,
        stores: Vec<Option<StoreId>>,
        field: &str,
    ) -> Result<Self, RequestError> {
        check_lines(&lines, field)?;
        if stores.len() != lines.len() {
            return Err(RequestError::new(field, "one store per line"));
        }
        Ok(Self { lines, stores })
    }

    /// The location line `i` names, if it names one.
    pub fn store(&self, i: usize) -> Option<&StoreId> {
        self.stores.get(i).and_then(Option::as_ref)
    }

    /// Whether any line names a location.
    pub fn names_stores(&self) -> bool {
        self.stores.iter().any(Option::is_some)
    }
}

impl std::ops::Deref for Lines {
    type Target = [(Sku, LineQuantity)];

    fn deref(&self) -> &Self::Target {
        &self.lines
    }
}

/// Where a reservation is taken: one store (as since v1), or a channel whose
/// locations the ledger allocates the lines to (channels.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Store(StoreId),
    Channel(ChannelId),
}

impl Target {
    /// The store, when this is one.
    pub fn store(&self) -> Option<&StoreId> {
        match self {
            Self::Store(store) => Some(store),
            Self::Channel(_) => None,
        }
    }

    /// The channel, when this is one.
    pub fn channel(&self) -> Option<&ChannelId> {
        match self {
            Self::Channel(channel) => Some(channel),
            Self::Store(_) => None,
        }
    }
}

/// Reserve every line or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    order_id: OrderId,
    target: Target,
    lines: Lines,
    ttl: Option<TtlSeconds>,
    idempotency_key: Option<IdempotencyKey>,
}

impl Reserve {
    /// A reservation at one store (`target` may also be a [`StoreId`]).
    pub fn new(
        order_id: OrderId,
        target: impl Into<Target>,
        lines: Vec<(Sku, LineQuantity)>,
        ttl: Option<TtlSeconds>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Self, RequestError> {
        Ok(Self {
            order_id,
            target: target.into(),
            lines: Lines::new(lines, "lines")?,
            ttl,
            idempotency_key,
        })
    }

    pub fn order_id(&self) -> &OrderId {
        &self.order_id
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The store of a store-direct reservation.
    pub fn store_id(&self) -> Option<&StoreId> {
        self.target.store()
    }

    /// The channel of a channel reservation.
    pub fn channel(&self) -> Option<&ChannelId> {
        self.target.channel()
    }

    pub fn lines(&self) -> &[(Sku, LineQuantity)] {
        &self.lines
    }

    pub fn ttl(&self) -> Option<TtlSeconds> {
        self.ttl
    }

    /// The key a repeat of this request is recognised by: the `Idempotency-Key` when
    /// given, else the (order, store) or (order, channel) pair. The prefixes keep the
    /// spaces apart, and `|` splits order from store only because neither side can
    /// contain a bare `|` (see `escape_pipe`), so no two pairs share a key.
    pub fn idempotency_key(&self) -> String {
        match (&self.idempotency_key, &self.target) {
            (Some(key), _) => format!("key:{key}"),
            (None, Target::Store(store)) => format!(
                "order:{}|{}",
                escape_pipe(self.order_id.as_str()),
                escape_pipe(store.as_str())
            ),
            (None, Target::Channel(channel)) => format!(
                "channel-order:{}|{}",
                escape_pipe(self.order_id.as_str()),
                escape_pipe(channel.as_str())
            ),
        }
    }

    /// The refusal for a different request under this request's key, naming the key
    /// the caller actually used: theirs, or the (order, store) pair standing in for it.
    pub fn key_conflict(&self) -> DomainError {
        DomainError::IdempotencyConflict(match (&self.idempotency_key, &self.target) {
            (Some(key), _) => {
                format!("the Idempotency-Key '{key}' was already used with a different request")
            }
            (None, Target::Store(store)) => format!(
                "order '{}' already has a different reservation in store '{store}' \
                 (without an Idempotency-Key, a reservation is keyed by order_id and store_id)",
                self.order_id
            ),
            (None, Target::Channel(channel)) => format!(
                "order '{}' already has a different reservation through channel '{channel}' \
                 (without an Idempotency-Key, a reservation is keyed by order_id and channel)",
                self.order_id
            ),
        })
    }

    /// A digest of what the request asks for, to tell a true repeat from a different
    /// request reusing the key.
    pub fn fingerprint(&self) -> String {
        // A store-direct request digests exactly as before channels existed, so the
        // fingerprints stored then still match their repeats.
        #[derive(Serialize)]
        struct Canonical<'a> {
            order_id: &'a OrderId,
            #[serde(skip_serializing_if = "Option::is_none")]
            store_id: Option<&'a StoreId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            channel: Option<&'a ChannelId>,
            lines: &'a [(Sku, LineQuantity)],
            ttl: Option<TtlSeconds>,
        }
        digest(&Canonical {
            order_id: &self.order_id,
            store_id: self.store_id(),
            channel: self.channel(),
            lines: &self.lines,
            ttl: self.ttl,
        })
    }
}

impl From<StoreId> for Target {
    fn from(store: StoreId) -> Self {
        Self::Store(store)
    }
}

impl From<ChannelId> for Target {
    fn from(channel: ChannelId) -> Self {
        Self::Channel(channel)
    }
}

/// Why stock is released on a client's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    OrderCancelled,
    OrderChanged,
    PaymentFailed,
    CustomerRequest,
    Other,
}

impl ReleaseReason {
    /// Every reason, for documents that list them (the OpenAPI enum).
    pub const ALL: [Self; 5] = [
        Self::OrderCancelled,
        Self::OrderChanged,
        Self::PaymentFailed,
        Self::CustomerRequest,
        Self::Other,
    ];
}

/// Why `on_hand` changes on an external system's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    StockIn,
    StockOut,
    CycleCount,
    Damage,
    Return,
    Correction,
    /// A sale at the till (channels.md): units leave the shelf, `delta` < 0.
    Sale,
}

impl AdjustReason {
    /// Every reason, for documents that list them (the OpenAPI enum).
    pub const ALL: [Self; 7] = [
        Self::StockIn,
        Self::StockOut,
        Self::CycleCount,
        Self::Damage,
        Self::Return,
        Self::Correction,
        Self::Sale,
    ];
}

/// A relative change or an absolute count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Delta(Delta),
    SetOnHand(OnHandCount),
}

/// Change `on_hand` of one (store, sku).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adjust {
    pub store_id: StoreId,
    pub sku: Sku,
    pub change: Change,
    pub reason: AdjustReason,
    pub external_ref: Option<ExternalRef>,
    /// Compare-and-set: refuse unless the row is at this version.
    pub if_version: Option<i64>,
    /// The channel the change happened in (a till sale's `pos-S1`). Left out of the
    /// fingerprint when absent, so fingerprints stored before it existed still match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelId>,
    /// The caller's `Idempotency-Key` (already scoped: see [`record_key`]). Not part
    /// of the fingerprint, so fingerprints stored before it existed still match.
    #[serde(skip)]
    pub idempotency_key: Option<String>,
}

impl Adjust {
    pub fn fingerprint(&self) -> String {
        digest(self)
    }

    /// The records a repeat of this adjustment is recognised by: its external_ref
    /// and its Idempotency-Key, each with the refusal a different request under it
    /// gets.
    pub fn records(&self) -> Vec<WriteRecord> {
        let by_ref = self.external_ref.as_ref().map(|r| WriteRecord {
            key: r.to_string(),
            conflict: format!(
                "the external_ref '{r}' was already used with a different adjustment"
            ),
        });
        by_ref
            .into_iter()
            .chain(self.idempotency_key.as_deref().map(WriteRecord::for_key))
            .collect()
    }
}

/// What a write is remembered by so that a retry applies it once: the stored key and
/// the refusal a different request under that key gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    pub key: String,
    pub conflict: String,
}

impl WriteRecord {
    /// The record of a key made by [`record_key`].
    pub fn for_key(key: &str) -> Self {
        let shown = key.rsplit('\u{1}').next().unwrap_or(key);
        Self {
            key: key.to_owned(),
            conflict: format!(
                "the Idempotency-Key '{shown}' was already used with a different request"
            ),
        }
    }
}

/// The stored key of a write made under an `Idempotency-Key`: the operation (and,
/// for a batch, the item) it scopes, then the key. `\u{1}` cannot occur in an
/// identifier, so these never meet an external_ref stored in the same place, and a
/// key used for a release is a different key from the same one used for an
/// adjustment.
pub fn record_key(operation: &str, key: &IdempotencyKey) -> String {
    format!("\u{1}{operation}\u{1}{key}")
}

/// The fingerprint of a release or fulfilment request, to tell a retry (same request,
/// same key) from a different request reusing the key.
pub fn settle_fingerprint(
    operation: &str,
    reservation_id: uuid::Uuid,
    lines: Option<&Lines>,
    reason: Option<ReleaseReason>,
) -> String {
    // Lines that name no location digest as they did before they could.
    match lines {
        Some(l) if l.names_stores() => {
            digest(&(operation, reservation_id, Some(&l.lines), reason, &l.stores))
        }
        _ => digest(&(operation, reservation_id, lines.map(|l| &l.lines), reason)),
    }
}

/// Escapes `%` and `|` as `%25` and `%7C`. Identifiers made before any could contain
/// either are unchanged by it, so keys stored by earlier versions still match.
fn escape_pipe(value: &str) -> std::borrow::Cow<'_, str> {
    if value.contains(['%', '|']) {
        value.replace('%', "%25").replace('|', "%7C").into()
    } else {
        value.into()
    }
}

fn digest(value: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail; an empty digest would only make a
    // repeat look like a conflict, never the other way round.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str, n: i64) -> (Sku, LineQuantity) {
        (Sku::parse(s).unwrap(), LineQuantity::new(n).unwrap())
    }

    fn reserve(
        lines: Vec<(Sku, LineQuantity)>,
        key: Option<&str>,
    ) -> Result<Reserve, RequestError> {
        Reserve::new(
            OrderId::parse("O-1").unwrap(),
            StoreId::parse("S1").unwrap(),
            lines,
            None,
            key.map(|k| IdempotencyKey::parse(k).unwrap()),
        )
    }

    #[test]
    fn an_adjustment_without_a_channel_keeps_its_old_fingerprint() {
        let adjust = |channel: Option<&str>| Adjust {
            store_id: StoreId::parse("S1").unwrap(),
            sku: Sku::parse("A").unwrap(),
            change: Change::Delta(Delta::try_from(-1).unwrap()),
            reason: AdjustReason::Sale,
            external_ref: None,
            if_version: None,
            channel: channel.map(|c| ChannelId::parse(c).unwrap()),
            idempotency_key: None,
        };
        // Fingerprints stored before `channel` existed were digests of JSON without
        // the member: it must stay absent when there is no channel.
        let json = serde_json::to_value(adjust(None)).unwrap();
        assert!(json.get("channel").is_none(), "{json}");
        assert_ne!(
            adjust(None).fingerprint(),
            adjust(Some("pos-S1")).fingerprint()
        );
    }

    #[test]
    fn release_lines_naming_a_sku_twice_cannot_be_made() {
        let a = || Sku::parse("A").unwrap();
        let q = |n| LineQuantity::new(n).unwrap();
        let err = Lines::new(vec![(a(), q(2)), (a(), q(2))], "lines").unwrap_err();
        assert_eq!(err.field, "lines[1].sku");
        assert!(Lines::new(Vec::new(), "lines").is_err());
        let ok = Lines::new(vec![(a(), q(2))], "lines").unwrap();
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn empty_and_duplicate_lines_are_refused_naming_the_field() {
        assert_eq!(reserve(vec![], None).unwrap_err().field, "lines");
        let err = reserve(vec![line("A", 1), line("A", 2)], None).unwrap_err();
        assert_eq!(err.field, "lines[1].sku");
        let many = (0..=MAX_LINES).map(|i| line(&format!("S{i}"), 1)).collect();
        assert!(reserve(many, None).is_err());
    }

    #[test]
    fn the_idempotency_key_defaults_to_order_and_store() {
        assert_eq!(
            reserve(vec![line("A", 1)], None).unwrap().idempotency_key(),
            "order:O-1|S1"
        );
        assert_eq!(
            reserve(vec![line("A", 1)], Some("k"))
                .unwrap()
                .idempotency_key(),
            "key:k"
        );
    }

    #[test]
    fn implicit_keys_of_different_pairs_never_meet() {
        let key = |order: &str, store: &str| {
            Reserve::new(
                OrderId::parse(order).unwrap(),
                StoreId::parse(store).unwrap(),
                vec![line("A", 1)],
                None,
                None,
            )
            .unwrap()
            .idempotency_key()
        };
        assert_ne!(key("a|b", "c"), key("a", "b|c"));
        assert_ne!(key("a%7Cb", "c"), key("a|b", "c"));
        assert_eq!(
            key("O-1", "S1"),
            "order:O-1|S1",
            "keys stored before stay valid"
        );
    }

    #[test]
    fn a_conflict_names_the_key_the_caller_used() {
        let implicit = reserve(vec![line("A", 1)], None).unwrap().key_conflict();
        let text = implicit.to_string();
        assert!(text.contains("'O-1'") && text.contains("'S1'"), "{text}");
        assert!(!text.contains("Idempotency-Key '"), "{text}");
        let explicit = reserve(vec![line("A", 1)], Some("k-9"))
            .unwrap()
            .key_conflict();
        assert!(explicit.to_string().contains("'k-9'"), "{explicit}");
    }

    #[test]
    fn fingerprints_differ_when_the_request_differs() {
        let a = reserve(vec![line("A", 1)], None).unwrap().fingerprint();
        let b = reserve(vec![line("A", 2)], None).unwrap().fingerprint();
        assert_eq!(
            a,
            reserve(vec![line("A", 1)], Some("k"))
                .unwrap()
                .fingerprint()
        );
        assert_ne!(a, b);
    }
}
