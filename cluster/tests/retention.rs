//! Request retention through real processes: a cluster file with a 2-second window, requests
//! stamped by the client, retries within and beyond the window, same-shard and cross-shard, and
//! the CLI's `--issued-at-ms`.

mod common;

use std::time::Duration;

use common::{Cluster, SERIAL};
use wallet_client::{now_ms, DepositRequest, Reason, TransferRequest, WithdrawRequest};

const WINDOW_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_window_is_refused_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start_with(2, 0, |t| t.request_retention_secs = WINDOW_SECS).await;
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
    client.transfer_request(cross_shard.clone()).await.unwrap();

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
        client.transfer_request(cross_shard).await.map(|_| ()),
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
    // Nothing changed: one deposit, two transfers, one withdrawal.
    let balance = |id: String| {
        let client = client.clone();
        async move { client.get_account(&id).await.unwrap().balance }
    };
    assert_eq!(balance(a.clone()).await, i64::MAX - 10 - 20 - 1);
    assert_eq!(balance(b.clone()).await, 10);
    assert_eq!(balance(c.clone()).await, 20);

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
    assert!(!audit.totals.is_empty());
}
