//! Audits: adding up the shards' totals at one timestamp and checking conservation (G1): in every
//! currency, the balances at the timestamp equal the net deposits at it. A mismatch is an error
//! (`AUDIT_MISMATCH`) with the figures, never a quiet answer.

use std::collections::BTreeMap;

use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_proto::v1::{AuditReport, CurrencyTotals};

fn parse(field: &str, value: &str) -> Result<i128, Status> {
    value
        .parse()
        .map_err(|_| Reason::Internal.status(format!("shard sent {field} = {value:?}")))
}

/// Sums the shards' per-currency totals at `ts`.
pub fn merge(ts: u64, shards: Vec<AuditReport>) -> Result<AuditReport, Status> {
    let mut sums: BTreeMap<String, [i128; 5]> = BTreeMap::new();
    let mut accounts: BTreeMap<String, u64> = BTreeMap::new();
    for report in shards {
        if report.ts != ts {
            return Err(Reason::Internal.status("shard answered at another timestamp"));
        }
        for t in report.totals {
            let s = sums.entry(t.currency.clone()).or_default();
            s[0] += parse("balances", &t.balances)?;
            s[1] += parse("net_deposits", &t.net_deposits)?;
            s[2] += parse("reserved", &t.reserved)?;
            s[3] += parse("pending_credit", &t.pending_credit)?;
            // (Empty from a node of an earlier release: nothing held.)
            if !t.held.is_empty() {
                s[4] += parse("held", &t.held)?;
            }
            *accounts.entry(t.currency).or_default() += t.accounts;
        }
    }
    Ok(AuditReport {
        ts,
        totals: sums
            .into_iter()
            .map(
                |(currency, [balances, net, reserved, pending, held])| CurrencyTotals {
                    accounts: accounts.get(&currency).copied().unwrap_or(0),
                    currency,
                    balances: balances.to_string(),
                    net_deposits: net.to_string(),
                    reserved: reserved.to_string(),
                    pending_credit: pending.to_string(),
                    held: held.to_string(),
                },
            )
            .collect(),
    })
}

/// Conservation at the audit's timestamp, currency by currency.
pub fn check(report: &AuditReport) -> Result<(), Status> {
    for t in &report.totals {
        if t.balances != t.net_deposits {
            return Err(Reason::AuditMismatch.status(format!(
                "{} at ts {}: balances {} but net deposits {} ({} accounts)",
                t.currency, report.ts, t.balances, t.net_deposits, t.accounts
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(currency: &str, balances: i128, net: i128) -> CurrencyTotals {
        CurrencyTotals {
            currency: currency.into(),
            balances: balances.to_string(),
            net_deposits: net.to_string(),
            reserved: "0".into(),
            pending_credit: "0".into(),
            held: "0".into(),
            accounts: 1,
        }
    }

    #[test]
    fn shards_add_up_per_currency_and_a_mismatch_is_an_error() {
        // Money moved between shards: each shard alone is off, together they balance.
        let a = AuditReport {
            ts: 9,
            totals: vec![totals("USD", 70, 100), totals("EUR", 5, 5)],
        };
        let b = AuditReport {
            ts: 9,
            totals: vec![totals("USD", 130, 100)],
        };
        let merged = merge(9, vec![a.clone(), b]).unwrap();
        assert!(check(&merged).is_ok());
        assert_eq!(merged.totals.len(), 2);
        let lost = merge(9, vec![a]).unwrap();
        let err = check(&lost).unwrap_err();
        assert_eq!(wallet_proto::reason::of_status(&err), Reason::AuditMismatch);
        assert!(err.message().contains("balances 70 but net deposits 100"));
    }
}
