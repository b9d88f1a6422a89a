//! Hardening on real processes (G9): no legal request, whatever its values, may cost a shard, and
//! a panic ends its process loudly so the supervisor restarts it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet_client::Reason;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{command::Op, CloseTs, Command, DepositRequest, ShardCommand};

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
#[cfg(feature = "failpoints")]
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
    use wallet_cluster::playground::{Process, SupervisorEvent};
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

/// Sends one command straight to a node (as a misbehaving member would); the error's message.
async fn execute_on(cluster: &Cluster, node_id: u64, command: Command) -> Result<(), String> {
    let address = cluster.playground.topology.address_of(node_id).unwrap();
    let mut client = ShardClient::connect(format!("http://{address}"))
        .await
        .map_err(|e| e.to_string())?;
    client
        .execute(ShardCommand {
            shard_id: 1,
            command: Some(command),
        })
        .await
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

/// Internal calls no router would send: a close timestamp of u64::MAX (it blocked the shard's
/// writes for good) and a deposit stamped u64::MAX (every later snapshot read would be too old)
/// are refused, and the shard keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_no_router_could_have_are_refused() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(1, 10_000).await;
    let client = cluster.client();
    client.create_account("c", "USD", 0).await.unwrap();
    let leader = cluster.ready().await[&1];
    let close = Command {
        request_id: String::new(),
        at_ms: 0,
        ts: 0,
        op: Some(Op::CloseTs(CloseTs { ts: u64::MAX })),
    };
    let refused = execute_on(&cluster, leader, close).await.unwrap_err();
    assert!(refused.starts_with("INVALID_ARGUMENT"), "{refused}");
    let deposit = Command {
        request_id: "evil".into(),
        at_ms: 0,
        ts: u64::MAX,
        op: Some(Op::Deposit(DepositRequest {
            issued_at_ms: 0,
            request_id: "evil".into(),
            account_id: "c".into(),
            amount: 1,
        })),
    };
    let refused = execute_on(&cluster, leader, deposit).await.unwrap_err();
    assert!(refused.starts_with("INVALID_ARGUMENT"), "{refused}");
    // Writes and snapshot reads go on.
    let started = Instant::now();
    client.deposit("ok-1", "c", 5).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let history = client.list_transfers("c", 10, 0).await.unwrap();
    assert_eq!(
        history.entries.len(),
        1,
        "the stamped deposit wrote nothing"
    );
    let ts = history.entries[0].commit_ts;
    assert_eq!(client.get_account_at("c", ts).await.unwrap().balance, 5);
}

/// G4 across shards: a transfer the credit side refuses answers the same refusal on a retry (it
/// answered TRANSFER_ABORTED), and two debit accounts may use one transfer id towards the same
/// credit account (the second was refused ID_REUSED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_shard_exactly_once_answers_the_first_outcome() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 2, 1000).await;
    let ring = cluster.playground.topology.ring();
    let missing = (0..1000)
        .map(|i| format!("missing{i}"))
        .find(|id| ring.shard_of(id) == 2)
        .unwrap();
    for attempt in 0..2 {
        let e = client
            .transfer("to-missing", &on1[0], &missing, 10)
            .await
            .unwrap_err();
        assert_eq!(e.reason, Reason::AccountNotFound, "attempt {attempt}: {e}");
    }
    let eur = (0..1000)
        .map(|i| format!("eur{i}"))
        .find(|id| ring.shard_of(id) == 2)
        .unwrap();
    client.create_account(&eur, "EUR", 0).await.unwrap();
    for attempt in 0..2 {
        let e = client
            .transfer("to-eur", &on1[0], &eur, 10)
            .await
            .unwrap_err();
        assert_eq!(e.reason, Reason::CurrencyMismatch, "attempt {attempt}: {e}");
    }
    for from in &on1 {
        let t = client.transfer("same-id", from, &on2[0], 7).await.unwrap();
        assert_eq!(t.status, wallet_proto::v1::TransferStatus::Committed as i32);
    }
    let balances = settled(&client, &[on1[0].clone(), on1[1].clone(), on2[0].clone()]).await;
    assert_eq!(balances[&on2[0]], 1014);
    assert_eq!(balances[&on1[0]], 993);
}

