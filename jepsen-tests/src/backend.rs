//! Where the cluster under test runs, and how faults reach it.
//!
//! - [`Local`]: node and router processes on 127.0.0.1 (the playground): quick, no Docker needed.
//!   Its clock skew restarts a node with `WALLET_CLOCK_SKEW_MS` (only the timestamp oracle's clock
//!   moves); it cannot partition the network.
//! - [`Docker`]: each node and each router in its own container built from the project's image
//!   (`wallet:dev`, see README § Containers), on a private Docker network with a fixed address per
//!   host in 198.18.21.0/24. Faults: `docker kill`, `docker pause`; partitions are iptables rules
//!   inside each node's network namespace (the image carries iptables, nodes get `NET_ADMIN`), so
//!   any grouping of nodes can be cut apart while the routers still reach every node; clock skew is
//!   libfaketime preloaded into every node process, steered through a file the test rewrites, so
//!   the whole process's wall clock jumps while it runs (monotonic time is left alone).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use wallet_cluster::playground::{Playground, PlaygroundOptions};
use wallet_proto::topology::{NodeSpec, Topology};

/// What the harness needs from a cluster.
pub trait Backend: Send {
    fn topology(&self) -> &Topology;
    /// TLS for the harness's clients of the routers (None: plaintext).
    fn client_tls(&self) -> Option<wallet_tls::TlsFiles> {
        None
    }
    /// TLS for the harness's own calls to the nodes (a member's certificate; None: plaintext).
    fn admin_tls(&self) -> Option<std::sync::Arc<wallet_tls::ClientTls>> {
        None
    }
    /// The router the workload uses (the router nemesis kills and restarts it).
    fn router_address(&self) -> String;
    fn kill_node(&mut self, node_id: u64);
    /// Starts a node that is not running (a running node is left alone).
    fn start_node(&mut self, node_id: u64) -> Result<(), String>;
    fn pause_node(&mut self, node_id: u64, paused: bool);
    fn kill_router(&mut self);
    fn start_router(&mut self) -> Result<(), String>;
    /// Starts a second router the nemeses leave alone; returns its address.
    fn start_second_router(&mut self) -> Result<String, String>;
    /// Cuts the network between nodes so that two nodes talk only if some group holds both
    /// (groups may overlap: a bridge). Routers keep reaching every node.
    fn partition(&mut self, groups: &[Vec<u64>]) -> Result<(), String>;
    /// Removes every partition.
    fn heal_network(&mut self) -> Result<(), String>;
    /// Moves a node's wall clock `offset_ms` away from the true time (0 heals it).
    fn skew_clock(&mut self, node_id: u64, offset_ms: i64) -> Result<(), String>;
    /// Deletes a stopped node's data directory (a lost disk).
    fn wipe_node(&mut self, node_id: u64) -> Result<(), String>;
    /// Flips bits at seeded places in a stopped node's sled file (a corrupt disk); returns where.
    fn corrupt_node(&mut self, node_id: u64, seed: u64) -> Result<String, String>;
    /// Stops everything and keeps every process's log under `logs/`.
    fn stop_all(&mut self);

    fn node_ids(&self) -> Vec<u64> {
        self.topology().nodes.iter().map(|n| n.id).collect()
    }
}

/// The pairs of nodes a partition into `groups` separates, each once (smaller id first).
pub fn cut_pairs(nodes: &[u64], groups: &[Vec<u64>]) -> Vec<(u64, u64)> {
    let together = |a: u64, b: u64| groups.iter().any(|g| g.contains(&a) && g.contains(&b));
    let mut pairs = Vec::new();
    for (i, &a) in nodes.iter().enumerate() {
        for &b in &nodes[i + 1..] {
            if !together(a, b) {
                pairs.push((a.min(b), a.max(b)));
            }
        }
    }
    pairs
}

/// Bits flipped by the `corrupt` nemesis in one file.
pub const CORRUPT_FLIPS: usize = 8;

