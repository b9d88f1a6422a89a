//! The state machine's side of linked chains: three shards' state machines driven through the
//! chain protocol step by step (prepare every item, one decision on the anchor, apply it), with a
//! coordinator that may stop after any step and recovery that settles what it left, as
//! `shard-client/src/chain.rs` and `node/src/recovery.rs` do.

mod common;

use proptest::prelude::*;
use wallet_node::state_machine::{rejection_of, StateMachine};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, AccountStateRequest, ChainDecide, ChainDecision, ChainRef, Outcome,
    PrepareCredit, PrepareDebit, Rejection, Stuck, Transfer, TransferRequest, TransferStatus,
    TransferStep,
};

const SHARDS: u64 = 3;

struct Cluster {
    ring: Ring,
    sm: Vec<StateMachine>,
    ts: u64,
}

fn transfer_of(outcome: &Outcome) -> Option<&Transfer> {
    match &outcome.result {
        Some(outcome::Result::Transfer(t)) => Some(t),
        _ => None,
    }
}

fn refusal(outcome: &Outcome) -> Option<Rejection> {
    match &outcome.result {
        Some(outcome::Result::Rejected(r)) => Some(r.clone()),
        _ => None,
    }
}

fn decision_of(outcome: &Outcome) -> ChainDecision {
    match &outcome.result {
        Some(outcome::Result::Chain(d)) => d.clone(),
        other => panic!("not a chain decision: {other:?}"),
    }
}

fn item(id: &str, from: &str, to: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        transfer_id: id.into(),
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount,
        issued_at_ms: 0,
    }
}

fn chain_of(items: &[TransferRequest]) -> ChainRef {
    ChainRef {
        account_id: items[0].from_account_id.clone(),
        chain_id: items[0].transfer_id.clone(),
        legs: items.len() as u32,
        digest: 7,
    }
}

/// How far the coordinator got before it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    AfterPrepares,
    AfterDecision,
    AfterFirstItem,
    Never,
}

impl Cluster {
    fn new() -> Cluster {
        let ring = Ring::new(1..=SHARDS, 16);
        Cluster {
            sm: (1..=SHARDS)
                .map(|s| StateMachine::new(s, ring.clone()))
                .collect(),
            ring,
            ts: 100,
        }
    }

