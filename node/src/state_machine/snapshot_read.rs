//! Snapshot reads at a timestamp: the state machine's side of audits (DESIGN §7, G6).
//!
//! A read at timestamp `T` must see exactly the balance changes committed at or before `T` on
//! every shard. Three rules make that hold:
//! 1. **Close**: the reader first applies `CloseTs(T)` on each shard. From then on the shard
//!    refuses (`TIMESTAMP_TOO_OLD`, which the router answers by re-stamping) every *new* command
//!    stamped at or below `T`: deposits, withdrawals, same-shard transfers and both prepares. So no
//!    change stamped `≤ T` can start after the close.
//! 2. **Wait for locks**: the reader then waits until no transfer that started before `T` is still
//!    PREPARED (primary) or PENDING (credit side); their decisions carry a commit timestamp that
//!    may be `≤ T`, and they are never refused. Recovery decides them within seconds.
//! 3. **Subtract what is newer**: a balance at `T` is the current balance minus every change
//!    stamped after `T`. Those were applied at most moments ago, so the state machine keeps the
//!    changes of the last [`RECENT_MS`] in memory; a read older than what it still holds is refused
//!    (`SNAPSHOT_TOO_OLD`, retry with a fresh timestamp).
//!
//! Net deposits (deposits − withdrawals) are kept per currency the same way, so an audit compares
//! the sum of balances at `T` with the net deposits at `T` (G1).

use std::collections::{BTreeMap, VecDeque};

use wallet_proto::reason::Reason;
use wallet_proto::v1::{
    outcome, Account, AuditReport, CloseTs, Command, CurrencyTotals, EntryKind, Outcome,
};

use super::{Refusal, StateMachine, Write, Writes};

/// How long applied changes stay available to snapshot reads (by the leader's apply clock).
pub const RECENT_MS: i64 = 30_000;
/// Bound on the changes kept, whatever their age.
pub const RECENT_MAX: usize = 1_000_000;

/// One balance change, kept for snapshot reads.
#[derive(Clone, Debug)]
pub(crate) struct RecentChange {
    commit_ts: u64,
    account_id: String,
    at_ms: i64,
    currency: String,
    delta: i64,
    /// A deposit or withdrawal (moves net deposits), not a transfer leg.
    external: bool,
}

/// Snapshot-read state of a shard's state machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct SnapshotState {
    /// New commands stamped at or below this are refused.
    pub(crate) closed_ts: u64,
    /// Highest commit timestamp of any change applied so far.
    pub(crate) max_ts: u64,
    /// Changes no longer in `recent` all have a commit timestamp at or below this.
    pub(crate) forgotten_ts: u64,
    pub(crate) recent: VecDeque<RecentChange>,
    /// Deposits minus withdrawals, per currency, over the shard's whole life.
    pub(crate) net_deposits: BTreeMap<String, i128>,
}

