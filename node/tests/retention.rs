//! Request retention (G4 within the window, G10 beyond it): records are forgotten once the window
//! passed since the request was issued, a retry issued before the window is refused with
//! `REQUEST_EXPIRED`, and every replica forgets at the same log position: the window comes from a
//! `SetRetention` entry and the clock from the commands' oracle timestamps.

use wallet_node::state_machine::{rejection_of, StateMachine, Write, Writes};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, Command, CreateAccountRequest, DepositRequest, ForgetTransfers,
    IntentRef, IntentState, IntentStatesQuery, Outcome, PrepareCredit, PrepareDebit, RequestRecord,
    SetRetention, Settling, TransferRequest, TransferStep,
};

const WINDOW: i64 = 1_000;

/// Sets the window by its command, stamped at 1 ms (a shard needs a time to set one).
fn set_window(sm: &mut StateMachine, window_ms: i64) -> (Outcome, Writes) {
    apply(sm, 1, "", Op::SetRetention(SetRetention { window_ms }))
}

fn machine() -> StateMachine {
    let mut sm = StateMachine::new(1, Ring::new([1], 8));
    set_window(&mut sm, WINDOW);
    sm
}

/// Applies a command stamped by the oracle at `ms` (a leader's own clock, `at_ms`, is wild: it
/// must not count).
fn apply(sm: &mut StateMachine, ms: i64, request_id: &str, op: Op) -> (Outcome, Writes) {
    apply_logical(sm, ms, 3, request_id, op)
}

/// As [`apply`], with the timestamp's logical part given (a later step within one millisecond).
fn apply_logical(
    sm: &mut StateMachine,
    ms: i64,
    logical: u64,
    request_id: &str,
    op: Op,
) -> (Outcome, Writes) {
    let mut writes = Vec::new();
    let ts = if ms >= 1 << 46 {
        u64::MAX
    } else {
        (ms.max(0) as u64) << 18 | logical
    };
    let command = Command {
        request_id: request_id.into(),
        at_ms: i64::MAX,
        ts,
        op: Some(op),
    };
    let outcome = sm.apply(&command, &mut writes);
    sm.assert_invariants();
    (outcome, writes)
}

fn create(sm: &mut StateMachine, id: &str) {
    let (outcome, _) = apply(
        sm,
        1,
        "",
        Op::CreateAccount(CreateAccountRequest {
            account_id: id.into(),
            currency: "USD".into(),
            credit_limit: 0,
            opening_balance: 0,
        }),
    );
    assert!(rejection_of(&outcome).is_none());
}

fn deposit(id: &str, amount: i64, issued_at_ms: i64) -> Op {
    Op::Deposit(DepositRequest {
        request_id: id.into(),
        account_id: "alice".into(),
        amount,
        issued_at_ms,
    })
}

fn balance(sm: &StateMachine) -> i64 {
    sm.account("alice").map_or(0, |a| a.balance)
}

fn forgotten(writes: &Writes) -> usize {
    writes
        .iter()
        .filter(|w| matches!(w, Write::ForgetRequest(_)))
        .count()
}

#[test]
fn a_retry_within_the_window_answers_the_first_outcome_whatever_its_issue_time() {
    let mut sm = machine();
    create(&mut sm, "alice");
    let (first, _) = apply(&mut sm, 10_000, "d1", deposit("d1", 5, 10_000));
    // Stamped anew by a client that lost the first time: still the same request.
    let (again, writes) = apply(&mut sm, 10_900, "d1", deposit("d1", 5, 10_800));
    assert_eq!(first, again);
    assert!(writes.is_empty(), "a retry writes nothing");
    assert_eq!(balance(&sm), 5);
    // Other content under the id is still ID_REUSED, whatever the issue time.
    let (other, _) = apply(&mut sm, 10_900, "d1", deposit("d1", 6, 10_000));
    assert_eq!(rejection_of(&other), Some(Reason::IdReused));
}

