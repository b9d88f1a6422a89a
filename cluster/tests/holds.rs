//! Holds on real processes (README § Holds): authorize, partial capture, retries, void, an expiry
//! released by the shard's own recovery through its log, a pending hold across a restart of every
//! node, audits showing held money; through the client crate, the `wallet` CLI and the HTTP API;
//! and holds whose payee lives on another shard (promised there, credited with the capture).

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet_client::{HoldState, Reason, WalletClient};
use wallet_cluster::endpoints::Endpoints;

/// An audit's USD totals: (balances, held).
async fn usd_audit(client: &WalletClient) -> (String, String) {
    let audit = client.audit().await.expect("audit");
    let usd = audit
        .totals
        .iter()
        .find(|t| t.currency == "USD")
        .expect("USD");
    (usd.balances.clone(), usd.held.clone())
}

async fn money(client: &WalletClient, id: &str) -> (i64, i64, i64) {
    let a = client.get_account(id).await.expect("account");
    (a.balance, a.reserved, a.pending_credit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_authorize_capture_void_and_expire_through_every_interface() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    // Payer and shop on one shard, another account on the other.
    let (payer, shop, elsewhere) = (
        id_on(&cluster, "card", 1, 0),
        id_on(&cluster, "card", 1, 1),
        id_on(&cluster, "card", 2, 0),
    );
    for id in [&payer, &shop, &elsewhere] {
        client.create_account(id, "USD", 0).await.expect("create");
    }
    client
        .deposit("fund", &payer, i64::MAX)
        .await
        .expect("fund");

    // Authorize i64::MAX - 1; partial capture; a retry of the capture answers it.
    let hold = client
        .authorize("h1", &payer, &shop, i64::MAX - 1, 0)
        .await
        .expect("authorize");
    assert_eq!(hold.state, HoldState::Pending as i32);
    assert_eq!(money(&client, &payer).await, (i64::MAX, i64::MAX - 1, 0));
    assert_eq!(money(&client, &shop).await, (0, 0, i64::MAX - 1));
    assert_eq!(
        refusal(client.withdraw("w", &payer, 2)).await,
        Reason::InsufficientFunds
    );
    let audit = client.audit().await.expect("audit");
    assert_eq!(audit.totals[0].held, (i64::MAX - 1).to_string());
    let listed = client.list_holds(&payer, 10, "").await.expect("list");
    assert_eq!(listed.holds, vec![hold.clone()]);
    let captured = client.capture("h1", &payer, 1000).await.expect("capture");
    assert_eq!(
        (captured.state, captured.captured),
        (HoldState::Captured as i32, 1000)
    );
    assert_eq!(
        client.capture("h1", &payer, 1000).await.expect("retry"),
        captured
    );
    assert_eq!(
        refusal(client.capture("h1", &payer, 5)).await,
        Reason::HoldNotPending
    );
    assert_eq!(money(&client, &payer).await, (i64::MAX - 1000, 0, 0));
    assert_eq!(money(&client, &shop).await, (1000, 0, 0));

    // A payee on the other shard: the hold is promised there.
    let across = client
        .authorize("h2", &payer, &elsewhere, 1, 0)
        .await
        .expect("authorize across shards");
    assert!(across.cross_shard && across.promised, "{across:?}");
    assert_eq!(money(&client, &elsewhere).await, (0, 0, 1));
    client.void("h2", &payer).await.expect("void");
    assert_eq!(money(&client, &elsewhere).await, (0, 0, 0));

    // An expiry of 300 ms: the shard's recovery releases it through its log.
    client
        .authorize("h3", &payer, &shop, 77, 300)
        .await
        .expect("authorize");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hold = client.get_hold("h3", &payer).await.expect("hold");
        if hold.state == HoldState::Expired as i32 {
            assert!(hold.decided_ts >= hold.expires_at_ts, "{hold:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {hold:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        refusal(client.capture("h3", &payer, 0)).await,
        Reason::HoldExpired
    );
    assert_eq!(money(&client, &payer).await, (i64::MAX - 1000, 0, 0));

    // The CLI: authorize, status, list, void.
    let endpoint = cluster.playground.router_address.clone();
    let (ok, v, err) = wallet_json(
        &endpoint,
        &["hold", "authorize", &payer, &shop, "500", "--id", "h4"],
    );
    assert!(ok, "{err}");
    assert_eq!(v["state"], "PENDING", "{v}");
    let (ok, v, err) = wallet_json(&endpoint, &["hold", "list", &payer]);
    assert!(ok, "{err}");
    assert_eq!(v["holds"][0]["hold_id"], "h4", "{v}");
    let (ok, v, err) = wallet_json(&endpoint, &["hold", "list", &shop, "--payee"]);
    assert!(ok, "{err}");
    assert_eq!(v["holds"][0]["from_account_id"], payer.as_str(), "{v}");
    assert_eq!(v["holds"][0]["hold_id"], "h4", "{v}");
    let (ok, v, err) = wallet_json(&endpoint, &["hold", "void", "h4", "--from", &payer]);
    assert!(ok, "{err}");
    assert_eq!(v["state"], "VOIDED", "{v}");
    let (ok, v, err) = wallet_json(&endpoint, &["hold", "capture", "h4", "--from", &payer]);
    assert!(!ok && err.contains("HOLD_NOT_PENDING"), "{v} {err}");
    let (ok, v, err) = wallet_json(&endpoint, &["hold", "status", "h4", "--from", &payer]);
    assert!(ok, "{err}");
    assert_eq!(v["state"], "VOIDED", "{v}");

    // The HTTP API: authorize by Idempotency-Key, capture by path, read back.
    let endpoints = Endpoints::load(&cluster.playground.dir).expect("endpoints.json");
    let url = |path: String| format!("http://{}{path}", endpoints.router.http);
    let body =
        format!(r#"{{"from_account_id": "{payer}", "to_account_id": "{shop}", "amount": 250}}"#);
    let (status, h) = curl(
        "POST",
        &url("/v1/holds".into()),
        &["Idempotency-Key: h5"],
        Some(&body),
    );
    assert_eq!((status, h["state"].as_str()), (200, Some("PENDING")), "{h}");
    let (status, again) = curl(
        "POST",
        &url("/v1/holds".into()),
        &["Idempotency-Key: h5"],
        Some(&body),
    );
    assert_eq!((status, &again), (200, &h), "exactly once by key");

    // A pending hold survives a restart of every node; then it captures.
    for id in cluster.playground.node_ids() {
        cluster.playground.kill_node(id);
    }
    for id in cluster.playground.node_ids() {
        cluster.playground.start_node(id).expect("start");
    }
    cluster.ready().await;
    assert_eq!(money(&client, &payer).await, (i64::MAX - 1000, 250, 0));
    let capture = format!(r#"{{"from_account_id": "{payer}", "amount": 0}}"#);
    let (status, h) = curl(
        "POST",
        &url("/v1/holds/h5/capture".into()),
        &[],
        Some(&capture),
    );
    assert_eq!(
        (status, h["state"].as_str(), h["captured"].as_i64()),
        (200, Some("CAPTURED"), Some(250)),
        "{h}"
    );
    let (status, h) = curl("GET", &url(format!("/v1/holds/h5?from={payer}")), &[], None);
    assert_eq!((status, h["captured"].as_i64()), (200, Some(250)), "{h}");
    let (status, e) = curl(
        "POST",
        &url("/v1/holds/h5/void".into()),
        &[],
        Some(&format!(r#"{{"from_account_id": "{payer}"}}"#)),
    );
    assert_eq!(
        (status, e["reason"].as_str()),
        (422, Some("HOLD_NOT_PENDING")),
        "{e}"
    );
    let (status, e) = curl(
        "GET",
        &url(format!("/v1/holds/nope?from={payer}")),
        &[],
        None,
    );
    assert_eq!(
        (status, e["reason"].as_str()),
        (404, Some("HOLD_NOT_FOUND")),
        "{e}"
    );

    assert_eq!(money(&client, &payer).await, (i64::MAX - 1250, 0, 0));
    assert_eq!(money(&client, &shop).await, (1250, 0, 0));
    let audit = client.audit().await.expect("audit balances");
    assert_eq!(audit.totals[0].held, "0");
    assert_eq!(audit.totals[0].balances, i64::MAX.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_shard_hold_is_promised_captured_in_part_voided_or_expired_and_audits_balance() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let (payer, shop, euro) = (
        id_on(&cluster, "xh", 1, 0),
        id_on(&cluster, "xh", 2, 0),
        id_on(&cluster, "xh", 2, 1),
    );
    client
        .create_account(&payer, "USD", 0)
        .await
        .expect("create");
    client
        .create_account(&shop, "USD", 0)
        .await
        .expect("create");
    client
        .create_account(&euro, "EUR", 0)
        .await
        .expect("create");
    client.deposit("fund", &payer, 10_000).await.expect("fund");

    let hold = client
        .authorize("x1", &payer, &shop, 4_000, 0)
        .await
        .expect("authorize");
    assert!(hold.cross_shard && hold.promised);
    assert_eq!(money(&client, &payer).await, (10_000, 4_000, 0));
    assert_eq!(money(&client, &shop).await, (0, 0, 4_000));
    // An audit does not wait for a pending hold, and balances.
    assert_eq!(usd_audit(&client).await, ("10000".into(), "4000".into()));
    // The same authorization again answers the same hold.
    assert_eq!(
        client
            .authorize("x1", &payer, &shop, 4_000, 0)
            .await
            .expect("retry"),
        hold
    );
    let captured = client.capture("x1", &payer, 1_500).await.expect("capture");
    assert_eq!(
        (captured.state, captured.captured),
        (HoldState::Captured as i32, 1_500)
    );
    // Acknowledged: the credit is seen by the next read (G6), the rest released on both sides.
    assert_eq!(money(&client, &shop).await, (1_500, 0, 0));
    assert_eq!(money(&client, &payer).await, (8_500, 0, 0));
    assert_eq!(
        client.capture("x1", &payer, 1_500).await.expect("retry"),
        captured
    );
    assert_eq!(money(&client, &shop).await, (1_500, 0, 0));
    let shop_history = client.list_transfers(&shop, 10, 0).await.expect("history");
    assert_eq!(shop_history.entries[0].delta, 1_500);

    // A payee that cannot take it: refused at the authorization, nothing held; the same answer again.
    assert_eq!(
        refusal(client.authorize("x2", &payer, &euro, 10, 0)).await,
        Reason::CurrencyMismatch
    );
    assert_eq!(money(&client, &payer).await, (8_500, 0, 0));
    assert_eq!(
        refusal(client.authorize("x2", &payer, &euro, 10, 0)).await,
        Reason::CurrencyMismatch
    );

    // Void, and an expiry released on both sides by the shards' recovery.
    client
        .authorize("x3", &payer, &shop, 100, 0)
        .await
        .expect("authorize");
    let voided = client.void("x3", &payer).await.expect("void");
    assert_eq!(voided.state, HoldState::Voided as i32);
    client
        .authorize("x4", &payer, &shop, 200, 300)
        .await
        .expect("authorize");
    let deadline = Instant::now() + Duration::from_secs(30);
    while money(&client, &shop).await != (1_500, 0, 0)
        || money(&client, &payer).await != (8_500, 0, 0)
    {
        assert!(
            Instant::now() < deadline,
            "the expired hold was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        client.get_hold("x4", &payer).await.expect("hold").state,
        HoldState::Expired as i32
    );
    assert_eq!(
        refusal(client.capture("x4", &payer, 0)).await,
        Reason::HoldExpired
    );
    assert_eq!(usd_audit(&client).await, ("10000".into(), "0".into()));
}
