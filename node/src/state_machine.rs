//! The wallet state machine of one shard: pure and deterministic (DESIGN §5).
//!
//! Given the same commands in the same order, every replica reaches the same state: no clock (the
//! leader stamps `at_ms` into each command), no randomness, no I/O. [`StateMachine::apply`] returns
//! the command's outcome and appends the records it changed to a [`Writes`] list; the replica
//! stores those in one sled batch together with the applied index, so a crash replays cleanly.
//!
//! Money rules, each asserted after every apply in debug builds:
//! - balances change only by checked arithmetic, never wrapping (an overflow is refused);
//! - `balance - reserved >= floor` for every account (G5);
//! - a request id (scoped to the account it debits or credits) applies once: a retry returns the
//!   first outcome, other content under the same id is refused with `ID_REUSED` (G4).
//!
//! Refusals of bad input (invalid ids or amounts, unknown accounts, currency mismatch, overflow)
//! write nothing. A business refusal of a valid request (`INSUFFICIENT_FUNDS`) is remembered as the
//! request's first outcome, so a retry cannot succeed later and pay twice in the client's eyes.

use std::collections::{BTreeSet, HashMap};

use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, Account, AccountState, BalanceChange, Command, CreateAccountRequest,
    CreateAccounts, EntryKind, HistoryEntry, Intent, IntentState, Outcome, Outcomes, RequestRecord,
    SetRetention, Transfer, TransferRequest, TransferStatus, TsoWindow,
};
use wallet_proto::validate;

pub mod chain;
pub mod holds;
pub mod snapshot_read;
pub mod two_phase;

pub use crate::writes::{Write, Writes};

use crate::retention::{Fate, Retention, WINDOW_MAX_MS};
use crate::writes::{intent_key, IntentKey, RequestKey};
use snapshot_read::SnapshotState;

/// State of one shard: its accounts, the outcome of every request it applied, and the credit
/// side of cross-shard transfers (intents).
#[derive(Clone, Debug)]
pub struct StateMachine {
    pub(crate) shard_id: u64,
    pub(crate) ring: Ring,
    pub(crate) accounts: HashMap<String, Account>,
    pub(crate) requests: HashMap<RequestKey, RequestRecord>,
    /// Credit sides of cross-shard transfers, by (credit account, debit account, transfer id).
    pub(crate) intents: HashMap<IntentKey, Intent>,
    /// Transfers this shard is primary for that are PREPARED, awaiting a decision.
    pub(crate) prepared: BTreeSet<RequestKey>,
    /// Intents still PENDING, but promises of cross-shard holds.
    pub(crate) pending: BTreeSet<IntentKey>,
    /// Promises of cross-shard holds still PENDING (they last as long as their holds).
    pub(crate) promises: BTreeSet<IntentKey>,
    /// Holds still PENDING, by (debit account, hold id), and by expiry (`holds.rs`).
    pub(crate) pending_holds: BTreeSet<RequestKey>,
    pub(crate) hold_expiries: BTreeSet<(u64, RequestKey)>,
    /// Pending holds by (payee, payer, hold id).
    pub(crate) holds_by_payee: BTreeSet<(String, String, String)>,
    /// Meta group: no timestamp at or above this was ever handed out, and none below it will be
    /// by a later leader.
    pub(crate) tso_limit: u64,
    /// What snapshot reads need (closed timestamp, recent changes, net deposits).
    pub(crate) snapshot: SnapshotState,
    /// The shard's clock and the records to forget when their window passed.
    pub(crate) retention: Retention,
}

pub use wallet_proto::reason::Refusal;

/// The refusal inside an outcome, if it is one.
pub fn rejection_of(outcome: &Outcome) -> Option<Reason> {
    match &outcome.result {
        Some(outcome::Result::Rejected(r)) => Some(Refusal::of_rejection(r).reason),
        _ => None,
    }
}

impl StateMachine {
    /// An empty state machine for `shard_id`, owning the accounts `ring` places on it.
    pub fn new(shard_id: u64, ring: Ring) -> StateMachine {
        StateMachine {
            shard_id,
            ring,
            accounts: HashMap::new(),
            requests: HashMap::new(),
            intents: HashMap::new(),
            prepared: BTreeSet::new(),
            pending: BTreeSet::new(),
            promises: BTreeSet::new(),
            pending_holds: BTreeSet::new(),
            hold_expiries: BTreeSet::new(),
            holds_by_payee: BTreeSet::new(),
            tso_limit: 0,
            snapshot: SnapshotState::default(),
            retention: Retention::default(),
        }
    }

