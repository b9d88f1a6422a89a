//! Account lifecycle on real processes (README § Account lifecycle): freeze, unfreeze and close
//! through the client crate, the `wallet` CLI and the HTTP API; same-shard and cross-shard
//! transfers into and out of a frozen or closed account refused with nothing moved; each change
//! exactly-once by id; the states survive a restart of every node; the audit balances.

mod common;

use common::*;
use wallet_client::{AccountState, Reason, WalletClient};
use wallet_cluster::endpoints::Endpoints;

async fn state(client: &WalletClient, id: &str) -> AccountState {
    let account = client
        .get_account(id)
        .await
        .expect("read works in every state");
    AccountState::try_from(account.state).expect("known state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_and_closed_accounts_refuse_movements_on_every_path_and_survive_a_restart() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    // Two accounts on one shard, one on the other.
    let (a, a2, b) = (
        id_on(&cluster, "life", 1, 0),
        id_on(&cluster, "life", 1, 1),
        id_on(&cluster, "life", 2, 0),
    );
    for id in [&a, &a2, &b] {
        client.create_account(id, "USD", 0).await.expect("create");
    }
    client.deposit("fund", &a, i64::MAX).await.expect("fund");

    // Frozen credit side: a same-shard and a cross-shard transfer are refused, nothing moves.
    let frozen = client.freeze_account("f1", &a2).await.expect("freeze");
    assert_eq!(frozen.state, AccountState::Frozen as i32);
    client.freeze_account("f1", &b).await.expect("freeze b");
    assert_eq!(
        refusal(client.transfer("t1", &a, &a2, 5)).await,
        Reason::AccountFrozen
    );
    assert_eq!(
        refusal(client.transfer("t2", &a, &b, i64::MAX)).await,
        Reason::AccountFrozen
    );
    // The retry answers the first outcome, also after the unfreeze (G4).
    client.unfreeze_account("u1", &b).await.expect("unfreeze");
    assert_eq!(
        refusal(client.transfer("t2", &a, &b, i64::MAX)).await,
        Reason::AccountFrozen
    );
    let a_now = client.get_account(&a).await.expect("a");
    assert_eq!((a_now.balance, a_now.reserved), (i64::MAX, 0));
    assert_eq!(client.get_account(&b).await.expect("b").pending_credit, 0);
    // A frozen debit side refuses too; deposits and withdrawals as well.
    assert_eq!(
        refusal(client.transfer("t3", &a2, &a, 1)).await,
        Reason::AccountFrozen
    );
    assert_eq!(
        refusal(client.deposit("d1", &a2, 1)).await,
        Reason::AccountFrozen
    );
    // Unfrozen, the whole range moves across shards.
    client.transfer("t4", &a, &b, i64::MAX).await.expect("t4");
    assert_eq!(client.get_account(&b).await.expect("b").balance, i64::MAX);

    // Close: not while holding money, then for good once empty.
    assert_eq!(
        refusal(client.close_account("c1", &b)).await,
        Reason::AccountNotEmpty
    );
    client.withdraw("w1", &b, i64::MAX).await.expect("empty b");
    let closed = client.close_account("c2", &b).await.expect("close");
    assert_eq!(closed.state, AccountState::Closed as i32);
    assert_eq!(
        refusal(client.deposit("d2", &b, 1)).await,
        Reason::AccountClosed
    );
    assert_eq!(
        refusal(client.unfreeze_account("u2", &b)).await,
        Reason::AccountClosed
    );
    assert_eq!(
        refusal(client.freeze_account("c2", &b)).await,
        Reason::IdReused
    );

    // The CLI.
    let endpoint = cluster.playground.router_address.clone();
    let (ok, value, err) = wallet_json(
        &endpoint,
        &["account", "unfreeze", &a2, "--request-id", "u9"],
    );
    assert!(ok, "{err}");
    assert_eq!(value["state"], "OPEN", "{value}");
    let (ok, _, err) = wallet_json(&endpoint, &["account", "close", &b]);
    assert!(ok, "closing a closed account answers it: {err}");
    let (ok, value, err) = wallet_json(&endpoint, &["account", "freeze", &b]);
    assert!(!ok, "{value}");
    assert!(err.contains("ACCOUNT_CLOSED"), "{err}");
    client.deposit("d3", &a, 7).await.expect("deposit");
    let (ok, value, err) = wallet_json(&endpoint, &["account", "close", &a]);
    assert!(!ok, "{value}");
    assert!(err.contains("ACCOUNT_NOT_EMPTY"), "{err}");

    // History filters, through the CLI: a's deposits, and its transfer out by kind and by its
    // commit timestamp.
    let (ok, value, err) = wallet_json(&endpoint, &["history", &a, "--kinds", "deposit"]);
    assert!(ok, "{err}");
    let kinds: Vec<&str> = value["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["DEPOSIT", "DEPOSIT"], "{value}");
    let t4 = client.get_transfer("t4", &a).await.expect("t4");
    let ts = t4.commit_ts.to_string();
    let (ok, value, err) = wallet_json(
        &endpoint,
        &["history", &a, "--from-ts", &ts, "--to-ts", &ts],
    );
    assert!(ok, "{err}");
    assert_eq!(value["entries"][0]["kind"], "TRANSFER_OUT", "{value}");
    assert_eq!(
        value["entries"].as_array().map(Vec::len),
        Some(1),
        "{value}"
    );
    let (ok, _, err) = wallet_json(&endpoint, &["history", &a, "--kinds", "refund"]);
    assert!(!ok && err.contains("INVALID_ARGUMENT"), "{err}");

    // The HTTP API: path account, id by header, refusals with their statuses.
    let endpoints = Endpoints::load(&cluster.playground.dir).expect("endpoints.json");
    let url = |path: String| format!("http://{}{path}", endpoints.router.http);
    let (status, body) = curl(
        "POST",
        &url(format!("/v1/accounts/{a2}/freeze")),
        &["Idempotency-Key: h-f1"],
        Some("{}"),
    );
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("FROZEN")),
        "{body}"
    );
    let (status, body) = curl(
        "POST",
        &url(format!("/v1/accounts/{a2}/close")),
        &[],
        Some(r#"{"request_id": "h-c1"}"#),
    );
    assert_eq!(
        (status, body["reason"].as_str()),
        (422, Some("ACCOUNT_FROZEN")),
        "{body}"
    );
    let (status, body) = curl(
        "POST",
        &url(format!("/v1/accounts/{a2}/unfreeze")),
        &[],
        Some(&format!(r#"{{"request_id": "h-u1", "account_id": "{b}"}}"#)),
    );
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{body}"
    );
    assert_eq!(state(&client, &a2).await, AccountState::Frozen);
    let history = format!(
        "/v1/accounts/{a}/history?kinds=TRANSFER_OUT,WITHDRAW&to_ms={}",
        i64::MAX
    );
    let (status, body) = curl("GET", &url(history), &[], None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entries"].as_array().map(Vec::len), Some(1), "{body}");
    let backwards = format!("/v1/accounts/{a}/history?from_ts=9&to_ts=8");
    let (status, body) = curl("GET", &url(backwards), &[], None);
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_ARGUMENT")),
        "{body}"
    );

    // Every node restarts: the states come back from disk.
    for id in cluster.playground.node_ids() {
        cluster.playground.kill_node(id);
    }
    for id in cluster.playground.node_ids() {
        cluster.playground.start_node(id).expect("start");
    }
    cluster.ready().await;
    assert_eq!(state(&client, &a).await, AccountState::Open);
    assert_eq!(state(&client, &a2).await, AccountState::Frozen);
    assert_eq!(state(&client, &b).await, AccountState::Closed);
    assert_eq!(
        refusal(client.transfer("t5", &a, &b, 1)).await,
        Reason::AccountClosed
    );
    let audit = client.audit().await.expect("audit balances");
    assert_eq!(audit.totals[0].balances, "7", "{audit:?}");
    assert_eq!(audit.totals[0].accounts, 3);
}
