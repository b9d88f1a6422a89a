//! Stable reason codes: the contract between the store and the applications that handle its errors.
//!
//! Every error leaves the store as a gRPC status whose message starts with `REASON: ` and whose
//! `wallet-reason` metadata entry holds the code alone, so clients match on the code, never on the
//! prose. The list is documented in README.md § Errors; codes are only ever added, never renamed.
//!
//! [`Refusal`] is the one shape a refusal takes in every crate: a code and a message for people.
//! It travels as a gRPC status between processes and as a [`Rejection`] inside a shard's outcomes
//! and read results, and converts to and from both without losing its code.

use tonic::{Code, Status};

use crate::v1::{outcome, read_result, BatchError, Outcome, ReadResult, Rejection};

/// Metadata key carrying the reason code on every error status.
pub const METADATA_KEY: &str = "wallet-reason";
/// Metadata key carrying the leader's node id on a `NOT_LEADER` status.
pub const LEADER_HINT_KEY: &str = "wallet-leader";

/// A reason code with its gRPC status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    InsufficientFunds,
    AccountNotFound,
    AccountExists,
    CurrencyMismatch,
    SameAccount,
    InvalidAmount,
    InvalidId,
    InvalidCurrency,
    InvalidArgument,
    IdReused,
    BalanceOverflow,
    TransferNotFound,
    TransferAborted,
    TimestampTooOld,
    SnapshotTooOld,
    AuditMismatch,
    NotLeader,
    WrongShard,
    Unavailable,
    Overloaded,
    CrossShardNotSupported,
    CorruptRecord,
    Internal,
    RequestExpired,
    Unauthenticated,
    PermissionDenied,
    AccountFrozen,
    AccountClosed,
    AccountNotEmpty,
    HoldNotFound,
    HoldExpired,
    HoldNotPending,
    ChainFailed,
}

impl Reason {
    /// Every code, for documentation tests and parsing.
    pub const ALL: [Reason; 33] = [
        Reason::InsufficientFunds,
        Reason::AccountNotFound,
        Reason::AccountExists,
        Reason::CurrencyMismatch,
        Reason::SameAccount,
        Reason::InvalidAmount,
        Reason::InvalidId,
        Reason::InvalidCurrency,
        Reason::InvalidArgument,
        Reason::IdReused,
        Reason::BalanceOverflow,
        Reason::TransferNotFound,
        Reason::TransferAborted,
        Reason::TimestampTooOld,
        Reason::SnapshotTooOld,
        Reason::AuditMismatch,
        Reason::NotLeader,
        Reason::WrongShard,
        Reason::Unavailable,
        Reason::Overloaded,
        Reason::CrossShardNotSupported,
        Reason::CorruptRecord,
        Reason::Internal,
        Reason::RequestExpired,
        Reason::Unauthenticated,
        Reason::PermissionDenied,
        Reason::AccountFrozen,
        Reason::AccountClosed,
        Reason::AccountNotEmpty,
        Reason::HoldNotFound,
        Reason::HoldExpired,
        Reason::HoldNotPending,
        Reason::ChainFailed,
    ];

