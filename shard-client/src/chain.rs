//! The coordinator of a linked chain (README § Linked chains), run by the router, and the settling
//! of a chain's item left PREPARED by a coordinator that stopped, run by the nodes' recovery.
//!
//! A chain is 2..=8189 transfers that happen all or none, wherever their accounts live:
//! 1. **Prepare every item at once**, each like a cross-shard transfer (`PrepareDebit` naming the
//!    chain on the debit account's shard, then `PrepareCredit` on the credit account's shard),
//!    even when both accounts share a shard.
//! 2. **Decide once** with `ChainDecide` on the shard of the first item's debit account (the
//!    chain's *anchor*): COMMIT at a fresh timestamp if every item prepared, else ABORT naming the
//!    first item refused and its refusal. **This entry is the chain's commit point.** The anchor
//!    keeps the first decision: an abort asked earlier by recovery wins over this commit.
//! 3. **Apply the decision to every item at once**: `CommitDebit`/`CommitCredit` at the chain's
//!    commit timestamp, or `AbortDebit`/`AbortCredit`.
//!
//! The client gets each item's transfer, or: the failed item its own refusal, every other item
//! `CHAIN_FAILED`. An answer comes only after every item's credit applied (G6). Like a transfer,
//! a chain keeps no state in the router: a retry of the same items resumes it (every step is
//! idempotent by id), and an item left PREPARED is settled by its debit shard's recovery through
//! [`settle_item`], which asks the anchor to decide ABORT (answered by the first decision if one
//! was made) and applies whatever decision the anchor holds.

use tokio::task::JoinSet;
use tonic::Status;
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::v1::{
    command::Op, outcome, ChainDecide, ChainDecision, ChainRef, Outcome, PrepareCredit,
    PrepareDebit, Rejection, Transfer, TransferRequest, TransferStatus, TransferStep,
};

use crate::shards::Shards;
use crate::steps::{command, status_of, transfer_of};
use crate::timestamps::Timestamps;
use crate::two_phase::{commit_credit, credit_step};

/// The chain of `items`: its anchor (first debit account), id (first item's id), length and a
/// CRC32 over every item (without issue times, which a retry may change).
pub fn chain_ref(items: &[TransferRequest]) -> ChainRef {
    let mut digest = crc32fast::Hasher::new();
    for t in items {
        for field in [&t.transfer_id, &t.from_account_id, &t.to_account_id] {
            digest.update(&(field.len() as u32).to_le_bytes());
            digest.update(field.as_bytes());
        }
        digest.update(&t.amount.to_le_bytes());
    }
    let first = items.first();
    ChainRef {
        account_id: first.map(|t| t.from_account_id.clone()).unwrap_or_default(),
        chain_id: first.map(|t| t.transfer_id.clone()).unwrap_or_default(),
        legs: items.len() as u32,
        digest: digest.finalize(),
    }
}

/// Checks a chain before anything is written: each item's fields, 2..=8189 items, and no two
/// items with one debit account and id (ids are scoped to the debit account, G4). On a refusal:
/// the item (0-based) and why.
pub fn check(items: &[TransferRequest]) -> Result<(), (usize, Refusal)> {
    if items.len() < 2 || items.len() > wallet_proto::TRANSFER_BATCH_MAX {
        return Err((
            items.len().saturating_sub(1),
            Reason::InvalidArgument.refuse(format!(
                "a chain has 2 to {} items",
                wallet_proto::TRANSFER_BATCH_MAX
            )),
        ));
    }
    let mut keys = std::collections::HashSet::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let checked = wallet_proto::validate::id("transfer id", &t.transfer_id)
            .and_then(|_| wallet_proto::validate::id("from account id", &t.from_account_id))
            .and_then(|_| wallet_proto::validate::id("to account id", &t.to_account_id))
            .and_then(|_| wallet_proto::validate::amount(t.amount));
        if let Err(refusal) = checked {
            return Err((i, refusal));
        }
        if t.from_account_id == t.to_account_id {
            return Err((
                i,
                Reason::SameAccount.refuse("cannot transfer from an account to itself"),
            ));
        }
        if !keys.insert((&t.from_account_id, &t.transfer_id)) {
            return Err((
                i,
                Reason::IdReused.refuse(format!(
                    "transfer id {} appears twice for account {} in the chain",
                    t.transfer_id, t.from_account_id
                )),
            ));
        }
    }
    Ok(())
}

/// One answer per item: the failed item's own refusal, `CHAIN_FAILED` for the others.
pub fn failed(
    len: usize,
    failed_item: Option<usize>,
    refusal: &Refusal,
) -> Vec<Result<Transfer, Status>> {
    (0..len)
        .map(|i| {
            Err(if Some(i) == failed_item {
                refusal.status()
            } else {
                match failed_item {
                    Some(f) => Reason::ChainFailed
                        .status(format!("item {} of the chain failed: {refusal}", f + 1)),
                    None => Reason::ChainFailed.status(format!("the chain failed: {refusal}")),
                }
            })
        })
        .collect()
}

