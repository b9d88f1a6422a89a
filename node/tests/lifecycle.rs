//! Account lifecycle in the pure state machine: freeze, unfreeze and close on one shard and on
//! both sides of a cross-shard transfer, each refusal remembered as its request's first outcome
//! (G4), across the whole value range; then random sequences mixing lifecycle and money commands.

mod common;

use common::{deposit, withdraw};

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine, Write, Writes};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, Account, AccountState, AccountStateRequest, AuthorizeRequest,
    CreateAccountRequest, HoldState, Outcome, PrepareCredit, PrepareDebit, TransferRequest,
    TransferStatus, TransferStep, VoidRequest,
};

fn run(sm: &mut StateMachine, request_id: &str, op: Op) -> (Outcome, Writes) {
    common::apply_at(sm, request_id, 77, op)
}

fn create(id: &str, credit_limit: i64) -> Op {
    Op::CreateAccount(CreateAccountRequest {
        account_id: id.into(),
        currency: "USD".into(),
        credit_limit,
        opening_balance: 0,
    })
}

fn transfer_request(id: &str, from: &str, to: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        transfer_id: id.into(),
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount,
        issued_at_ms: 0,
    }
}

fn transfer(id: &str, from: &str, to: &str, amount: i64) -> Op {
    Op::Transfer(transfer_request(id, from, to, amount))
}

fn state_request(id: &str) -> AccountStateRequest {
    AccountStateRequest {
        request_id: String::new(),
        account_id: id.into(),
        issued_at_ms: 0,
    }
}

fn freeze(id: &str) -> Op {
    Op::FreezeAccount(state_request(id))
}

fn unfreeze(id: &str) -> Op {
    Op::UnfreezeAccount(state_request(id))
}

fn close(id: &str) -> Op {
    Op::CloseAccount(state_request(id))
}

fn account_of(outcome: &Outcome) -> Account {
    match &outcome.result {
        Some(outcome::Result::Account(a)) => a.clone(),
        other => panic!("not an account: {other:?}"),
    }
}

fn state(sm: &StateMachine, id: &str) -> AccountState {
    AccountState::try_from(sm.account(id).expect("account").state).expect("known state")
}

fn balance(sm: &StateMachine, id: &str) -> i64 {
    sm.account(id).expect("account").balance
}

fn one_shard() -> StateMachine {
    StateMachine::new(1, Ring::new([1], 8))
}

#[test]
fn a_frozen_account_refuses_every_movement_and_reads_still_work() {
    let mut sm = one_shard();
    run(&mut sm, "", create("alice", 0));
    run(&mut sm, "", create("bob", 0));
    run(&mut sm, "d1", deposit("alice", i64::MAX));
    let (o, writes) = run(&mut sm, "f1", freeze("alice"));
    assert_eq!(account_of(&o).state, AccountState::Frozen as i32);
    assert_eq!(account_of(&o).balance, i64::MAX);
    assert_eq!(writes.len(), 2, "the account and the request record");
    // Every movement in or out is refused and remembered; nothing moves.
    for (id, op) in [
        ("d2", deposit("alice", 1)),
        ("w1", withdraw("alice", i64::MAX)),
        ("t1", transfer("t1", "alice", "bob", 1)),
        ("t2", transfer("t2", "bob", "alice", 1)),
    ] {
        let (o, writes) = run(&mut sm, id, op.clone());
        assert_eq!(rejection_of(&o), Some(Reason::AccountFrozen), "{id}");
        assert_eq!(writes.len(), 1, "{id}: only the request record");
        assert_eq!(balance(&sm, "alice"), i64::MAX);
        assert_eq!(balance(&sm, "bob"), 0);
        // Remembered: after the unfreeze below, a retry still answers the refusal.
        let (again, writes) = run(&mut sm, id, op);
        assert_eq!(again, o);
        assert!(writes.is_empty());
    }
    // Freezing a frozen account answers it (a new id, so a new record), and changes nothing else.
    let (o, writes) = run(&mut sm, "f2", freeze("alice"));
    assert_eq!(account_of(&o).state, AccountState::Frozen as i32);
    assert_eq!(writes.len(), 1);
    let (o, _) = run(&mut sm, "u1", unfreeze("alice"));
    assert_eq!(account_of(&o).state, AccountState::Open as i32);
    assert_eq!(
        rejection_of(&run(&mut sm, "w1", withdraw("alice", i64::MAX)).0),
        Some(Reason::AccountFrozen),
        "a retry answers its first outcome"
    );
    let (o, _) = run(&mut sm, "t3", transfer("t3", "alice", "bob", i64::MAX));
    assert!(rejection_of(&o).is_none(), "{o:?}");
    assert_eq!(balance(&sm, "bob"), i64::MAX);
    // The same id for another lifecycle change is ID_REUSED.
    assert_eq!(
        rejection_of(&run(&mut sm, "u1", freeze("alice")).0),
        Some(Reason::IdReused)
    );
    assert_eq!(state(&sm, "alice"), AccountState::Open);
    assert_eq!(
        rejection_of(&run(&mut sm, "x", freeze("nobody")).0),
        Some(Reason::AccountNotFound)
    );
}

