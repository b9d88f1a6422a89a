//! The state machine's side of cross-shard transfers: two shards' state machines driven step by
//! step, including crashes between steps (a step simply never comes) and repeated steps.

mod common;

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine, Writes};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, CreateAccountRequest, DepositRequest, Outcome, PrepareCredit,
    PrepareDebit, Stuck, TransferRequest, TransferStatus, TransferStep, WithdrawRequest,
};

struct Shards {
    ring: Ring,
    sm: [StateMachine; 2],
}

fn run(sm: &mut StateMachine, request_id: &str, op: Op) -> (Outcome, Writes) {
    common::apply_at(sm, request_id, 77, op)
}

/// What recovery asks: everything prepared before `ms`.
fn before(ms: i64) -> Stuck {
    Stuck {
        before_ms: ms,
        ..Default::default()
    }
}

fn status(outcome: &Outcome) -> Option<TransferStatus> {
    match &outcome.result {
        Some(outcome::Result::Transfer(t)) => TransferStatus::try_from(t.status).ok(),
        _ => None,
    }
}

impl Shards {
    fn new() -> Shards {
        let ring = Ring::new([1, 2], 16);
        Shards {
            sm: [
                StateMachine::new(1, ring.clone()),
                StateMachine::new(2, ring.clone()),
            ],
            ring,
        }
    }

    /// `n` account ids placed on `shard`.
    fn ids_on(&self, shard: u64, n: usize) -> Vec<String> {
        (0..1000)
            .map(|i| format!("acct-{i}"))
            .filter(|id| self.ring.shard_of(id) == shard)
            .take(n)
            .collect()
    }

    fn of(&mut self, account: &str) -> &mut StateMachine {
        let shard = self.ring.shard_of(account);
        &mut self.sm[(shard - 1) as usize]
    }

    fn open(&mut self, account: &str, currency: &str, funds: i64) {
        let sm = self.of(account);
        run(
            sm,
            "",
            Op::CreateAccount(CreateAccountRequest {
                account_id: account.into(),
                currency: currency.into(),
                credit_limit: 0,
                opening_balance: 0,
            }),
        );
        if funds > 0 {
            let (o, _) = run(
                sm,
                "fund",
                Op::Deposit(DepositRequest {
                    issued_at_ms: 0,
                    request_id: "fund".into(),
                    account_id: account.into(),
                    amount: funds,
                }),
            );
            assert!(rejection_of(&o).is_none());
        }
    }

    fn transfer(id: &str, from: &str, to: &str, amount: i64) -> TransferRequest {
        TransferRequest {
            issued_at_ms: 0,
            transfer_id: id.into(),
            from_account_id: from.into(),
            to_account_id: to.into(),
            amount,
        }
    }

    fn prepare_debit(&mut self, t: &TransferRequest) -> (Outcome, Writes) {
        let credit_shard_id = self.ring.shard_of(&t.to_account_id);
        let sm = self.of(&t.from_account_id);
        run(
            sm,
            &t.transfer_id,
            Op::PrepareDebit(PrepareDebit {
                transfer: Some(t.clone()),
                credit_shard_id,
                ..Default::default()
            }),
        )
    }

    fn prepare_credit(&mut self, t: &TransferRequest, currency: &str) -> (Outcome, Writes) {
        let primary_shard_id = self.ring.shard_of(&t.from_account_id);
        let sm = self.of(&t.to_account_id);
        run(
            sm,
            &t.transfer_id,
            Op::PrepareCredit(PrepareCredit {
                transfer: Some(t.clone()),
                primary_shard_id,
                currency: currency.into(),
                primary_start_ts: 0,
                ..Default::default()
            }),
        )
    }

    fn step(
        &mut self,
        t: &TransferRequest,
        which: fn(TransferStep) -> Op,
        debit: bool,
    ) -> (Outcome, Writes) {
        let account = if debit {
            &t.from_account_id
        } else {
            &t.to_account_id
        };
        let step = TransferStep {
            transfer_id: t.transfer_id.clone(),
            account_id: account.clone(),
            from_account_id: if debit {
                String::new()
            } else {
                t.from_account_id.clone()
            },
            refusal: None,
            ..Default::default()
        };
        let sm = self.of(account);
        // Decisions are stamped after the prepares (at 77), as the router's commit timestamp is.
        common::apply_at(sm, &t.transfer_id, 78, which(step))
    }