/// What preparing one item came to.
enum Prepared {
    /// Both sides prepared (or committed by an earlier attempt).
    Ready,
    /// Refused by one side (or aborted by an earlier decision): the chain cannot commit.
    Refused(Rejection),
}

/// Runs (or resumes) the chain of `items`, already [`check`]ed. One result per item, in order.
pub async fn run(
    shards: std::sync::Arc<Shards>,
    timestamps: Timestamps,
    items: Vec<TransferRequest>,
) -> Vec<Result<Transfer, Status>> {
    let len = items.len();
    match drive(shards, timestamps, items).await {
        Ok(results) => results,
        // Undecided or not yet applied: the outcome is unknown to the client, as after a
        // timeout; a retry with the same items resumes, recovery settles it meanwhile.
        Err(status) => (0..len).map(|_| Err(status.clone())).collect(),
    }
}

async fn drive(
    shards: std::sync::Arc<Shards>,
    timestamps: Timestamps,
    items: Vec<TransferRequest>,
) -> Result<Vec<Result<Transfer, Status>>, Status> {
    let chain = chain_ref(&items);
    let mut tasks = JoinSet::new();
    for (i, item) in items.iter().enumerate() {
        let (shards, timestamps, item, chain) = (
            shards.clone(),
            timestamps.clone(),
            item.clone(),
            chain.clone(),
        );
        tasks.spawn(async move { (i, prepare(&shards, &timestamps, item, chain).await) });
    }
    let mut first_refused: Option<(usize, Rejection)> = None;
    let mut unknown: Option<Status> = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, prepared) = joined.map_err(|e| Reason::Internal.status(e.to_string()))?;
        match prepared {
            Ok(Prepared::Ready) => {}
            Ok(Prepared::Refused(r)) => {
                if first_refused.as_ref().is_none_or(|(f, _)| i < *f) {
                    first_refused = Some((i, r));
                }
            }
            Err(status) => unknown = Some(status),
        }
    }
    // An item whose shard did not answer may be prepared or not: leave the chain undecided (a
    // retry resumes it, recovery aborts it), unless another item's refusal decides it anyway.
    if let (None, Some(status)) = (&first_refused, unknown) {
        return Err(status);
    }
    failpoint!("chain-after-prepare");
    let decide = match &first_refused {
        None => ChainDecide {
            chain: Some(chain.clone()),
            commit: true,
            failed_item: 0,
            refusal: None,
            items: items
                .iter()
                .map(|t| TransferStep {
                    transfer_id: t.transfer_id.clone(),
                    account_id: t.from_account_id.clone(),
                    ..Default::default()
                })
                .collect(),
        },
        Some((i, refusal)) => ChainDecide {
            chain: Some(chain.clone()),
            commit: false,
            failed_item: *i as u32 + 1,
            refusal: Some(refusal.clone()),
            items: Vec::new(),
        },
    };
    let ts = if decide.commit {
        timestamps.next().await?
    } else {
        0
    };
    let anchor = shards.shard_of(&chain.account_id);
    let decision = decision_of(
        shards
            .execute(
                anchor,
                command(&chain.chain_id, ts, Op::ChainDecide(decide)),
            )
            .await?,
    )?;
    failpoint!("chain-after-decide");
    let mut results: Vec<Option<Transfer>> = vec![None; items.len()];
    let mut items = items.into_iter().enumerate();
    if decision.committed {
        // The first item alone, so that a router stopped here leaves a chain half applied.
        if let Some((i, item)) = items.next() {
            results[i] = apply(&shards, &item, &decision).await?;
        }
        failpoint!("chain-after-first-commit");
    }
    let mut tasks = JoinSet::new();
    for (i, item) in items {
        let (shards, decision) = (shards.clone(), decision.clone());
        tasks.spawn(async move { (i, apply(&shards, &item, &decision).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, applied) = joined.map_err(|e| Reason::Internal.status(e.to_string()))?;
        results[i] = applied?;
    }
    if decision.committed {
        return results
            .into_iter()
            .map(|t| t.ok_or_else(|| Reason::Internal.status("chain item without its transfer")))
            .map(Ok)
            .collect();
    }
    let refusal = decision.refusal.as_ref().map_or_else(
        || Reason::TransferAborted.refuse("the chain was abandoned and aborted by recovery"),
        Refusal::of_rejection,
    );
    let failed_item = (decision.failed_item as usize).checked_sub(1);
    Ok(failed(results.len(), failed_item, &refusal))
}

/// The decision in a `ChainDecide` outcome, or the refusal as a status.
fn decision_of(outcome: Outcome) -> Result<ChainDecision, Status> {
    match outcome.result {
        Some(outcome::Result::Chain(d)) => Ok(d),
        Some(outcome::Result::Rejected(r)) => Err(Refusal::of_rejection(&r).into()),
        _ => Err(Reason::Internal.status("unexpected answer to a chain decision")),
    }
}

/// Step 1 for one item: both sides, in order (the credit side learns the debit's currency).
async fn prepare(
    shards: &Shards,
    timestamps: &Timestamps,
    item: TransferRequest,
    chain: ChainRef,
) -> Result<Prepared, Status> {
    let id = item.transfer_id.clone();
    let (from_shard, to_shard) = (
        shards.shard_of(&item.from_account_id),
        shards.shard_of(&item.to_account_id),
    );
    let debit = Op::PrepareDebit(PrepareDebit {
        transfer: Some(item.clone()),
        credit_shard_id: to_shard,
        chain: Some(chain),
    });
    let prepared = match timestamps
        .execute_fresh(shards, from_shard, command(&id, 0, debit))
        .await?
        .result
    {
        Some(outcome::Result::Transfer(t)) => t,
        Some(outcome::Result::Rejected(r)) => return Ok(Prepared::Refused(r)),
        _ => return Err(Reason::Internal.status("unexpected answer to a prepare")),
    };
    match status_of(&prepared) {
        TransferStatus::Prepared => {}
        TransferStatus::Committed => return Ok(Prepared::Ready),
        _ => {
            return Ok(Prepared::Refused(
                Reason::TransferAborted
                    .refuse(format!("transfer {id} was aborted"))
                    .into(),
            ))
        }
    }
    let credit = Op::PrepareCredit(PrepareCredit {
        transfer: Some(item),
        primary_shard_id: from_shard,
        currency: prepared.currency.clone(),
        primary_start_ts: prepared.start_ts,
        linked: true,
        hold: false,
    });
    match timestamps
        .execute_fresh(shards, to_shard, command(&id, 0, credit))
        .await?
        .result
    {
        Some(outcome::Result::Transfer(_)) => Ok(Prepared::Ready),
        Some(outcome::Result::Rejected(r)) => Ok(Prepared::Refused(r)),
        _ => Err(Reason::Internal.status("unexpected answer to a prepare")),
    }
}

/// Step 3 for one item: its transfer once committed (debit then credit), None once aborted.
async fn apply(
    shards: &Shards,
    item: &TransferRequest,
    decision: &ChainDecision,
) -> Result<Option<Transfer>, Status> {
    let id = &item.transfer_id;
    let (from_shard, to_shard) = (
        shards.shard_of(&item.from_account_id),
        shards.shard_of(&item.to_account_id),
    );
    let debit_step = TransferStep {
        transfer_id: id.clone(),
        account_id: item.from_account_id.clone(),
        chain: decision.chain.clone(),
        ..Default::default()
    };
    if decision.committed {
        let op = Op::CommitDebit(debit_step);
        let committed = transfer_of(
            shards
                .execute(from_shard, command(id, decision.commit_ts, op))
                .await?,
        )?;
        commit_credit(shards, to_shard, &committed).await?;
        return Ok(Some(committed));
    }
    // The debit side answers whose record this is: only an item this chain prepared (its record
    // names the chain) has a credit side to release. An item never prepared answers
    // TRANSFER_NOT_FOUND, one refused at its prepare its refusal, and an id owned by another
    // transfer or chain ID_REUSED: nothing of this chain is reserved there, and its credit side,
    // if a late prepare made one, is released by that shard's recovery (its primary never
    // commits). Aborting it here could release a credit that another transfer owns.
    let answer = shards
        .execute(from_shard, command(id, 0, Op::AbortDebit(debit_step)))
        .await?;
    let ours = match &answer.result {
        Some(outcome::Result::Transfer(t)) if t.chain == decision.chain => status_of(t),
        _ => TransferStatus::Unspecified,
    };
    if ours == TransferStatus::Committed {
        // Only a decision made again after the first was forgotten (a retry long after its
        // window) can meet a committed item: the first decision stood, its credits are not
        // this abort's to release.
        return Err(Reason::RequestExpired.status(format!(
            "chain {} committed long ago and is no longer remembered; use new ids",
            decision.chain.as_ref().map_or("", |c| c.chain_id.as_str())
        )));
    }
    if ours == TransferStatus::Aborted {
        let abort = Op::AbortCredit(credit_step(item));
        let _ = shards.execute(to_shard, command(id, 0, abort)).await?;
    }
    Ok(None)
}

/// Recovery, for an item of `transfer.chain` left PREPARED on its debit shard: asks the chain's
/// anchor to decide ABORT (the first decision stands, so a committed chain answers COMMITTED),
/// then applies that decision to this item (and to its credit side). Returns the decision.
pub async fn settle_item(shards: &Shards, transfer: &Transfer) -> Result<ChainDecision, Status> {
    let chain = transfer
        .chain
        .clone()
        .ok_or_else(|| Reason::Internal.status("not an item of a chain"))?;
    let anchor = shards.shard_of(&chain.account_id);
    let abort = Op::ChainDecide(ChainDecide {
        chain: Some(chain.clone()),
        commit: false,
        failed_item: 0,
        refusal: None,
        items: Vec::new(),
    });
    let decision = decision_of(
        shards
            .execute(anchor, command(&chain.chain_id, 0, abort))
            .await?,
    )?;
    let item = TransferRequest {
        transfer_id: transfer.transfer_id.clone(),
        from_account_id: transfer.from_account_id.clone(),
        to_account_id: transfer.to_account_id.clone(),
        amount: transfer.amount,
        issued_at_ms: 0,
    };
    apply(shards, &item, &decision).await?;
    Ok(decision)
}
