//! What an apply changed: the records a state machine hands to storage ([`Write`]), and the keys
//! of its in-memory maps. It sits below the state machine, its retention and the shard store, so
//! that each of them names a change the same way without importing the others.

use wallet_proto::v1::{Account, HistoryEntry, Intent, RequestRecord};

/// A record changed by an apply, to be written to storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Write {
    Account(Account),
    Request {
        account_id: String,
        request_id: String,
        record: Box<RequestRecord>,
    },
    History {
        account_id: String,
        entry: HistoryEntry,
    },
    /// Keyed by its transfer's (credit account, debit account, transfer id).
    Intent(Box<Intent>),
    /// Meta group: the timestamp oracle's persisted limit.
    TsoLimit(u64),
    /// Snapshot reads: the closed timestamp, the highest commit timestamp, net deposits.
    ClosedTs(u64),
    MaxTs(u64),
    NetDeposits(String, i128),
    /// The shard's clock (request retention).
    Clock(i64),
    /// The replicated request retention window.
    Retention(i64),
    /// A request record whose retention window passed.
    ForgetRequest(RequestKey),
    /// A decided intent whose two retention windows passed.
    ForgetIntent(IntentKey),
}

/// The records changed by a batch of applies.
pub type Writes = Vec<Write>;

/// (account id, request or transfer id).
pub type RequestKey = (String, String);

/// An intent's key: (credit account, debit account, transfer id). Transfer ids are scoped to the
/// debit account (G4), so two debit accounts may use one id towards the same credit account.
pub type IntentKey = (String, String, String);

/// The key of an intent, from the transfer it carries.
pub fn intent_key(intent: &Intent) -> IntentKey {
    let t = intent.transfer.clone().unwrap_or_default();
    (t.to_account_id, t.from_account_id, t.transfer_id)
}
