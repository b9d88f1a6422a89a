//! Stable reason codes: the contract between the store and the applications that handle its errors.
//!
//! Every error leaves the store as a gRPC status whose message starts with `REASON: ` and whose
//! `wallet-reason` metadata entry holds the code alone, so clients match on the code, never on the
//! prose. The list is documented in README.md § Errors; codes are only ever added, never renamed.

use tonic::{Code, Status};

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
}

impl Reason {
    /// Every code, for documentation tests and parsing.
    pub const ALL: [Reason; 24] = [
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
            | Reason::CrossShardNotSupported => Code::FailedPrecondition,
            Reason::AccountNotFound | Reason::TransferNotFound => Code::NotFound,
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

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a status carries: its metadata entry, else the message prefix, else one derived from
/// the gRPC code (a transport error without our metadata is `UNAVAILABLE` and can be retried).
pub fn of_status(status: &Status) -> Reason {
    if let Some(reason) = status
        .metadata()
        .get(METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(Reason::parse)
    {
        return reason;
    }
    if let Some(reason) = status.message().split(':').next().and_then(Reason::parse) {
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
    fn transport_errors_are_retryable() {
        let status = Status::unavailable("connection refused");
        assert_eq!(of_status(&status), Reason::Unavailable);
        assert!(of_status(&status).is_retryable());
    }
}