    /// An empty state machine for the same shard and ring.
    pub fn fresh(&self) -> StateMachine {
        StateMachine::new(self.shard_id, self.ring.clone())
    }

    /// The shard's clock and the records waiting for their window to pass.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Loads the stored clock (on start or snapshot install).
    pub fn load_clock(&mut self, clock_ms: i64) {
        self.retention.load_clock(clock_ms);
    }

    /// Loads the stored retention window (on start or snapshot install).
    pub fn load_retention(&mut self, window_ms: i64) {
        self.retention.set_window(window_ms);
    }

    /// The clock to store with the next checkpoint, if it moved: the replica adds it once per
    /// batch of applied entries, so a restart replays from the very clock its checkpoint had.
    pub fn clock_write(&mut self) -> Option<Write> {
        self.retention.clock_write()
    }

    /// Loads the stored timestamp limit (meta group).
    pub fn load_tso_limit(&mut self, limit: u64) {
        self.tso_limit = limit;
    }

    /// The timestamp limit (meta group).
    pub fn tso_limit(&self) -> u64 {
        self.tso_limit
    }

    /// Loads a stored account (on start or snapshot install).
    pub fn load_account(&mut self, account: Account) {
        self.accounts.insert(account.account_id.clone(), account);
    }

    /// Loads a stored request record (on start or snapshot install).
    pub fn load_request(&mut self, account_id: String, request_id: String, record: RequestRecord) {
        let key = (account_id, request_id);
        if two_phase::is_prepared(&record) {
            self.prepared.insert(key.clone());
        }
        self.track_record(&key, &record);
        self.requests.insert(key, record);
    }

    /// Loads a stored intent (on start or snapshot install).
    pub fn load_intent(&mut self, intent: Intent) {
        let key = intent_key(&intent);
        if intent.state == IntentState::Pending as i32 {
            if intent.hold {
                self.promises.insert(key.clone());
            } else {
                self.pending.insert(key.clone());
            }
        } else {
            self.retention
                .track_intent(key.clone(), intent.issued_at_ms);
        }
        self.intents.insert(key, intent);
    }

    /// Forgets everything (before a snapshot install).
    pub fn clear(&mut self) {
        self.accounts.clear();
        self.requests.clear();
        self.intents.clear();
        self.prepared.clear();
        self.pending.clear();
        self.promises.clear();
        self.pending_holds.clear();
        self.hold_expiries.clear();
        self.holds_by_payee.clear();
        self.tso_limit = 0;
        self.snapshot = SnapshotState::default();
        self.retention.clear();
    }

    /// Number of intents the shard remembers (credit sides of cross-shard transfers).
    pub fn intent_count(&self) -> usize {
        self.intents.len()
    }

    /// Cross-shard transfers undecided here: (PREPARED on this primary, PENDING intents here).
    pub fn undecided_count(&self) -> (usize, usize) {
        (
            self.prepared.len(),
            self.pending.len() + self.promises.len(),
        )
    }

    /// Number of request records the shard remembers (retries answer from them).
    pub fn request_count(&self) -> usize {
        self.requests.len()
    }

    /// Number of accounts on the shard.
    pub fn account_count(&self) -> usize {
        self.accounts.len()
    }

    /// One account.
    pub fn account(&self, account_id: &str) -> Option<&Account> {
        self.accounts.get(account_id)
    }

