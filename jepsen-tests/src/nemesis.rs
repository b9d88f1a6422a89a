//! The nemesis: a seeded schedule of faults, one at a time, each healed before the next, and the
//! record of when each fault was active (`nemesis.edn`, `nemesis.jsonl`; the plots shade it).
//!
//! Faults (`--nemesis`, any subset):
//! - `kill`: kill -9 one node, a majority of the nodes, or all of them; restart them 3 s later.
//! - `leader`: kill -9 the leader of a random group (a shard or the meta group), restart it.
//! - `pause`: SIGSTOP (`docker pause`) one node for 3 s.
//! - `partition`: cut the network between nodes for 3 s: one node isolated, a majority/minority
//!   split, or a bridge (two majorities that share one node). Docker backend only.
//! - `clock`: move one node's wall clock up to a minute forward or back for 3 s.
//! - `router`: kill -9 the router the workload uses; restart it 0.5 s later (mid-transfer).
//! - `wipe`: kill -9 one node, delete its data directory (a lost disk), restart it 3 s later.
//! - `corrupt`: kill -9 one node, flip bits in its sled file (a corrupt disk), restart it 3 s later.
//!
//! The same seed gives the same schedule of choices; which node leads a group at the time of a
//! `leader` fault depends on the run.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wallet_cluster::playground::group_leaders;

use crate::backend::Backend;
pub use crate::rng::Rng;

/// Faults the harness can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Nemesis {
    Kill,
    Leader,
    Pause,
    Router,
    Clock,
    Partition,
    Wipe,
    Corrupt,
}

/// One edge of a fault window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Nanoseconds since the history started.
    pub time: u64,
    /// `kill`, `pause`, `partition`, `clock`, `router`.
    pub fault: String,
    /// true when the fault begins, false when it is healed.
    pub start: bool,
    /// What exactly: the nodes hit, the partition's groups, the clock offset.
    pub detail: String,
}

impl Event {
    /// One line of `nemesis.edn`, shaped like a Jepsen nemesis operation.
    pub fn to_edn(&self) -> String {
        format!(
            "{{:type :info, :process :nemesis, :f :{}-{}, :value \"{}\", :time {}}}",
            self.fault,
            if self.start { "start" } else { "stop" },
            self.detail.replace('"', "'"),
            self.time
        )
    }
}

/// Writes the events as `nemesis.edn` and `nemesis.jsonl` into `dir`.
pub fn save(dir: &std::path::Path, events: &[Event]) -> std::io::Result<()> {
    let edn: String = events.iter().map(|e| e.to_edn() + "\n").collect();
    std::fs::write(dir.join("nemesis.edn"), edn)?;
    let mut jsonl = String::new();
    for event in events {
        jsonl.push_str(&serde_json::to_string(event).map_err(std::io::Error::other)?);
        jsonl.push('\n');
    }
    std::fs::write(dir.join("nemesis.jsonl"), jsonl)
}

/// Reads `nemesis.jsonl` back (missing file: no faults).
pub fn load(dir: &std::path::Path) -> Result<Vec<Event>, String> {
    let text = match std::fs::read_to_string(dir.join("nemesis.jsonl")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("nemesis.jsonl: {e}")),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("nemesis.jsonl: {e}")))
        .collect()
}

pub const FAULT_EVERY: Duration = Duration::from_secs(5);
pub const FAULT_LENGTH: Duration = Duration::from_secs(3);

fn list(nodes: &[u64]) -> String {
    let names: Vec<String> = nodes.iter().map(u64::to_string).collect();
    format!("[{}]", names.join(" "))
}

/// Groups of a partition of `nodes` (already shuffled): one node alone, halves, or a bridge.
pub fn partition_groups(nodes: &[u64], shape: u64) -> (&'static str, Vec<Vec<u64>>) {
    let n = nodes.len();
    let half = n / 2;
    match shape {
        0 => ("isolated", vec![nodes[..1].to_vec(), nodes[1..].to_vec()]),
        1 => (
            "halves",
            vec![nodes[..half].to_vec(), nodes[half..].to_vec()],
        ),
        // [a b c d e] → [a b c] and [c d e]: c hears everyone, a and e hear only a majority.
        _ => (
            "bridge",
            vec![nodes[..=half].to_vec(), nodes[half..].to_vec()],
        ),
    }
}

/// Which nodes a kill takes: one, a majority, or all.
fn kill_targets(rng: &mut Rng, nodes: &[u64]) -> Vec<u64> {
    let shuffled = rng.shuffle(nodes);
    let count = match rng.below(10) {
        0..=4 => 1,
        5..=7 => nodes.len() / 2 + 1,
        _ => nodes.len(),
    };
    let mut out = shuffled[..count].to_vec();
    out.sort_unstable();
    out
}

