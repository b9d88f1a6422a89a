//! Cross-shard transfers on real processes: both legs or neither (G2), exactly once across routers
//! (G4), and recovery without the router: the tests play a router that dies between two steps by
//! sending the steps themselves, then let the nodes' recovery finish (resolve timeout 500 ms).

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet_client::{Reason, WalletClient};
use wallet_proto::v1::{
    command::Op, outcome, Command, PrepareCredit, PrepareDebit, TransferRequest, TransferStatus,
    TransferStep,
};
use wallet_shard_client::shards::Shards;

fn command(id: &str, ts: u64, op: Op) -> Command {
    Command {
        request_id: id.into(),
        at_ms: 0,
        ts,
        op: Some(op),
    }
}

fn step(id: &str, account: &str) -> TransferStep {
    TransferStep {
        transfer_id: id.into(),
        account_id: account.into(),
        ..Default::default()
    }
}

/// Plays a router: PrepareDebit and PrepareCredit, then (if `commit`) CommitDebit, then dies.
async fn router_dies_after(cluster: &Cluster, t: &TransferRequest, commit: bool) {
    let shards = Shards::new(cluster.playground.topology.clone()).unwrap();
    let from_shard = shards.shard_of(&t.from_account_id);
    let to_shard = shards.shard_of(&t.to_account_id);
    let start_ts = shards.tso(1).await.unwrap().first;
    let prepared = shards
        .execute(
            from_shard,
            command(
                &t.transfer_id,
                start_ts,
                Op::PrepareDebit(PrepareDebit {
                    transfer: Some(t.clone()),
                    credit_shard_id: to_shard,
                    ..Default::default()
                }),
            ),
        )
        .await
        .unwrap();
    let (currency, primary_start_ts) = match prepared.result {
        Some(outcome::Result::Transfer(p)) => (p.currency, p.start_ts),
        other => panic!("prepare debit: {other:?}"),
    };
    let credit = shards
        .execute(
            to_shard,
            command(
                &t.transfer_id,
                start_ts,
                Op::PrepareCredit(PrepareCredit {
                    transfer: Some(t.clone()),
                    primary_shard_id: from_shard,
                    currency,
                    primary_start_ts,
                    ..Default::default()
                }),
            ),
        )
        .await
        .unwrap();
    assert!(
        matches!(credit.result, Some(outcome::Result::Transfer(_))),
        "{credit:?}"
    );
    if commit {
        let commit_ts = shards.tso(1).await.unwrap().first;
        let decided = shards
            .execute(
                from_shard,
                command(
                    &t.transfer_id,
                    commit_ts,
                    Op::CommitDebit(step(&t.transfer_id, &t.from_account_id)),
                ),
            )
            .await
            .unwrap();
        assert!(
            matches!(decided.result, Some(outcome::Result::Transfer(_))),
            "{decided:?}"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_transfer_applies_both_legs_once_even_when_retried_from_another_router() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let (a, b) = (&on1[0], &on2[0]);
    let t = client.transfer("pay-1", a, b, 300).await.unwrap();
    assert_eq!(t.status, TransferStatus::Committed as i32);
    assert_eq!(t.from_balance_after, 700);
    // The same transfer retried through a second router: first outcome, no second payment.
    let address = format!(
        "127.0.0.1:{}",
        wallet_cluster::playground::free_port().unwrap()
    );
    let mut second = cluster
        .playground
        .spawn_router(&address, "router-2", &[])
        .unwrap();
    let other = WalletClient::connect(&[address.as_str()]).unwrap();
    let again = other.transfer("pay-1", a, b, 300).await;
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(again.unwrap().status, TransferStatus::Committed as i32);
    let balances = settled(&client, &[a.clone(), b.clone()]).await;
    assert_eq!((balances[a], balances[b]), (700, 1300));
    let history = client.list_transfers(b, 10, 0).await.unwrap();
    assert_eq!(history.entries[0].delta, 300);
    assert_eq!(history.entries[0].counterparty, *a);
    // Oracle timestamps: started before it committed; both legs carry the one commit timestamp.
    assert!(0 < t.start_ts && t.start_ts < t.commit_ts, "{t:?}");
    let debit_leg = client.list_transfers(a, 1, 0).await.unwrap().entries[0].clone();
    assert_eq!(debit_leg.commit_ts, t.commit_ts);
    assert_eq!(history.entries[0].commit_ts, t.commit_ts);
    // Snapshot reads of each side: before the commit timestamp neither leg, at it both.
    let before = (
        client
            .get_account_at(a, t.commit_ts - 1)
            .await
            .unwrap()
            .balance,
        client
            .get_account_at(b, t.commit_ts - 1)
            .await
            .unwrap()
            .balance,
    );
    let after = (
        client.get_account_at(a, t.commit_ts).await.unwrap().balance,
        client.get_account_at(b, t.commit_ts).await.unwrap().balance,
    );
    assert_eq!((before, after), ((1000, 1000), (700, 1300)));
    let future = client.get_account_at(a, u64::MAX).await.unwrap_err();
    assert_eq!(future.reason, Reason::InvalidArgument);
    assert_eq!(
        client.get_transfer("pay-1", a).await.unwrap().status,
        TransferStatus::Committed as i32
    );
    // Same id, other content.
    let reused = client.transfer("pay-1", a, b, 301).await.unwrap_err();
    assert_eq!(reused.reason, Reason::IdReused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_router_died_before_the_commit_point_is_aborted_by_recovery() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let t = transfer("lost-1", &on1[0], &on2[0], 400);
    router_dies_after(&cluster, &t, false).await;
    let debit = client.get_account(&on1[0]).await.unwrap();
    assert_eq!(
        (debit.balance, debit.reserved),
        (1000, 400),
        "reserved while undecided"
    );
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on1[0]], balances[&on2[0]]), (1000, 1000));
    let status = client.get_transfer("lost-1", &on1[0]).await.unwrap().status;
    assert_eq!(status, TransferStatus::Aborted as i32);
    // The client's retry learns the decision; nothing moves.
    let retry = client
        .transfer("lost-1", &on1[0], &on2[0], 400)
        .await
        .unwrap_err();
    assert_eq!(retry.reason, Reason::TransferAborted);
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on1[0]], balances[&on2[0]]), (1000, 1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_router_died_after_the_commit_point_is_credited_by_recovery() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let t = transfer("half-1", &on2[0], &on1[0], 250);
    router_dies_after(&cluster, &t, true).await;
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on2[0]], balances[&on1[0]]), (750, 1250));
    // Recovery credited at the primary's commit timestamp.
    let primary = client.get_transfer("half-1", &on2[0]).await.unwrap();
    let credit_leg = client.list_transfers(&on1[0], 1, 0).await.unwrap().entries[0].clone();
    assert!(primary.commit_ts > 0);
    assert_eq!(credit_leg.commit_ts, primary.commit_ts);
    // A retry with the same id answers committed and pays nothing more.
    let retry = client
        .transfer("half-1", &on2[0], &on1[0], 250)
        .await
        .unwrap();
    assert_eq!(retry.status, TransferStatus::Committed as i32);
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on2[0]], balances[&on1[0]]), (750, 1250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cross_shard_transfers_conserve_money_through_a_leader_kill_and_a_router_restart(
) {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 4, 1000).await;
    let all: Vec<String> = on1.iter().chain(&on2).cloned().collect();
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let client = client.clone();
        let (from_side, to_side) = if w % 2 == 0 {
            (on1.clone(), on2.clone())
        } else {
            (on2.clone(), on1.clone())
        };
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            let (mut ok, mut refused) = (0u64, 0u64);
            while Instant::now() < stop_at && n < 10_000 {
                n += 1;
                let from = &from_side[(n + w) % from_side.len()];
                let to = &to_side[(n * 3 + w) % to_side.len()];
                match client
                    .transfer(&format!("c{w}-{n}"), from, to, (n % 40 + 1) as i64)
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
            }
            (ok, refused)
        }));
    }
    // An auditor takes snapshot audits throughout, through the leader kill and the router restart:
    // every one that answers must balance (G1 at one timestamp across shards, G6).
    let auditor = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut balanced, mut unavailable) = (0u64, 0u64);
            while Instant::now() < stop_at {
                match client.audit().await {
                    Ok(report) => {
                        for t in &report.totals {
                            assert_eq!(t.balances, t.net_deposits, "audit at {}", report.ts);
                        }
                        balanced += 1;
                    }
                    Err(e) if e.reason == Reason::AuditMismatch => panic!("{e}"),
                    Err(_) => unavailable += 1,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (balanced, unavailable)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leaders = cluster.ready().await;
    cluster.playground.kill_node(leaders[&1]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.playground.kill_router();
    cluster.playground.start_router().unwrap();
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap().0;
    }
    assert!(ok > 50, "transfers went on: {ok}");
    let (balanced, unavailable) = auditor.await.unwrap();
    assert!(
        balanced >= 5,
        "audits balanced: {balanced} (unavailable {unavailable})"
    );
    let killed = cluster
        .playground
        .node_ids()
        .into_iter()
        .find(|id| *id == leaders[&1])
        .unwrap();
    cluster.playground.start_node(killed).unwrap();
    cluster.ready().await;
    let balances = settled(&client, &all).await;
    let total: i64 = balances.values().sum();
    assert_eq!(
        total,
        1000 * all.len() as i64,
        "money is conserved: {balances:?}"
    );
}

/// The router embedded in the caller's process (`WalletClient::in_process`): same answers as a
/// router process, same exactly-once by id across both, same reason codes, and an attempt that
/// overruns its deadline is retried and then reported as UNAVAILABLE like a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_router_gives_the_answers_of_a_router_process() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let remote = cluster.client();
    let service = wallet_router::service::WalletService::for_topology(
        cluster.playground.topology.clone(),
        wallet_router::service::MAX_IN_FLIGHT_DEFAULT,
        cluster.playground.admin_tls().cloned(),
    )
    .unwrap();
    let service: std::sync::Arc<dyn wallet_client::Wallet> = std::sync::Arc::new(service);
    let embedded = WalletClient::in_process(
        service.clone(),
        wallet_client::ClientOptions {
            retry_budget: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(10),
            tls: None,
        },
    );
    let [on1, on2] = accounts(&cluster, &embedded, 2, i64::MAX / 2).await;
    let (a, a2, b) = (&on1[0], &on1[1], &on2[0]);
    // Same shard and across shards, through the embedded router.
    let same = embedded.transfer("emb-1", a, a2, 5).await.unwrap();
    let cross = embedded.transfer("emb-2", a, b, 7).await.unwrap();
    assert_eq!(same.status, TransferStatus::Committed as i32);
    assert_eq!(cross.status, TransferStatus::Committed as i32);
    // Retried through the router process: the first outcomes, nothing paid twice; and back.
    assert_eq!(remote.transfer("emb-1", a, a2, 5).await.unwrap(), same);
    assert_eq!(remote.transfer("emb-2", a, b, 7).await.unwrap(), cross);
    let by_router = remote.transfer("emb-3", b, a, 11).await.unwrap();
    assert_eq!(
        embedded.transfer("emb-3", b, a, 11).await.unwrap(),
        by_router
    );
    let balances = settled(&remote, &[a.clone(), a2.clone(), b.clone()]).await;
    let start = i64::MAX / 2;
    assert_eq!(
        (balances[a], balances[a2], balances[b]),
        (start - 5 - 7 + 11, start + 5, start + 7 - 11)
    );
    // Refusals carry the same codes: other content under an id, overflow, an unknown account.
    let reused = embedded.transfer("emb-2", a, b, 8).await.unwrap_err();
    assert_eq!(reused.reason, Reason::IdReused);
    let overdraft = embedded
        .transfer("emb-4", a, b, i64::MAX)
        .await
        .unwrap_err();
    assert_eq!(overdraft.reason, Reason::InsufficientFunds);
    let unknown = embedded.get_account("nobody").await.unwrap_err();
    assert_eq!(unknown.reason, Reason::AccountNotFound);
    let batch = embedded
        .transfer_batch(&[
            TransferRequest {
                transfer_id: "emb-5".into(),
                from_account_id: a2.clone(),
                to_account_id: b.clone(),
                amount: 1,
                issued_at_ms: 0,
            },
            TransferRequest {
                transfer_id: "emb-6".into(),
                from_account_id: a2.clone(),
                to_account_id: b.clone(),
                amount: 0,
                issued_at_ms: 0,
            },
        ])
        .await
        .unwrap();
    assert!(batch[0].is_ok(), "{batch:?}");
    assert_eq!(batch[1].as_ref().unwrap_err().reason, Reason::InvalidAmount);
    // An audit through it adds up (AUDIT_MISMATCH otherwise).
    let report = embedded.audit().await.unwrap();
    assert!(report.ts > by_router.commit_ts, "{report:?}");
    // An attempt that cannot finish within its deadline: retried within the budget, then
    // UNAVAILABLE (the outcome is unknown to the caller, as after a lost connection).
    let hasty = WalletClient::in_process(
        service,
        wallet_client::ClientOptions {
            retry_budget: Duration::from_millis(100),
            attempt_timeout: Duration::from_micros(1),
            tls: None,
        },
    );
    // (An audit: several Raft entries, each fsynced, never done within the timer's 1 ms tick; a
    // read from a leader's memory can be, on a fast machine.)
    let timed_out = hasty.audit().await.unwrap_err();
    assert_eq!(timed_out.reason, Reason::Unavailable, "{timed_out}");
}

