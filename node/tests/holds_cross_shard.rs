//! Holds whose payee lives on another shard, in the pure state machine: two shards' state
//! machines driven through the steps of `shard-client/src/holds.rs` (authorize on the payer's
//! shard, the promise on the payee's, `HoldPromised`, then capture + credit, void or expiry +
//! release), including steps that never come (a router that stopped) and the settling the
//! payee shard's recovery does from the hold's state.

mod common;

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, AuthorizeRequest, CaptureRequest, ExpireHolds, GetHoldRequest, Hold,
    HoldPromised, HoldState, Outcome, PrepareCredit, Rejection, TransferRequest, TransferStep,
    VoidRequest,
};

const T0: u64 = 1_000_000 << 18;

struct Two {
    ring: Ring,
    sm: [StateMachine; 2],
    ts: u64,
}

fn hold_of(outcome: &Outcome) -> Hold {
    match &outcome.result {
        Some(outcome::Result::Hold(h)) => h.clone(),
        other => panic!("not a hold: {other:?}"),
    }
}

impl Two {
    fn new() -> Two {
        let ring = Ring::new([1, 2], 16);
        Two {
            sm: [
                StateMachine::new(1, ring.clone()),
                StateMachine::new(2, ring.clone()),
            ],
            ring,
            ts: T0,
        }
    }

    fn id_on(&self, shard: u64, n: usize) -> String {
        (0..10_000)
            .map(|i| format!("acct-{i}"))
            .filter(|id| self.ring.shard_of(id) == shard)
            .nth(n)
            .expect("enough ids")
    }

    fn of(&mut self, account: &str) -> &mut StateMachine {
        let shard = self.ring.shard_of(account);
        &mut self.sm[(shard - 1) as usize]
    }

    fn run(&mut self, account: &str, id: &str, op: Op) -> Outcome {
        self.ts += 1 << 18;
        let ts = self.ts;
        common::apply_at(self.of(account), id, ts, op).0
    }

    fn open(&mut self, account: &str, currency: &str, funds: i64) {
        self.ts += 2 << 18;
        let ts = self.ts;
        common::open(self.of(account), ts, account, currency, funds);
    }

    fn money(&self, account: &str) -> (i64, i64, i64) {
        let shard = self.ring.shard_of(account);
        common::money(&self.sm[(shard - 1) as usize], account)
    }

    fn total(&self) -> i128 {
        self.sm.iter().map(|sm| sm.totals().0).sum()
    }

    fn authorize(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        amount: i64,
        expires_ms: i64,
    ) -> Outcome {
        let op = Op::Authorize(AuthorizeRequest {
            hold_id: id.into(),
            from_account_id: from.into(),
            to_account_id: to.into(),
            amount,
            expires_in_ms: expires_ms,
            issued_at_ms: 0,
        });
        self.run(from, id, op)
    }

    /// The promise on the payee's shard, then its answer on the payer's: the router's step 2.
    fn promise(&mut self, hold: &Hold) -> Outcome {
        let op = Op::PrepareCredit(PrepareCredit {
            transfer: Some(TransferRequest {
                transfer_id: hold.hold_id.clone(),
                from_account_id: hold.from_account_id.clone(),
                to_account_id: hold.to_account_id.clone(),
                amount: hold.amount,
                issued_at_ms: 0,
            }),
            primary_shard_id: self.ring.shard_of(&hold.from_account_id),
            currency: hold.currency.clone(),
            primary_start_ts: hold.start_ts,
            linked: false,
            hold: true,
        });
        let answer = self.run(&hold.to_account_id.clone(), &hold.hold_id.clone(), op);
        let (refusal, promise_ts): (Option<Rejection>, u64) = match answer.result {
            Some(outcome::Result::Rejected(r)) => (Some(r), 0),
            Some(outcome::Result::Transfer(t)) => (None, t.start_ts),
            other => panic!("promise: {other:?}"),
        };
        let op = Op::HoldPromised(HoldPromised {
            hold_id: hold.hold_id.clone(),
            from_account_id: hold.from_account_id.clone(),
            refusal,
            promise_ts,
        });
        self.run(&hold.from_account_id.clone(), &hold.hold_id.clone(), op)
    }

