//! A reference model of the wallet's money rules: plain Rust, every sum in i128, no cleverness.
//!
//! It is the oracle of the model-based tests: the pure state machine (`node/tests/model_sm.rs`)
//! and a real 3-node cluster (`cluster/tests/model_cluster.rs`, which includes this file) are
//! driven with the same random commands over the whole i64 range, and every outcome, balance,
//! reservation, pending credit and snapshot read must match what this model says.
//!
//! The rules it states (README § Errors documents them):
//! - a debit the account cannot cover is `INSUFFICIENT_FUNDS` (remembered as the request's first
//!   outcome), whatever the numbers;
//! - a credit must fit in i64 together with every credit already promised to the account, and the
//!   promised credits must fit too, else `BALANCE_OVERFLOW` (not remembered: nothing was written);
//! - money reserved by unfinished outgoing transfers must fit in i64 too, else `BALANCE_OVERFLOW`
//!   (possible only with a credit limit near i64::MAX);
//! - a cross-shard transfer refused by its credit side is remembered with that refusal;
//! - a snapshot read at `ts` sees exactly the changes committed at or before `ts`.
#![allow(dead_code)] // the state machine and cluster tests use different parts

use std::collections::{BTreeMap, HashMap};

use wallet_proto::reason::Reason;
use wallet_proto::v1::TransferStatus;

const MAX: i128 = i64::MAX as i128;

/// What a command's outcome must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    Ok,
    Status(TransferStatus),
    Refused(Reason),
}

/// One account as the model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelAccount {
    pub currency: String,
    pub floor: i128,
    pub balance: i128,
    pub reserved: i128,
    pub pending: i128,
    /// The balance it was opened with (a deposit when it was created).
    pub opening: i128,
}

/// A committed balance change.
#[derive(Clone, Debug)]
struct Change {
    ts: u64,
    account: String,
    delta: i128,
    external: bool,
}

/// The primary's record of a cross-shard transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Primary {
    Prepared,
    Committed(u64),
    Aborted,
    Refused(Reason),
}

/// The credit side's intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credit {
    Pending,
    Credited,
    Aborted,
}

/// A cross-shard transfer: (id, from, to, amount).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Xfer {
    pub id: String,
    pub from: String,
    pub to: String,
    pub amount: i64,
}

#[derive(Default, Clone, Debug)]
pub struct Model {
    pub accounts: BTreeMap<String, ModelAccount>,
    /// (account, request id) → (content signature, first outcome).
    remembered: HashMap<(String, String), (String, Expect)>,
    changes: Vec<Change>,
    pub primaries: HashMap<(String, String), Primary>,
    pub credits: HashMap<(String, String, String), Credit>,
    /// Transfers by (from, id), for the in-flight sum.
    xfers: HashMap<(String, String), Xfer>,
}

impl Model {
    pub fn create(&mut self, id: &str, currency: &str, credit_limit: i64) -> Expect {
        self.create_funded(id, currency, credit_limit, 0, 0)
    }

    /// Opens an account with an opening balance, a deposit committed at `ts`, once: the same
    /// content again is fine and changes nothing, other content is `ACCOUNT_EXISTS`.
    pub fn create_funded(
        &mut self,
        id: &str,
        currency: &str,
        credit_limit: i64,
        opening: i64,
        ts: u64,
    ) -> Expect {
        let floor = -i128::from(credit_limit);
        let opening = i128::from(opening);
        if let Some(a) = self.accounts.get(id) {
            return if a.currency == currency && a.floor == floor && a.opening == opening {
                Expect::Ok
            } else {
                Expect::Refused(Reason::AccountExists)
            };
        }
        self.accounts.insert(
            id.to_string(),
            ModelAccount {
                currency: currency.to_string(),
                floor,
                balance: 0,
                reserved: 0,
                pending: 0,
                opening,
            },
        );
        if opening > 0 {
            self.change(ts, id, opening, true);
        }
        Expect::Ok
    }