    /// Every account (audits and tests).
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// The transfer with this id debiting this account, if it was applied.
    pub fn transfer(&self, from_account_id: &str, transfer_id: &str) -> Option<Transfer> {
        let record = self
            .requests
            .get(&(from_account_id.to_string(), transfer_id.to_string()))?;
        match &record.outcome.as_ref()?.result {
            Some(outcome::Result::Transfer(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Whether this shard owns the account (else `WRONG_SHARD`).
    pub fn owns(&self, account_id: &str) -> bool {
        self.ring.shard_of(account_id) == self.shard_id
    }

    /// Applies one command. Deterministic; appends the changed records to `writes`.
    pub fn apply(&mut self, command: &Command, writes: &mut Writes) -> Outcome {
        self.retention.advance(command);
        self.forget_due(writes);
        let outcome = match &command.op {
            Some(Op::CreateAccount(create)) => self
                .create_account(command, create, writes)
                .unwrap_or_else(Outcome::from),
            Some(Op::CreateAccounts(batch)) => self.create_accounts(command, batch, writes),
            Some(Op::PrepareDebit(prepare)) => self.prepare_debit(command, prepare, writes),
            Some(Op::PrepareCredit(prepare)) => self.prepare_credit(command, prepare, writes),
            Some(Op::CommitDebit(step)) => self.decide_debit(command, step, true, writes),
            Some(Op::AbortDebit(step)) => self.decide_debit(command, step, false, writes),
            Some(Op::CommitCredit(step)) => self.decide_credit(command, step, true, writes),
            Some(Op::AbortCredit(step)) => self.decide_credit(command, step, false, writes),
            Some(Op::CloseTs(close)) => self.close_ts(close, writes),
            Some(Op::SetRetention(set)) => self.set_retention(set, writes),
            Some(Op::ForgetTransfers(forget)) => self.forget_transfers(forget, writes),
            Some(Op::Capture(capture)) => self.capture(command, capture, writes),
            Some(Op::Void(void)) => self.void(command, void, writes),
            Some(Op::ExpireHolds(_)) => self.expire_holds(command, writes),
            Some(Op::ChainDecide(decide)) => self.chain_decide(command, decide, writes),
            Some(Op::HoldPromised(answer)) => self.hold_promised(answer, writes),
            Some(Op::ExtendTso(extend)) => {
                let previous_limit = self.tso_limit;
                self.tso_limit = previous_limit.max(extend.limit);
                if self.tso_limit != previous_limit {
                    writes.push(Write::TsoLimit(self.tso_limit));
                }
                Outcome {
                    result: Some(outcome::Result::TsoWindow(TsoWindow {
                        previous_limit,
                        limit: self.tso_limit,
                    })),
                }
            }
            Some(op) => self
                .idempotent(command, op, writes)
                .unwrap_or_else(Outcome::from),
            None => Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                "command has no operation",
            )),
        };
        #[cfg(debug_assertions)]
        self.assert_touched_accounts(writes);
        outcome
    }

    /// Opens an account, funded with its opening balance (a deposit, history entry 1).
    /// Idempotent by account id: the same content again answers the account as it is now.
    fn create_account(
        &mut self,
        command: &Command,
        create: &CreateAccountRequest,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        validate::id("account id", &create.account_id)?;
        validate::currency(&create.currency)?;
        validate::credit_limit(create.credit_limit)?;
        validate::opening_balance(create.opening_balance)?;
        self.check_owned(&create.account_id)?;
        let floor = -create.credit_limit;
        if let Some(existing) = self.accounts.get(&create.account_id) {
            if existing.currency == create.currency
                && existing.floor == floor
                && existing.opening_balance == create.opening_balance
            {
                return Ok(Outcome {
                    result: Some(outcome::Result::Account(existing.clone())),
                });
            }
            return Err(Refusal::new(
                Reason::AccountExists,
                format!(
                    "account {} exists with currency {}, floor {} and opening balance {}",
                    existing.account_id,
                    existing.currency,
                    existing.floor,
                    existing.opening_balance
                ),
            ));
        }
        if create.opening_balance > 0 {
            // Money enters: it needs a commit timestamp, as a deposit does (audits, G3).
            if command.ts == 0 {
                return Err(Refusal::new(
                    Reason::InvalidArgument,
                    "an opening balance needs a timestamp",
                ));
            }
            self.check_fresh(command)?;
        }
        let account = Account {
            account_id: create.account_id.clone(),
            currency: create.currency.clone(),
            balance: 0,
            floor,
            reserved: 0,
            created_at_ms: command.at_ms,
            version: 0,
            pending_credit: 0,
            opening_balance: create.opening_balance,
            state: AccountState::Open as i32,
        };
        self.accounts
            .insert(account.account_id.clone(), account.clone());
        if create.opening_balance == 0 {
            writes.push(Write::Account(account.clone()));
            return Ok(Outcome {
                result: Some(outcome::Result::Account(account)),
            });
        }
        let opening = create.opening_balance;
        let seq = self.set_balance(&create.account_id, opening, writes);
        self.push_history(
            &create.account_id,
            seq,
            command,
            EntryKind::Deposit,
            opening,
            opening,
            "",
            writes,
        );
        Ok(Outcome {
            result: Some(outcome::Result::Account(
                self.accounts
                    .get(&create.account_id)
                    .cloned()
                    .unwrap_or_default(),
            )),
        })
    }

    /// The bulk path: each account as [`StateMachine::create_account`] would, one outcome each.
    /// A command stamped at or below the closed timestamp is refused whole (the router stamps it
    /// again) when any account brings money.
    fn create_accounts(
        &mut self,
        command: &Command,
        batch: &CreateAccounts,
        writes: &mut Writes,
    ) -> Outcome {
        if batch.accounts.len() > wallet_proto::TRANSFER_BATCH_MAX {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "{} accounts in one command; at most {}",
                    batch.accounts.len(),
                    wallet_proto::TRANSFER_BATCH_MAX
                ),
            ));
        }
        if batch.accounts.iter().any(|a| a.opening_balance > 0) {
            if let Err(refusal) = self.check_fresh(command) {
                return Outcome::from(refusal);
            }
        }
        let items = batch
            .accounts
            .iter()
            .map(|create| {
                self.create_account(command, create, writes)
                    .unwrap_or_else(Outcome::from)
            })
            .collect();
        Outcome {
            result: Some(outcome::Result::Outcomes(Outcomes { items })),
        }
    }

    /// Deposit, withdraw, transfer, authorize and the lifecycle: deduplicated by (account,
    /// request id).
    fn idempotent(
        &mut self,
        command: &Command,
        op: &Op,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        validate::id("request id", &command.request_id)?;
        let (account_id, amount, issued_at_ms) = match op {
            Op::Deposit(d) => (&d.account_id, Some(d.amount), d.issued_at_ms),
            Op::Withdraw(w) => (&w.account_id, Some(w.amount), w.issued_at_ms),
            Op::Transfer(t) => (&t.from_account_id, Some(t.amount), t.issued_at_ms),
            Op::Authorize(a) => (&a.from_account_id, Some(a.amount), a.issued_at_ms),
            Op::CloseAccount(r) | Op::FreezeAccount(r) | Op::UnfreezeAccount(r) => {
                (&r.account_id, None, r.issued_at_ms)
            }
            _ => return Err(Refusal::new(Reason::Internal, "not a deduplicated command")),
        };
        validate::id("account id", account_id)?;
        if let Some(amount) = amount {
            validate::amount(amount)?;
        }
        self.check_owned(account_id)?;
        self.retention.check_issued(issued_at_ms)?;
        let key = (account_id.clone(), command.request_id.clone());
        if let Some(record) = self.requests.get(&key) {
            let first = record.command.as_ref().and_then(|c| c.op.as_ref());
            if first.is_some_and(|first| same_request(first, op)) {
                return Ok(record.outcome.clone().unwrap_or_default());
            }
            return Err(Refusal::new(
                Reason::IdReused,
                format!(
                    "request id {} was used on account {} for another operation",
                    command.request_id, account_id
                ),
            ));
        }
        self.check_fresh(command)?;
        let outcome = match op {
            Op::Deposit(d) => self.change_balance(command, &d.account_id, d.amount, writes),
            // amount >= 1 was checked above, so the negation cannot overflow.
            Op::Withdraw(w) => self.change_balance(command, &w.account_id, -w.amount, writes),
            Op::Transfer(t) => self.transfer_within_shard(command, t, writes),
            Op::Authorize(a) => self.authorize(command, a, writes),
            Op::CloseAccount(r) => self.set_state(&r.account_id, AccountState::Closed, writes),
            Op::FreezeAccount(r) => self.set_state(&r.account_id, AccountState::Frozen, writes),
            Op::UnfreezeAccount(r) => self.set_state(&r.account_id, AccountState::Open, writes),
            _ => Err(Refusal::new(Reason::Internal, "not a deduplicated command")),
        }?;
        self.remember(key, command, outcome.clone(), issued_at_ms, writes);
        Ok(outcome)
    }

    /// Remembers a request's first outcome, issued at `issued_at_ms` (0: now).
    pub(crate) fn remember(
        &mut self,
        key: RequestKey,
        command: &Command,
        outcome: Outcome,
        issued_at_ms: i64,
        writes: &mut Writes,
    ) {
        let record = RequestRecord {
            command: Some(command.clone()),
            outcome: Some(outcome),
            issued_at_ms: self.retention.issued(issued_at_ms),
        };
        self.store_request(key, record, writes);
    }

    /// Stores a request record (new or changed): in memory, for the next checkpoint, and in
    /// the retention window its fate says.
    pub(crate) fn store_request(
        &mut self,
        key: RequestKey,
        record: RequestRecord,
        writes: &mut Writes,
    ) {
        writes.push(Write::Request {
            account_id: key.0.clone(),
            request_id: key.1.clone(),
            record: Box::new(record.clone()),
        });
        self.track_record(&key, &record);
        self.requests.insert(key, record);
    }

    /// Sets the replicated retention window. The first one also starts the window of records
    /// kept from before retention existed (no issue time): they count as issued now.
    fn set_retention(&mut self, set: &SetRetention, writes: &mut Writes) -> Outcome {
        if !(1..=WINDOW_MAX_MS).contains(&set.window_ms) {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                format!("retention window must be 1..={WINDOW_MAX_MS} ms"),
            ));
        }
        // Records kept from before retention count as issued now: there must be a now.
        if self.retention.clock_ms() == 0 {
            return Outcome::from(Refusal::new(
                Reason::Unavailable,
                "the shard has applied no timestamped command yet",
            ));
        }
        if self.retention.window_ms().is_none() {
            let now = self.retention.clock_ms();
            // HashMap order differs between replicas; the writes' order must not.
            let mut legacy: Vec<RequestKey> = self
                .requests
                .iter()
                .filter(|(_, r)| r.issued_at_ms == 0)
                .map(|(key, _)| key.clone())
                .collect();
            legacy.sort();
            for key in legacy {
                if let Some(mut record) = self.requests.get(&key).cloned() {
                    record.issued_at_ms = now;
                    self.store_request(key, record, writes);
                }
            }
            let mut legacy: Vec<IntentKey> = self
                .intents
                .iter()
                .filter(|(_, i)| i.issued_at_ms == 0)
                .map(|(key, _)| key.clone())
                .collect();
            legacy.sort();
            for key in legacy {
                if let Some(mut intent) = self.intents.get(&key).cloned() {
                    intent.issued_at_ms = now;
                    self.store_intent(key, intent, writes);
                }
            }
        }
        self.retention.set_window(set.window_ms);
        writes.push(Write::Retention(set.window_ms));
        Outcome::default()
    }

    /// Starts the retention window of a record, as its fate says.
    pub(crate) fn track_record(&mut self, key: &RequestKey, record: &RequestRecord) {
        self.track_hold(key, record);
        self.retention
            .track(key.clone(), record.issued_at_ms, record_fate(record));
    }

    /// Forgets the records and decided intents whose time passed (a few per command).
    fn forget_due(&mut self, writes: &mut Writes) {
        for key in self.retention.due() {
            if self.requests.remove(&key).is_some() {
                writes.push(Write::ForgetRequest(key));
            }
        }
        for key in self.retention.due_intents() {
            if self
                .intents
                .get(&key)
                .is_some_and(|i| i.state != IntentState::Pending as i32)
            {
                self.intents.remove(&key);
                writes.push(Write::ForgetIntent(key));
            }
        }
    }

    pub(crate) fn check_owned(&self, account_id: &str) -> Result<(), Refusal> {
        if self.owns(account_id) {
            return Ok(());
        }
        Err(Refusal::new(
            Reason::WrongShard,
            format!(
                "account {account_id} belongs to shard {}, not {}",
                self.ring.shard_of(account_id),
                self.shard_id
            ),
        ))
    }

    pub(crate) fn existing(&self, account_id: &str) -> Result<&Account, Refusal> {
        self.accounts.get(account_id).ok_or_else(|| {
            Refusal::new(
                Reason::AccountNotFound,
                format!("account {account_id} does not exist"),
            )
        })
    }

    /// The balance after adding `delta`, or the refusal: below the floor (`INSUFFICIENT_FUNDS`,
    /// checked first: a debit that the account cannot cover is that, whatever the numbers), or
    /// overflow. Computed in i128, so no operand can wrap: a credit must fit in i64 together with
    /// every credit already promised to the account (`pending_credit`).
    pub(crate) fn balance_after(account: &Account, delta: i64) -> Result<i64, Refusal> {
        let after = i128::from(account.balance) + i128::from(delta);
        if delta < 0 {
            let spendable_after = after - i128::from(account.reserved) - i128::from(account.floor);
            if spendable_after < 0 {
                return Err(Refusal::new(
                    Reason::InsufficientFunds,
                    format!(
                        "account {} has {} available, needs {}",
                        account.account_id,
                        i128::from(account.balance)
                            - i128::from(account.reserved)
                            - i128::from(account.floor),
                        -i128::from(delta)
                    ),
                ));
            }
        }
        let overflow = || {
            Refusal::new(
                Reason::BalanceOverflow,
                format!("balance of {} would overflow", account.account_id),
            )
        };
        if delta > 0 && after + i128::from(account.pending_credit) > i128::from(i64::MAX) {
            return Err(overflow());
        }
        i64::try_from(after).map_err(|_| overflow())
    }

    /// Deposit (delta > 0) or withdraw (delta < 0).
    fn change_balance(
        &mut self,
        command: &Command,
        account_id: &str,
        delta: i64,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        debug_assert!(delta != 0);
        let account = self.existing(account_id)?;
        if let Err(refusal) = movable(account) {
            return remembered(refusal);
        }
        let balance = match Self::balance_after(account, delta) {
            Ok(balance) => balance,
            Err(refusal) if refusal.reason == Reason::InsufficientFunds => {
                return Ok(Outcome::from(refusal))
            }
            Err(refusal) => return Err(refusal),
        };
        let kind = if delta > 0 {
            EntryKind::Deposit
        } else {
            EntryKind::Withdraw
        };
        let seq = self.set_balance(account_id, balance, writes);
        self.push_history(account_id, seq, command, kind, delta, balance, "", writes);
        Ok(Outcome {
            result: Some(outcome::Result::Change(BalanceChange {
                request_id: command.request_id.clone(),
                account_id: account_id.to_string(),
                delta,
                balance_after: balance,
                seq,
            })),
        })
    }

    fn transfer_within_shard(
        &mut self,
        command: &Command,
        t: &TransferRequest,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        if command.request_id != t.transfer_id {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "transfer id and request id differ",
            ));
        }
        validate::id("to account id", &t.to_account_id)?;
        if t.from_account_id == t.to_account_id {
            return Err(Refusal::new(
                Reason::SameAccount,
                "cannot transfer from an account to itself",
            ));
        }
        self.check_owned(&t.to_account_id)?;
        let from = self.existing(&t.from_account_id)?;
        let to = self.existing(&t.to_account_id)?;
        let currency = from.currency.clone();
        same_currency(&from.account_id, &from.currency, to)?;
        if let Err(refusal) = movable(from).and_then(|_| movable(to)) {
            return remembered(refusal);
        }
        let to_balance = Self::balance_after(to, t.amount)?;
        let from_balance = match Self::balance_after(from, -t.amount) {
            Ok(balance) => balance,
            Err(refusal) if refusal.reason == Reason::InsufficientFunds => {
                return Ok(Outcome::from(refusal))
            }
            Err(refusal) => return Err(refusal),
        };
        self.post_transfer(
            command,
            (&t.from_account_id, from_balance),
            (&t.to_account_id, to_balance),
            t.amount,
            writes,
        );
        Ok(Outcome {
            result: Some(outcome::Result::Transfer(Transfer {
                transfer_id: t.transfer_id.clone(),
                from_account_id: t.from_account_id.clone(),
                to_account_id: t.to_account_id.clone(),
                amount: t.amount,
                status: TransferStatus::Committed as i32,
                created_at_ms: command.at_ms,
                from_balance_after: from_balance,
                currency,
                start_ts: command.ts,
                commit_ts: command.ts,
                chain: None,
            })),
        })
    }

    /// Freezes, unfreezes or closes an account; answers it after the change. A refusal
    /// (`ACCOUNT_CLOSED`, `ACCOUNT_FROZEN`, `ACCOUNT_NOT_EMPTY`) is an outcome, remembered as the
    /// request's first like `INSUFFICIENT_FUNDS`.
    fn set_state(
        &mut self,
        account_id: &str,
        state: AccountState,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        let account = self.existing(account_id)?;
        let now = AccountState::try_from(account.state).map_err(|_| unknown_state(account))?;
        let refusal = match (now, state) {
            (AccountState::Closed, AccountState::Closed) => None,
            (AccountState::Closed, _) => Some(closed(account)),
            (AccountState::Frozen, AccountState::Closed) => Some(Refusal::new(
                Reason::AccountFrozen,
                format!("account {account_id} is frozen: unfreeze it before closing it"),
            )),
            (_, AccountState::Closed)
                if account.balance != 0 || account.reserved != 0 || account.pending_credit != 0 =>
            {
                Some(Refusal::new(
                    Reason::AccountNotEmpty,
                    format!(
                        "account {account_id} holds {} with {} reserved and {} pending credit: \
                         only an account at 0 with nothing in flight can close",
                        account.balance, account.reserved, account.pending_credit
                    ),
                ))
            }
            _ => None,
        };
        if let Some(refusal) = refusal {
            return Ok(Outcome::from(refusal));
        }
        let mut account = account.clone();
        if now != state {
            account.state = state as i32;
            writes.push(Write::Account(account.clone()));
            self.accounts
                .insert(account.account_id.clone(), account.clone());
        }
        Ok(Outcome {
            result: Some(outcome::Result::Account(account)),
        })
    }

    /// Moves `amount` between two accounts of this shard at the balances the caller checked:
    /// sets both (one account write each) and writes their history entries, `TRANSFER_OUT` and
    /// `TRANSFER_IN` under the command's request id (a same-shard transfer, a hold's capture).
    pub(crate) fn post_transfer(
        &mut self,
        command: &Command,
        (from, from_balance): (&str, i64),
        (to, to_balance): (&str, i64),
        amount: i64,
        writes: &mut Writes,
    ) {
        let from_seq = self.set_balance(from, from_balance, writes);
        let to_seq = self.set_balance(to, to_balance, writes);
        self.push_history(
            from,
            from_seq,
            command,
            EntryKind::TransferOut,
            -amount,
            from_balance,
            to,
            writes,
        );
        self.push_history(
            to,
            to_seq,
            command,
            EntryKind::TransferIn,
            amount,
            to_balance,
            from,
            writes,
        );
    }

    /// Sets a balance, bumps the account's version, records the write; returns the new version.
    pub(crate) fn set_balance(
        &mut self,
        account_id: &str,
        balance: i64,
        writes: &mut Writes,
    ) -> u64 {
        let account = self
            .accounts
            .get_mut(account_id)
            .expect("caller checked that the account exists");
        account.balance = balance;
        account.version += 1;
        writes.push(Write::Account(account.clone()));
        account.version
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_history(
        &mut self,
        account_id: &str,
        seq: u64,
        command: &Command,
        kind: EntryKind,
        delta: i64,
        balance_after: i64,
        counterparty: &str,
        writes: &mut Writes,
    ) {
        self.record_change(account_id, kind, delta, command, writes);
        writes.push(Write::History {
            account_id: account_id.to_string(),
            entry: HistoryEntry {
                seq,
                request_id: command.request_id.clone(),
                kind: kind as i32,
                delta,
                balance_after,
                counterparty: counterparty.to_string(),
                at_ms: command.at_ms,
                commit_ts: command.ts,
            },
        });
    }

    /// Checks the money invariants of every account; panics on a violation (a bug, never input).
    pub fn assert_invariants(&self) {
        for account in self.accounts.values() {
            assert_account_invariant(account);
        }
    }

    #[cfg(debug_assertions)]
    fn assert_touched_accounts(&self, writes: &Writes) {
        for write in writes {
            if let Write::Account(account) = write {
                assert_account_invariant(account);
                assert!(self.accounts.contains_key(&account.account_id));
            }
        }
    }
}

