//! Request retention (G4 within the window, G10 beyond it): records are forgotten once the window
//! passed since the request was issued, a retry issued before the window is refused with
//! `REQUEST_EXPIRED`, and every replica forgets at the same log position.

use wallet_node::state_machine::{rejection_of, StateMachine, Write, Writes};
use wallet_proto::reason::Reason;
use wallet_proto::topology::Ring;
use wallet_proto::v1::{
    command::Op, outcome, Command, CreateAccountRequest, DepositRequest, Outcome, PrepareDebit,
    TransferRequest, TransferStep,
};

const WINDOW: i64 = 1_000;

fn machine() -> StateMachine {
    StateMachine::new(1, Ring::new([1], 8)).with_retention(WINDOW)
}

fn apply(sm: &mut StateMachine, at_ms: i64, request_id: &str, op: Op) -> (Outcome, Writes) {
    let mut writes = Vec::new();
    let command = Command {
        request_id: request_id.into(),
        at_ms,
        ts: 0,
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
    // Far later, still refused (never applied twice).
    let (later, _) = apply(&mut sm, i64::MAX, "d1", deposit("d1", 5, 10_000));
    assert_eq!(rejection_of(&later), Some(Reason::RequestExpired));
    assert_eq!(balance(&sm), 5);
}

#[test]
fn issue_times_out_of_range_are_refused_and_change_nothing() {
    let mut sm = machine();
    create(&mut sm, "alice");
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
    let ring = Ring::new([1, 2], 8);
    let mut sm = StateMachine::new(1, ring.clone()).with_retention(WINDOW);
    let from = (0..)
        .map(|i| format!("a{i}"))
        .find(|a| ring.shard_of(a) == 1)
        .unwrap();
    let to = (0..)
        .map(|i| format!("b{i}"))
        .find(|a| ring.shard_of(a) == 2)
        .unwrap();
    apply(
        &mut sm,
        1,
        "",
        Op::CreateAccount(CreateAccountRequest {
            account_id: from.clone(),
            currency: "USD".into(),
            credit_limit: 0,
        }),
    );
    apply(
        &mut sm,
        2,
        "d",
        Op::Deposit(DepositRequest {
            request_id: "d".into(),
            account_id: from.clone(),
            amount: i64::MAX,
            issued_at_ms: 2,
        }),
    );
    let prepare = |issued_at_ms| {
        Op::PrepareDebit(PrepareDebit {
            transfer: Some(TransferRequest {
                transfer_id: "t".into(),
                from_account_id: from.clone(),
                to_account_id: to.clone(),
                amount: i64::MAX,
                issued_at_ms,
            }),
            credit_shard_id: 2,
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
        // A new leader whose clock is 600 ms behind: the shard's clock must not go back.
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
