//! The coordinator of a cross-shard transfer (DESIGN §6), run by the router, and the settling of an
//! intent its coordinator left behind, run by the nodes' recovery and by audits.
//!
//! 1. `PrepareDebit` at `start_ts` on the primary (the debit account's shard): record PREPARED +
//!    reservation.
//! 2. `PrepareCredit` on the credit shard: an intent on the credit account.
//! 3. `CommitDebit` at a fresh `commit_ts` on the primary: **the commit point**.
//! 4. `CommitCredit` at the same `commit_ts` on the credit shard. The client is answered OK only
//!    after it applied, so a read that starts after the answer sees the credit (G6). If it cannot
//!    be applied (the credit shard does not answer within the retry budget), the client gets
//!    `UNAVAILABLE` — the outcome is unknown to it, as after any timeout — and a retry with the same
//!    id answers once the credit is in (recovery on the nodes applies it by itself meanwhile).
//!    Both legs' history entries carry the one `commit_ts`.
//!
//! A refusal at step 2 aborts the primary (`AbortDebit`), then the client gets the refusal. The
//! coordinator keeps no state: every step is idempotent by transfer id, so a retry of the whole
//! transfer (same id, any router) resumes from wherever the first attempt stopped, and a router
//! that dies mid-way is replaced by the nodes' recovery (`node/src/recovery.rs`).

use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_proto::v1::{
    command::Op, outcome, read_result, shard_read::Query, GetTransferRequest, Intent,
    PrepareCredit, PrepareDebit, Transfer, TransferRequest, TransferStatus, TransferStep,
};

use crate::shards::Shards;
use crate::steps::{command, status_of, transfer_of};
use crate::timestamps::Timestamps;

/// A decision step on the credit side of `t`.
pub fn credit_step(t: &TransferRequest) -> TransferStep {
    TransferStep {
        transfer_id: t.transfer_id.clone(),
        account_id: t.to_account_id.clone(),
        from_account_id: t.from_account_id.clone(),
        refusal: None,
        ..Default::default()
    }
}

fn aborted(t: &Transfer) -> Status {
    Reason::TransferAborted.status(format!("transfer {} was aborted", t.transfer_id))
}

/// Runs (or resumes) a transfer whose accounts live on `from_shard` and `to_shard`.
pub async fn transfer(
    shards: &Shards,
    timestamps: &Timestamps,
    request: TransferRequest,
    from_shard: u64,
    to_shard: u64,
) -> Result<Transfer, Status> {
    let id = request.transfer_id.clone();
    let debit_step = || TransferStep {
        transfer_id: id.clone(),
        account_id: request.from_account_id.clone(),
        ..Default::default()
    };
    let prepare = Op::PrepareDebit(PrepareDebit {
        transfer: Some(request.clone()),
        credit_shard_id: to_shard,
        chain: None,
    });
    let prepared = transfer_of(
        timestamps
            .execute_fresh(shards, from_shard, command(&id, 0, prepare))
            .await?,
    )?;
    failpoint!("after-prepare-debit");
    match status_of(&prepared) {
        TransferStatus::Prepared => {}
        TransferStatus::Committed => {
            // Decided by an earlier attempt: make sure the credit lands, answer as before.
            commit_credit(shards, to_shard, &prepared).await?;
            return Ok(prepared);
        }
        _ => return Err(aborted(&prepared)),
    }

    let prepare_credit = Op::PrepareCredit(PrepareCredit {
        transfer: Some(request.clone()),
        primary_shard_id: from_shard,
        currency: prepared.currency.clone(),
        primary_start_ts: prepared.start_ts,
        linked: false,
        hold: false,
    });
    // The intent gets its own start timestamp (a snapshot read waits for intents started before
    // it; this one's commit timestamp, taken later, is above its start either way).
    let credit = timestamps
        .execute_fresh(shards, to_shard, command(&id, 0, prepare_credit))
        .await?;
    failpoint!("after-prepare-credit");
    if let Some(outcome::Result::Rejected(rejection)) = &credit.result {
        // The credit side cannot take it: abort on the primary first (the decision), remembering
        // the refusal as the transfer's outcome (a retry answers it again, G4), then report.
        let abort = Op::AbortDebit(TransferStep {
            refusal: Some(rejection.clone()),
            ..debit_step()
        });
        let decided = transfer_of(shards.execute(from_shard, command(&id, 0, abort)).await?)?;
        if status_of(&decided) == TransferStatus::Committed {
            // Another attempt with the same id committed it meanwhile: the transfer happened.
            commit_credit(shards, to_shard, &decided).await?;
            return Ok(decided);
        }
        return Err(aborted(&decided));
    }
    transfer_of(credit)?;

    failpoint!("before-commit-primary");
    let commit = Op::CommitDebit(debit_step());
    let commit_ts = timestamps.next().await?;
    let decision = shards
        .execute(from_shard, command(&id, commit_ts, commit))
        .await?;
    let committed = match transfer_of(decision) {
        Ok(t) => t,
        Err(refusal) => {
            // Recovery aborted it first (this router was too slow): release the intent.
            let abort = Op::AbortCredit(credit_step(&request));
            let _ = shards.execute(to_shard, command(&id, 0, abort)).await;
            return Err(refusal);
        }
    };
    failpoint!("after-commit-primary");
    failpoint!("before-commit-credit");
    commit_credit(shards, to_shard, &committed).await?;
    Ok(committed)
}

