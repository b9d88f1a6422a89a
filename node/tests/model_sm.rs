//! Model-based property test of the pure state machine over the whole value range (G1, G4, G5, G6,
//! G9): two shards' state machines and the reference model (`model/mod.rs`, i128 arithmetic) get
//! the same random commands — amounts and credit limits up to i64::MAX, concurrent cross-shard
//! transfers advanced step by step in any legal order (a router that may die between steps, and
//! recovery deciding for it), retries, and snapshot reads at random past timestamps. After every
//! command the outcome, every account and the model's own conservation must agree; nothing may
//! panic.

mod common;
mod model;

use model::{Credit, Expect, Model, Primary, Xfer};
use proptest::prelude::*;
use wallet_node::state_machine::StateMachine;
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, CreateAccountRequest, DepositRequest, Outcome, PrepareCredit,
    PrepareDebit, Rejection, TransferRequest, TransferStatus, TransferStep, WithdrawRequest,
};

const CURRENCIES: [&str; 2] = ["USD", "EUR"];
const ACCOUNTS: usize = 6;

/// Amounts over the whole range: small, around i64::MAX / 2, near i64::MAX, anything.
fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        1i64..=100,
        (i64::MAX / 2 - 50)..=(i64::MAX / 2 + 50),
        (i64::MAX - 100)..=i64::MAX,
        1i64..=i64::MAX,
    ]
}

fn opening() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0), 1 => amount()]
}

fn credit_limit() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(i64::MAX),
        (i64::MAX - 100)..=i64::MAX,
        0i64..=i64::MAX
    ]
}

#[derive(Clone, Debug)]
enum Action {
    /// Account, currency, credit limit, opening balance.
    Create(usize, usize, i64, i64),
    Deposit(usize, i64),
    Withdraw(usize, i64),
    /// Starts a transfer: same-shard ones apply at once, cross-shard ones are prepared on the
    /// primary and then advanced by `Advance`.
    Transfer(usize, usize, i64),
    /// Advances the n-th cross-shard transfer by one legal step (the choice picks which).
    Advance(usize, u8),
    /// Sends an earlier deposit, withdrawal or transfer again, unchanged (a client retry).
    Retry(usize),
    /// Reuses an earlier request id on its account with other content.
    Reuse(usize, i64),
    /// Reads an account, and the totals, as of an earlier timestamp.
    ReadAt(usize, usize),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        1 => (0..ACCOUNTS, 0..2usize, credit_limit(), opening())
            .prop_map(|(a, c, l, o)| Action::Create(a, c, l, o)),
        3 => (0..ACCOUNTS, amount()).prop_map(|(a, x)| Action::Deposit(a, x)),
        2 => (0..ACCOUNTS, amount()).prop_map(|(a, x)| Action::Withdraw(a, x)),
        3 => (0..ACCOUNTS, 0..ACCOUNTS, amount()).prop_map(|(a, b, x)| Action::Transfer(a, b, x)),
        5 => (0..64usize, any::<u8>()).prop_map(|(n, c)| Action::Advance(n, c)),
        1 => (0..64usize).prop_map(Action::Retry),
        1 => (0..64usize, amount()).prop_map(|(n, x)| Action::Reuse(n, x)),
        2 => (0..ACCOUNTS, 0..64usize).prop_map(|(a, n)| Action::ReadAt(a, n)),
    ]
}

/// A legal next step of a cross-shard transfer, given what the model says happened so far.
#[derive(Clone, Copy, Debug)]
enum Step {
    PrepareDebit,
    PrepareCredit,
    CommitDebit,
    AbortDebit,
    CommitCredit,
    AbortCredit,
}

