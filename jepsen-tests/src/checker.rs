//! The checker: reads a whole bank-workload history and names every anomaly.
//!
//! | anomaly | meaning |
//! |---|---|
//! | `lost-transfer` | an acknowledged (`ok`) transfer is on neither side of the final state |
//! | `half-applied` | a transfer is on one side only |
//! | `double-applied` | a transfer (or a hold's capture) applied more than once on a side: a hold captured twice |
//! | `failed-transfer-applied` | a transfer reported `fail` left a trace |
//! | `wrong-audit-total` | an `ok` audit's total differs from the money put in |
//! | `wrong-final-total` | the final balances do not add up to the money put in |
//! | `negative-balance` | a read, an audit-time or final balance below the accounts' floor (0, or minus the credit limit with `--extremes`) |
//! | `stale-read` | a read missed a change acknowledged before it began |
//! | `future-read` | a read saw a change that began only after it ended |
//! | `impossible-read` | a read's value is no state the account ever had |
//! | `read-went-back` | a read saw an older state than a read that ended before it began |
//! | `reordered-writes` | an account applied a transfer before one acknowledged before it began |
//! | `final-read-failed` | the cluster did not serve the final read after healing |
//! | `unreleased` | after healing, an account still holds a reservation or a promised credit: an undecided transfer, or a hold neither captured, voided nor expired |
//! | `over-captured` | a hold's capture moved more than was authorized |
//! | `wrong-capture` | an acknowledged capture moved another amount than it asked for (all of the hold, or its `amount`) |
//! | `voided-hold-captured` | a hold whose void was acknowledged has a capture |
//! | `captured-after-expiry` | an acknowledged capture was decided at or after its hold's expiry |
//! | `partial-chain` | some transfers of a linked chain applied and others did not (each transfer of a chain is also checked as a transfer: an `ok` chain's are all applied, a `fail`ed one's none) |
//! | `slow-recovery` | the final read came more than [`RECOVERY_BOUND_S`] after healing |
//!
//! Reads are checked for linearizability per account: the final read lists each account's changes
//! in the order they applied (the total order linearizability needs; `reordered-writes` checks it
//! against real time); a read must return the balance after some prefix of them that holds every
//! change acknowledged before the read began and none begun after it ended, and reads ordered in
//! real time must see prefixes in the same order (each read is given the oldest prefix it could
//! have seen, which leaves the most room to the reads after it, so a failure is a real one).

use std::collections::BTreeMap;

use crate::history::{FinalAccount, History, Kind, Op, Value};

/// One named anomaly with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    pub name: &'static str,
    pub detail: String,
}

/// The checker's verdict.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    /// (f, outcome) → count.
    pub counts: BTreeMap<(String, String), u64>,
    /// Seconds from the end of the faults to the final read's answer.
    pub recovery_s: Option<f64>,
}

/// The cluster must serve the final read within this long after every fault healed.
pub const RECOVERY_BOUND_S: f64 = 60.0;