    /// Exactly-once wrapper: a remembered request answers its first outcome; other content under
    /// its id is `ID_REUSED`; else `run` decides, and its outcome is remembered if `remember` says.
    fn once(
        &mut self,
        account: &str,
        id: &str,
        signature: String,
        run: impl FnOnce(&mut Model) -> (Expect, bool),
    ) -> Expect {
        let key = (account.to_string(), id.to_string());
        if let Some((first, outcome)) = self.remembered.get(&key) {
            return if *first == signature {
                outcome.clone()
            } else {
                Expect::Refused(Reason::IdReused)
            };
        }
        let (outcome, remember) = run(self);
        if remember {
            self.remembered.insert(key, (signature, outcome.clone()));
        }
        outcome
    }

    /// The refusal of adding `delta` to an account, if any (see the module's rules).
    fn refuse_change(a: &ModelAccount, delta: i128) -> Option<Reason> {
        let after = a.balance + delta;
        if delta < 0 && after - a.reserved < a.floor {
            return Some(Reason::InsufficientFunds);
        }
        if delta > 0 && (after > MAX || after + a.pending > MAX) {
            return Some(Reason::BalanceOverflow);
        }
        None
    }

    fn change(&mut self, ts: u64, account: &str, delta: i128, external: bool) {
        if let Some(a) = self.accounts.get_mut(account) {
            a.balance += delta;
        }
        self.changes.push(Change {
            ts,
            account: account.to_string(),
            delta,
            external,
        });
    }

    /// Deposit (`delta` > 0) or withdrawal (`delta` < 0) of `amount`.
    pub fn deposit_or_withdraw(&mut self, id: &str, account: &str, delta: i128, ts: u64) -> Expect {
        let signature = format!("{}:{account}:{delta}", if delta > 0 { "d" } else { "w" });
        self.once(account, id, signature, |m| {
            let Some(a) = m.accounts.get(account) else {
                return (Expect::Refused(Reason::AccountNotFound), false);
            };
            match Self::refuse_change(a, delta) {
                Some(Reason::InsufficientFunds) => {
                    (Expect::Refused(Reason::InsufficientFunds), true)
                }
                Some(reason) => (Expect::Refused(reason), false),
                None => {
                    m.change(ts, account, delta, true);
                    (Expect::Ok, true)
                }
            }
        })
    }

    /// A transfer between two accounts of one shard: one step.
    pub fn transfer_same_shard(&mut self, t: &Xfer, ts: u64) -> Expect {
        let signature = format!("t:{}:{}:{}", t.from, t.to, t.amount);
        self.once(&t.from, &t.id, signature, |m| {
            let (Some(from), Some(to)) = (m.accounts.get(&t.from), m.accounts.get(&t.to)) else {
                return (Expect::Refused(Reason::AccountNotFound), false);
            };
            if from.currency != to.currency {
                return (Expect::Refused(Reason::CurrencyMismatch), false);
            }
            let amount = i128::from(t.amount);
            if let Some(reason) = Self::refuse_change(to, amount) {
                return (Expect::Refused(reason), false);
            }
            if let Some(reason) = Self::refuse_change(from, -amount) {
                return (Expect::Refused(reason), true);
            }
            m.change(ts, &t.from, -amount, false);
            m.change(ts, &t.to, amount, false);
            (Expect::Status(TransferStatus::Committed), true)
        })
    }

    fn primary_status(p: &Primary) -> Expect {
        match p {
            Primary::Prepared => Expect::Status(TransferStatus::Prepared),
            Primary::Committed(_) => Expect::Status(TransferStatus::Committed),
            Primary::Aborted => Expect::Status(TransferStatus::Aborted),
            Primary::Refused(r) => Expect::Refused(*r),
        }
    }

    pub fn primary(&self, t: &Xfer) -> Option<&Primary> {
        self.primaries.get(&(t.from.clone(), t.id.clone()))
    }

    pub fn credit(&self, t: &Xfer) -> Option<&Credit> {
        self.credits
            .get(&(t.to.clone(), t.from.clone(), t.id.clone()))
    }