struct World {
    ring: Ring,
    sm: [StateMachine; 2],
    model: Model,
    ids: Vec<String>,
    ts: u64,
    /// Timestamps handed out so far (snapshot reads pick among them).
    used_ts: Vec<u64>,
    /// Requests sent so far, with the outcome the state machine gave first.
    sent: Vec<(Op, String, Outcome)>,
    /// Cross-shard transfers started, with the credit side's refusal if it gave one.
    xfers: Vec<(Xfer, Option<Reason>)>,
}

fn got(outcome: &Outcome) -> Expect {
    match &outcome.result {
        Some(outcome::Result::Rejected(r)) => {
            Expect::Refused(Reason::parse(&r.reason).unwrap_or(Reason::Internal))
        }
        Some(outcome::Result::Transfer(t)) => Expect::Status(
            TransferStatus::try_from(t.status).unwrap_or(TransferStatus::Unspecified),
        ),
        _ => Expect::Ok,
    }
}

impl World {
    fn new() -> World {
        let ring = Ring::new([1, 2], 16);
        // Three accounts on each shard.
        let mut ids = Vec::new();
        for shard in [1, 2] {
            ids.extend(
                (0..100)
                    .map(|i| format!("m{i}"))
                    .filter(|id| ring.shard_of(id) == shard)
                    .take(ACCOUNTS / 2),
            );
        }
        World {
            sm: [
                StateMachine::new(1, ring.clone()),
                StateMachine::new(2, ring.clone()),
            ],
            ring,
            model: Model::default(),
            ids,
            ts: 1,
            used_ts: Vec::new(),
            sent: Vec::new(),
            xfers: Vec::new(),
        }
    }

    fn next_ts(&mut self) -> u64 {
        self.ts += 1;
        self.used_ts.push(self.ts);
        self.ts
    }

    fn shard(&self, account: &str) -> usize {
        (self.ring.shard_of(account) - 1) as usize
    }

    /// Applies on the account's shard at a fresh timestamp.
    fn apply_at(&mut self, account: &str, request_id: &str, op: Op, ts: u64) -> Outcome {
        let shard = self.shard(account);
        common::apply_at(&mut self.sm[shard], request_id, ts, op).0
    }

    fn currency_of(&self, account: &str) -> String {
        self.model
            .accounts
            .get(account)
            .map(|a| a.currency.clone())
            .unwrap_or_else(|| "USD".into())
    }

    /// Every account on both machines equals the model's.
    fn compare_accounts(&self) -> Result<(), TestCaseError> {
        for id in &self.ids {
            let sm = self.sm[self.shard(id)].account(id);
            let model = self.model.accounts.get(id);
            match (sm, model) {
                (None, None) => {}
                (Some(a), Some(m)) => {
                    prop_assert_eq!(i128::from(a.balance), m.balance, "balance of {}", id);
                    prop_assert_eq!(i128::from(a.reserved), m.reserved, "reserved of {}", id);
                    prop_assert_eq!(i128::from(a.pending_credit), m.pending, "pending of {}", id);
                    prop_assert_eq!(i128::from(a.floor), m.floor, "floor of {}", id);
                }
                (a, m) => prop_assert!(false, "{} exists in one only: {:?} / {:?}", id, a, m),
            }
        }
        self.model.check_own_invariants();
        Ok(())
    }

