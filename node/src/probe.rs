//! What a replica whose store is empty (a new cluster, a wiped disk, a replica set aside) must
//! learn before it takes part in Raft (G9: a node that lost its disk counts towards no quorum
//! until a majority confirmed what it must hold).
//!
//! raft-rs assumes storage is never lost. A replica that forgot its term, its vote and the
//! entries it acknowledged could otherwise vote a second time in a term, complete the quorum of a
//! stale leader, or help elect a leader missing entries it had acknowledged. So, before its first
//! Raft step, the replica asks the other replicas of its shard for their term and commit index,
//! and waits until **a majority of those other replicas** answered — every quorum it ever was part
//! of shares at least one replica with such a majority. It then adopts the highest term (leaders
//! of older terms are refused), and stays passive (no votes, no campaign, no acknowledgement
//! beyond what was committed) until it has applied the highest commit index reported. If no
//! majority answers, it waits, and says so in its status.
//!
//! In a brand-new cluster every replica probes at once; they answer each other with term 0 and
//! commit 0, and all start normally.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use wallet_proto::topology::Topology;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{NodeStatus, ReplicaPhase, StatusRequest};

use crate::inbox::ReplicaMsg;

/// How long one status call may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds while a shard waits for its peers.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// How often a waiting shard is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A replica to probe for: its shard, the nodes of its other replicas, and its inbox.
pub struct Pending {
    pub shard_id: u64,
    pub others: Vec<u64>,
    pub inbox: mpsc::Sender<ReplicaMsg>,
}

/// How many of `others` must answer: a majority of them (none when the replica is alone).
pub fn needed(others: usize) -> usize {
    if others == 0 {
        0
    } else {
        others / 2 + 1
    }
}

/// Asks the peers in rounds until every pending replica heard from a majority of its others;
/// replicas set aside later (a record found corrupt while running) arrive through `more`.
pub async fn run(
    topology: Topology,
    mut pending: Vec<Pending>,
    mut more: mpsc::UnboundedReceiver<Pending>,
    tls: Option<Arc<wallet_tls::ClientTls>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_log = Instant::now() - LOG_EVERY;
    loop {
        while let Ok(p) = more.try_recv() {
            pending.push(p);
        }
        if pending.is_empty() {
            tokio::select! {
                p = more.recv() => match p {
                    Some(p) => pending.push(p),
                    None => return,
                },
                _ = stop.changed() => return,
            }
            continue;
        }
        let peers: Vec<u64> = {
            let mut ids: Vec<u64> = pending.iter().flat_map(|p| p.others.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        let statuses = ask_all(&topology, tls.as_ref(), &peers).await;
        let log_now = last_log.elapsed() >= LOG_EVERY;
        let mut still = Vec::new();
        for p in pending {
            let answers = answers(&statuses, &p.others, p.shard_id);
            let need = needed(p.others.len());
            if answers.len() >= need {
                let term = answers.iter().map(|a| a.0).max().unwrap_or(0);
                let commit = answers.iter().map(|a| a.1).max().unwrap_or(0);
                let _ = p.inbox.send(ReplicaMsg::Probed { term, commit }).await;
                continue;
            }
            let note = format!(
                "store empty: waiting until {need} of the other replicas (nodes {:?}) answer; {} did",
                p.others,
                answers.len()
            );
            if log_now {
                tracing::warn!(shard = p.shard_id, "{note}");
            }
            let _ = p.inbox.send(ReplicaMsg::ProbeWaiting(note)).await;
            still.push(p);
        }
        if log_now {
            last_log = Instant::now();
        }
        pending = still;
        if pending.is_empty() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(ROUND_PAUSE) => {}
            _ = stop.changed() => return,
        }
    }
}

/// (term, commit) of the shard on each of `others` that answered with a published status. A
/// replica that has not published one yet says nothing about its term and commit (its zeros are
/// not "empty"), so it does not count (G9).
fn answers(statuses: &BTreeMap<u64, NodeStatus>, others: &[u64], shard_id: u64) -> Vec<(u64, u64)> {
    others
        .iter()
        .filter_map(|node| statuses.get(node))
        .filter_map(|s| s.replicas.iter().find(|r| r.shard_id == shard_id))
        .filter(|r| r.phase != ReplicaPhase::Unspecified as i32)
        .map(|r| (r.term, r.commit_index))
        .collect()
}

/// The status of every peer that answers within [`ASK_TIMEOUT`], asked in parallel (over TLS as
/// a member when `tls` is given).
async fn ask_all(
    topology: &Topology,
    tls: Option<&Arc<wallet_tls::ClientTls>>,
    peers: &[u64],
) -> BTreeMap<u64, NodeStatus> {
    let mut asks = HashMap::new();
    for &peer in peers {
        let Some(address) = topology.address_of(peer) else {
            continue;
        };
        let Ok(endpoint) = Endpoint::from_shared(format!("http://{address}")) else {
            continue;
        };
        let tls = tls.cloned();
        asks.insert(
            peer,
            tokio::spawn(async move {
                let call = async {
                    let channel = match tls {
                        Some(tls) => tls
                            .channel(&endpoint, Some(&wallet_tls::node_name(peer)))
                            .ok()?,
                        None => endpoint.connect().await.ok()?,
                    };
                    let mut client = ShardClient::new(channel);
                    client
                        .status(StatusRequest {})
                        .await
                        .ok()
                        .map(|r| r.into_inner())
                };
                tokio::time::timeout(ASK_TIMEOUT, call).await.ok().flatten()
            }),
        );
    }
    let mut answered = BTreeMap::new();
    for (peer, ask) in asks {
        if let Ok(Some(status)) = ask.await {
            answered.insert(peer, status);
        }
    }
    answered
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::v1::ReplicaStatus;

    #[test]
    fn an_unpublished_status_is_no_answer() {
        let status = |node_id: u64, phase: ReplicaPhase, term: u64| NodeStatus {
            node_id,
            replicas: vec![ReplicaStatus {
                shard_id: 1,
                term,
                commit_index: term * 10,
                phase: phase as i32,
                ..Default::default()
            }],
        };
        let statuses: BTreeMap<u64, NodeStatus> = [
            (2, status(2, ReplicaPhase::Unspecified, 0)),
            (3, status(3, ReplicaPhase::Serving, 4)),
            (4, status(4, ReplicaPhase::Probing, 0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(answers(&statuses, &[2, 3], 1), vec![(4, 40)]);
        // A brand-new cluster: probing peers answer (0, 0) and count.
        assert_eq!(answers(&statuses, &[3, 4], 1), vec![(4, 40), (0, 0)]);
        assert!(answers(&statuses, &[3], 2).is_empty());
    }

    #[test]
    fn a_majority_of_the_other_replicas() {
        assert_eq!(needed(0), 0);
        assert_eq!(needed(1), 1);
        assert_eq!(needed(2), 2);
        assert_eq!(needed(3), 2);
        assert_eq!(needed(4), 3);
    }
}