/// G9 and G3: a node that lost its disk counts towards no quorum until a majority of its shards'
/// other replicas told it what it must hold. Node 2 falls behind (down), node 1 and node 3
/// acknowledge a deposit, then all stop and node 3 loses its disk. Node 3 and the stale node 2
/// come back first: before, node 3 gave up asking after a second and voted with its empty log, so
/// node 2 was elected without the acknowledged deposit. Now node 3 waits (the shard is unavailable,
/// never wrong) until node 1 is back, rebuilds, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_waits_for_a_majority_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(1, 10_000).await;
    let client = cluster.client();
    client.create_account("w", "USD", 0).await.unwrap();
    client.deposit("w-1", "w", 10).await.unwrap();
    cluster.playground.kill_node(2);
    client.deposit("w-2", "w", 20).await.unwrap();
    cluster.playground.kill_node(1);
    cluster.playground.kill_node(3);
    cluster.playground.wipe_node(3).unwrap();
    cluster.playground.start_node(3).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.playground.start_node(2).unwrap();
    let impatient = wallet_client::WalletClient::with_options(
        &[cluster.playground.router_address.as_str()],
        wallet_client::ClientOptions {
            retry_budget: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
            tls: None,
        },
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        if let Ok(account) = impatient.get_account("w").await {
            assert_eq!(account.balance, 30, "an acknowledged deposit was lost");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = cluster.playground.status(3).await.expect("node 3 answers");
    for replica in &status.replicas {
        assert_eq!(
            replica.phase,
            wallet_proto::v1::ReplicaPhase::Probing as i32,
            "{replica:?}"
        );
        assert!(!replica.note.is_empty());
    }
    // The status view says why the shard does not serve.
    let shown = std::process::Command::new(exe())
        .args(["status", "--dir"])
        .arg(&cluster.playground.dir)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("probing") && shown.contains("DOWN"),
        "{shown}"
    );
    assert!(shown.contains("NO LEADER"), "{shown}");
    cluster.playground.start_node(1).unwrap();
    cluster.caught_up(3).await;
    assert_eq!(client.get_account("w").await.unwrap().balance, 30);
    // Every majority now includes the rebuilt node.
    cluster.playground.kill_node(1);
    cluster.ready().await;
    assert_eq!(client.get_account("w").await.unwrap().balance, 30);
    client.deposit("w-3", "w", 1).await.unwrap();
}

fn node_log(cluster: &Cluster, node_id: u64) -> String {
    let path = cluster
        .playground
        .dir
        .join("logs")
        .join(format!("node-{node_id}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The lines of a node's log that report a replica set aside, without colour codes.
fn set_aside_lines(cluster: &Cluster, node_id: u64) -> Vec<String> {
    node_log(cluster, node_id)
        .lines()
        .filter(|l| l.contains("replica set aside"))
        .map(|l| {
            let mut plain = String::new();
            let mut in_escape = false;
            for c in l.chars() {
                match (in_escape, c) {
                    (false, '\u{1b}') => in_escape = true,
                    (true, 'm') => in_escape = false,
                    (false, c) => plain.push(c),
                    _ => {}
                }
            }
            plain
        })
        .collect()
}

/// Funded accounts on both shards; returns their balances.
async fn funded(cluster: &Cluster) -> std::collections::BTreeMap<String, i64> {
    let client = cluster.client();
    let [on1, on2] = accounts(cluster, &client, 3, 100).await;
    for (i, (a, b)) in on1.iter().zip(&on2).enumerate() {
        client.transfer(&format!("c{i}"), a, b, 7).await.unwrap();
    }
    settled(&client, &[on1, on2].concat()).await
}

/// G7: a record that fails its CRC on one replica. The replica is set aside (its data kept in a
/// side tree) and rebuilt from its peers, while the node serves its other shards; before, the
/// node refused to start at all. No other replica, on this node or another, is set aside by the
/// kill -9 restarts around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_sets_its_replica_aside_and_it_is_rebuilt() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let balances = funded(&cluster).await;
    // A graceful stop writes the checkpoint (the records of a kill -9 would still be in its log).
    assert!(cluster.playground.stop_node(3));
    {
        let db = sled::open(cluster.playground.node_dir(3).join("sled")).unwrap();
        let tree = db.open_tree("shard-1").unwrap();
        let (key, value) = tree.scan_prefix(b"Sa").next().unwrap().unwrap();
        let mut bad = value.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        tree.insert(key, bad).unwrap();
        db.flush().unwrap();
    }
    cluster.playground.start_node(3).unwrap();
    cluster.caught_up(3).await;
    let lines = set_aside_lines(&cluster, 3);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("shard=1") && lines[0].contains("corrupt record"),
        "{lines:?}"
    );
    for node in [1, 2] {
        assert!(set_aside_lines(&cluster, node).is_empty());
    }
    // Every majority now includes the rebuilt replica.
    cluster.playground.kill_node(1);
    cluster.ready().await;
    assert_balances(&cluster.client(), &balances).await;
}

/// G7/G9: bits flipped in a stopped node's sled file. sled drops the log from the first record
/// that fails its own checksum, so the store comes back older than it was — silently, having
/// forgotten votes and acknowledged entries. The durability marks catch it: the replicas that
/// went back are set aside and rebuilt, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bits_flipped_in_a_sled_file_never_lose_an_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let balances = funded(&cluster).await;
    cluster.playground.kill_node(3);
    let file = cluster.playground.node_dir(3).join("sled").join("db");
    let mut bytes = std::fs::read(&file).unwrap();
    let mut rng = Rng(0xb17f_11b5);
    for _ in 0..8 {
        let at = rng.below(bytes.len());
        bytes[at] ^= 1 << rng.below(8);
    }
    std::fs::write(&file, bytes).unwrap();
    cluster.playground.start_node(3).unwrap();
    cluster.caught_up(3).await;
    eprintln!("set aside: {:?}", set_aside_lines(&cluster, 3));
    cluster.playground.kill_node(1);
    cluster.ready().await;
    assert_balances(&cluster.client(), &balances).await;
}

