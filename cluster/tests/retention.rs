//! Request retention through real processes: a cluster file with a 2-second window (replicated
//! by each shard's leader), requests stamped by the client, retries within and beyond the window,
//! same-shard and cross-shard, records forgotten alike on every replica (also across a kill -9 and
//! restart), and the CLI's `--issued-at-ms`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Cluster, SERIAL};
use wallet_client::{now_ms, DepositRequest, Reason, TransferRequest, WithdrawRequest};

const WINDOW_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_window_is_refused_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start_with(2, 0, |t| t.request_retention_secs = WINDOW_SECS).await;
    let client = cluster.client();
    let ring = cluster.playground.topology.ring();
    let on = |shard: u64, prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|a| ring.shard_of(a) == shard)
            .unwrap()
    };
    let (a, b, c) = (on(1, "a"), on(1, "b"), on(2, "c"));
    for id in [&a, &b, &c] {
        client.create_account(id, "USD", 0).await.unwrap();
    }
    let issued = now_ms();
    let deposit = DepositRequest {
        request_id: "d1".into(),
        account_id: a.clone(),
        amount: i64::MAX,
        issued_at_ms: issued,
    };
    let first = client.deposit_request(deposit.clone()).await.unwrap();
    // Within the window a retry (even stamped anew) answers the first outcome.
    let again = client
        .deposit_request(DepositRequest {
            issued_at_ms: now_ms(),
            ..deposit.clone()
        })
        .await
        .unwrap();
    assert_eq!(first, again);
    let same_shard = TransferRequest {
        transfer_id: "t1".into(),
        from_account_id: a.clone(),
        to_account_id: b.clone(),
        amount: 10,
        issued_at_ms: issued,
    };
    let cross_shard = TransferRequest {
        transfer_id: "t2".into(),
        from_account_id: a.clone(),
        to_account_id: c.clone(),
        amount: 20,
        issued_at_ms: issued,
    };
    client.transfer_request(same_shard.clone()).await.unwrap();
    let committed = client.transfer_request(cross_shard.clone()).await.unwrap();
    // Sent again, stamped anew (a client that lost the answer): the first outcome, both shards.
    let again = client
        .transfer_request(TransferRequest {
            issued_at_ms: now_ms(),
            ..cross_shard.clone()
        })
        .await
        .unwrap();
    assert_eq!(committed, again);
    let remembered = records(&cluster).await;
    assert_eq!(
        remembered[&1].0, 3,
        "d1, t1 and t2 on shard 1: {remembered:?}"
    );
    assert_eq!(
        remembered[&2].1, 1,
        "t2's intent on shard 2: {remembered:?}"
    );

    // The window passes; a later command moves the shard's clock past it.
    tokio::time::sleep(Duration::from_millis(WINDOW_SECS * 1000 + 300)).await;
    client
        .withdraw_request(WithdrawRequest {
            request_id: "w1".into(),
            account_id: a.clone(),
            amount: 1,
            issued_at_ms: 0,
        })
        .await
        .unwrap();
    for result in [
        client.deposit_request(deposit.clone()).await.map(|_| ()),
        client.transfer_request(same_shard).await.map(|_| ()),
        client
            .transfer_request(cross_shard.clone())
            .await
            .map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert_eq!(e.reason, Reason::RequestExpired, "{e}");
    }
    // Too far ahead of the cluster's clock: refused as bad input.
    let e = client
        .deposit_request(DepositRequest {
            request_id: "future".into(),
            issued_at_ms: now_ms() + 3_600_000,
            ..deposit.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::InvalidArgument, "{e}");
    // The committed cross-shard t2 goes once recovery heard from its credit side.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match client.get_transfer(&cross_shard.transfer_id, &a).await {
            Err(e) if e.reason == Reason::TransferNotFound => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "t2 still remembered: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sent again, stamped anew, while its credit side still holds the old intent: the primary
    // takes it for a new transfer, the credit side knows better; nothing moves (not a second
    // debit against the first credit).
    let e = client
        .transfer_request(TransferRequest {
            issued_at_ms: now_ms(),
            ..cross_shard.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.reason, Reason::RequestExpired, "{e}");
    // Every replica forgot the same records (d1, t1, t2), also one that was killed and
    // restarted meanwhile (it replays from its checkpoint).
    cluster.playground.kill_node(2);
    cluster.playground.start_node(2).unwrap();
    cluster.caught_up(2).await;
    let remembered = records(&cluster).await;
    assert_eq!(
        remembered[&1].0, 2,
        "w1 and the refused resend of t2 on shard 1: {remembered:?}"
    );
    // The credit side forgets t2's intent two windows after it was issued.
    let two_windows = Duration::from_millis(2 * WINDOW_SECS * 1000 + 300);
    let waited = Duration::from_millis((now_ms() - issued).max(0) as u64);
    tokio::time::sleep(two_windows.saturating_sub(waited)).await;
    // The kill may have moved the oracle: a new oracle leader starts above the last committed
    // limit, up to 3 s ahead of wall time, so a request stamped now can look older than this
    // test's 2 s window for a moment. Refused expired, it wrote nothing: sent again.
    let mut attempts = 0;
    loop {
        let sent = client
            .deposit_request(DepositRequest {
                request_id: "d2".into(),
                account_id: c.clone(),
                amount: 1,
                issued_at_ms: 0,
            })
            .await;
        match sent {
            Err(e) if e.reason == Reason::RequestExpired && attempts < 10 => attempts += 1,
            other => break other.map(|_| ()).unwrap(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let remembered = records(&cluster).await;
    assert_eq!(
        remembered[&2],
        (1, 0),
        "d2 and no intent on shard 2: {remembered:?}"
    );
    // Nothing changed: one deposit, two transfers, one withdrawal.
    let balance = |id: String| {
        let client = client.clone();
        async move { client.get_account(&id).await.unwrap().balance }
    };
    assert_eq!(balance(a.clone()).await, i64::MAX - 10 - 20 - 1);
    assert_eq!(balance(b.clone()).await, 10);
    assert_eq!(balance(c.clone()).await, 20 + 1);

    // The CLI: an old issue time is refused with the reason on stderr and a non-zero exit.
    let out = std::process::Command::new(common::wallet_cli())
        .args(["--endpoint", &cluster.playground.router_address])
        .args(["deposit", &a, "5", "--id", "cli-1", "--issued-at-ms"])
        .arg(issued.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REQUEST_EXPIRED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = client.audit().await.unwrap();
    assert!(!audit.totals.is_empty(), "balanced, after forgetting");
}

/// (Request records, intents) per shard, checked to be the same on every replica, with the
/// replicated window.
async fn records(cluster: &Cluster) -> BTreeMap<u64, (u64, u64)> {
    for id in cluster.playground.node_ids() {
        cluster.caught_up(id).await;
    }
    let mut per_shard: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for id in cluster.playground.node_ids() {
        let status = cluster.playground.status(id).await.expect("status");
        for r in status.replicas.iter().filter(|r| r.shard_id != 0) {
            assert_eq!(r.retention_window_ms, WINDOW_SECS as i64 * 1000, "{r:?}");
            per_shard
                .entry(r.shard_id)
                .or_default()
                .push((r.requests, r.intents));
        }
    }
    per_shard
        .into_iter()
        .map(|(shard, counts)| {
            assert!(
                counts.windows(2).all(|w| w[0] == w[1]),
                "shard {shard}: {counts:?}"
            );
            (shard, counts[0])
        })
        .collect()
}
