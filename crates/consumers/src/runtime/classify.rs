//! The classify stage: each logged event parsed once, into what the consumer
//! delivers, what keeps its view (channel configuration), what can never be applied
//! (dead letters at once), and what is not its business (passed over).

use invsync_core::CloudEvent;
use invsync_ledger::LoggedEvent;

use super::Partition;
use crate::store;
use crate::Incoming;

/// A batch of logged events, sorted by what happens to them.
pub(super) struct Classified {
    /// Valid stock events of this consumer's partition, in log order.
    pub(super) incoming: Vec<Incoming>,
    /// Channel configuration events, for a view-keeping consumer.
    pub(super) configs: Vec<store::ConfigEvent>,
    /// Events that are not valid v1 envelopes: (offset, stored text, why).
    pub(super) invalid: Vec<(i64, String, String)>,
}

/// Parses and validates: an event that is not a valid v1 envelope can never be
/// applied, so it goes straight to the dead letters. An event of a type this runtime
/// does not handle (a channel's configuration, a later version) is passed over: the
/// position moves past it. A view-keeping consumer applies channel configuration
/// events to its view.
pub(super) fn classify(
    events: Vec<LoggedEvent>,
    partition: Option<Partition>,
    keeps_view: bool,
    consumer: &str,
) -> Classified {
    let mut out = Classified {
        incoming: Vec::with_capacity(events.len()),
        configs: Vec::new(),
        invalid: Vec::new(),
    };
    for logged in events {
        // Another partition's event (its envelope left out by the source, or told
        // here): passed over.
        if partition.is_some_and(|p| logged.envelope.is_empty() || !p.holds(&logged.envelope)) {
            continue;
        }
        match CloudEvent::parse(logged.envelope.as_bytes()) {
            Ok(envelope) => out.incoming.push(Incoming {
                offset: logged.offset,
                event: envelope.data,
                envelope: logged.envelope,
            }),
            Err(e) => match CloudEvent::type_of(logged.envelope.as_bytes()) {
                Some(t) if !CloudEvent::is_stock_event(&t) => {
                    let config = keeps_view
                        .then(|| store::ConfigEvent::parse(&t, logged.envelope.as_bytes()))
                        .flatten();
                    match config {
                        Some(Ok(config)) => out.configs.push(config),
                        Some(Err(e)) => {
                            out.invalid
                                .push((logged.offset, logged.envelope, e.to_string()))
                        }
                        None => {
                            tracing::debug!(consumer.name = %consumer, log.offset = logged.offset, event.type = %t, "an event type this consumer does not handle; passed over");
                        }
                    }
                }
                _ => out
                    .invalid
                    .push((logged.offset, logged.envelope, e.to_string())),
            },
        }
    }
    out
}
