//! `wallet-cluster status`: every Raft group (the meta group and each shard) with its replicas,
//! as the nodes themselves report them — node, role, term, commit and applied index, lag behind
//! the group's commit, request records remembered (README § Retention), and phase (serving,
//! probing its peers after its store was emptied, recovering up to an index). A node that does
//! not answer is shown DOWN, with the last panic recorded in its data directory when the
//! playground directory is known, so a crash loop is never a silent UNAVAILABLE (G9).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use wallet_proto::topology::{Topology, META_GROUP_ID};
use wallet_proto::v1::{NodeStatus, ReplicaPhase, ReplicaStatus};

use crate::playground::node_status;

/// The nodes' answers (None: no answer within a second).
/// Over TLS (`tls`: a member's certificate) when the cluster runs it.
pub async fn gather(
    topology: &Topology,
    tls: Option<&std::sync::Arc<wallet_tls::ClientTls>>,
) -> BTreeMap<u64, Option<NodeStatus>> {
    let mut out = BTreeMap::new();
    for node in &topology.nodes {
        out.insert(node.id, node_status(topology, tls, node.id).await);
    }
    out
}

fn phase_name(replica: &ReplicaStatus) -> &'static str {
    match ReplicaPhase::try_from(replica.phase) {
        Ok(ReplicaPhase::Serving) => "serving",
        Ok(ReplicaPhase::Probing) => "probing",
        Ok(ReplicaPhase::Recovering) => "recovering",
        _ => "?",
    }
}

/// The status table. `dir`: the playground directory (node data dirs `node-N/`), for panics.
pub fn render(
    topology: &Topology,
    nodes: &BTreeMap<u64, Option<NodeStatus>>,
    dir: Option<&Path>,
) -> String {
    let mut out = String::new();
    let groups = std::iter::once(topology.meta_group()).chain(topology.shards.iter().cloned());
    let _ = writeln!(
        out,
        "{:<10} {:>4}  {:<13} {:>6} {:>10} {:>10} {:>8} {:>9}  {:<10} note",
        "group", "node", "role", "term", "commit", "applied", "lag", "requests", "phase"
    );
    for group in groups {
        let name = if group.id == META_GROUP_ID {
            "meta".to_string()
        } else {
            format!("shard {}", group.id)
        };
        let replicas: Vec<(u64, Option<&ReplicaStatus>)> = group
            .replicas
            .iter()
            .map(|node| {
                let status = nodes.get(node).and_then(|s| s.as_ref());
                let replica =
                    status.and_then(|s| s.replicas.iter().find(|r| r.shard_id == group.id));
                (*node, replica)
            })
            .collect();
        let commit = replicas
            .iter()
            .filter_map(|(_, r)| *r)
            .map(|r| r.commit_index)
            .max()
            .unwrap_or(0);
        let led = replicas.iter().any(|(_, r)| r.is_some_and(|r| r.is_leader));
        for (node, replica) in replicas {
            match replica {
                Some(r) => {
                    let _ = writeln!(
                        out,
                        "{name:<10} {node:>4}  {:<13} {:>6} {:>10} {:>10} {:>8} {:>9}  {:<10} {}",
                        r.role,
                        r.term,
                        r.commit_index,
                        r.applied_index,
                        commit.saturating_sub(r.applied_index),
                        r.requests,
                        phase_name(r),
                        if r.phase == ReplicaPhase::Recovering as i32 {
                            format!("rebuilding up to {}", r.recover_to)
                        } else {
                            r.note.clone()
                        }
                    );
                }
                None => {
                    let panic = dir
                        .and_then(|d| {
                            wallet_proto::fail_stop::last_panic(&d.join(format!("node-{node}")))
                        })
                        .map(|p| format!("last panic: {p}"))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{name:<10} {node:>4}  {:<13} {:>6} {:>10} {:>10} {:>8} {:>9}  {:<10} {panic}",
                        "-", "-", "-", "-", "-", "-", "DOWN"
                    );
                }
            }
        }
        if !led {
            let _ = writeln!(out, "{name:<10} has NO LEADER: it cannot serve");
        }
    }
    out
}
