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

/// One timestamp straight from a node's oracle (no router, no retry), or the error.
async fn tso_from(cluster: &Cluster, node_id: u64) -> Result<u64, String> {
    use wallet_proto::v1::shard_client::ShardClient;
    let address = cluster.playground.topology.address_of(node_id).unwrap();
    let call = async {
        let mut client = ShardClient::connect(format!("http://{address}"))
            .await
            .map_err(|e| e.to_string())?;
        client
            .tso(wallet_proto::v1::TsoRequest { count: 1 })
            .await
            .map(|r| r.into_inner().first)
            .map_err(|e| e.message().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// G6 across routers: a meta-group leader paused while a new one serves timestamps, then
/// resumed, must not hand out a timestamp below those the new leader already gave (it answered
/// from its old window until check_quorum demoted it). Timestamps are served only after a quorum
/// confirmed the leadership.
///
/// The nodes' clocks run 10 s behind the timestamps already handed out (as after a clock step
/// back), so an old leader's window stays open however long the pause lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_old_oracle_leader_never_hands_out_older_timestamps() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(1, 10_000).await;
    cluster
        .client()
        .create_account("t", "USD", 0)
        .await
        .unwrap();
    for id in cluster.playground.node_ids() {
        cluster.playground.kill_node(id);
    }
    for id in cluster.playground.node_ids() {
        cluster
            .playground
            .start_node_with_env(id, &[("WALLET_CLOCK_SKEW_MS", "-10000")])
            .unwrap();
    }
    let meta = wallet_proto::topology::META_GROUP_ID;
    for round in 0..3 {
        let old = cluster.ready().await[&meta];
        let before = tso_from(&cluster, old).await.expect("old leader serves");
        cluster.playground.pause_node(old, true);
        let deadline = Instant::now() + Duration::from_secs(20);
        let new = loop {
            let leaders = cluster.playground.leaders().await;
            if let Some(new) = leaders.get(&meta).filter(|n| **n != old) {
                break *new;
            }
            assert!(Instant::now() < deadline, "no new meta leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let served = tso_from(&cluster, new).await.expect("new leader serves");
        assert!(served > before);
        cluster.playground.pause_node(old, false);
        match tso_from(&cluster, old).await {
            Ok(ts) => assert!(
                ts > served,
                "round {round}: the resumed old leader handed out {ts} after {served}"
            ),
            Err(e) => assert!(
                e.contains("NOT_LEADER") || e.contains("UNAVAILABLE"),
                "round {round}: {e}"
            ),
        }
        cluster.ready().await;
    }
}