    /// The `n`-th account id placed on `shard`.
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
        self.ts += 1;
        let ts = self.ts;
        common::apply_at(self.of(account), id, ts, op).0
    }

    fn open(&mut self, account: &str, funds: i64) {
        self.ts += 2;
        let ts = self.ts;
        common::open(self.of(account), ts, account, "EUR", funds);
    }

    fn balance(&self, account: &str) -> (i64, i64, i64) {
        let shard = self.ring.shard_of(account);
        common::money(&self.sm[(shard - 1) as usize], account)
    }

    /// Step 1 for one item: Ok if both sides prepared, else the refusal.
    fn prepare(&mut self, t: &TransferRequest, chain: &ChainRef) -> Result<(), Rejection> {
        let credit_shard_id = self.ring.shard_of(&t.to_account_id);
        let debit = Op::PrepareDebit(PrepareDebit {
            transfer: Some(t.clone()),
            credit_shard_id,
            chain: Some(chain.clone()),
        });
        let o = self.run(&t.from_account_id, &t.transfer_id, debit);
        if let Some(r) = refusal(&o) {
            return Err(r);
        }
        let prepared = transfer_of(&o).expect("a transfer").clone();
        assert_eq!(prepared.chain.as_ref(), Some(chain));
        if prepared.status != TransferStatus::Prepared as i32 {
            return Err(Reason::TransferAborted.refuse("aborted").into());
        }
        let credit = Op::PrepareCredit(PrepareCredit {
            transfer: Some(t.clone()),
            primary_shard_id: self.ring.shard_of(&t.from_account_id),
            currency: prepared.currency,
            primary_start_ts: prepared.start_ts,
            linked: true,
            hold: false,
        });
        let o = self.run(&t.to_account_id, &t.transfer_id, credit);
        match refusal(&o) {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    fn decide(
        &mut self,
        chain: &ChainRef,
        commit: bool,
        failed: Option<(u32, Rejection)>,
        items: &[TransferRequest],
    ) -> ChainDecision {
        let (failed_item, refusal) = failed.map_or((0, None), |(i, r)| (i, Some(r)));
        let items = if commit {
            items
                .iter()
                .map(|t| TransferStep {
                    transfer_id: t.transfer_id.clone(),
                    account_id: t.from_account_id.clone(),
                    ..Default::default()
                })
                .collect()
        } else {
            Vec::new()
        };
        let op = Op::ChainDecide(ChainDecide {
            chain: Some(chain.clone()),
            commit,
            failed_item,
            refusal,
            items,
        });
        let account = chain.account_id.clone();
        decision_of(&self.run(&account, &chain.chain_id, op))
    }

    /// Step 3 for one item.
    fn apply(&mut self, t: &TransferRequest, decision: &ChainDecision) {
        let debit = TransferStep {
            transfer_id: t.transfer_id.clone(),
            account_id: t.from_account_id.clone(),
            chain: decision.chain.clone(),
            ..Default::default()
        };
        let credit = TransferStep {
            transfer_id: t.transfer_id.clone(),
            account_id: t.to_account_id.clone(),
            from_account_id: t.from_account_id.clone(),
            refusal: None,
            ..Default::default()
        };
        let (from, to, id) = (&t.from_account_id, &t.to_account_id, &t.transfer_id);
        if decision.committed {
            let ts = decision.commit_ts;
            let o = common::apply_at(self.of(from), id, ts, Op::CommitDebit(debit)).0;
            let committed = transfer_of(&o).unwrap_or_else(|| panic!("commit: {o:?}"));
            assert_eq!(committed.status, TransferStatus::Committed as i32);
            let o = common::apply_at(self.of(to), id, ts, Op::CommitCredit(credit)).0;
            assert!(rejection_of(&o).is_none(), "{o:?}");
        } else {
            let o = self.run(from, id, Op::AbortDebit(debit));
            // Only an item this chain prepared has a credit side of this chain to release.
            if transfer_of(&o).is_some_and(|t| t.chain == decision.chain) {
                self.run(to, id, Op::AbortCredit(credit));
            }
        }
    }

    /// The coordinator, stopping at `stop`. Returns the decision if it made one.
    fn coordinate(&mut self, items: &[TransferRequest], stop: Stop) -> Option<ChainDecision> {
        let chain = chain_of(items);
        let mut failed = None;
        for (i, t) in items.iter().enumerate() {
            if let Err(r) = self.prepare(t, &chain) {
                failed.get_or_insert((i as u32 + 1, r));
            }
        }
        if stop == Stop::AfterPrepares {
            return None;
        }
        let decision = self.decide(&chain, failed.is_none(), failed, items);
        if stop == Stop::AfterDecision {
            return Some(decision);
        }
        for (i, t) in items.iter().enumerate() {
            self.apply(t, &decision);
            if i == 0 && stop == Stop::AfterFirstItem {
                break;
            }
        }
        Some(decision)
    }

    /// Recovery on every shard: each chain item left PREPARED asks its anchor to decide ABORT
    /// and applies the answer; then every pending intent follows its primary.
    fn recover(&mut self) {
        let stuck = Stuck {
            before_ms: i64::MAX,
            ..Default::default()
        };
        for s in 0..self.sm.len() {
            for t in self.sm[s].stuck(&stuck).prepared {
                let chain = t.chain.clone().expect("only chain items here");
                let decision = self.decide(&chain, false, None, &[]);
                let request = item(
                    &t.transfer_id,
                    &t.from_account_id,
                    &t.to_account_id,
                    t.amount,
                );
                self.apply(&request, &decision);
            }
        }
        for s in 0..self.sm.len() {
            assert!(self.sm[s].stuck(&stuck).prepared.is_empty());
            assert!(
                self.sm[s].stuck(&stuck).pending.is_empty(),
                "intents left pending on shard {}",
                s + 1
            );
        }
    }

    fn total(&self) -> i128 {
        self.sm.iter().map(|sm| sm.totals().0).sum()
    }

    fn status_of(&self, t: &TransferRequest) -> TransferStatus {
        let shard = self.ring.shard_of(&t.from_account_id);
        match self.sm[(shard - 1) as usize].transfer(&t.from_account_id, &t.transfer_id) {
            Some(t) => TransferStatus::try_from(t.status).unwrap_or(TransferStatus::Unspecified),
            None => TransferStatus::Unspecified,
        }
    }
}

#[test]
fn a_chain_across_three_shards_commits_every_item_at_one_timestamp() {
    let mut c = Cluster::new();
    let (a, b, d) = (c.id_on(1, 0), c.id_on(2, 0), c.id_on(3, 0));
    let a2 = c.id_on(1, 1);
    c.open(&a, 1_000);
    c.open(&b, 0);
    c.open(&d, 0);
    c.open(&a2, 0);
    // A marketplace split: a pays b, d, and a2 on its own shard.
    let items = [
        item("split-1", &a, &b, 700),
        item("split-2", &a, &d, 200),
        item("split-3", &a, &a2, 100),
    ];
    let decision = c.coordinate(&items, Stop::Never).expect("decided");
    assert!(decision.committed);
    assert_eq!(c.balance(&a), (0, 0, 0));
    assert_eq!(c.balance(&b), (700, 0, 0));
    assert_eq!(c.balance(&d), (200, 0, 0));
    assert_eq!(c.balance(&a2), (100, 0, 0));
    for t in &items {
        assert_eq!(c.status_of(t), TransferStatus::Committed);
    }
    assert_eq!(c.total(), 1_000);
    // Every step again (a retry) changes nothing and answers the same decision.
    let again = c.coordinate(&items, Stop::Never).expect("decided");
    assert_eq!(again, decision);
    assert_eq!(c.balance(&b), (700, 0, 0));
}

#[test]
fn one_refused_item_aborts_the_whole_chain_and_names_it() {
    let mut c = Cluster::new();
    let (a, b, d) = (c.id_on(1, 0), c.id_on(2, 0), c.id_on(3, 0));
    c.open(&a, 500);
    c.open(&b, 10);
    c.open(&d, 0);
    // An FX-style pair: a pays b, b pays d more than it has.
    let items = [item("fx-1", &a, &b, 400), item("fx-2", &b, &d, 300)];
    let decision = c.coordinate(&items, Stop::Never).expect("decided");
    assert!(!decision.committed);
    assert_eq!(decision.failed_item, 2);
    assert_eq!(
        decision.refusal.as_ref().map(|r| r.reason.as_str()),
        Some("INSUFFICIENT_FUNDS")
    );
    assert_eq!(c.balance(&a), (500, 0, 0));
    assert_eq!(c.balance(&b), (10, 0, 0));
    assert_eq!(c.balance(&d), (0, 0, 0));
    assert_eq!(c.status_of(&items[0]), TransferStatus::Aborted);
    c.recover();
    assert_eq!(c.total(), 510);
}

#[test]
fn the_first_decision_stands_whoever_asks_next() {
    let mut c = Cluster::new();
    let (a, b) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&a, 100);
    c.open(&b, 0);
    let items = [item("c-1", &a, &b, 10), item("c-2", &a, &b, 20)];
    let chain = chain_of(&items);
    // Recovery aborts first; the router's commit then hears ABORTED.
    let abort = c.decide(&chain, false, None, &[]);
    assert!(!abort.committed);
    let commit = c.decide(&chain, true, None, &items);
    assert_eq!(commit, abort);
    // Another chain committed first; recovery's abort hears COMMITTED at its timestamp.
    let other = [item("d-1", &a, &b, 10), item("d-2", &a, &b, 20)];
    let chain = chain_of(&other);
    // A commit names every item.
    let o = c.run(
        &a,
        "d-1",
        Op::ChainDecide(ChainDecide {
            chain: Some(chain.clone()),
            commit: true,
            items: vec![TransferStep::default()],
            ..Default::default()
        }),
    );
    assert_eq!(
        rejection_of(&o).map(|r| r.as_str()),
        Some("INVALID_ARGUMENT")
    );
    let commit = c.decide(&chain, true, None, &other);
    assert!(commit.committed && commit.commit_ts > 0);
    assert_eq!(c.decide(&chain, false, None, &[]), commit);
    // Another chain with the same first item (refused at that item's prepare, ID_REUSED) has a
    // decision of its own: its other items are never held by the first chain's.
    let mut reused = chain.clone();
    reused.digest ^= 1;
    let other = c.decide(&reused, false, None, &[]);
    assert!(!other.committed);
    assert_eq!(c.decide(&chain, false, None, &[]), commit);
    // A decision past the chain's end is refused.
    let op = Op::ChainDecide(ChainDecide {
        chain: Some(chain_of(&[item("e-1", &a, &b, 1), item("e-2", &a, &b, 1)])),
        commit: false,
        failed_item: 3,
        ..Default::default()
    });
    let o = c.run(&a, "e-1", op);
    assert_eq!(
        rejection_of(&o).map(|r| r.as_str()),
        Some("INVALID_ARGUMENT")
    );
    // A commit needs its timestamp.
    let op = Op::ChainDecide(ChainDecide {
        chain: Some(chain_of(&[item("f-1", &a, &b, 1), item("f-2", &a, &b, 1)])),
        commit: true,
        ..Default::default()
    });
    let o = common::apply_at(c.of(&a), "f-1", 0, op).0;
    assert_eq!(
        rejection_of(&o).map(|r| r.as_str()),
        Some("INVALID_ARGUMENT")
    );
    // A decision is made on the anchor's shard only.
    let op = Op::ChainDecide(ChainDecide {
        chain: Some(chain_of(&[item("g-1", &a, &b, 1), item("g-2", &a, &b, 1)])),
        commit: false,
        ..Default::default()
    });
    let o = c.run(&b, "g-1", op);
    assert_eq!(rejection_of(&o).map(|r| r.as_str()), Some("WRONG_SHARD"));
}