    /// Phase one on the primary: reserve, or remember INSUFFICIENT_FUNDS.
    pub fn prepare_debit(&mut self, t: &Xfer) -> Expect {
        let signature = format!("x:{}:{}:{}", t.from, t.to, t.amount);
        let key = (t.from.clone(), t.id.clone());
        if let Some((first, _)) = self.remembered.get(&key) {
            if *first != signature {
                return Expect::Refused(Reason::IdReused);
            }
            return self
                .primaries
                .get(&key)
                .map(Self::primary_status)
                .unwrap_or(Expect::Refused(Reason::Internal));
        }
        let Some(from) = self.accounts.get_mut(&t.from) else {
            return Expect::Refused(Reason::AccountNotFound);
        };
        let amount = i128::from(t.amount);
        let outcome = if from.balance - from.reserved - from.floor < amount {
            self.primaries
                .insert(key.clone(), Primary::Refused(Reason::InsufficientFunds));
            Expect::Refused(Reason::InsufficientFunds)
        } else if from.reserved + amount > MAX {
            // Reservations must fit in i64 too (with a huge credit limit they could exceed it).
            return Expect::Refused(Reason::BalanceOverflow);
        } else {
            from.reserved += amount;
            self.primaries.insert(key.clone(), Primary::Prepared);
            Expect::Status(TransferStatus::Prepared)
        };
        self.xfers.insert(key.clone(), t.clone());
        self.remembered.insert(key, (signature, Expect::Ok));
        outcome
    }

    /// Phase one on the credit side, with the debit account's currency.
    pub fn prepare_credit(&mut self, t: &Xfer, currency: &str) -> Expect {
        let key = (t.to.clone(), t.from.clone(), t.id.clone());
        match self.credits.get(&key) {
            Some(Credit::Aborted) => return Expect::Refused(Reason::TransferAborted),
            Some(Credit::Credited) => return Expect::Status(TransferStatus::Committed),
            Some(Credit::Pending) => return Expect::Status(TransferStatus::Prepared),
            None => {}
        }
        let Some(to) = self.accounts.get_mut(&t.to) else {
            return Expect::Refused(Reason::AccountNotFound);
        };
        if to.currency != currency {
            return Expect::Refused(Reason::CurrencyMismatch);
        }
        let amount = i128::from(t.amount);
        if Self::refuse_change(to, amount).is_some() || to.pending + amount > MAX {
            return Expect::Refused(Reason::BalanceOverflow);
        }
        to.pending += amount;
        self.credits.insert(key, Credit::Pending);
        Expect::Status(TransferStatus::Prepared)
    }

    /// The decision on the primary. `refusal`: the credit side's, remembered by an abort.
    pub fn decide_debit(
        &mut self,
        t: &Xfer,
        commit: bool,
        refusal: Option<Reason>,
        ts: u64,
    ) -> Expect {
        let key = (t.from.clone(), t.id.clone());
        let Some(current) = self.primaries.get(&key).cloned() else {
            return Expect::Refused(Reason::TransferNotFound);
        };
        match (current, commit) {
            (Primary::Prepared, _) => {}
            (Primary::Refused(_) | Primary::Aborted, true) => {
                return Expect::Refused(Reason::TransferAborted)
            }
            (other, _) => return Self::primary_status(&other),
        }
        let amount = i128::from(t.amount);
        if let Some(a) = self.accounts.get_mut(&t.from) {
            a.reserved -= amount;
        }
        let decided = if commit {
            self.change(ts, &t.from, -amount, false);
            Primary::Committed(ts)
        } else {
            refusal.map_or(Primary::Aborted, Primary::Refused)
        };
        let outcome = Self::primary_status(&decided);
        self.primaries.insert(key, decided);
        outcome
    }