impl Report {
    pub fn valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Names of the anomalies found, sorted, once each.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.anomalies.iter().map(|a| a.name).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// `results.edn`, Jepsen style.
    pub fn to_edn(&self) -> String {
        let mut out = format!("{{:valid? {}\n :anomaly-types [", self.valid());
        out.push_str(
            &self
                .names()
                .iter()
                .map(|n| format!(":{n}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        out.push_str("]\n :anomalies [");
        for a in &self.anomalies {
            out.push_str(&format!("\n  {{:type :{} :detail {:?}}}", a.name, a.detail));
        }
        out.push_str("]\n :stats {");
        for ((f, kind), n) in &self.counts {
            out.push_str(&format!("[:{f} :{kind}] {n} "));
        }
        out.push('}');
        if let Some(r) = self.recovery_s {
            out.push_str(&format!("\n :recovery-s {r:.3}"));
        }
        out.push_str("}\n");
        out
    }

    /// A table for people.
    pub fn summary(&self) -> String {
        let mut out = format!("{:<10} {:>8} {:>8} {:>8}\n", "op", "ok", "fail", "info");
        let mut fs: Vec<&String> = self.counts.keys().map(|(f, _)| f).collect();
        fs.dedup();
        for f in fs {
            let n = |k: &str| {
                self.counts
                    .get(&(f.clone(), k.to_string()))
                    .copied()
                    .unwrap_or(0)
            };
            out.push_str(&format!(
                "{f:<10} {:>8} {:>8} {:>8}\n",
                n("ok"),
                n("fail"),
                n("info")
            ));
        }
        if let Some(r) = self.recovery_s {
            out.push_str(&format!("served again {r:.1} s after the faults healed\n"));
        }
        if self.valid() {
            out.push_str("valid: no anomaly\n");
        } else {
            out.push_str(&format!("INVALID: {}\n", self.names().join(", ")));
            for a in self.anomalies.iter().take(20) {
                out.push_str(&format!("  {}: {}\n", a.name, a.detail));
            }
        }
        out
    }
}

/// What a transfer's invocations and completions add up to.
#[derive(Clone, Debug, Default)]
struct TransferOutcome {
    from: String,
    to: String,
    first_invoke: u64,
    /// Completion time of the first `ok`.
    ok_at: Option<u64>,
    failed: bool,
}

/// An ok read and the states of its account it may have seen (prefix lengths, oldest first).
struct ReadSeen {
    begin: u64,
    end: u64,
    value: i64,
    states: Vec<usize>,
}

fn f_name(value: &Value) -> &'static str {
    match value {
        Value::Transfer { .. } => "transfer",
        Value::Read { .. } => "read",
        Value::Audit { .. } => "audit",
        Value::Authorize { .. } => "authorize",
        Value::Capture { .. } => "capture",
        Value::Void { .. } => "void",
        Value::Chain { .. } => "chain",
        Value::Final { .. } => "final",
    }
}

/// What the history says of a hold (holds workload).
#[derive(Default)]
struct HoldOutcome {
    /// The payer (hold ids are scoped to it).
    from: String,
    /// Authorized amount, once an authorization was acknowledged, and its expiry.
    authorized: Option<i64>,
    expires_at_ts: Option<u64>,
    voided: bool,
    /// Acknowledged captures: (asked, moved, decided at).
    captures: Vec<(i64, i64, Option<u64>)>,
}

/// Judges a bank history in which `initial_total` was put into the accounts before it began (and
/// no money entered or left during it), whose accounts may not go below `floor`.
pub fn check(history: &History, initial_total: i128, floor: i128) -> Report {
    let mut report = Report::default();
    let mut flag =
        |name: &'static str, detail: String| report.anomalies.push(Anomaly { name, detail });
    // Pair each completion with its process's pending invoke.
    let mut pending: BTreeMap<u64, &Op> = BTreeMap::new();
    let mut completed: Vec<(&Op, &Op)> = Vec::new();
    for op in &history.ops {
        if op.kind == Kind::Invoke {
            pending.insert(op.process, op);
        } else if let Some(invoke) = pending.remove(&op.process) {
            completed.push((invoke, op));
        }
    }
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut transfers: BTreeMap<String, TransferOutcome> = BTreeMap::new();
    let mut holds: BTreeMap<String, HoldOutcome> = BTreeMap::new();
    let mut chains: Vec<&Vec<crate::history::Leg>> = Vec::new();
    let mut finals: Option<&BTreeMap<String, FinalAccount>> = None;
    let mut final_attempted = false;
    let mut recovery_s = None;
    for (invoke, done) in &completed {
        let kind = format!("{:?}", done.kind).to_lowercase();
        *counts
            .entry((f_name(&done.value).into(), kind))
            .or_default() += 1;
        match (&invoke.value, &done.value) {
            (
                Value::Authorize {
                    id, from, amount, ..
                },
                Value::Authorize { expires_at_ts, .. },
            ) if done.kind == Kind::Ok => {
                let h = holds.entry(id.clone()).or_default();
                h.authorized = Some(*amount);
                h.expires_at_ts = *expires_at_ts;
                h.from = from.clone();
            }
            (Value::Void { id, from }, _) if done.kind == Kind::Ok => {
                let h = holds.entry(id.clone()).or_default();
                h.voided = true;
                h.from = from.clone();
            }
            (
                Value::Capture { amount, .. },
                Value::Capture {
                    id,
                    captured: Some(moved),
                    decided_ts,
                    ..
                },
            ) if done.kind == Kind::Ok => {
                holds
                    .entry(id.clone())
                    .or_default()
                    .captures
                    .push((*amount, *moved, *decided_ts));
                count_transfer(&mut transfers, invoke, done);
            }
            (Value::Capture { .. } | Value::Transfer { .. }, _) => {
                count_transfer(&mut transfers, invoke, done)
            }
            (Value::Chain { legs }, _) => {
                // Each transfer of the chain as a transfer with the chain's outcome.
                for leg in legs {
                    let as_transfer = |op: &Op| Op {
                        value: Value::Transfer {
                            id: leg.id.clone(),
                            from: leg.from.clone(),
                            to: leg.to.clone(),
                            amount: leg.amount,
                        },
                        ..op.clone()
                    };
                    count_transfer(&mut transfers, &as_transfer(invoke), &as_transfer(done));
                }
                chains.push(legs);
            }
            (
                _,
                Value::Audit {
                    ts,
                    total: Some(total),
                },
            ) if done.kind == Kind::Ok && *total != initial_total => {
                flag(
                    "wrong-audit-total",
                    format!("audit at ts {ts} saw {total}, {initial_total} was put in"),
                );
            }
            (_, Value::Final { accounts }) => {
                final_attempted = true;
                if done.kind == Kind::Ok {
                    finals = accounts.as_ref();
                    // The final read is invoked as soon as every fault healed.
                    let recovery = done.time.saturating_sub(invoke.time) as f64 / 1e9;
                    recovery_s = Some(recovery);
                    if recovery > RECOVERY_BOUND_S {
                        flag(
                            "slow-recovery",
                            format!(
                                "the final read answered {recovery:.1} s after healing (bound {RECOVERY_BOUND_S} s)"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    let Some(finals) = finals else {
        if final_attempted || !transfers.is_empty() {
            flag(
                "final-read-failed",
                "no ok final read of the accounts".into(),
            );
        }
        report.counts = counts;
        report.recovery_s = recovery_s;
        return report;
    };
    // Balances: never negative, and adding up; nothing left held or promised.
    let mut total: i128 = 0;
    for (account, a) in finals {
        total += i128::from(a.balance);
        if a.reserved != 0 || a.pending_credit != 0 {
            flag(
                "unreleased",
                format!(
                    "{account} still holds {} reserved and {} promised after healing",
                    a.reserved, a.pending_credit
                ),
            );
        }
        if i128::from(a.balance) < floor
            || a.changes
                .iter()
                .any(|c| i128::from(c.balance_after) < floor)
        {
            flag(
                "negative-balance",
                format!("{account} went below its floor {floor}: {a:?}"),
            );
        }
    }
    if total != initial_total {
        flag(
            "wrong-final-total",
            format!("final balances add up to {total}, {initial_total} was put in"),
        );
    }
    // Transfers: ok exactly once on both sides, failed on neither, unknown at most once.
    let count = |account: &str, id: &str, out: bool| -> usize {
        finals.get(account).map_or(0, |a| {
            a.changes
                .iter()
                .filter(|c| c.id == id && (c.delta < 0) == out)
                .count()
        })
    };
    for (id, t) in &transfers {
        let (outs, ins) = (count(&t.from, id, true), count(&t.to, id, false));
        if outs > 1 || ins > 1 {
            flag(
                "double-applied",
                format!("{id}: {outs} debits, {ins} credits"),
            );
        } else if outs != ins {
            flag(
                "half-applied",
                format!("{id}: {outs} debits, {ins} credits"),
            );
        } else if t.ok_at.is_some() && outs == 0 {
            flag(
                "lost-transfer",
                format!("{id} was acknowledged but is not in the final state"),
            );
        } else if t.failed && t.ok_at.is_none() && outs > 0 {
            flag(
                "failed-transfer-applied",
                format!("{id} was reported failed but applied"),
            );
        }
    }
    // Chains: all or nothing, whatever their outcome said.
    for legs in &chains {
        let applied = legs
            .iter()
            .filter(|l| count(&l.from, &l.id, true) > 0)
            .count();
        if applied > 0 && applied < legs.len() {
            let ids: Vec<&str> = legs.iter().map(|l| l.id.as_str()).collect();
            flag(
                "partial-chain",
                format!(
                    "{applied} of the {} transfers of chain {ids:?} applied",
                    legs.len()
                ),
            );
        }
    }
    // Holds: a capture moves what it asked for and never more than was held; a voided hold (or
    // one never authorized) is never captured.
    for (id, h) in &holds {
        let moved: Vec<i64> = finals
            .get(&h.from)
            .map(|a| {
                a.changes
                    .iter()
                    .filter(|c| c.id == *id && c.delta < 0)
                    .map(|c| -c.delta)
                    .collect()
            })
            .unwrap_or_default();
        if let (Some(held), Some(m)) = (h.authorized, moved.iter().max()) {
            if *m > held {
                flag("over-captured", format!("hold {id} of {held} moved {m}"));
            }
        }
        for (asked, got, decided_ts) in &h.captures {
            if let (Some(at), Some(expiry)) = (decided_ts, h.expires_at_ts) {
                if at >= &expiry {
                    flag(
                        "captured-after-expiry",
                        format!("hold {id} expired at {expiry} but was captured at {at}"),
                    );
                }
            }
            let want = if *asked == 0 {
                h.authorized
            } else {
                Some(*asked)
            };
            if want.is_some_and(|w| w != *got) || moved.first().is_some_and(|m| m != got) {
                flag(
                    "wrong-capture",
                    format!("hold {id}: asked {asked}, acknowledged {got}, moved {moved:?}"),
                );
            }
        }
        if h.voided && !moved.is_empty() {
            flag(
                "voided-hold-captured",
                format!("hold {id} was voided but moved {moved:?}"),
            );
        }
    }
    // Writes: an account applies its transfers in an order that respects real time.
    for (account, a) in finals {
        let mut latest_invoke: Option<(u64, &str)> = None;
        for c in &a.changes {
            let Some(t) = transfers.get(&c.id) else {
                continue;
            };
            if let (Some(ok_at), Some((invoked, earlier))) = (t.ok_at, latest_invoke) {
                if ok_at < invoked {
                    flag(
                        "reordered-writes",
                        format!(
                            "{account} applied {earlier} before {}, which was acknowledged before {earlier} began",
                            c.id
                        ),
                    );
                }
            }
            if latest_invoke.is_none_or(|(t0, _)| t.first_invoke > t0) {
                latest_invoke = Some((t.first_invoke, &c.id));
            }
        }
    }
    // Reads: linearizable per account. Each read must see a state of the account (a prefix of its
    // changes) between what was acknowledged before it began and what began after it ended, and a
    // read that began after another ended must not see an older state.
    let mut reads: BTreeMap<&str, Vec<ReadSeen>> = BTreeMap::new();
    for (invoke, done) in &completed {
        if let (
            Value::Read { account, .. },
            Value::Read {
                balance: Some(v), ..
            },
        ) = (&invoke.value, &done.value)
        {
            if done.kind != Kind::Ok {
                continue;
            }
            if i128::from(*v) < floor {
                flag(
                    "negative-balance",
                    format!("read of {account} returned {v}"),
                );
            }
            let Some(a) = finals.get(account) else {
                flag(
                    "impossible-read",
                    format!("read of unknown account {account}"),
                );
                continue;
            };
            let states = check_read(
                account,
                a,
                &transfers,
                invoke.time,
                done.time,
                *v,
                &mut flag,
            );
            if !states.is_empty() {
                reads.entry(account).or_default().push(ReadSeen {
                    begin: invoke.time,
                    end: done.time,
                    value: *v,
                    states,
                });
            }
        }
    }
    for (account, mut list) in reads {
        list.sort_by_key(|r| r.begin);
        // Greedy: each read takes the oldest state it may have seen, given the reads before it.
        let mut chosen: Vec<(u64, usize)> = Vec::with_capacity(list.len());
        for ReadSeen {
            begin,
            end,
            value,
            states,
        } in list
        {
            let floor = chosen
                .iter()
                .filter(|(ended, _)| *ended < begin)
                .map(|(_, state)| *state)
                .max()
                .unwrap_or(0);
            match states.iter().find(|s| **s >= floor) {
                Some(state) => chosen.push((end, *state)),
                None => flag(
                    "read-went-back",
                    format!(
                        "read of {account} returned {value}, a state older than an earlier read had already seen (state {floor})"
                    ),
                ),
            }
        }
    }
    report.counts = counts;
    report.recovery_s = recovery_s;
    report
}

/// Counts a transfer, or a capture as a transfer under its hold id (ok: it must be in the final
/// state on both sides exactly once; fail: nowhere).
fn count_transfer(transfers: &mut BTreeMap<String, TransferOutcome>, invoke: &Op, done: &Op) {
    let (Value::Transfer { id, from, to, .. } | Value::Capture { id, from, to, .. }) =
        &invoke.value
    else {
        return;
    };
    let t = transfers
        .entry(id.clone())
        .or_insert_with(|| TransferOutcome {
            from: from.clone(),
            to: to.clone(),
            first_invoke: invoke.time,
            ..Default::default()
        });
    t.first_invoke = t.first_invoke.min(invoke.time);
    match done.kind {
        Kind::Ok => t.ok_at = Some(t.ok_at.map_or(done.time, |at| at.min(done.time))),
        Kind::Fail => t.failed = true,
        _ => {}
    }
}

/// One read of `account` over [`begin`, `end`] that returned `value`: the states (prefix lengths
/// of the account's changes) it may have seen, or none, flagged.
fn check_read(
    account: &str,
    a: &FinalAccount,
    transfers: &BTreeMap<String, TransferOutcome>,
    begin: u64,
    end: u64,
    value: i64,
    flag: &mut impl FnMut(&'static str, String),
) -> Vec<usize> {
    // Balance after each prefix of the account's changes (prefix 0: before any change).
    let mut states = vec![0i64];
    states.extend(a.changes.iter().map(|c| c.balance_after));
    // The prefix must hold every change acknowledged before the read began…
    let lowest = a
        .changes
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            transfers
                .get(&c.id)
                .and_then(|t| t.ok_at)
                .is_some_and(|ok_at| ok_at < begin)
        })
        .map(|(i, _)| i + 1)
        .max()
        .unwrap_or(0);
    // …and none begun after it ended.
    let highest = a
        .changes
        .iter()
        .enumerate()
        .filter(|(_, c)| transfers.get(&c.id).is_some_and(|t| t.first_invoke > end))
        .map(|(i, _)| i)
        .min()
        .unwrap_or(a.changes.len());
    let possible: Vec<usize> = (lowest..=highest)
        .filter(|i| states.get(*i) == Some(&value))
        .collect();
    if !possible.is_empty() {
        return possible;
    }
    let seen_at: Vec<usize> = (0..states.len()).filter(|i| states[*i] == value).collect();
    let (name, when) = if seen_at.iter().any(|i| *i < lowest) {
        ("stale-read", "missed a change acknowledged before it began")
    } else if seen_at.iter().any(|i| *i > highest) {
        ("future-read", "saw a change that began after it ended")
    } else {
        ("impossible-read", "matches no state of the account")
    };
    flag(
        name,
        format!(
            "read of {account} returned {value}: {when} (allowed prefixes {lowest}..={highest})"
        ),
    );
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Change;

    /// A history builder: processes invoke and complete operations at increasing times.
    #[derive(Default)]
    struct Builder {
        ops: Vec<Op>,
        clock: u64,
    }

    impl Builder {
        fn op(&mut self, process: u64, kind: Kind, value: Value) -> &mut Self {
            self.clock += 10;
            self.ops.push(Op {
                index: self.ops.len() as u64,
                process,
                time: self.clock,
                kind,
                value,
            });
            self
        }

        fn transfer(
            &mut self,
            process: u64,
            id: &str,
            from: &str,
            to: &str,
            amount: i64,
            outcome: Kind,
        ) -> &mut Self {
            let v = Value::Transfer {
                id: id.into(),
                from: from.into(),
                to: to.into(),
                amount,
            };
            self.op(process, Kind::Invoke, v.clone())
                .op(process, outcome, v)
        }

        fn read(&mut self, process: u64, account: &str, balance: i64) -> &mut Self {
            self.op(
                process,
                Kind::Invoke,
                Value::Read {
                    account: account.into(),
                    balance: None,
                },
            )
            .op(
                process,
                Kind::Ok,
                Value::Read {
                    account: account.into(),
                    balance: Some(balance),
                },
            )
        }

        fn audit(&mut self, total: i128) -> &mut Self {
            self.op(9, Kind::Invoke, Value::Audit { ts: 1, total: None })
                .op(
                    9,
                    Kind::Ok,
                    Value::Audit {
                        ts: 1,
                        total: Some(total),
                    },
                )
        }

        fn finish(&mut self, accounts: BTreeMap<String, FinalAccount>) -> History {
            self.op(0, Kind::Invoke, Value::Final { accounts: None });
            self.finish_read(accounts)
        }

        /// Completes a final read already invoked.
        fn finish_read(&mut self, accounts: BTreeMap<String, FinalAccount>) -> History {
            self.op(
                0,
                Kind::Ok,
                Value::Final {
                    accounts: Some(accounts),
                },
            );
            History {
                ops: self.ops.clone(),
            }
        }
    }

    fn account(changes: &[(&str, i64)]) -> FinalAccount {
        let mut balance = 0;
        let changes = changes
            .iter()
            .enumerate()
            .map(|(i, (id, delta))| {
                balance += delta;
                Change {
                    seq: i as u64 + 1,
                    id: (*id).into(),
                    delta: *delta,
                    balance_after: balance,
                }
            })
            .collect();
        FinalAccount {
            balance,
            changes,
            reserved: 0,
            pending_credit: 0,
        }
    }

    /// a and b funded with 100 each; t1 moves 30 from a to b.
    fn finals(a: &[(&str, i64)], b: &[(&str, i64)]) -> BTreeMap<String, FinalAccount> {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), account(a));
        m.insert("b".to_string(), account(b));
        m
    }

    fn names(history: &History) -> Vec<&'static str> {
        check(history, 200, 0).names()
    }

    #[test]
    fn a_correct_history_is_valid() {
        let h = Builder::default()
            .read(1, "a", 100)
            .transfer(1, "t1", "a", "b", 30, Kind::Ok)
            .read(2, "a", 70)
            .audit(200)
            .transfer(2, "t2", "b", "a", 500, Kind::Fail)
            .finish(finals(
                &[("fund", 100), ("t1", -30)],
                &[("fund", 100), ("t1", 30)],
            ));
        let report = check(&h, 200, 0);
        assert!(report.valid(), "{}", report.summary());
        assert!(report.to_edn().starts_with("{:valid? true"));
    }

    impl Builder {
        fn authorize(&mut self, process: u64, id: &str, amount: i64, outcome: Kind) -> &mut Self {
            let v = Value::Authorize {
                id: id.into(),
                from: "a".into(),
                to: "b".into(),
                amount,
                expires_in_ms: 500,
                expires_at_ts: Some(1000),
            };
            self.op(process, Kind::Invoke, v.clone())
                .op(process, outcome, v)
        }

        fn capture(
            &mut self,
            process: u64,
            id: &str,
            asked: i64,
            outcome: Kind,
            moved: Option<i64>,
        ) -> &mut Self {
            let v = |captured: Option<i64>| Value::Capture {
                id: id.into(),
                from: "a".into(),
                to: "b".into(),
                amount: asked,
                captured,
                decided_ts: captured.map(|_| if asked == 7 { 1000 } else { 999 }),
            };
            self.op(process, Kind::Invoke, v(None))
                .op(process, outcome, v(moved))
        }

        fn void(&mut self, process: u64, id: &str) -> &mut Self {
            let v = Value::Void {
                id: id.into(),
                from: "a".into(),
            };
            self.op(process, Kind::Invoke, v.clone())
                .op(process, Kind::Ok, v)
        }
    }

    /// h1: 50 held, 20 captured; h2: voided; h3: expired (its capture failed).
    fn holds_history(b: &mut Builder) -> &mut Builder {
        b.authorize(1, "h1", 50, Kind::Ok)
            .capture(1, "h1", 20, Kind::Ok, Some(20))
            .authorize(2, "h2", 30, Kind::Ok)
            .void(2, "h2")
            .authorize(3, "h3", 10, Kind::Ok)
            .capture(3, "h3", 0, Kind::Fail, None)
            .read(4, "b", 120)
    }

    #[test]
    fn holds_captured_once_for_what_was_asked_are_valid_and_every_breach_is_caught() {
        let good = || finals(&[("fund", 100), ("h1", -20)], &[("fund", 100), ("h1", 20)]);
        let h = holds_history(&mut Builder::default()).finish(good());
        let report = check(&h, 200, 0);
        assert!(report.valid(), "{}", report.summary());
        // Captured twice.
        let h = holds_history(&mut Builder::default()).finish(finals(
            &[("fund", 100), ("h1", -20), ("h1", -20)],
            &[("fund", 100), ("h1", 20), ("h1", 20)],
        ));
        assert!(names(&h).contains(&"double-applied"), "{:?}", names(&h));
        // Moved more than asked and more than held.
        let h = holds_history(&mut Builder::default()).finish(finals(
            &[("fund", 100), ("h1", -60)],
            &[("fund", 100), ("h1", 60)],
        ));
        let found = names(&h);
        assert!(
            found.contains(&"over-captured") && found.contains(&"wrong-capture"),
            "{found:?}"
        );
        // A voided hold that moved money.
        let h = holds_history(&mut Builder::default()).finish(finals(
            &[("fund", 100), ("h1", -20), ("h2", -5)],
            &[("fund", 100), ("h1", 20), ("h2", 5)],
        ));
        assert!(
            names(&h).contains(&"voided-hold-captured"),
            "{:?}",
            names(&h)
        );
        // An expired hold never released.
        let mut stuck = good();
        if let Some(a) = stuck.get_mut("a") {
            a.reserved = 10;
        }
        if let Some(b) = stuck.get_mut("b") {
            b.pending_credit = 10;
        }
        let h = holds_history(&mut Builder::default()).finish(stuck);
        assert_eq!(
            names(&h),
            ["unreleased"],
            "only that: the balances are right"
        );
        // A capture decided at its hold's expiry (the test's captures of 7 are stamped 1000).
        let h = Builder::default()
            .authorize(1, "h9", 50, Kind::Ok)
            .capture(1, "h9", 7, Kind::Ok, Some(7))
            .finish(finals(
                &[("fund", 100), ("h9", -7)],
                &[("fund", 100), ("h9", 7)],
            ));
        assert_eq!(names(&h), ["captured-after-expiry"]);
        // A capture acknowledged but not applied (the read of 120 is then impossible too).
        let h = holds_history(&mut Builder::default())
            .finish(finals(&[("fund", 100)], &[("fund", 100)]));
        assert!(names(&h).contains(&"lost-transfer"), "{:?}", names(&h));
    }

    #[test]
    fn a_chain_applied_whole_is_valid_and_a_partial_one_is_caught() {
        let legs = vec![
            crate::history::Leg {
                id: "c1-0".into(),
                from: "a".into(),
                to: "b".into(),
                amount: 10,
            },
            crate::history::Leg {
                id: "c1-1".into(),
                from: "b".into(),
                to: "a".into(),
                amount: 4,
            },
        ];
        let chain = Value::Chain { legs };
        let whole = Builder::default()
            .op(1, Kind::Invoke, chain.clone())
            .op(1, Kind::Ok, chain.clone())
            .finish(finals(
                &[("fund", 100), ("c1-0", -10), ("c1-1", 4)],
                &[("fund", 100), ("c1-0", 10), ("c1-1", -4)],
            ));
        assert!(names(&whole).is_empty(), "{:?}", names(&whole));
        // Unknown outcome, one transfer applied: partial.
        let partial = Builder::default()
            .op(1, Kind::Invoke, chain.clone())
            .op(1, Kind::Info, chain.clone())
            .finish(finals(
                &[("fund", 100), ("c1-0", -10)],
                &[("fund", 100), ("c1-0", 10)],
            ));
        assert_eq!(names(&partial), ["partial-chain"]);
        // Reported failed, applied whole: each transfer is caught as applied after a failure.
        let failed = Builder::default()
            .op(1, Kind::Invoke, chain.clone())
            .op(1, Kind::Fail, chain)
            .finish(finals(
                &[("fund", 100), ("c1-0", -10), ("c1-1", 4)],
                &[("fund", 100), ("c1-0", 10), ("c1-1", -4)],
            ));
        assert_eq!(names(&failed), ["failed-transfer-applied"]);
    }

    #[test]
    fn a_lost_acknowledged_transfer_is_caught() {
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 30, Kind::Ok)
            .finish(finals(&[("fund", 100)], &[("fund", 100)]));
        assert_eq!(names(&h), ["lost-transfer"]);
    }

    #[test]
    fn a_double_applied_transfer_is_caught() {
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 30, Kind::Info)
            .finish(finals(
                &[("fund", 100), ("t1", -30), ("t1", -30)],
                &[("fund", 100), ("t1", 30), ("t1", 30)],
            ));
        assert!(names(&h).contains(&"double-applied"), "{:?}", names(&h));
    }

    #[test]
    fn a_half_applied_transfer_is_caught() {
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 30, Kind::Ok)
            .finish(finals(&[("fund", 100), ("t1", -30)], &[("fund", 100)]));
        assert!(names(&h).contains(&"half-applied"));
    }

    #[test]
    fn a_failed_transfer_that_applied_is_caught() {
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 30, Kind::Fail)
            .finish(finals(
                &[("fund", 100), ("t1", -30)],
                &[("fund", 100), ("t1", 30)],
            ));
        assert_eq!(names(&h), ["failed-transfer-applied"]);
    }

    #[test]
    fn a_wrong_audit_total_is_caught() {
        let h = Builder::default()
            .audit(170)
            .finish(finals(&[("fund", 100)], &[("fund", 100)]));
        assert_eq!(names(&h), ["wrong-audit-total"]);
    }

    #[test]
    fn a_negative_balance_is_caught() {
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 130, Kind::Ok)
            .finish(finals(
                &[("fund", 100), ("t1", -130)],
                &[("fund", 100), ("t1", 130)],
            ));
        assert_eq!(names(&h), ["negative-balance"]);
    }

