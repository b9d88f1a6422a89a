//! The router's steps for a hold whose payee lives on another shard than its payer (README
//! § Holds), and the settling of such a hold's promise, run by the payee shard's recovery and by
//! snapshot reads.
//!
//! The hold is the payer shard's record, as for any hold; the payee's shard holds a *promise*: an
//! intent flagged `hold` (the payee's `pending_credit`), made with the credit side's checks
//! (account, currency, frozen, overflow). Steps:
//! 1. `Authorize` on the payer's shard: the hold PENDING, the amount reserved, not yet promised.
//! 2. `PrepareCredit{hold}` on the payee's shard. Then `HoldPromised` on the payer's shard: the
//!    hold may be captured from now on; or, if the payee's shard refused, the hold is released and
//!    its authorization answers that refusal (G4).
//! 3. `Capture` on the payer's shard (**the commit point**: the captured amount leaves the payer
//!    at the capture's timestamp), then `CommitCredit` with that amount, at that timestamp, on the
//!    payee's shard (the rest of the promise is released). A capture of a hold not yet promised
//!    answers the pending hold: the promise is made (step 2), then the capture is sent again.
//! 4. `Void`, or expiry by the payer shard's `ExpireHolds`: the payer's reservation is released,
//!    then `AbortCredit` releases the promise.
//!
//! Every step is idempotent by hold id. A router that stops between steps leaves nothing stuck:
//! the payee shard's recovery reads the hold of every promise still pending ([`settle_promise`])
//! and credits or releases it once the hold is decided; a hold never promised is released by its
//! expiry.

use tonic::Status;
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::v1::{
    command::Op, outcome, read_result, shard_read::Query, AuthorizeRequest, CaptureRequest,
    CloseTs, GetHoldRequest, Hold, HoldPromised, HoldState, Intent, IntentRef, Outcome,
    PrepareCredit, StuckTransfers, TransferRequest, TransferStatus, TransferStep, VoidRequest,
};

use crate::shards::Shards;
use crate::steps::{command, status_of, transfer_of};
use crate::timestamps::Timestamps;

/// The hold in an outcome, or the refusal as a status.
fn hold_of(outcome: Outcome) -> Result<Hold, Status> {
    match outcome.result {
        Some(outcome::Result::Hold(h)) => Ok(h),
        Some(outcome::Result::Rejected(r)) => Err(Refusal::of_rejection(&r).into()),
        _ => Err(Reason::Internal.status("unexpected answer to a hold step")),
    }
}

fn state_of(hold: &Hold) -> HoldState {
    HoldState::try_from(hold.state).unwrap_or(HoldState::Unspecified)
}

/// A cross-shard authorization (steps 1 and 2).
pub async fn authorize(
    shards: &Shards,
    timestamps: &Timestamps,
    request: AuthorizeRequest,
) -> Result<Hold, Status> {
    let from_shard = shards.shard_of(&request.from_account_id);
    let id = request.hold_id.clone();
    let issued_at_ms = request.issued_at_ms;
    let hold = hold_of(
        timestamps
            .execute_fresh(shards, from_shard, command(&id, 0, Op::Authorize(request)))
            .await?,
    )?;
    failpoint!("hold-after-authorize");
    follow(shards, timestamps, hold, issued_at_ms).await
}

/// A cross-shard capture (step 3; step 2 first if the promise is not confirmed yet).
pub async fn capture(
    shards: &Shards,
    timestamps: &Timestamps,
    request: CaptureRequest,
) -> Result<Hold, Status> {
    let from_shard = shards.shard_of(&request.from_account_id);
    let id = request.hold_id.clone();
    for _ in 0..3 {
        let op = Op::Capture(request.clone());
        let hold = hold_of(
            timestamps
                .execute_fresh(shards, from_shard, command(&id, 0, op))
                .await?,
        )?;
        if state_of(&hold) == HoldState::Pending && hold.cross_shard && !hold.promised {
            // Not promised yet: promise first, then capture again.
            follow(shards, timestamps, hold, 0).await?;
            continue;
        }
        failpoint!("hold-after-capture");
        return follow(shards, timestamps, hold, 0).await;
    }
    Err(Reason::Unavailable.status(format!(
        "hold {id}: its promise to the payee could not be confirmed; retry"
    )))
}

