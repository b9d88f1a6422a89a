//! The Kubernetes manifests (`cluster/k8s/`) agree with what the processes read: the ConfigMap's
//! cluster file parses, names one node per StatefulSet pod by its stable DNS name, and every
//! shard has a majority the PodDisruptionBudget keeps up. (Their schemas are checked in CI by
//! `kubernetes-validate`, README § Kubernetes.)

use std::path::Path;

use wallet_proto::topology::Topology;

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The block scalar under `key: |` in a YAML text, dedented.
fn block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines.next().expect("block key");
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first `key: VALUE` (an integer) after the line containing `after`.
fn number_after(yaml: &str, after: &str, key: &str) -> u64 {
    yaml.lines()
        .skip_while(|l| !l.contains(after))
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} after {after}"))
}

#[test]
fn the_cluster_file_in_the_config_map_matches_the_stateful_set() {
    let topology = Topology::parse(&block(&manifest("configmap.yaml"), "cluster.toml"))
        .expect("the ConfigMap's cluster.toml parses");
    let nodes = manifest("nodes.yaml");
    let pods = number_after(&nodes, "kind: StatefulSet", "replicas");
    assert_eq!(topology.nodes.len() as u64, pods);
    for (ordinal, node) in topology.nodes.iter().enumerate() {
        // The pod's start command makes its id ordinal + 1.
        assert_eq!(node.id, ordinal as u64 + 1);
        assert_eq!(
            node.address,
            format!("wallet-node-{ordinal}.wallet-node:7001")
        );
    }
    // The start command, run by a POSIX shell as the pods' would: pod ordinal + 1.
    let command = nodes
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: "))
        .expect("the node's command");
    let script = command
        .split(r#"", ""#)
        .nth(2)
        .and_then(|s| s.strip_suffix(r#""]"#))
        .expect("sh -c SCRIPT");
    for (ordinal, node) in topology.nodes.iter().enumerate() {
        let output = std::process::Command::new("sh")
            .args(["-c", &script.replace("exec wallet-node", "echo")])
            .env("HOSTNAME", format!("wallet-node-{ordinal}"))
            .output()
            .expect("sh");
        let id = node.id;
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!(
                "--id {id} --tls-cert /etc/wallet-tls/node-{id}.crt --tls-key /etc/wallet-tls/node-{id}.key"
            )
        );
    }
    // The Secret holds what each pod reads, as `wallet-cluster certs` names it.
    let kustomization = manifest("kustomization.yaml");
    let files: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- certs/"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let certs = std::process::Command::new(env!("CARGO_BIN_EXE_wallet-cluster"))
        .args([
            "certs",
            "--nodes",
            &topology.nodes.len().to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .args(["--hosts", "wallet-router,wallet-router.default.svc"])
        .output()
        .expect("wallet-cluster certs");
    assert!(certs.status.success(), "{certs:?}");
    for node in &topology.nodes {
        for ext in ["crt", "key"] {
            let name = format!("node-{}.{ext}", node.id);
            assert!(files.contains(&name.as_str()), "{name} not in the Secret");
        }
    }
    for name in ["ca.crt", "router.crt", "router.key"] {
        assert!(files.contains(&name), "{name} not in the Secret");
    }
    for name in &files {
        assert!(dir.path().join(name).exists(), "`certs` wrote no {name}");
    }
    assert!(
        !files.contains(&"ca.key"),
        "the CA key stays out of the cluster"
    );
    assert!(manifest("router.yaml").contains("/etc/wallet-tls/router.crt"));
    assert!(nodes.contains("publishNotReadyAddresses: true"));
    assert!(nodes.contains("podManagementPolicy: Parallel"));
    assert!(
        nodes.contains("type: OnDelete"),
        "no automatic mixed-version rollout"
    );
    // One node down by choice leaves every shard and the meta group a majority.
    let unavailable = number_after(&nodes, "kind: PodDisruptionBudget", "maxUnavailable");
    for shard in topology.shards.iter().chain([&topology.meta_group()]) {
        let replicas = shard.replicas.len() as u64;
        assert!(replicas - unavailable > replicas / 2, "shard {}", shard.id);
    }
}
