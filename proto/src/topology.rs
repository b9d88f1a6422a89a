//! The cluster's shape: which nodes exist, which shards they host, and which shard owns an account.
//!
//! The topology comes from a TOML file shared by every node and router. Nodes and routers build the
//! same [`Ring`] from it, so a node can refuse an account it does not own (`WRONG_SHARD`) even when
//! a stale router sends it there. The ring is `hashring` over shard ids with virtual nodes; its
//! hasher is SipHash with fixed keys, so every process computes the same placement.
//!
//! ```
//! let text = r#"
//! virtual_nodes = 16
//! [[nodes]]
//! id = 1
//! address = "127.0.0.1:7101"
//! [[shards]]
//! id = 1
//! replicas = [1]
//! "#;
//! let topology = wallet_proto::topology::Topology::parse(text).unwrap();
//! assert_eq!(topology.ring().shard_of("alice"), 1);
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Default number of virtual nodes per shard on the ring.
pub const VIRTUAL_NODES_DEFAULT: u32 = 64;

/// Default request retention window: request ids are remembered for 24 h, as payment APIs keep
/// idempotency keys.
pub const REQUEST_RETENTION_SECS_DEFAULT: u64 = 24 * 60 * 60;

/// Longest request retention window a cluster file may set (ten years).
pub const REQUEST_RETENTION_SECS_MAX: u64 = 10 * 365 * 24 * 60 * 60;

/// One node: a server process hosting replicas of several shards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Raft peer id of the node in every shard it hosts; 1 or more.
    pub id: u64,
    /// `host:port` where the node serves the `Shard` and `Raft` services.
    pub address: String,
}

/// One shard: a Raft group whose replicas live on the listed nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub id: u64,
    pub replicas: Vec<u64>,
}

/// The whole cluster file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    #[serde(default = "default_virtual_nodes")]
    pub virtual_nodes: u32,
    /// Nodes holding the meta group (the timestamp oracle); empty means the first three nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub meta_replicas: Vec<u64>,
    pub nodes: Vec<NodeSpec>,
    pub shards: Vec<ShardSpec>,
    /// How long a shard remembers a request id and its outcome (seconds, 1..=10 years). Every
    /// replica must use the same value: it decides what their state machines forget.
    #[serde(
        default = "default_request_retention_secs",
        skip_serializing_if = "is_default_retention"
    )]
    pub request_retention_secs: u64,
}

/// The id of the meta group (the timestamp oracle). Data shards have ids from 1.
pub const META_GROUP_ID: u64 = 0;

fn default_virtual_nodes() -> u32 {
    VIRTUAL_NODES_DEFAULT
}

fn default_request_retention_secs() -> u64 {
    REQUEST_RETENTION_SECS_DEFAULT
}

fn is_default_retention(secs: &u64) -> bool {
    *secs == REQUEST_RETENTION_SECS_DEFAULT
}

impl Topology {
    /// Parses and checks a cluster file's text.
    pub fn parse(text: &str) -> Result<Topology, String> {
        let topology: Topology = toml::from_str(text).map_err(|e| e.to_string())?;
        topology.check()?;
        Ok(topology)
    }

