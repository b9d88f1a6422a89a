//! Histories: what the clients of a test did and saw, operation by operation.
//!
//! Each operation appears twice: an `invoke` when a process starts it and a completion when it
//! ends — `ok` (it happened), `fail` (it certainly did not) or `info` (unknown: timed out, the
//! process crashed). Values follow the bank workload: transfers, single-account reads, audits, and
//! one final read of every account's balance and history after the faults healed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// invoke / ok / fail / info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One balance change as the final read lists it (an account's history entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub seq: u64,
    /// Request or transfer id.
    pub id: String,
    pub delta: i64,
    pub balance_after: i64,
}

/// An account as the final read saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalAccount {
    pub balance: i64,
    /// Oldest first.
    pub changes: Vec<Change>,
    /// Still held or promised when the final read gave up waiting for them to settle (0 in a
    /// healthy run: every transfer decided, every hold captured, voided or expired).
    #[serde(default)]
    pub reserved: i64,
    #[serde(default)]
    pub pending_credit: i64,
}

/// One transfer of a linked chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leg {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: i64,
}

/// What an operation was about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "kebab-case")]
pub enum Value {
    Transfer {
        id: String,
        from: String,
        to: String,
        amount: i64,
    },
    /// A linearizable read of one balance; `balance` is set on `ok`.
    Read {
        account: String,
        balance: Option<i64>,
    },
    /// An audit; `total` is set on `ok` (a decimal string in JSON: it is a 128-bit sum).
    Audit {
        ts: u64,
        #[serde(with = "decimal")]
        total: Option<i128>,
    },
    /// Holds workload: a hold of `amount` from `from` to `to`, expiring after `expires_in_ms`.
    Authorize {
        id: String,
        from: String,
        to: String,
        amount: i64,
        expires_in_ms: i64,
        /// On `ok`: the hold's expiry (oracle timestamp).
        #[serde(default)]
        expires_at_ts: Option<u64>,
    },
    /// Its capture: `amount` of it, 0 for all; on `ok`, `captured` is what moved and
    /// `decided_ts` when.
    Capture {
        id: String,
        from: String,
        to: String,
        amount: i64,
        captured: Option<i64>,
        #[serde(default)]
        decided_ts: Option<u64>,
    },
    /// Its void.
    Void { id: String, from: String },
    /// Payments workload: a linked chain of transfers that must apply all or not at all.
    Chain { legs: Vec<Leg> },
    /// The read of every account after healing; `accounts` is set on `ok`.
    Final {
        accounts: Option<BTreeMap<String, FinalAccount>>,
    },
}

/// `Option<i128>` as an optional decimal string (JSON numbers stop at 64 bits in serde_json).
mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<i128>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_some(&v.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i128>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| t.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// One history line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub index: u64,
    pub process: u64,
    /// Nanoseconds since the test started.
    pub time: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(flatten)]
    pub value: Value,
}

/// A whole history, in the order operations happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
}

fn edn_str(s: &str) -> String {
    format!("{:?}", s) // Rust's debug escaping matches EDN for the ids we allow
}

