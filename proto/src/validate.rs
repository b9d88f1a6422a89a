//! Input rules of DESIGN §10, checked before anything is proposed, so bad input is refused with a
//! reason code and nothing is written. The state machine checks them again (pair assertions).

use crate::reason::{Reason, Refusal};

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