    fn balance(&mut self, account: &str) -> (i64, i64, i64) {
        let a = self.of(account).account(account).cloned().unwrap();
        (a.balance, a.reserved, a.pending_credit)
    }

    fn total(&self) -> i128 {
        self.sm.iter().map(|s| s.totals().0).sum()
    }
}

fn setup() -> (Shards, String, String) {
    let mut s = Shards::new();
    let a = s.ids_on(1, 1).remove(0);
    let b = s.ids_on(2, 1).remove(0);
    s.open(&a, "USD", 100);
    s.open(&b, "USD", 0);
    (s, a, b)
}

#[test]
fn commit_path_moves_money_once_and_every_step_is_idempotent() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("x1", &a, &b, 30);
    let (o, _) = s.prepare_debit(&t);
    assert_eq!(status(&o), Some(TransferStatus::Prepared));
    assert_eq!(s.balance(&a), (100, 30, 0));
    let (again, writes) = s.prepare_debit(&t);
    assert_eq!(again, o);
    assert!(writes.is_empty());
    let (o, _) = s.prepare_credit(&t, "USD");
    assert_eq!(status(&o), Some(TransferStatus::Prepared));
    assert_eq!(s.balance(&b), (0, 0, 30));
    assert!(s.prepare_credit(&t, "USD").1.is_empty());
    let (o, _) = s.step(&t, Op::CommitDebit, true);
    assert_eq!(status(&o), Some(TransferStatus::Committed));
    assert_eq!(s.balance(&a), (70, 0, 0));
    assert_eq!(
        s.total(),
        70,
        "30 in flight between the commit point and the credit"
    );
    let (again, writes) = s.step(&t, Op::CommitDebit, true);
    assert_eq!(again, o);
    assert!(writes.is_empty());
    // A late abort cannot undo the commit point: the first decision stands.
    let (late, writes) = s.step(&t, Op::AbortDebit, true);
    assert_eq!(status(&late), Some(TransferStatus::Committed));
    assert!(writes.is_empty());
    let (o, _) = s.step(&t, Op::CommitCredit, false);
    assert_eq!(status(&o), Some(TransferStatus::Committed));
    assert_eq!(s.balance(&b), (30, 0, 0));
    assert!(s.step(&t, Op::CommitCredit, false).1.is_empty());
    assert_eq!(s.total(), 100);
    let primary = s.of(&a);
    assert_eq!(
        primary.transfer(&a, "x1").map(|t| t.status),
        Some(TransferStatus::Committed as i32)
    );
}

#[test]
fn abort_path_releases_the_reservation_and_the_intent() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("x2", &a, &b, 60);
    s.prepare_debit(&t);
    s.prepare_credit(&t, "USD");
    let (o, _) = s.step(&t, Op::AbortDebit, true);
    assert_eq!(status(&o), Some(TransferStatus::Aborted));
    let (o, _) = s.step(&t, Op::CommitDebit, true);
    assert_eq!(rejection_of(&o), Some(Reason::TransferAborted));
    let (o, _) = s.step(&t, Op::AbortCredit, false);
    assert_eq!(status(&o), Some(TransferStatus::Aborted));
    assert_eq!(s.balance(&a), (100, 0, 0));
    assert_eq!(s.balance(&b), (0, 0, 0));
    // A retry of the whole transfer returns its first outcome: aborted.
    let (o, _) = s.prepare_debit(&t);
    assert_eq!(status(&o), Some(TransferStatus::Aborted));
}

#[test]
fn insufficient_funds_at_prepare_is_remembered_and_never_commits() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("x3", &a, &b, 101);
    let (o, writes) = s.prepare_debit(&t);
    assert_eq!(rejection_of(&o), Some(Reason::InsufficientFunds));
    assert_eq!(writes.len(), 1, "only the remembered outcome");
    // A late commit (another router's attempt) answers the first outcome too (G4).
    let (o, writes) = s.step(&t, Op::CommitDebit, true);
    assert_eq!(rejection_of(&o), Some(Reason::InsufficientFunds));
    assert!(writes.is_empty());
    assert_eq!(s.balance(&a), (100, 0, 0));
}

