//! Failpoints at every step of the two-phase transfer and between fsync and apply on a node
//! (`fail` crate; this file builds only with `--features wallet-cluster/failpoints`, which README's
//! test command sets). After each fault: the total is conserved (G1), the transfer applied on both
//! sides or on neither (G2), no reservation or intent is left once recovery ran, and retrying the
//! same id changes nothing (G4).
#![cfg(feature = "failpoints")]

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use wallet_client::{ClientOptions, Reason, WalletClient};
use wallet_proto::v1::TransferStatus;

/// A router of the cluster's own with `FAILPOINTS` set, and a client that gives up quickly.
fn faulty_router(cluster: &Cluster, failpoints: &str) -> (Child, WalletClient) {
    let address = format!(
        "127.0.0.1:{}",
        wallet_cluster::playground::free_port().unwrap()
    );
    let child = cluster
        .playground
        .spawn_router(&address, "router-faulty", &[("FAILPOINTS", failpoints)])
        .unwrap();
    let client = WalletClient::with_options(
        &[address.as_str()],
        ClientOptions {
            retry_budget: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(5),
            tls: None,
        },
    )
    .unwrap();
    (child, client)
}

fn wait_exit(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The router dies at `point` in the middle of a transfer of 100 from a (shard 1) to b (shard 2);
/// the nodes finish or undo it without any router.
async fn router_killed_at(point: &str, expect_committed: bool) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let (a, b) = (on1[0].clone(), on2[0].clone());
    let (mut router, faulty) = faulty_router(&cluster, &format!("{point}=return(exit)"));
    let id = format!("fp-{point}");
    let result = faulty.transfer(&id, &a, &b, 100).await;
    assert!(
        result.is_err(),
        "the router died before answering: {result:?}"
    );
    assert_eq!(wait_exit(&mut router), Some(86), "router exited at {point}");

    let balances = settled(&client, &[a.clone(), b.clone()]).await;
    assert_eq!(balances[&a] + balances[&b], 2000, "G1 at {point}");
    let audit = client.audit().await.unwrap();
    assert_eq!(
        audit.totals[0].balances, "2000",
        "audit total = net deposits at {point}"
    );
    let status = client.get_transfer(&id, &a).await.unwrap().status;
    let expected = if expect_committed {
        (900, 1100, TransferStatus::Committed)
    } else {
        (1000, 1000, TransferStatus::Aborted)
    };
    assert_eq!(
        (balances[&a], balances[&b], status),
        (expected.0, expected.1, expected.2 as i32),
        "G2 at {point}"
    );
    // G4: the client retries the same id through a healthy router: the decision stands.
    let retry = client.transfer(&id, &a, &b, 100).await;
    if expect_committed {
        assert_eq!(retry.unwrap().status, TransferStatus::Committed as i32);
    } else {
        assert_eq!(retry.unwrap_err().reason, Reason::TransferAborted);
    }
    let again = settled(&client, &[a.clone(), b.clone()]).await;
    assert_eq!(again, balances, "the retry changed nothing at {point}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_after_prepare_debit() {
    router_killed_at("after-prepare-debit", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_after_prepare_credit() {
    router_killed_at("after-prepare-credit", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_before_commit_primary() {
    router_killed_at("before-commit-primary", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_after_commit_primary() {
    router_killed_at("after-commit-primary", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_killed_before_commit_credit() {
    router_killed_at("before-commit-credit", true).await;
}

/// A transient error and a panic in the coordinator. The client's automatic retry (same id)
/// completes the transfer that met the error, once. The panic ends the router process at once with
/// exit code 101 (fail-stop, G9: no process lingers after a panic), and the transfer it left after
/// both prepares is undone by recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_errors_and_panics_mid_transfer_leave_no_trace() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let (a, b) = (on1[0].clone(), on2[0].clone());

    let (mut erring, faulty) = faulty_router(&cluster, "before-commit-primary=1*return");
    let t = faulty.transfer("err-1", &a, &b, 10).await.unwrap();
    let _ = erring.kill();
    let _ = erring.wait();
    assert_eq!(t.status, TransferStatus::Committed as i32);

    let (mut panicking, faulty) = faulty_router(&cluster, "after-prepare-credit=panic");
    let panicked = faulty.transfer("panic-1", &a, &b, 20).await;
    assert!(panicked.is_err(), "{panicked:?}");
    let exit = panicking.wait().expect("router exit status");
    assert_eq!(exit.code(), Some(wallet_proto::fail_stop::PANIC_EXIT_CODE));
    let balances = settled(&client, &[a.clone(), b.clone()]).await;
    assert_eq!((balances[&a], balances[&b]), (990, 1010));
    let status = client.get_transfer("panic-1", &a).await.unwrap().status;
    assert_eq!(status, TransferStatus::Aborted as i32);
    let history = client.list_transfers(&a, 10, 0).await.unwrap();
    assert_eq!(
        history.entries.len(),
        2,
        "the funding deposit and err-1, once"
    );
}

/// A node killed between an fsync and the apply of what it made durable, during a workload:
/// nothing acknowledged is lost, and it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_between_fsync_and_apply_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let ids = open_accounts(&client, 12).await;
    let leaders = cluster.ready().await;
    let victim = leaders[&1];
    cluster.playground.kill_node(victim);
    cluster
        .playground
        .start_node_with_env(
            victim,
            &[("FAILPOINTS", "node-after-fsync=150*off->return")],
        )
        .unwrap();
    cluster.ready().await;
    let mark = std::sync::Arc::new(std::sync::Mutex::new(None));
    let acked = deposit_workload(
        client.clone(),
        ids.clone(),
        6,
        Instant::now() + Duration::from_secs(6),
        mark,
    )
    .await;
    assert!(
        !cluster.playground.node_running(victim),
        "the failpoint ended node {victim}"
    );
    cluster.playground.kill_node(victim);
    cluster.playground.start_node(victim).unwrap();
    cluster.caught_up(victim).await;
    assert_balances(&client, &acked.per_account).await;
}

/// G6: once a transfer is acknowledged, a read of its credit account sees it. The router's first
/// CommitCredit is lost: it used to answer OK anyway, and the credit was missing until recovery
/// applied it. Now the client gets UNAVAILABLE, retries by id (automatically), and the OK comes
/// once the credit is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_credit_is_seen_by_the_next_read() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let (a, b) = (on1[0].clone(), on2[0].clone());
    let (mut router, faulty) = faulty_router(&cluster, "commit-credit-lost=1*return");
    for i in 1..=5i64 {
        let t = faulty
            .transfer(&format!("late-{i}"), &a, &b, 10)
            .await
            .unwrap();
        assert_eq!(t.status, TransferStatus::Committed as i32);
        let seen = if i % 2 == 0 {
            client.get_account(&b).await.unwrap().balance
        } else {
            let history = client.list_transfers(&b, 100, 0).await.unwrap();
            history.entries[0].balance_after
        };
        assert_eq!(seen, 1000 + 10 * i, "read after acknowledged transfer {i}");
    }
    let _ = router.kill();
    let _ = router.wait();
}

/// The router dies at `point` in the middle of a linked chain of three items over both shards
/// (a → c, c → b, b → d; a, b on shard 1, c, d on shard 2): the nodes' recovery settles every item
/// the way the chain's one decision says, or aborts them all if none was made (G2).
async fn chain_router_killed_at(point: &str, expect_committed: bool) {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 2, 1000).await;
    let (a, b, c, d) = (
        on1[0].clone(),
        on1[1].clone(),
        on2[0].clone(),
        on2[1].clone(),
    );
    let all = [a.clone(), b.clone(), c.clone(), d.clone()];
    let (mut router, faulty) = faulty_router(&cluster, &format!("{point}=return(exit)"));
    let item =
        |id: &str, from: &str, to: &str, amount: i64, linked: bool| wallet_client::BatchTransfer {
            transfer: Some(wallet_client::TransferRequest {
                transfer_id: format!("{point}-{id}"),
                from_account_id: from.into(),
                to_account_id: to.into(),
                amount,
                issued_at_ms: 0,
            }),
            linked,
        };
    let chain = vec![
        item("1", &a, &c, 100, true),
        item("2", &c, &b, 50, true),
        item("3", &b, &d, 25, false),
    ];
    let answered = faulty.transfer_batch_linked(&chain).await;
    let none_ok = match &answered {
        Err(_) => true,
        Ok(results) => results.iter().all(|r| r.is_err()),
    };
    assert!(none_ok, "the router died before answering: {answered:?}");
    assert_eq!(wait_exit(&mut router), Some(86), "router exited at {point}");

    let balances = settled(&client, &all).await;
    assert_eq!(balances.values().sum::<i64>(), 4000, "G1 at {point}");
    let expected = if expect_committed {
        [900, 1025, 1050, 1025]
    } else {
        [1000; 4]
    };
    let got: Vec<i64> = all.iter().map(|id| balances[id]).collect();
    assert_eq!(got, expected, "G2 at {point}: every item or none");
    let want = if expect_committed {
        TransferStatus::Committed
    } else {
        TransferStatus::Aborted
    };
    for (n, from) in [(1, &a), (2, &c), (3, &b)] {
        let id = format!("{point}-{n}");
        // An item the router never prepared is not kept at all (it can never commit).
        match client.get_transfer(&id, from).await {
            Ok(t) => assert_eq!(t.status, want as i32, "{id} at {point}"),
            Err(e) => {
                assert!(!expect_committed, "{id}: {e}");
                assert_eq!(e.reason, Reason::TransferNotFound);
            }
        }
    }
    let audit = client.audit().await.unwrap();
    assert_eq!(audit.totals[0].balances, "4000", "audit at {point}");
    // G4: the same chain again through a healthy router answers the decision and changes nothing.
    let retry = client.transfer_batch_linked(&chain).await.expect("batch");
    assert_eq!(
        retry.iter().filter(|r| r.is_ok()).count(),
        if expect_committed { 3 } else { 0 },
        "retry at {point}: {retry:?}"
    );
    let again = settled(&client, &all).await;
    assert_eq!(again, balances, "the retry changed nothing at {point}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_router_killed_after_every_item_prepared() {
    chain_router_killed_at("chain-after-prepare", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_router_killed_after_the_decision() {
    chain_router_killed_at("chain-after-decide", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_router_killed_after_the_first_item_committed() {
    chain_router_killed_at("chain-after-first-commit", true).await;
}

/// A router dies between the steps of a cross-shard hold (payer on shard 1, payee on shard 2):
/// after the authorization (no promise yet: a capture through another router makes it first),
/// after the promise (not yet confirmed: the void releases both sides), and after the capture
/// (the payee's shard credits it by itself, from the hold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_hold_router_killed_between_its_steps() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 1, 1000).await;
    let (payer, shop) = (on1[0].clone(), on2[0].clone());
    let both = [payer.clone(), shop.clone()];
    let die_at = |point: &str| faulty_router(&cluster, &format!("{point}=return(exit)"));

    let (mut router, faulty) = die_at("hold-after-authorize");
    assert!(faulty.authorize("fa", &payer, &shop, 100, 0).await.is_err());
    assert_eq!(wait_exit(&mut router), Some(86));
    let hold = client.get_hold("fa", &payer).await.expect("held");
    assert!(hold.cross_shard && !hold.promised);
    let captured = client
        .capture("fa", &payer, 60)
        .await
        .expect("capture makes the promise");
    assert_eq!(captured.captured, 60);
    let balances = settled(&client, &both).await;
    assert_eq!((balances[&payer], balances[&shop]), (940, 1060));

    let (mut router, faulty) = die_at("hold-before-promised");
    assert!(faulty.authorize("fb", &payer, &shop, 200, 0).await.is_err());
    assert_eq!(wait_exit(&mut router), Some(86));
    assert_eq!(client.get_account(&shop).await.unwrap().pending_credit, 200);
    client.void("fb", &payer).await.expect("void");
    let balances = settled(&client, &both).await;
    assert_eq!((balances[&payer], balances[&shop]), (940, 1060));

    client
        .authorize("fc", &payer, &shop, 300, 0)
        .await
        .expect("authorize");
    let (mut router, faulty) = die_at("hold-after-capture");
    assert!(faulty.capture("fc", &payer, 0).await.is_err());
    assert_eq!(wait_exit(&mut router), Some(86));
    // The capture is the commit point: the payee's shard credits it by itself.
    let balances = settled(&client, &both).await;
    assert_eq!((balances[&payer], balances[&shop]), (640, 1360));
    let audit = client.audit().await.unwrap();
    assert_eq!(audit.totals[0].balances, "2000");
}