    fn run(&mut self, action: Action) -> Result<(), TestCaseError> {
        match action {
            Action::Create(a, c, limit, opening) => {
                let id = self.ids[a].clone();
                let op = Op::CreateAccount(CreateAccountRequest {
                    account_id: id.clone(),
                    currency: CURRENCIES[c].into(),
                    credit_limit: limit,
                    opening_balance: opening,
                });
                let ts = self.next_ts();
                let outcome = self.apply_at(&id, "", op, ts);
                let want = self
                    .model
                    .create_funded(&id, CURRENCIES[c], limit, opening, ts);
                prop_assert_eq!(got(&outcome), want, "create {}", id);
            }
            Action::Deposit(a, x) | Action::Withdraw(a, x) => {
                let deposit = matches!(action, Action::Deposit(..));
                let account = self.ids[a].clone();
                let request_id = format!("r{}", self.sent.len());
                let op = if deposit {
                    Op::Deposit(DepositRequest {
                        issued_at_ms: 0,
                        request_id: request_id.clone(),
                        account_id: account.clone(),
                        amount: x,
                    })
                } else {
                    Op::Withdraw(WithdrawRequest {
                        issued_at_ms: 0,
                        request_id: request_id.clone(),
                        account_id: account.clone(),
                        amount: x,
                    })
                };
                self.send(op, request_id)?;
            }
            Action::Transfer(a, b, x) => {
                if a == b {
                    return Ok(());
                }
                let t = Xfer {
                    id: format!("r{}", self.sent.len()),
                    from: self.ids[a].clone(),
                    to: self.ids[b].clone(),
                    amount: x,
                };
                if self.shard(&t.from) == self.shard(&t.to) {
                    let op = Op::Transfer(request(&t));
                    self.send(op, t.id.clone())?;
                } else {
                    // Keeps the id space shared with the other requests.
                    self.sent
                        .push((Op::Transfer(request(&t)), String::new(), Outcome::default()));
                    self.xfers.push((t.clone(), None));
                    self.step(self.xfers.len() - 1, Step::PrepareDebit)?;
                }
            }
            Action::Advance(n, choice) => {
                if self.xfers.is_empty() {
                    return Ok(());
                }
                let n = n % self.xfers.len();
                let steps = self.legal_steps(n);
                if !steps.is_empty() {
                    self.step(n, steps[choice as usize % steps.len()])?;
                }
            }
            Action::Retry(n) => {
                let Some((op, id, first)) = self.sent.get(n).cloned() else {
                    return Ok(());
                };
                if id.is_empty() {
                    return Ok(()); // a cross-shard transfer: retried through Advance
                }
                let remembered = first.result.is_some() && self.is_remembered(&op, &first);
                let outcome = self.send(op, id)?;
                if remembered {
                    prop_assert_eq!(outcome, first, "a retry answers the first outcome");
                }
            }
            Action::Reuse(n, x) => {
                let Some((op, id, _)) = self.sent.get(n).cloned() else {
                    return Ok(());
                };
                if id.is_empty() {
                    return Ok(());
                }
                let account = match &op {
                    Op::Deposit(d) => d.account_id.clone(),
                    Op::Withdraw(w) => w.account_id.clone(),
                    Op::Transfer(t) => t.from_account_id.clone(),
                    _ => return Ok(()),
                };
                // Another deposit under the same id (or the same one, if x matches).
                let other = Op::Deposit(DepositRequest {
                    issued_at_ms: 0,
                    request_id: id.clone(),
                    account_id: account,
                    amount: x,
                });
                self.send(other, id)?;
            }
            Action::ReadAt(a, n) => {
                if self.used_ts.is_empty() {
                    return Ok(());
                }
                let ts = self.used_ts[n % self.used_ts.len()];
                let id = self.ids[a].clone();
                let sm = &self.sm[self.shard(&id)];
                match (
                    sm.account_at(&id, ts),
                    self.model.accounts.contains_key(&id),
                ) {
                    (Ok(account), true) => prop_assert_eq!(
                        i128::from(account.balance),
                        self.model.balance_at(&id, ts),
                        "{} at {}",
                        id,
                        ts
                    ),
                    (Err(Refusal { reason, .. }), false) => {
                        prop_assert_eq!(reason, Reason::AccountNotFound)
                    }
                    (result, exists) => {
                        prop_assert!(false, "read at {}: {:?}, exists {}", ts, result, exists)
                    }
                }
                let want = self.model.totals_at(ts);
                for (currency, (balances, net)) in want {
                    let mut sums = (0i128, 0i128);
                    for sm in &self.sm {
                        let report = sm
                            .snapshot_at(ts)
                            .map_err(|e| TestCaseError::fail(format!("snapshot at {ts}: {e:?}")))?;
                        if let Some(t) = report.totals.iter().find(|t| t.currency == currency) {
                            sums.0 += t.balances.parse::<i128>().unwrap();
                            sums.1 += t.net_deposits.parse::<i128>().unwrap();
                        }
                    }
                    prop_assert_eq!(sums, (balances, net), "{} totals at {}", currency, ts);
                }
            }
        }
        self.compare_accounts()
    }

