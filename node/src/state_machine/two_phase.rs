//! The state machine's side of cross-shard transfers (DESIGN §6), decided on the debit shard.
//!
//! Primary (the debit account's shard), keyed by (debit account, transfer id) like any request:
//! - `PrepareDebit`: records the transfer PREPARED and moves the amount from spendable into
//!   `reserved`; too little money → the refusal `INSUFFICIENT_FUNDS` is remembered as the outcome.
//! - `CommitDebit`: PREPARED → COMMITTED, the reservation is spent. **This entry is the commit
//!   point**: once applied, the transfer happens, whatever crashes next.
//! - `AbortDebit`: PREPARED → ABORTED, the reservation is released. Aborting a COMMITTED transfer
//!   answers COMMITTED: the first decision stands, whoever asks.
//!
//! Credit shard, keyed by (credit account, debit account, transfer id): ids are scoped to the debit
//! account everywhere, so two debit accounts may use one id towards the same credit account.
//! - `PrepareCredit`: an intent PENDING, its amount counted in the account's `pending_credit` (so a
//!   later credit cannot overflow; `pending_credit` itself stays within i64).
//!
//! A credit side that refuses its prepare (unknown account, currency mismatch, overflow) makes the
//! router abort the primary with that refusal (`AbortDebit.refusal`), which becomes the transfer's
//! remembered first outcome: a retry answers the same refusal (G4).
//!
//! A decision step that meets a record contradicting the money rules (a bug, never input) is
//! refused with `INTERNAL` and changes nothing: a committed entry that panicked would panic again
//! on every replica and on every replay, and cost the shard (G9).
//! - `CommitCredit`: PENDING → CREDITED, the balance grows. `AbortCredit`: PENDING → ABORTED; on
//!   an unknown intent it leaves an ABORTED tombstone, so a late `PrepareCredit` cannot revive it.
//!
//! Every step is idempotent: repeating it returns the current state and writes nothing. Money is
//! conserved at every step: between `CommitDebit` and `CommitCredit` the amount is in flight (the
//! committed debit's record is the proof), which audits count.

use wallet_proto::reason::Reason;
use wallet_proto::v1::{
    command::Op, outcome, Command, EntryKind, ForgetTransfers, Intent, IntentState, IntentStates,
    IntentStatesQuery, Outcome, PrepareCredit, PrepareDebit, RequestRecord, Settling,
    SettlingTransfers, Stuck, StuckTransfers, Transfer, TransferRequest, TransferStatus,
    TransferStep,
};
use wallet_proto::validate;

use super::{
    intent_key, movable, record_fate, remembered, same_currency, same_request, same_transfer,
    IntentKey, Refusal, StateMachine, Write, Writes,
};
use crate::retention::Fate;

/// Most entries of each list a `Stuck` query returns (a bound on the answer's size, G10).
pub const STUCK_MAX: usize = 1000;

/// Most transfers one `ForgetTransfers` names, one `Settling` answer lists, and one
/// `IntentStatesQuery` asks about.
pub const FORGET_TRANSFERS_MAX: usize = 1000;

/// A record that contradicts the money rules: refused, nothing changes, loudly logged.
fn broken(what: String) -> Outcome {
    tracing::error!(%what, "state machine refused a step that contradicts its records");
    Outcome::from(Refusal::new(Reason::Internal, what))
}

fn transfer_outcome(transfer: Transfer) -> Outcome {
    Outcome {
        result: Some(outcome::Result::Transfer(transfer)),
    }
}

/// Whether a stored request record is a transfer PREPARED on this (primary) shard.
pub(crate) fn is_prepared(record: &RequestRecord) -> bool {
    matches!(
        record.outcome.as_ref().and_then(|o| o.result.as_ref()),
        Some(outcome::Result::Transfer(t)) if t.status == TransferStatus::Prepared as i32
    )
}

fn check_transfer(command: &Command, t: &TransferRequest) -> Result<(), Refusal> {
    validate::id("transfer id", &t.transfer_id)?;
    validate::id("from account id", &t.from_account_id)?;
    validate::id("to account id", &t.to_account_id)?;
    validate::amount(t.amount)?;
    if command.request_id != t.transfer_id {
        return Err(Refusal::new(
            Reason::InvalidArgument,
            "transfer id and request id differ",
        ));
    }
    if t.from_account_id == t.to_account_id {
        return Err(Refusal::new(
            Reason::SameAccount,
            "cannot transfer from an account to itself",
        ));
    }
    Ok(())
}