#[test]
fn only_an_empty_open_account_closes_and_a_closed_one_refuses_every_change() {
    let mut sm = one_shard();
    run(&mut sm, "", create("alice", i64::MAX));
    run(&mut sm, "", create("bob", 0));
    // Overdrawn to -i64::MAX through its credit limit: not empty.
    run(&mut sm, "t0", transfer("t0", "alice", "bob", i64::MAX));
    assert_eq!(balance(&sm, "alice"), -i64::MAX);
    let (o, writes) = run(&mut sm, "c1", close("alice"));
    assert_eq!(rejection_of(&o), Some(Reason::AccountNotEmpty));
    assert_eq!(writes.len(), 1, "remembered");
    run(&mut sm, "t1", transfer("t1", "bob", "alice", i64::MAX));
    assert_eq!(balance(&sm, "alice"), 0);
    // A refused close stays refused under its id; a new id closes it.
    assert_eq!(run(&mut sm, "c1", close("alice")).0, o);
    // Not while frozen.
    run(&mut sm, "f1", freeze("alice"));
    assert_eq!(
        rejection_of(&run(&mut sm, "c2", close("alice")).0),
        Some(Reason::AccountFrozen)
    );
    run(&mut sm, "u1", unfreeze("alice"));
    let (o, _) = run(&mut sm, "c3", close("alice"));
    let closed = account_of(&o);
    assert_eq!(closed.state, AccountState::Closed as i32);
    assert_eq!(closed.balance, 0);
    // Closing again answers the closed account; every other change is ACCOUNT_CLOSED.
    assert_eq!(account_of(&run(&mut sm, "c4", close("alice")).0), closed);
    for (id, op) in [
        ("d1", deposit("alice", 1)),
        ("w1", withdraw("alice", 1)),
        ("t2", transfer("t2", "alice", "bob", 1)),
        ("t3", transfer("t3", "bob", "alice", 1)),
        ("f2", freeze("alice")),
        ("u2", unfreeze("alice")),
    ] {
        assert_eq!(
            rejection_of(&run(&mut sm, id, op).0),
            Some(Reason::AccountClosed),
            "{id}"
        );
    }
    assert_eq!(balance(&sm, "bob"), 0, "bob's transfers moved nothing");
    // Creating it again with the same content answers the closed account: it never reopens.
    let again = account_of(&run(&mut sm, "", create("alice", i64::MAX)).0);
    assert_eq!(again.state, AccountState::Closed as i32);
    // Reads: the account is still there, with its history's version.
    assert_eq!(sm.account("alice").expect("kept").version, 2);
    // A restart (the account loaded from its stored record) keeps the state.
    let mut restarted = one_shard();
    restarted.load_account(sm.account("alice").cloned().expect("alice"));
    assert_eq!(state(&restarted, "alice"), AccountState::Closed);
}