#[test]
fn a_reservation_is_not_spendable_twice() {
    let (mut s, a, b) = setup();
    s.prepare_debit(&Shards::transfer("x4", &a, &b, 80));
    let sm = s.of(&a);
    let (o, _) = run(
        sm,
        "w",
        Op::Withdraw(WithdrawRequest {
            issued_at_ms: 0,
            request_id: "w".into(),
            account_id: a.clone(),
            amount: 21,
        }),
    );
    assert_eq!(rejection_of(&o), Some(Reason::InsufficientFunds));
    let (o, _) = s.prepare_debit(&Shards::transfer("x5", &a, &b, 21));
    assert_eq!(rejection_of(&o), Some(Reason::InsufficientFunds));
    let (o, _) = s.prepare_debit(&Shards::transfer("x6", &a, &b, 20));
    assert_eq!(status(&o), Some(TransferStatus::Prepared));
}

#[test]
fn abort_before_prepare_leaves_a_tombstone() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("x7", &a, &b, 10);
    let (o, _) = s.step(&t, Op::AbortCredit, false);
    assert_eq!(status(&o), Some(TransferStatus::Aborted));
    let (o, writes) = s.prepare_credit(&t, "USD");
    assert_eq!(rejection_of(&o), Some(Reason::TransferAborted));
    assert!(writes.is_empty());
    assert_eq!(s.balance(&b), (0, 0, 0));
}

#[test]
fn bad_prepares_are_refused_and_write_nothing() {
    let (mut s, a, b) = setup();
    let eur = s.ids_on(2, 2).remove(1);
    s.open(&eur, "EUR", 0);
    let same_shard = s.ids_on(1, 2).remove(1);
    let ghost = s.ids_on(1, 3).remove(2);
    for (t, reason) in [
        (Shards::transfer("y1", &a, &b, 0), Reason::InvalidAmount),
        (Shards::transfer("y2", &a, &a, 5), Reason::SameAccount),
        (
            Shards::transfer("y3", &a, &same_shard, 5),
            Reason::InvalidArgument,
        ),
        (
            Shards::transfer("y4", &ghost, &b, 5),
            Reason::AccountNotFound,
        ),
    ] {
        let (o, writes) = s.prepare_debit(&t);
        assert_eq!(rejection_of(&o), Some(reason), "{t:?}");
        assert!(writes.is_empty());
    }
    let t = Shards::transfer("y5", &a, &eur, 5);
    let (o, writes) = s.prepare_credit(&t, "USD");
    assert_eq!(rejection_of(&o), Some(Reason::CurrencyMismatch));
    assert!(writes.is_empty());
    let t = Shards::transfer("y6", &a, "nobody", 5);
    if s.ring.shard_of("nobody") == 2 {
        let (o, writes) = s.prepare_credit(&t, "USD");
        assert_eq!(rejection_of(&o), Some(Reason::AccountNotFound));
        assert!(writes.is_empty());
    }
    // A prepare sent to the wrong shard.
    let wrong = Shards::transfer("y7", &a, &b, 5);
    let (o, writes) = run(
        &mut s.sm[1],
        "y7",
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(wrong),
            credit_shard_id: 2,
            ..Default::default()
        }),
    );
    assert_eq!(rejection_of(&o), Some(Reason::WrongShard));
    assert!(writes.is_empty());
    // Same id, other content.
    s.prepare_debit(&Shards::transfer("z", &a, &b, 5));
    let (o, _) = s.prepare_debit(&Shards::transfer("z", &a, &b, 6));
    assert_eq!(rejection_of(&o), Some(Reason::IdReused));
}