/// Flips [`CORRUPT_FLIPS`] bits at places chosen by `seed`; returns the byte offsets.
pub fn flip_bits(bytes: &mut [u8], seed: u64) -> String {
    if bytes.is_empty() {
        return "empty file".into();
    }
    let mut rng = crate::rng::Rng(seed | 1);
    let mut offsets = Vec::new();
    for _ in 0..CORRUPT_FLIPS {
        let at = rng.below(bytes.len() as u64) as usize;
        bytes[at] ^= 1 << rng.below(8);
        offsets.push(at.to_string());
    }
    format!("bytes {} of {}", offsets.join(","), bytes.len())
}

/// Processes on 127.0.0.1.
pub struct Local {
    playground: Playground,
    second_router: Option<std::process::Child>,
    skewed: BTreeSet<u64>,
}

impl Local {
    pub fn start(dir: &Path, exe: &Path, nodes: u64) -> Result<Local, String> {
        let mut playground = Playground::create(&PlaygroundOptions {
            dir: dir.to_path_buf(),
            nodes,
            shards: nodes,
            replicas: 3,
            port: 0,
            compact_every: 500,
            resolve_after_ms: 1000,
            request_retention_secs: wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT,
            exe: exe.to_path_buf(),
            // The harness runs the cluster as an operator would: TLS, members-only nodes.
            insecure: false,
        })?;
        playground.start_all()?;
        Ok(Local {
            playground,
            second_router: None,
            skewed: BTreeSet::new(),
        })
    }
}