    /// Reads and checks a cluster file.
    pub fn load(path: &Path) -> Result<Topology, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read cluster file {}: {e}", path.display()))?;
        Topology::parse(&text).map_err(|e| format!("bad cluster file {}: {e}", path.display()))
    }

    /// The request retention window in milliseconds.
    pub fn request_retention_ms(&self) -> i64 {
        // At most ten years (checked on parse), far inside i64.
        i64::try_from(self.request_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// A topology of `nodes` nodes on 127.0.0.1 from `first_port` on, with `shards` shards of
    /// `replicas` replicas each spread round-robin over the nodes.
    pub fn local(nodes: u64, shards: u64, replicas: u64, first_port: u16) -> Topology {
        let nodes_spec = (1..=nodes)
            .map(|id| NodeSpec {
                id,
                address: format!("127.0.0.1:{}", u64::from(first_port) + id - 1),
            })
            .collect();
        let shards_spec = (1..=shards)
            .map(|id| ShardSpec {
                id,
                replicas: (0..replicas).map(|r| (id - 1 + r) % nodes + 1).collect(),
            })
            .collect();
        Topology {
            virtual_nodes: VIRTUAL_NODES_DEFAULT,
            meta_replicas: Vec::new(),
            nodes: nodes_spec,
            shards: shards_spec,
            request_retention_secs: REQUEST_RETENTION_SECS_DEFAULT,
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.nodes.is_empty() || self.shards.is_empty() {
            return Err("a cluster needs at least one node and one shard".into());
        }
        if self.virtual_nodes == 0 || self.virtual_nodes > 4096 {
            return Err("virtual_nodes must be 1..=4096".into());
        }
        if !(1..=REQUEST_RETENTION_SECS_MAX).contains(&self.request_retention_secs) {
            return Err(format!(
                "request_retention_secs must be 1..={REQUEST_RETENTION_SECS_MAX}"
            ));
        }
        let mut ids = BTreeMap::new();
        for node in &self.nodes {
            if node.id == 0 || ids.insert(node.id, ()).is_some() {
                return Err(format!(
                    "node ids must be unique and non-zero ({})",
                    node.id
                ));
            }
        }
        for replica in &self.meta_replicas {
            if !ids.contains_key(replica) {
                return Err(format!("meta_replicas lists unknown node {replica}"));
            }
        }
        let mut shard_ids = BTreeMap::new();
        for shard in &self.shards {
            if shard.id == 0 || shard_ids.insert(shard.id, ()).is_some() {
                return Err(format!(
                    "shard ids must be unique and non-zero ({})",
                    shard.id
                ));
            }
            if shard.replicas.is_empty() {
                return Err(format!("shard {} has no replicas", shard.id));
            }
            let mut seen = BTreeMap::new();
            for replica in &shard.replicas {
                if !ids.contains_key(replica) || seen.insert(*replica, ()).is_some() {
                    return Err(format!(
                        "shard {} lists unknown or repeated node {replica}",
                        shard.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// The address of a node.
    pub fn address_of(&self, node_id: u64) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == node_id)
            .map(|n| n.address.as_str())
    }

    /// The shard with this id.
    pub fn shard(&self, shard_id: u64) -> Option<&ShardSpec> {
        self.shards.iter().find(|s| s.id == shard_id)
    }

    /// The shards that have a replica on this node.
    pub fn shards_on(&self, node_id: u64) -> Vec<&ShardSpec> {
        self.shards
            .iter()
            .filter(|s| s.replicas.contains(&node_id))
            .collect()
    }

    /// The meta group: id [`META_GROUP_ID`], on `meta_replicas` or the first three nodes.
    pub fn meta_group(&self) -> ShardSpec {
        let replicas = if self.meta_replicas.is_empty() {
            self.nodes.iter().take(3).map(|n| n.id).collect()
        } else {
            self.meta_replicas.clone()
        };
        ShardSpec {
            id: META_GROUP_ID,
            replicas,
        }
    }

    /// Every Raft group (data shards and the meta group) with a replica on this node.
    pub fn groups_on(&self, node_id: u64) -> Vec<ShardSpec> {
        let mut groups: Vec<ShardSpec> = self.shards_on(node_id).into_iter().cloned().collect();
        let meta = self.meta_group();
        if meta.replicas.contains(&node_id) {
            groups.push(meta);
        }
        groups
    }

    /// The replicas of a data shard or of the meta group.
    pub fn replicas_of(&self, group_id: u64) -> Option<Vec<u64>> {
        if group_id == META_GROUP_ID {
            return Some(self.meta_group().replicas);
        }
        self.shard(group_id).map(|s| s.replicas.clone())
    }

    /// The ring placing accounts on shards.
    pub fn ring(&self) -> Ring {
        Ring::new(self.shards.iter().map(|s| s.id), self.virtual_nodes)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct VirtualNode {
    shard_id: u64,
    index: u32,
}

/// Consistent-hashing ring: account id → shard id.
#[derive(Clone, Debug)]
pub struct Ring {
    ring: hashring::HashRing<VirtualNode>,
}

impl Ring {
    /// A ring over these shards with `virtual_nodes` points each.
    pub fn new(shard_ids: impl IntoIterator<Item = u64>, virtual_nodes: u32) -> Ring {
        let mut ring = hashring::HashRing::new();
        for shard_id in shard_ids {
            for index in 0..virtual_nodes {
                ring.add(VirtualNode { shard_id, index });
            }
        }
        Ring { ring }
    }

    /// The shard owning an account. A ring always has at least one shard (checked on load).
    pub fn shard_of(&self, account_id: &str) -> u64 {
        self.ring.get(&account_id).map(|v| v.shard_id).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_topology_round_trips_through_toml() {
        let topology = Topology::local(3, 3, 3, 7100);
        let parsed = Topology::parse(&topology.to_toml()).unwrap();
        assert_eq!(parsed, topology);
        assert_eq!(parsed.shards_on(1).len(), 3);
        assert_eq!(parsed.meta_group().replicas, vec![1, 2, 3]);
        assert_eq!(parsed.groups_on(1).len(), 4);
    }

    #[test]
    fn ring_spreads_accounts_over_every_shard_and_is_stable() {
        let ring = Topology::local(3, 3, 3, 7100).ring();
        let mut counts = BTreeMap::new();
        for i in 0..3000 {
            *counts
                .entry(ring.shard_of(&format!("acct-{i}")))
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c > 500), "{counts:?}");
        // Same placement from a second ring: no per-process randomness.
        let again = Topology::local(3, 3, 3, 7100).ring();
        assert_eq!(ring.shard_of("alice"), again.shard_of("alice"));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Topology::parse("nodes = []\nshards = []").is_err());
        let dup = "[[nodes]]\nid=1\naddress='a'\n[[nodes]]\nid=1\naddress='b'\n[[shards]]\nid=1\nreplicas=[1]";
        assert!(Topology::parse(dup).is_err());
        let unknown = "[[nodes]]\nid=1\naddress='a'\n[[shards]]\nid=1\nreplicas=[2]";
        assert!(Topology::parse(unknown).is_err());
    }
}