    /// Whether the model would answer a retry of this request with its first outcome.
    fn is_remembered(&self, op: &Op, first: &Outcome) -> bool {
        let _ = op;
        match got(first) {
            Expect::Refused(Reason::InsufficientFunds) => true,
            Expect::Refused(_) => false,
            _ => true,
        }
    }

    /// Sends a deposit, withdrawal or same-shard transfer; checks the model agrees.
    fn send(&mut self, op: Op, request_id: String) -> Result<Outcome, TestCaseError> {
        let ts = self.next_ts();
        let (account, want) = match &op {
            Op::Deposit(d) => (
                d.account_id.clone(),
                self.model
                    .deposit_or_withdraw(&request_id, &d.account_id, d.amount.into(), ts),
            ),
            Op::Withdraw(w) => (
                w.account_id.clone(),
                self.model.deposit_or_withdraw(
                    &request_id,
                    &w.account_id,
                    -i128::from(w.amount),
                    ts,
                ),
            ),
            Op::Transfer(t) => {
                let x = Xfer {
                    id: t.transfer_id.clone(),
                    from: t.from_account_id.clone(),
                    to: t.to_account_id.clone(),
                    amount: t.amount,
                };
                (
                    t.from_account_id.clone(),
                    self.model.transfer_same_shard(&x, ts),
                )
            }
            _ => unreachable!("send takes deposits, withdrawals and transfers"),
        };
        let outcome = self.apply_at(&account, &request_id, op.clone(), ts);
        prop_assert_eq!(got(&outcome), want, "{:?}", op);
        if !self.sent.iter().any(|(_, id, _)| *id == request_id) {
            self.sent.push((op, request_id, outcome.clone()));
        }
        Ok(outcome)
    }

    fn legal_steps(&self, n: usize) -> Vec<Step> {
        let (t, _) = &self.xfers[n];
        let primary = self.model.primary(t).cloned();
        let credit = self.model.credit(t).cloned();
        let mut steps = vec![Step::PrepareDebit];
        match primary {
            Some(Primary::Prepared) => {
                steps.push(Step::PrepareCredit);
                steps.push(Step::AbortDebit);
                if credit == Some(Credit::Pending) {
                    steps.push(Step::CommitDebit);
                }
            }
            Some(Primary::Committed(_)) => {
                steps.push(Step::CommitCredit);
                steps.push(Step::CommitDebit);
            }
            Some(Primary::Aborted | Primary::Refused(_)) => {
                steps.push(Step::AbortCredit);
                steps.push(Step::AbortDebit);
            }
            None => {}
        }
        if credit.is_some() && primary != Some(Primary::Prepared) {
            steps.push(Step::PrepareCredit);
        }
        steps
    }

