//! Holds in the pure state machine (README § Holds): authorize, capture (whole or partial), void
//! and expiry by oracle timestamp; exactly-once by hold id; frozen and closed accounts; the whole
//! value range; a restart; then random sequences checking that money is conserved, that every
//! pending hold is reserved and promised exactly once, and that a hold is decided at most once.

mod common;

use common::{deposit, withdraw};

use std::collections::BTreeMap;

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine, Write};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, AccountStateRequest, AuthorizeRequest, CaptureRequest,
    CreateAccountRequest, EntryKind, ExpireHolds, GetHoldRequest, Hold, HoldState,
    ListHoldsRequest, Outcome, VoidRequest,
};

/// Oracle timestamps: physical ms << 18.
const T0: u64 = 1_000_000 << 18;

fn ms(n: u64) -> u64 {
    n << 18
}

fn machine() -> StateMachine {
    StateMachine::new(1, Ring::new([1], 8))
}

fn at(sm: &mut StateMachine, ts: u64, id: &str, op: Op) -> Outcome {
    common::apply_at(sm, id, ts, op).0
}

fn create(sm: &mut StateMachine, id: &str, credit_limit: i64) {
    let op = Op::CreateAccount(CreateAccountRequest {
        account_id: id.into(),
        currency: "USD".into(),
        credit_limit,
        opening_balance: 0,
    });
    assert!(rejection_of(&at(sm, T0, "", op)).is_none());
}

fn authorize(hold: &str, from: &str, to: &str, amount: i64, expires_in_ms: i64) -> Op {
    Op::Authorize(AuthorizeRequest {
        hold_id: hold.into(),
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount,
        expires_in_ms,
        issued_at_ms: 0,
    })
}

fn capture(hold: &str, from: &str, amount: i64) -> Op {
    Op::Capture(CaptureRequest {
        hold_id: hold.into(),
        from_account_id: from.into(),
        amount,
        issued_at_ms: 0,
    })
}

fn void(hold: &str, from: &str) -> Op {
    Op::Void(VoidRequest {
        hold_id: hold.into(),
        from_account_id: from.into(),
        issued_at_ms: 0,
    })
}

fn hold_of(outcome: &Outcome) -> Hold {
    match &outcome.result {
        Some(outcome::Result::Hold(h)) => h.clone(),
        other => panic!("not a hold: {other:?}"),
    }
}

fn state(outcome: &Outcome) -> HoldState {
    HoldState::try_from(hold_of(outcome).state).expect("known state")
}

/// (balance, reserved, pending_credit)
fn money(sm: &StateMachine, id: &str) -> (i64, i64, i64) {
    let a = sm.account(id).expect("account");
    (a.balance, a.reserved, a.pending_credit)
}

fn funded() -> StateMachine {
    let mut sm = machine();
    create(&mut sm, "payer", 0);
    create(&mut sm, "shop", 0);
    assert!(rejection_of(&at(&mut sm, T0, "fund", deposit("payer", 100))).is_none());
    sm
}