    #[test]
    fn a_stale_read_is_caught() {
        // t1 was acknowledged before the read began, yet the read returned the old balance.
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 30, Kind::Ok)
            .read(2, "a", 100)
            .finish(finals(
                &[("fund", 100), ("t1", -30)],
                &[("fund", 100), ("t1", 30)],
            ));
        assert_eq!(names(&h), ["stale-read"]);
    }

    #[test]
    fn a_read_from_the_future_and_an_impossible_read_are_caught() {
        let h = Builder::default()
            .read(2, "a", 70)
            .transfer(1, "t1", "a", "b", 30, Kind::Ok)
            .read(3, "b", 129)
            .finish(finals(
                &[("fund", 100), ("t1", -30)],
                &[("fund", 100), ("t1", 30)],
            ));
        assert_eq!(names(&h), ["future-read", "impossible-read"]);
    }

    /// t1 (30 from a to b) is in flight while two reads of a, one after the other, return `first`
    /// and `second`.
    fn reads_during_t1(first: i64, second: i64) -> History {
        let mut b = Builder::default();
        let v = Value::Transfer {
            id: "t1".into(),
            from: "a".into(),
            to: "b".into(),
            amount: 30,
        };
        b.op(1, Kind::Invoke, v.clone());
        b.read(2, "a", first).read(3, "a", second);
        b.op(1, Kind::Ok, v);
        b.finish(finals(
            &[("fund", 100), ("t1", -30)],
            &[("fund", 100), ("t1", 30)],
        ))
    }

    #[test]
    fn a_read_concurrent_with_a_transfer_may_see_it_or_not() {
        let h = reads_during_t1(100, 70);
        assert!(check(&h, 200, 0).valid());
    }

    #[test]
    fn a_read_that_goes_back_in_time_is_caught() {
        // t1 is in flight across both reads: each alone may or may not see it, but the second
        // read began after the first one saw it, so it cannot see the older balance.
        let h = reads_during_t1(70, 100);
        assert_eq!(names(&h), ["read-went-back"]);
    }

    #[test]
    fn writes_applied_against_real_time_are_caught() {
        // t1 was acknowledged before t2 began, yet a applied t2 first.
        let h = Builder::default()
            .transfer(1, "t1", "a", "b", 10, Kind::Ok)
            .transfer(2, "t2", "a", "b", 20, Kind::Ok)
            .finish(finals(
                &[("fund", 100), ("t2", -20), ("t1", -10)],
                &[("fund", 100), ("t1", 10), ("t2", 20)],
            ));
        assert_eq!(names(&h), ["reordered-writes"]);
    }

    #[test]
    fn a_cluster_slow_to_serve_after_healing_is_caught() {
        let mut b = Builder::default();
        b.transfer(1, "t1", "a", "b", 30, Kind::Ok);
        b.op(0, Kind::Invoke, Value::Final { accounts: None });
        b.clock += 61_000_000_000;
        let h = b.finish_read(finals(
            &[("fund", 100), ("t1", -30)],
            &[("fund", 100), ("t1", 30)],
        ));
        let report = check(&h, 200, 0);
        assert_eq!(report.names(), ["slow-recovery"]);
        assert!(report.recovery_s.is_some_and(|r| r > 61.0));
    }

    #[test]
    fn no_final_read_means_the_cluster_never_came_back() {
        let mut b = Builder::default();
        b.transfer(1, "t1", "a", "b", 30, Kind::Ok);
        b.op(0, Kind::Invoke, Value::Final { accounts: None });
        b.op(0, Kind::Info, Value::Final { accounts: None });
        let h = History { ops: b.ops.clone() };
        assert_eq!(names(&h), ["final-read-failed"]);
    }
}