impl StateMachine {
    /// Rule 1: a new command stamped at or below the closed timestamp is refused.
    pub(crate) fn check_fresh(&self, command: &Command) -> Result<(), Refusal> {
        let closed = self.snapshot.closed_ts;
        if closed > 0 && command.ts <= closed {
            return Err(Refusal::new(
                Reason::TimestampTooOld,
                format!(
                    "timestamp {} is at or below the closed timestamp {closed}",
                    command.ts
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn close_ts(&mut self, close: &CloseTs, writes: &mut Writes) -> Outcome {
        if close.ts > self.snapshot.closed_ts {
            self.snapshot.closed_ts = close.ts;
            writes.push(Write::ClosedTs(close.ts));
        }
        Outcome {
            result: Some(outcome::Result::ClosedTs(self.snapshot.closed_ts)),
        }
    }

    /// Records a balance change for snapshot reads (called for every history entry).
    pub(crate) fn record_change(
        &mut self,
        account_id: &str,
        kind: EntryKind,
        delta: i64,
        command: &Command,
        writes: &mut Writes,
    ) {
        let currency = self
            .accounts
            .get(account_id)
            .map(|a| a.currency.clone())
            .unwrap_or_default();
        let external = matches!(kind, EntryKind::Deposit | EntryKind::Withdraw);
        if external {
            let total = self
                .snapshot
                .net_deposits
                .entry(currency.clone())
                .or_default();
            *total += i128::from(delta);
            writes.push(Write::NetDeposits(currency.clone(), *total));
        }
        if command.ts > self.snapshot.max_ts {
            self.snapshot.max_ts = command.ts;
            writes.push(Write::MaxTs(command.ts));
        }
        let state = &mut self.snapshot;
        state.recent.push_back(RecentChange {
            commit_ts: command.ts,
            account_id: account_id.to_string(),
            at_ms: command.at_ms,
            currency,
            delta,
            external,
        });
        while let Some(front) = state.recent.front() {
            let stale = front.at_ms < command.at_ms - RECENT_MS || state.recent.len() > RECENT_MAX;
            if !stale {
                break;
            }
            state.forgotten_ts = state.forgotten_ts.max(front.commit_ts);
            state.recent.pop_front();
        }
    }

    /// Loads the snapshot-read state kept on disk (closed and highest timestamps, net deposits).
    /// Changes applied before a restart are no longer in memory: reads at or below the highest
    /// timestamp seen so far are refused, fresh ones work.
    pub fn load_snapshot_state(
        &mut self,
        closed_ts: u64,
        max_ts: u64,
        net: BTreeMap<String, i128>,
    ) {
        self.snapshot = SnapshotState {
            closed_ts,
            max_ts,
            forgotten_ts: max_ts,
            recent: VecDeque::new(),
            net_deposits: net,
        };
    }

    fn check_kept(&self, ts: u64) -> Result<(), Refusal> {
        let forgotten = self.snapshot.forgotten_ts;
        if ts < forgotten {
            return Err(Refusal::new(
                Reason::SnapshotTooOld,
                format!(
                    "shard {} keeps changes after {forgotten} only; asked for {ts}",
                    self.shard_id
                ),
            ));
        }
        Ok(())
    }

    /// Rule 3 for one account: its balance as of `ts` (other fields are the current ones).
    pub fn account_at(&self, account_id: &str, ts: u64) -> Result<Account, Refusal> {
        self.check_kept(ts)?;
        let mut account = self.existing(account_id)?.clone();
        // Undone in i128: the intermediate sums may leave i64 although the answer fits (a deposit
        // of i64::MAX, its withdrawal and another deposit of i64::MAX).
        let newer: i128 = self
            .snapshot
            .recent
            .iter()
            .filter(|c| c.commit_ts > ts && c.account_id == account_id)
            .map(|c| i128::from(c.delta))
            .sum();
        let balance = i128::from(account.balance) - newer;
        account.balance = i64::try_from(balance).map_err(|_| {
            Refusal::new(
                Reason::Internal,
                format!("balance of {account_id} at {ts} does not fit in i64: {balance}"),
            )
        })?;
        Ok(account)
    }

    /// Rule 3 for every account, a page at a time: up to `limit` accounts whose id follows
    /// `after`, in id order, each with its balance as of `ts` (the caller applied rules 1 and 2
    /// first, so no transfer is undecided at `ts`; pending holds move no money, so balances are
    /// exact, and holds are not part of a page). An account opened after `ts` shows with what it
    /// held at `ts`, 0.
    pub fn accounts_at(
        &self,
        ts: u64,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Account>, bool), Refusal> {
        self.check_kept(ts)?;
        let limit = limit.max(1);
        // The `limit` smallest ids after `after`, without sorting the whole shard.
        let mut page: std::collections::BinaryHeap<&str> = std::collections::BinaryHeap::new();
        let mut more = false;
        for id in self.accounts.keys().map(String::as_str) {
            if id <= after {
                continue;
            }
            if page.len() < limit {
                page.push(id);
            } else if page.peek().is_some_and(|largest| id < *largest) {
                page.pop();
                page.push(id);
                more = true;
            } else {
                more = true;
            }
        }
        let mut ids = page.into_vec();
        ids.sort_unstable();
        // One pass over the kept changes for the whole page (not one per account).
        let mut newer: std::collections::HashMap<&str, i128> =
            ids.iter().map(|id| (*id, 0)).collect();
        for change in self.snapshot.recent.iter().filter(|c| c.commit_ts > ts) {
            if let Some(sum) = newer.get_mut(change.account_id.as_str()) {
                *sum += i128::from(change.delta);
            }
        }
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            let mut account = self.existing(id)?.clone();
            let undone = newer.get(id).copied().unwrap_or(0);
            let balance = i128::from(account.balance) - undone;
            account.balance = i64::try_from(balance).map_err(|_| {
                Refusal::new(
                    Reason::Internal,
                    format!("balance of {id} at {ts} does not fit in i64: {balance}"),
                )
            })?;
            account.reserved = 0;
            account.pending_credit = 0;
            accounts.push(account);
        }
        Ok((accounts, more))
    }

    /// Rule 3: per-currency totals as of `ts` (the caller applied rules 1 and 2 first).
    pub fn snapshot_at(&self, ts: u64) -> Result<AuditReport, Refusal> {
        self.check_kept(ts)?;
        let state = &self.snapshot;
        #[derive(Default)]
        struct Sums {
            balances: i128,
            net: i128,
            reserved: i128,
            pending: i128,
            held: i128,
            accounts: u64,
        }
        let mut sums: BTreeMap<String, Sums> = BTreeMap::new();
        for account in self.accounts.values() {
            let s = sums.entry(account.currency.clone()).or_default();
            s.balances += i128::from(account.balance);
            s.reserved += i128::from(account.reserved);
            s.pending += i128::from(account.pending_credit);
            s.accounts += 1;
        }
        for (currency, held) in self.held() {
            sums.entry(currency).or_default().held += held;
        }
        for (currency, net) in &state.net_deposits {
            sums.entry(currency.clone()).or_default().net += net;
        }
        for change in state.recent.iter().filter(|c| c.commit_ts > ts) {
            let s = sums.entry(change.currency.clone()).or_default();
            s.balances -= i128::from(change.delta);
            if change.external {
                s.net -= i128::from(change.delta);
            }
        }
        Ok(AuditReport {
            ts,
            totals: sums
                .into_iter()
                .map(|(currency, s)| CurrencyTotals {
                    currency,
                    balances: s.balances.to_string(),
                    net_deposits: s.net.to_string(),
                    reserved: s.reserved.to_string(),
                    pending_credit: s.pending.to_string(),
                    held: s.held.to_string(),
                    accounts: s.accounts,
                })
                .collect(),
        })
    }
}