/// A void of a hold (step 4), whichever shard its payee lives on: a cross-shard one has its
/// promise released too.
pub async fn void(
    shards: &Shards,
    timestamps: &Timestamps,
    request: VoidRequest,
) -> Result<Hold, Status> {
    let from_shard = shards.shard_of(&request.from_account_id);
    let id = request.hold_id.clone();
    let hold = hold_of(
        timestamps
            .execute_fresh(shards, from_shard, command(&id, 0, Op::Void(request)))
            .await?,
    )?;
    follow(shards, timestamps, hold, 0).await
}

/// Brings the payee's side of a cross-shard hold in line with the hold, and answers the hold:
/// PENDING → the promise made and confirmed (or, refused there, the hold released with that
/// refusal, which is the answer); CAPTURED → the captured amount credited; VOIDED or EXPIRED →
/// the promise released. A same-shard hold is answered as it is.
pub async fn follow(
    shards: &Shards,
    timestamps: &Timestamps,
    hold: Hold,
    issued_at_ms: i64,
) -> Result<Hold, Status> {
    if !hold.cross_shard {
        return Ok(hold);
    }
    let (from_shard, to_shard) = (
        shards.shard_of(&hold.from_account_id),
        shards.shard_of(&hold.to_account_id),
    );
    let id = hold.hold_id.clone();
    match state_of(&hold) {
        HoldState::Pending if hold.promised => Ok(hold),
        HoldState::Pending => {
            let promise = Op::PrepareCredit(PrepareCredit {
                transfer: Some(TransferRequest {
                    transfer_id: id.clone(),
                    from_account_id: hold.from_account_id.clone(),
                    to_account_id: hold.to_account_id.clone(),
                    amount: hold.amount,
                    issued_at_ms,
                }),
                primary_shard_id: from_shard,
                currency: hold.currency.clone(),
                primary_start_ts: hold.start_ts,
                linked: false,
                hold: true,
            });
            let answer = timestamps
                .execute_fresh(shards, to_shard, command(&id, 0, promise))
                .await?;
            let (refusal, promise_ts) = match answer.result {
                Some(outcome::Result::Transfer(t)) => (None, t.start_ts),
                Some(outcome::Result::Rejected(r)) => (Some(r), 0),
                _ => return Err(Reason::Internal.status("unexpected answer to a promise")),
            };
            failpoint!("hold-before-promised");
            let promised = Op::HoldPromised(HoldPromised {
                hold_id: id.clone(),
                from_account_id: hold.from_account_id.clone(),
                refusal,
                promise_ts,
            });
            let answer = shards
                .execute(from_shard, command(&id, 0, promised))
                .await?;
            let hold = hold_of(answer)?;
            match state_of(&hold) {
                HoldState::Pending => Ok(hold),
                // Decided meanwhile (a void, an expiry): settle its promise that way.
                _ => Box::pin(follow(shards, timestamps, hold, issued_at_ms)).await,
            }
        }
        HoldState::Captured => {
            let step = TransferStep {
                transfer_id: id.clone(),
                account_id: hold.to_account_id.clone(),
                from_account_id: hold.from_account_id.clone(),
                amount: hold.captured,
                promise_ts: hold.promised_ts,
                ..Default::default()
            };
            let credited = shards
                .execute(
                    to_shard,
                    command(&id, hold.decided_ts, Op::CommitCredit(step)),
                )
                .await
                .and_then(transfer_of);
            match credited {
                Ok(_) => Ok(hold),
                // Not kept any more: credited and forgotten long ago.
                Err(s) if wallet_proto::reason::of_status(&s) == Reason::TransferNotFound => {
                    Ok(hold)
                }
                Err(s) => Err(Reason::Unavailable.status(format!(
                    "hold {id} is captured but its credit is not applied yet ({}); retry the \
                     capture",
                    s.message()
                ))),
            }
        }
        _ => {
            let step = TransferStep {
                transfer_id: id.clone(),
                account_id: hold.to_account_id.clone(),
                from_account_id: hold.from_account_id.clone(),
                ..Default::default()
            };
            shards
                .execute(to_shard, command(&id, 0, Op::AbortCredit(step)))
                .await
                .and_then(transfer_of)
                .map_err(|s| {
                    Reason::Unavailable.status(format!(
                        "hold {id} is released but its promise to the payee is not yet ({}); \
                         retry",
                        s.message()
                    ))
                })?;
            Ok(hold)
        }
    }
}

