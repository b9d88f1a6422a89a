//! The pure state machine: every command and every refusal, then random command sequences checking
//! conservation (G1), no overdraft (G5) and exactly-once (G4) after every step.

mod common;

use common::{deposit, withdraw};

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine, Write, Writes};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, Command, CreateAccountRequest, Outcome, TransferRequest,
};

fn machine() -> StateMachine {
    // One shard owns every account.
    StateMachine::new(1, Ring::new([1], 8))
}

fn run(sm: &mut StateMachine, op: Op, request_id: &str) -> (Outcome, Writes) {
    common::apply_at(sm, request_id, 77, op)
}

fn create(id: &str, currency: &str, credit_limit: i64) -> Op {
    Op::CreateAccount(CreateAccountRequest {
        account_id: id.into(),
        currency: currency.into(),
        credit_limit,
        opening_balance: 0,
    })
}

fn transfer(id: &str, from: &str, to: &str, amount: i64) -> Op {
    Op::Transfer(TransferRequest {
        issued_at_ms: 0,
        transfer_id: id.into(),
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount,
    })
}

fn balance(sm: &StateMachine, id: &str) -> i64 {
    sm.account(id).map(|a| a.balance).unwrap_or(0)
}

fn refused(outcome: &Outcome) -> Option<Reason> {
    rejection_of(outcome)
}

fn setup() -> StateMachine {
    let mut sm = machine();
    run(&mut sm, create("alice", "USD", 0), "");
    run(&mut sm, create("bob", "USD", 0), "");
    run(&mut sm, create("eve", "EUR", 0), "");
    run(&mut sm, deposit("alice", 100), "d1");
    sm
}

