//! `DIR/endpoints.json`: where every process of a playground listens, for tools and tests to read
//! instead of parsing output:
//!
//! ```json
//! {"router": {"grpc": "127.0.0.1:7000", "http": "127.0.0.1:7008", "metrics": "127.0.0.1:7004"},
//!  "nodes": [{"id": 1, "grpc": "127.0.0.1:7001", "metrics": "127.0.0.1:7005"}, ...]}
//! ```
//!
//! Written when the playground is created and read back when it resumes, so the addresses stay
//! the same across restarts.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterEndpoints {
    /// The Wallet gRPC API (and health, reflection).
    pub grpc: String,
    /// The HTTP/JSON API, at `/v1/...` (empty in a file written before it existed: `up` then
    /// picks a port and saves it).
    #[serde(default)]
    pub http: String,
    /// Prometheus metrics, at `/metrics`.
    pub metrics: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEndpoints {
    pub id: u64,
    /// The Shard and Raft gRPC services (and health, reflection).
    pub grpc: String,
    /// Prometheus metrics, at `/metrics`.
    pub metrics: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    pub router: RouterEndpoints,
    pub nodes: Vec<NodeEndpoints>,
}

/// The file's name in a playground directory.
pub const FILE: &str = "endpoints.json";

impl Endpoints {
    /// Reads `DIR/endpoints.json`.
    pub fn load(dir: &Path) -> Result<Endpoints, String> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path:?}: {e}"))
    }

    /// Writes `DIR/endpoints.json` (whole, through a temporary file and a rename).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let path = dir.join(FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let temporary = dir.join(format!("{FILE}.tmp"));
        std::fs::write(&temporary, text + "\n").map_err(|e| format!("{temporary:?}: {e}"))?;
        std::fs::rename(&temporary, &path).map_err(|e| format!("{path:?}: {e}"))
    }

    /// The metrics address of node `id`.
    pub fn node_metrics(&self, id: u64) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.metrics.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = Endpoints {
            router: RouterEndpoints {
                grpc: "127.0.0.1:7000".into(),
                http: "127.0.0.1:7020".into(),
                metrics: "127.0.0.1:7010".into(),
            },
            nodes: vec![NodeEndpoints {
                id: 1,
                grpc: "127.0.0.1:7001".into(),
                metrics: "127.0.0.1:7011".into(),
            }],
        };
        endpoints.save(dir.path()).unwrap();
        assert_eq!(Endpoints::load(dir.path()).unwrap(), endpoints);
        assert_eq!(endpoints.node_metrics(1), Some("127.0.0.1:7011"));
        assert_eq!(endpoints.node_metrics(2), None);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(raw["router"]["grpc"], "127.0.0.1:7000");
        assert_eq!(raw["router"]["http"], "127.0.0.1:7020");
        assert_eq!(raw["nodes"][0]["id"], 1);
    }
}