#[test]
fn a_retry_issued_before_the_window_is_refused_and_the_record_is_forgotten() {
    let mut sm = machine();
    create(&mut sm, "alice");
    apply(&mut sm, 10_000, "d1", deposit("d1", 5, 10_000));
    assert_eq!(sm.request_count(), 1);
    // At 10 999 the window has not passed: the retry answers.
    let (again, _) = apply(&mut sm, 10_999, "d1", deposit("d1", 5, 10_000));
    assert!(rejection_of(&again).is_none());
    // At 11 000 it has: the record goes with the next command, and the retry is refused.
    let (expired, writes) = apply(&mut sm, 11_000, "d1", deposit("d1", 5, 10_000));
    assert_eq!(rejection_of(&expired), Some(Reason::RequestExpired));
    assert_eq!(forgotten(&writes), 1);
    assert_eq!(sm.request_count(), 0);
    assert_eq!(balance(&sm), 5, "the expired retry changed nothing");
    // At the end of time, still refused (never applied twice).
    let (later, _) = apply(&mut sm, i64::MAX, "d1", deposit("d1", 5, 10_000));
    assert_eq!(rejection_of(&later), Some(Reason::RequestExpired));
    assert_eq!(balance(&sm), 5);
}

#[test]
fn issue_times_out_of_range_are_refused_and_change_nothing() {
    let mut sm = machine();
    create(&mut sm, "alice");
    // The shard's clock is the oracle's: 10 000 ms.
    for issued in [-1, i64::MIN, 10_000 + 5 * 60 * 1000 + 1, i64::MAX] {
        let (outcome, writes) = apply(&mut sm, 10_000, "x", deposit("x", 5, issued));
        assert_eq!(
            rejection_of(&outcome),
            Some(Reason::InvalidArgument),
            "{issued}"
        );
        assert!(writes.iter().all(|w| matches!(w, Write::Clock(_))));
    }
    let (outcome, _) = apply(&mut sm, 10_000, "y", deposit("y", 5, 1));
    assert_eq!(rejection_of(&outcome), Some(Reason::RequestExpired));
    assert_eq!(balance(&sm), 0);
    assert_eq!(sm.request_count(), 0);
}

#[test]
fn a_request_without_an_issue_time_counts_from_when_it_applied() {
    let mut sm = machine();
    create(&mut sm, "alice");
    apply(&mut sm, 10_000, "d1", deposit("d1", 5, 0));
    apply(&mut sm, 10_999, "other", deposit("other", 1, 0));
    assert_eq!(sm.request_count(), 2);
    let (_, writes) = apply(&mut sm, 11_000, "d2", deposit("d2", 1, 0));
    assert_eq!(forgotten(&writes), 1);
    // Without an issue time the store cannot tell a late retry from a new request: it applies
    // (README § Retention: keep the first issue time to be protected).
    let (late, _) = apply(&mut sm, 11_001, "d1", deposit("d1", 5, 0));
    assert!(rejection_of(&late).is_none());
    assert_eq!(balance(&sm), 5 + 1 + 1 + 5);
}

#[test]
fn records_stay_bounded_under_a_steady_stream() {
    let mut sm = machine();
    create(&mut sm, "alice");
    let mut most = 0;
    for i in 0..20_000i64 {
        // Ten requests per millisecond, each issued when it applies.
        let at = 10_000 + i / 10;
        let id = format!("d{i}");
        let (outcome, _) = apply(&mut sm, at, &id, deposit(&id, 1, at));
        assert!(rejection_of(&outcome).is_none());
        most = most.max(sm.request_count());
    }
    // One window holds ~10 000 requests; forgetting keeps up.
    assert!(most <= 10_010, "{most} records remembered");
    assert_eq!(sm.retention().tracked(), sm.request_count());
    assert_eq!(balance(&sm), 20_000);
}

#[test]
fn cross_shard_records_are_kept_and_checked_for_expiry() {
    let (mut sm, _credit, from, to) = two_shards();
    let prepare = |issued_at_ms| {
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(transfer_request("t", &from, &to, i64::MAX, issued_at_ms)),
            credit_shard_id: 2,
            ..Default::default()
        })
    };
    let (prepared, _) = apply(&mut sm, 10_000, "t", prepare(10_000));
    assert!(matches!(
        prepared.result,
        Some(outcome::Result::Transfer(_))
    ));
    let (_, _) = apply(
        &mut sm,
        10_001,
        "t",
        Op::CommitDebit(TransferStep {
            transfer_id: "t".into(),
            account_id: from.clone(),
            ..Default::default()
        }),
    );
    // A retry stamped anew within the window answers the first outcome...
    let (again, _) = apply(&mut sm, 10_500, "t", prepare(10_400));
    assert!(matches!(again.result, Some(outcome::Result::Transfer(_))));
    // ...one issued before the window is refused...
    let (expired, _) = apply(&mut sm, 12_000, "t", prepare(10_000));
    assert_eq!(rejection_of(&expired), Some(Reason::RequestExpired));
    // ...and the committed record stays (its credit side may still ask), while the deposit's
    // record went.
    assert!(sm.transfer(&from, "t").is_some());
    assert_eq!(sm.request_count(), 1);
}

