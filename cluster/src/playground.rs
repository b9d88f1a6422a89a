//! A cluster of real processes on 127.0.0.1: one per node, one router.
//!
//! Layout of the playground directory:
//! - `cluster.toml`: the topology every process reads (kept, so a second `up` resumes the data);
//! - `endpoints.json`: where each process serves gRPC and metrics ([`crate::endpoints`]);
//! - `node-N/`: node N's data (sled); `logs/node-N.log`, `logs/router.log`: their output.
//!
//! Processes are started from one executable with the `node` / `router` subcommands (the
//! `wallet-cluster` binary itself), so the playground needs nothing else on disk. Every process the
//! playground starts is ended by it, by pid: on `stop_all` gracefully (SIGTERM, then SIGKILL after a
//! grace period), and on drop with SIGKILL.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::endpoints::{Endpoints, NodeEndpoints, RouterEndpoints};
use std::sync::Arc;
use wallet_proto::topology::Topology;
use wallet_proto::v1::shard_client::ShardClient;
use wallet_proto::v1::{NodeStatus, StatusRequest};
use wallet_tls::{ClientTls, TlsFiles};

/// How a playground is laid out.
#[derive(Clone, Debug)]
pub struct PlaygroundOptions {
    pub dir: PathBuf,
    pub nodes: u64,
    pub shards: u64,
    pub replicas: u64,
    /// The router's port; nodes take the following ones, then the router's metrics port, the
    /// nodes' metrics ports, and the router's HTTP port. 0 picks free ports.
    pub port: u16,
    /// Passed to every node (`--compact-every`).
    pub compact_every: u64,
    /// Passed to every node (`--resolve-after-ms`).
    pub resolve_after_ms: u64,
    /// `request_retention_secs` of a new cluster file (an existing one keeps its own).
    pub request_retention_secs: u64,
    /// The executable with `node` and `router` subcommands.
    pub exe: PathBuf,
    /// Plaintext everywhere. Otherwise (the default of `wallet-cluster up`) every process serves
    /// TLS with certificates in `DIR/certs/` (created when missing), nodes take internal calls
    /// from members only, and the playground's own calls present the router's certificate.
    pub insecure: bool,
}

/// Grace period for a process asked to stop before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A running (or partly running) cluster.
pub struct Playground {
    pub dir: PathBuf,
    pub topology: Topology,
    pub router_address: String,
    /// Where every process serves (also in `DIR/endpoints.json`).
    pub endpoints: Endpoints,
    exe: PathBuf,
    compact_every: u64,
    resolve_after_ms: u64,
    /// `DIR/certs` when the playground runs TLS.
    certs: Option<PathBuf>,
    /// The playground's own calls to the nodes (status, leaders), as a member.
    admin_tls: Option<Arc<ClientTls>>,
    nodes: BTreeMap<u64, Child>,
    router: Option<Child>,
    /// Restart bookkeeping of processes that exited on their own (see [`Playground::supervise`]).
    restarts: BTreeMap<Process, Restart>,
}

/// A process of the playground.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Process {
    Node(u64),
    Router,
}

impl std::fmt::Display for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Process::Node(id) => write!(f, "node-{id}"),
            Process::Router => f.write_str("router"),
        }
    }
}

/// First delay before restarting a process that exited; doubled per quick exit, up to the max.
pub const RESTART_BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts its backoff afresh.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct Restart {
    /// Restarts so far in the current run of quick exits.
    count: u32,
    /// When the process was last started.
    started: Instant,
    /// Set while the process is down: when it is due to start again.
    due: Option<Instant>,
}

/// What the supervisor did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SupervisorEvent {
    /// A process exited by itself (exit code, or None if a signal ended it).
    Exited {
        process: Process,
        code: Option<i32>,
        restart_in: Duration,
    },
    Restarted {
        process: Process,
        count: u32,
    },
}

impl std::fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupervisorEvent::Exited {
                process,
                code,
                restart_in,
            } => {
                let how = match code {
                    Some(code) => format!("with code {code}"),
                    None => "by a signal".to_string(),
                };
                write!(f, "{process} exited {how}; restarting it in {restart_in:?}")
            }
            SupervisorEvent::Restarted { process, count } => {
                write!(f, "{process} restarted (restart #{count})")
            }
        }
    }
}