    fn step(&mut self, n: usize, step: Step) -> Result<(), TestCaseError> {
        let (t, credit_refusal) = self.xfers[n].clone();
        let ts = self.next_ts();
        let debit_step = |refusal: Option<Reason>| TransferStep {
            transfer_id: t.id.clone(),
            account_id: t.from.clone(),
            from_account_id: String::new(),
            refusal: refusal.map(|r| Rejection {
                reason: r.as_str().into(),
                message: "credit side refused".into(),
            }),
            ..Default::default()
        };
        let credit_step = TransferStep {
            transfer_id: t.id.clone(),
            account_id: t.to.clone(),
            from_account_id: t.from.clone(),
            refusal: None,
            ..Default::default()
        };
        let credit_shard_id = self.ring.shard_of(&t.to);
        let primary_shard_id = self.ring.shard_of(&t.from);
        let (account, op, want) = match step {
            Step::PrepareDebit => (
                t.from.clone(),
                Op::PrepareDebit(PrepareDebit {
                    transfer: Some(request(&t)),
                    credit_shard_id,
                    ..Default::default()
                }),
                self.model.prepare_debit(&t),
            ),
            Step::PrepareCredit => {
                let currency = self.currency_of(&t.from);
                let want = self.model.prepare_credit(&t, &currency);
                if let Expect::Refused(reason) = want {
                    if reason != Reason::TransferAborted {
                        self.xfers[n].1 = Some(reason);
                    }
                }
                (
                    t.to.clone(),
                    Op::PrepareCredit(PrepareCredit {
                        transfer: Some(request(&t)),
                        primary_shard_id,
                        currency,
                        // The model runs steps in any order: no primary record to pair with.
                        primary_start_ts: 0,
                        ..Default::default()
                    }),
                    want,
                )
            }
            Step::CommitDebit => (
                t.from.clone(),
                Op::CommitDebit(debit_step(None)),
                self.model.decide_debit(&t, true, None, ts),
            ),
            Step::AbortDebit => (
                t.from.clone(),
                Op::AbortDebit(debit_step(credit_refusal)),
                self.model.decide_debit(&t, false, credit_refusal, ts),
            ),
            Step::CommitCredit => {
                // The credit takes the primary's commit timestamp, as the router and recovery do.
                let commit_ts = match self.model.primary(&t) {
                    Some(Primary::Committed(ts)) => *ts,
                    _ => ts,
                };
                let want = self.model.decide_credit(&t, true, commit_ts);
                let op = Op::CommitCredit(credit_step);
                let outcome = self.apply_at(&t.to, &t.id, op, commit_ts);
                prop_assert_eq!(got(&outcome), want, "{:?} of {:?}", step, t);
                return Ok(());
            }
            Step::AbortCredit => (
                t.to.clone(),
                Op::AbortCredit(credit_step),
                self.model.decide_credit(&t, false, ts),
            ),
        };
        let outcome = self.apply_at(&account, &t.id, op, ts);
        prop_assert_eq!(got(&outcome), want, "{:?} of {:?}", step, t);
        Ok(())
    }
}