#[test]
fn a_capture_moves_what_it_captures_once_and_releases_the_rest() {
    let mut sm = funded();
    let authorized = at(
        &mut sm,
        T0 + 1,
        "h1",
        authorize("h1", "payer", "shop", 80, 0),
    );
    let hold = hold_of(&authorized);
    assert_eq!(state(&authorized), HoldState::Pending);
    assert_eq!(hold.expires_at_ts, T0 + 1 + ms(7 * 24 * 3600 * 1000));
    assert_eq!(money(&sm, "payer"), (100, 80, 0));
    assert_eq!(money(&sm, "shop"), (0, 0, 80));
    // Spendable money dropped: only 20 can leave.
    let w = withdraw("payer", 21);
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 2, "w1", w)),
        Some(Reason::InsufficientFunds)
    );
    // The same authorization again answers it; other content under the id is ID_REUSED.
    assert_eq!(
        at(
            &mut sm,
            T0 + 3,
            "h1",
            authorize("h1", "payer", "shop", 80, 0)
        ),
        authorized
    );
    assert_eq!(
        rejection_of(&at(
            &mut sm,
            T0 + 3,
            "h1",
            authorize("h1", "payer", "shop", 81, 0)
        )),
        Some(Reason::IdReused)
    );
    // Capture 30 of 80: 30 moves, 50 comes back.
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 4, "h1", capture("h1", "payer", 81))),
        Some(Reason::InvalidAmount)
    );
    let (captured, writes) = common::apply_at(&mut sm, "h1", T0 + 5, capture("h1", "payer", 30));
    let h = hold_of(&captured);
    assert_eq!(
        (state(&captured), h.captured, h.decided_ts),
        (HoldState::Captured, 30, T0 + 5)
    );
    assert_eq!(money(&sm, "payer"), (70, 0, 0));
    assert_eq!(money(&sm, "shop"), (30, 0, 0));
    let history: Vec<(EntryKind, i64)> = writes
        .iter()
        .filter_map(|w| match w {
            Write::History { entry, .. } => {
                Some((EntryKind::try_from(entry.kind).expect("kind"), entry.delta))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        history,
        [(EntryKind::TransferOut, -30), (EntryKind::TransferIn, 30)]
    );
    // At most once: the same capture answers it and writes nothing; any other is refused.
    let (again, writes) = common::apply_at(&mut sm, "h1", T0 + 6, capture("h1", "payer", 30));
    assert_eq!(again, captured);
    assert!(writes.is_empty());
    // "All of it" after a partial capture is another capture: refused.
    for op in [
        capture("h1", "payer", 0),
        capture("h1", "payer", 31),
        void("h1", "payer"),
    ] {
        assert_eq!(
            rejection_of(&at(&mut sm, T0 + 7, "h1", op)),
            Some(Reason::HoldNotPending)
        );
    }
    assert_eq!(money(&sm, "payer"), (70, 0, 0));
    assert_eq!(money(&sm, "shop"), (30, 0, 0));
    // The hold reads back; an unknown id or another request's id is HOLD_NOT_FOUND.
    let get = |id: &str| GetHoldRequest {
        hold_id: id.into(),
        from_account_id: "payer".into(),
    };
    assert_eq!(sm.hold(&get("h1")).expect("hold"), h);
    assert_eq!(
        sm.hold(&get("nope")).unwrap_err().reason,
        Reason::HoldNotFound
    );
    assert_eq!(
        sm.hold(&get("fund")).unwrap_err().reason,
        Reason::HoldNotFound
    );
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 8, "fund", capture("fund", "payer", 0))),
        Some(Reason::HoldNotFound)
    );
}

