//! Holds on the debit account's shard (README § Holds): authorize now; capture, void or expire
//! later. A hold lives on its payer's shard; its payee lives there too, or on another shard (a
//! *cross-shard* hold, whose promise to the payee is an intent on the payee's shard, made,
//! credited and released by the router's steps there, `shard-client/src/holds.rs`).
//!
//! A hold is the request record of its `Authorize`, keyed by (debit account, hold id) like a
//! transfer, so it shares the account's id namespace, its exactly-once answers (G4), its storage
//! and its retention: a PENDING hold is kept; a decided one is forgotten one retention window
//! after its decision.
//! - `Authorize`: checks what a transfer checks (same currency, both accounts open, spendable
//!   money, no overflow of the credit), then moves the amount into the debit account's `reserved`
//!   and promises it in the credit account's `pending_credit`. Money does not move.
//! - `Capture(amount ≤ held; 0 = all)`: the capture is the commit point. It moves the captured
//!   amount (two history entries, at the capture's timestamp) and releases the whole hold from
//!   `reserved` and `pending_credit`. A debit account frozen since the authorization refuses it
//!   (`ACCOUNT_FROZEN`, the hold stays pending). At most once: the same capture again answers the
//!   hold, another is `HOLD_NOT_PENDING`. A capture or void issued before its hold's
//!   authorization (meant for an earlier hold under a reused id) is `REQUEST_EXPIRED`.
//! - `Void`: releases everything.
//! - Expiry is decided by oracle timestamp, never by a node's clock: a hold whose `expires_at_ts`
//!   is at or below a command's timestamp is EXPIRED when that command is `ExpireHolds` (which the
//!   leader's recovery proposes once the earliest expiry passed), or a `Capture` or `Void` of it.
//!   A capture then answers `HOLD_EXPIRED`.
//!
//! Money rules: a pending hold's amount is in its debit account's `reserved` and its credit
//! account's `pending_credit`, exactly once each, until its decision releases both.

use std::ops::Bound;

use wallet_proto::reason::Reason;
use wallet_proto::v1::{
    command::Op, outcome, Account, AuthorizeRequest, CaptureRequest, Command, EntryKind,
    GetHoldRequest, Hold, HoldPromised, HoldState, ListHoldsRequest, ListHoldsResponse, Outcome,
    RequestRecord, VoidRequest,
};
use wallet_proto::validate;

use super::{movable, remembered, same_currency, Refusal, StateMachine, Write, Writes};
use crate::retention::ISSUED_AHEAD_MAX_MS;
use crate::writes::RequestKey;

/// Holds one `ExpireHolds` releases at most (the earliest first; the next one goes on).
pub const EXPIRE_PER_COMMAND: usize = 1000;
/// Holds one `ListHolds` page holds at most.
pub const HOLDS_PAGE_MAX: u32 = 1000;
const HOLDS_PAGE_DEFAULT: u32 = 50;

/// The hold a request record stands for, if it is an authorization that was not refused.
pub(crate) fn hold_of(record: &RequestRecord) -> Option<&Hold> {
    match record.outcome.as_ref()?.result.as_ref()? {
        outcome::Result::Hold(hold) => Some(hold),
        _ => None,
    }
}

/// A decided cross-shard hold: its payee's shard must hear the decision before the record may
/// be forgotten (recovery confirms, as for a committed cross-shard transfer).
pub(crate) fn is_decided_cross_shard_hold(record: &RequestRecord) -> bool {
    hold_of(record).is_some_and(|h| h.state != HoldState::Pending as i32 && h.cross_shard)
}

/// Whether a record is a hold still PENDING.
pub(crate) fn is_pending_hold(record: &RequestRecord) -> bool {
    hold_of(record).is_some_and(|h| h.state == HoldState::Pending as i32)
}

fn hold_outcome(hold: Hold) -> Outcome {
    Outcome {
        result: Some(outcome::Result::Hold(hold)),
    }
}

fn not_found(hold_id: &str, from: &str, why: &str) -> Refusal {
    Refusal::new(
        Reason::HoldNotFound,
        format!("no hold {hold_id} from {from}{why}"),
    )
}