/// Account lifecycle across shards with a router that died mid-transfer: money never leaves an
/// account frozen before the commit point (the retry's commit becomes an abort, or recovery
/// aborted first), and a credit promised before its account was frozen lands (recovery commits
/// it): the payer's money has left and must arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_stops_an_uncommitted_transfer_and_lets_a_promised_credit_land() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 2, 1000).await;
    // Debit side frozen before the commit point.
    let t = transfer("frz-1", &on1[0], &on2[0], 400);
    router_dies_after(&cluster, &t, false).await;
    client.freeze_account("frz", &on1[0]).await.unwrap();
    let retry = client
        .transfer("frz-1", &on1[0], &on2[0], 400)
        .await
        .unwrap_err();
    assert!(
        matches!(
            retry.reason,
            Reason::AccountFrozen | Reason::TransferAborted
        ),
        "{retry}"
    );
    let balances = settled(&client, &[on1[0].clone(), on2[0].clone()]).await;
    assert_eq!((balances[&on1[0]], balances[&on2[0]]), (1000, 1000));
    // Credit side frozen after the commit point: recovery lands the credit.
    let t = transfer("frz-2", &on1[1], &on2[1], 1000);
    router_dies_after(&cluster, &t, true).await;
    client.freeze_account("frz", &on2[1]).await.unwrap();
    let balances = settled(&client, &[on1[1].clone(), on2[1].clone()]).await;
    assert_eq!((balances[&on1[1]], balances[&on2[1]]), (0, 2000));
    assert_eq!(
        client.get_transfer("frz-2", &on1[1]).await.unwrap().status,
        TransferStatus::Committed as i32
    );
    // The frozen account refuses anything new; the audit balances.
    client.deposit("frz-d", &on1[1], 5).await.unwrap();
    let refused = client
        .transfer("frz-3", &on1[1], &on2[1], 1)
        .await
        .unwrap_err();
    assert_eq!(refused.reason, Reason::AccountFrozen);
    client.audit().await.unwrap();
}