/// The endpoints of a playground made by an earlier release, which kept only `router.addr`: its
/// metrics listeners get free ports now (none that its processes use), kept from then on.
fn endpoints_of_an_older_playground(
    dir: &Path,
    topology: &Topology,
    distinct_port: impl Fn(&mut std::collections::BTreeSet<u16>) -> Result<u16, String>,
    taken: &mut std::collections::BTreeSet<u16>,
) -> Result<Endpoints, String> {
    let addr_file = dir.join("router.addr");
    let router = fs::read_to_string(&addr_file)
        .map_err(|e| format!("{addr_file:?}: {e}"))?
        .trim()
        .to_string();
    for address in topology
        .nodes
        .iter()
        .map(|n| n.address.as_str())
        .chain([router.as_str()])
    {
        if let Some(port) = address.rsplit(':').next().and_then(|p| p.parse().ok()) {
            taken.insert(port);
        }
    }
    let mut metrics = || Ok::<_, String>(format!("127.0.0.1:{}", distinct_port(taken)?));
    Ok(Endpoints {
        router: RouterEndpoints {
            grpc: router,
            http: metrics()?,
            metrics: metrics()?,
        },
        nodes: topology
            .nodes
            .iter()
            .map(|n| {
                Ok(NodeEndpoints {
                    id: n.id,
                    grpc: n.address.clone(),
                    metrics: metrics()?,
                })
            })
            .collect::<Result<_, String>>()?,
    })
}

/// A port nothing listens on right now (for processes started next).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn signal(child: &Child, signal: i32) {
    // The pid is our own child's: it cannot have been reused while the Child is not yet waited.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns whether it stopped by itself.
