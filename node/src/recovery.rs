//! Recovery of cross-shard transfers without the router (DESIGN §6).
//!
//! A router may die between any two steps of a transfer. Nothing it leaves behind needs it back:
//! every second or so, on each shard this node leads,
//! - a transfer still PREPARED on its primary past the timeout is decided ABORT, through the
//!   primary's own Raft log (`AbortDebit`), so the decision is made once: if a router committed it
//!   first, the abort answers COMMITTED and changes nothing;
//! - an intent still PENDING on a credit shard past the timeout asks the primary for its decision
//!   and applies it (`CommitCredit` / `AbortCredit`); while the primary has not decided, it waits.
//!
//! So a transfer is never in doubt for much longer than the timeout after its router died.
//!
//! An item of a linked chain left PREPARED asks its chain's anchor to decide ABORT instead (the
//! first decision stands there, so a chain already committed answers COMMITTED), then applies
//! whatever the anchor holds to the item: the chain stays all or nothing.
//!
//! The same pass releases holds whose expiry passed (`ExpireHolds`, stamped by the oracle).
//!
//! The same pass lets a primary forget COMMITTED transfers whose retention window passed
//! (README § Retention): it asks their credit shards whether they still hold a PENDING intent
//! for them, and proposes `ForgetTransfers` for those that do not. A credit side that still
//! waits for the decision therefore always finds it. A chain's anchor does the same for its
//! committed chain decisions: forgotten only once no item is still PREPARED.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::Request;
use wallet_proto::v1::shard_server::Shard;
use wallet_proto::v1::{
    command::Op, outcome, read_result, shard_read::Query, Command, ExpireHolds, ForgetTransfers,
    GetTransferRequest, Intent, IntentRef, IntentState, IntentStatesQuery, NextHoldExpiry, Outcome,
    ReadResult, Settling, ShardCommand, ShardRead, Stuck, Transfer, TransferStatus, TransferStep,
};
use wallet_shard_client::shards::Shards;

use crate::service::NodeService;
use crate::state_machine::two_phase::FORGET_TRANSFERS_MAX;

/// Runs recovery until `stop` fires.
pub async fn run(
    service: NodeService,
    shards: Arc<Shards>,
    resolve_after: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = (resolve_after / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Per shard: the last promise of a cross-shard hold the previous pass looked at (promises
    // last as long as their holds, so each pass takes the next page, round the shard).
    let mut cursors: BTreeMap<u64, Option<IntentRef>> = BTreeMap::new();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let pass = async {
            for shard_id in service.led_shards() {
                let cursor = cursors.entry(shard_id).or_default();
                if let Err(e) =
                    resolve_shard(&service, &shards, shard_id, resolve_after, cursor).await
                {
                    tracing::debug!(shard_id, error = %e, "recovery pass incomplete; next pass retries");
                }
                if let Err(e) = forget_settled(&service, &shards, shard_id).await {
                    tracing::debug!(shard_id, error = %e, "forgetting settled transfers failed; next pass retries");
                }
                if let Err(e) = expire_holds(&service, &shards, shard_id).await {
                    tracing::debug!(shard_id, error = %e, "expiring holds failed; next pass retries");
                }
            }
        };
        // A pass whose steps wait on an unreachable shard does not hold up the node's shutdown
        // (every step is idempotent: what a dropped pass left undone, the next node's pass does).
        tokio::select! {
            _ = pass => {}
            _ = stop.changed() => return,
        }
    }
}

async fn resolve_shard(
    service: &NodeService,
    shards: &Arc<Shards>,
    shard_id: u64,
    resolve_after: Duration,
    promises_after: &mut Option<IntentRef>,
) -> Result<(), tonic::Status> {
    let before_ms = crate::service::now_ms() - resolve_after.as_millis() as i64;
    let stuck = match service
        .read(Request::new(ShardRead {
            shard_id,
            query: Some(Query::Stuck(Stuck {
                before_ms,
                start_ts_before: 0,
                promises_after: promises_after.clone(),
            })),
        }))
        .await?
        .into_inner()
    {
        ReadResult {
            result: Some(read_result::Result::Stuck(stuck)),
        } => stuck,
        _ => return Ok(()),
    };
    // Each decision is its own proposal; sent together, they share Raft entries and fsyncs (the
    // replica proposes whatever arrived in one loop turn as one entry), so a batch that left
    // thousands of transfers behind is settled in a few rounds, not one round trip each.
    let mut tasks = tokio::task::JoinSet::new();
    // The next pass goes on after this page of promises, or from the first one again.
    *promises_after = wallet_shard_client::holds::next_promises_page(&stuck);
    for transfer in stuck.prepared {
        bounded_spawn(shard_id, &mut tasks).await;
        if transfer.chain.is_some() {
            // An item of a linked chain follows its chain's one decision, never its own.
            let shards = shards.clone();
            tasks.spawn(async move { settle_chain_item(&shards, shard_id, &transfer).await });
            continue;
        }
        let service = service.clone();
        tasks.spawn(async move {
            let outcome = propose(
                &service,
                shard_id,
                &transfer.transfer_id,
                0,
                Op::AbortDebit(TransferStep {
                    transfer_id: transfer.transfer_id.clone(),
                    account_id: transfer.from_account_id.clone(),
                    ..Default::default()
                }),
            )
            .await?;
            if status_of(&outcome) == Some(TransferStatus::Aborted) {
                count_decision("abort_debit");
            }
            tracing::info!(
                shard_id,
                transfer = %transfer.transfer_id,
                decided = ?status_of(&outcome),
                "decided a prepared transfer whose router went away"
            );
            Ok(())
        });
    }
    for intent in stuck.pending.into_iter().chain(stuck.promises) {
        bounded_spawn(shard_id, &mut tasks).await;
        let shards = shards.clone();
        tasks.spawn(async move { resolve_intent(&shards, shard_id, &intent).await });
    }
    while let Some(done) = tasks.join_next().await {
        joined(shard_id, done);
    }
    Ok(())
}

/// Most recovery steps of one pass in flight at once.
const RECOVERY_IN_FLIGHT: usize = 64;

/// Waits, if [`RECOVERY_IN_FLIGHT`] steps are running, until one ends.
async fn bounded_spawn(shard_id: u64, tasks: &mut tokio::task::JoinSet<Result<(), tonic::Status>>) {
    while tasks.len() >= RECOVERY_IN_FLIGHT {
        match tasks.join_next().await {
            Some(done) => joined(shard_id, done),
            None => break,
        }
    }
}

/// A step that failed (its primary unreachable, say) is logged and left to the next pass; the
/// pass goes on with the others, so transfers whose shards answer are never held up behind ones
/// whose shards do not.
fn joined(shard_id: u64, done: Result<Result<(), tonic::Status>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(shard_id, error = %e.message(), "recovery step failed; the next pass retries it")
        }
        // A step that panicked already ended the process (fail-stop).
        Err(e) => tracing::debug!(shard_id, error = %e, "recovery step ended"),
    }
}