fn request(t: &Xfer) -> TransferRequest {
    TransferRequest {
        issued_at_ms: 0,
        transfer_id: t.id.clone(),
        from_account_id: t.from.clone(),
        to_account_id: t.to.clone(),
        amount: t.amount,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_state_machine_agrees_with_the_model_over_the_whole_range(
        setup in prop::collection::vec((0..2usize, credit_limit()), ACCOUNTS),
        actions in prop::collection::vec(action(), 1..120),
    ) {
        let mut world = World::new();
        for (i, (currency, limit)) in setup.into_iter().enumerate() {
            world.run(Action::Create(i, currency, limit, 0))?;
        }
        for action in actions {
            world.run(action)?;
        }
    }
}

/// The sequence of the issue, on the state machine alone: a snapshot read between a deposit and
/// withdrawal of i64::MAX and a second deposit of it answers the true balance (it panicked).
#[test]
fn a_snapshot_read_across_extreme_changes_answers_the_true_balance() {
    let mut world = World::new();
    let id = world.ids[0].clone();
    world.run(Action::Create(0, 0, 0, 0)).unwrap();
    world.run(Action::Deposit(0, i64::MAX)).unwrap();
    let after_first = world.ts;
    world.run(Action::Withdraw(0, i64::MAX)).unwrap();
    world.run(Action::Deposit(0, i64::MAX)).unwrap();
    let sm = &world.sm[world.shard(&id)];
    assert_eq!(sm.account_at(&id, after_first).unwrap().balance, i64::MAX);
    assert_eq!(sm.account_at(&id, after_first + 1).unwrap().balance, 0);
    assert_eq!(sm.account_at(&id, 1).unwrap().balance, 0);
}

/// Promised credits near i64::MAX on an account deep in credit: the second promise would take
/// `pending_credit` past i64::MAX although balance + pending still fits. It is refused, and both
/// decisions of the first still apply (they panicked on every replica).
#[test]
fn promised_credits_never_overflow() {
    let mut world = World::new();
    let (to, from) = (3, 0); // shard 2 ← shard 1
    world.run(Action::Create(to, 0, i64::MAX, 0)).unwrap();
    world.run(Action::Create(from, 0, i64::MAX, 0)).unwrap();
    world.run(Action::Withdraw(to, i64::MAX)).unwrap();
    world.run(Action::Deposit(from, 10)).unwrap();
    assert_eq!(
        world.model.accounts[&world.ids[to]].balance,
        -i128::from(i64::MAX)
    );
    for (amount, want_credit) in [
        (i64::MAX, Expect::Status(TransferStatus::Prepared)),
        (1, Expect::Refused(Reason::BalanceOverflow)),
    ] {
        world.run(Action::Transfer(from, to, amount)).unwrap();
        let n = world.xfers.len() - 1;
        let (t, _) = world.xfers[n].clone();
        let currency = world.currency_of(&t.from);
        assert_eq!(
            world.model.clone().prepare_credit(&t, &currency),
            want_credit
        );
        world.step(n, Step::PrepareCredit).unwrap();
        world.compare_accounts().unwrap();
    }
    world.step(0, Step::CommitDebit).unwrap();
    world.step(0, Step::CommitCredit).unwrap();
    world.step(1, Step::AbortDebit).unwrap();
    world.compare_accounts().unwrap();
    assert_eq!(world.model.accounts[&world.ids[to]].balance, 0);
}

/// A cross-shard transfer refused by its credit side answers that refusal again on a retry (it
/// answered TRANSFER_ABORTED), and ids are scoped to the debit account on the credit side too.
#[test]
fn credit_side_refusals_are_remembered_and_ids_are_scoped_to_the_debit_account() {
    let mut world = World::new();
    let (a, b, c) = (0, 1, 3); // a, b on shard 1; c on shard 2
    world.run(Action::Create(a, 0, 0, 0)).unwrap();
    world.run(Action::Create(b, 0, 0, 0)).unwrap();
    world.run(Action::Deposit(a, 100)).unwrap();
    world.run(Action::Deposit(b, 100)).unwrap();
    // c does not exist yet: the credit side refuses, the router aborts with that refusal.
    world.run(Action::Transfer(a, c, 5)).unwrap();
    world.step(0, Step::PrepareCredit).unwrap();
    world.step(0, Step::AbortDebit).unwrap();
    let t = world.xfers[0].0.clone();
    assert_eq!(
        world.model.primary(&t),
        Some(&Primary::Refused(Reason::AccountNotFound))
    );
    // The retry's prepare answers the first outcome.
    world.step(0, Step::PrepareDebit).unwrap();
    // Two debit accounts, one id, one credit account.
    world.run(Action::Create(c, 0, 0, 0)).unwrap();
    for from in [a, b] {
        let t = Xfer {
            id: "same-id".into(),
            from: world.ids[from].clone(),
            to: world.ids[c].clone(),
            amount: 7,
        };
        world.xfers.push((t, None));
        let n = world.xfers.len() - 1;
        for step in [
            Step::PrepareDebit,
            Step::PrepareCredit,
            Step::CommitDebit,
            Step::CommitCredit,
        ] {
            world.step(n, step).unwrap();
        }
        world.compare_accounts().unwrap();
    }
    assert_eq!(world.model.accounts[&world.ids[c]].balance, 14);
}
