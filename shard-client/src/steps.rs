//! The commands and answers every coordinator here shares (two-phase transfers, chains, holds):
//! a command for a step, and the transfer an outcome carries. Kept apart so that the
//! coordinators import it, never each other in a circle.

use tonic::Status;
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::v1::{command::Op, outcome, Command, Outcome, Transfer, TransferStatus};

/// A step's command under `transfer_id` (a transfer's, a hold's or a chain's id), stamped `ts`
/// (0: not stamped; the shard's clock is the leader's).
pub(crate) fn command(transfer_id: &str, ts: u64, op: Op) -> Command {
    Command {
        request_id: transfer_id.to_string(),
        at_ms: 0,
        ts,
        op: Some(op),
    }
}

/// The transfer in an outcome, or the refusal as a status.
pub(crate) fn transfer_of(outcome: Outcome) -> Result<Transfer, Status> {
    match outcome.result {
        Some(outcome::Result::Transfer(t)) => Ok(t),
        Some(outcome::Result::Rejected(r)) => Err(Refusal::of_rejection(&r).into()),
        _ => Err(Reason::Internal.status("unexpected answer from shard")),
    }
}

pub(crate) fn status_of(t: &Transfer) -> TransferStatus {
    TransferStatus::try_from(t.status).unwrap_or(TransferStatus::Unspecified)
}