#[test]
fn a_lone_transfer_within_one_shard_is_still_not_two_phase_but_a_chain_item_is() {
    let mut c = Cluster::new();
    let (a, a2) = (c.id_on(1, 0), c.id_on(1, 1));
    c.open(&a, 100);
    c.open(&a2, 5);
    let lone = Op::PrepareDebit(PrepareDebit {
        transfer: Some(item("lone", &a, &a2, 5)),
        credit_shard_id: 1,
        chain: None,
    });
    let o = c.run(&a, "lone", lone);
    assert_eq!(
        rejection_of(&o).map(|r| r.as_str()),
        Some("INVALID_ARGUMENT")
    );
    let lone_credit = Op::PrepareCredit(PrepareCredit {
        transfer: Some(item("lone", &a, &a2, 5)),
        primary_shard_id: 1,
        currency: "EUR".into(),
        primary_start_ts: 0,
        linked: false,
        hold: false,
    });
    let o = c.run(&a2, "lone", lone_credit);
    assert_eq!(
        rejection_of(&o).map(|r| r.as_str()),
        Some("INVALID_ARGUMENT")
    );
    let items = [item("in-1", &a, &a2, 5), item("in-2", &a2, &a, 5)];
    assert!(
        c.coordinate(&items, Stop::Never)
            .expect("decided")
            .committed
    );
    // Each item's debit is covered before the chain (its credits land only at the commit).
    assert_eq!(c.balance(&a), (100, 0, 0));
    assert_eq!(c.balance(&a2), (5, 0, 0));
    // A chain item is ID_REUSED against a lone transfer and against another chain.
    let b = c.id_on(2, 0);
    c.open(&b, 0);
    let mut other = chain_of(&items);
    other.digest ^= 1;
    assert_eq!(
        c.prepare(&items[0], &other).err().map(|r| r.reason),
        Some("ID_REUSED".to_string())
    );
}