    /// The stable text of the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Reason::AccountNotFound => "ACCOUNT_NOT_FOUND",
            Reason::AccountExists => "ACCOUNT_EXISTS",
            Reason::CurrencyMismatch => "CURRENCY_MISMATCH",
            Reason::SameAccount => "SAME_ACCOUNT",
            Reason::InvalidAmount => "INVALID_AMOUNT",
            Reason::InvalidId => "INVALID_ID",
            Reason::InvalidCurrency => "INVALID_CURRENCY",
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::IdReused => "ID_REUSED",
            Reason::BalanceOverflow => "BALANCE_OVERFLOW",
            Reason::TransferNotFound => "TRANSFER_NOT_FOUND",
            Reason::TransferAborted => "TRANSFER_ABORTED",
            Reason::TimestampTooOld => "TIMESTAMP_TOO_OLD",
            Reason::SnapshotTooOld => "SNAPSHOT_TOO_OLD",
            Reason::AuditMismatch => "AUDIT_MISMATCH",
            Reason::NotLeader => "NOT_LEADER",
            Reason::WrongShard => "WRONG_SHARD",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Overloaded => "OVERLOADED",
            Reason::CrossShardNotSupported => "CROSS_SHARD_NOT_SUPPORTED",
            Reason::CorruptRecord => "CORRUPT_RECORD",
            Reason::Internal => "INTERNAL",
            Reason::RequestExpired => "REQUEST_EXPIRED",
            Reason::Unauthenticated => "UNAUTHENTICATED",
            Reason::PermissionDenied => "PERMISSION_DENIED",
            Reason::AccountFrozen => "ACCOUNT_FROZEN",
            Reason::AccountClosed => "ACCOUNT_CLOSED",
            Reason::AccountNotEmpty => "ACCOUNT_NOT_EMPTY",
            Reason::HoldNotFound => "HOLD_NOT_FOUND",
            Reason::HoldExpired => "HOLD_EXPIRED",
            Reason::HoldNotPending => "HOLD_NOT_PENDING",
            Reason::ChainFailed => "CHAIN_FAILED",
        }
    }

    /// Parses a code written by [`Reason::as_str`].
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The gRPC status code this reason travels with.
    pub fn code(self) -> Code {
        match self {
            Reason::InsufficientFunds
            | Reason::CurrencyMismatch
            | Reason::BalanceOverflow
            | Reason::TransferAborted
            | Reason::WrongShard
            | Reason::RequestExpired
            | Reason::AccountFrozen
            | Reason::AccountClosed
            | Reason::AccountNotEmpty
            | Reason::HoldExpired
            | Reason::HoldNotPending
            | Reason::ChainFailed
            | Reason::CrossShardNotSupported => Code::FailedPrecondition,
            Reason::AccountNotFound | Reason::TransferNotFound | Reason::HoldNotFound => {
                Code::NotFound
            }
            Reason::AccountExists | Reason::IdReused => Code::AlreadyExists,
            Reason::SameAccount
            | Reason::InvalidAmount
            | Reason::InvalidId
            | Reason::InvalidCurrency
            | Reason::InvalidArgument => Code::InvalidArgument,
            Reason::NotLeader
            | Reason::Unavailable
            | Reason::TimestampTooOld
            | Reason::SnapshotTooOld => Code::Unavailable,
            Reason::Overloaded => Code::ResourceExhausted,
            Reason::CorruptRecord | Reason::AuditMismatch => Code::DataLoss,
            Reason::Internal => Code::Internal,
            Reason::Unauthenticated => Code::Unauthenticated,
            Reason::PermissionDenied => Code::PermissionDenied,
        }
    }

    /// Whether retrying the same request (same id) may succeed: the store is busy or moving.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Reason::NotLeader
                | Reason::Unavailable
                | Reason::Overloaded
                | Reason::TimestampTooOld
                | Reason::SnapshotTooOld
        )
    }

    /// A status carrying this reason.
    pub fn status(self, message: impl std::fmt::Display) -> Status {
        let mut status = Status::new(self.code(), format!("{}: {message}", self.as_str()));
        if let Ok(value) = self.as_str().parse() {
            status.metadata_mut().insert(METADATA_KEY, value);
        }
        status
    }
}

/// A refusal: a stable reason code and a message for people (without the code in front).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// The refusal a status carries (see [`of_status`]); the message loses its `CODE: ` prefix.
    pub fn of_status(status: &Status) -> Refusal {
        let reason = of_status(status);
        let message = status.message();
        let message = message
            .strip_prefix(reason.as_str())
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(message);
        Refusal::new(reason, message)
    }

    /// The refusal a shard's answer carries. A code this build does not know (a newer peer's) is
    /// kept in the message and answered as `INTERNAL`, never mistaken for another.
    pub fn of_rejection(rejection: &Rejection) -> Refusal {
        match Reason::parse(&rejection.reason) {
            Some(reason) => Refusal::new(reason, rejection.message.clone()),
            None => Refusal::new(
                Reason::Internal,
                format!("{}: {}", rejection.reason, rejection.message),
            ),
        }
    }

    /// The refusal as a gRPC status.
    pub fn status(&self) -> Status {
        self.reason.status(&self.message)
    }

    /// The refusal as it travels inside a shard's answers.
    pub fn rejection(&self) -> Rejection {
        Rejection {
            reason: self.reason.as_str().into(),
            message: self.message.clone(),
        }
    }
}

