//! The redrive policy (`POST /v1/dead-letters/{id}/redrive`), decided here rather than
//! in the HTTP handler: which consumer holds the dead letter, whether sending it again
//! would put an older state of its stock row after a newer one, and the redelivery
//! itself, which that consumer's runtime works between batches.

use uuid::Uuid;

use crate::runtime::{ConsumerHandle, Superseded};
use crate::ControlError;

/// What became of a request to deliver a dead letter again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveDecision {
    /// Queued on this consumer's runtime; the dead letter goes once it is delivered,
    /// and stays, with one more attempt counted, when it fails again.
    Queued { consumer: String },
    /// Refused: the consumer's endpoint already received (or holds queued) a newer
    /// version of the same stock row. `force` sends it all the same.
    Superseded {
        consumer: String,
        superseded: Superseded,
    },
    /// No consumer of this process holds such a dead letter.
    NotFound,
}

/// Decides a redrive of dead letter `id` among `consumers` and, unless refused, queues
/// it on the runtime of the consumer that holds it. An error is the machinery's (a
/// store that cannot be read, a consumer that stopped), never the decision's.
pub async fn redrive(
    consumers: &[ConsumerHandle],
    id: Uuid,
    force: bool,
) -> Result<RedriveDecision, ControlError> {
    for handle in consumers {
        if !handle.holds_dead_letter(id).await? {
            continue;
        }
        let consumer = handle.name().to_owned();
        if let (Some(superseded), false) = (handle.superseded(id).await?, force) {
            return Ok(RedriveDecision::Superseded {
                consumer,
                superseded,
            });
        }
        handle.queue_redrive(id).await?;
        return Ok(RedriveDecision::Queued { consumer });
    }
    Ok(RedriveDecision::NotFound)
}