#[test]
fn a_chain_item_commits_even_if_its_debit_account_was_frozen_after_the_prepare() {
    let mut c = Cluster::new();
    let (a, b, d) = (c.id_on(1, 0), c.id_on(2, 0), c.id_on(3, 0));
    c.open(&a, 100);
    c.open(&b, 0);
    c.open(&d, 0);
    let items = [item("fz-1", &a, &b, 60), item("fz-2", &a, &d, 40)];
    c.coordinate(&items, Stop::AfterPrepares);
    let freeze = Op::FreezeAccount(AccountStateRequest {
        request_id: "freeze".into(),
        account_id: a.clone(),
        issued_at_ms: 0,
    });
    let o = c.run(&a, "freeze", freeze);
    assert!(rejection_of(&o).is_none(), "{o:?}");
    // The chain decides commit (every item prepared): both items must commit, frozen or not.
    let decision = c.coordinate(&items, Stop::Never).expect("decided");
    assert!(decision.committed);
    assert_eq!(c.balance(&a), (0, 0, 0));
    assert_eq!(c.balance(&b), (60, 0, 0));
    assert_eq!(c.balance(&d), (40, 0, 0));
    // A new chain from the frozen account is refused at its prepare.
    let more = [item("fz-3", &a, &b, 1), item("fz-4", &b, &d, 1)];
    let decision = c.coordinate(&more, Stop::Never).expect("decided");
    assert!(!decision.committed);
    assert_eq!(decision.failed_item, 1);
    assert_eq!(
        decision.refusal.map(|r| r.reason),
        Some("ACCOUNT_FROZEN".to_string())
    );
}

