//! Where the cluster under test runs, and how faults reach it.
//!
//! - [`Local`]: node and router processes on 127.0.0.1 (the playground): quick, no Docker needed.
//! - [`Docker`]: each node and each router in its own container built from the project's image
//!   (`wallet:dev`, see README § Containers), on a private Docker network with a fixed address per
//!   host in 198.18.21.0/24. Faults are `docker kill`, `docker pause`, and — only here — network
//!   partitions (`docker network disconnect`).

use std::path::{Path, PathBuf};
use std::process::Command;

use wallet_cluster::playground::{Playground, PlaygroundOptions};
use wallet_proto::topology::{NodeSpec, Topology};

/// What the harness needs from a cluster.
pub trait Backend: Send {
    fn topology(&self) -> &Topology;
    /// The router the workload uses (the router nemesis kills and restarts it).
    fn router_address(&self) -> String;
    fn kill_node(&mut self, node_id: u64);
    /// (Re)starts a node, with extra environment variables if given.
    fn start_node(&mut self, node_id: u64, env: &[(&str, &str)]) -> Result<(), String>;
    fn pause_node(&mut self, node_id: u64, paused: bool);
    fn kill_router(&mut self);
    fn start_router(&mut self) -> Result<(), String>;
    /// Starts a second router the nemeses leave alone; returns its address.
    fn start_second_router(&mut self) -> Result<String, String>;
    /// Cuts a node off the network, or heals it. Not every backend can.
    fn isolate_node(&mut self, node_id: u64, isolated: bool) -> Result<(), String>;
    /// Stops everything and keeps every process's log under `logs/`.
    fn stop_all(&mut self);

    fn node_ids(&self) -> Vec<u64> {
        self.topology().nodes.iter().map(|n| n.id).collect()
    }
}

/// Processes on 127.0.0.1.
pub struct Local {
    playground: Playground,
    second_router: Option<std::process::Child>,
}

impl Local {
    pub fn start(dir: &Path, exe: &Path) -> Result<Local, String> {
        let mut playground = Playground::create(&PlaygroundOptions {
            dir: dir.to_path_buf(),
            nodes: 3,
            shards: 3,
            replicas: 3,
            port: 0,
            compact_every: 500,
            resolve_after_ms: 1000,
            exe: exe.to_path_buf(),
        })?;
        playground.start_all()?;
        Ok(Local {
            playground,
            second_router: None,
        })
    }
}

impl Backend for Local {
    fn topology(&self) -> &Topology {
        &self.playground.topology
    }
    fn router_address(&self) -> String {
        self.playground.router_address.clone()
    }
    fn kill_node(&mut self, node_id: u64) {
        self.playground.kill_node(node_id);
    }
    fn start_node(&mut self, node_id: u64, env: &[(&str, &str)]) -> Result<(), String> {
        self.playground.start_node_with_env(node_id, env)
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
    fn isolate_node(&mut self, _node_id: u64, _isolated: bool) -> Result<(), String> {
        Err(
            "the local backend cannot partition processes on 127.0.0.1; use --backend docker"
                .into(),
        )
    }
    fn stop_all(&mut self) {
        if let Some(mut router) = self.second_router.take() {
            let _ = router.kill();
            let _ = router.wait();
        }
        self.playground.stop_all();
    }
}

/// Containers on a private Docker network.
pub struct Docker {
    prefix: String,
    network: String,
    topology: Topology,
    dir: PathBuf,
    image: String,
}

const DOCKER_SUBNET: &str = "198.18.21.0/24";
const DOCKER_ROUTER_IP: &str = "198.18.21.10";
const DOCKER_SECOND_ROUTER_IP: &str = "198.18.21.9";

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
    pub fn start(dir: &Path, image: &str) -> Result<Docker, String> {
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
        let mut topology = Topology::local(3, 3, 3, 7001);
        topology.nodes = (1..=3)
            .map(|id| NodeSpec {
                id,
                address: format!("198.18.21.{}:7001", 10 + id),
            })
            .collect();
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("cluster.toml"), topology.to_toml()).map_err(|e| e.to_string())?;
        // Bind mounts need an absolute path.
        let dir = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
        let mut backend = Docker {
            prefix,
            network,
            topology,
            dir,
            image: image.to_string(),
        };
        let started = backend
            .node_ids()
            .into_iter()
            .try_for_each(|id| backend.run_node(id, &[]))
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
        let mut args: Vec<&str> = vec!["run", "-d", "--name", name, "--network", &self.network];
        args.extend(["--ip", ip, "-v", &mount]);
        args.extend(options.iter().map(String::as_str));
        args.push(&self.image);
        args.extend(command);
        docker(&args).map(|_| ())
    }

    fn run_node(&self, node_id: u64, env: &[(&str, &str)]) -> Result<(), String> {
        let mut options = vec![
            "-v".to_string(),
            format!("{}-data{node_id}:/data", self.prefix),
        ];
        for (key, value) in env {
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
        let ip = format!("198.18.21.{}", 10 + node_id);
        self.run_container(&self.node_name(node_id), &ip, &options, &command)
    }

    fn run_router(&self, role: &str, ip: &str) -> Result<(), String> {
        let command = [
            "wallet-router",
            "--cluster",
            "/etc/wallet/cluster.toml",
            "--listen",
            "0.0.0.0:7000",
        ];
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

impl Backend for Docker {
    fn topology(&self) -> &Topology {
        &self.topology
    }
    fn router_address(&self) -> String {
        format!("{DOCKER_ROUTER_IP}:7000")
    }
    fn kill_node(&mut self, node_id: u64) {
        let _ = docker(&["kill", &self.node_name(node_id)]);
    }
    fn start_node(&mut self, node_id: u64, env: &[(&str, &str)]) -> Result<(), String> {
        let name = self.node_name(node_id);
        if env.is_empty() && docker(&["start", &name]).is_ok() {
            return Ok(());
        }
        // Another environment means another container (same volume, same address).
        self.save_log(&name);
        let _ = docker(&["rm", "-f", &name]);
        self.run_node(node_id, env)
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
    fn isolate_node(&mut self, node_id: u64, isolated: bool) -> Result<(), String> {
        let name = self.node_name(node_id);
        if isolated {
            docker(&["network", "disconnect", "-f", &self.network, &name]).map(|_| ())
        } else {
            let ip = format!("198.18.21.{}", 10 + node_id);
            docker(&["network", "connect", "--ip", &ip, &self.network, &name]).map(|_| ())
        }
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
