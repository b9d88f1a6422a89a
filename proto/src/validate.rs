//! Input rules of DESIGN §10, checked before anything is proposed, so bad input is refused with a
//! reason code and nothing is written. The state machine checks them again (pair assertions).

use crate::reason::{Reason, Refusal};
use crate::v1::{EntryKind, HistoryEntry, ListTransfersRequest};

/// Longest id (account, request, transfer) in bytes.
pub const ID_BYTES_MAX: usize = 64;

/// Ids are 1–64 bytes of `[A-Za-z0-9._:-]`.
pub fn id(what: &str, value: &str) -> Result<(), Refusal> {
    let ok_char = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    if value.is_empty() || value.len() > ID_BYTES_MAX || !value.bytes().all(ok_char) {
        return Err(Refusal::new(
            Reason::InvalidId,
            format!("{what} must be 1-{ID_BYTES_MAX} characters of [A-Za-z0-9._:-]"),
        ));
    }
    Ok(())
}

/// Amounts are 1..=i64::MAX minor units.
pub fn amount(value: i64) -> Result<(), Refusal> {
    if value <= 0 {
        return Err(Refusal::new(
            Reason::InvalidAmount,
            format!("amount must be a positive number of minor units, got {value}"),
        ));
    }
    Ok(())
}

/// Currencies are three upper-case ASCII letters (ISO 4217 style).
pub fn currency(value: &str) -> Result<(), Refusal> {
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Refusal::new(
            Reason::InvalidCurrency,
            format!("currency must be three upper-case letters, got {value:?}"),
        ));
    }
    Ok(())
}

/// Credit limits are 0..=i64::MAX (the floor is its negation).
pub fn credit_limit(value: i64) -> Result<(), Refusal> {
    if value < 0 {
        return Err(Refusal::new(
            Reason::InvalidAmount,
            format!("credit limit must not be negative, got {value}"),
        ));
    }
    Ok(())
}

