//! What an operator reaches besides the API, on real processes: `/metrics` on every node and the
//! router, scraped by a real Prometheus (Debian's package) and read back through its query API;
//! the health service around nodes killed and restarted; server reflection listed by a client not
//! written in Rust (Python's grpcio-reflection); `endpoints.json`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, SERIAL};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use wallet_cluster::endpoints::Endpoints;

/// `GET path` over HTTP/1.0 (no client library needed); the body of a 200 answer.
fn http_get(address: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer from {address}: {answer:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{address}{path}: {head}"));
    }
    Ok(body.to_string())
}

/// The sample value of `line_start` (a metric name with its labels) in a scrape.
fn sample(scrape: &str, line_start: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(line_start))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

async fn health(address: &str) -> Result<ServingStatus, String> {
    health_of(address, "").await
}

async fn health_of(address: &str, service: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = HealthClient::new(channel);
    let answer = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|e| e.to_string())?;
    ServingStatus::try_from(answer.into_inner().status).map_err(|e| e.to_string())
}

/// Waits until `address` reports `want`; panics with the last answer after `timeout`.
async fn wait_health(address: &str, want: ServingStatus, timeout: Duration, cluster: &Cluster) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = health(address).await;
        if got == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address}: health {got:?}, want {want:?}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_health_and_reflection() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(2, 10_000).await;
    let endpoints = Endpoints::load(&cluster.playground.dir).expect("endpoints.json");
    assert_eq!(endpoints.router.grpc, cluster.playground.router_address);
    assert_eq!(endpoints.nodes.len(), 3);
    for (node, listed) in cluster
        .playground
        .topology
        .nodes
        .iter()
        .zip(&endpoints.nodes)
    {
        assert_eq!((node.id, &node.address), (listed.id, &listed.grpc));
    }

    // Some traffic: OK answers and a refusal.
    let client = cluster.client();
    client.create_account("ops-a", "USD", 0).await.expect("a");
    client.create_account("ops-b", "USD", 0).await.expect("b");
    client
        .deposit("ops-fund", "ops-a", 1_000)
        .await
        .expect("fund");
    for n in 0..10 {
        client
            .transfer(&format!("ops-t{n}"), "ops-a", "ops-b", 1)
            .await
            .expect("transfer");
    }
    let refused = client.transfer("ops-big", "ops-a", "ops-b", i64::MAX).await;
    assert!(refused.is_err());
    client.audit().await.expect("audit");

    // The router's own scrape.
    let scrape = http_get(&endpoints.router.metrics, "/metrics").expect("router metrics");
    let transfers_ok = sample(
        &scrape,
        r#"wallet_router_rpc_requests_total{rpc="wallet.v1.Wallet/Transfer",reason="OK"} "#,
    );
    assert!(transfers_ok >= Some(10.0), "{scrape}");
    assert_eq!(
        sample(
            &scrape,
            r#"wallet_router_rpc_requests_total{rpc="wallet.v1.Wallet/Transfer",reason="INSUFFICIENT_FUNDS"} "#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert!(
        sample(&scrape, r#"wallet_router_audits_total{result="balanced"} "#) >= Some(1.0),
        "{scrape}"
    );
    assert!(scrape.contains("wallet_router_rpc_latency_seconds_bucket"));
    assert_eq!(
        sample(
            &scrape,
            r#"wallet_router_rpc_in_flight{rpc="wallet.v1.Wallet/Transfer"} "#
        ),
        Some(0.0),
        "{scrape}"
    );
    // Every node: per-shard Raft gauges, entries, fsyncs.
    for node in &endpoints.nodes {
        let scrape = http_get(&node.metrics, "/metrics").expect("node metrics");
        for shard in 0..=2 {
            assert!(
                sample(
                    &scrape,
                    &format!("wallet_node_raft_term{{shard=\"{shard}\"}} ")
                ) >= Some(1.0),
                "node {}: {scrape}",
                node.id
            );
            assert!(
                scrape.contains(&format!(
                    "wallet_node_undecided_transfers{{shard=\"{shard}\",side=\"prepared\"}}"
                )),
                "{scrape}"
            );
        }
        assert!(
            sample(&scrape, "wallet_node_fsync_seconds_count ") > Some(0.0),
            "{scrape}"
        );
        assert!(
            scrape.contains("wallet_node_rpc_requests_total"),
            "{scrape}"
        );
    }
    // A leader proposed entries; one of the nodes counted them.
    let mut entries = 0.0;
    for node in &endpoints.nodes {
        let scrape = http_get(&node.metrics, "/metrics").expect("node metrics");
        entries += sample(&scrape, "wallet_node_entry_commands_count ").unwrap_or(0.0);
    }
    assert!(entries >= 10.0, "{entries} entries proposed");

    // A real Prometheus scrapes all four and answers a query about them.
    let prometheus = Prometheus::start(&cluster.playground.dir, &endpoints);
    prometheus.wait_for("count(up == 1)", 4.0, &cluster);
    prometheus.wait_for(
        r#"sum(wallet_router_rpc_requests_total{rpc="wallet.v1.Wallet/Transfer",reason="OK"})"#,
        10.0,
        &cluster,
    );
    prometheus.wait_for("min(wallet_node_raft_term)", 1.0, &cluster);
    drop(prometheus);

    // gzip and zstd are accepted (and answered in kind) by the router and the nodes.
    for encoding in [
        tonic::codec::CompressionEncoding::Gzip,
        tonic::codec::CompressionEncoding::Zstd,
    ] {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", endpoints.router.grpc))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
        let mut raw = wallet_proto::v1::wallet_client::WalletClient::new(channel)
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let account = raw
            .get_account(wallet_proto::v1::GetAccountRequest {
                account_id: "ops-b".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}: {e}"))
            .into_inner();
        assert_eq!(account.balance, 10, "{encoding:?}");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", endpoints.nodes[0].grpc))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect");
        let status = wallet_proto::v1::shard_client::ShardClient::new(channel)
            .send_compressed(encoding)
            .accept_compressed(encoding)
            .status(wallet_proto::v1::StatusRequest::default())
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}: {e}"))
            .into_inner();
        assert_eq!(status.node_id, endpoints.nodes[0].id);
    }

    // Reflection, listed by Python's grpcio-reflection.
    let listed = reflection(&endpoints.router.grpc, &["wallet.v1.Wallet"]);
    for want in [
        "service wallet.v1.Wallet",
        "service grpc.health.v1.Health",
        "methods wallet.v1.Wallet ",
        " Transfer",
        " TransferBatch",
    ] {
        assert!(listed.contains(want), "router: {want:?} not in\n{listed}");
    }
    let listed = reflection(&endpoints.nodes[0].grpc, &["wallet.v1.Shard"]);
    for want in [
        "service wallet.v1.Shard",
        "service wallet.v1.Raft",
        "service grpc.health.v1.Health",
        " ExecuteBatch",
    ] {
        assert!(listed.contains(want), "node: {want:?} not in\n{listed}");
    }

    // Health: all SERVING; with two of three nodes gone no shard has a majority, so the router
    // and the node left report NOT_SERVING; once they are back, SERVING again.
    let up = Duration::from_secs(30);
    wait_health(&endpoints.router.grpc, ServingStatus::Serving, up, &cluster).await;
    for node in &endpoints.nodes {
        wait_health(&node.grpc, ServingStatus::Serving, up, &cluster).await;
    }
    cluster.playground.kill_node(2);
    cluster.playground.kill_node(3);
    wait_health(
        &endpoints.router.grpc,
        ServingStatus::NotServing,
        up,
        &cluster,
    )
    .await;
    wait_health(
        &endpoints.nodes[0].grpc,
        ServingStatus::NotServing,
        up,
        &cluster,
    )
    .await;
    // The HTTP probes on the metrics port (for orchestrators whose gRPC probes cannot speak TLS)
    // say the same: 503 with why, and alive.
    for address in [&endpoints.router.metrics, &endpoints.nodes[0].metrics] {
        let refused = http_get(address, "/healthz").unwrap_err();
        assert!(refused.contains("503"), "{refused}");
        assert_eq!(http_get(address, "/livez").as_deref(), Ok("ALIVE\n"));
    }
    // Its Shard service with it; its Raft service stays SERVING: it is what the shards need to
    // elect leaders again.
    assert_eq!(
        health_of(&endpoints.nodes[0].grpc, "wallet.v1.Shard").await,
        Ok(ServingStatus::NotServing)
    );
    assert_eq!(
        health_of(&endpoints.nodes[0].grpc, "wallet.v1.Raft").await,
        Ok(ServingStatus::Serving)
    );
    cluster.playground.start_node(2).expect("restart node 2");
    cluster.playground.start_node(3).expect("restart node 3");
    wait_health(&endpoints.router.grpc, ServingStatus::Serving, up, &cluster).await;
    for node in &endpoints.nodes {
        wait_health(&node.grpc, ServingStatus::Serving, up, &cluster).await;
    }
    // The restarted nodes serve metrics on the same addresses.
    for node in &endpoints.nodes[1..] {
        http_get(&node.metrics, "/metrics").expect("metrics after restart");
    }
    for address in [&endpoints.router.metrics, &endpoints.nodes[0].metrics] {
        assert_eq!(http_get(address, "/healthz").as_deref(), Ok("SERVING\n"));
    }
}