/// The first [`STUCK_MAX`] items; sets `more` if there were others.
fn take_bounded<T>(items: impl Iterator<Item = T>, more: &mut bool) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if out.len() == STUCK_MAX {
            *more = true;
            break;
        }
        out.push(item);
    }
    out
}

fn intent_transfer(intent: &Intent, status: TransferStatus) -> Transfer {
    let t = intent.transfer.clone().unwrap_or_default();
    Transfer {
        transfer_id: t.transfer_id,
        from_account_id: t.from_account_id,
        to_account_id: t.to_account_id,
        amount: t.amount,
        status: status as i32,
        created_at_ms: intent.prepared_at_ms,
        from_balance_after: 0,
        currency: String::new(),
        start_ts: intent.start_ts,
        commit_ts: intent.commit_ts,
        chain: None,
    }
}

impl StateMachine {
    pub(crate) fn prepare_debit(
        &mut self,
        command: &Command,
        prepare: &PrepareDebit,
        writes: &mut Writes,
    ) -> Outcome {
        self.try_prepare_debit(command, prepare, writes)
            .unwrap_or_else(Outcome::from)
    }

    fn try_prepare_debit(
        &mut self,
        command: &Command,
        prepare: &PrepareDebit,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        let t = prepare
            .transfer
            .as_ref()
            .ok_or_else(|| Refusal::new(Reason::InvalidArgument, "prepare without transfer"))?;
        check_transfer(command, t)?;
        self.check_owned(&t.from_account_id)?;
        let credit_shard = self.ring.shard_of(&t.to_account_id);
        if let Some(chain) = &prepare.chain {
            super::chain::check_chain_ref(chain)?;
        }
        // A chain's item goes two-phase wherever its accounts live; a lone transfer only across
        // shards (within one, it is one entry).
        let same_shard_refused = credit_shard == self.shard_id && prepare.chain.is_none();
        if same_shard_refused || credit_shard != prepare.credit_shard_id {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "{} lives on shard {credit_shard}: not a cross-shard transfer from shard {}",
                    t.to_account_id, self.shard_id
                ),
            ));
        }
        self.retention.check_issued(t.issued_at_ms)?;
        let key = (t.from_account_id.clone(), t.transfer_id.clone());
        if let Some(record) = self.requests.get(&key) {
            let first = record.command.as_ref().and_then(|c| c.op.as_ref());
            if let Some(first @ Op::PrepareDebit(_)) = first {
                if same_request(first, &Op::PrepareDebit(prepare.clone())) {
                    return Ok(record.outcome.clone().unwrap_or_default());
                }
            }
            return Err(Refusal::new(
                Reason::IdReused,
                format!(
                    "transfer id {} was used on account {} for another operation",
                    t.transfer_id, t.from_account_id
                ),
            ));
        }
        self.check_fresh(command)?;
        let from = self.existing(&t.from_account_id)?;
        let spendable =
            i128::from(from.balance) - i128::from(from.reserved) - i128::from(from.floor);
        let outcome = if let Err(refusal) = movable(from) {
            remembered(refusal)?
        } else if spendable < i128::from(t.amount) {
            Outcome::from(Refusal::new(
                Reason::InsufficientFunds,
                format!(
                    "account {} has {spendable} available, needs {}",
                    t.from_account_id, t.amount
                ),
            ))
        } else {
            let mut account = from.clone();
            // reserved + amount <= balance - floor, which exceeds i64 with a credit limit near
            // i64::MAX: then it is refused (nothing written, like any overflow).
            account.reserved = account.reserved.checked_add(t.amount).ok_or_else(|| {
                Refusal::new(
                    Reason::BalanceOverflow,
                    format!("reservations on {} would overflow", t.from_account_id),
                )
            })?;
            let currency = account.currency.clone();
            let balance = account.balance;
            writes.push(Write::Account(account.clone()));
            self.accounts.insert(account.account_id.clone(), account);
            self.prepared.insert(key.clone());
            transfer_outcome(Transfer {
                transfer_id: t.transfer_id.clone(),
                from_account_id: t.from_account_id.clone(),
                to_account_id: t.to_account_id.clone(),
                amount: t.amount,
                status: TransferStatus::Prepared as i32,
                created_at_ms: command.at_ms,
                from_balance_after: balance,
                currency,
                start_ts: command.ts,
                commit_ts: 0,
                chain: prepare.chain.clone(),
            })
        };
        self.remember(key, command, outcome.clone(), t.issued_at_ms, writes);
        Ok(outcome)
    }

    /// Checks a decision step's ids and ownership; returns its (account, transfer id) key.
    fn step_key(&self, step: &TransferStep) -> Result<(String, String), Refusal> {
        validate::id("transfer id", &step.transfer_id)?;
        validate::id("account id", &step.account_id)?;
        self.check_owned(&step.account_id)?;
        Ok((step.account_id.clone(), step.transfer_id.clone()))
    }

    pub(crate) fn decide_debit(
        &mut self,
        command: &Command,
        step: &TransferStep,
        commit: bool,
        writes: &mut Writes,
    ) -> Outcome {
        let key = match self.step_key(step) {
            Ok(key) => key,
            Err(refusal) => return Outcome::from(refusal),
        };
        let Some(record) = self.requests.get(&key) else {
            return Outcome::from(Refusal::new(
                Reason::TransferNotFound,
                format!("no transfer {} from {}", step.transfer_id, step.account_id),
            ));
        };
        let (is_two_phase, linked) = match record.command.as_ref().and_then(|c| c.op.as_ref()) {
            Some(Op::PrepareDebit(p)) => (true, p.chain.is_some()),
            _ => (false, false),
        };
        // A step for a chain's item decides only that chain's record; a lone transfer's step
        // only a lone transfer's (a reused id must never decide someone else's transfer).
        if is_two_phase {
            let prepared_for = match record.command.as_ref().and_then(|c| c.op.as_ref()) {
                Some(Op::PrepareDebit(p)) => p.chain.as_ref(),
                _ => None,
            };
            if prepared_for != step.chain.as_ref() {
                return Outcome::from(Refusal::new(
                    Reason::IdReused,
                    format!(
                        "transfer {} from {} belongs to another {}",
                        step.transfer_id,
                        step.account_id,
                        if prepared_for.is_some() {
                            "chain"
                        } else {
                            "transfer"
                        }
                    ),
                ));
            }
        }
        let current = record.outcome.clone().unwrap_or_default();
        let transfer = match (&current.result, is_two_phase) {
            (Some(outcome::Result::Transfer(t)), true) => t.clone(),
            // Refused at prepare (e.g. INSUFFICIENT_FUNDS), or aborted with its credit side's
            // refusal: it never happens, and every step answers that first outcome (G4).
            (Some(outcome::Result::Rejected(_)), true) => return current,
            _ => {
                return Outcome::from(Refusal::new(
                    Reason::InvalidArgument,
                    format!("{} is not a cross-shard transfer", step.transfer_id),
                ))
            }
        };
        match TransferStatus::try_from(transfer.status) {
            // A commit timestamp is taken after its transfer's prepare: one from before this
            // record's start belongs to an earlier record under the same id, which this shard
            // forgot (a router that stalled past the retention window). It must not commit this
            // one, whose credit side never agreed to it.
            Ok(TransferStatus::Prepared)
                if commit && command.ts != 0 && command.ts <= transfer.start_ts =>
            {
                return Outcome::from(Refusal::new(
                    Reason::RequestExpired,
                    format!(
                        "commit of transfer {} is older than its prepared record",
                        step.transfer_id
                    ),
                ));
            }
            Ok(TransferStatus::Prepared) => {}
            Ok(TransferStatus::Aborted) if commit => {
                return Outcome::from(Refusal::new(
                    Reason::TransferAborted,
                    format!("transfer {} was aborted", step.transfer_id),
                ))
            }
            // Decided already: the first decision stands.
            _ => return current,
        }
        let mut decided = transfer;
        let Some(mut account) = self.accounts.get(&step.account_id).cloned() else {
            return broken(format!("debit account {} vanished", step.account_id));
        };
        // The commit point is here: a debit account frozen since the prepare lets no money out,
        // so the commit becomes an abort that remembers why (the router then aborts the credit
        // side; recovery reads the refusal as an abort). A credit promised before a freeze
        // still lands (`decide_credit`): its debit had left already. A chain's item is the
        // exception: its chain committed as a unit, so every item commits (its money was checked
        // movable when it was prepared).
        let mut refusal = step.refusal.clone();
        let mut commit = commit;
        if commit && !linked {
            if let Err(frozen) = movable(&account) {
                if frozen.reason == Reason::CorruptRecord {
                    return Outcome::from(frozen);
                }
                refusal = Some(frozen.into());
                commit = false;
            }
        }
        let Some(reserved) = account.reserved.checked_sub(decided.amount) else {
            return broken(format!(
                "transfer {} of {} is not reserved on {account:?}",
                decided.transfer_id, decided.amount
            ));
        };
        account.reserved = reserved;
        if commit {
            let Some(balance) = account.balance.checked_sub(decided.amount) else {
                return broken(format!(
                    "committing {} of {} underflows {account:?}",
                    decided.transfer_id, decided.amount
                ));
            };
            account.balance = balance;
            account.version += 1;
            decided.status = TransferStatus::Committed as i32;
            decided.from_balance_after = account.balance;
            decided.created_at_ms = command.at_ms;
            decided.commit_ts = command.ts;
        } else {
            decided.status = TransferStatus::Aborted as i32;
        }
        writes.push(Write::Account(account.clone()));
        let (balance, seq) = (account.balance, account.version);
        self.accounts.insert(account.account_id.clone(), account);
        if commit {
            let entry_command = Command {
                request_id: decided.transfer_id.clone(),
                ..command.clone()
            };
            self.push_history(
                &step.account_id,
                seq,
                &entry_command,
                EntryKind::TransferOut,
                -decided.amount,
                balance,
                &decided.to_account_id,
                writes,
            );
        }
        self.prepared.remove(&key);
        // An abort the credit side caused remembers the credit side's refusal as the outcome.
        let outcome = match (refusal, commit) {
            (Some(refusal), false) => Outcome {
                result: Some(outcome::Result::Rejected(refusal)),
            },
            _ => transfer_outcome(decided),
        };
        if let Some(mut record) = self.requests.get(&key).cloned() {
            record.outcome = Some(outcome.clone());
            self.store_request(key, record, writes);
        }
        outcome
    }

    /// Forgets COMMITTED transfers whose window passed and whose credit side recovery found
    /// settled (no PENDING intent). Anything else named (not committed, not past its window,
    /// unknown, another shard's) is left alone: the check is the window, made here again.
    pub(crate) fn forget_transfers(
        &mut self,
        forget: &ForgetTransfers,
        writes: &mut Writes,
    ) -> Outcome {
        if forget.transfers.len() > FORGET_TRANSFERS_MAX {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                format!("at most {FORGET_TRANSFERS_MAX} transfers to forget at once"),
            ));
        }
        for step in &forget.transfers {
            let key = (step.account_id.clone(), step.transfer_id.clone());
            let Some(record) = self.requests.get(&key) else {
                continue;
            };
            if record_fate(record) != Fate::Confirm || !self.retention.is_past(record.issued_at_ms)
            {
                continue;
            }
            let issued = record.issued_at_ms;
            self.requests.remove(&key);
            self.retention.confirmed(key.clone(), issued);
            writes.push(Write::ForgetRequest(key));
        }
        Outcome::default()
    }

    /// COMMITTED cross-shard transfers whose window passed, awaiting their credit side's
    /// confirmation (at most `limit`, 1..=1000).
    pub fn settling(&self, query: &Settling) -> SettlingTransfers {
        let limit = (query.limit as usize).clamp(1, FORGET_TRANSFERS_MAX);
        let (keys, more) = self.retention.awaiting_confirmation(limit);
        let chains = self.settling_chains(&keys);
        let transfers = keys
            .into_iter()
            .filter_map(|key| self.requests.get(key))
            .filter_map(
                |r| match r.outcome.as_ref().and_then(|o| o.result.as_ref()) {
                    Some(outcome::Result::Transfer(t)) => Some(t.clone()),
                    // A decided cross-shard hold: its payee's promise goes by the hold's id.
                    Some(outcome::Result::Hold(h)) => Some(Transfer {
                        transfer_id: h.hold_id.clone(),
                        from_account_id: h.from_account_id.clone(),
                        to_account_id: h.to_account_id.clone(),
                        amount: h.captured,
                        ..Default::default()
                    }),
                    _ => None,
                },
            )
            .collect();
        SettlingTransfers {
            transfers,
            more,
            chains,
        }
    }

    /// The state of each intent asked for (UNSPECIFIED: not kept), in order.
    pub fn intent_states(&self, query: &IntentStatesQuery) -> IntentStates {
        IntentStates {
            states: query
                .intents
                .iter()
                .map(|i| {
                    let key = (
                        i.credit_account_id.clone(),
                        i.debit_account_id.clone(),
                        i.transfer_id.clone(),
                    );
                    self.intents
                        .get(&key)
                        .map_or(IntentState::Unspecified as i32, |i| i.state)
                })
                .collect(),
        }
    }

    pub(crate) fn prepare_credit(
        &mut self,
        command: &Command,
        prepare: &PrepareCredit,
        writes: &mut Writes,
    ) -> Outcome {
        let Some(t) = prepare.transfer.as_ref() else {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                "prepare without transfer",
            ));
        };
        if let Err(refusal) =
            check_transfer(command, t).and_then(|_| self.check_owned(&t.to_account_id))
        {
            return Outcome::from(refusal);
        }
        if self.ring.shard_of(&t.from_account_id) != prepare.primary_shard_id
            || (prepare.primary_shard_id == self.shard_id && !prepare.linked)
        {
            return Outcome::from(Refusal::new(Reason::InvalidArgument, "wrong primary shard"));
        }
        let key = (
            t.to_account_id.clone(),
            t.from_account_id.clone(),
            t.transfer_id.clone(),
        );
        if let Some(intent) = self.intents.get(&key) {
            // An intent is made after its primary record was prepared, from the same oracle: one
            // for another record names that record, or (made before `primary_start_ts` was
            // kept) started before this record did.
            let given = prepare.primary_start_ts;
            let for_another_record = given != 0
                && ((intent.primary_start_ts != 0 && intent.primary_start_ts != given)
                    || (intent.start_ts != 0 && intent.start_ts < given));
            if for_another_record {
                // The primary forgot the transfer this intent belongs to and prepared a new one
                // under its id: a retry sent after the window (README § Retention).
                return Outcome::from(Refusal::new(
                    Reason::RequestExpired,
                    format!(
                        "transfer id {} belongs to an earlier transfer that is no longer \
                         remembered on its debit account; use a new id",
                        t.transfer_id
                    ),
                ));
            }
            return match IntentState::try_from(intent.state) {
                Ok(IntentState::Aborted) => Outcome::from(Refusal::new(
                    Reason::TransferAborted,
                    format!("transfer {} was aborted", t.transfer_id),
                )),
                _ if !intent
                    .transfer
                    .as_ref()
                    .is_some_and(|first| same_transfer(first, t)) =>
                {
                    Outcome::from(Refusal::new(
                        Reason::IdReused,
                        format!(
                            "transfer id {} was used for another transfer",
                            t.transfer_id
                        ),
                    ))
                }
                Ok(IntentState::Credited) => {
                    transfer_outcome(intent_transfer(intent, TransferStatus::Committed))
                }
                _ => transfer_outcome(intent_transfer(intent, TransferStatus::Prepared)),
            };
        }
        if let Err(refusal) = self.check_fresh(command) {
            return Outcome::from(refusal);
        }
        let to = match self.existing(&t.to_account_id) {
            Ok(to) => to,
            Err(refusal) => return Outcome::from(refusal),
        };
        // The credit must fit when it lands (balance + pending credits + amount), and so must the
        // sum of the credits promised.
        let checked = same_currency(&t.from_account_id, &prepare.currency, to)
            .and_then(|_| movable(to))
            .and_then(|_| Self::balance_after(to, t.amount))
            .and_then(|_| {
                to.pending_credit.checked_add(t.amount).ok_or_else(|| {
                    Refusal::new(
                        Reason::BalanceOverflow,
                        format!("credits promised to {} would overflow", to.account_id),
                    )
                })
            });
        let pending_credit = match checked {
            Ok(pending_credit) => pending_credit,
            Err(refusal) => return Outcome::from(refusal),
        };
        let mut account = to.clone();
        account.pending_credit = pending_credit;
        writes.push(Write::Account(account.clone()));
        self.accounts.insert(account.account_id.clone(), account);
        let intent = Intent {
            transfer: Some(t.clone()),
            primary_shard_id: prepare.primary_shard_id,
            state: IntentState::Pending as i32,
            prepared_at_ms: command.at_ms,
            start_ts: command.ts,
            commit_ts: 0,
            issued_at_ms: self.retention.issued(t.issued_at_ms),
            primary_start_ts: prepare.primary_start_ts,
            hold: prepare.hold,
        };
        self.store_intent(key.clone(), intent.clone(), writes);
        if intent.hold {
            self.promises.insert(key);
        } else {
            self.pending.insert(key);
        }
        transfer_outcome(intent_transfer(&intent, TransferStatus::Prepared))
    }

    pub(crate) fn store_intent(&mut self, key: IntentKey, intent: Intent, writes: &mut Writes) {
        debug_assert_eq!(key, intent_key(&intent));
        writes.push(Write::Intent(Box::new(intent.clone())));
        if intent.state != IntentState::Pending as i32 {
            self.retention
                .track_intent(key.clone(), intent.issued_at_ms);
        }
        self.intents.insert(key, intent);
    }

    pub(crate) fn decide_credit(
        &mut self,
        command: &Command,
        step: &TransferStep,
        commit: bool,
        writes: &mut Writes,
    ) -> Outcome {
        let key = match self.step_key(step).and_then(|(to, id)| {
            validate::id("from account id", &step.from_account_id)?;
            Ok((to, step.from_account_id.clone(), id))
        }) {
            Ok(key) => key,
            Err(refusal) => return Outcome::from(refusal),
        };
        let Some(intent) = self.intents.get(&key).cloned() else {
            if commit {
                return Outcome::from(Refusal::new(
                    Reason::TransferNotFound,
                    format!(
                        "no intent of transfer {} from {} on {}",
                        step.transfer_id, step.from_account_id, step.account_id
                    ),
                ));
            }
            // Abort before prepare: a tombstone keeps a late prepare from reviving it.
            let tombstone = Intent {
                transfer: Some(TransferRequest {
                    transfer_id: step.transfer_id.clone(),
                    from_account_id: step.from_account_id.clone(),
                    to_account_id: step.account_id.clone(),
                    amount: 0,
                    issued_at_ms: 0,
                }),
                primary_shard_id: 0,
                state: IntentState::Aborted as i32,
                prepared_at_ms: command.at_ms,
                start_ts: 0,
                commit_ts: 0,
                issued_at_ms: self.retention.issued(0),
                primary_start_ts: 0,
                hold: false,
            };
            self.store_intent(key, tombstone.clone(), writes);
            return transfer_outcome(intent_transfer(&tombstone, TransferStatus::Aborted));
        };
        match (IntentState::try_from(intent.state), commit) {
            (Ok(IntentState::Pending), _) => {}
            (Ok(IntentState::Credited), true) => {
                return transfer_outcome(intent_transfer(&intent, TransferStatus::Committed))
            }
            (Ok(IntentState::Aborted), false) => {
                return transfer_outcome(intent_transfer(&intent, TransferStatus::Aborted))
            }
            (Ok(IntentState::Credited), false)
            | (Ok(IntentState::Aborted), true)
            | (Err(_), _)
            | (Ok(IntentState::Unspecified), _) => {
                return Outcome::from(Refusal::new(
                    Reason::InvalidArgument,
                    format!("transfer {} was decided the other way", step.transfer_id),
                ))
            }
        }
        let promised = intent.transfer.as_ref().map(|t| t.amount).unwrap_or(0);
        // A hold's promise is credited only if it is the one the hold was captured on (named
        // by its start timestamp): another under the same id is a late copy, made after that one
        // was credited and forgotten. It is released, never credited twice.
        if commit && intent.hold && step.promise_ts == 0 {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                format!("the credit of hold {} names no promise", step.transfer_id),
            ));
        }
        let late_copy = commit && intent.hold && intent.start_ts != step.promise_ts;
        if late_copy {
            tracing::warn!(
                hold = %step.transfer_id,
                promise_ts = intent.start_ts,
                captured_on = step.promise_ts,
                "released a late copy of a hold's promise instead of crediting it again"
            );
        }
        let commit = commit && !late_copy;
        // A hold's promise is credited with what its capture moved (at most what was held);
        // the rest of the promise is released.
        let amount = match (step.amount, intent.hold) {
            _ if !commit => promised,
            (0, _) => promised,
            (captured, true) if (1..=promised).contains(&captured) => captured,
            (asked, _) => {
                return Outcome::from(Refusal::new(
                    Reason::InvalidArgument,
                    format!(
                        "a credit of {asked} does not fit intent {} of {promised}",
                        step.transfer_id
                    ),
                ))
            }
        };
        let Some(mut account) = self.accounts.get(&step.account_id).cloned() else {
            return broken(format!("credit account {} vanished", step.account_id));
        };
        let Some(pending_credit) = account.pending_credit.checked_sub(promised) else {
            return broken(format!(
                "intent {} of {amount} is not pending on {account:?}",
                step.transfer_id
            ));
        };
        account.pending_credit = pending_credit;
        let mut decided = intent;
        if commit {
            let Some(balance) = account.balance.checked_add(amount) else {
                return broken(format!(
                    "crediting {} of {amount} overflows {account:?}",
                    step.transfer_id
                ));
            };
            account.balance = balance;
            account.version += 1;
            decided.state = IntentState::Credited as i32;
            decided.commit_ts = command.ts;
        } else {
            decided.state = IntentState::Aborted as i32;
        }
        writes.push(Write::Account(account.clone()));
        let (balance, seq) = (account.balance, account.version);
        self.accounts.insert(account.account_id.clone(), account);
        if commit {
            let entry_command = Command {
                request_id: step.transfer_id.clone(),
                ..command.clone()
            };
            self.push_history(
                &step.account_id,
                seq,
                &entry_command,
                EntryKind::TransferIn,
                amount,
                balance,
                &step.from_account_id,
                writes,
            );
        }
        self.pending.remove(&key);
        self.promises.remove(&key);
        if decided.hold {
            // Kept two windows from its decision (a hold may be decided long after it was
            // issued): a late promise for it finds it, not a free key.
            decided.issued_at_ms = decided.issued_at_ms.max(self.retention.issued(0));
        }
        let status = if commit {
            TransferStatus::Committed
        } else {
            TransferStatus::Aborted
        };
        let outcome = transfer_outcome(intent_transfer(&decided, status));
        self.store_intent(key, decided, writes);
        outcome
    }

    /// PREPARED transfers (primary side) and PENDING intents (credit side) prepared before
    /// `query.before_ms`: what recovery must decide or resolve. With `start_ts_before` not 0,
    /// selects by start timestamp instead: what a snapshot read at that timestamp must wait for.
    /// At most [`STUCK_MAX`] of each list; `more` tells the rest exist.
    pub fn stuck(&self, query: &Stuck) -> StuckTransfers {
        // Prepared before the epoch (a router's health probe asks this): nothing, unscanned.
        if query.start_ts_before == 0 && query.before_ms <= 0 {
            return StuckTransfers::default();
        }
        let selected = |at_ms: i64, start_ts: u64| {
            if query.start_ts_before == 0 {
                at_ms < query.before_ms
            } else {
                start_ts < query.start_ts_before
            }
        };
        let mut more = false;
        let prepared = self
            .prepared
            .iter()
            .filter_map(|key| self.requests.get(key))
            .filter_map(
                |r| match r.outcome.as_ref().and_then(|o| o.result.as_ref()) {
                    Some(outcome::Result::Transfer(t)) if selected(t.created_at_ms, t.start_ts) => {
                        Some(t.clone())
                    }
                    _ => None,
                },
            );
        let prepared = take_bounded(prepared, &mut more);
        let pending = self
            .pending
            .iter()
            .filter_map(|key| self.intents.get(key))
            .filter(|i| selected(i.prepared_at_ms, i.start_ts))
            .cloned();
        let pending = take_bounded(pending, &mut more);
        let after = query.promises_after.as_ref().map(|r| {
            (
                r.credit_account_id.clone(),
                r.debit_account_id.clone(),
                r.transfer_id.clone(),
            )
        });
        let mut more_promises = false;
        let promises = self
            .promises
            .range::<IntentKey, _>((
                after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
                std::ops::Bound::Unbounded,
            ))
            .filter_map(|key| self.intents.get(key))
            .filter(|i| selected(i.prepared_at_ms, i.start_ts))
            .cloned();
        let promises = take_bounded(promises, &mut more_promises);
        StuckTransfers {
            prepared,
            pending,
            more,
            promises,
            more_promises,
        }
    }

    /// Money committed on this (primary) shard's debit side and intents credited or pending:
    /// for tests and audits. Returns (sum of balances, sum of pending credits).
    pub fn totals(&self) -> (i128, i128) {
        self.accounts.values().fold((0, 0), |(b, p), a| {
            (b + i128::from(a.balance), p + i128::from(a.pending_credit))
        })
    }
}