/// A transfer moves money between accounts of one currency only.
/// Whether a request asks for what the first one under its id asked: the same operation, whatever
/// its issue time (a retry may be stamped anew; its expiry is checked on its own).
pub(crate) fn same_request(first: &Op, again: &Op) -> bool {
    first == again || without_issue_time(first) == without_issue_time(again)
}

/// Whether two transfers are the same, whatever their issue times.
pub(crate) fn same_transfer(first: &TransferRequest, again: &TransferRequest) -> bool {
    first == again
        || TransferRequest {
            issued_at_ms: 0,
            ..first.clone()
        } == TransferRequest {
            issued_at_ms: 0,
            ..again.clone()
        }
}

fn without_issue_time(op: &Op) -> Op {
    let mut op = op.clone();
    match &mut op {
        Op::Deposit(d) => d.issued_at_ms = 0,
        Op::Withdraw(w) => w.issued_at_ms = 0,
        Op::Transfer(t) => t.issued_at_ms = 0,
        Op::Authorize(a) => a.issued_at_ms = 0,
        Op::CloseAccount(r) | Op::FreezeAccount(r) | Op::UnfreezeAccount(r) => r.issued_at_ms = 0,
        Op::PrepareDebit(p) => {
            if let Some(t) = p.transfer.as_mut() {
                t.issued_at_ms = 0;
            }
        }
        Op::PrepareCredit(p) => {
            if let Some(t) = p.transfer.as_mut() {
                t.issued_at_ms = 0;
            }
        }
        _ => {}
    }
    op
}