#[test]
fn items_of_i64_max_and_an_overflowing_credit_abort_the_chain() {
    let mut c = Cluster::new();
    let (a, b, d) = (c.id_on(1, 0), c.id_on(2, 0), c.id_on(3, 0));
    c.open(&a, i64::MAX);
    c.open(&b, 2);
    c.open(&d, 0);
    // b would exceed i64::MAX: the credit side refuses, the chain aborts, nothing moves.
    let items = [
        item("max-1", &a, &d, 1),
        item("max-2", &a, &b, i64::MAX - 1),
    ];
    let decision = c.coordinate(&items, Stop::Never).expect("decided");
    assert!(!decision.committed);
    assert_eq!(decision.failed_item, 2);
    assert_eq!(
        decision.refusal.map(|r| r.reason),
        Some("BALANCE_OVERFLOW".to_string())
    );
    assert_eq!(c.balance(&a), (i64::MAX, 0, 0));
    assert_eq!(c.balance(&d), (0, 0, 0));
    // The whole of i64::MAX moves in one chain of two items.
    let items = [
        item("all-1", &a, &d, i64::MAX - 1),
        item("all-2", &a, &d, 1),
    ];
    assert!(
        c.coordinate(&items, Stop::Never)
            .expect("decided")
            .committed
    );
    assert_eq!(c.balance(&a), (0, 0, 0));
    assert_eq!(c.balance(&d), (i64::MAX, 0, 0));
}

