//! Hardening on real processes (G9): no legal request, whatever its values, may cost a shard, and
//! a panic ends its process loudly so the supervisor restarts it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet_cluster::playground::{Process, SupervisorEvent};

/// The four requests of the hardening issue: a deposit of i64::MAX, its withdrawal, another
/// deposit of i64::MAX, then a read of the account as of the first deposit's commit timestamp.
/// It used to panic two replicas (their shard lost its quorum for good). The read answers the
/// true balance and the shard keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_read_across_extreme_changes_answers_and_the_shard_keeps_serving() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 10_000).await;
    let client = cluster.client();
    client.create_account("x", "USD", 0).await.unwrap();
    client.deposit("d1", "x", i64::MAX).await.unwrap();
    let history = client.list_transfers("x", 10, 0).await.unwrap();
    let first_ts = history.entries[0].commit_ts;
    client.withdraw("w1", "x", i64::MAX).await.unwrap();
    client.deposit("d2", "x", i64::MAX).await.unwrap();
    let at = client.get_account_at("x", first_ts).await.unwrap();
    assert_eq!(at.balance, i64::MAX);
    let before = client.get_account_at("x", first_ts - 1).await.unwrap();
    assert_eq!(before.balance, 0);
    // The shard still serves writes and reads, and every replica is alive.
    client.withdraw("w2", "x", 5).await.unwrap();
    assert_eq!(client.get_account("x").await.unwrap().balance, i64::MAX - 5);
    let mut cluster = cluster;
    for id in cluster.playground.node_ids() {
        assert!(cluster.playground.node_running(id), "node {id} died");
    }
}

/// A panic in a replica task ends the node with exit code 101, a FATAL line in its log and in
/// `panics.log`; the supervisor restarts it and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_the_node_and_the_supervisor_restarts_it() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(1, 10_000).await;
    let client = cluster.client();
    client.create_account("p", "USD", 0).await.unwrap();
    let victim = 2;
    cluster.playground.kill_node(victim);
    cluster
        .playground
        .start_node_with_env(victim, &[("FAILPOINTS", "replica-apply=panic")])
        .unwrap();
    // Entries commit with or without the victim; it panics when it applies the first one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let mut events = Vec::new();
    while events.is_empty() {
        assert!(Instant::now() < deadline, "node {victim} did not exit");
        n += 1;
        client.deposit(&format!("p{n}"), "p", 1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        events = cluster.playground.supervise();
    }
    assert_eq!(
        events[0],
        SupervisorEvent::Exited {
            process: Process::Node(victim),
            code: Some(wallet_proto::fail_stop::PANIC_EXIT_CODE),
            restart_in: Duration::from_secs(1),
        }
    );
    let log = std::fs::read_to_string(
        cluster
            .playground
            .dir
            .join("logs")
            .join(format!("node-{victim}.log")),
    )
    .unwrap();
    assert!(log.contains("FATAL: wallet-node panicked"), "{log}");
    let note = wallet_proto::fail_stop::last_panic(&cluster.playground.node_dir(victim));
    assert!(note.is_some_and(|n| n.contains("failpoint")));
    // The supervisor starts it again (without the failpoint) after its backoff.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = cluster.playground.supervise();
        if events.contains(&SupervisorEvent::Restarted {
            process: Process::Node(victim),
            count: 1,
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.caught_up(victim).await;
    assert_eq!(client.get_account("p").await.unwrap().balance, n);
}