#[test]
fn a_void_releases_everything_and_an_expiry_is_decided_by_the_oracle_timestamp() {
    let mut sm = funded();
    at(&mut sm, T0 + 1, "v", authorize("v", "payer", "shop", 40, 0));
    let voided = at(&mut sm, T0 + 2, "v", void("v", "payer"));
    assert_eq!(state(&voided), HoldState::Voided);
    assert_eq!(at(&mut sm, T0 + 3, "v", void("v", "payer")), voided);
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 3, "v", capture("v", "payer", 0))),
        Some(Reason::HoldNotPending)
    );
    assert_eq!(money(&sm, "payer"), (100, 0, 0));
    assert_eq!(money(&sm, "shop"), (0, 0, 0));

    // Three holds expiring 1, 2 and 3 ms after T0 + 10.
    for (i, id) in ["e1", "e2", "e3"].iter().enumerate() {
        let o = at(
            &mut sm,
            T0 + 10,
            id,
            authorize(id, "payer", "shop", 10, i as i64 + 1),
        );
        assert_eq!(hold_of(&o).expires_at_ts, T0 + 10 + ms(i as u64 + 1));
    }
    assert_eq!(sm.next_hold_expiry(), T0 + 10 + ms(1));
    let expire =
        |sm: &mut StateMachine, ts: u64| match at(sm, ts, "", Op::ExpireHolds(ExpireHolds {}))
            .result
        {
            Some(outcome::Result::Expired(n)) => n,
            other => panic!("{other:?}"),
        };
    // One tick before: nothing; at the expiry: exactly the due hold.
    assert_eq!(expire(&mut sm, T0 + 10 + ms(1) - 1), 0);
    assert_eq!(expire(&mut sm, T0 + 10 + ms(1)), 1);
    assert_eq!(money(&sm, "payer"), (100, 20, 0));
    // A capture past its expiry, before any ExpireHolds: expired now, HOLD_EXPIRED, released.
    let late = at(&mut sm, T0 + 10 + ms(2), "e2", capture("e2", "payer", 0));
    assert_eq!(rejection_of(&late), Some(Reason::HoldExpired));
    assert_eq!(money(&sm, "payer"), (100, 10, 0));
    assert_eq!(
        rejection_of(&at(
            &mut sm,
            T0 + 10 + ms(9),
            "e2",
            capture("e2", "payer", 0)
        )),
        Some(Reason::HoldExpired),
        "and stays expired"
    );
    // A void past its expiry says EXPIRED (truthfully), and releases it.
    let o = at(&mut sm, T0 + 10 + ms(3), "e3", void("e3", "payer"));
    assert_eq!(state(&o), HoldState::Expired);
    assert_eq!(money(&sm, "payer"), (100, 0, 0));
    assert_eq!(money(&sm, "shop"), (0, 0, 0));
    assert_eq!(sm.next_hold_expiry(), 0);
    // Expiry bounds: 0 is 7 days, 30 days at most, negative refused.
    for bad in [-1, 30 * 24 * 3600 * 1000 + 1, i64::MAX] {
        assert_eq!(
            rejection_of(&at(
                &mut sm,
                T0 + 99,
                "x",
                authorize("x", "payer", "shop", 1, bad)
            )),
            Some(Reason::InvalidArgument),
            "{bad}"
        );
    }
}

#[test]
fn holds_respect_funds_frozen_and_closed_accounts_over_the_whole_range() {
    let mut sm = machine();
    create(&mut sm, "payer", i64::MAX);
    create(&mut sm, "shop", 0);
    create(&mut sm, "full", 0);
    at(&mut sm, T0, "f", deposit("full", i64::MAX));
    // A hold of i64::MAX through the credit limit; a second unit is INSUFFICIENT_FUNDS
    // (remembered), and a hold towards a full account is BALANCE_OVERFLOW (not remembered).
    let big = at(
        &mut sm,
        T0 + 1,
        "big",
        authorize("big", "payer", "shop", i64::MAX, 0),
    );
    assert_eq!(state(&big), HoldState::Pending);
    assert_eq!(money(&sm, "payer"), (0, i64::MAX, 0));
    let (o, writes) = common::apply_at(
        &mut sm,
        "more",
        T0 + 2,
        authorize("more", "payer", "shop", 1, 0),
    );
    assert_eq!(rejection_of(&o), Some(Reason::InsufficientFunds));
    assert_eq!(writes.len(), 1, "remembered");
    let (o, writes) =
        common::apply_at(&mut sm, "of", T0 + 2, authorize("of", "shop", "full", 1, 0));
    assert_eq!(
        rejection_of(&o),
        Some(Reason::InsufficientFunds),
        "shop has nothing yet"
    );
    assert_eq!(writes.len(), 1);
    // Neither side closes while the hold is pending.
    let close = |id: &str| {
        Op::CloseAccount(AccountStateRequest {
            request_id: String::new(),
            account_id: id.into(),
            issued_at_ms: 0,
        })
    };
    let freeze = |id: &str| {
        Op::FreezeAccount(AccountStateRequest {
            request_id: String::new(),
            account_id: id.into(),
            issued_at_ms: 0,
        })
    };
    let unfreeze = |id: &str| {
        Op::UnfreezeAccount(AccountStateRequest {
            request_id: String::new(),
            account_id: id.into(),
            issued_at_ms: 0,
        })
    };
    for id in ["payer", "shop"] {
        assert_eq!(
            rejection_of(&at(&mut sm, T0 + 3, "c", close(id))),
            Some(Reason::AccountNotEmpty)
        );
    }
    // Frozen payer: no new hold, no capture (the hold stays pending); a void still releases.
    at(&mut sm, T0 + 4, "fz", freeze("payer"));
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 5, "cap", capture("big", "payer", 0))),
        Some(Reason::AccountFrozen)
    );
    assert_eq!(money(&sm, "payer"), (0, i64::MAX, 0));
    at(&mut sm, T0 + 6, "uf", unfreeze("payer"));
    // Frozen payee: a new hold towards it is refused, but one promised before captures.
    at(&mut sm, T0 + 7, "fz", freeze("shop"));
    let o = at(&mut sm, T0 + 8, "h2", authorize("h2", "full", "shop", 1, 0));
    assert_eq!(rejection_of(&o), Some(Reason::AccountFrozen));
    let o = at(&mut sm, T0 + 9, "big", capture("big", "payer", 0));
    assert_eq!(
        (state(&o), hold_of(&o).captured),
        (HoldState::Captured, i64::MAX)
    );
    assert_eq!(money(&sm, "payer"), (-i64::MAX, 0, 0));
    assert_eq!(money(&sm, "shop"), (i64::MAX, 0, 0));
    // A hold towards an account that could not take it is BALANCE_OVERFLOW, nothing written.
    at(&mut sm, T0 + 10, "uf2", unfreeze("shop"));
    let (o, writes) = common::apply_at(
        &mut sm,
        "ov",
        T0 + 11,
        authorize("ov", "full", "shop", 1, 0),
    );
    assert_eq!(rejection_of(&o), Some(Reason::BalanceOverflow));
    assert!(writes.is_empty());
}