/// Two shards: the debit side (`a`) and the credit side (`b`) of cross-shard transfers.
struct Pair {
    ring: Ring,
    sm: [StateMachine; 2],
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        let ring = Ring::new([1, 2], 16);
        let on = |shard: u64| {
            (0..1000)
                .map(|i| format!("acct-{i}"))
                .find(|id| ring.shard_of(id) == shard)
                .expect("an id on the shard")
        };
        let (a, b) = (on(1), on(2));
        let mut pair = Pair {
            sm: [
                StateMachine::new(1, ring.clone()),
                StateMachine::new(2, ring.clone()),
            ],
            ring,
            a,
            b,
        };
        let (a, b) = (pair.a.clone(), pair.b.clone());
        run(pair.of(&a), "", create(&a, 0));
        run(pair.of(&b), "", create(&b, 0));
        run(pair.of(&a), "fund", deposit(&a, i64::MAX));
        pair
    }

    fn of(&mut self, account: &str) -> &mut StateMachine {
        let shard = self.ring.shard_of(account);
        &mut self.sm[(shard - 1) as usize]
    }

    fn prepare_debit(&mut self, t: &TransferRequest) -> Outcome {
        let credit_shard_id = self.ring.shard_of(&t.to_account_id);
        let from = t.from_account_id.clone();
        let prepare = Op::PrepareDebit(PrepareDebit {
            transfer: Some(t.clone()),
            credit_shard_id,
            ..Default::default()
        });
        run(self.of(&from), &t.transfer_id, prepare).0
    }

    fn prepare_credit(&mut self, t: &TransferRequest) -> Outcome {
        let primary_shard_id = self.ring.shard_of(&t.from_account_id);
        let to = t.to_account_id.clone();
        let prepare = Op::PrepareCredit(PrepareCredit {
            transfer: Some(t.clone()),
            primary_shard_id,
            currency: "USD".into(),
            primary_start_ts: 0,
            ..Default::default()
        });
        run(self.of(&to), &t.transfer_id, prepare).0
    }

    fn step(t: &TransferRequest, debit: bool) -> TransferStep {
        TransferStep {
            transfer_id: t.transfer_id.clone(),
            account_id: if debit {
                t.from_account_id.clone()
            } else {
                t.to_account_id.clone()
            },
            from_account_id: if debit {
                String::new()
            } else {
                t.from_account_id.clone()
            },
            refusal: None,
            ..Default::default()
        }
    }

    /// A decision step, stamped after the prepares (78 > 77) as a router's commit timestamp is.
    fn decide(
        &mut self,
        t: &TransferRequest,
        which: fn(TransferStep) -> Op,
        debit: bool,
    ) -> Outcome {
        let account = if debit {
            t.from_account_id.clone()
        } else {
            t.to_account_id.clone()
        };
        let step = which(Pair::step(t, debit));
        common::apply_at(self.of(&account), &t.transfer_id, 78, step).0
    }
}

fn status(outcome: &Outcome) -> Option<TransferStatus> {
    match &outcome.result {
        Some(outcome::Result::Transfer(t)) => TransferStatus::try_from(t.status).ok(),
        _ => None,
    }
}