/// Where the next page of a `Stuck` answer's promises starts: after its last one, if more
/// follow (None: the page was the last).
pub fn next_promises_page(page: &StuckTransfers) -> Option<IntentRef> {
    if !page.more_promises {
        return None;
    }
    let t = page.promises.last()?.transfer.as_ref()?;
    Some(IntentRef {
        credit_account_id: t.to_account_id.clone(),
        debit_account_id: t.from_account_id.clone(),
        transfer_id: t.transfer_id.clone(),
    })
}

/// What settling a hold's promise came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promise {
    /// Credited or released, following its decided hold.
    Settled(TransferStatus),
    /// Its hold is still pending.
    Pending,
}

/// Closes a shard at `ts` (a snapshot read's rule 1): from then on it refuses every new command
/// stamped at or below it, so a hold of it still pending after this can only be captured after
/// `ts`, and a snapshot read at `ts` may count its promise as not credited.
pub async fn close(shards: &Shards, shard_id: u64, ts: u64) -> Result<(), Status> {
    let close = Op::CloseTs(CloseTs { ts });
    shards.execute(shard_id, command("", 0, close)).await?;
    Ok(())
}

/// The payee shard's side: applies the hold's decision to a promise still pending (`intent`,
/// flagged `hold`), or answers that the hold is still pending.
pub async fn settle_promise(
    shards: &Shards,
    credit_shard: u64,
    intent: &Intent,
) -> Result<Promise, Status> {
    let Some(t) = intent.transfer.as_ref() else {
        return Ok(Promise::Pending);
    };
    let read = shards
        .read(
            intent.primary_shard_id,
            Query::Hold(GetHoldRequest {
                hold_id: t.transfer_id.clone(),
                from_account_id: t.from_account_id.clone(),
            }),
        )
        .await?;
    let (op, ts) = match read.result {
        Some(read_result::Result::Hold(hold)) => {
            let step = TransferStep {
                transfer_id: t.transfer_id.clone(),
                account_id: t.to_account_id.clone(),
                from_account_id: t.from_account_id.clone(),
                ..Default::default()
            };
            match state_of(&hold) {
                HoldState::Pending => return Ok(Promise::Pending),
                HoldState::Captured => (
                    Op::CommitCredit(TransferStep {
                        amount: hold.captured,
                        promise_ts: hold.promised_ts,
                        ..step
                    }),
                    hold.decided_ts,
                ),
                _ => (Op::AbortCredit(step), 0),
            }
        }
        // Not found: never authorized, refused (its promise too), or decided and confirmed
        // long ago (then this promise is no longer pending). It will never be captured.
        Some(read_result::Result::Rejected(r)) if r.reason == Reason::HoldNotFound.as_str() => {
            let step = TransferStep {
                transfer_id: t.transfer_id.clone(),
                account_id: t.to_account_id.clone(),
                from_account_id: t.from_account_id.clone(),
                ..Default::default()
            };
            (Op::AbortCredit(step), 0)
        }
        _ => return Ok(Promise::Pending),
    };
    let outcome = shards
        .execute(credit_shard, command(&t.transfer_id, ts, op))
        .await?;
    Ok(Promise::Settled(status_of(&transfer_of(outcome)?)))
}
