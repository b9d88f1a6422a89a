//! The timestamp oracle (meta group): timestamps strictly increase across a kill -9 of the meta
//! group's leader and across a full restart, even when every node's clock then runs 10 minutes
//! behind (the committed window, not the clock, bounds a new leader from below).

mod common;

use std::time::{Duration, Instant};

use common::*;
use wallet_proto::topology::META_GROUP_ID;
use wallet_shard_client::shards::Shards;

/// Takes timestamps for `duration`, checking that each is above the last; returns the last.
async fn take(shards: &Shards, mut last: u64, duration: Duration) -> (u64, u64) {
    let until = Instant::now() + duration;
    let mut served = 0;
    while Instant::now() < until {
        let batch = shards
            .tso(1 + (served % 7) as u32)
            .await
            .expect("timestamps");
        assert!(batch.first > last, "{} after {last}", batch.first);
        last = batch.first + u64::from(batch.count) - 1;
        served += 1;
    }
    (last, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_strictly_increase_across_a_leader_kill_and_a_full_restart() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let shards = Shards::new(cluster.playground.topology.clone()).unwrap();
    let (last, served) = take(&shards, 0, Duration::from_secs(1)).await;
    assert!(served > 10);

    let leaders = cluster.ready().await;
    cluster.playground.kill_node(leaders[&META_GROUP_ID]);
    let (last, served) = take(&shards, last, Duration::from_secs(3)).await;
    assert!(served > 0, "the oracle serves again after its leader died");
    let new_leaders = cluster.ready().await;
    assert_ne!(new_leaders[&META_GROUP_ID], leaders[&META_GROUP_ID]);

    for id in cluster.playground.node_ids() {
        cluster.playground.kill_node(id);
    }
    for id in cluster.playground.node_ids() {
        cluster
            .playground
            .start_node_with_env(id, &[("WALLET_CLOCK_SKEW_MS", "-600000")])
            .unwrap();
    }
    cluster.ready().await;
    let shards = Shards::new(cluster.playground.topology.clone()).unwrap();
    let (_, served) = take(&shards, last, Duration::from_secs(1)).await;
    assert!(served > 0);
}
