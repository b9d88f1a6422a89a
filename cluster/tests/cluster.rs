//! Multi-process tests: real node and router processes on 127.0.0.1, real sled directories in temp
//! dirs, faults by kill -9. Each test states the guarantee it checks. The tests of this file run one
//! at a time (they share two cores and time-sensitive elections).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use wallet_client::Reason;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{command::Op, Command as ShardCmd, DepositRequest, ShardCommand};

fn cli(endpoint: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(wallet_cli())
        .args(["--endpoint", endpoint])
        .args(args)
        .output()
        .expect("run wallet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cli_command_works_end_to_end() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let ep = cluster.playground.router_address.clone();
    let ring = cluster.playground.topology.ring();
    // Two accounts on one shard (a same-shard transfer) and one on the other.
    let mut by_shard: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let id = format!("user{i}");
        by_shard.entry(ring.shard_of(&id)).or_default().push(id);
    }
    let same = &by_shard[&1];
    let (a, b) = (same[0].as_str(), same[1].as_str());
    let other = by_shard[&2][0].as_str();

    let (code, out, err) = cli(&ep, &["account", "create", a, "--currency", "USD"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(a) && out.contains("balance 0"), "{out}");
    let (code, out, _) = cli(
        &ep,
        &[
            "--json",
            "account",
            "create",
            b,
            "--currency",
            "USD",
            "--credit-limit",
            "500",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"floor\":-500"), "{out}");
    assert_eq!(
        cli(&ep, &["account", "create", other, "--currency", "USD"]).0,
        0
    );
    // An opening balance comes in once, however often the account is created.
    let funded = by_shard[&2][1].as_str();
    for _ in 0..2 {
        let (code, out, err) = cli(
            &ep,
            &[
                "account",
                "create",
                funded,
                "--currency",
                "USD",
                "--opening-balance",
                "250",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("balance 250"), "{out}");
    }

    let (code, out, _) = cli(&ep, &["deposit", a, "1000", "--id", "dep-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("balance 1000"), "{out}");
    // Same id again: applied once.
    let (code, out, _) = cli(&ep, &["deposit", a, "1000", "--id", "dep-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("balance 1000"), "{out}");
    let (code, out, _) = cli(&ep, &["withdraw", a, "100", "--id", "wd-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("balance 900"), "{out}");
    let (code, out, _) = cli(&ep, &["--json", "transfer", a, b, "250", "--id", "tr-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"from_balance_after\":650"), "{out}");
    let (code, out, _) = cli(&ep, &["--json", "account", "get", b]);
    assert_eq!(code, 0);
    assert!(out.contains("\"balance\":250"), "{out}");
    let (code, out, _) = cli(&ep, &["history", a, "--limit", "2"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("TRANSFER_OUT") && out.contains("WITHDRAW"),
        "{out}"
    );
    assert!(
        !out.contains("DEPOSIT") && out.contains("more: --cursor"),
        "{out}"
    );
    let (code, out, _) = cli(&ep, &["--json", "history", a]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("\"seq\"").count(), 3, "{out}");

    // Failures: non-zero exit and a one-line reason.
    let (code, _, err) = cli(&ep, &["withdraw", a, "100000"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("error: INSUFFICIENT_FUNDS"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Across shards (two-phase): both legs land.
    let (code, out, err) = cli(&ep, &["--json", "transfer", a, other, "50", "--id", "tr-x"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"from_balance_after\":600"), "{out}");
    let (_, out, _) = cli(&ep, &["--json", "account", "get", other]);
    assert!(out.contains("\"balance\":50"), "{out}");
    let (code, out, _) = cli(&ep, &["transfer-status", "tr-x", "--from", a]);
    assert_eq!(code, 0);
    assert!(
        out.contains("tr-x COMMITTED") && out.contains("commit_ts"),
        "{out}"
    );
    let (code, _, err) = cli(&ep, &["transfer", a, other, "100000"]);
    assert_ne!(code, 0);
    assert!(err.contains("INSUFFICIENT_FUNDS"), "{err}");
    let (code, _, err) = cli(&ep, &["account", "get", "nobody"]);
    assert_ne!(code, 0);
    assert!(err.contains("ACCOUNT_NOT_FOUND"), "{err}");
    let (code, _, err) = cli(&ep, &["deposit", a, "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("INVALID_AMOUNT"), "{err}");
    let (code, out, _) = cli(&ep, &["--json", "deposit", a, "5", "--id", "dep-1"]);
    assert_ne!(code, 0);
    assert!(out.contains("\"error\":\"ID_REUSED\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_reason_code_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let ring = cluster.playground.topology.ring();
    let ids: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
    let on = |shard: u64| -> Vec<String> {
        ids.iter()
            .filter(|id| ring.shard_of(id) == shard)
            .cloned()
            .collect()
    };
    let (s1, s2) = (on(1), on(2));
    let (a, b) = (s1[0].clone(), s1[1].clone());
    let c = s2[0].clone();
    client.create_account(&a, "USD", 0).await.unwrap();
    client.create_account(&b, "USD", 0).await.unwrap();
    client.create_account(&c, "USD", 0).await.unwrap();
    let eur = s1[2].clone();
    client.create_account(&eur, "EUR", 0).await.unwrap();
    let (eur2, ghost2) = (s2[1].clone(), s2[2].clone());
    client.create_account(&eur2, "EUR", 0).await.unwrap();
    client.deposit("seed", &a, 100).await.unwrap();

    let long = "x".repeat(65);
    let cases: Vec<(Reason, wallet_client::WalletError)> = vec![
        (
            Reason::InvalidAmount,
            client.deposit("r1", &a, 0).await.unwrap_err(),
        ),
        (
            Reason::InvalidAmount,
            client.deposit("r1", &a, -7).await.unwrap_err(),
        ),
        (
            Reason::InvalidAmount,
            client.withdraw("r1", &a, i64::MIN).await.unwrap_err(),
        ),
        (
            Reason::BalanceOverflow,
            client.deposit("r2", &a, i64::MAX).await.unwrap_err(),
        ),
        (
            Reason::AccountNotFound,
            client.deposit("r3", "ghost", 5).await.unwrap_err(),
        ),
        (
            Reason::InvalidId,
            client.deposit("r4", &long, 5).await.unwrap_err(),
        ),
        (
            Reason::InvalidId,
            client.deposit("bad id", &a, 5).await.unwrap_err(),
        ),
        (
            Reason::InvalidId,
            client.deposit("", &a, 5).await.unwrap_err(),
        ),
        (
            Reason::InvalidCurrency,
            client.create_account("n1", "usd", 0).await.unwrap_err(),
        ),
        (
            Reason::InvalidAmount,
            client.create_account("n1", "USD", -1).await.unwrap_err(),
        ),
        (
            Reason::AccountExists,
            client.create_account(&a, "EUR", 0).await.unwrap_err(),
        ),
        (
            Reason::CurrencyMismatch,
            client.transfer("t1", &a, &eur, 5).await.unwrap_err(),
        ),
        (
            Reason::SameAccount,
            client.transfer("t2", &a, &a, 5).await.unwrap_err(),
        ),
        (
            Reason::InsufficientFunds,
            client.transfer("t3", &a, &b, 101).await.unwrap_err(),
        ),
        (
            Reason::InsufficientFunds,
            client.transfer("t4", &a, &c, 101).await.unwrap_err(),
        ),
        (
            Reason::CurrencyMismatch,
            client.transfer("t5", &a, &eur2, 5).await.unwrap_err(),
        ),
        (
            Reason::AccountNotFound,
            client.transfer("t6", &a, &ghost2, 5).await.unwrap_err(),
        ),
        (
            Reason::TransferNotFound,
            client.get_transfer("t9", &a).await.unwrap_err(),
        ),
    ];
    for (want, got) in &cases {
        assert_eq!(got.reason, *want, "{got}");
    }
    // Reused id with other content.
    client.deposit("same", &a, 10).await.unwrap();
    let reused = client.deposit("same", &a, 11).await.unwrap_err();
    assert_eq!(reused.reason, Reason::IdReused);
    // An oversized request is refused by the server before it is decoded.
    let huge = "y".repeat(64 * 1024);
    let too_big = client.deposit(&huge, &a, 1).await.unwrap_err();
    assert!(!too_big.reason.is_retryable(), "{too_big}");
    // Garbage bytes on the wire: the connection is refused, the server keeps serving.
    {
        use std::io::Write;
        let mut raw = std::net::TcpStream::connect(&cluster.playground.router_address).unwrap();
        let _ = raw.write_all(b"\x00\x01garbage that is not HTTP/2 at all\r\n\r\n");
    }
    let account = client.get_account(&a).await.unwrap();
    assert_eq!(
        account.balance, 110,
        "only the seed and one deposit applied"
    );
    assert_eq!(account.version, 2);
    assert_eq!(client.get_account(&b).await.unwrap().balance, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_to_the_wrong_shard_is_refused_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let ring = cluster.playground.topology.ring();
    let account = (0..100)
        .map(|i| format!("w{i}"))
        .find(|id| ring.shard_of(id) == 1)
        .unwrap();
    client.create_account(&account, "USD", 0).await.unwrap();
    // Ask every node to deposit into a shard-1 account as if it lived on shard 2.
    for node in &cluster.playground.topology.nodes {
        let mut shard = ShardClient::connect(format!("http://{}", node.address))
            .await
            .unwrap();
        let err = shard
            .execute(ShardCommand {
                shard_id: 2,
                command: Some(ShardCmd {
                    request_id: "stale".into(),
                    at_ms: 0,
                    ts: 0,
                    op: Some(Op::Deposit(DepositRequest {
                        issued_at_ms: 0,
                        request_id: "stale".into(),
                        account_id: account.clone(),
                        amount: 99,
                    })),
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(
            wallet_proto::reason::of_status(&err),
            Reason::WrongShard,
            "{err:?}"
        );
    }
    let read = client.get_account(&account).await.unwrap();
    assert_eq!((read.balance, read.version), (0, 0));
    // The id was not consumed either: the real deposit with it applies.
    client.deposit("stale", &account, 99).await.unwrap();
    assert_eq!(client.get_account(&account).await.unwrap().balance, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_with_the_same_id_applies_once() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let ids = open_accounts(&client, 4).await;
    // The same deposit sent by 8 concurrent callers (a client that timed out and retried, twice over).
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let id = ids[0].clone();
        tasks.push(tokio::spawn(async move {
            client.deposit("pay-42", &id, 500).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    assert!(
        outcomes.windows(2).all(|w| w[0] == w[1]),
        "every retry returns the first outcome"
    );
    assert_eq!(client.get_account(&ids[0]).await.unwrap().balance, 500);
    let history = client.list_transfers(&ids[0], 10, 0).await.unwrap();
    assert_eq!(history.entries.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_during_workload_loses_no_acknowledged_write_and_restart_catches_up_by_snapshot(
) {
    let _serial = SERIAL.lock().await;
    // Small compaction interval: the killed node falls behind the leaders' logs.
    let cluster = Cluster::start(2, 100).await;
    let mut cluster = cluster;
    let client = cluster.client();
    let accounts = open_accounts(&client, 24).await;
    let leaders = cluster.ready().await;
    let victim = leaders[&1];

    let mark = Arc::new(Mutex::new(None));
    let stop_at = Instant::now() + Duration::from_secs(9);
    let workload = tokio::spawn(deposit_workload(
        client.clone(),
        accounts.clone(),
        8,
        stop_at,
        mark.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.playground.kill_node(victim);
    *mark.lock().unwrap() = Some(Instant::now());
    let acked = workload.await.unwrap();
    let (_, after_kill) = acked.after.unwrap();
    assert!(
        after_kill > 50,
        "writes went on after failover: only {after_kill} acknowledged"
    );
    let new_leaders = cluster.ready().await;
    assert_ne!(new_leaders[&1], victim, "shard 1 has a new leader");
    assert_balances(&client, &acked.per_account).await;

    // The killed node restarts and catches up; its log was compacted away by the leaders meanwhile.
    cluster.playground.start_node(victim).unwrap();
    cluster.caught_up(victim).await;
    let log = std::fs::read_to_string(
        cluster
            .playground
            .dir
            .join(format!("logs/node-{victim}.log")),
    )
    .unwrap();
    assert!(
        log.contains("installed snapshot"),
        "node {victim} caught up by snapshot\n{}",
        cluster.logs()
    );
    // Take another node down: the shards now need the restarted node for a majority.
    let other = cluster
        .playground
        .node_ids()
        .into_iter()
        .find(|id| *id != victim)
        .unwrap();
    cluster.playground.kill_node(other);
    cluster.ready().await;
    assert_balances(&client, &acked.per_account).await;
    client
        .deposit("after-restart", &accounts[0], 1)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_is_rebuilt_from_its_peers() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 100).await;
    let client = cluster.client();
    let accounts = open_accounts(&client, 12).await;
    let mark = Arc::new(Mutex::new(None));
    let acked = deposit_workload(
        client.clone(),
        accounts.clone(),
        4,
        Instant::now() + Duration::from_secs(3),
        mark,
    )
    .await;
    cluster.playground.kill_node(3);
    cluster.playground.wipe_node(3).unwrap();
    cluster.playground.start_node(3).unwrap();
    cluster.caught_up(3).await;
    let status = cluster.playground.status(3).await.unwrap();
    let total_accounts: u64 = status.replicas.iter().map(|r| r.accounts).sum();
    assert_eq!(
        total_accounts,
        accounts.len() as u64,
        "node 3 holds every account again"
    );
    // Serve with node 1 down: every majority now includes the rebuilt node.
    cluster.playground.kill_node(1);
    cluster.ready().await;
    assert_balances(&client, &acked.per_account).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_killed_at_once_keep_every_acknowledged_balance() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let accounts = open_accounts(&client, 16).await;
    let mark = Arc::new(Mutex::new(None));
    let stop_at = Instant::now() + Duration::from_secs(3);
    let acked = deposit_workload(client.clone(), accounts.clone(), 8, stop_at, mark).await;
    assert!(acked.count > 20);
    for id in cluster.playground.node_ids() {
        cluster.playground.kill_node(id);
    }
    for id in cluster.playground.node_ids() {
        cluster.playground.start_node(id).unwrap();
    }
    cluster.ready().await;
    assert_balances(&client, &acked.per_account).await;
    // And the history of each account lists exactly the acknowledged deposits.
    let first = &accounts[0];
    let page = client.list_transfers(first, 1000, 0).await.unwrap();
    let sum: i64 = page.entries.iter().map(|e| e.delta).sum();
    assert_eq!(sum, acked.per_account.get(first).copied().unwrap_or(0));
    assert!(
        cluster.playground.stop_all().is_empty(),
        "nodes stop cleanly on SIGTERM"
    );
}