#[test]
fn a_freeze_stops_money_at_the_commit_point_but_a_promised_credit_lands() {
    let mut p = Pair::new();
    let (a, b) = (p.a.clone(), p.b.clone());
    let held = |p: &mut Pair, id: &str| {
        let acc = p.of(id).account(id).cloned().expect("account");
        (acc.balance, acc.reserved, acc.pending_credit)
    };
    // Prepared on both sides: neither account can close while it is in flight.
    let t = transfer_request("x1", &a, &b, i64::MAX);
    assert_eq!(status(&p.prepare_debit(&t)), Some(TransferStatus::Prepared));
    assert_eq!(
        status(&p.prepare_credit(&t)),
        Some(TransferStatus::Prepared)
    );
    for account in [&a, &b] {
        let o = run(p.of(account), "c", close(account)).0;
        assert_eq!(rejection_of(&o), Some(Reason::AccountNotEmpty), "{o:?}");
    }
    // The debit account is frozen before the commit point: the commit becomes an abort that
    // remembers why, every later step answers it, and the credit side is released.
    run(p.of(&a), "f", freeze(&a));
    let decided = p.decide(&t, Op::CommitDebit, true);
    assert_eq!(rejection_of(&decided), Some(Reason::AccountFrozen));
    assert_eq!(held(&mut p, &a), (i64::MAX, 0, 0));
    assert_eq!(p.decide(&t, Op::CommitDebit, true), decided, "G4");
    assert_eq!(p.decide(&t, Op::AbortDebit, true), decided, "G4");
    assert_eq!(
        p.prepare_debit(&t),
        decided,
        "a retry answers the first outcome"
    );
    let released = p.decide(&t, Op::AbortCredit, false);
    assert!(rejection_of(&released).is_none(), "{released:?}");
    assert_eq!(held(&mut p, &b), (0, 0, 0));
    // Unfrozen; prepared again under a new id; now the credit side is frozen after its promise:
    // the commit goes through and the credit lands (its debit has left: it must).
    run(p.of(&a), "u", unfreeze(&a));
    let t = transfer_request("x2", &a, &b, i64::MAX);
    assert_eq!(status(&p.prepare_debit(&t)), Some(TransferStatus::Prepared));
    assert_eq!(
        status(&p.prepare_credit(&t)),
        Some(TransferStatus::Prepared)
    );
    run(p.of(&b), "f", freeze(&b));
    assert_eq!(
        status(&p.decide(&t, Op::CommitDebit, true)),
        Some(TransferStatus::Committed)
    );
    assert_eq!(
        status(&p.decide(&t, Op::CommitCredit, false)),
        Some(TransferStatus::Committed)
    );
    assert_eq!(held(&mut p, &a), (0, 0, 0));
    assert_eq!(held(&mut p, &b), (i64::MAX, 0, 0));
    // New legs are refused on a frozen side: a debit's refusal is its remembered outcome; a
    // credit's makes the router abort with it, and the debit remembers it (a later commit of
    // the same id answers it too, even after the unfreeze).
    let back = transfer_request("x3", &b, &a, 5);
    let refused = p.prepare_debit(&back);
    assert_eq!(rejection_of(&refused), Some(Reason::AccountFrozen));
    run(p.of(&b), "u2", unfreeze(&b));
    assert_eq!(p.prepare_debit(&back), refused, "remembered");
    run(p.of(&a), "f2", freeze(&a));
    let back = transfer_request("x4", &b, &a, 5);
    assert_eq!(
        status(&p.prepare_debit(&back)),
        Some(TransferStatus::Prepared)
    );
    let credit_refusal = p.prepare_credit(&back);
    assert_eq!(rejection_of(&credit_refusal), Some(Reason::AccountFrozen));
    let Some(outcome::Result::Rejected(why)) = credit_refusal.result else {
        panic!("{credit_refusal:?}");
    };
    let abort = Op::AbortDebit(TransferStep {
        refusal: Some(why),
        ..Pair::step(&back, true)
    });
    let aborted = common::apply_at(p.of(&b), "x4", 78, abort).0;
    assert_eq!(rejection_of(&aborted), Some(Reason::AccountFrozen));
    run(p.of(&a), "u3", unfreeze(&a));
    assert_eq!(p.decide(&back, Op::CommitDebit, true), aborted, "G4");
    assert_eq!(held(&mut p, &b), (i64::MAX, 0, 0));
    assert_eq!(held(&mut p, &a), (0, 0, 0));
    // a is empty: it closes, and a credit to it is then ACCOUNT_CLOSED.
    let o = run(p.of(&a), "c2", close(&a)).0;
    assert_eq!(account_of(&o).state, AccountState::Closed as i32);
    let late = transfer_request("x5", &b, &a, 5);
    assert_eq!(
        rejection_of(&p.prepare_credit(&late)),
        Some(Reason::AccountClosed)
    );
}