    fn capture(&mut self, id: &str, from: &str, amount: i64) -> Outcome {
        let op = Op::Capture(CaptureRequest {
            hold_id: id.into(),
            from_account_id: from.into(),
            amount,
            issued_at_ms: 0,
        });
        self.run(from, id, op)
    }

    fn void(&mut self, id: &str, from: &str) -> Outcome {
        let op = Op::Void(VoidRequest {
            hold_id: id.into(),
            from_account_id: from.into(),
            issued_at_ms: 0,
        });
        self.run(from, id, op)
    }

    /// The payee shard's side of a decided hold: what the router (or recovery, reading the hold)
    /// applies there.
    fn follow(&mut self, hold: &Hold) -> Outcome {
        let step = TransferStep {
            transfer_id: hold.hold_id.clone(),
            account_id: hold.to_account_id.clone(),
            from_account_id: hold.from_account_id.clone(),
            ..Default::default()
        };
        let to = hold.to_account_id.clone();
        match HoldState::try_from(hold.state) {
            Ok(HoldState::Captured) => {
                let op = Op::CommitCredit(TransferStep {
                    amount: hold.captured,
                    promise_ts: hold.promised_ts,
                    ..step
                });
                common::apply_at(self.of(&to), &hold.hold_id, hold.decided_ts, op).0
            }
            _ => self.run(&to, &hold.hold_id.clone(), Op::AbortCredit(step)),
        }
    }

    /// Recovery on the payee's shard: every pending promise follows its hold (read).
    fn recover(&mut self) {
        let stuck = wallet_proto::v1::Stuck {
            before_ms: i64::MAX,
            ..Default::default()
        };
        for s in 0..2 {
            assert!(self.sm[s].stuck(&stuck).pending.is_empty());
            for intent in self.sm[s].stuck(&stuck).promises {
                assert!(intent.hold, "only promises here");
                let t = intent.transfer.clone().expect("transfer");
                let get = GetHoldRequest {
                    hold_id: t.transfer_id.clone(),
                    from_account_id: t.from_account_id.clone(),
                };
                let shard = self.ring.shard_of(&t.from_account_id);
                match self.sm[(shard - 1) as usize].hold(&get) {
                    Ok(h) if h.state == HoldState::Pending as i32 => {}
                    Ok(h) => {
                        self.follow(&h);
                    }
                    Err(_) => {
                        let never = Hold {
                            hold_id: t.transfer_id,
                            from_account_id: t.from_account_id,
                            to_account_id: t.to_account_id,
                            state: HoldState::Voided as i32,
                            ..Default::default()
                        };
                        self.follow(&never);
                    }
                }
            }
        }
    }
}