#[test]
fn pending_holds_survive_a_restart_and_list_in_id_order() {
    let mut sm = funded();
    let mut writes_all = Vec::new();
    for (i, id) in ["h-c", "h-a", "h-b", "h-d"].iter().enumerate() {
        let (o, writes) = common::apply_at(
            &mut sm,
            id,
            T0 + 1 + i as u64,
            authorize(id, "payer", "shop", 10, 1000 + i as i64),
        );
        assert_eq!(state(&o), HoldState::Pending);
        writes_all.extend(writes);
    }
    let (_, writes) = common::apply_at(&mut sm, "h-d", T0 + 9, void("h-d", "payer"));
    writes_all.extend(writes);
    // A second payer uses one of the same hold ids towards the same payee.
    for (ts, id, op) in [
        (T0 + 10, "", None),
        (T0 + 11, "fund2", Some(deposit("payer2", 50))),
        (
            T0 + 12,
            "h-a",
            Some(authorize("h-a", "payer2", "shop", 7, 5000)),
        ),
    ] {
        let op = op.unwrap_or_else(|| {
            Op::CreateAccount(CreateAccountRequest {
                account_id: "payer2".into(),
                currency: "USD".into(),
                credit_limit: 0,
                opening_balance: 0,
            })
        });
        let (o, writes) = common::apply_at(&mut sm, id, ts, op);
        assert!(rejection_of(&o).is_none(), "{o:?}");
        writes_all.extend(writes);
    }
    let list = |sm: &StateMachine, after: &str, limit: u32| {
        let page = sm
            .holds(&ListHoldsRequest {
                account_id: "payer".into(),
                limit,
                after: after.into(),
                as_payee: false,
            })
            .expect("page");
        let ids: Vec<String> = page.holds.iter().map(|h| h.hold_id.clone()).collect();
        (ids, page.next_after)
    };
    let as_payee = |sm: &StateMachine, after: &str, limit: u32| {
        let page = sm
            .holds(&ListHoldsRequest {
                account_id: "shop".into(),
                limit,
                after: after.into(),
                as_payee: true,
            })
            .expect("page");
        let ids: Vec<String> = page
            .holds
            .iter()
            .map(|h| format!("{}/{}", h.from_account_id, h.hold_id))
            .collect();
        (ids, page.next_after)
    };
    assert_eq!(
        as_payee(&sm, "", 2),
        (
            vec!["payer/h-a".into(), "payer/h-b".into()],
            "payer/h-b".into()
        )
    );
    assert_eq!(
        as_payee(&sm, "payer/h-b", 2),
        (vec!["payer/h-c".into(), "payer2/h-a".into()], String::new())
    );
    assert_eq!(as_payee(&sm, "payer2/h-a", 2), (vec![], String::new()));
    assert_eq!(
        list(&sm, "", 2),
        (vec!["h-a".into(), "h-b".into()], "h-b".into())
    );
    assert_eq!(list(&sm, "h-b", 2), (vec!["h-c".into()], String::new()));
    // A fresh machine fed the stored records (a restart) has the same holds and expiries.
    let mut restarted = machine();
    let mut latest = BTreeMap::new();
    for w in writes_all {
        match w {
            Write::Request {
                account_id,
                request_id,
                record,
            } => {
                latest.insert((account_id, request_id), *record);
            }
            Write::Account(a) => restarted.load_account(a),
            _ => {}
        }
    }
    for ((account, id), record) in latest {
        restarted.load_request(account, id, record);
    }
    assert_eq!(list(&restarted, "", 10), list(&sm, "", 10));
    assert_eq!(as_payee(&restarted, "", 10), as_payee(&sm, "", 10));
    assert_eq!(restarted.next_hold_expiry(), sm.next_hold_expiry());
    assert_eq!(restarted.next_hold_expiry(), T0 + 1 + ms(1000));
}