#[test]
fn stuck_lists_what_recovery_must_decide() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("s1", &a, &b, 5);
    s.prepare_debit(&t);
    s.prepare_credit(&t, "USD");
    let primary = s.of(&a).stuck(&before(2_000));
    assert_eq!(primary.prepared.len(), 1);
    assert!(
        s.of(&a).stuck(&before(500)).prepared.is_empty(),
        "younger than the cutoff"
    );
    assert_eq!(s.of(&b).stuck(&before(2_000)).pending.len(), 1);
    s.step(&t, Op::CommitDebit, true);
    s.step(&t, Op::CommitCredit, false);
    assert!(s.of(&a).stuck(&before(2_000)).prepared.is_empty());
    assert!(s.of(&b).stuck(&before(2_000)).pending.is_empty());
}

// ---------- property test: any interleaving of steps, with crashes (missing steps) ----------

#[derive(Clone, Copy, Debug)]
enum Step {
    PrepareDebit,
    PrepareCredit,
    CommitDebit,
    AbortDebit,
    CommitCredit,
    AbortCredit,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order and whichever steps are lost or repeated, if every step is issued only
    /// as the protocol allows (commit credit only after the primary committed; abort credit only
    /// after the primary aborted or before anything), then at every point:
    /// sum of balances + money in flight (committed debits not yet credited) = initial funds,
    /// every reservation and pending credit matches the open transfers, and nothing is negative.
    #[test]
    fn any_interleaving_conserves_money(
        amounts in prop::collection::vec(1i64..80, 1..6),
        steps in prop::collection::vec((0..6usize, 0..6usize), 1..80),
    ) {
        let mut s = Shards::new();
        let from = s.ids_on(1, 2);
        let to = s.ids_on(2, 2);
        for id in from.iter().chain(&to) {
            s.open(id, "USD", 100);
        }
        let transfers: Vec<TransferRequest> = amounts
            .iter()
            .enumerate()
            .map(|(i, x)| Shards::transfer(&format!("t{i}"), &from[i % 2], &to[i % 2], *x))
            .collect();
        let mut committed = vec![false; transfers.len()];
        let mut credited = vec![false; transfers.len()];
        for (kind, which) in steps {
            let i = which % transfers.len();
            let t = transfers[i].clone();
            let step = match kind {
                0 => Step::PrepareDebit,
                1 => Step::PrepareCredit,
                2 => Step::CommitDebit,
                3 => Step::AbortDebit,
                4 => Step::CommitCredit,
                _ => Step::AbortCredit,
            };
            match step {
                Step::PrepareDebit => { s.prepare_debit(&t); }
                Step::PrepareCredit => { s.prepare_credit(&t, "USD"); }
                // The router commits the primary only once both sides are prepared.
                Step::CommitDebit => {
                    let credit_ready = s.of(&t.to_account_id).stuck(&before(i64::MAX)).pending.iter().any(|p| p.transfer.as_ref() == Some(&t));
                    if credit_ready {
                        let (o, _) = s.step(&t, Op::CommitDebit, true);
                        if status(&o) == Some(TransferStatus::Committed) { committed[i] = true; }
                    }
                }
                Step::AbortDebit => {
                    let (o, _) = s.step(&t, Op::AbortDebit, true);
                    if status(&o) == Some(TransferStatus::Committed) { prop_assert!(committed[i]); }
                }
                Step::CommitCredit if committed[i] => {
                    let (o, _) = s.step(&t, Op::CommitCredit, false);
                    prop_assert_eq!(status(&o), Some(TransferStatus::Committed));
                    credited[i] = true;
                }
                Step::AbortCredit if !committed[i] => {
                    let primary = s.of(&t.from_account_id).transfer(&t.from_account_id, &t.transfer_id);
                    let decided_abort = primary.map(|p| p.status == TransferStatus::Aborted as i32).unwrap_or(true);
                    if decided_abort {
                        let (o, _) = s.step(&t, Op::AbortCredit, false);
                        prop_assert_eq!(status(&o), Some(TransferStatus::Aborted));
                    }
                }
                _ => {}
            }
            let in_flight: i128 = transfers
                .iter()
                .enumerate()
                .filter(|(j, _)| committed[*j] && !credited[*j])
                .map(|(_, t)| i128::from(t.amount))
                .sum();
            prop_assert_eq!(s.total() + in_flight, 400);
            for id in from.iter().chain(&to) {
                let (balance, reserved, pending) = s.balance(id);
                prop_assert!(balance - reserved >= 0 && pending >= 0);
            }
            // Reservations equal the PREPARED amounts; pending credits equal the PENDING intents.
            for id in &from {
                let prepared: i64 = s.of(id).stuck(&before(i64::MAX)).prepared.iter().filter(|p| &p.from_account_id == id).map(|p| p.amount).sum();
                prop_assert_eq!(s.balance(id).1, prepared);
            }
            for id in &to {
                let pending: i64 = s.of(id).stuck(&before(i64::MAX)).pending.iter().filter_map(|p| p.transfer.as_ref()).filter(|p| &p.to_account_id == id).map(|p| p.amount).sum();
                prop_assert_eq!(s.balance(id).2, pending);
            }
        }
    }
}