#[test]
fn an_aborted_chain_never_decides_a_transfer_or_chain_that_owns_an_id_it_reuses() {
    let mut c = Cluster::new();
    let (x, z) = (c.id_on(1, 0), c.id_on(1, 1));
    let (y, w) = (c.id_on(2, 0), c.id_on(2, 1));
    for (id, funds) in [(&x, 1_000), (&z, 1_000), (&y, 0), (&w, 0)] {
        c.open(id, funds);
    }
    // A lone transfer t: X -> Y, committed on its debit side, its credit still pending.
    let t = item("t", &x, &y, 100);
    let debit = Op::PrepareDebit(PrepareDebit {
        transfer: Some(t.clone()),
        credit_shard_id: 2,
        chain: None,
    });
    let prepared = transfer_of(&c.run(&x, "t", debit))
        .expect("prepared")
        .clone();
    let credit = Op::PrepareCredit(PrepareCredit {
        transfer: Some(t.clone()),
        primary_shard_id: 1,
        currency: "EUR".into(),
        primary_start_ts: prepared.start_ts,
        linked: false,
        hold: false,
    });
    assert!(rejection_of(&c.run(&y, "t", credit)).is_none());
    let commit = Op::CommitDebit(TransferStep {
        transfer_id: "t".into(),
        account_id: x.clone(),
        ..Default::default()
    });
    let committed = transfer_of(&c.run(&x, "t", commit))
        .expect("committed")
        .clone();
    // A chain reusing t's id on X fails on that item and aborts; t is left alone.
    let chain = [item("c", &z, &w, 1), item("t", &x, &y, 50)];
    let decision = c.coordinate(&chain, Stop::Never).expect("decided");
    assert!(!decision.committed);
    assert_eq!(
        decision.refusal.map(|r| r.reason),
        Some("ID_REUSED".to_string())
    );
    // Even a chain's abort step sent straight at t's record is refused and changes nothing.
    let foreign = Op::AbortDebit(TransferStep {
        transfer_id: "t".into(),
        account_id: x.clone(),
        chain: decision.chain.clone(),
        ..Default::default()
    });
    assert_eq!(
        rejection_of(&c.run(&x, "t", foreign)),
        Some(Reason::IdReused)
    );
    assert_eq!(c.balance(&y), (0, 0, 100), "t's credit is still promised");
    let credit = Op::CommitCredit(TransferStep {
        transfer_id: "t".into(),
        account_id: y.clone(),
        from_account_id: x.clone(),
        ..Default::default()
    });
    let o = common::apply_at(c.of(&y), "t", committed.commit_ts, credit).0;
    assert!(rejection_of(&o).is_none(), "{o:?}");
    assert_eq!(c.balance(&y), (100, 0, 0));
    assert_eq!(c.balance(&x), (900, 0, 0));

    // Chain D prepared; a chain C with D's first items but other content aborts (its first item
    // is ID_REUSED) without touching D's items, and D then commits whole.
    let d = [
        item("d-1", &z, &w, 10),
        item("d-2", &x, &w, 20),
        item("d-3", &w, &y, 5),
    ];
    c.run(&w, "fund-w", common::deposit(&w, 5));
    assert!(c.coordinate(&d, Stop::AfterPrepares).is_none());
    let other = [item("d-1", &z, &w, 10), item("d-2", &x, &w, 20)];
    let aborted = c.coordinate(&other, Stop::Never).expect("decided");
    assert!(!aborted.committed);
    let decision = c.coordinate(&d, Stop::Never).expect("decided");
    assert!(decision.committed, "{decision:?}");
    for item in &d {
        assert_eq!(c.status_of(item), TransferStatus::Committed);
    }
    c.recover();
    assert_eq!(c.total(), 2_005);
}