fn stop_child(child: &mut Child, grace: Duration) -> bool {
    signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Playground {
    /// Prepares the directory: reuses its `cluster.toml` if there is one (resume), else writes one.
    pub fn create(options: &PlaygroundOptions) -> Result<Playground, String> {
        let io = |e: std::io::Error| e.to_string();
        fs::create_dir_all(options.dir.join("logs")).map_err(io)?;
        let cluster_file = options.dir.join("cluster.toml");
        // Each probe releases its port, so the kernel may offer one twice: keep them apart.
        let mut taken = std::collections::BTreeSet::new();
        let distinct_port = |taken: &mut std::collections::BTreeSet<u16>| loop {
            let port = free_port().map_err(io)?;
            if taken.insert(port) {
                return Ok::<_, String>(port);
            }
        };
        let resumable = options.dir.join(crate::endpoints::FILE).exists()
            || options.dir.join("router.addr").exists();
        let (topology, endpoints) = if cluster_file.exists() && resumable {
            let topology = Topology::load(&cluster_file)?;
            let endpoints = if options.dir.join(crate::endpoints::FILE).exists() {
                let mut endpoints = Endpoints::load(&options.dir)?;
                if endpoints.router.http.is_empty() {
                    endpoints.router.http = format!("127.0.0.1:{}", distinct_port(&mut taken)?);
                }
                endpoints
            } else {
                endpoints_of_an_older_playground(
                    &options.dir,
                    &topology,
                    distinct_port,
                    &mut taken,
                )?
            };
            (topology, endpoints)
        } else {
            let mut topology = Topology::local(
                options.nodes,
                options.shards,
                options.replicas,
                options.port.saturating_add(1),
            );
            let count = u16::try_from(topology.nodes.len()).map_err(|_| "too many nodes")?;
            let mut port = |fixed: u16| -> Result<String, String> {
                let port = if options.port == 0 {
                    distinct_port(&mut taken)?
                } else {
                    options.port.checked_add(fixed).ok_or_else(|| {
                        format!(
                            "--port {} leaves no room for every process's ports",
                            options.port
                        )
                    })?
                };
                Ok(format!("127.0.0.1:{port}"))
            };
            for (n, node) in topology.nodes.iter_mut().enumerate() {
                node.address = port(1 + n as u16)?;
            }
            let router = RouterEndpoints {
                grpc: port(0)?,
                metrics: port(count + 1)?,
                http: port(2 * count + 2)?,
            };
            let nodes = topology
                .nodes
                .iter()
                .enumerate()
                .map(|(n, node)| {
                    Ok(NodeEndpoints {
                        id: node.id,
                        grpc: node.address.clone(),
                        metrics: port(count + 2 + n as u16)?,
                    })
                })
                .collect::<Result<_, String>>()?;
            topology.request_retention_secs = options.request_retention_secs;
            fs::write(&cluster_file, topology.to_toml()).map_err(io)?;
            (topology, Endpoints { router, nodes })
        };
        endpoints.save(&options.dir)?;
        let router_address = endpoints.router.grpc.clone();
        let (certs, admin_tls) = if options.insecure {
            (None, None)
        } else {
            let certs = options.dir.join("certs");
            let ids: Vec<u64> = topology.nodes.iter().map(|n| n.id).collect();
            wallet_tls::issue::ensure_cluster(&certs, &ids, &[]).map_err(|e| e.to_string())?;
            let admin = ClientTls::load(wallet_tls::issue::files(&certs, wallet_tls::ROUTER_NAME))
                .map_err(|e| e.to_string())?;
            (Some(certs), Some(admin))
        };
        Ok(Playground {
            dir: options.dir.clone(),
            topology,
            router_address,
            endpoints,
            exe: options.exe.clone(),
            compact_every: options.compact_every,
            resolve_after_ms: options.resolve_after_ms,
            certs,
            admin_tls,
            nodes: BTreeMap::new(),
            router: None,
            restarts: BTreeMap::new(),
        })
    }

    fn log_file(&self, name: &str) -> Result<fs::File, String> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("logs").join(format!("{name}.log")))
            .map_err(|e| e.to_string())
    }

    fn spawn(
        &self,
        log_name: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Child, String> {
        let log = self.log_file(log_name)?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        Command::new(&self.exe)
            .args(args)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,raft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.exe.display()))
    }

    /// The TLS files of the certificate `name` (`node-N`, `router`, `client`), when the
    /// playground runs TLS.
    pub fn tls_files(&self, name: &str) -> Option<TlsFiles> {
        self.certs
            .as_ref()
            .map(|certs| wallet_tls::issue::files(certs, name))
    }

    /// What a client of this playground needs: the CA and the client certificate (TLS), or
    /// nothing (plaintext).
    pub fn client_tls(&self) -> Option<TlsFiles> {
        self.tls_files(wallet_tls::issue::CLIENT_NAME)
    }

    /// The playground's own TLS to the nodes (a member's: the router's certificate).
    pub fn admin_tls(&self) -> Option<&Arc<ClientTls>> {
        self.admin_tls.as_ref()
    }

    /// Command-line flags giving a process the certificate `name`.
    fn tls_flags(&self, name: &str) -> Vec<String> {
        self.tls_files(name)
            .map(|files| wallet_tls::TlsArgs::from(files).to_flags())
            .unwrap_or_default()
    }

    /// Node ids of the topology.
    pub fn node_ids(&self) -> Vec<u64> {
        self.topology.nodes.iter().map(|n| n.id).collect()
    }

    /// The data directory of a node.
    pub fn node_dir(&self, node_id: u64) -> PathBuf {
        self.dir.join(format!("node-{node_id}"))
    }

    /// The cluster file.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    /// Starts every node and the router.
    pub fn start_all(&mut self) -> Result<(), String> {
        for id in self.node_ids() {
            self.start_node(id)?;
        }
        self.start_router()
    }

    /// Starts one node (no-op if it runs).
    pub fn start_node(&mut self, node_id: u64) -> Result<(), String> {
        self.start_node_with_env(node_id, &[])
    }

    /// Starts one node with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_node_with_env(
        &mut self,
        node_id: u64,
        env: &[(&str, &str)],
    ) -> Result<(), String> {
        if self.nodes.contains_key(&node_id) {
            return Ok(());
        }
        let mut args = vec![
            "node".to_string(),
            "--id".into(),
            node_id.to_string(),
            "--data-dir".into(),
            self.node_dir(node_id).display().to_string(),
            "--cluster".into(),
            self.cluster_file().display().to_string(),
            "--compact-every".into(),
            self.compact_every.to_string(),
            "--resolve-after-ms".into(),
            self.resolve_after_ms.to_string(),
        ];
        if let Some(metrics) = self.endpoints.node_metrics(node_id) {
            args.extend(["--metrics-listen".to_string(), metrics.to_string()]);
        }
        args.extend(self.tls_flags(&wallet_tls::node_name(node_id)));
        let child = self.spawn(&format!("node-{node_id}"), &args, env)?;
        self.nodes.insert(node_id, child);
        self.mark_started(Process::Node(node_id));
        Ok(())
    }

    /// Starts the router (no-op if it runs).
    pub fn start_router(&mut self) -> Result<(), String> {
        if self.router.is_some() {
            return Ok(());
        }
        let mut args = self.router_args(&self.router_address);
        args.extend([
            "--metrics-listen".to_string(),
            self.endpoints.router.metrics.clone(),
            "--http-listen".to_string(),
            self.endpoints.router.http.clone(),
        ]);
        self.router = Some(self.spawn("router", &args, &[])?);
        self.mark_started(Process::Router);
        Ok(())
    }

    /// Starts one more router on `address` (logging to `logs/LOG_NAME.log`, with extra environment
    /// variables such as `FAILPOINTS`); the caller owns it.
    pub fn spawn_router(
        &self,
        address: &str,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> Result<Child, String> {
        self.spawn(log_name, &self.router_args(address), env)
    }

    fn router_args(&self, address: &str) -> Vec<String> {
        let mut args = vec![
            "router".to_string(),
            "--listen".into(),
            address.to_string(),
            "--cluster".into(),
            self.cluster_file().display().to_string(),
        ];
        args.extend(self.tls_flags(wallet_tls::ROUTER_NAME));
        args
    }

    /// kill -9 of one node.
    pub fn kill_node(&mut self, node_id: u64) {
        if let Some(mut child) = self.nodes.remove(&node_id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) a running node: a process that is alive but silent.
    pub fn pause_node(&mut self, node_id: u64, paused: bool) {
        if let Some(child) = self.nodes.get(&node_id) {
            signal(child, if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }

    /// Graceful stop of one node (SIGTERM); returns whether it exited within the grace period.
    pub fn stop_node(&mut self, node_id: u64) -> bool {
        match self.nodes.remove(&node_id) {
            Some(mut child) => stop_child(&mut child, STOP_GRACE),
            None => true,
        }
    }

    /// Deletes a (stopped) node's data directory.
    pub fn wipe_node(&self, node_id: u64) -> Result<(), String> {
        assert!(!self.nodes.contains_key(&node_id), "wipe a running node");
        match fs::remove_dir_all(self.node_dir(node_id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// kill -9 of the router.
    pub fn kill_router(&mut self) {
        if let Some(mut child) = self.router.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a node process is running (started by us and not exited).
    pub fn node_running(&mut self, node_id: u64) -> bool {
        match self.nodes.get_mut(&node_id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn mark_started(&mut self, process: Process) {
        let entry = self.restarts.entry(process).or_insert(Restart {
            count: 0,
            started: Instant::now(),
            due: None,
        });
        entry.started = Instant::now();
        entry.due = None;
    }

    /// The supervisor's round: a node or router that exited by itself (a panic ends a process,
    /// G9) is started again after a backoff (1 s, doubling per quick exit up to 30 s; afresh after
    /// a minute of running). Processes stopped or killed through the playground stay down.
    /// Call it periodically; returns what it did.
    pub fn supervise(&mut self) -> Vec<SupervisorEvent> {
        let mut events = Vec::new();
        let mut exited = Vec::new();
        for (id, child) in &mut self.nodes {
            if let Ok(Some(status)) = child.try_wait() {
                exited.push((Process::Node(*id), status.code()));
            }
        }
        if let Some(router) = self.router.as_mut() {
            if let Ok(Some(status)) = router.try_wait() {
                exited.push((Process::Router, status.code()));
            }
        }
        let now = Instant::now();
        for (process, code) in exited {
            match process {
                Process::Node(id) => {
                    self.nodes.remove(&id);
                }
                Process::Router => self.router = None,
            }
            let restart = self.restarts.entry(process).or_insert(Restart {
                count: 0,
                started: now,
                due: None,
            });
            if now.duration_since(restart.started) > RESTART_RESET_AFTER {
                restart.count = 0;
            }
            let restart_in = RESTART_BACKOFF_FIRST
                .saturating_mul(1 << restart.count.min(5))
                .min(RESTART_BACKOFF_MAX);
            restart.due = Some(now + restart_in);
            events.push(SupervisorEvent::Exited {
                process,
                code,
                restart_in,
            });
        }
        let due: Vec<Process> = self
            .restarts
            .iter()
            .filter(|(_, r)| r.due.is_some_and(|due| due <= now))
            .map(|(p, _)| *p)
            .collect();
        for process in due {
            let started = match process {
                Process::Node(id) => self.start_node(id),
                Process::Router => self.start_router(),
            };
            match started {
                Ok(()) => {
                    let restart = self.restarts.entry(process).or_insert(Restart {
                        count: 0,
                        started: now,
                        due: None,
                    });
                    restart.count += 1;
                    events.push(SupervisorEvent::Restarted {
                        process,
                        count: restart.count,
                    });
                }
                Err(e) => eprintln!("cannot restart {process}: {e}"),
            }
        }
        events
    }

    /// Stops everything gracefully; returns the processes that had to be killed.
    pub fn stop_all(&mut self) -> Vec<String> {
        let mut killed = Vec::new();
        if let Some(mut router) = self.router.take() {
            if !stop_child(&mut router, STOP_GRACE) {
                killed.push("router".to_string());
            }
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            if let Some(child) = self.nodes.get(id) {
                signal(child, libc::SIGTERM);
            }
        }
        for id in ids {
            if let Some(mut child) = self.nodes.remove(&id) {
                if !stop_child(&mut child, STOP_GRACE) {
                    killed.push(format!("node-{id}"));
                }
            }
        }
        killed
    }

    /// A node's status, or None if it does not answer within a second.
    pub async fn status(&self, node_id: u64) -> Option<NodeStatus> {
        node_status(&self.topology, self.admin_tls(), node_id).await
    }

    /// The node leading each shard (and the meta group, id 0), as the leaders themselves report
    /// it (groups without one are missing). Only nodes that answer count.
    pub async fn leaders(&self) -> BTreeMap<u64, u64> {
        group_leaders(&self.topology, self.admin_tls()).await
    }

    /// Waits until every shard has a leader and the router answers; returns the leaders.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<BTreeMap<u64, u64>, String> {
        let router = self
            .router
            .is_some()
            .then_some(self.router_address.as_str());
        wait_ready(&self.topology, self.admin_tls(), router, timeout)
            .await
            .map_err(|e| format!("{e}; see {}", self.dir.join("logs").display()))
    }

    /// Waits until `node_id` has applied at least `index` on `shard_id`.
    pub async fn wait_applied(
        &self,
        node_id: u64,
        shard_id: u64,
        index: u64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let applied = self.status(node_id).await.and_then(|s| {
                s.replicas
                    .iter()
                    .find(|r| r.shard_id == shard_id)
                    .map(|r| r.applied_index)
            });
            if applied.is_some_and(|a| a >= index) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {node_id} applied {applied:?} of shard {shard_id}, wanted {index}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Some(mut router) = self.router.take() {
            let _ = router.kill();
            let _ = router.wait();
        }
        for (_, mut child) in std::mem::take(&mut self.nodes) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A node's status, or None if it does not answer within a second. Over TLS (`tls`, a member's
/// certificate: nodes take `Shard` calls from members only) when the cluster runs it.
pub async fn node_status(
    topology: &Topology,
    tls: Option<&Arc<ClientTls>>,
    node_id: u64,
) -> Option<NodeStatus> {
    let address = topology.address_of(node_id)?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}")).ok()?;
    let call = async {
        let channel = match tls {
            Some(tls) => tls
                .channel(&endpoint, Some(&wallet_tls::node_name(node_id)))
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
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()
        .flatten()
}

/// The node leading each group (shards, and the meta group as id 0), as the leaders report it.
pub async fn group_leaders(
    topology: &Topology,
    tls: Option<&Arc<ClientTls>>,
) -> BTreeMap<u64, u64> {
    let mut leaders = BTreeMap::new();
    for node in &topology.nodes {
        if let Some(status) = node_status(topology, tls, node.id).await {
            for replica in status.replicas.iter().filter(|r| r.is_leader) {
                leaders.insert(replica.shard_id, node.id);
            }
        }
    }
    leaders
}

/// Waits until every group has a leader and the router (if given) accepts connections.
pub async fn wait_ready(
    topology: &Topology,
    tls: Option<&Arc<ClientTls>>,
    router_address: Option<&str>,
    timeout: Duration,
) -> Result<BTreeMap<u64, u64>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let leaders = group_leaders(topology, tls).await;
        let router_up = router_address.is_none_or(|a| std::net::TcpStream::connect(a).is_ok());
        let every_group_led = topology
            .shards
            .iter()
            .map(|s| s.id)
            .chain([wallet_proto::topology::META_GROUP_ID])
            .all(|id| leaders.contains_key(&id));
        if every_group_led && router_up {
            return Ok(leaders);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cluster not ready after {timeout:?}: leaders {leaders:?}, router up: {router_up}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the last `lines` lines of a playground log (for test failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