    /// The decision applied on the credit side.
    pub fn decide_credit(&mut self, t: &Xfer, commit: bool, ts: u64) -> Expect {
        let key = (t.to.clone(), t.from.clone(), t.id.clone());
        match (self.credits.get(&key), commit) {
            (None, true) => return Expect::Refused(Reason::TransferNotFound),
            (None, false) => {
                self.credits.insert(key, Credit::Aborted);
                return Expect::Status(TransferStatus::Aborted);
            }
            (Some(Credit::Pending), _) => {}
            (Some(Credit::Credited), true) => return Expect::Status(TransferStatus::Committed),
            (Some(Credit::Aborted), false) => return Expect::Status(TransferStatus::Aborted),
            (Some(_), _) => return Expect::Refused(Reason::InvalidArgument),
        }
        let amount = i128::from(t.amount);
        if let Some(a) = self.accounts.get_mut(&t.to) {
            a.pending -= amount;
        }
        if commit {
            self.change(ts, &t.to, amount, false);
            self.credits.insert(key, Credit::Credited);
            Expect::Status(TransferStatus::Committed)
        } else {
            self.credits.insert(key, Credit::Aborted);
            Expect::Status(TransferStatus::Aborted)
        }
    }

    /// A whole cross-shard transfer as the router runs it (no crash): its answer to the client.
    pub fn transfer_cross_shard(&mut self, t: &Xfer, commit_ts: u64) -> Expect {
        match self.prepare_debit(t) {
            Expect::Status(TransferStatus::Prepared) => {}
            Expect::Status(TransferStatus::Committed) => {
                self.decide_credit(t, true, commit_ts);
                return Expect::Status(TransferStatus::Committed);
            }
            Expect::Status(_) => return Expect::Refused(Reason::TransferAborted),
            refused => return refused,
        }
        let currency = self.accounts[&t.from].currency.clone();
        match self.prepare_credit(t, &currency) {
            Expect::Refused(reason) => {
                self.decide_debit(t, false, Some(reason), 0);
                Expect::Refused(reason)
            }
            _ => {
                let decided = self.decide_debit(t, true, None, commit_ts);
                let ts = match self.primary(t) {
                    Some(Primary::Committed(ts)) => *ts,
                    _ => commit_ts,
                };
                self.decide_credit(t, true, ts);
                decided
            }
        }
    }

    /// Money committed by a primary whose credit has not landed yet.
    pub fn in_flight(&self) -> i128 {
        self.xfers
            .values()
            .filter(|t| matches!(self.primary(t), Some(Primary::Committed(_))))
            .filter(|t| self.credit(t) != Some(&Credit::Credited))
            .map(|t| i128::from(t.amount))
            .sum()
    }

    /// The balance of `account` as of `ts`: every change committed at or before it.
    pub fn balance_at(&self, account: &str, ts: u64) -> i128 {
        self.changes
            .iter()
            .filter(|c| c.account == account && c.ts <= ts)
            .map(|c| c.delta)
            .sum()
    }

    /// Per currency, (sum of balances, net deposits) as of `ts`.
    pub fn totals_at(&self, ts: u64) -> BTreeMap<String, (i128, i128)> {
        let mut totals: BTreeMap<String, (i128, i128)> = BTreeMap::new();
        for a in self.accounts.values() {
            totals.entry(a.currency.clone()).or_default();
        }
        for c in self.changes.iter().filter(|c| c.ts <= ts) {
            let currency = self.accounts[&c.account].currency.clone();
            let t = totals.entry(currency).or_default();
            t.0 += c.delta;
            if c.external {
                t.1 += c.delta;
            }
        }
        totals
    }

    /// G1 and G5 inside the model itself: balances plus money in flight equal net deposits, and no
    /// account is below its floor or outside i64.
    pub fn check_own_invariants(&self) {
        let balances: i128 = self.accounts.values().map(|a| a.balance).sum();
        let net: i128 = self
            .changes
            .iter()
            .filter(|c| c.external)
            .map(|c| c.delta)
            .sum();
        assert_eq!(balances + self.in_flight(), net, "model conservation");
        for (id, a) in &self.accounts {
            assert!(
                a.balance - a.reserved >= a.floor,
                "model overdraft on {id}: {a:?}"
            );
            assert!(
                a.balance.abs() <= MAX && a.pending <= MAX && a.reserved <= MAX,
                "{id}: {a:?}"
            );
        }
    }
}