/// A hold record's decision contradicting the money rules: refused, nothing changes.
fn broken(what: String) -> Outcome {
    tracing::error!(%what, "state machine refused a hold step that contradicts its records");
    Outcome::from(Refusal::new(Reason::Internal, what))
}

impl StateMachine {
    /// Authorize, after `idempotent` checked the request id, the debit account, the amount, the
    /// issue time, that the id is new, and the timestamp. Refusals of the request (frozen,
    /// insufficient funds) are outcomes, remembered; bad input is an error, not remembered.
    pub(crate) fn authorize(
        &mut self,
        command: &Command,
        a: &AuthorizeRequest,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        if command.request_id != a.hold_id {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "hold id and request id differ",
            ));
        }
        validate::id("to account id", &a.to_account_id)?;
        if a.from_account_id == a.to_account_id {
            return Err(Refusal::new(
                Reason::SameAccount,
                "cannot hold money for the account it is held on",
            ));
        }
        // The payee on another shard: a cross-shard hold, whose promise to the payee is made
        // there (`PrepareCredit` flagged `hold`); only the payer's side is checked here.
        let cross_shard = !self.owns(&a.to_account_id);
        let expires_in_ms = validate::hold_expires_in(a.expires_in_ms)?;
        if command.ts == 0 {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "an authorization needs a timestamp",
            ));
        }
        // ms << 18 is the oracle's layout (physical ms, 18 logical bits); 30 days fit easily.
        let expires_at_ts = u64::try_from(expires_in_ms)
            .ok()
            .and_then(|ms| ms.checked_shl(18))
            .and_then(|span| command.ts.checked_add(span))
            .ok_or_else(|| Refusal::new(Reason::InvalidArgument, "expiry out of range"))?;
        let from = self.existing(&a.from_account_id)?;
        let to = if cross_shard {
            None
        } else {
            Some(self.existing(&a.to_account_id)?)
        };
        if let Some(to) = to {
            same_currency(&from.account_id, &from.currency, to)?;
        }
        if let Err(refusal) = movable(from).and_then(|_| to.map_or(Ok(()), movable)) {
            return remembered(refusal);
        }
        let spendable =
            i128::from(from.balance) - i128::from(from.reserved) - i128::from(from.floor);
        if spendable < i128::from(a.amount) {
            return Ok(Outcome::from(Refusal::new(
                Reason::InsufficientFunds,
                format!(
                    "account {} has {spendable} available, needs {}",
                    a.from_account_id, a.amount
                ),
            )));
        }
        // The credit must fit when it lands, with every credit already promised.
        let pending_credit = match to {
            Some(to) => {
                Self::balance_after(to, a.amount)?;
                Some(to.pending_credit.checked_add(a.amount).ok_or_else(|| {
                    Refusal::new(
                        Reason::BalanceOverflow,
                        format!("credits promised to {} would overflow", to.account_id),
                    )
                })?)
            }
            None => None,
        };
        let reserved = from.reserved.checked_add(a.amount).ok_or_else(|| {
            Refusal::new(
                Reason::BalanceOverflow,
                format!("reservations on {} would overflow", a.from_account_id),
            )
        })?;
        let currency = from.currency.clone();
        let mut from = from.clone();
        from.reserved = reserved;
        let mut changed = vec![from];
        if let (Some(to), Some(pending_credit)) = (to, pending_credit) {
            let mut to = to.clone();
            to.pending_credit = pending_credit;
            changed.push(to);
        }
        for account in changed {
            writes.push(Write::Account(account.clone()));
            self.accounts.insert(account.account_id.clone(), account);
        }
        Ok(hold_outcome(Hold {
            hold_id: a.hold_id.clone(),
            from_account_id: a.from_account_id.clone(),
            to_account_id: a.to_account_id.clone(),
            amount: a.amount,
            captured: 0,
            state: HoldState::Pending as i32,
            currency,
            created_at_ms: command.at_ms,
            start_ts: command.ts,
            expires_at_ts,
            decided_ts: 0,
            cross_shard,
            promised: false,
            promised_ts: 0,
        }))
    }

    /// The hold under (debit account, hold id), checked: ids, ownership, an authorization.
    fn hold_step(&self, hold_id: &str, from: &str) -> Result<(RequestKey, Hold), Refusal> {
        validate::id("hold id", hold_id)?;
        validate::id("from account id", from)?;
        self.check_owned(from)?;
        let key = (from.to_string(), hold_id.to_string());
        let record = self
            .requests
            .get(&key)
            .ok_or_else(|| not_found(hold_id, from, ""))?;
        let is_authorize = matches!(
            record.command.as_ref().and_then(|c| c.op.as_ref()),
            Some(Op::Authorize(_))
        );
        match hold_of(record) {
            Some(hold) if is_authorize => Ok((key, hold.clone())),
            _ if is_authorize => Err(not_found(hold_id, from, ": its authorization was refused")),
            _ => Err(not_found(hold_id, from, ": the id names another request")),
        }
    }

    pub(crate) fn capture(
        &mut self,
        command: &Command,
        c: &CaptureRequest,
        writes: &mut Writes,
    ) -> Outcome {
        self.try_capture(command, c, writes)
            .unwrap_or_else(Outcome::from)
    }

    fn try_capture(
        &mut self,
        command: &Command,
        c: &CaptureRequest,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        let (key, hold) = self.hold_step(&c.hold_id, &c.from_account_id)?;
        self.check_step_issued(&key, c.issued_at_ms)?;
        if c.amount < 0 {
            return Err(Refusal::new(
                Reason::InvalidAmount,
                format!(
                    "capture amount must be 0 (all) or positive, got {}",
                    c.amount
                ),
            ));
        }
        match HoldState::try_from(hold.state) {
            Ok(HoldState::Pending) => {}
            // The same capture again: the amount it moved, or "all" after all of it moved.
            Ok(HoldState::Captured)
                if c.amount == hold.captured || (c.amount == 0 && hold.captured == hold.amount) =>
            {
                return Ok(hold_outcome(hold))
            }
            Ok(HoldState::Expired) => return Err(expired(&hold)),
            _ => return Err(not_pending(&hold)),
        }
        if c.amount > hold.amount {
            return Err(Refusal::new(
                Reason::InvalidAmount,
                format!(
                    "capture of {} exceeds hold {} of {}",
                    c.amount, hold.hold_id, hold.amount
                ),
            ));
        }
        self.check_fresh(command)?;
        check_after(command, &hold)?;
        if command.ts >= hold.expires_at_ts {
            self.decide_hold(key, hold, HoldState::Expired, 0, command, writes);
            return Err(Refusal::new(
                Reason::HoldExpired,
                format!("hold {} expired before its capture", c.hold_id),
            ));
        }
        // A cross-shard hold is captured only once its payee's shard holds the promise (an
        // authorization whose router stopped before it left none): the pending hold is the
        // answer, and the router makes the promise, then captures again.
        if hold.cross_shard && !hold.promised {
            return Ok(hold_outcome(hold));
        }
        // Stamped after its promise (the router stamps it again): a snapshot read that closed
        // both shards then sees the capture and its credit on the same side of its timestamp.
        if hold.cross_shard && command.ts <= hold.promised_ts {
            return Err(Refusal::new(
                Reason::TimestampTooOld,
                format!(
                    "a capture of hold {} must be stamped after its promise at {}",
                    hold.hold_id, hold.promised_ts
                ),
            ));
        }
        // The commit point: money leaves the debit account only if it is open now.
        movable(self.existing(&hold.from_account_id)?)?;
        let captured = if c.amount == 0 { hold.amount } else { c.amount };
        Ok(self.decide_hold(key, hold, HoldState::Captured, captured, command, writes))
    }

    pub(crate) fn void(
        &mut self,
        command: &Command,
        v: &VoidRequest,
        writes: &mut Writes,
    ) -> Outcome {
        let (key, hold) = match self
            .hold_step(&v.hold_id, &v.from_account_id)
            .and_then(|found| {
                self.check_step_issued(&found.0, v.issued_at_ms)?;
                Ok(found)
            }) {
            Ok(found) => found,
            Err(refusal) => return Outcome::from(refusal),
        };
        match HoldState::try_from(hold.state) {
            Ok(HoldState::Pending) => {}
            Ok(HoldState::Voided | HoldState::Expired) => return hold_outcome(hold),
            _ => return Outcome::from(not_pending(&hold)),
        }
        if let Err(refusal) = self
            .check_fresh(command)
            .and_then(|_| check_after(command, &hold))
        {
            return Outcome::from(refusal);
        }
        // Past its expiry, the hold expired (whoever releases it says so truthfully).
        let state = if command.ts >= hold.expires_at_ts {
            HoldState::Expired
        } else {
            HoldState::Voided
        };
        self.decide_hold(key, hold, state, 0, command, writes)
    }

    /// The payee's shard's answer to a cross-shard hold's promise. Made: the hold is marked
    /// promised (a capture may go ahead). Refused: the hold is released, and its authorization's
    /// outcome becomes that refusal (a retry answers it, G4). A hold decided already, or promised
    /// already, answers as it stands.
    pub(crate) fn hold_promised(&mut self, answer: &HoldPromised, writes: &mut Writes) -> Outcome {
        let (key, mut hold) = match self.hold_step(&answer.hold_id, &answer.from_account_id) {
            Ok(found) => found,
            Err(refusal) => return Outcome::from(refusal),
        };
        if !hold.cross_shard {
            return Outcome::from(Refusal::new(
                Reason::InvalidArgument,
                format!("hold {} is not across shards", hold.hold_id),
            ));
        }
        if hold.state != HoldState::Pending as i32 || hold.promised {
            return hold_outcome(hold);
        }
        let Some(refusal) = answer.refusal.clone() else {
            if answer.promise_ts == 0 {
                return Outcome::from(Refusal::new(
                    Reason::InvalidArgument,
                    "a promise made needs its timestamp",
                ));
            }
            hold.promised = true;
            hold.promised_ts = answer.promise_ts;
            let outcome = hold_outcome(hold);
            if let Some(mut record) = self.requests.get(&key).cloned() {
                record.outcome = Some(outcome.clone());
                self.store_request(key, record, writes);
            }
            return outcome;
        };
        let from = match self.payer_released(&hold) {
            Ok(from) => from,
            Err(what) => return broken(what),
        };
        writes.push(Write::Account(from.clone()));
        self.accounts.insert(from.account_id.clone(), from);
        // The record stops being a hold: out of the pending indexes first.
        self.untrack_hold(&key, &hold);
        let outcome = Outcome {
            result: Some(outcome::Result::Rejected(refusal)),
        };
        if let Some(mut record) = self.requests.get(&key).cloned() {
            record.outcome = Some(outcome.clone());
            // Kept a window from now, so a retry finds the refusal however late it came.
            record.issued_at_ms = record.issued_at_ms.max(self.retention.issued(0));
            self.store_request(key, record, writes);
        }
        outcome
    }

    /// Releases the pending holds whose expiry is at or below the command's timestamp.
    pub(crate) fn expire_holds(&mut self, command: &Command, writes: &mut Writes) -> Outcome {
        if let Err(refusal) = self.check_fresh(command) {
            return Outcome::from(refusal);
        }
        let due: Vec<RequestKey> = self
            .hold_expiries
            .iter()
            .take_while(|(at, _)| *at <= command.ts)
            .take(EXPIRE_PER_COMMAND)
            .map(|(_, key)| key.clone())
            .collect();
        let mut expired = 0u32;
        for key in due {
            let pending = self
                .requests
                .get(&key)
                .and_then(hold_of)
                .filter(|h| h.state == HoldState::Pending as i32)
                .cloned();
            let Some(hold) = pending else {
                // An index entry without a pending hold behind it (a bug): drop it, loudly.
                tracing::error!(?key, "hold expiry index names no pending hold");
                self.pending_holds.remove(&key);
                self.hold_expiries.retain(|(_, k)| *k != key);
                continue;
            };
            let decided = self.decide_hold(key, hold, HoldState::Expired, 0, command, writes);
            if matches!(decided.result, Some(outcome::Result::Hold(_))) {
                expired += 1;
            }
        }
        Outcome {
            result: Some(outcome::Result::Expired(expired)),
        }
    }

    /// Decides a pending hold: releases its reservation and promise, moves `captured` (if
    /// CAPTURED), and stores the decided record, kept one window from now.
    fn decide_hold(
        &mut self,
        key: RequestKey,
        hold: Hold,
        state: HoldState,
        captured: i64,
        command: &Command,
        writes: &mut Writes,
    ) -> Outcome {
        if hold.cross_shard {
            return self.decide_cross_shard_hold(key, hold, state, captured, command, writes);
        }
        let (Some(mut from), Some(mut to)) = (
            self.accounts.get(&hold.from_account_id).cloned(),
            self.accounts.get(&hold.to_account_id).cloned(),
        ) else {
            return broken(format!("an account of hold {} vanished", hold.hold_id));
        };
        let released = (
            from.reserved.checked_sub(hold.amount),
            to.pending_credit.checked_sub(hold.amount),
        );
        let (Some(reserved), Some(pending_credit)) = released else {
            return broken(format!(
                "hold {} of {} is not reserved on {from:?} and promised on {to:?}",
                hold.hold_id, hold.amount
            ));
        };
        from.reserved = reserved;
        to.pending_credit = pending_credit;
        let moved = if state == HoldState::Captured {
            match (
                from.balance.checked_sub(captured),
                to.balance.checked_add(captured),
            ) {
                (Some(from_balance), Some(to_balance)) => Some((from_balance, to_balance)),
                _ => {
                    return broken(format!(
                        "capturing {captured} of hold {} does not fit {from:?} / {to:?}",
                        hold.hold_id
                    ))
                }
            }
        } else {
            None
        };
        let (from_id, to_id) = (from.account_id.clone(), to.account_id.clone());
        match moved {
            Some((from_balance, to_balance)) => {
                self.accounts.insert(from_id.clone(), from);
                self.accounts.insert(to_id.clone(), to);
                let entry = Command {
                    request_id: hold.hold_id.clone(),
                    ..command.clone()
                };
                // Writes both accounts, released and with their new balances, once each.
                self.post_transfer(
                    &entry,
                    (&from_id, from_balance),
                    (&to_id, to_balance),
                    captured,
                    writes,
                );
            }
            None => {
                for account in [from, to] {
                    writes.push(Write::Account(account.clone()));
                    self.accounts.insert(account.account_id.clone(), account);
                }
            }
        }
        self.store_decided(key, hold, state, captured, command, writes)
    }

    /// The payer's side of a cross-shard hold's decision: releases the reservation and, if
    /// CAPTURED, takes the captured amount out (one history entry). The payee's shard is told by
    /// the router (`CommitCredit` with the captured amount, or `AbortCredit`), or, if the router
    /// stops, by its own recovery, which reads this hold.
    fn decide_cross_shard_hold(
        &mut self,
        key: RequestKey,
        hold: Hold,
        state: HoldState,
        captured: i64,
        command: &Command,
        writes: &mut Writes,
    ) -> Outcome {
        let from = match self.payer_released(&hold) {
            Ok(from) => from,
            Err(what) => return broken(what),
        };
        let balance = if state == HoldState::Captured {
            match from.balance.checked_sub(captured) {
                Some(balance) => Some(balance),
                None => {
                    return broken(format!(
                        "capturing {captured} of hold {} does not fit {from:?}",
                        hold.hold_id
                    ))
                }
            }
        } else {
            None
        };
        let from_id = from.account_id.clone();
        writes.push(Write::Account(from.clone()));
        self.accounts.insert(from_id.clone(), from);
        if let Some(balance) = balance {
            let seq = self.set_balance(&from_id, balance, writes);
            let entry = Command {
                request_id: hold.hold_id.clone(),
                ..command.clone()
            };
            self.push_history(
                &from_id,
                seq,
                &entry,
                EntryKind::TransferOut,
                -captured,
                balance,
                &hold.to_account_id,
                writes,
            );
        }
        self.store_decided(key, hold, state, captured, command, writes)
    }

    /// Stores a hold's decision as its record's outcome.
    fn store_decided(
        &mut self,
        key: RequestKey,
        mut hold: Hold,
        state: HoldState,
        captured: i64,
        command: &Command,
        writes: &mut Writes,
    ) -> Outcome {
        hold.state = state as i32;
        hold.captured = captured;
        hold.decided_ts = command.ts;
        let outcome = hold_outcome(hold);
        if let Some(mut record) = self.requests.get(&key).cloned() {
            record.outcome = Some(outcome.clone());
            // Kept a whole window after its decision (or its issue time, if that is later), so
            // a retry of the capture finds it and a retry of the authorization is refused
            // (REQUEST_EXPIRED) before the record is forgotten.
            record.issued_at_ms = record.issued_at_ms.max(self.retention.issued(0));
            self.store_request(key, record, writes);
        }
        outcome
    }

    /// A capture's or void's issue time: within the window, and not clearly before the hold
    /// under its id was authorized (then it was meant for an earlier hold under a reused id,
    /// which can only be a retention window or more before). Clocks of different clients differ,
    /// so "clearly" allows as much as an issue time may run ahead ([`ISSUED_AHEAD_MAX_MS`]).
    fn check_step_issued(&self, key: &RequestKey, issued_at_ms: i64) -> Result<(), Refusal> {
        self.retention.check_issued(issued_at_ms)?;
        let record = self.requests.get(key);
        let authorize_issued = record
            .and_then(|r| r.command.as_ref())
            .and_then(|c| match &c.op {
                Some(Op::Authorize(a)) => Some(a.issued_at_ms),
                _ => None,
            })
            .unwrap_or(0);
        // Without an issue time, the oracle's time of the authorization.
        let authorized_at = match authorize_issued {
            0 => record
                .and_then(hold_of)
                .map_or(0, |h| i64::try_from(h.start_ts >> 18).unwrap_or(i64::MAX)),
            ms => ms,
        };
        if issued_at_ms != 0
            && authorized_at != 0
            && issued_at_ms.saturating_add(ISSUED_AHEAD_MAX_MS) < authorized_at
        {
            return Err(Refusal::new(
                Reason::RequestExpired,
                format!(
                    "this request for hold {} was issued before the hold's authorization: it \
                     was meant for an earlier hold under the id",
                    key.1
                ),
            ));
        }
        Ok(())
    }

    /// One hold (a read).
    pub fn hold(&self, get: &GetHoldRequest) -> Result<Hold, Refusal> {
        self.hold_step(&get.hold_id, &get.from_account_id)
            .map(|(_, hold)| hold)
    }

    /// An account's pending holds as payer, in hold id order, after `after`; or as payee
    /// (`as_payee`), in (payer, hold id) order, after `after` = `PAYER/HOLD_ID`.
    pub fn holds(&self, list: &ListHoldsRequest) -> Result<ListHoldsResponse, Refusal> {
        validate::id("account id", &list.account_id)?;
        self.check_owned(&list.account_id)?;
        self.existing(&list.account_id)?;
        let limit = match list.limit {
            0 => HOLDS_PAGE_DEFAULT,
            n => n.min(HOLDS_PAGE_MAX),
        } as usize;
        let keys: Box<dyn Iterator<Item = RequestKey> + '_> = if list.as_payee {
            // `after` is PAYER/HOLD_ID (ids never hold a '/').
            let (payer, hold_id) = list.after.split_once('/').unwrap_or((&list.after, ""));
            let after = (
                list.account_id.clone(),
                payer.to_string(),
                hold_id.to_string(),
            );
            Box::new(
                self.holds_by_payee
                    .range((Bound::Excluded(after), Bound::Unbounded))
                    .take_while(|(payee, _, _)| *payee == list.account_id)
                    .map(|(_, payer, id)| (payer.clone(), id.clone())),
            )
        } else {
            let after = (list.account_id.clone(), list.after.clone());
            Box::new(
                self.pending_holds
                    .range((Bound::Excluded(after), Bound::Unbounded))
                    .take_while(|(account, _)| *account == list.account_id)
                    .cloned(),
            )
        };
        let mut holds = Vec::with_capacity(limit);
        let mut next_after = String::new();
        for key in keys {
            if holds.len() == limit {
                next_after = holds
                    .last()
                    .map(|h: &Hold| {
                        if list.as_payee {
                            format!("{}/{}", h.from_account_id, h.hold_id)
                        } else {
                            h.hold_id.clone()
                        }
                    })
                    .unwrap_or_default();
                break;
            }
            if let Some(hold) = self.requests.get(&key).and_then(hold_of) {
                holds.push(hold.clone());
            }
        }
        Ok(ListHoldsResponse { holds, next_after })
    }

    /// The earliest expiry of a pending hold (0: none).
    pub fn next_hold_expiry(&self) -> u64 {
        self.hold_expiries.first().map_or(0, |(at, _)| *at)
    }

    /// Sum of pending holds per currency (audits show held amounts).
    pub fn held(&self) -> std::collections::BTreeMap<String, i128> {
        let mut held = std::collections::BTreeMap::new();
        for key in &self.pending_holds {
            if let Some(hold) = self.requests.get(key).and_then(hold_of) {
                *held.entry(hold.currency.clone()).or_insert(0) += i128::from(hold.amount);
            }
        }
        held
    }

    /// Keeps the pending-hold indexes in step with a stored or loaded record.
    pub(crate) fn track_hold(&mut self, key: &RequestKey, record: &RequestRecord) {
        let Some(hold) = hold_of(record) else {
            return;
        };
        if hold.state == HoldState::Pending as i32 {
            self.pending_holds.insert(key.clone());
            self.hold_expiries.insert((hold.expires_at_ts, key.clone()));
            // A cross-shard hold's payee lives on another shard: not listed here.
            if !hold.cross_shard {
                let payee = (hold.to_account_id.clone(), key.0.clone(), key.1.clone());
                self.holds_by_payee.insert(payee);
            }
        } else {
            let hold = hold.clone();
            self.untrack_hold(key, &hold);
        }
    }

    /// A cross-shard hold's payer with the hold's reservation taken off (not stored yet), or
    /// what contradicts the money rules.
    fn payer_released(&self, hold: &Hold) -> Result<Account, String> {
        let Some(mut from) = self.accounts.get(&hold.from_account_id).cloned() else {
            return Err(format!("the payer of hold {} vanished", hold.hold_id));
        };
        let Some(reserved) = from.reserved.checked_sub(hold.amount) else {
            return Err(format!(
                "hold {} of {} is not reserved on {from:?}",
                hold.hold_id, hold.amount
            ));
        };
        from.reserved = reserved;
        Ok(from)
    }

    fn untrack_hold(&mut self, key: &RequestKey, hold: &Hold) {
        self.pending_holds.remove(key);
        self.hold_expiries
            .remove(&(hold.expires_at_ts, key.clone()));
        self.holds_by_payee
            .remove(&(hold.to_account_id.clone(), key.0.clone(), key.1.clone()));
    }
}