pub fn opening_balance(value: i64) -> Result<(), Refusal> {
    if value < 0 {
        return Err(Refusal::new(
            Reason::InvalidAmount,
            format!("opening balance must not be negative, got {value}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_alphabet_and_length() {
        assert!(id("id", "alice").is_ok());
        assert!(id("id", "a.b_c:d-9").is_ok());
        assert!(id("id", &"x".repeat(64)).is_ok());
        assert!(id("id", "").is_err());
        assert!(id("id", &"x".repeat(65)).is_err());
        assert!(id("id", "a b").is_err());
        assert!(id("id", "é").is_err());
        assert!(id("id", "a/b").is_err());
    }

    #[test]
    fn amounts_must_be_positive() {
        assert!(amount(1).is_ok());
        assert!(amount(i64::MAX).is_ok());
        assert_eq!(amount(0).unwrap_err().reason, Reason::InvalidAmount);
        assert_eq!(amount(-5).unwrap_err().reason, Reason::InvalidAmount);
        assert_eq!(amount(i64::MIN).unwrap_err().reason, Reason::InvalidAmount);
    }

    #[test]
    fn currencies_are_three_upper_case_letters() {
        assert!(currency("USD").is_ok());
        assert!(currency("usd").is_err());
        assert!(currency("US").is_err());
        assert!(currency("USDT").is_err());
        assert!(currency("U$D").is_err());
    }
}

/// A hold's expiry when its authorization names none: 7 days, as card authorizations.
pub const HOLD_EXPIRES_IN_DEFAULT_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest a hold may stay pending: 30 days.
pub const HOLD_EXPIRES_IN_MAX_MS: i64 = 30 * 24 * 3600 * 1000;

/// A hold's `expires_in_ms`, or the default for 0; `INVALID_ARGUMENT` outside 1..=30 days.
pub fn hold_expires_in(expires_in_ms: i64) -> Result<i64, Refusal> {
    match expires_in_ms {
        0 => Ok(HOLD_EXPIRES_IN_DEFAULT_MS),
        ms if (1..=HOLD_EXPIRES_IN_MAX_MS).contains(&ms) => Ok(ms),
        ms => Err(Refusal::new(
            Reason::InvalidArgument,
            format!("expires_in_ms must be 1..={HOLD_EXPIRES_IN_MAX_MS} (0: 7 days), got {ms}"),
        )),
    }
}

/// A history query's filters: known kinds, each range's bounds in order.
pub fn history_filter(list: &ListTransfersRequest) -> Result<(), Refusal> {
    let bad = |message: String| Err(Refusal::new(Reason::InvalidArgument, message));
    if list.kinds.len() > 8 {
        return bad(format!("{} kinds given; at most 8", list.kinds.len()));
    }
    if let Some(kind) = list.kinds.iter().find(|k| {
        matches!(
            EntryKind::try_from(**k),
            Err(_) | Ok(EntryKind::Unspecified)
        )
    }) {
        return bad(format!("unknown history entry kind {kind}"));
    }
    if list.from_ts != 0 && list.to_ts != 0 && list.from_ts > list.to_ts {
        return bad(format!(
            "from_ts {} is after to_ts {}",
            list.from_ts, list.to_ts
        ));
    }
    if list.from_ms != 0 && list.to_ms != 0 && list.from_ms > list.to_ms {
        return bad(format!(
            "from_ms {} is after to_ms {}",
            list.from_ms, list.to_ms
        ));
    }
    Ok(())
}

/// Whether a history entry passes a query's filters (0 bounds and no kinds: every entry).
pub fn history_matches(list: &ListTransfersRequest, entry: &HistoryEntry) -> bool {
    (list.kinds.is_empty() || list.kinds.contains(&entry.kind))
        && (list.from_ts == 0 || entry.commit_ts >= list.from_ts)
        && (list.to_ts == 0 || entry.commit_ts <= list.to_ts)
        && (list.from_ms == 0 || entry.at_ms >= list.from_ms)
        && (list.to_ms == 0 || entry.at_ms <= list.to_ms)
}

/// Entry kinds named in a comma-separated list (`DEPOSIT,transfer_in`; case-insensitive, with or
/// without the `ENTRY_KIND_` prefix), as the CLI and the HTTP API take them.
pub fn entry_kinds(text: &str) -> Result<Vec<i32>, Refusal> {
    text.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("ENTRY_KIND_") {
                upper
            } else {
                format!("ENTRY_KIND_{upper}")
            };
            match EntryKind::from_str_name(&full) {
                Some(kind) if kind != EntryKind::Unspecified => Ok(kind as i32),
                _ => Err(Refusal::new(
                    Reason::InvalidArgument,
                    format!(
                        "unknown history entry kind {name:?} (DEPOSIT, WITHDRAW, TRANSFER_OUT, \
                         TRANSFER_IN)"
                    ),
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod history_tests {
    use super::*;

    #[test]
    fn history_filters_are_checked_and_kinds_parsed() {
        assert_eq!(
            entry_kinds("deposit, TRANSFER_IN,entry_kind_withdraw,").unwrap(),
            vec![
                EntryKind::Deposit as i32,
                EntryKind::TransferIn as i32,
                EntryKind::Withdraw as i32
            ]
        );
        assert!(entry_kinds("").unwrap().is_empty());
        for bad in ["unspecified", "refund", "deposit,,x"] {
            assert_eq!(
                entry_kinds(bad).unwrap_err().reason,
                Reason::InvalidArgument
            );
        }
        let list = |f: fn(&mut ListTransfersRequest)| {
            let mut l = ListTransfersRequest::default();
            f(&mut l);
            history_filter(&l).map_err(|r| r.reason)
        };
        assert_eq!(list(|_| {}), Ok(()));
        assert_eq!(list(|l| l.kinds = vec![0]), Err(Reason::InvalidArgument));
        assert_eq!(list(|l| l.kinds = vec![99]), Err(Reason::InvalidArgument));
        assert_eq!(list(|l| l.kinds = vec![1; 9]), Err(Reason::InvalidArgument));
        assert_eq!(
            list(|l| (l.from_ts, l.to_ts) = (u64::MAX, u64::MAX - 1)),
            Err(Reason::InvalidArgument)
        );
        assert_eq!(list(|l| (l.from_ts, l.to_ts) = (u64::MAX, 0)), Ok(()));
        assert_eq!(
            list(|l| (l.from_ms, l.to_ms) = (i64::MAX, i64::MIN)),
            Err(Reason::InvalidArgument)
        );
        assert_eq!(
            list(|l| (l.from_ms, l.to_ms) = (i64::MIN, i64::MAX)),
            Ok(())
        );
        let entry = HistoryEntry {
            kind: EntryKind::TransferOut as i32,
            commit_ts: u64::MAX,
            at_ms: i64::MIN,
            ..Default::default()
        };
        let matches = |f: fn(&mut ListTransfersRequest)| {
            let mut l = ListTransfersRequest::default();
            f(&mut l);
            history_matches(&l, &entry)
        };
        assert!(matches(|_| {}));
        assert!(matches(|l| l.from_ts = u64::MAX));
        assert!(!matches(|l| l.to_ts = u64::MAX - 1));
        assert!(matches(|l| l.to_ms = i64::MIN));
        assert!(!matches(|l| l.kinds = vec![EntryKind::TransferIn as i32]));
    }
}