#[test]
fn a_cross_shard_hold_reserves_on_one_shard_promises_on_the_other_and_captures_in_part() {
    let mut c = Two::new();
    let (alice, shop) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&alice, "USD", 1_000);
    c.open(&shop, "USD", 0);
    let hold = hold_of(&c.authorize("h1", &alice, &shop, 600, 60_000));
    assert!(hold.cross_shard && !hold.promised);
    assert_eq!(c.money(&alice), (1_000, 600, 0));
    // Not promised yet: a capture answers the pending hold and moves nothing.
    let early = hold_of(&c.capture("h1", &alice, 0));
    assert_eq!(early.state, HoldState::Pending as i32);
    assert_eq!(c.money(&alice), (1_000, 600, 0));
    let promised = hold_of(&c.promise(&hold));
    assert!(promised.promised);
    assert_eq!(c.money(&shop), (0, 0, 600));
    // Promised again (a retry): unchanged.
    assert_eq!(hold_of(&c.promise(&hold)), promised);
    let captured = hold_of(&c.capture("h1", &alice, 250));
    assert_eq!(
        (captured.state, captured.captured),
        (HoldState::Captured as i32, 250)
    );
    assert_eq!(c.money(&alice), (750, 0, 0));
    // In flight between the capture and its credit: audits wait for the promise's hold.
    assert_eq!(c.total(), 750);
    let o = c.follow(&captured);
    assert!(rejection_of(&o).is_none(), "{o:?}");
    assert_eq!(c.money(&shop), (250, 0, 0));
    assert_eq!(c.total(), 1_000);
    // Retried: nothing moves again; a second capture of another amount is refused.
    c.follow(&captured);
    assert_eq!(hold_of(&c.capture("h1", &alice, 250)), captured);
    assert_eq!(
        rejection_of(&c.capture("h1", &alice, 100)),
        Some(Reason::HoldNotPending)
    );
    assert_eq!(c.money(&shop), (250, 0, 0));
    // A credit of more than was promised is refused on the payee's side.
    let hold = hold_of(&c.authorize("h2", &alice, &shop, 10, 60_000));
    c.promise(&hold);
    let h2 = hold_of(&c.promise(&hold));
    let too_much = Op::CommitCredit(TransferStep {
        transfer_id: "h2".into(),
        account_id: shop.clone(),
        from_account_id: alice.clone(),
        amount: 11,
        promise_ts: h2.promised_ts,
        ..Default::default()
    });
    assert_eq!(
        rejection_of(&c.run(&shop, "h2", too_much)),
        Some(Reason::InvalidArgument)
    );
    assert_eq!(c.money(&shop), (250, 0, 10));
}

#[test]
fn a_refused_promise_releases_the_hold_and_is_its_answer_from_then_on() {
    let mut c = Two::new();
    let (alice, euro) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&alice, "USD", 100);
    c.open(&euro, "EUR", 0);
    let hold = hold_of(&c.authorize("h1", &alice, &euro, 60, 60_000));
    let answer = c.promise(&hold);
    assert_eq!(rejection_of(&answer), Some(Reason::CurrencyMismatch));
    assert_eq!(c.money(&alice), (100, 0, 0));
    // The authorization again answers the refusal; the hold is not found.
    let again = c.authorize("h1", &alice, &euro, 60, 60_000);
    assert_eq!(rejection_of(&again), Some(Reason::CurrencyMismatch));
    let get = GetHoldRequest {
        hold_id: "h1".into(),
        from_account_id: alice.clone(),
    };
    assert_eq!(
        c.of(&alice).hold(&get).unwrap_err().reason,
        Reason::HoldNotFound
    );
    // An unknown payee, likewise.
    let hold = hold_of(&c.authorize("h2", &alice, "nobody-on-2", 60, 60_000));
    if c.ring.shard_of("nobody-on-2") == 2 {
        assert_eq!(
            rejection_of(&c.promise(&hold)),
            Some(Reason::AccountNotFound)
        );
    }
}

#[test]
fn void_and_expiry_release_both_sides_and_recovery_settles_what_a_router_left() {
    let mut c = Two::new();
    let (alice, shop) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&alice, "USD", 1_000);
    c.open(&shop, "USD", 0);
    let h1 = hold_of(&c.authorize("h1", &alice, &shop, 100, 60_000));
    c.promise(&h1);
    let voided = hold_of(&c.void("h1", &alice));
    assert_eq!(voided.state, HoldState::Voided as i32);
    c.follow(&voided);
    // Expiry by the oracle's timestamp: the router never comes back; recovery releases it.
    let h2 = hold_of(&c.authorize("h2", &alice, &shop, 200, 1_000));
    c.promise(&h2);
    // Captured, but the router stopped before the credit: recovery credits it.
    let h3 = hold_of(&c.authorize("h3", &alice, &shop, 300, 60_000));
    c.promise(&h3);
    c.capture("h3", &alice, 0);
    // Authorized, the router stopped before the promise: released by its expiry.
    c.authorize("h4", &alice, &shop, 50, 2_000);
    assert_eq!(c.money(&alice), (700, 250, 0));
    assert_eq!(c.money(&shop), (0, 0, 200 + 300));
    c.ts += 5_000 << 18;
    let ts = c.ts;
    let o = common::apply_at(c.of(&alice), "", ts, Op::ExpireHolds(ExpireHolds {})).0;
    assert_eq!(o.result, Some(outcome::Result::Expired(2)));
    c.recover();
    assert_eq!(c.money(&alice), (700, 0, 0));
    assert_eq!(c.money(&shop), (300, 0, 0));
    assert_eq!(c.total(), 1_000);
}

