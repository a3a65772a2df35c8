//! Several processes sharing one consumer's partitions (`invsync consume NAME
//! --partitioned`).
//!
//! Each process runs one runtime per partition (see [`Partition`]), each working only
//! while its `active` reads `true`, and this coordinator decides which: every
//! [`TICK`] it counts the group and holds its fair share, `ceil(partitions /
//! members)`. A process above its share stops the partitions it gives up, waits until
//! nothing of them is delivering ([`ConsumerHandle::quiesce`]), and only then releases
//! them; a process below its share claims free ones. Each partition's position is
//! one record in the ledger, so whoever claims it next resumes where its last owner
//! committed: a change of owner re-delivers at most the batch in flight, and one
//! SKU's events (all in one partition) stay in order.
//!
//! Membership and claims are leases (`invsync_ledger::lease`): a process that dies,
//! freezes or loses the database stops renewing; its own terms end at their local
//! deadline (its runtimes stop delivering then, whatever this coordinator is doing),
//! the others see its leases lapse in their next count and claim its partitions under
//! a higher epoch, which fences any position it would record late. A process that
//! loses its membership stops every partition at once and joins again.
//!
//! [`Partition`]: crate::runtime::Partition

use std::collections::BTreeSet;
use std::time::Duration;

use invsync_ledger::{LedgerError, PartitionClaims, Term};
use tokio::sync::watch;

use crate::ConsumerHandle;

/// How often a member counts the group: a dead member's partitions are claimed again
/// within about this after their leases lapse.
pub const TICK: Duration = Duration::from_millis(50);

/// One partition's runtime in this process, and the switch that makes it work: the
/// term this process holds on the partition's lease, or `None`.
pub struct Member {
    pub handle: ConsumerHandle,
    pub active: watch::Sender<Option<Term>>,
}

/// Holds this process's fair share of the group's partitions until `stop`;
/// `members[p]` is partition `p`'s runtime.
pub async fn share(
    group: String,
    claims: Box<dyn PartitionClaims>,
    members: Vec<Member>,
    mut stop: watch::Receiver<bool>,
) {
    let mut owned = BTreeSet::new();
    let mut lost = false;
    while !*stop.borrow() {
        let turn = if lost {
            claims.rejoin().await.map(|()| {
                tracing::info!(consumer.name = %group, "joined the group again");
                lost = false;
            })
        } else {
            balance(&group, claims.as_ref(), &members, &mut owned).await
        };
        if let Err(error) = turn {
            if !lost {
                tracing::warn!(consumer.name = %group, %error, partitions = owned.len(), "lost the group's session: every partition stops here");
                for p in std::mem::take(&mut owned) {
                    set(&members, p, None);
                }
                lost = true;
            }
        }
        let pause = if lost { Duration::from_secs(1) } else { TICK };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
}

/// One count of the group: gives up what is above the fair share, claims free
/// partitions up to it.
async fn balance(
    group: &str,
    claims: &dyn PartitionClaims,
    members: &[Member],
    owned: &mut BTreeSet<u32>,
) -> Result<(), LedgerError> {
    let census = claims.census().await?;
    // Terms that ended (a renewal found the lease lapsed and taken): no longer ours.
    owned.retain(|&p| {
        let held = members
            .get(p as usize)
            .is_some_and(|m| m.active.borrow().as_ref().is_some_and(Term::valid));
        if !held {
            set(members, p, None);
            tracing::warn!(consumer.name = %group, partition = p, "partition lease lapsed; stopped here");
        }
        held
    });
    let count = members.len() as u32;
    let fair = count.div_ceil(census.members.max(1)) as usize;
    while owned.len() > fair {
        let Some(p) = owned.pop_last() else { break };
        set(members, p, None);
        if let Some(member) = members.get(p as usize) {
            member.handle.quiesce().await;
        }
        claims.release(p).await?;
        tracing::info!(consumer.name = %group, partition = p, members = census.members, "partition given up to rebalance");
    }
    if owned.len() < fair && (census.claimed == 0 || census.claimed < count) {
        for p in 0..count {
            if owned.len() >= fair {
                break;
            }
            if owned.contains(&p) {
                continue;
            }
            if let Some(term) = claims.claim(p).await? {
                owned.insert(p);
                set(members, p, Some(term));
                tracing::info!(consumer.name = %group, partition = p, members = census.members, "partition claimed");
            }
        }
    }
    Ok(())
}

fn set(members: &[Member], partition: u32, term: Option<Term>) {
    if let Some(member) = members.get(partition as usize) {
        member.active.send_replace(term);
    }
}