/// G7 while running: a history record of shard 1 on node 3 fails its CRC (history is not read at
/// start). Node 3 meets it when it serves a history page as shard 1's leader. Before, the node
/// exited (code 70), taking all its replicas down; now that replica alone is set aside and rebuilt
/// in place, while node 3 keeps running and serving its other shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_found_corrupt_while_running_sets_only_its_replica_aside() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 20).await;
    let client = cluster.client();
    let [on1, on2] = accounts(&cluster, &client, 2, 100).await;
    // A graceful stop writes the checkpoint (the records of a kill -9 would still be in its log).
    assert!(cluster.playground.stop_node(3));
    {
        let db = sled::open(cluster.playground.node_dir(3).join("sled")).unwrap();
        let tree = db.open_tree("shard-1").unwrap();
        let (key, value) = tree.scan_prefix(b"Sh").next().unwrap().unwrap();
        let mut bad = value.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        tree.insert(key, bad).unwrap();
        db.flush().unwrap();
    }
    cluster.playground.start_node(3).unwrap();
    cluster.ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while set_aside_lines(&cluster, 3).is_empty() {
        assert!(
            Instant::now() < deadline,
            "node 3 never met the corrupt record\n{}",
            cluster.logs()
        );
        match cluster.playground.leaders().await.get(&1).copied() {
            // Shard 1's leader serves its history pages from sled.
            Some(3) => {
                for id in &on1 {
                    let _ = client.list_transfers(id, 50, 0).await;
                }
            }
            // Another node leads: pause it until node 3 (or the third) takes over.
            Some(other) => {
                cluster.playground.pause_node(other, true);
                tokio::time::sleep(Duration::from_secs(3)).await;
                cluster.playground.pause_node(other, false);
                cluster.ready().await;
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        n += 1;
        client.deposit(&format!("rt{n}"), &on1[0], 1).await.unwrap();
    }
    let lines = set_aside_lines(&cluster, 3);
    assert!(lines[0].contains("shard=1"), "{lines:?}");
    assert!(
        cluster.playground.node_running(3),
        "node 3 kept running\n{}",
        cluster.logs()
    );
    cluster.caught_up(3).await;
    cluster.playground.kill_node(1);
    cluster.ready().await;
    let mut expected: std::collections::BTreeMap<String, i64> = [&on1[..], &on2[..]]
        .concat()
        .into_iter()
        .map(|id| (id, 100))
        .collect();
    *expected.get_mut(&on1[0]).unwrap() += n;
    assert_balances(&client, &expected).await;
}