impl Reason {
    /// A refusal with this reason.
    pub fn refuse(self, message: impl Into<String>) -> Refusal {
        Refusal::new(self, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Status {
        refusal.status()
    }
}

impl From<&Status> for Refusal {
    fn from(status: &Status) -> Refusal {
        Refusal::of_status(status)
    }
}

impl From<Status> for Refusal {
    fn from(status: Status) -> Refusal {
        Refusal::of_status(&status)
    }
}

impl From<Refusal> for BatchError {
    fn from(refusal: Refusal) -> BatchError {
        BatchError {
            reason: refusal.reason.as_str().into(),
            message: refusal.message,
        }
    }
}

impl From<BatchError> for Refusal {
    /// A batch item's refusal (a code this build does not know reads as `INTERNAL`, as in
    /// [`Refusal::of_rejection`]).
    fn from(error: BatchError) -> Refusal {
        Refusal::of_rejection(&Rejection {
            reason: error.reason,
            message: error.message,
        })
    }
}

impl From<Refusal> for Rejection {
    fn from(refusal: Refusal) -> Rejection {
        Rejection {
            reason: refusal.reason.as_str().into(),
            message: refusal.message,
        }
    }
}

impl From<&Rejection> for Refusal {
    fn from(rejection: &Rejection) -> Refusal {
        Refusal::of_rejection(rejection)
    }
}

impl From<Refusal> for Outcome {
    fn from(refusal: Refusal) -> Outcome {
        Outcome {
            result: Some(outcome::Result::Rejected(refusal.into())),
        }
    }
}

impl From<Refusal> for ReadResult {
    fn from(refusal: Refusal) -> ReadResult {
        ReadResult {
            result: Some(read_result::Result::Rejected(refusal.into())),
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a status names itself, if it names one: its metadata entry (`metadata`, the
/// [`METADATA_KEY`] value), else its message's `CODE:` prefix.
pub fn named(metadata: Option<&str>, message: &str) -> Option<Reason> {
    metadata
        .and_then(Reason::parse)
        .or_else(|| message.split(':').next().and_then(Reason::parse))
}

/// The reason a status carries: the one it names ([`named`]), else one derived from the gRPC code
/// (a transport error without our metadata is `UNAVAILABLE` and can be retried).
pub fn of_status(status: &Status) -> Reason {
    let metadata = status
        .metadata()
        .get(METADATA_KEY)
        .and_then(|v| v.to_str().ok());
    if let Some(reason) = named(metadata, status.message()) {
        return reason;
    }
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => {
            Reason::Unavailable
        }
        Code::ResourceExhausted => Reason::Overloaded,
        Code::InvalidArgument => Reason::InvalidArgument,
        Code::NotFound => Reason::AccountNotFound,
        Code::DataLoss => Reason::CorruptRecord,
        _ => Reason::Internal,
    }
}

/// The leader hint (a node id) of a `NOT_LEADER` status, if it has one.
pub fn leader_hint(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(LEADER_HINT_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .filter(|id| *id != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_a_status() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let status = reason.status("details");
            assert_eq!(of_status(&status), reason);
            assert_eq!(status.code(), reason.code());
            assert!(status.message().starts_with(reason.as_str()));
        }
    }

    #[test]
    fn a_refusal_keeps_its_code_and_message_through_every_shape() {
        for reason in Reason::ALL {
            let refusal = reason.refuse("amount 9223372036854775807: too much");
            let status: Status = refusal.clone().into();
            assert_eq!(Refusal::of_status(&status), refusal);
            let rejection: Rejection = refusal.clone().into();
            assert_eq!(Refusal::of_rejection(&rejection), refusal);
            let outcome: Outcome = refusal.clone().into();
            assert_eq!(
                outcome.result,
                Some(outcome::Result::Rejected(refusal.rejection()))
            );
            assert_eq!(refusal.to_string(), status.message());
            let batch: BatchError = refusal.clone().into();
            assert_eq!(Refusal::from(batch), refusal);
        }
        // A message that only looks like it carries another code keeps it.
        let refusal = Reason::Internal.refuse("ID_REUSED: not really");
        assert_eq!(Refusal::of_status(&refusal.status()), refusal);
        // A code this build does not know is never read as another one.
        let unknown = Rejection {
            reason: "SOMETHING_NEW".into(),
            message: "from a newer peer".into(),
        };
        assert_eq!(
            Refusal::of_rejection(&unknown),
            Reason::Internal.refuse("SOMETHING_NEW: from a newer peer")
        );
        // A transport error without our metadata is UNAVAILABLE, its message kept whole.
        let refusal = Refusal::of_status(&Status::unavailable("connection refused"));
        assert_eq!(refusal, Reason::Unavailable.refuse("connection refused"));
    }

    #[test]
    fn transport_errors_are_retryable() {
        let status = Status::unavailable("connection refused");
        assert_eq!(of_status(&status), Reason::Unavailable);
        assert!(of_status(&status).is_retryable());
    }
}