#[test]
fn create_account_is_idempotent_by_account_id() {
    let mut sm = machine();
    let (first, writes) = run(&mut sm, create("alice", "USD", 50), "");
    assert!(refused(&first).is_none());
    assert_eq!(writes.len(), 1);
    let (again, writes) = run(&mut sm, create("alice", "USD", 50), "");
    assert_eq!(again, first);
    assert!(writes.is_empty(), "a retry writes nothing");
    let (other, writes) = run(&mut sm, create("alice", "EUR", 50), "");
    assert_eq!(refused(&other), Some(Reason::AccountExists));
    assert!(writes.is_empty());
    match first.result {
        Some(outcome::Result::Account(a)) => assert_eq!(a.floor, -50),
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_account_refuses_bad_input() {
    let mut sm = machine();
    for (op, reason) in [
        (create("", "USD", 0), Reason::InvalidId),
        (create(&"x".repeat(65), "USD", 0), Reason::InvalidId),
        (create("a b", "USD", 0), Reason::InvalidId),
        (create("alice", "usd", 0), Reason::InvalidCurrency),
        (create("alice", "USDX", 0), Reason::InvalidCurrency),
        (create("alice", "USD", -1), Reason::InvalidAmount),
    ] {
        let (outcome, writes) = run(&mut sm, op, "");
        assert_eq!(refused(&outcome), Some(reason));
        assert!(writes.is_empty());
    }
    assert_eq!(sm.account_count(), 0);
}

#[test]
fn deposit_and_withdraw_move_the_balance_and_write_history() {
    let mut sm = setup();
    assert_eq!(balance(&sm, "alice"), 100);
    let (outcome, writes) = run(&mut sm, withdraw("alice", 30), "w1");
    match outcome.result {
        Some(outcome::Result::Change(c)) => {
            assert_eq!(c.delta, -30);
            assert_eq!(c.balance_after, 70);
            assert_eq!(c.seq, 2);
        }
        other => panic!("{other:?}"),
    }
    assert!(writes
        .iter()
        .any(|w| matches!(w, Write::History { entry, .. } if entry.seq == 2)));
    assert!(writes
        .iter()
        .any(|w| matches!(w, Write::Request { request_id, .. } if request_id == "w1")));
    assert_eq!(balance(&sm, "alice"), 70);
}

#[test]
fn withdraw_beyond_balance_is_refused_and_remembered() {
    let mut sm = setup();
    let (outcome, _) = run(&mut sm, withdraw("alice", 101), "w1");
    assert_eq!(refused(&outcome), Some(Reason::InsufficientFunds));
    assert_eq!(balance(&sm, "alice"), 100);
    // More money arrives, but the retry of w1 still returns its first outcome.
    run(&mut sm, deposit("alice", 1000), "d2");
    let (retry, writes) = run(&mut sm, withdraw("alice", 101), "w1");
    assert_eq!(refused(&retry), Some(Reason::InsufficientFunds));
    assert!(writes.is_empty());
    assert_eq!(balance(&sm, "alice"), 1100);
}

#[test]
fn credit_limit_lets_the_balance_go_down_to_the_floor_only() {
    let mut sm = machine();
    run(&mut sm, create("card", "USD", 500), "");
    let (ok, _) = run(&mut sm, withdraw("card", 500), "w1");
    assert!(refused(&ok).is_none());
    assert_eq!(balance(&sm, "card"), -500);
    let (no, _) = run(&mut sm, withdraw("card", 1), "w2");
    assert_eq!(refused(&no), Some(Reason::InsufficientFunds));
}

#[test]
fn retry_with_same_id_applies_once() {
    let mut sm = setup();
    let (first, _) = run(&mut sm, deposit("alice", 5), "d9");
    let (retry, writes) = run(&mut sm, deposit("alice", 5), "d9");
    assert_eq!(first, retry);
    assert!(writes.is_empty());
    assert_eq!(balance(&sm, "alice"), 105);
    let (t1, _) = run(&mut sm, transfer("t1", "alice", "bob", 10), "t1");
    let (t1_again, writes) = run(&mut sm, transfer("t1", "alice", "bob", 10), "t1");
    assert_eq!(t1, t1_again);
    assert!(writes.is_empty());
    assert_eq!(balance(&sm, "bob"), 10);
}

#[test]
fn same_id_with_other_content_is_refused() {
    let mut sm = setup();
    run(&mut sm, deposit("alice", 5), "r1");
    let (outcome, writes) = run(&mut sm, deposit("alice", 6), "r1");
    assert_eq!(refused(&outcome), Some(Reason::IdReused));
    assert!(writes.is_empty());
    let (outcome, _) = run(&mut sm, withdraw("alice", 5), "r1");
    assert_eq!(refused(&outcome), Some(Reason::IdReused));
    // The same id on another account is another request (ids are scoped to their account).
    let (outcome, _) = run(&mut sm, deposit("bob", 6), "r1");
    assert!(refused(&outcome).is_none());
    assert_eq!(balance(&sm, "alice"), 105);
}

#[test]
fn transfer_moves_money_both_legs_or_neither() {
    let mut sm = setup();
    let (outcome, writes) = run(&mut sm, transfer("t1", "alice", "bob", 40), "t1");
    assert!(refused(&outcome).is_none(), "{outcome:?}");
    assert_eq!((balance(&sm, "alice"), balance(&sm, "bob")), (60, 40));
    let histories = writes
        .iter()
        .filter(|w| matches!(w, Write::History { .. }))
        .count();
    assert_eq!(histories, 2);
    assert!(sm.transfer("alice", "t1").is_some());
    let (outcome, writes) = run(&mut sm, transfer("t2", "alice", "bob", 61), "t2");
    assert_eq!(refused(&outcome), Some(Reason::InsufficientFunds));
    assert!(writes.iter().all(|w| matches!(w, Write::Request { .. })));
    assert_eq!((balance(&sm, "alice"), balance(&sm, "bob")), (60, 40));
}

#[test]
fn transfer_refuses_bad_input_and_writes_nothing() {
    let mut sm = setup();
    for (op, id, reason) in [
        (transfer("t", "alice", "alice", 1), "t", Reason::SameAccount),
        (
            transfer("t", "alice", "nobody", 1),
            "t",
            Reason::AccountNotFound,
        ),
        (
            transfer("t", "nobody", "alice", 1),
            "t",
            Reason::AccountNotFound,
        ),
        (
            transfer("t", "alice", "eve", 1),
            "t",
            Reason::CurrencyMismatch,
        ),
        (transfer("t", "alice", "bob", 0), "t", Reason::InvalidAmount),
        (
            transfer("t", "alice", "bob", -1),
            "t",
            Reason::InvalidAmount,
        ),
        (
            transfer("t", "alice", "bob", i64::MIN),
            "t",
            Reason::InvalidAmount,
        ),
        (transfer("t", "alice", "b/b", 1), "t", Reason::InvalidId),
        (transfer("t", "alice", "bob", 1), "", Reason::InvalidId),
        (
            transfer("t", "alice", "bob", 1),
            "other",
            Reason::InvalidArgument,
        ),
    ] {
        let (outcome, writes) = run(&mut sm, op, id);
        assert_eq!(refused(&outcome), Some(reason));
        assert!(writes.is_empty(), "{reason}: {writes:?}");
    }
    assert_eq!(balance(&sm, "alice"), 100);
}

#[test]
fn deposit_and_withdraw_refuse_bad_input() {
    let mut sm = setup();
    for (op, id, reason) in [
        (deposit("alice", 0), "x", Reason::InvalidAmount),
        (deposit("alice", -3), "x", Reason::InvalidAmount),
        (withdraw("alice", -3), "x", Reason::InvalidAmount),
        (withdraw("alice", i64::MIN), "x", Reason::InvalidAmount),
        (deposit("nobody", 3), "x", Reason::AccountNotFound),
        (deposit("alice", 3), "", Reason::InvalidId),
        (deposit("alice", 3), &"y".repeat(65), Reason::InvalidId),
        (deposit("alice", i64::MAX), "x", Reason::BalanceOverflow),
    ] {
        let (outcome, writes) = run(&mut sm, op, id);
        assert_eq!(refused(&outcome), Some(reason));
        assert!(writes.is_empty());
    }
    assert_eq!(balance(&sm, "alice"), 100);
}

#[test]
fn accounts_of_other_shards_are_refused() {
    let ring = Ring::new([1, 2], 16);
    let mut sm = StateMachine::new(1, ring.clone());
    let foreign = (0..100)
        .map(|i| format!("acct-{i}"))
        .find(|id| ring.shard_of(id) == 2)
        .unwrap();
    let (outcome, writes) = run(&mut sm, create(&foreign, "USD", 0), "");
    assert_eq!(refused(&outcome), Some(Reason::WrongShard));
    assert!(writes.is_empty());
}

#[test]
fn empty_command_is_refused() {
    let mut sm = machine();
    let mut writes = Vec::new();
    let outcome = sm.apply(&Command::default(), &mut writes);
    assert_eq!(refused(&outcome), Some(Reason::InvalidArgument));
    assert!(writes.is_empty());
}

// ---------- property tests ----------

const ACCOUNTS: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, i64, u8),
    Withdraw(usize, i64, u8),
    Transfer(usize, usize, i64, u8),
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1i64..200, Just(i64::MAX), -5i64..=0];
    prop_oneof![
        (0..4usize, amount.clone(), 0..12u8).prop_map(|(a, x, id)| Step::Deposit(a, x, id)),
        (0..4usize, amount.clone(), 0..12u8).prop_map(|(a, x, id)| Step::Withdraw(a, x, id)),
        (0..4usize, 0..4usize, amount, 0..12u8)
            .prop_map(|(a, b, x, id)| Step::Transfer(a, b, x, id)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step: total balance = deposits - withdrawals (G1), no balance below its floor
    /// (G5), and replaying a request id returns the first outcome and writes nothing (G4).
    #[test]
    fn random_commands_keep_the_money_invariants(steps in prop::collection::vec(step(), 1..60)) {
        let mut sm = machine();
        for (i, id) in ACCOUNTS.iter().enumerate() {
            run(&mut sm, create(id, "USD", if i == 3 { 100 } else { 0 }), "");
        }
        let mut net: i128 = 0;
        let mut seen: std::collections::HashMap<(String, String), (Op, Outcome)> = Default::default();
        for step in steps {
            let (op, id, key_account) = match step {
                Step::Deposit(a, x, id) => (deposit(ACCOUNTS[a], x), format!("r{id}"), ACCOUNTS[a]),
                Step::Withdraw(a, x, id) => (withdraw(ACCOUNTS[a], x), format!("r{id}"), ACCOUNTS[a]),
                Step::Transfer(a, b, x, id) => {
                    let tid = format!("r{id}");
                    (transfer(&tid, ACCOUNTS[a], ACCOUNTS[b], x), tid, ACCOUNTS[a])
                }
            };
            let before: i128 = sm.accounts().map(|a| i128::from(a.balance)).sum();
            let (outcome, writes) = run(&mut sm, op.clone(), &id);
            let after: i128 = sm.accounts().map(|a| i128::from(a.balance)).sum();
            let key = (key_account.to_string(), id.clone());
            if let Some((first_op, first)) = seen.get(&key) {
                // A replay returns the first outcome; other content under the id is refused
                // (ID_REUSED, or the bad-input reason that is checked first); never a change.
                if *first_op == op {
                    prop_assert_eq!(&outcome, first);
                } else {
                    prop_assert!(refused(&outcome).is_some());
                }
                prop_assert!(writes.is_empty());
                prop_assert_eq!(before, after);
                continue;
            }
            if writes.iter().any(|w| matches!(w, Write::Request { .. })) {
                seen.insert(key, (op.clone(), outcome.clone()));
            } else {
                prop_assert!(writes.is_empty(), "a refusal that is not remembered writes nothing");
            }
            if refused(&outcome).is_none() {
                match &op {
                    Op::Deposit(d) => net += i128::from(d.amount),
                    Op::Withdraw(w) => net -= i128::from(w.amount),
                    _ => prop_assert_eq!(before, after, "a transfer moves money, never makes it"),
                }
            } else {
                prop_assert_eq!(before, after, "a refused command changes no balance");
            }
            prop_assert_eq!(after, net);
            for account in sm.accounts() {
                prop_assert!(account.balance >= account.floor);
            }
        }
    }
}

fn open(id: &str, currency: &str, opening_balance: i64) -> CreateAccountRequest {
    CreateAccountRequest {
        account_id: id.into(),
        currency: currency.into(),
        credit_limit: 0,
        opening_balance,
    }
}

fn totals(sm: &StateMachine, ts: u64, currency: &str) -> (String, String) {
    let report = sm.snapshot_at(ts).unwrap();
    let t = report
        .totals
        .iter()
        .find(|t| t.currency == currency)
        .cloned()
        .unwrap_or_default();
    (t.balances, t.net_deposits)
}

/// An opening balance is a deposit (history entry 1, net deposits, snapshot reads), applied once:
/// the same creation again answers the account as it is; other content is ACCOUNT_EXISTS.
#[test]
fn an_opening_balance_is_a_deposit_made_once_by_account_id() {
    let mut sm = machine();
    let (outcome, writes) = run(
        &mut sm,
        Op::CreateAccount(open("alice", "USD", i64::MAX)),
        "",
    );
    assert_eq!(refused(&outcome), None);
    let alice = sm.account("alice").unwrap();
    assert_eq!(
        (alice.balance, alice.version, alice.opening_balance),
        (i64::MAX, 1, i64::MAX)
    );
    let history: Vec<_> = writes
        .iter()
        .filter_map(|w| match w {
            Write::History { entry, .. } => Some(entry.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(history.len(), 1);
    assert_eq!(
        (history[0].seq, history[0].delta, history[0].balance_after),
        (1, i64::MAX, i64::MAX)
    );
    assert_eq!(history[0].kind, wallet_proto::v1::EntryKind::Deposit as i32);
    assert_eq!(
        totals(&sm, 77, "USD"),
        (i64::MAX.to_string(), i64::MAX.to_string())
    );
    // Before its timestamp, a snapshot read does not see it.
    assert_eq!(totals(&sm, 76, "USD"), ("0".to_string(), "0".to_string()));
    // Full: one more cent would overflow.
    assert_eq!(
        refused(&run(&mut sm, deposit("alice", 1), "d1").0),
        Some(Reason::BalanceOverflow)
    );
    run(&mut sm, withdraw("alice", 5), "w1");
    // Created again with the same content: the account as it is now, no second deposit.
    let (again, writes) = run(
        &mut sm,
        Op::CreateAccount(open("alice", "USD", i64::MAX)),
        "",
    );
    match again.result {
        Some(outcome::Result::Account(a)) => assert_eq!(a.balance, i64::MAX - 5),
        other => panic!("{other:?}"),
    }
    assert!(writes.is_empty());
    // Other content under the id.
    for other in [
        open("alice", "USD", 7),
        open("alice", "USD", 0),
        open("alice", "EUR", i64::MAX),
    ] {
        let (outcome, writes) = run(&mut sm, Op::CreateAccount(other), "");
        assert_eq!(refused(&outcome), Some(Reason::AccountExists));
        assert!(writes.is_empty());
    }
    // Bad input writes nothing; money needs a timestamp.
    let (outcome, writes) = run(&mut sm, Op::CreateAccount(open("bob", "USD", -1)), "");
    assert_eq!(refused(&outcome), Some(Reason::InvalidAmount));
    assert!(writes.is_empty());
    let (outcome, writes) =
        common::apply_at(&mut sm, "", 0, Op::CreateAccount(open("bob", "USD", 3)));
    assert_eq!(refused(&outcome), Some(Reason::InvalidArgument));
    assert!(writes.is_empty() && sm.account("bob").is_none());
    // Without money, no timestamp is needed (as before).
    let (outcome, _) = common::apply_at(&mut sm, "", 0, Op::CreateAccount(open("bob", "USD", 0)));
    assert_eq!(refused(&outcome), None);
    assert_eq!(sm.account("bob").unwrap().version, 0);
}

/// The bulk command: one outcome per account, in order, each as CreateAccount would answer; a
/// command stamped at or below the closed timestamp is refused whole when it brings money.
#[test]
fn create_accounts_answers_each_account_and_respects_the_closed_timestamp() {
    let mut sm = machine();
    let batch = |accounts: Vec<CreateAccountRequest>| {
        Op::CreateAccounts(wallet_proto::v1::CreateAccounts { accounts })
    };
    let accounts = vec![
        open("a", "USD", 10),
        open("b", "usd", 10),
        open("c", "USD", 0),
        open("a", "USD", 10),
        open("a", "USD", 11),
        open("", "USD", 1),
        open("d", "EUR", 5),
    ];
    let (outcome, _) = run(&mut sm, batch(accounts), "");
    let items = match outcome.result {
        Some(outcome::Result::Outcomes(o)) => o.items,
        other => panic!("{other:?}"),
    };
    let reasons: Vec<Option<Reason>> = items.iter().map(refused).collect();
    assert_eq!(
        reasons,
        vec![
            None,
            Some(Reason::InvalidCurrency),
            None,
            None,
            Some(Reason::AccountExists),
            Some(Reason::InvalidId),
            None
        ]
    );
    assert_eq!(balance(&sm, "a"), 10);
    assert_eq!(balance(&sm, "d"), 5);
    assert_eq!(totals(&sm, 77, "USD"), ("10".to_string(), "10".to_string()));
    // Too many accounts in one command.
    let many = (0..wallet_proto::TRANSFER_BATCH_MAX + 1)
        .map(|i| open(&format!("m{i}"), "USD", 0))
        .collect();
    let (outcome, writes) = run(&mut sm, batch(many), "");
    assert_eq!(refused(&outcome), Some(Reason::InvalidArgument));
    assert!(writes.is_empty());
    // A snapshot read closed the shard at 100: money stamped at or below it is refused whole.
    common::apply_at(
        &mut sm,
        "",
        100,
        Op::CloseTs(wallet_proto::v1::CloseTs { ts: 100 }),
    );
    let (outcome, writes) = common::apply_at(
        &mut sm,
        "",
        90,
        batch(vec![open("e", "USD", 0), open("f", "USD", 1)]),
    );
    assert_eq!(refused(&outcome), Some(Reason::TimestampTooOld));
    assert!(writes.is_empty() && sm.account("e").is_none());
    let (outcome, _) = common::apply_at(&mut sm, "", 90, batch(vec![open("e", "USD", 0)]));
    assert!(matches!(outcome.result, Some(outcome::Result::Outcomes(_))));
    assert!(sm.account("e").is_some());
    let (outcome, _) = common::apply_at(&mut sm, "", 101, batch(vec![open("f", "USD", 1)]));
    assert!(matches!(outcome.result, Some(outcome::Result::Outcomes(_))));
    assert_eq!(balance(&sm, "f"), 1);
}

/// A backup's pages (`accounts_at`): every account exactly once, in id order, each with its
/// balance at the timestamp (changes stamped after it undone), whatever the page size; balances
/// and floors over the whole i64 range.
#[test]
fn accounts_at_pages_every_account_once_with_its_balance_at_the_timestamp() {
    let mut sm = machine();
    let ids: Vec<String> = (0..23).map(|n| format!("acct-{n:02}")).collect();
    for id in &ids {
        common::apply_at(&mut sm, "", 10, create(id, "USD", 0));
        common::apply_at(&mut sm, &format!("d-{id}"), 20, deposit(id, 1_000));
    }
    common::apply_at(&mut sm, "", 10, create("max", "USD", 0));
    common::apply_at(&mut sm, "dmax", 20, deposit("max", i64::MAX));
    common::apply_at(&mut sm, "", 10, create("owing", "EUR", i64::MAX));
    common::apply_at(&mut sm, "wowing", 20, withdraw("owing", i64::MAX));
    // After the timestamp 30: a transfer and a deposit the pages must not show.
    let (late, _) = common::apply_at(
        &mut sm,
        "late",
        40,
        transfer("late", "acct-00", "acct-01", 400),
    );
    assert_eq!(refused(&late), None);
    common::apply_at(&mut sm, "late-d", 41, deposit("acct-05", 7));
    let mut all = Vec::new();
    for limit in [1, 2, 5, 25, 4096] {
        let mut after = String::new();
        let mut pages = Vec::new();
        loop {
            let (page, more) = sm.accounts_at(30, &after, limit).unwrap();
            assert!(page.len() <= limit);
            pages.extend(
                page.iter()
                    .map(|a| (a.account_id.clone(), a.balance, a.floor)),
            );
            match page.last() {
                Some(last) if more => after = last.account_id.clone(),
                _ => break,
            }
        }
        if all.is_empty() {
            all = pages.clone();
        }
        assert_eq!(pages, all, "page size {limit}");
    }
    let mut want: Vec<(String, i64, i64)> = ids.iter().map(|id| (id.clone(), 1_000, 0)).collect();
    want.push(("max".into(), i64::MAX, 0));
    want.push(("owing".into(), -i64::MAX, -i64::MAX));
    want.sort();
    assert_eq!(all, want);
    // What the pages add up to is what an audit at the same timestamp says.
    let usd: i128 = all
        .iter()
        .filter(|(id, _, _)| id != "owing")
        .map(|(_, b, _)| i128::from(*b))
        .sum();
    assert_eq!(totals(&sm, 30, "USD").0, usd.to_string());
    // Now, the late changes show.
    let (now, _) = sm.accounts_at(50, "", 4096).unwrap();
    let balance_of = |id: &str| now.iter().find(|a| a.account_id == id).unwrap().balance;
    assert_eq!((balance_of("acct-00"), balance_of("acct-01")), (600, 1_400));
    assert_eq!(balance_of("acct-05"), 1_007);
}