/// A decision must be stamped after its hold began (the oracle's order; a timestamp of 0 is no
/// router's).
fn check_after(command: &Command, hold: &Hold) -> Result<(), Refusal> {
    if command.ts == 0 {
        return Err(Refusal::new(
            Reason::InvalidArgument,
            format!("a decision on hold {} needs a timestamp", hold.hold_id),
        ));
    }
    if command.ts <= hold.start_ts {
        // Stamped before an authorization applied ahead of it: the router stamps it again.
        return Err(Refusal::new(
            Reason::TimestampTooOld,
            format!(
                "a decision on hold {} must be stamped after its authorization at {}",
                hold.hold_id, hold.start_ts
            ),
        ));
    }
    Ok(())
}

fn expired(hold: &Hold) -> Refusal {
    Refusal::new(
        Reason::HoldExpired,
        format!("hold {} expired at {}", hold.hold_id, hold.decided_ts),
    )
}

fn not_pending(hold: &Hold) -> Refusal {
    let state = HoldState::try_from(hold.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("HOLD_STATE_")
                .to_string()
        })
        .unwrap_or_else(|_| hold.state.to_string());
    Refusal::new(
        Reason::HoldNotPending,
        format!(
            "hold {} is {state} (captured {} of {}): a hold is decided once",
            hold.hold_id, hold.captured, hold.amount
        ),
    )
}