/// Two replicas apply the same log; one restarts from its stored state halfway (a checkpoint)
/// and must forget exactly what the other forgets.
#[test]
fn a_replica_rebuilt_from_its_records_forgets_in_step() {
    let mut a = machine();
    create(&mut a, "alice");
    let mut stored: Vec<Write> = Vec::new();
    let apply_logged = |sm: &mut StateMachine, at: i64, id: &str, issued: i64| {
        let (outcome, writes) = apply(sm, at, id, deposit(id, 1, issued));
        (outcome, writes)
    };
    for i in 0..500i64 {
        let id = format!("d{i}");
        // Issue times jump around (clients' clocks differ); the shard's clock is the log's.
        let issued = 10_000 + (i * 37) % 900;
        let (_, writes) = apply_logged(&mut a, 10_000 + i, &id, issued);
        stored.extend(writes);
    }
    stored.extend(a.clock_write());
    // Rebuild b from what a stored (as a checkpoint load does).
    let mut b = machine();
    create(&mut b, "alice");
    let mut records = std::collections::BTreeMap::new();
    let mut clock = 0;
    for write in stored {
        match write {
            Write::Request {
                account_id,
                request_id,
                record,
            } => {
                records.insert((account_id, request_id), *record);
            }
            Write::ForgetRequest(key) => {
                records.remove(&key);
            }
            Write::Clock(ms) => clock = ms,
            _ => {}
        }
    }
    for ((account_id, request_id), record) in records {
        b.load_request(account_id, request_id, record);
    }
    b.load_clock(clock);
    if let Some(acc) = a.account("alice").cloned() {
        b.load_account(acc);
    }
    assert_eq!(a.request_count(), b.request_count());
    for i in 500..3_000i64 {
        let id = format!("d{i}");
        // Issued up to 1.1 s before it applies: some in time, some expired.
        let issued = 9_400 + i - (i * 37) % 1_100;
        // Commands stamped 600 ms earlier than ones already applied (timestamps are taken
        // before commands queue): the shard's clock must not go back.
        let (oa, wa) = apply_logged(&mut a, 9_400 + i, &id, issued);
        let (ob, wb) = apply_logged(&mut b, 9_400 + i, &id, issued);
        assert_eq!(oa, ob);
        // (The rebuilt machine lacks the snapshot-read totals this test does not load.)
        let forgets = |w: &Writes| -> Vec<Write> {
            w.iter()
                .filter(|w| matches!(w, Write::ForgetRequest(_) | Write::Request { .. }))
                .cloned()
                .collect()
        };
        assert_eq!(forgets(&wa), forgets(&wb), "step {i}");
        assert_eq!(a.request_count(), b.request_count());
    }
}

#[test]
fn without_a_replicated_window_nothing_is_forgotten_or_expired() {
    let mut sm = StateMachine::new(1, Ring::new([1], 8));
    create(&mut sm, "alice");
    apply(&mut sm, 10_000, "d1", deposit("d1", 5, 10_000));
    let (again, writes) = apply(&mut sm, 900_000, "d1", deposit("d1", 5, 10_000));
    assert!(
        rejection_of(&again).is_none(),
        "no window yet: the first outcome"
    );
    assert_eq!(forgotten(&writes), 0);
    assert_eq!(sm.request_count(), 1);
    // The window arrives through the log; from that entry on, every replica forgets.
    let (_, writes) = set_window(&mut sm, WINDOW);
    assert!(writes.contains(&Write::Retention(WINDOW)));
    let (expired, writes) = apply(&mut sm, 900_001, "d1", deposit("d1", 5, 10_000));
    assert_eq!(rejection_of(&expired), Some(Reason::RequestExpired));
    assert_eq!(forgotten(&writes), 1);
    assert_eq!(balance(&sm), 5);
}

