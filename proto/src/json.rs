//! The public messages in JSON, for the router's HTTP API: the generated types derive serde (see
//! `build.rs`) with the proto's field names; the enums, which prost keeps as `i32` fields, are
//! written as their names without the type prefix (`"COMMITTED"`, `"TRANSFER_IN"`), and a value no
//! name matches as `"UNSPECIFIED"`.

use serde::Serializer;

use crate::v1::{AccountState, EntryKind, HoldState, TransferStatus};

/// `Transfer.status` as `COMMITTED`, `PREPARED` or `ABORTED`.
pub fn transfer_status<S: Serializer>(status: &i32, out: S) -> Result<S::Ok, S::Error> {
    let name = TransferStatus::try_from(*status)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "TRANSFER_STATUS_", out)
}

/// `HistoryEntry.kind` as `DEPOSIT`, `WITHDRAW`, `TRANSFER_OUT` or `TRANSFER_IN`.
pub fn entry_kind<S: Serializer>(kind: &i32, out: S) -> Result<S::Ok, S::Error> {
    let name = EntryKind::try_from(*kind).ok().map(|k| k.as_str_name());
    enum_name(name, "ENTRY_KIND_", out)
}

/// `Account.state` as `OPEN`, `FROZEN` or `CLOSED`.
pub fn account_state<S: Serializer>(state: &i32, out: S) -> Result<S::Ok, S::Error> {
    let name = AccountState::try_from(*state).ok().map(|k| k.as_str_name());
    enum_name(name, "ACCOUNT_STATE_", out)
}

/// `Hold.state` as `PENDING`, `CAPTURED`, `VOIDED` or `EXPIRED`.
pub fn hold_state<S: Serializer>(state: &i32, out: S) -> Result<S::Ok, S::Error> {
    let name = HoldState::try_from(*state).ok().map(|k| k.as_str_name());
    enum_name(name, "HOLD_STATE_", out)
}

/// An enum value's proto name without its type's prefix; `UNSPECIFIED` for a value without one.
fn enum_name<S: Serializer>(name: Option<&str>, prefix: &str, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(name.map_or("UNSPECIFIED", |n| n.trim_start_matches(prefix)))
}

#[cfg(test)]
mod tests {
    use crate::v1::{EntryKind, HistoryEntry, Transfer, TransferRequest, TransferStatus};

    #[test]
    fn enums_are_names_and_requests_refuse_unknown_fields() {
        let transfer = Transfer {
            status: TransferStatus::Committed as i32,
            amount: i64::MAX,
            ..Default::default()
        };
        let value = serde_json::to_value(&transfer).expect("json");
        assert_eq!(value["status"], "COMMITTED");
        assert_eq!(value["amount"], i64::MAX);
        assert_eq!(value["commit_ts"], 0);
        let unknown = Transfer {
            status: 77,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&unknown).expect("json")["status"],
            "UNSPECIFIED"
        );
        let entry = HistoryEntry {
            kind: EntryKind::TransferIn as i32,
            commit_ts: u64::MAX,
            ..Default::default()
        };
        let value = serde_json::to_value(&entry).expect("json");
        assert_eq!(value["kind"], "TRANSFER_IN");
        assert_eq!(value["commit_ts"], u64::MAX);

        let request: TransferRequest =
            serde_json::from_str(r#"{"from_account_id": "a", "amount": 9223372036854775807}"#)
                .expect("missing fields default");
        assert_eq!(request.amount, i64::MAX);
        assert_eq!(request.transfer_id, "");
        for bad in [
            r#"{"amount": 1, "extra": true}"#,
            r#"{"amount": "1"}"#,
            r#"{"amount": 9223372036854775808}"#,
            r#"{"amount": 1.5}"#,
        ] {
            assert!(
                serde_json::from_str::<TransferRequest>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