#[test]
fn a_late_duplicate_promise_is_never_credited_and_a_capture_comes_after_its_promise() {
    let mut c = Two::new();
    let (alice, shop) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&alice, "USD", 1_000);
    c.open(&shop, "USD", 0);
    let set = Op::SetRetention(wallet_proto::v1::SetRetention { window_ms: 1_000 });
    let ts = c.ts;
    common::apply_at(c.of(&shop), "", ts, set);
    let hold = hold_of(&c.authorize("h1", &alice, &shop, 300, 60_000));
    let promised = hold_of(&c.promise(&hold));
    // A capture stamped at or below the promise's timestamp is stamped again by the router.
    let early = Op::Capture(CaptureRequest {
        hold_id: "h1".into(),
        from_account_id: alice.clone(),
        amount: 0,
        issued_at_ms: 0,
    });
    let o = common::apply_at(c.of(&alice), "h1", promised.promised_ts, early).0;
    assert_eq!(rejection_of(&o), Some(Reason::TimestampTooOld));
    let captured = hold_of(&c.capture("h1", &alice, 0));
    assert!(captured.decided_ts > promised.promised_ts);
    c.follow(&captured);
    assert_eq!(c.money(&shop), (300, 0, 0));
    // Soon after: the same promise again finds the credited one and changes nothing.
    c.promise(&hold);
    assert_eq!(c.money(&shop), (300, 0, 0));
    // Two windows after the credit the payee forgot it; a promise sent again only now (a router
    // that stalled) is a new one, made after the capture: released, never credited again.
    c.ts += 10_000 << 18;
    let ts = c.ts;
    common::apply_at(c.of(&shop), "later", ts, common::deposit(&shop, 1));
    let late = Op::PrepareCredit(PrepareCredit {
        transfer: Some(TransferRequest {
            transfer_id: "h1".into(),
            from_account_id: alice.clone(),
            to_account_id: shop.clone(),
            amount: 300,
            issued_at_ms: 0,
        }),
        primary_shard_id: 1,
        currency: "USD".into(),
        primary_start_ts: hold.start_ts,
        linked: false,
        hold: true,
    });
    // Stamped before the capture (the stalled router took its timestamp then), applied now.
    common::apply_at(c.of(&shop), "h1", captured.decided_ts - 1, late);
    assert_eq!(c.money(&shop), (301, 0, 300));
    c.follow(&captured);
    assert_eq!(c.money(&shop), (301, 0, 0), "credited once only");
    assert_eq!(c.total(), 1_001);
}

#[test]
fn pending_promises_are_listed_apart_and_page_by_key() {
    let mut c = Two::new();
    let (alice, shop) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&alice, "USD", 1_000);
    c.open(&shop, "USD", 0);
    for n in 0..5 {
        let hold = hold_of(&c.authorize(&format!("p{n}"), &alice, &shop, 10, 60_000));
        c.promise(&hold);
    }
    let all = wallet_proto::v1::Stuck {
        before_ms: i64::MAX,
        ..Default::default()
    };
    let shop_shard = c.of(&shop);
    let first = shop_shard.stuck(&all);
    assert!(
        first.pending.is_empty(),
        "promises are not in the transfers' list"
    );
    assert_eq!(first.promises.len(), 5);
    assert!(!first.more_promises);
    let after = wallet_proto::v1::Stuck {
        promises_after: Some(wallet_proto::v1::IntentRef {
            credit_account_id: shop.clone(),
            debit_account_id: alice.clone(),
            transfer_id: "p2".into(),
        }),
        ..all
    };
    let ids: Vec<String> = shop_shard
        .stuck(&after)
        .promises
        .into_iter()
        .filter_map(|i| i.transfer.map(|t| t.transfer_id))
        .collect();
    assert_eq!(ids, vec!["p3", "p4"]);
}