#[test]
fn windows_out_of_range_are_refused_and_change_nothing() {
    let mut sm = machine();
    for window_ms in [0, -1, i64::MIN, i64::MAX, 10 * 365 * 24 * 3_600_000 + 1] {
        let (outcome, writes) = set_window(&mut sm, window_ms);
        assert_eq!(rejection_of(&outcome), Some(Reason::InvalidArgument));
        assert!(writes.is_empty());
        assert_eq!(sm.retention().window_ms(), Some(WINDOW));
    }
    let (outcome, _) = set_window(&mut sm, 10 * 365 * 24 * 3_600_000);
    assert!(rejection_of(&outcome).is_none());
}

#[test]
fn records_kept_from_before_retention_start_their_window_when_it_is_first_set() {
    let mut sm = StateMachine::new(1, Ring::new([1], 8));
    create(&mut sm, "alice");
    apply(&mut sm, 10_000, "d1", deposit("d1", 5, 0));
    // A record as the first release stored it: no issue time.
    let first = Command {
        request_id: "old".into(),
        at_ms: 1,
        ts: 0,
        op: Some(deposit("old", 1, 0)),
    };
    sm.load_request(
        "alice".into(),
        "old".into(),
        RequestRecord {
            command: Some(first),
            outcome: Some(Outcome::default()),
            issued_at_ms: 0,
        },
    );
    assert_eq!(sm.retention().tracked(), 1);
    apply(&mut sm, 20_000, "d2", deposit("d2", 1, 0));
    let (_, writes) = set_window(&mut sm, WINDOW);
    // Stamped with the clock of the entry that set the window, and stored so.
    assert!(writes.iter().any(|w| matches!(
        w,
        Write::Request { request_id, record, .. } if request_id == "old" && record.issued_at_ms == 20_000
    )));
    assert_eq!(sm.retention().tracked(), 3);
    let (_, writes) = apply(&mut sm, 21_000, "d3", deposit("d3", 1, 0));
    // d1 (issued 10 000), old and d2 (20 000) are all due at 21 000.
    assert_eq!(forgotten(&writes), 3);
    assert_eq!(sm.request_count(), 1);
}

#[test]
fn a_cross_shard_retry_stamped_anew_finds_its_intent() {
    let (_primary, mut credit, from, to) = two_shards();
    let prepare = |amount, issued_at_ms| {
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(transfer_request("t", &from, &to, amount, issued_at_ms)),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts: 0,
            ..Default::default()
        })
    };
    let (first, _) = apply(&mut credit, 10_000, "t", prepare(i64::MAX, 10_000));
    assert!(rejection_of(&first).is_none(), "{first:?}");
    // The client lost the answer and sent the transfer again, stamped anew.
    let (again, writes) = apply(&mut credit, 10_500, "t", prepare(i64::MAX, 10_400));
    assert_eq!(first, again);
    assert!(writes.iter().all(|w| matches!(w, Write::Clock(_))));
    // Other content under the id is still refused.
    let (refused, _) = apply(&mut credit, 10_500, "t", prepare(1, 10_000));
    assert_eq!(rejection_of(&refused), Some(Reason::IdReused));
}

/// Two shards' state machines and accounts on each: `from` on shard 1 (the primary), `to` on 2.
fn two_shards() -> (StateMachine, StateMachine, String, String) {
    let ring = Ring::new([1, 2], 8);
    let mut primary = StateMachine::new(1, ring.clone());
    let mut credit = StateMachine::new(2, ring.clone());
    set_window(&mut primary, WINDOW);
    set_window(&mut credit, WINDOW);
    let from = (0..)
        .map(|i| format!("d{i}"))
        .find(|a| ring.shard_of(a) == 1)
        .unwrap();
    let to = (0..)
        .map(|i| format!("c{i}"))
        .find(|a| ring.shard_of(a) == 2)
        .unwrap();
    for (sm, id) in [(&mut primary, &from), (&mut credit, &to)] {
        let (outcome, _) = apply(
            sm,
            1,
            "",
            Op::CreateAccount(CreateAccountRequest {
                account_id: id.clone(),
                currency: "USD".into(),
                credit_limit: 0,
                opening_balance: 0,
            }),
        );
        assert!(rejection_of(&outcome).is_none());
    }
    apply(
        &mut primary,
        10_000,
        "fund",
        Op::Deposit(DepositRequest {
            request_id: "fund".into(),
            account_id: from.clone(),
            amount: i64::MAX,
            issued_at_ms: 0,
        }),
    );
    (primary, credit, from, to)
}