/// Step 4. The transfer is committed whatever happens here; an error means its credit is not
/// applied yet, and the client must not be told OK (G6): it gets `UNAVAILABLE` and retries by id,
/// while the credit shard's recovery applies the credit once its intent times out.
///
/// `committed` is the primary's record: it carries the commit timestamp of the first commit (a
/// retry's own commit_ts is ignored by the primary), which the credit takes too.
pub(crate) async fn commit_credit(
    shards: &Shards,
    to_shard: u64,
    committed: &Transfer,
) -> Result<(), Status> {
    let step = credit_step(&TransferRequest {
        transfer_id: committed.transfer_id.clone(),
        from_account_id: committed.from_account_id.clone(),
        to_account_id: committed.to_account_id.clone(),
        amount: committed.amount,
        issued_at_ms: 0,
    });
    let id = &committed.transfer_id;
    // `FAILPOINTS=commit-credit-lost=return`: the CommitCredit call is lost, as if its shard did
    // not answer within the retry budget.
    fail::fail_point!("commit-credit-lost", |_| {
        tracing::warn!(transfer = %id, "failpoint: commit credit lost");
        Err(Reason::Unavailable.status(format!(
            "transfer {id} is committed but its credit is not applied yet; retry with the same id"
        )))
    });
    let result = shards
        .execute(
            to_shard,
            command(id, committed.commit_ts, Op::CommitCredit(step)),
        )
        .await
        .and_then(transfer_of);
    match result {
        Ok(_) => Ok(()),
        // A COMMITTED primary had its intent prepared; one no longer kept was decided and
        // forgotten (two retention windows after it was issued): the credit landed long ago.
        Err(status) if wallet_proto::reason::of_status(&status) == Reason::TransferNotFound => {
            Ok(())
        }
        Err(status) => {
            tracing::warn!(transfer = %id, error = %status.message(), "credit not applied yet; recovery applies it");
            let reason = wallet_proto::reason::of_status(&status);
            let reason = if reason.is_retryable() {
                Reason::Unavailable
            } else {
                Reason::Internal
            };
            Err(reason.status(format!(
                "transfer {id} is committed but its credit is not applied yet ({}); retry with the same id",
                status.message()
            )))
        }
    }
}

/// Applies the primary's decision to a pending intent on `credit_shard`: the credit at the
/// primary's commit timestamp if it committed, the release if it aborted or never prepared.
/// Returns the decision applied, or None while the primary has not decided (it decides by itself
/// within its resolve timeout). Used by the nodes' recovery and by snapshot reads, which settle the
/// intents they wait for instead of waiting for recovery's timeout.
pub async fn settle_intent(
    shards: &Shards,
    credit_shard: u64,
    intent: &Intent,
) -> Result<Option<TransferStatus>, Status> {
    if intent.hold {
        // A cross-shard hold's promise follows its hold, not a transfer record.
        return match crate::holds::settle_promise(shards, credit_shard, intent).await? {
            crate::holds::Promise::Settled(status) => Ok(Some(status)),
            crate::holds::Promise::Pending => Ok(None),
        };
    }
    let Some(t) = intent.transfer.as_ref() else {
        return Ok(None);
    };
    let decision = shards
        .read(
            intent.primary_shard_id,
            Query::Transfer(GetTransferRequest {
                transfer_id: t.transfer_id.clone(),
                from_account_id: t.from_account_id.clone(),
            }),
        )
        .await?;
    let (commit, commit_ts) = match decision.result {
        Some(read_result::Result::Transfer(Transfer {
            status, commit_ts, ..
        })) => match TransferStatus::try_from(status) {
            Ok(TransferStatus::Committed) => (true, commit_ts),
            Ok(TransferStatus::Aborted) => (false, 0),
            _ => return Ok(None),
        },
        // Refused at prepare, or never prepared there: it can never commit.
        Some(read_result::Result::Rejected(_)) => (false, 0),
        _ => return Ok(None),
    };
    let step = credit_step(t);
    let op = if commit {
        Op::CommitCredit(step)
    } else {
        Op::AbortCredit(step)
    };
    let outcome = shards
        .execute(credit_shard, command(&t.transfer_id, commit_ts, op))
        .await?;
    Ok(Some(status_of(&transfer_of(outcome)?)))
}