impl Backend for Local {
    fn client_tls(&self) -> Option<wallet_tls::TlsFiles> {
        self.playground.client_tls()
    }
    fn admin_tls(&self) -> Option<std::sync::Arc<wallet_tls::ClientTls>> {
        self.playground.admin_tls().cloned()
    }
    fn topology(&self) -> &Topology {
        &self.playground.topology
    }
    fn router_address(&self) -> String {
        self.playground.router_address.clone()
    }
    fn kill_node(&mut self, node_id: u64) {
        self.playground.kill_node(node_id);
    }
    fn start_node(&mut self, node_id: u64) -> Result<(), String> {
        self.playground.start_node_with_env(node_id, &[])
    }
    fn pause_node(&mut self, node_id: u64, paused: bool) {
        self.playground.pause_node(node_id, paused);
    }
    fn kill_router(&mut self) {
        self.playground.kill_router();
    }
    fn start_router(&mut self) -> Result<(), String> {
        self.playground.start_router()
    }
    fn start_second_router(&mut self) -> Result<String, String> {
        let port = wallet_cluster::playground::free_port().map_err(|e| e.to_string())?;
        let address = format!("127.0.0.1:{port}");
        self.second_router = Some(self.playground.spawn_router(&address, "router-2", &[])?);
        Ok(address)
    }
    fn partition(&mut self, _groups: &[Vec<u64>]) -> Result<(), String> {
        Err(
            "the local backend cannot partition processes on 127.0.0.1; use --backend docker"
                .into(),
        )
    }
    fn heal_network(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn skew_clock(&mut self, node_id: u64, offset_ms: i64) -> Result<(), String> {
        if offset_ms == 0 && !self.skewed.remove(&node_id) {
            return Ok(());
        }
        // A process's environment is fixed at its start: restart it with the skew.
        self.playground.kill_node(node_id);
        if offset_ms == 0 {
            return self.playground.start_node_with_env(node_id, &[]);
        }
        self.skewed.insert(node_id);
        let skew = offset_ms.to_string();
        self.playground
            .start_node_with_env(node_id, &[("WALLET_CLOCK_SKEW_MS", &skew)])
    }
    fn wipe_node(&mut self, node_id: u64) -> Result<(), String> {
        self.playground.wipe_node(node_id)
    }
    fn corrupt_node(&mut self, node_id: u64, seed: u64) -> Result<String, String> {
        let file = self.playground.node_dir(node_id).join("sled").join("db");
        let mut bytes = std::fs::read(&file).map_err(|e| e.to_string())?;
        let flipped = flip_bits(&mut bytes, seed);
        std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
        Ok(flipped)
    }
    fn stop_all(&mut self) {
        if let Some(mut router) = self.second_router.take() {
            let _ = router.kill();
            let _ = router.wait();
        }
        self.playground.stop_all();
    }
}

/// Containers on a private Docker network, speaking TLS with certificates in the run's
/// `cluster/certs` (mounted read-only at `/etc/wallet/certs`).
pub struct Docker {
    prefix: String,
    network: String,
    topology: Topology,
    dir: PathBuf,
    image: String,
    /// The harness's own calls to the nodes, as a member (the router's certificate).
    admin_tls: std::sync::Arc<wallet_tls::ClientTls>,
}

/// Where the containers find the certificates.
const CERTS_IN_CONTAINER: &str = "/etc/wallet/certs";

const DOCKER_SUBNET: &str = "198.18.21.0/24";
const DOCKER_ROUTER_IP: &str = "198.18.21.10";
const DOCKER_SECOND_ROUTER_IP: &str = "198.18.21.9";
/// Inside a node container: the offset libfaketime applies ("+30", "-12"; seconds).
const FAKETIME_FILE: &str = "/tmp/faketime";

fn node_ip(node_id: u64) -> String {
    format!("198.18.21.{}", 10 + node_id)
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Docker {
    /// Creates the network and starts 3 nodes × 3 shards and a router from `image`.
    pub fn start(dir: &Path, image: &str, nodes: u64) -> Result<Docker, String> {
        docker(&["image", "inspect", image]).map_err(|_| {
            format!("image {image} not found: build it first (README § Containers)")
        })?;
        // The run's directory is store/<workload>/<time>/cluster: name containers after <time>.
        let stamp = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!("wj{stamp}");
        let network = format!("{prefix}-net");
        // A run that was itself killed leaves its network holding the subnet: remove such leftovers
        // (docker refuses to remove a network still in use, so a live run keeps its own).
        if let Ok(names) = docker(&["network", "ls", "--format", "{{.Name}}"]) {
            for stale in names
                .lines()
                .filter(|n| n.starts_with("wj") && n.ends_with("-net"))
            {
                let _ = docker(&["network", "rm", stale]);
            }
        }
        docker(&["network", "create", "--subnet", DOCKER_SUBNET, &network])?;
        let mut topology = Topology::local(nodes, nodes, 3, 7001);
        topology.nodes = (1..=nodes)
            .map(|id| NodeSpec {
                id,
                address: format!("{}:7001", node_ip(id)),
            })
            .collect();
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("cluster.toml"), topology.to_toml()).map_err(|e| e.to_string())?;
        // Bind mounts need an absolute path.
        let dir = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
        // The routers' certificates are valid for the addresses the clients dial.
        let ids: Vec<u64> = topology.nodes.iter().map(|n| n.id).collect();
        let certs = dir.join("certs");
        wallet_tls::issue::ensure_cluster(
            &certs,
            &ids,
            &[DOCKER_ROUTER_IP.into(), DOCKER_SECOND_ROUTER_IP.into()],
        )
        .map_err(|e| e.to_string())?;
        let admin_tls =
            wallet_tls::ClientTls::load(wallet_tls::issue::files(&certs, wallet_tls::ROUTER_NAME))
                .map_err(|e| e.to_string())?;
        let mut backend = Docker {
            prefix,
            network,
            topology,
            dir,
            image: image.to_string(),
            admin_tls,
        };
        let started = backend
            .node_ids()
            .into_iter()
            .try_for_each(|id| backend.run_node(id))
            .and_then(|_| backend.run_router("router", DOCKER_ROUTER_IP));
        if let Err(e) = started {
            backend.stop_all();
            return Err(e);
        }
        Ok(backend)
    }

    fn node_name(&self, node_id: u64) -> String {
        format!("{}-node{node_id}", self.prefix)
    }

    fn cluster_mount(&self) -> String {
        format!(
            "{}:/etc/wallet/cluster.toml:ro",
            self.dir.join("cluster.toml").display()
        )
    }

    /// `docker run -d` of the image as `name` at `ip`, with the cluster file mounted, extra
    /// `docker run` options, then the command.
    fn run_container(
        &self,
        name: &str,
        ip: &str,
        options: &[String],
        command: &[&str],
    ) -> Result<(), String> {
        let mount = self.cluster_mount();
        let certs = format!(
            "{}:{CERTS_IN_CONTAINER}:ro",
            self.dir.join("certs").display()
        );
        let mut args: Vec<&str> = vec!["run", "-d", "--name", name, "--network", &self.network];
        // Fail-stop (G9): a process that exits by itself (a panic) is started again by Docker;
        // the nemesis's `docker kill` is a manual stop, which Docker leaves alone.
        args.extend(["--restart", "on-failure"]);
        args.extend(["--ip", ip, "-v", &mount, "-v", &certs]);
        args.extend(options.iter().map(String::as_str));
        args.push(&self.image);
        args.extend(command);
        docker(&args).map(|_| ())
    }

    fn run_node(&self, node_id: u64) -> Result<(), String> {
        let mut options = vec![
            "-v".to_string(),
            format!("{}-data{node_id}:/data", self.prefix),
            // iptables inside the node's own network namespace (partitions).
            "--cap-add".to_string(),
            "NET_ADMIN".to_string(),
        ];
        // The wall clock of the whole process follows FAKETIME_FILE (absent: the true time),
        // re-read every second; tokio's timers use the monotonic clock, which stays true.
        let faketime = format!(
            "/usr/lib/{}-linux-gnu/faketime/libfaketimeMT.so.1",
            std::env::consts::ARCH
        );
        for (key, value) in [
            ("LD_PRELOAD", faketime.as_str()),
            ("FAKETIME_TIMESTAMP_FILE", FAKETIME_FILE),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ] {
            options.extend(["-e".to_string(), format!("{key}={value}")]);
        }
        let id = node_id.to_string();
        let command = [
            "wallet-node",
            "--id",
            &id,
            "--data-dir",
            "/data",
            "--cluster",
            "/etc/wallet/cluster.toml",
            "--listen",
            "0.0.0.0:7001",
            "--compact-every",
            "500",
            "--resolve-after-ms",
            "1000",
        ];
        let tls = tls_flags(&wallet_tls::node_name(node_id));
        let command: Vec<&str> = command
            .into_iter()
            .chain(tls.iter().map(String::as_str))
            .collect();
        self.run_container(
            &self.node_name(node_id),
            &node_ip(node_id),
            &options,
            &command,
        )
    }

    fn run_router(&self, role: &str, ip: &str) -> Result<(), String> {
        let command = [
            "wallet-router",
            "--cluster",
            "/etc/wallet/cluster.toml",
            "--listen",
            "0.0.0.0:7000",
        ];
        let tls = tls_flags(wallet_tls::ROUTER_NAME);
        let command: Vec<&str> = command
            .into_iter()
            .chain(tls.iter().map(String::as_str))
            .collect();
        self.run_container(&format!("{}-{role}", self.prefix), ip, &[], &command)
    }

    fn containers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .node_ids()
            .iter()
            .map(|id| self.node_name(*id))
            .collect();
        names.push(format!("{}-router", self.prefix));
        names.push(format!("{}-router2", self.prefix));
        names
    }
}