/// Runs a cross-shard transfer's steps at `ms`: prepare both sides, then commit or abort both.
fn two_phase(
    primary: &mut StateMachine,
    credit: &mut StateMachine,
    id: &str,
    from: &str,
    to: &str,
    ms: i64,
    commit: bool,
) {
    let t = transfer_request(id, from, to, 7, ms);
    let (p, _) = apply(
        primary,
        ms,
        id,
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(t.clone()),
            credit_shard_id: 2,
            ..Default::default()
        }),
    );
    let Some(outcome::Result::Transfer(prepared)) = p.result else {
        panic!("{p:?}");
    };
    let (c, _) = apply(
        credit,
        ms,
        id,
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(t),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts: prepared.start_ts,
            ..Default::default()
        }),
    );
    assert!(rejection_of(&c).is_none(), "{c:?}");
    let debit_step = TransferStep {
        transfer_id: id.into(),
        account_id: from.into(),
        ..Default::default()
    };
    let credit_step = TransferStep {
        transfer_id: id.into(),
        account_id: to.into(),
        from_account_id: from.into(),
        ..Default::default()
    };
    // The commit timestamp is taken after the prepares, as the router does.
    if commit {
        apply_logical(primary, ms, 9, id, Op::CommitDebit(debit_step));
        apply_logical(credit, ms, 9, id, Op::CommitCredit(credit_step));
    } else {
        apply(primary, ms, id, Op::AbortDebit(debit_step));
        apply(credit, ms, id, Op::AbortCredit(credit_step));
    }
}

fn forget(sm: &mut StateMachine, ms: i64, ids: &[&str], from: &str) -> Writes {
    apply(
        sm,
        ms,
        "",
        Op::ForgetTransfers(ForgetTransfers {
            transfers: ids
                .iter()
                .map(|id| TransferStep {
                    transfer_id: id.to_string(),
                    account_id: from.into(),
                    ..Default::default()
                })
                .collect(),
        }),
    )
    .1
}