/// Forgets this primary's COMMITTED transfers whose window passed once their credit shards
/// confirmed they hold no PENDING intent for them (up to 1000 per pass).
async fn forget_settled(
    service: &NodeService,
    shards: &Shards,
    shard_id: u64,
) -> Result<(), tonic::Status> {
    let (settling, chains) = match service
        .read(Request::new(ShardRead {
            shard_id,
            query: Some(Query::Settling(Settling {
                limit: FORGET_TRANSFERS_MAX as u32,
            })),
        }))
        .await?
        .into_inner()
    {
        ReadResult {
            result: Some(read_result::Result::Settling(settling)),
        } => (settling.transfers, settling.chains),
        _ => return Ok(()),
    };
    let mut settled = Vec::new();
    for chain in chains {
        if chain_items_decided(shards, &chain.items).await {
            settled.extend(chain.decision);
        }
    }
    let mut by_credit_shard: BTreeMap<u64, Vec<Transfer>> = BTreeMap::new();
    for transfer in settling {
        by_credit_shard
            .entry(shards.shard_of(&transfer.to_account_id))
            .or_default()
            .push(transfer);
    }
    for (credit_shard, transfers) in by_credit_shard {
        let asked = IntentStatesQuery {
            intents: transfers
                .iter()
                .map(|t| IntentRef {
                    credit_account_id: t.to_account_id.clone(),
                    debit_account_id: t.from_account_id.clone(),
                    transfer_id: t.transfer_id.clone(),
                })
                .collect(),
        };
        // One credit shard that cannot answer holds back only its own transfers.
        let states = match shards
            .read(credit_shard, Query::IntentStates(asked))
            .await
            .map(|r| r.result)
        {
            Ok(Some(read_result::Result::IntentStates(s))) if s.states.len() == transfers.len() => {
                s.states
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(credit_shard, error = %e, "intent states unavailable; next pass asks again");
                continue;
            }
        };
        for (transfer, state) in transfers.into_iter().zip(states) {
            // Not kept means decided and forgotten: a COMMITTED primary had its intent prepared.
            if state != IntentState::Pending as i32 {
                settled.push(TransferStep {
                    transfer_id: transfer.transfer_id,
                    account_id: transfer.from_account_id,
                    ..Default::default()
                });
            }
        }
    }
    if settled.is_empty() {
        return Ok(());
    }
    let count = settled.len();
    propose(
        service,
        shard_id,
        "",
        0,
        Op::ForgetTransfers(ForgetTransfers { transfers: settled }),
    )
    .await?;
    tracing::debug!(shard_id, count, "forgot settled cross-shard transfers");
    Ok(())
}