/// What becomes of a record once its retention window passed (`retention.rs`).
pub(crate) fn record_fate(record: &RequestRecord) -> Fate {
    match record.command.as_ref().and_then(|c| c.op.as_ref()) {
        Some(
            Op::Deposit(_)
            | Op::Withdraw(_)
            | Op::Transfer(_)
            | Op::CloseAccount(_)
            | Op::FreezeAccount(_)
            | Op::UnfreezeAccount(_),
        ) => Fate::Forget,
        // A pending hold is kept; a decided or refused one is forgotten a window after.
        Some(Op::Authorize(_)) if holds::is_pending_hold(record) => Fate::Keep,
        Some(Op::Authorize(_)) if holds::is_decided_cross_shard_hold(record) => Fate::Confirm,
        Some(Op::Authorize(_)) => Fate::Forget,
        // A chain's commit is kept until every item is decided (recovery confirms); an abort a
        // window after it was made (asked again, it is made again the same way).
        Some(Op::ChainDecide(_)) => match record.outcome.as_ref().and_then(|o| o.result.as_ref()) {
            Some(outcome::Result::Chain(d)) if d.committed => Fate::Confirm,
            _ => Fate::Forget,
        },
        Some(Op::PrepareDebit(_)) => {
            match record.outcome.as_ref().and_then(|o| o.result.as_ref()) {
                Some(outcome::Result::Transfer(t)) => match TransferStatus::try_from(t.status) {
                    Ok(TransferStatus::Prepared) => Fate::Keep,
                    Ok(TransferStatus::Committed) => Fate::Confirm,
                    // Aborted: a credit side that asks after it is forgotten hears "not found",
                    // which means abort, as it should.
                    _ => Fate::Forget,
                },
                // Refused at prepare, or aborted with its credit side's refusal.
                _ => Fate::Forget,
            }
        }
        _ => Fate::Keep,
    }
}