impl Op {
    /// The operation as one EDN map, Jepsen style.
    pub fn to_edn(&self) -> String {
        let kind = match self.kind {
            Kind::Invoke => "invoke",
            Kind::Ok => "ok",
            Kind::Fail => "fail",
            Kind::Info => "info",
        };
        let (f, value) = match &self.value {
            Value::Transfer {
                id,
                from,
                to,
                amount,
            } => (
                "transfer",
                format!(
                    "{{:id {} :from {} :to {} :amount {amount}}}",
                    edn_str(id),
                    edn_str(from),
                    edn_str(to)
                ),
            ),
            Value::Read { account, balance } => (
                "read",
                format!(
                    "[{} {}]",
                    edn_str(account),
                    balance.map_or("nil".to_string(), |b| b.to_string())
                ),
            ),
            Value::Audit { ts, total } => (
                "audit",
                format!(
                    "{{:ts {ts} :total {}}}",
                    total.map_or("nil".to_string(), |t| t.to_string())
                ),
            ),
            Value::Authorize {
                id,
                from,
                to,
                amount,
                expires_in_ms,
                ..
            } => (
                "authorize",
                format!(
                    "{{:id {} :from {} :to {} :amount {amount} :expires-in-ms {expires_in_ms}}}",
                    edn_str(id),
                    edn_str(from),
                    edn_str(to)
                ),
            ),
            Value::Capture {
                id,
                from,
                to,
                amount,
                captured,
                ..
            } => (
                "capture",
                format!(
                    "{{:id {} :from {} :to {} :amount {amount} :captured {}}}",
                    edn_str(id),
                    edn_str(from),
                    edn_str(to),
                    captured.map_or("nil".to_string(), |c| c.to_string())
                ),
            ),
            Value::Void { id, from } => (
                "void",
                format!("{{:id {} :from {}}}", edn_str(id), edn_str(from)),
            ),
            Value::Chain { legs } => {
                let mut v = String::from("[");
                for l in legs {
                    let _ = write!(
                        v,
                        "{{:id {} :from {} :to {} :amount {}}} ",
                        edn_str(&l.id),
                        edn_str(&l.from),
                        edn_str(&l.to),
                        l.amount
                    );
                }
                v.push(']');
                ("chain", v)
            }
            Value::Final { accounts } => {
                let mut v = String::from("{");
                for (id, a) in accounts.iter().flatten() {
                    let _ = write!(v, "{} {} ", edn_str(id), a.balance);
                }
                v.push('}');
                ("final", v)
            }
        };
        format!(
            "{{:index {}, :type :{kind}, :f :{f}, :process {}, :time {}, :value {value}}}",
            self.index, self.process, self.time
        )
    }
}

impl History {
    /// Writes `history.edn` and `history.jsonl` into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut edn = std::io::BufWriter::new(std::fs::File::create(dir.join("history.edn"))?);
        let mut jsonl = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
        for op in &self.ops {
            writeln!(edn, "{}", op.to_edn())?;
            writeln!(jsonl, "{}", serde_json::to_string(op)?)?;
        }
        edn.flush()?;
        jsonl.flush()
    }

    /// Reads `history.jsonl` from `dir`.
    pub fn load(dir: &Path) -> Result<History, String> {
        let path = dir.join("history.jsonl");
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut ops = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| e.to_string())?;
            if line.trim().is_empty() {
                continue;
            }
            ops.push(
                serde_json::from_str(&line)
                    .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?,
            );
        }
        Ok(History { ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_round_trips_through_jsonl_and_writes_edn() {
        let history = History {
            ops: vec![
                Op {
                    index: 0,
                    process: 1,
                    time: 10,
                    kind: Kind::Invoke,
                    value: Value::Transfer {
                        id: "t1".into(),
                        from: "a".into(),
                        to: "b".into(),
                        amount: 5,
                    },
                },
                Op {
                    index: 1,
                    process: 1,
                    time: 20,
                    kind: Kind::Ok,
                    value: Value::Read {
                        account: "a".into(),
                        balance: Some(95),
                    },
                },
                Op {
                    index: 2,
                    process: 2,
                    time: 30,
                    kind: Kind::Ok,
                    value: Value::Audit {
                        ts: 7,
                        total: Some(i128::from(i64::MAX) * 4),
                    },
                },
            ],
        };
        let dir = std::env::temp_dir().join(format!("wallet-jepsen-{}", std::process::id()));
        history.save(&dir).unwrap();
        assert_eq!(History::load(&dir).unwrap(), history);
        let edn = std::fs::read_to_string(dir.join("history.edn")).unwrap();
        assert!(edn.starts_with("{:index 0, :type :invoke, :f :transfer, :process 1, :time 10"));
        assert!(edn.contains(":value [\"a\" 95]}"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
