//! Linked chains on a real cluster (3 nodes, 2 shards, real sled dirs): a chain whose items live
//! on both shards commits every item or none (G2), answers each item (the failed one its refusal,
//! the others CHAIN_FAILED), applies once however often it is sent (G4), keeps audits balanced
//! (G1), and the `wallet batch` CLI and `POST /v1/transfer-batches` send chains from items flagged
//! `linked`.

mod common;

use std::collections::BTreeMap;

use common::*;
use wallet_client::{BatchTransfer, Reason, TransferRequest, TransferStatus, WalletClient};

fn item(id: &str, from: &str, to: &str, amount: i64, linked: bool) -> BatchTransfer {
    BatchTransfer {
        transfer: Some(TransferRequest {
            issued_at_ms: 0,
            transfer_id: id.into(),
            from_account_id: from.into(),
            to_account_id: to.into(),
            amount,
        }),
        linked,
    }
}

async fn balances(client: &WalletClient, ids: &[&String]) -> Vec<i64> {
    let mut out = Vec::new();
    for id in ids {
        out.push(client.get_account(id).await.expect("read").balance);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_across_shards_commits_all_or_nothing_and_answers_every_item() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [s1, s2] = accounts(&cluster, &client, 2, 1_000).await;
    let (a, b, c, d) = (&s1[0], &s1[1], &s2[0], &s2[1]);
    let all = [a, b, c, d];

    // A marketplace split (a pays c the price, b the platform fee, d the tax), an independent
    // transfer, then an FX-style pair where the second leg cannot be paid.
    let batch = vec![
        item("split-seller", a, c, 700, true),
        item("split-fee", a, b, 50, true),
        item("split-tax", a, d, 100, false),
        item("lone", b, c, 10, false),
        item("fx-usd", c, a, 300, true),
        item("fx-eur", d, b, 5_000, false),
    ];
    let first = client.transfer_batch_linked(&batch).await.expect("batch");
    assert_eq!(first.len(), batch.len());
    let split: Vec<_> = first[..3]
        .iter()
        .map(|r| r.as_ref().expect("committed"))
        .collect();
    assert!(split
        .iter()
        .all(|t| t.status == TransferStatus::Committed as i32));
    // One chain, one commit timestamp, named on every item.
    assert!(split
        .iter()
        .all(|t| t.commit_ts == split[0].commit_ts && t.commit_ts > 0));
    let chain = split[0].chain.clone().expect("chain named");
    assert_eq!(
        (
            chain.account_id.as_str(),
            chain.chain_id.as_str(),
            chain.legs
        ),
        (a.as_str(), "split-seller", 3)
    );
    assert!(first[3].is_ok());
    assert_eq!(first[4].as_ref().unwrap_err().reason, Reason::ChainFailed);
    assert!(first[4].as_ref().unwrap_err().message.contains("item 2"));
    assert_eq!(
        first[5].as_ref().unwrap_err().reason,
        Reason::InsufficientFunds
    );
    assert_eq!(
        balances(&client, &all).await,
        vec![150, 1_040, 1_710, 1_100]
    );
    // The aborted chain's first item left nothing behind and is ABORTED.
    let fx = client.get_transfer("fx-usd", c).await.expect("kept");
    assert_eq!(fx.status, TransferStatus::Aborted as i32);

    // G4: the same batch again answers the same and changes nothing.
    let again = client.transfer_batch_linked(&batch).await.expect("batch");
    for (x, y) in first.iter().zip(&again) {
        match (x, y) {
            (Ok(x), Ok(y)) => assert_eq!((x.status, x.commit_ts), (y.status, y.commit_ts)),
            (Err(x), Err(y)) => assert_eq!(x.reason, y.reason),
            other => panic!("retry answered differently: {other:?}"),
        }
    }
    assert_eq!(
        balances(&client, &all).await,
        vec![150, 1_040, 1_710, 1_100]
    );
    // Even once d could pay: the chain's decision stands (G4).
    let again = client
        .transfer_batch_linked(&batch[4..])
        .await
        .expect("batch");
    assert_eq!(
        again[1].as_ref().unwrap_err().reason,
        Reason::InsufficientFunds
    );

    // The same first item in another chain is ID_REUSED; a chain with a bad item fails whole
    // before anything is written; a chain with twice the same id on one account too.
    let reused = vec![
        item("split-seller", a, c, 700, true),
        item("other", a, b, 1, false),
    ];
    let r = client.transfer_batch_linked(&reused).await.expect("batch");
    assert_eq!(r[0].as_ref().unwrap_err().reason, Reason::IdReused);
    assert_eq!(r[1].as_ref().unwrap_err().reason, Reason::ChainFailed);
    let bad = vec![
        item("bad-1", b, c, 1, true),
        item("bad-2", b, b, 1, true),
        item("bad-3", b, d, i64::MAX, false),
    ];
    let r = client.transfer_batch_linked(&bad).await.expect("batch");
    let reasons: Vec<Reason> = r.iter().map(|r| r.as_ref().unwrap_err().reason).collect();
    assert_eq!(
        reasons,
        vec![
            Reason::ChainFailed,
            Reason::SameAccount,
            Reason::ChainFailed
        ]
    );
    let twice = vec![item("tw", b, c, 1, true), item("tw", b, d, 1, false)];
    let r = client.transfer_batch_linked(&twice).await.expect("batch");
    assert_eq!(r[1].as_ref().unwrap_err().reason, Reason::IdReused);
    assert_eq!(
        client.get_transfer("bad-1", b).await.unwrap_err().reason,
        Reason::TransferNotFound
    );
    // The whole range: an item of i64::MAX that the debit cannot cover aborts the chain.
    let max = vec![
        item("max-1", c, a, 1, true),
        item("max-2", c, d, i64::MAX, false),
    ];
    let r = client.transfer_batch_linked(&max).await.expect("batch");
    assert_eq!(r[1].as_ref().unwrap_err().reason, Reason::InsufficientFunds);
    assert_eq!(
        balances(&client, &all).await,
        vec![150, 1_040, 1_710, 1_100]
    );

    let audit = client.audit().await.expect("audit");
    assert_eq!(audit.totals[0].balances, "4000");
    // Nothing stays reserved or promised: every aborted chain released its prepared items.
    for id in all {
        let account = client.get_account(id).await.expect("read");
        assert_eq!((account.reserved, account.pending_credit), (0, 0), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chains_over_shared_accounts_conserve_money_and_stay_whole() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [s1, s2] = accounts(&cluster, &client, 3, 300).await;
    let ids: Vec<String> = s1.into_iter().chain(s2).collect();
    // 8 batches at once, each of 5 chains of 2 to 8 items between the same 6 accounts: some
    // run short of money and abort whole.
    let mut tasks = Vec::new();
    for n in 0..8usize {
        let (client, ids) = (client.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let mut batch = Vec::new();
            for c in 0..5usize {
                let legs = 2 + (n + c) % 7;
                for k in 0..legs {
                    let from = &ids[(n + c + k) % ids.len()];
                    let to = &ids[(n + 2 * c + k + 1) % ids.len()];
                    let to = if to == from {
                        &ids[(n + c + k + 1) % ids.len()]
                    } else {
                        to
                    };
                    let amount = 1 + ((n * 31 + c * 7 + k * 13) % 90) as i64;
                    batch.push(item(
                        &format!("cc-{n}-{c}-{k}"),
                        from,
                        to,
                        amount,
                        k + 1 < legs,
                    ));
                }
            }
            let results = client.transfer_batch_linked(&batch).await.expect("batch");
            (batch, results)
        }));
    }
    let mut chains_committed = 0;
    for task in tasks {
        let (batch, results) = task.await.expect("task");
        let mut start = 0;
        for (i, item) in batch.iter().enumerate() {
            if item.linked {
                continue;
            }
            let chain = &results[start..=i];
            let ok = chain.iter().filter(|r| r.is_ok()).count();
            assert!(
                ok == 0 || ok == chain.len(),
                "a chain is all or nothing: {chain:?}"
            );
            if ok > 0 {
                chains_committed += 1;
            } else {
                assert!(chain
                    .iter()
                    .any(|r| r.as_ref().unwrap_err().reason != Reason::ChainFailed));
            }
            start = i + 1;
        }
    }
    assert!(chains_committed > 0);
    let balances: BTreeMap<String, i64> = settled(&client, &ids).await;
    assert_eq!(balances.values().sum::<i64>(), 6 * 300, "G1");
    let audit = client.audit().await.expect("audit");
    assert_eq!(audit.totals[0].balances, "1800");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_chains_from_linked_lines() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [s1, s2] = accounts(&cluster, &client, 1, 500).await;
    let (a, c) = (&s1[0], &s2[0]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("chains.jsonl");
    std::fs::write(
        &file,
        format!(
            "{{\"id\":\"k1\",\"from\":\"{a}\",\"to\":\"{c}\",\"amount\":100,\"linked\":true}}\n\
             {{\"id\":\"k2\",\"from\":\"{c}\",\"to\":\"{a}\",\"amount\":30}}\n\
             {{\"id\":\"k3\",\"from\":\"{a}\",\"to\":\"{c}\",\"amount\":1,\"linked\":true}}\n\
             {{\"id\":\"k4\",\"from\":\"{c}\",\"to\":\"{a}\",\"amount\":100000}}\n"
        ),
    )
    .expect("write");
    let path = file.to_string_lossy().into_owned();
    let endpoint = cluster.playground.router_address.clone();
    let (ok, json, _) = wallet_json(&endpoint, &["batch", &path]);
    assert!(!ok, "a refused line makes the exit code non-zero");
    let lines = json.as_array().expect("one result per line");
    let errors: Vec<&str> = lines
        .iter()
        .map(|l| l["error"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(errors, vec!["", "", "CHAIN_FAILED", "INSUFFICIENT_FUNDS"]);
    assert_eq!(lines[0]["transfer"]["chain"]["chain_id"], "k1");
    assert_eq!(client.get_account(a).await.expect("read").balance, 430);
    assert_eq!(client.get_account(c).await.expect("read").balance, 570);

    // The HTTP API: the same through POST /v1/transfer-batches.
    let endpoints =
        wallet_cluster::endpoints::Endpoints::load(&cluster.playground.dir).expect("endpoints");
    let url = format!("http://{}/v1/transfer-batches", endpoints.router.http);
    let batch = format!(
        r#"{{"transfers": [
            {{"transfer": {{"transfer_id": "w1", "from_account_id": "{a}", "to_account_id": "{c}", "amount": 5}}, "linked": true}},
            {{"transfer": {{"transfer_id": "w2", "from_account_id": "{c}", "to_account_id": "{a}", "amount": 2}}}},
            {{"transfer": {{"transfer_id": "w3", "from_account_id": "{a}", "to_account_id": "{c}", "amount": 1}}, "linked": true}},
            {{"transfer": {{"transfer_id": "w4", "from_account_id": "{c}", "to_account_id": "{a}", "amount": 9999999}}}}
        ]}}"#
    );
    let (status, answer) = curl("POST", &url, &[], Some(&batch));
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results[0]["transfer"]["status"], "COMMITTED", "{answer}");
    assert_eq!(results[0]["transfer"]["chain"]["legs"], 2, "{answer}");
    assert_eq!(results[1]["transfer"]["status"], "COMMITTED", "{answer}");
    assert_eq!(results[2]["error"]["reason"], "CHAIN_FAILED", "{answer}");
    assert_eq!(
        results[3]["error"]["reason"], "INSUFFICIENT_FUNDS",
        "{answer}"
    );
    assert_eq!(client.get_account(a).await.expect("read").balance, 427);
    // A malformed item refuses the whole body before anything is sent.
    let (status, answer) = curl(
        "POST",
        &url,
        &[],
        Some(r#"{"transfers": [{"transfer": {}, "linkd": true}]}"#),
    );
    assert_eq!(
        (status, answer["reason"].as_str()),
        (400, Some("INVALID_ARGUMENT"))
    );
}