#[test]
fn a_committed_decision_outlives_its_window_until_recovery_confirms_its_items() {
    let mut c = Cluster::new();
    let (a, b) = (c.id_on(1, 0), c.id_on(2, 0));
    c.open(&a, 100);
    c.open(&b, 0);
    let ms = |ms: u64| ms << 18;
    let set = Op::SetRetention(wallet_proto::v1::SetRetention { window_ms: 1_000 });
    common::apply_at(c.of(&a), "", ms(1), set);
    let committed = [item("k-1", &a, &b, 10), item("k-2", &a, &b, 20)];
    let decision = c
        .coordinate(&committed, Stop::AfterDecision)
        .expect("decided");
    assert!(decision.committed);
    let aborted = [item("n-1", &a, &b, 1), item("n-2", &a, &b, 1_000)];
    assert!(
        !c.coordinate(&aborted, Stop::Never)
            .expect("decided")
            .committed
    );
    // Three windows later the abort is forgotten, the commit is not: its items are PREPARED.
    common::apply_at(c.of(&a), "late", ms(4_000), common::deposit(&a, 1));
    let anchor = c.of(&a);
    assert!(anchor.chain_decision(&chain_of(&aborted)).is_none());
    assert_eq!(
        anchor.chain_decision(&chain_of(&committed)),
        Some(decision.clone())
    );
    let settling = anchor.settling(&wallet_proto::v1::Settling { limit: 10 });
    assert_eq!(settling.chains.len(), 1);
    let waiting = &settling.chains[0];
    let items: Vec<&str> = waiting
        .items
        .iter()
        .map(|i| i.transfer_id.as_str())
        .collect();
    assert_eq!(items, vec!["k-1", "k-2"]);
    // Recovery settles the items by that decision, then confirms: the decision is forgotten.
    c.recover();
    assert_eq!(c.balance(&b), (30, 0, 0));
    let forget = Op::ForgetTransfers(wallet_proto::v1::ForgetTransfers {
        transfers: waiting.decision.clone().into_iter().collect(),
    });
    common::apply_at(c.of(&a), "", ms(4_001), forget);
    assert!(c.of(&a).chain_decision(&chain_of(&committed)).is_none());
}

#[derive(Clone, Debug)]
struct Planned {
    legs: Vec<(usize, usize, i64)>,
    stop: Stop,
}

fn planned() -> impl Strategy<Value = Planned> {
    (
        prop::collection::vec((0usize..6, 0usize..6, 1i64..400), 2..5),
        prop_oneof![
            Just(Stop::AfterPrepares),
            Just(Stop::AfterDecision),
            Just(Stop::AfterFirstItem),
            Just(Stop::Never)
        ],
    )
        .prop_map(|(legs, stop)| Planned { legs, stop })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Chains over six accounts on three shards, their coordinators stopping anywhere, then
    /// recovery: money is conserved, every chain is all or nothing, nothing stays reserved or
    /// pending, and a chain that reached its decision went the way that decision says.
    #[test]
    fn chains_are_all_or_nothing_whatever_the_coordinator_stops(plans in prop::collection::vec(planned(), 1..6)) {
        let mut c = Cluster::new();
        let accounts: Vec<String> = (0..6).map(|i| c.id_on(i as u64 % SHARDS + 1, i / 3)).collect();
        for a in &accounts {
            c.open(a, 500);
        }
        let mut chains = Vec::new();
        for (n, plan) in plans.iter().enumerate() {
            let items: Vec<TransferRequest> = plan
                .legs
                .iter()
                .enumerate()
                .map(|(k, &(f, t, amount))| {
                    let t = if t == f { (t + 1) % 6 } else { t };
                    item(&format!("ch{n}-{k}"), &accounts[f], &accounts[t], amount)
                })
                .collect();
            let decision = c.coordinate(&items, plan.stop);
            chains.push((items, decision));
        }
        c.recover();
        prop_assert_eq!(c.total(), 6 * 500);
        for a in &accounts {
            let (balance, reserved, pending) = c.balance(a);
            prop_assert!(balance >= 0);
            prop_assert_eq!((reserved, pending), (0, 0));
        }
        for (items, decision) in &chains {
            let statuses: Vec<TransferStatus> = items.iter().map(|t| c.status_of(t)).collect();
            let committed = statuses.iter().filter(|s| **s == TransferStatus::Committed).count();
            prop_assert!(committed == 0 || committed == items.len(), "{:?}", statuses);
            if let Some(d) = decision {
                prop_assert_eq!(d.committed, committed == items.len());
            }
        }
    }
}