// ---------- property test ----------

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, i64, u8),
    Withdraw(usize, i64, u8),
    Transfer(usize, usize, i64, u8),
    Freeze(usize, u8),
    Unfreeze(usize, u8),
    Close(usize, u8),
    /// A hold (authorize) and its release (void): they make `reserved` and `pending_credit`
    /// non-zero, which a close must respect.
    Hold(usize, usize, i64, u8),
    Release(usize, u8),
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1i64..200, Just(i64::MAX)];
    prop_oneof![
        (0..3usize, amount.clone(), 0..10u8).prop_map(|(a, x, id)| Step::Deposit(a, x, id)),
        (0..3usize, amount.clone(), 0..10u8).prop_map(|(a, x, id)| Step::Withdraw(a, x, id)),
        (0..3usize, 0..3usize, amount, 0..10u8)
            .prop_map(|(a, b, x, id)| Step::Transfer(a, b, x, id)),
        (0..3usize, 0..10u8).prop_map(|(a, id)| Step::Freeze(a, id)),
        (0..3usize, 0..10u8).prop_map(|(a, id)| Step::Unfreeze(a, id)),
        (0..3usize, 0..10u8).prop_map(|(a, id)| Step::Close(a, id)),
        (0..3usize, 0..3usize, 1i64..200, 0..10u8)
            .prop_map(|(a, b, x, id)| Step::Hold(a, b, x, id)),
        (0..3usize, 0..10u8).prop_map(|(a, id)| Step::Release(a, id)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step: money is conserved (G1); an account that was frozen or closed before
    /// the step has the same balance after it; a closed account stays closed at balance 0; and
    /// a retry of any id answers its first outcome and writes nothing (G4).
    #[test]
    fn lifecycle_changes_never_move_money_and_closed_is_final(
        steps in prop::collection::vec(step(), 1..80)
    ) {
        let mut sm = one_shard();
        for (i, id) in ACCOUNTS.iter().enumerate() {
            run(&mut sm, "", create(id, if i == 2 { i64::MAX } else { 0 }));
        }
        let mut net: i128 = 0;
        let mut seen: std::collections::HashMap<(String, String), (Op, Outcome)> =
            Default::default();
        for (n, step) in steps.into_iter().enumerate() {
            // Each step stamped after the last (a hold's release must follow its authorization).
            let ts = 100 + n as u64;
            let (op, id, key_account) = match step {
                Step::Deposit(a, x, id) => (deposit(ACCOUNTS[a], x), format!("r{id}"), a),
                Step::Withdraw(a, x, id) => (withdraw(ACCOUNTS[a], x), format!("r{id}"), a),
                Step::Transfer(a, b, x, id) => {
                    let tid = format!("r{id}");
                    (transfer(&tid, ACCOUNTS[a], ACCOUNTS[b], x), tid, a)
                }
                Step::Freeze(a, id) => (freeze(ACCOUNTS[a]), format!("r{id}"), a),
                Step::Unfreeze(a, id) => (unfreeze(ACCOUNTS[a]), format!("r{id}"), a),
                Step::Close(a, id) => (close(ACCOUNTS[a]), format!("r{id}"), a),
                Step::Hold(a, b, x, id) => {
                    let hold = format!("r{id}");
                    let op = Op::Authorize(AuthorizeRequest {
                        hold_id: hold.clone(),
                        from_account_id: ACCOUNTS[a].into(),
                        to_account_id: ACCOUNTS[b].into(),
                        amount: x,
                        expires_in_ms: 0,
                        issued_at_ms: 0,
                    });
                    (op, hold, a)
                }
                Step::Release(a, id) => {
                    let hold = format!("r{id}");
                    let op = Op::Void(VoidRequest {
                        hold_id: hold.clone(),
                        from_account_id: ACCOUNTS[a].into(),
                        issued_at_ms: 0,
                    });
                    (op, hold, a)
                }
            };
            let before: Vec<Account> =
                ACCOUNTS.iter().map(|id| sm.account(id).cloned().expect("account")).collect();
            let (outcome, writes) = common::apply_at(&mut sm, &id, ts, op.clone());
            let key = (ACCOUNTS[key_account].to_string(), id.clone());
            // A void is no request of its own: it decides the hold under the id.
            let is_void = matches!(op, Op::Void(_));
            if is_void {
                prop_assert!(outcome.result.is_some());
            } else if let Some((first_op, first)) = seen.get(&key) {
                if *first_op == op {
                    // A hold's record answers its current state once decided (voided): the same
                    // hold, but for its state, captured amount and decision time.
                    let same_hold = match (&first.result, &outcome.result) {
                        (Some(outcome::Result::Hold(a)), Some(outcome::Result::Hold(b))) => {
                            let mut b = b.clone();
                            b.state = a.state;
                            b.captured = a.captured;
                            b.decided_ts = a.decided_ts;
                            *a == b
                        }
                        _ => false,
                    };
                    prop_assert!(outcome == *first || same_hold, "{:?} vs {:?}", outcome, first);
                } else {
                    prop_assert_eq!(rejection_of(&outcome), Some(Reason::IdReused));
                }
                prop_assert!(writes.is_empty());
                continue;
            }
            if is_void {
                // Decides the hold under the id (or is refused): no record of its own.
            } else if writes.iter().any(|w| matches!(w, Write::Request { .. })) {
                seen.insert(key, (op.clone(), outcome.clone()));
            } else {
                // Bad input (an overflow): refused, not remembered, nothing written.
                prop_assert!(rejection_of(&outcome).is_some());
                prop_assert!(writes.is_empty());
            }
            if rejection_of(&outcome).is_none() {
                match &op {
                    Op::Deposit(d) => net += i128::from(d.amount),
                    Op::Withdraw(w) => net -= i128::from(w.amount),
                    _ => {}
                }
            }
            let total: i128 = sm.accounts().map(|a| i128::from(a.balance)).sum();
            prop_assert_eq!(total, net);
            // On one shard every reservation and promise is a pending hold's.
            let held: i128 = sm.held().values().sum();
            let reserved: i128 = sm.accounts().map(|a| i128::from(a.reserved)).sum();
            let promised: i128 = sm.accounts().map(|a| i128::from(a.pending_credit)).sum();
            prop_assert_eq!((reserved, promised), (held, held));
            if is_void {
                prop_assert!(
                    matches!(
                        &outcome.result,
                        Some(outcome::Result::Hold(h)) if h.state == HoldState::Voided as i32
                    ) || rejection_of(&outcome) == Some(Reason::HoldNotFound)
                        || rejection_of(&outcome) == Some(Reason::HoldNotPending),
                    "{:?}",
                    outcome
                );
            }
            for (was, id) in before.iter().zip(ACCOUNTS) {
                let now = sm.account(id).expect("account");
                if was.state != AccountState::Open as i32 {
                    prop_assert_eq!(was.balance, now.balance, "{} moved while {}", id, was.state);
                }
                if was.state == AccountState::Closed as i32 {
                    prop_assert_eq!(now.state, AccountState::Closed as i32);
                }
                if now.state == AccountState::Closed as i32 {
                    prop_assert_eq!((now.balance, now.reserved, now.pending_credit), (0, 0, 0));
                }
            }
        }
    }
}