/// `python3 reflection_list.py ADDRESS SERVICES...`, its output.
fn reflection(address: &str, services: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reflection_list.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg(&script)
        .arg(address)
        .args(services)
        .output()
        .unwrap_or_else(|e| {
            panic!("{python}: {e} (README § Tests: pip install grpcio-reflection)")
        });
    assert!(
        output.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Prometheus server (Debian's `prometheus` package) scraping every process each second; ended
/// by pid on drop.
struct Prometheus {
    child: Child,
    address: String,
}

impl Prometheus {
    fn start(dir: &Path, endpoints: &Endpoints) -> Prometheus {
        let mut targets = vec![format!("'{}'", endpoints.router.metrics)];
        targets.extend(endpoints.nodes.iter().map(|n| format!("'{}'", n.metrics)));
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
                 - job_name: wallet\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let address = format!(
            "127.0.0.1:{}",
            wallet_cluster::playground::free_port().expect("port")
        );
        let binary = std::env::var("PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
        let log = std::fs::File::create(dir.join("logs/prometheus.log")).expect("log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{binary}: {e} (README § Tests: apt-get install prometheus)")
            });
        Prometheus { child, address }
    }

    /// Waits (up to 60 s) until the instant query `query` answers one sample of at least `want`.
    fn wait_for(&self, query: &str, want: f64, cluster: &Cluster) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let path = format!("/api/v1/query?query={}", url_encode(query));
        let mut last = String::new();
        while Instant::now() < deadline {
            match http_get(&self.address, &path) {
                Ok(body) => {
                    let value = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| {
                            v["data"]["result"][0]["value"][1]
                                .as_str()
                                .map(String::from)
                        })
                        .and_then(|v| v.parse::<f64>().ok());
                    if value >= Some(want) {
                        return;
                    }
                    last = body;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let log = wallet_cluster::playground::tail(
            &cluster.playground.dir.join("logs/prometheus.log"),
            20,
        );
        panic!("Prometheus never answered {query} >= {want}: {last}\n{log}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
