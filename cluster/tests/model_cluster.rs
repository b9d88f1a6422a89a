//! The model-based test against a real 3-node cluster (G1, G4, G5, G6, G9): the reference model
//! of `node/tests/model/mod.rs` (i128 arithmetic) and the cluster get the same random requests
//! through the public API — amounts and credit limits over the whole i64 range, concurrent
//! transfers within and across shards, client retries with the same id, reads, and snapshot reads
//! at earlier audit timestamps. Every outcome must match the model (or be a documented refusal),
//! and no request may make a shard unavailable: a request that runs out of retries fails the test.
//!
//! Requests run in rounds of up to [`CONCURRENCY`] at once, each round on disjoint accounts, so
//! their effects commute and the model can apply them in any order. Seeded: a failure prints the
//! seed and round.

mod common;
#[path = "../../node/tests/model/mod.rs"]
mod model;

use std::collections::BTreeMap;

use common::*;
use model::{Expect, Model, Xfer};
use wallet_client::{Reason, WalletClient, WalletError};
use wallet_proto::v1::TransferStatus;

/// Operations of the test (not counting account creation, audits and final checks).
const OPERATIONS: usize = 10_000;
const CONCURRENCY: usize = 8;
const ACCOUNTS_PER_SHARD: usize = 8;
/// An audit (whose timestamp later snapshot reads use) every this many rounds.
const AUDIT_EVERY: usize = 40;

fn extreme_amount(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => 1 + rng.below(100) as i64,
        1 => i64::MAX / 2 - 50 + rng.below(100) as i64,
        2 => i64::MAX - rng.below(100) as i64,
        _ => 1 + (rng.next() >> 1) as i64 % i64::MAX,
    }
}

fn extreme_limit(rng: &mut Rng) -> i64 {
    match rng.below(4) {
        0 => 0,
        1 => i64::MAX,
        2 => i64::MAX - rng.below(100) as i64,
        _ => (rng.next() >> 1) as i64,
    }
}

/// One request of a round.
#[derive(Clone, Debug)]
enum Request {
    Deposit(String, String, i64),
    Withdraw(String, String, i64),
    Transfer(Xfer),
    Read(String),
}

fn expect_of<T>(result: &Result<T, WalletError>, transfer: bool) -> Result<Expect, String> {
    match result {
        Ok(_) if transfer => Ok(Expect::Status(TransferStatus::Committed)),
        Ok(_) => Ok(Expect::Ok),
        Err(e) if e.reason.is_retryable() => Err(format!("ran out of retries: {e}")),
        Err(e) => Ok(Expect::Refused(e.reason)),
    }
}