/// Whether money may move into or out of the account now: `ACCOUNT_FROZEN` or `ACCOUNT_CLOSED`
/// if not. Decisions on transfers already prepared do not ask: their money was checked then.
pub(crate) fn movable(account: &Account) -> Result<(), Refusal> {
    match AccountState::try_from(account.state) {
        Ok(AccountState::Open) => Ok(()),
        Ok(AccountState::Frozen) => Err(Refusal::new(
            Reason::AccountFrozen,
            format!("account {} is frozen", account.account_id),
        )),
        Ok(AccountState::Closed) => Err(closed(account)),
        Err(_) => Err(unknown_state(account)),
    }
}

fn unknown_state(account: &Account) -> Refusal {
    Refusal::new(
        Reason::CorruptRecord,
        format!(
            "account {} has unknown state {}",
            account.account_id, account.state
        ),
    )
}

/// A refusal of [`movable`] as the request's outcome, remembered as its first (a business
/// refusal), except a corrupt record, which is refused and not remembered.
pub(crate) fn remembered(refusal: Refusal) -> Result<Outcome, Refusal> {
    if refusal.reason == Reason::CorruptRecord {
        return Err(refusal);
    }
    Ok(Outcome::from(refusal))
}

fn closed(account: &Account) -> Refusal {
    Refusal::new(
        Reason::AccountClosed,
        format!("account {} is closed", account.account_id),
    )
}

pub(crate) fn same_currency(
    from_id: &str,
    from_currency: &str,
    to: &Account,
) -> Result<(), Refusal> {
    if from_currency == to.currency {
        return Ok(());
    }
    Err(Refusal::new(
        Reason::CurrencyMismatch,
        format!(
            "{from_id} holds {from_currency}, {} holds {}",
            to.account_id, to.currency
        ),
    ))
}

/// G5 on one account: what is spendable never goes below the floor; reserved and pending credits
/// are never negative.
pub fn assert_account_invariant(account: &Account) {
    assert!(account.reserved >= 0, "negative reservation: {account:?}");
    assert!(
        account.pending_credit >= 0,
        "negative pending credit: {account:?}"
    );
    assert!(account.floor <= 0, "positive floor: {account:?}");
    assert!(
        i128::from(account.balance) - i128::from(account.reserved) >= i128::from(account.floor),
        "balance below floor: {account:?}"
    );
}