/// Whether none of a committed chain's items is still PREPARED on its debit shard (each one
/// read; one that cannot be read counts as undecided, and the next pass asks again).
async fn chain_items_decided(shards: &Shards, items: &[TransferStep]) -> bool {
    for item in items {
        let read = shards
            .read(
                shards.shard_of(&item.account_id),
                Query::Transfer(GetTransferRequest {
                    transfer_id: item.transfer_id.clone(),
                    from_account_id: item.account_id.clone(),
                }),
            )
            .await;
        match read.map(|r| r.result) {
            Ok(Some(read_result::Result::Transfer(t)))
                if t.status == TransferStatus::Prepared as i32 =>
            {
                return false
            }
            Ok(Some(read_result::Result::Transfer(_))) => {}
            // No longer kept: decided and forgotten.
            Ok(Some(read_result::Result::Rejected(r)))
                if r.reason == wallet_proto::reason::Reason::TransferNotFound.as_str() => {}
            _ => return false,
        }
    }
    true
}

async fn resolve_intent(
    shards: &Shards,
    shard_id: u64,
    intent: &Intent,
) -> Result<(), tonic::Status> {
    if let Some(decided) =
        wallet_shard_client::two_phase::settle_intent(shards, shard_id, intent).await?
    {
        count_decision(if decided == TransferStatus::Committed {
            "commit_credit"
        } else {
            "abort_credit"
        });
        tracing::info!(
            shard_id,
            transfer = %intent.transfer.as_ref().map(|t| t.transfer_id.as_str()).unwrap_or(""),
            ?decided,
            "resolved an intent whose router went away"
        );
    }
    Ok(())
}

async fn settle_chain_item(
    shards: &Shards,
    shard_id: u64,
    transfer: &Transfer,
) -> Result<(), tonic::Status> {
    let decision = wallet_shard_client::chain::settle_item(shards, transfer).await?;
    count_decision(if decision.committed {
        "commit_chain_item"
    } else {
        "abort_chain_item"
    });
    tracing::info!(
        shard_id,
        transfer = %transfer.transfer_id,
        chain = %decision.chain.as_ref().map(|c| c.chain_id.as_str()).unwrap_or(""),
        committed = decision.committed,
        "settled an item of a linked chain whose router went away"
    );
    Ok(())
}

fn count_decision(decision: &'static str) {
    crate::metrics::NODE
        .recovery_decisions
        .get_or_create(&crate::metrics::DecisionLabel { decision })
        .inc();
}

/// Releases the shard's holds whose expiry passed: while a hold is pending, each pass takes a
/// fresh oracle timestamp, and once it reaches the earliest expiry proposes `ExpireHolds`
/// stamped with it; the state machine releases the holds due at that timestamp, a bounded
/// number per command. No node's clock takes part.
async fn expire_holds(
    service: &NodeService,
    shards: &Arc<Shards>,
    shard_id: u64,
) -> Result<(), tonic::Status> {
    for _ in 0..8 {
        let next = match service
            .read(Request::new(ShardRead {
                shard_id,
                query: Some(Query::NextHoldExpiry(NextHoldExpiry {})),
            }))
            .await?
            .into_inner()
            .result
        {
            Some(read_result::Result::NextHoldExpiryTs(ts)) => ts,
            _ => return Ok(()),
        };
        if next == 0 {
            return Ok(());
        }
        // The oracle's clock decides, never this node's: one timestamp per pass while a hold is
        // pending.
        let ts = shards.tso(1).await?.first;
        if ts < next {
            return Ok(());
        }
        let outcome = propose(service, shard_id, "", ts, Op::ExpireHolds(ExpireHolds {})).await?;
        match outcome.result {
            Some(outcome::Result::Expired(n)) if n > 0 => {
                tracing::info!(shard_id, expired = n, "released expired holds");
                count_decision("expire_holds");
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

async fn propose(
    service: &NodeService,
    shard_id: u64,
    transfer_id: &str,
    ts: u64,
    op: Op,
) -> Result<Outcome, tonic::Status> {
    let command = Command {
        request_id: transfer_id.to_string(),
        at_ms: 0,
        ts,
        op: Some(op),
    };
    Ok(service
        .execute(Request::new(ShardCommand {
            shard_id,
            command: Some(command),
        }))
        .await?
        .into_inner())
}

fn status_of(outcome: &Outcome) -> Option<TransferStatus> {
    match &outcome.result {
        Some(outcome::Result::Transfer(t)) => TransferStatus::try_from(t.status).ok(),
        _ => None,
    }
}