async fn run(client: &WalletClient, request: &Request) -> Result<Expect, String> {
    match request {
        Request::Deposit(id, account, amount) => {
            expect_of(&client.deposit(id, account, *amount).await, false)
        }
        Request::Withdraw(id, account, amount) => {
            expect_of(&client.withdraw(id, account, *amount).await, false)
        }
        Request::Transfer(t) => expect_of(
            &client.transfer(&t.id, &t.from, &t.to, t.amount).await,
            true,
        ),
        Request::Read(_) => Ok(Expect::Ok),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_agrees_with_the_model_over_the_whole_range() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let seed = 0x0de1_0001;
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let ring = cluster.playground.topology.ring();
    let mut ids = Vec::new();
    for shard in [1, 2] {
        ids.extend(
            (0..1000)
                .map(|i| format!("mc{i}"))
                .filter(|id| ring.shard_of(id) == shard)
                .take(ACCOUNTS_PER_SHARD),
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let currency = if i % 4 == 3 { "EUR" } else { "USD" };
        let limit = extreme_limit(&mut rng);
        client.create_account(id, currency, limit).await.unwrap();
        assert_eq!(model.create(id, currency, limit), Expect::Ok);
    }
    let shard_of = |id: &str| ring.shard_of(id);
    let mut sent: Vec<Request> = Vec::new();
    let mut snapshots: Vec<(u64, BTreeMap<String, i128>)> = Vec::new();
    let (mut done, mut round, mut refusals) = (0usize, 0usize, BTreeMap::<String, u64>::new());
    while done < OPERATIONS {
        round += 1;
        // Disjoint accounts for this round's requests.
        let mut free = ids.clone();
        let mut batch = Vec::new();
        while batch.len() < CONCURRENCY && free.len() >= 2 {
            let a = free.swap_remove(rng.below(free.len()));
            let request = match rng.below(10) {
                0..=1 => Request::Deposit(
                    format!("r{done}-{}", batch.len()),
                    a,
                    extreme_amount(&mut rng),
                ),
                2..=3 => Request::Withdraw(
                    format!("r{done}-{}", batch.len()),
                    a,
                    extreme_amount(&mut rng),
                ),
                4..=7 => {
                    let b = free.swap_remove(rng.below(free.len()));
                    Request::Transfer(Xfer {
                        id: format!("r{done}-{}", batch.len()),
                        from: a,
                        to: b,
                        amount: extreme_amount(&mut rng),
                    })
                }
                8 if !sent.is_empty() => {
                    // A client retry of an earlier request, same id and content, if its
                    // accounts are free this round.
                    let earlier = sent[rng.below(sent.len())].clone();
                    let accounts: Vec<&String> = match &earlier {
                        Request::Deposit(_, x, _)
                        | Request::Withdraw(_, x, _)
                        | Request::Read(x) => vec![x],
                        Request::Transfer(t) => vec![&t.from, &t.to],
                    };
                    free.push(a);
                    if !accounts.iter().all(|x| free.contains(x)) {
                        continue;
                    }
                    free.retain(|x| !accounts.contains(&x));
                    earlier
                }
                _ => Request::Read(a),
            };
            batch.push(request);
        }
        let results = futures_join(batch.iter().map(|r| run(&client, r))).await;
        for (request, result) in batch.iter().zip(results) {
            let got =
                result.unwrap_or_else(|e| panic!("seed {seed:#x} round {round}: {request:?}: {e}"));
            let want = match request {
                Request::Deposit(id, account, amount) => {
                    model.deposit_or_withdraw(id, account, i128::from(*amount), round as u64)
                }
                Request::Withdraw(id, account, amount) => {
                    model.deposit_or_withdraw(id, account, -i128::from(*amount), round as u64)
                }
                Request::Transfer(t) if shard_of(&t.from) == shard_of(&t.to) => {
                    model.transfer_same_shard(t, round as u64)
                }
                Request::Transfer(t) => model.transfer_cross_shard(t, round as u64),
                Request::Read(account) => {
                    let got = client.get_account(account).await.unwrap();
                    let m = &model.accounts[account];
                    assert_eq!(
                        (
                            i128::from(got.balance),
                            i128::from(got.reserved),
                            i128::from(got.pending_credit)
                        ),
                        (m.balance, m.reserved, m.pending),
                        "seed {seed:#x} round {round}: {account}"
                    );
                    Expect::Ok
                }
            };
            assert_eq!(got, want, "seed {seed:#x} round {round}: {request:?}");
            if let Expect::Refused(reason) = &got {
                *refusals.entry(reason.to_string()).or_default() += 1;
            }
            if !matches!(request, Request::Read(_)) {
                sent.push(request.clone());
            }
            done += 1;
        }
        model.check_own_invariants();
        if round % AUDIT_EVERY == 0 {
            // Everything of the rounds so far is before the audit's timestamp, nothing later is.
            let report = client.audit().await.expect("audit balances");
            let balances = model
                .accounts
                .iter()
                .map(|(id, a)| (id.clone(), a.balance))
                .collect();
            snapshots.push((report.ts, balances));
            // Snapshot reads at one of the last three audits' timestamps (seconds old) answer the
            // balances of then. Shards keep 30 s of changes; an older read is refused with the
            // retryable SNAPSHOT_TOO_OLD, which the client would retry for its whole budget.
            let recent = snapshots.len().saturating_sub(3);
            let (ts, then) = &snapshots[recent + rng.below(snapshots.len() - recent)];
            for id in ids.iter().take(4) {
                match client.get_account_at(id, *ts).await {
                    Ok(a) => assert_eq!(
                        i128::from(a.balance),
                        then[id],
                        "seed {seed:#x}: {id} at {ts}"
                    ),
                    Err(e) => assert_eq!(e.reason, Reason::SnapshotTooOld, "{e}"),
                }
            }
        }
    }
    // Final: every account equals the model, and the audit balances.
    for id in &ids {
        let got = client.get_account(id).await.unwrap();
        assert_eq!(i128::from(got.balance), model.accounts[id].balance, "{id}");
    }
    client.audit().await.expect("final audit");
    eprintln!("{done} operations in {round} rounds matched the model; refusals: {refusals:?}");
}

/// Runs the futures concurrently, keeping their order.
async fn futures_join<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs = Vec::with_capacity(futures.len());
    let mut pending: Vec<_> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => {
                        results[i] = Some(out);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.extend(
        results
            .into_iter()
            .map(|r| r.expect("every future finished")),
    );
    outputs
}