// ---------- property test ----------

const ACCOUNTS: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Step {
    Deposit(usize, i64),
    Authorize(usize, usize, i64, u8, i64),
    Capture(usize, u8, i64),
    Void(usize, u8),
    Expire,
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let amount = prop_oneof![1i64..100, Just(i64::MAX)];
    prop_oneof![
        (0..3usize, amount.clone()).prop_map(|(a, x)| Step::Deposit(a, x)),
        (0..3usize, 0..3usize, amount.clone(), 0..6u8, 1i64..5)
            .prop_map(|(a, b, x, id, e)| Step::Authorize(a, b, x, id, e)),
        (
            0..3usize,
            0..6u8,
            prop_oneof![Just(0i64), 1i64..120, Just(i64::MAX)]
        )
            .prop_map(|(a, id, x)| Step::Capture(a, id, x)),
        (0..3usize, 0..6u8).prop_map(|(a, id)| Step::Void(a, id)),
        Just(Step::Expire),
        (0u64..3).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every step: money is conserved; each account's `reserved` is the sum of its pending
    /// holds as payer and its `pending_credit` of those as payee; a hold, once decided, never
    /// changes again, and never captures more than it held; no hold is pending past an
    /// `ExpireHolds` at or after its expiry.
    #[test]
    fn holds_keep_the_money_invariants(steps in prop::collection::vec(step(), 1..80)) {
        let mut sm = machine();
        for (i, id) in ACCOUNTS.iter().enumerate() {
            create(&mut sm, id, if i == 2 { i64::MAX } else { 0 });
        }
        let mut ts = T0;
        let mut net: i128 = 0;
        let mut decided: BTreeMap<(String, String), Hold> = BTreeMap::new();
        for (n, step) in steps.into_iter().enumerate() {
            ts += 1;
            let outcome = match step {
                Step::Deposit(a, x) => {
                    let o = at(&mut sm, ts, &format!("d{n}"), deposit(ACCOUNTS[a], x));
                    if rejection_of(&o).is_none() {
                        net += i128::from(x);
                    }
                    o
                }
                Step::Authorize(a, b, x, id, e) => {
                    let id = format!("h{id}");
                    at(&mut sm, ts, &id, authorize(&id, ACCOUNTS[a], ACCOUNTS[b], x, e))
                }
                Step::Capture(a, id, x) => {
                    let id = format!("h{id}");
                    at(&mut sm, ts, &id, capture(&id, ACCOUNTS[a], x))
                }
                Step::Void(a, id) => {
                    let id = format!("h{id}");
                    at(&mut sm, ts, &id, void(&id, ACCOUNTS[a]))
                }
                Step::Expire => {
                    let o = at(&mut sm, ts, "", Op::ExpireHolds(ExpireHolds {}));
                    let next = sm.next_hold_expiry();
                    prop_assert!(next == 0 || next > ts, "a due hold stayed pending");
                    o
                }
                Step::Tick(m) => {
                    ts += ms(m);
                    continue;
                }
            };
            if let Some(outcome::Result::Hold(h)) = &outcome.result {
                prop_assert!(h.captured >= 0 && h.captured <= h.amount);
                let key = (h.from_account_id.clone(), h.hold_id.clone());
                if let Some(first) = decided.get(&key) {
                    prop_assert_eq!(first, h, "a decided hold never changes");
                } else if h.state != HoldState::Pending as i32 {
                    decided.insert(key, h.clone());
                }
            }
            let total: i128 = sm.accounts().map(|a| i128::from(a.balance)).sum();
            prop_assert_eq!(total, net);
            let mut reserved: BTreeMap<String, i128> = BTreeMap::new();
            let mut promised: BTreeMap<String, i128> = BTreeMap::new();
            for account in ACCOUNTS {
                // As payer: its reservations; as payee (its own index): its promised credits.
                for as_payee in [false, true] {
                    let page = sm
                        .holds(&ListHoldsRequest {
                            account_id: account.into(),
                            limit: 1000,
                            after: String::new(),
                            as_payee,
                        })
                        .expect("page");
                    for h in page.holds {
                        prop_assert_eq!(h.state, HoldState::Pending as i32);
                        let (sums, who) = if as_payee {
                            (&mut promised, &h.to_account_id)
                        } else {
                            (&mut reserved, &h.from_account_id)
                        };
                        prop_assert_eq!(who.as_str(), account);
                        *sums.entry(who.clone()).or_default() += i128::from(h.amount);
                    }
                }
            }
            for account in sm.accounts() {
                let id = &account.account_id;
                prop_assert_eq!(i128::from(account.reserved), reserved.get(id).copied().unwrap_or(0));
                prop_assert_eq!(
                    i128::from(account.pending_credit),
                    promised.get(id).copied().unwrap_or(0)
                );
            }
        }
    }
}

fn authorize_issued(hold: &str, amount: i64, issued_at_ms: i64) -> Op {
    Op::Authorize(AuthorizeRequest {
        hold_id: hold.into(),
        from_account_id: "payer".into(),
        to_account_id: "shop".into(),
        amount,
        expires_in_ms: 0,
        issued_at_ms,
    })
}

fn capture_issued(hold: &str, amount: i64, issued_at_ms: i64) -> Op {
    Op::Capture(CaptureRequest {
        hold_id: hold.into(),
        from_account_id: "payer".into(),
        amount,
        issued_at_ms,
    })
}

/// Review findings: ids shared across kinds, decisions stamped before their hold, captures meant
/// for an earlier hold under a reused id, and a decided hold kept until its authorization's own
/// retry is refused (an issue time ahead of the shard's clock).
#[test]
fn hold_ids_timestamps_and_issue_times_are_checked() {
    use wallet_proto::v1::{SetRetention, TransferStep};
    let mut sm = funded();
    // A deposit's id is not a hold's; a hold's id is not a transfer's.
    assert_eq!(
        rejection_of(&at(
            &mut sm,
            T0 + 1,
            "fund",
            authorize("fund", "payer", "shop", 1, 0)
        )),
        Some(Reason::IdReused)
    );
    at(
        &mut sm,
        T0 + 2,
        "h1",
        authorize("h1", "payer", "shop", 10, 0),
    );
    let step = TransferStep {
        transfer_id: "h1".into(),
        account_id: "payer".into(),
        ..Default::default()
    };
    for op in [Op::CommitDebit(step.clone()), Op::AbortDebit(step)] {
        assert_eq!(
            rejection_of(&at(&mut sm, T0 + 3, "h1", op)),
            Some(Reason::InvalidArgument)
        );
    }
    assert_eq!(money(&sm, "payer"), (100, 10, 0));
    // A decision stamped at or before its authorization is stamped again by the router; one
    // without a timestamp is no router's.
    for ts in [T0 + 2, T0 + 1] {
        for op in [capture("h1", "payer", 0), void("h1", "payer")] {
            assert_eq!(
                rejection_of(&at(&mut sm, ts, "h1", op)),
                Some(Reason::TimestampTooOld)
            );
        }
    }
    assert_eq!(
        rejection_of(&at(&mut sm, 0, "h1", capture("h1", "payer", 0))),
        Some(Reason::InvalidArgument)
    );
    // A frozen payer: no capture, but a void releases.
    let freeze = Op::FreezeAccount(AccountStateRequest {
        request_id: String::new(),
        account_id: "payer".into(),
        issued_at_ms: 0,
    });
    at(&mut sm, T0 + 4, "fz", freeze);
    assert_eq!(
        state(&at(&mut sm, T0 + 5, "h1", void("h1", "payer"))),
        HoldState::Voided
    );
    assert_eq!(money(&sm, "payer"), (100, 0, 0));
    let unfreeze = Op::UnfreezeAccount(AccountStateRequest {
        request_id: String::new(),
        account_id: "payer".into(),
        issued_at_ms: 0,
    });
    at(&mut sm, T0 + 6, "uf", unfreeze);

    // Retention of 1 s. The shard's clock is 1 000 000 ms (T0); an authorization issued 3 min
    // ahead of it, captured at once.
    let window = 1000;
    let set = Op::SetRetention(SetRetention { window_ms: window });
    assert!(rejection_of(&at(&mut sm, T0 + 7, "", set)).is_none());
    let ahead = 1_000_000 + 180_000;
    let first = at(&mut sm, T0 + 8, "h2", authorize_issued("h2", 20, ahead));
    assert_eq!(state(&first), HoldState::Pending);
    // A capture issued a little before its authorization (another client's clock) is fine;
    // one issued before the window is REQUEST_EXPIRED.
    let stale = capture_issued("h2", 0, 1_000_000 - window - 1);
    assert_eq!(
        rejection_of(&at(&mut sm, T0 + 9, "h2", stale)),
        Some(Reason::RequestExpired)
    );
    let captured = at(
        &mut sm,
        T0 + 9,
        "h2",
        capture_issued("h2", 0, ahead - 60_000),
    );
    assert_eq!(state(&captured), HoldState::Captured);
    // Past decision + window but before issue + window: the record is kept, and a retry of the
    // authorization answers the captured hold, never a new one.
    let clock = |ms: i64| (ms as u64) << 18;
    let later = clock(1_000_000 + 100_000);
    at(&mut sm, later, "d-late", deposit("payer", 1));
    assert_eq!(
        at(&mut sm, later + 1, "h2", authorize_issued("h2", 20, ahead)),
        captured
    );
    // Past issue + window: the retry is REQUEST_EXPIRED, and then the record is forgotten.
    let past = clock(ahead + window + 1);
    assert_eq!(
        rejection_of(&at(&mut sm, past, "h2", authorize_issued("h2", 20, ahead))),
        Some(Reason::RequestExpired)
    );
    at(&mut sm, past + 1, "d-past", deposit("payer", 1));
    assert_eq!(
        sm.hold(&GetHoldRequest {
            hold_id: "h2".into(),
            from_account_id: "payer".into(),
        })
        .unwrap_err()
        .reason,
        Reason::HoldNotFound
    );
    // The id is free again: a new hold under it, issued 5 min ahead of the shard's clock; a
    // capture issued more than 5 min before it was meant for the old one: refused.
    let new_issue = ahead + window + 1 + 300_000;
    let reused = at(
        &mut sm,
        past + 2,
        "h2",
        authorize_issued("h2", 5, new_issue),
    );
    assert_eq!(state(&reused), HoldState::Pending);
    let old = capture_issued("h2", 0, new_issue - 300_001);
    assert_eq!(
        rejection_of(&at(&mut sm, past + 3, "h2", old)),
        Some(Reason::RequestExpired)
    );
    assert_eq!(money(&sm, "payer"), (100 - 20 + 2, 5, 0));
}