#[test]
fn a_committed_cross_shard_transfer_is_forgotten_only_once_confirmed_and_past_its_window() {
    let (mut primary, mut credit, from, to) = two_shards();
    two_phase(&mut primary, &mut credit, "c", &from, &to, 10_000, true);
    two_phase(&mut primary, &mut credit, "a", &from, &to, 10_000, false);
    // A prepared one, never decided here: kept whatever happens.
    let pending = transfer_request("p", &from, &to, 1, 10_000);
    apply(
        &mut primary,
        10_000,
        "p",
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(pending),
            credit_shard_id: 2,
            ..Default::default()
        }),
    );
    assert_eq!(primary.request_count(), 4, "fund, c, a, p");
    // Before the window passed: nothing to settle, and a premature ForgetTransfers does nothing.
    assert!(primary
        .settling(&Settling { limit: 10 })
        .transfers
        .is_empty());
    assert_eq!(
        forgotten(&forget(&mut primary, 10_999, &["c", "p"], &from)),
        0
    );
    // The window passed: the aborted one goes by itself; the committed one waits.
    let (_, writes) = apply(&mut primary, 11_000, "x", deposit_to(&from, "x"));
    assert_eq!(forgotten(&writes), 2, "fund and a");
    assert!(primary.transfer(&from, "c").is_some());
    let settling = primary.settling(&Settling { limit: 10 });
    assert_eq!(settling.transfers.len(), 1);
    assert_eq!(settling.transfers[0].transfer_id, "c");
    // The credit side says how its intent stands.
    let asked = IntentStatesQuery {
        intents: ["c", "a", "gone"]
            .iter()
            .map(|id| IntentRef {
                credit_account_id: to.clone(),
                debit_account_id: from.clone(),
                transfer_id: id.to_string(),
            })
            .collect(),
    };
    assert_eq!(
        credit.intent_states(&asked).states,
        vec![
            IntentState::Credited as i32,
            IntentState::Aborted as i32,
            IntentState::Unspecified as i32
        ]
    );
    // Confirmed: forgotten; the prepared one and unknown ids are left alone.
    let writes = forget(&mut primary, 11_001, &["c", "p", "nope"], &from);
    assert_eq!(forgotten(&writes), 1);
    assert!(primary.transfer(&from, "c").is_none());
    assert!(primary.transfer(&from, "p").is_some());
    assert!(primary
        .settling(&Settling { limit: 10 })
        .transfers
        .is_empty());
    // Too many at once: refused whole.
    let many: Vec<String> = (0..1001).map(|i| format!("m{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (outcome, _) = apply(
        &mut primary,
        11_002,
        "",
        Op::ForgetTransfers(ForgetTransfers {
            transfers: many
                .iter()
                .map(|id| TransferStep {
                    transfer_id: id.to_string(),
                    account_id: from.clone(),
                    ..Default::default()
                })
                .collect(),
        }),
    );
    assert_eq!(rejection_of(&outcome), Some(Reason::InvalidArgument));
    // Decided intents go two windows after their issue time; money is where it was.
    assert_eq!(credit.intent_count(), 2);
    let (_, writes) = apply(&mut credit, 11_999, "y", deposit_to(&to, "y"));
    assert!(!writes.iter().any(|w| matches!(w, Write::ForgetIntent(_))));
    let (_, writes) = apply(&mut credit, 12_000, "z", deposit_to(&to, "z"));
    assert_eq!(
        writes
            .iter()
            .filter(|w| matches!(w, Write::ForgetIntent(_)))
            .count(),
        2
    );
    assert_eq!(credit.intent_count(), 0);
    assert_eq!(credit.account(&to).unwrap().balance, 7 + 2);
    assert_eq!(credit.account(&to).unwrap().pending_credit, 0);
}

#[test]
fn a_pending_intent_is_never_forgotten() {
    let (mut primary, mut credit, from, to) = two_shards();
    let t = transfer_request("t", &from, &to, 1, 10_000);
    apply(
        &mut credit,
        10_000,
        "t",
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(t),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts: 0,
            ..Default::default()
        }),
    );
    let _ = &mut primary;
    for ms in [20_000, 1_000_000, i64::MAX] {
        apply(&mut credit, ms, "", deposit_to(&to, &format!("d{ms}")));
    }
    assert_eq!(credit.intent_count(), 1);
    assert_eq!(credit.account(&to).unwrap().pending_credit, 1);
}

fn deposit_to(account: &str, id: &str) -> Op {
    Op::Deposit(DepositRequest {
        request_id: id.into(),
        account_id: account.into(),
        amount: 1,
        issued_at_ms: 0,
    })
}

#[test]
fn a_window_needs_a_time() {
    let mut sm = StateMachine::new(1, Ring::new([1], 8));
    let (outcome, writes) = apply(
        &mut sm,
        0,
        "",
        Op::SetRetention(SetRetention { window_ms: 5 }),
    );
    assert_eq!(rejection_of(&outcome), Some(Reason::Unavailable));
    assert!(writes.is_empty());
    assert_eq!(sm.retention().window_ms(), None);
}