/// Injects one fault every few seconds until `end`, healing each; returns the events. A window
/// opens before the fault is applied and closes once it is healed, so it covers the whole fault.
pub async fn run(
    cluster: &mut dyn Backend,
    nemeses: &[Nemesis],
    seed: u64,
    started: Instant,
    end: Instant,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut rng = Rng(seed.wrapping_mul(0xA24B_AED4_963E_E407) | 1);
    let mut log = |fault: &str, start: bool, detail: String| {
        println!(
            "nemesis: {fault} {} {detail} at {:.1}s",
            if start { "start" } else { "stop" },
            started.elapsed().as_secs_f64()
        );
        events.push(Event {
            time: started.elapsed().as_nanos() as u64,
            fault: fault.to_string(),
            start,
            detail,
        });
    };
    if nemeses.is_empty() {
        tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
        return events;
    }
    tokio::time::sleep(FAULT_EVERY / 2).await;
    while Instant::now() + FAULT_LENGTH < end {
        let nemesis = nemeses[rng.below(nemeses.len() as u64) as usize];
        let nodes = cluster.node_ids();
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        match nemesis {
            Nemesis::Kill | Nemesis::Leader => {
                let (victims, detail) = if nemesis == Nemesis::Leader {
                    let leaders =
                        group_leaders(cluster.topology(), cluster.admin_tls().as_ref()).await;
                    // Group 0 is the meta group (timestamp oracle).
                    let group = rng.below(cluster.topology().shards.len() as u64 + 1);
                    let leader = leaders.get(&group).copied().unwrap_or(node);
                    (vec![leader], format!("leader of group {group} [{leader}]"))
                } else {
                    let victims = kill_targets(&mut rng, &nodes);
                    let detail = list(&victims);
                    (victims, detail)
                };
                log("kill", true, detail.clone());
                for &victim in &victims {
                    cluster.kill_node(victim);
                }
                tokio::time::sleep(FAULT_LENGTH).await;
                for &victim in &victims {
                    if let Err(e) = cluster.start_node(victim) {
                        println!("nemesis: restarting node {victim}: {e}");
                    }
                }
                log("kill", false, detail);
            }
            Nemesis::Pause => {
                log("pause", true, list(&[node]));
                cluster.pause_node(node, true);
                tokio::time::sleep(FAULT_LENGTH).await;
                cluster.pause_node(node, false);
                log("pause", false, list(&[node]));
            }
            Nemesis::Clock => {
                let offset_ms = (rng.below(120_001) as i64) - 60_000;
                let detail = format!("node {node} {offset_ms:+} ms");
                log("clock", true, detail.clone());
                if let Err(e) = cluster.skew_clock(node, offset_ms) {
                    println!("nemesis: clock: {e}");
                }
                tokio::time::sleep(FAULT_LENGTH).await;
                if let Err(e) = cluster.skew_clock(node, 0) {
                    println!("nemesis: clock: {e}");
                }
                log("clock", false, detail);
            }
            Nemesis::Partition => {
                let shuffled = rng.shuffle(&nodes);
                let (shape, groups) = partition_groups(&shuffled, rng.below(3));
                let detail = format!(
                    "{shape} {}",
                    groups.iter().map(|g| list(g)).collect::<Vec<_>>().join(" ")
                );
                log("partition", true, detail.clone());
                if let Err(e) = cluster.partition(&groups) {
                    println!("nemesis: partition: {e}");
                }
                tokio::time::sleep(FAULT_LENGTH).await;
                if let Err(e) = cluster.heal_network() {
                    println!("nemesis: heal: {e}");
                }
                log("partition", false, detail);
            }
            Nemesis::Wipe | Nemesis::Corrupt => {
                let fault = if nemesis == Nemesis::Wipe {
                    "wipe"
                } else {
                    "corrupt"
                };
                log(fault, true, list(&[node]));
                cluster.kill_node(node);
                let damage = if nemesis == Nemesis::Wipe {
                    cluster.wipe_node(node).map(|_| "data deleted".to_string())
                } else {
                    cluster.corrupt_node(node, rng.below(u64::MAX))
                };
                match damage {
                    Ok(what) => println!("nemesis: {fault} node {node}: {what}"),
                    Err(e) => println!("nemesis: {fault} node {node}: {e}"),
                }
                tokio::time::sleep(FAULT_LENGTH).await;
                if let Err(e) = cluster.start_node(node) {
                    println!("nemesis: restarting node {node}: {e}");
                }
                log(fault, false, list(&[node]));
            }
            Nemesis::Router => {
                log("router", true, String::new());
                cluster.kill_router();
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Err(e) = cluster.start_router() {
                    println!("nemesis: restarting the router: {e}");
                }
                log("router", false, String::new());
            }
        }
        tokio::time::sleep(FAULT_EVERY - FAULT_LENGTH).await;
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cut_pairs;

    #[test]
    fn partition_shapes_cut_the_right_links() {
        let nodes = [1, 2, 3, 4, 5];
        let (_, isolated) = partition_groups(&nodes, 0);
        assert_eq!(
            cut_pairs(&nodes, &isolated),
            vec![(1, 2), (1, 3), (1, 4), (1, 5)]
        );
        let (_, halves) = partition_groups(&nodes, 1);
        assert_eq!(halves, vec![vec![1, 2], vec![3, 4, 5]]);
        assert_eq!(cut_pairs(&nodes, &halves).len(), 6);
        let (_, bridge) = partition_groups(&nodes, 2);
        assert_eq!(bridge, vec![vec![1, 2, 3], vec![3, 4, 5]]);
        // The bridge node 3 keeps every link; 1 and 2 lose 4 and 5.
        assert_eq!(
            cut_pairs(&nodes, &bridge),
            vec![(1, 4), (1, 5), (2, 4), (2, 5)]
        );
    }

    #[test]
    fn kills_take_one_a_majority_or_all() {
        let nodes = [1, 2, 3, 4, 5];
        let mut rng = Rng(7);
        let mut sizes = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let victims = kill_targets(&mut rng, &nodes);
            assert!(victims.windows(2).all(|w| w[0] < w[1]));
            sizes.insert(victims.len());
        }
        assert_eq!(sizes.into_iter().collect::<Vec<_>>(), vec![1, 3, 5]);
    }

    #[test]
    fn same_seed_same_choices() {
        let a: Vec<u64> = (0..20)
            .map({
                let mut r = Rng(42);
                move |_| r.below(1000)
            })
            .collect();
        let b: Vec<u64> = (0..20)
            .map({
                let mut r = Rng(42);
                move |_| r.below(1000)
            })
            .collect();
        assert_eq!(a, b);
    }
}