/// Flags giving a container's process the certificate `name`.
fn tls_flags(name: &str) -> Vec<String> {
    wallet_tls::TlsArgs::from(wallet_tls::issue::files(
        Path::new(CERTS_IN_CONTAINER),
        name,
    ))
    .to_flags()
}

impl Backend for Docker {
    fn client_tls(&self) -> Option<wallet_tls::TlsFiles> {
        Some(wallet_tls::issue::files(
            &self.dir.join("certs"),
            wallet_tls::issue::CLIENT_NAME,
        ))
    }
    fn admin_tls(&self) -> Option<std::sync::Arc<wallet_tls::ClientTls>> {
        Some(self.admin_tls.clone())
    }
    fn topology(&self) -> &Topology {
        &self.topology
    }
    fn router_address(&self) -> String {
        format!("{DOCKER_ROUTER_IP}:7000")
    }
    fn kill_node(&mut self, node_id: u64) {
        let _ = docker(&["kill", &self.node_name(node_id)]);
    }
    fn start_node(&mut self, node_id: u64) -> Result<(), String> {
        docker(&["start", &self.node_name(node_id)]).map(|_| ())
    }
    fn pause_node(&mut self, node_id: u64, paused: bool) {
        let _ = docker(&[
            if paused { "pause" } else { "unpause" },
            &self.node_name(node_id),
        ]);
    }
    fn kill_router(&mut self) {
        let _ = docker(&["kill", &format!("{}-router", self.prefix)]);
    }
    fn start_router(&mut self) -> Result<(), String> {
        docker(&["start", &format!("{}-router", self.prefix)]).map(|_| ())
    }
    fn start_second_router(&mut self) -> Result<String, String> {
        self.run_router("router2", DOCKER_SECOND_ROUTER_IP)?;
        Ok(format!("{DOCKER_SECOND_ROUTER_IP}:7000"))
    }
    fn partition(&mut self, groups: &[Vec<u64>]) -> Result<(), String> {
        let nodes = self.node_ids();
        let pairs = cut_pairs(&nodes, groups);
        for node in nodes {
            // Each side drops what the other sends: no packet crosses either way.
            let rules: Vec<String> = pairs
                .iter()
                .filter_map(|&(a, b)| match node {
                    n if n == a => Some(b),
                    n if n == b => Some(a),
                    _ => None,
                })
                .map(|peer| format!("iptables -A INPUT -s {} -j DROP", node_ip(peer)))
                .collect();
            if !rules.is_empty() {
                self.exec(node, &rules.join(" && "))?;
            }
        }
        Ok(())
    }
    fn heal_network(&mut self) -> Result<(), String> {
        for node in self.node_ids() {
            match self.exec(node, "iptables -F INPUT") {
                // A stopped container's rules went with its network namespace.
                Err(e) if !e.contains("is not running") => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
    fn skew_clock(&mut self, node_id: u64, offset_ms: i64) -> Result<(), String> {
        let seconds = offset_ms / 1000;
        self.exec(node_id, &format!("echo {seconds:+} > {FAKETIME_FILE}"))
    }
    fn wipe_node(&mut self, node_id: u64) -> Result<(), String> {
        let volume = format!("{}-data{node_id}:/data", self.prefix);
        docker(&[
            "run",
            "--rm",
            "-v",
            &volume,
            "--entrypoint",
            "/bin/sh",
            &self.image,
            "-c",
            "rm -rf /data/* /data/.[!.]*",
        ])
        .map(|_| ())
    }
    fn corrupt_node(&mut self, node_id: u64, seed: u64) -> Result<String, String> {
        // `docker cp` works on a stopped container: copy the file out, flip, copy it back.
        let inside = format!("{}:/data/sled/db", self.node_name(node_id));
        let outside = self.dir.join(format!("corrupt-node-{node_id}.db"));
        let outside_str = outside.display().to_string();
        docker(&["cp", &inside, &outside_str])?;
        let mut bytes = std::fs::read(&outside).map_err(|e| e.to_string())?;
        let flipped = flip_bits(&mut bytes, seed);
        std::fs::write(&outside, bytes).map_err(|e| e.to_string())?;
        docker(&["cp", &outside_str, &inside])?;
        let _ = std::fs::remove_file(&outside);
        Ok(flipped)
    }
    fn stop_all(&mut self) {
        for name in self.containers() {
            let _ = docker(&["unpause", &name]);
            let _ = docker(&["stop", "-t", "10", &name]);
            self.save_log(&name);
            let _ = docker(&["rm", "-f", &name]);
        }
        for id in self.node_ids() {
            let _ = docker(&["volume", "rm", &format!("{}-data{id}", self.prefix)]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

impl Docker {
    /// Runs a shell command inside a node's container.
    fn exec(&self, node_id: u64, command: &str) -> Result<(), String> {
        docker(&["exec", &self.node_name(node_id), "sh", "-c", command]).map(|_| ())
    }

    /// Appends a container's output to `logs/<name>.log`.
    fn save_log(&self, name: &str) {
        if let Ok(out) = Command::new("docker").args(["logs", name]).output() {
            use std::io::Write;
            let path = self.dir.join("logs").join(format!("{name}.log"));
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = file.write_all(&out.stdout);
                let _ = file.write_all(&out.stderr);
            }
        }
    }
}