#[test]
fn a_cross_shard_retry_after_its_primary_forgot_it_is_refused_and_moves_no_money() {
    let (mut primary, mut credit, from, to) = two_shards();
    two_phase(&mut primary, &mut credit, "t", &from, &to, 10_000, true);
    // Past the window, confirmed: the primary forgets it; the credited intent stays a while.
    apply(&mut primary, 11_000, "x", deposit_to(&from, "x"));
    let debit_before = primary.account(&from).unwrap().balance;
    forget(&mut primary, 11_000, &["t"], &from);
    assert!(primary.transfer(&from, "t").is_none());
    assert_eq!(credit.intent_count(), 1);
    // The client sends it again, stamped anew: to the primary it is a new transfer...
    let again = transfer_request("t", &from, &to, 7, 11_500);
    let (p, _) = apply(
        &mut primary,
        11_500,
        "t",
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(again.clone()),
            credit_shard_id: 2,
            ..Default::default()
        }),
    );
    let Some(outcome::Result::Transfer(prepared)) = p.result else {
        panic!("{p:?}");
    };
    // ...but its credit side still holds the first one's intent, for another primary record.
    let (c, writes) = apply(
        &mut credit,
        11_500,
        "t",
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(again),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts: prepared.start_ts,
            ..Default::default()
        }),
    );
    assert_eq!(rejection_of(&c), Some(Reason::RequestExpired), "{c:?}");
    assert!(writes.iter().all(|w| matches!(w, Write::Clock(_))));
    // The router aborts the new record with that refusal: nothing moved.
    let (aborted, _) = apply(
        &mut primary,
        11_500,
        "t",
        Op::AbortDebit(TransferStep {
            transfer_id: "t".into(),
            account_id: from.clone(),
            refusal: Some(wallet_proto::v1::Rejection {
                reason: "REQUEST_EXPIRED".into(),
                message: "earlier transfer".into(),
            }),
            ..Default::default()
        }),
    );
    assert_eq!(rejection_of(&aborted), Some(Reason::RequestExpired));
    let account = primary.account(&from).unwrap();
    assert_eq!(account.balance, debit_before);
    assert_eq!(account.reserved, 0);
    assert_eq!(credit.account(&to).unwrap().balance, 7);
}

#[test]
fn a_commit_older_than_the_prepared_record_is_refused() {
    // A router stalled past the window holds a commit for a record the primary forgot; a resend
    // prepared a new record under the id. The stale commit must not commit the new one.
    let (mut primary, _credit, from, to) = two_shards();
    let t = transfer_request("t", &from, &to, 7, 0);
    apply(
        &mut primary,
        20_000,
        "t",
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(t),
            credit_shard_id: 2,
            ..Default::default()
        }),
    );
    let step = TransferStep {
        transfer_id: "t".into(),
        account_id: from.clone(),
        ..Default::default()
    };
    let before = primary.account(&from).cloned().unwrap();
    for (ms, logical) in [(19_000, 3), (20_000, 3), (20_000, 2)] {
        let (stale, writes) = apply_logical(
            &mut primary,
            ms,
            logical,
            "t",
            Op::CommitDebit(step.clone()),
        );
        assert_eq!(
            rejection_of(&stale),
            Some(Reason::RequestExpired),
            "{stale:?}"
        );
        assert!(writes.iter().all(|w| matches!(w, Write::Clock(_))));
    }
    assert_eq!(primary.account(&from), Some(&before));
    // A commit taken after the prepare commits.
    let (fresh, _) = apply_logical(&mut primary, 20_000, 4, "t", Op::CommitDebit(step));
    assert!(
        matches!(fresh.result, Some(outcome::Result::Transfer(ref t)) if t.status == 1),
        "{fresh:?}"
    );
}

#[test]
fn an_intent_from_before_primary_start_ts_was_kept_still_refuses_a_newer_record() {
    let (_primary, mut credit, from, to) = two_shards();
    let t = transfer_request("t", &from, &to, 7, 0);
    let prepare = |primary_start_ts| {
        Op::PrepareCredit(PrepareCredit {
            transfer: Some(t.clone()),
            primary_shard_id: 1,
            currency: "USD".into(),
            primary_start_ts,
            ..Default::default()
        })
    };
    // An intent as an older release stored it: no primary_start_ts, started at 10 000 ms.
    let (first, _) = apply(&mut credit, 10_000, "t", prepare(0));
    assert!(rejection_of(&first).is_none());
    // The same transfer's record started before its intent: the same transfer.
    let (same, _) = apply(&mut credit, 10_001, "t", prepare((9_999 << 18) | 3));
    assert!(rejection_of(&same).is_none(), "{same:?}");
    // A record started after the intent cannot be the one it was made for.
    let (newer, _) = apply(&mut credit, 12_000, "t", prepare((11_000 << 18) | 3));
    assert_eq!(rejection_of(&newer), Some(Reason::RequestExpired));
}

/// A transfer request.
fn transfer_request(
    id: &str,
    from: &str,
    to: &str,
    amount: i64,
    issued_at_ms: i64,
) -> TransferRequest {
    TransferRequest {
        transfer_id: id.into(),
        from_account_id: from.into(),
        to_account_id: to.into(),
        amount,
        issued_at_ms,
    }
}