// ---------- snapshot reads ----------

fn at(sm: &mut StateMachine, request_id: &str, ts: u64, op: Op) -> Outcome {
    common::apply_at(sm, request_id, ts, op).0
}

fn usd(report: &wallet_proto::v1::AuditReport) -> (String, String) {
    let t = report.totals.iter().find(|t| t.currency == "USD").unwrap();
    (t.balances.clone(), t.net_deposits.clone())
}

#[test]
fn a_snapshot_read_sees_exactly_the_changes_at_or_before_its_timestamp() {
    let (mut s, a, _) = setup(); // a holds 100, deposited at ts 77
    let sm = s.of(&a);
    let deposit = |id: &str, amount| {
        Op::Deposit(DepositRequest {
            issued_at_ms: 0,
            request_id: id.into(),
            account_id: a.clone(),
            amount,
        })
    };
    assert!(rejection_of(&at(sm, "d1", 100, deposit("d1", 10))).is_none());
    assert!(rejection_of(&at(sm, "d2", 200, deposit("d2", 20))).is_none());
    assert_eq!(
        usd(&sm.snapshot_at(150).unwrap()),
        ("110".into(), "110".into())
    );
    assert_eq!(
        usd(&sm.snapshot_at(250).unwrap()),
        ("130".into(), "130".into())
    );
    // Closing at 300 refuses new commands stamped at or below it; nothing is written.
    let close = Op::CloseTs(wallet_proto::v1::CloseTs { ts: 300 });
    at(sm, "", 0, close);
    let late = at(sm, "d3", 250, deposit("d3", 5));
    assert_eq!(rejection_of(&late), Some(Reason::TimestampTooOld));
    // The same request re-stamped above the closed timestamp applies.
    assert!(rejection_of(&at(sm, "d3", 301, deposit("d3", 5))).is_none());
    assert_eq!(
        usd(&sm.snapshot_at(300).unwrap()),
        ("130".into(), "130".into())
    );
    assert_eq!(
        usd(&sm.snapshot_at(301).unwrap()),
        ("135".into(), "135".into())
    );
}

#[test]
fn a_snapshot_never_sees_half_a_cross_shard_transfer() {
    let (mut s, a, b) = setup();
    let t = Shards::transfer("snap", &a, &b, 40);
    s.prepare_debit(&t);
    s.prepare_credit(&t, "USD");
    let total = |s: &Shards, ts: u64| -> i128 {
        s.sm.iter()
            .map(|m| m.snapshot_at(ts).unwrap())
            .map(|r| usd(&r).0.parse::<i128>().unwrap())
            .sum()
    };
    // Commit at ts 500 on the primary, then on the credit side.
    let step = |account: &str| TransferStep {
        transfer_id: "snap".into(),
        account_id: account.into(),
        from_account_id: a.clone(),
        refusal: None,
        ..Default::default()
    };
    at(s.of(&a), "snap", 500, Op::CommitDebit(step(&a)));
    at(s.of(&b), "snap", 500, Op::CommitCredit(step(&b)));
    for ts in [499, 500, 501] {
        assert_eq!(total(&s, ts), 100, "at {ts}");
    }
    let debit_shard = usd(&s.of(&a).snapshot_at(499).unwrap()).0;
    assert_eq!(
        debit_shard, "100",
        "before the commit the debit is not seen"
    );
    assert_eq!(usd(&s.of(&a).snapshot_at(500).unwrap()).0, "60");
}