#[derive(Clone, Debug)]
enum Act {
    Authorize { amount: i64, short: bool },
    Promise(usize),
    Capture(usize, i64),
    Void(usize),
    Follow(usize),
    Expire,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        (1i64..600, any::<bool>()).prop_map(|(amount, short)| Act::Authorize { amount, short }),
        (0usize..8).prop_map(Act::Promise),
        (0usize..8, 0i64..700).prop_map(|(h, a)| Act::Capture(h, a)),
        (0usize..8).prop_map(Act::Void),
        (0usize..8).prop_map(Act::Follow),
        Just(Act::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Any order of the steps (some never come), then recovery: money is conserved, nothing stays
    /// reserved or promised once every hold is decided, a hold moves at most what it held, once,
    /// and the payee receives exactly what its payer's captures moved.
    #[test]
    fn cross_shard_holds_conserve_money_whatever_steps_come(acts in prop::collection::vec(act(), 1..40)) {
        let mut c = Two::new();
        let (alice, shop) = (c.id_on(1, 0), c.id_on(2, 0));
        c.open(&alice, "USD", 1_000);
        c.open(&shop, "USD", 0);
        let mut holds: Vec<String> = Vec::new();
        for act in acts {
            let pick = |i: usize| (!holds.is_empty()).then(|| holds[i % holds.len()].clone());
            match act {
                Act::Authorize { amount, short } => {
                    let id = format!("h{}", holds.len());
                    c.authorize(&id, &alice, &shop, amount, if short { 1_000 } else { 60_000 });
                    holds.push(id);
                }
                Act::Promise(i) => if let Some(id) = pick(i) {
                    let get = GetHoldRequest { hold_id: id, from_account_id: alice.clone() };
                    if let Ok(h) = c.of(&alice).hold(&get) {
                        c.promise(&h);
                    }
                },
                Act::Capture(i, amount) => if let Some(id) = pick(i) {
                    c.capture(&id, &alice, amount);
                },
                Act::Void(i) => if let Some(id) = pick(i) {
                    c.void(&id, &alice);
                },
                Act::Follow(i) => if let Some(id) = pick(i) {
                    let get = GetHoldRequest { hold_id: id, from_account_id: alice.clone() };
                    if let Ok(h) = c.of(&alice).hold(&get) {
                        if h.state != HoldState::Pending as i32 {
                            c.follow(&h);
                        }
                    }
                },
                Act::Expire => {
                    c.ts += 1_500 << 18;
                    let ts = c.ts;
                    common::apply_at(c.of(&alice), "", ts, Op::ExpireHolds(ExpireHolds {}));
                }
            }
            let (balance, reserved, _) = c.money(&alice);
            prop_assert!(balance - reserved >= 0);
        }
        // Every hold ends: expired (a minute on), and recovery follows each.
        c.ts += 120_000 << 18;
        let ts = c.ts;
        common::apply_at(c.of(&alice), "", ts, Op::ExpireHolds(ExpireHolds {}));
        c.recover();
        prop_assert_eq!(c.total(), 1_000);
        prop_assert_eq!(c.money(&alice).1, 0);
        prop_assert_eq!(c.money(&shop).2, 0);
        let mut captured = 0;
        for id in &holds {
            let get = GetHoldRequest { hold_id: id.clone(), from_account_id: alice.clone() };
            if let Ok(h) = c.of(&alice).hold(&get) {
                prop_assert!(h.captured <= h.amount);
                captured += h.captured;
            }
        }
        prop_assert_eq!(c.money(&shop).0, captured);
        prop_assert_eq!(c.money(&alice).0, 1_000 - captured);
    }
}
