//! Command line of a router (`wallet-router`, and `wallet-cluster router`).

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use tonic::codec::CompressionEncoding::{Gzip, Zstd};

use crate::service::{WalletService, MAX_IN_FLIGHT_DEFAULT};
use wallet_proto::topology::Topology;
use wallet_proto::v1::wallet_server::WalletServer;

/// The wallet store's router: consistent-hashing ring over the shards, leader cache, retries.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct RouterArgs {
    /// Address to serve the Wallet API on.
    #[arg(long, env = "WALLET_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// TOML cluster file (the same one the nodes use).
    #[arg(long, env = "WALLET_CLUSTER")]
    pub cluster: PathBuf,
    /// Requests in flight beyond this are refused with OVERLOADED.
    #[arg(long, env = "WALLET_MAX_IN_FLIGHT", default_value_t = MAX_IN_FLIGHT_DEFAULT)]
    pub max_in_flight: usize,
    /// Address to serve Prometheus metrics on, at `/metrics` (not served when absent).
    #[arg(long, env = "WALLET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the HTTP/JSON API on, at `/v1/...` (not served when absent).
    #[arg(long, env = "WALLET_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// TLS: serve the Wallet API and the HTTP API over it, and dial the nodes over it with this
    /// certificate (which must name `router`). Without --tls-ca the router speaks plaintext.
    #[command(flatten)]
    pub tls: wallet_tls::TlsArgs,
    /// Whether clients must present a certificate of the cluster's CA: none, optional or
    /// required (TLS only).
    #[arg(long, env = "WALLET_CLIENT_AUTH", default_value = "none")]
    pub client_auth: wallet_tls::ClientAuth,
}

/// How often the health service checks that every shard answers.
const HEALTH_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a check waits for each shard: longer than the shard client's connect timeout (1 s)
/// plus a retry, so a probe that meets a dead cached leader lives long enough for the client to
/// drop that leader and find the new one.
const HEALTH_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(4);

/// Runs a router with these arguments until SIGTERM/SIGINT; exits the process on a start-up error.
pub fn main_with(args: RouterArgs) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    wallet_proto::fail_stop::install("wallet-router", None);
    // Arms the failpoints named in FAILPOINTS (a no-op unless built with `failpoints`).
    let _failpoints = fail::FailScenario::setup();
    if let Err(e) = start(args) {
        eprintln!("wallet-router: {e}");
        std::process::exit(1);
    }
}

fn start(args: RouterArgs) -> Result<(), Box<dyn std::error::Error>> {
    let topology = Topology::load(&args.cluster)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let tls = match args.tls.files()? {
            Some(files) => Some(wallet_tls::MemberTls::load(files, args.client_auth)?),
            None if args.client_auth != wallet_tls::ClientAuth::None => {
                return Err("--client-auth needs TLS (--tls-ca, --tls-cert, --tls-key)".into())
            }
            None => None,
        };
        let reload = match &tls {
            Some(tls) => Some(tls.reload_on_sighup()?),
            None => None,
        };
        let service = WalletService::for_topology(
            topology,
            args.max_in_flight,
            tls.as_ref().map(|tls| tls.client.clone()),
        )?;
        let (registry, rpc_metrics) = crate::metrics::registry();
        let verdict = wallet_ops::grpc_meta::Verdict::default();
        let metrics = match args.metrics_listen {
            Some(listen) => {
                let listener = wallet_ops::metrics_http::bind(listen).await?;
                Some(
                    wallet_ops::metrics_http::spawn(
                        listener,
                        registry,
                        std::sync::Arc::new(|| {}),
                        verdict.clone(),
                    )?
                    .1,
                )
            }
            None => None,
        };
        let http = match args.http_listen {
            Some(listen) => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                Some(
                    crate::http::spawn(
                        listener,
                        service.clone(),
                        tls.as_ref().map(|tls| &tls.server),
                    )?
                    .1,
                )
            }
            None => None,
        };
        let (reporter, health) = wallet_ops::grpc_meta::health_reporter();
        let checked = service.clone();
        let health_check = wallet_ops::grpc_meta::keep_health(
            reporter,
            verdict,
            &["wallet.v1.Wallet"],
            HEALTH_PERIOD,
            2,
            move || {
                let checked = checked.clone();
                async move {
                    match checked.unreachable(HEALTH_PROBE_TIMEOUT).await {
                        None => Ok(()),
                        Some(why) => Err(why),
                    }
                }
            },
        )
        .await;
        let (reflection_v1, reflection_v1alpha) = wallet_ops::grpc_meta::reflection()?;
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        tracing::info!(listen = %args.listen, tls = tls.is_some(), "router serving");
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .layer(rpc_metrics)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                WalletServer::new(service)
                    .max_decoding_message_size(wallet_proto::BATCH_BYTES_MAX)
                    .accept_compressed(Gzip)
                    .accept_compressed(Zstd)
                    .send_compressed(Gzip)
                    .send_compressed(Zstd),
            );
        let shutdown = wallet_proto::shutdown::signal();
        wallet_ops::rpc_metrics::serve(
            router,
            listener,
            tls.as_ref().map(|tls| &tls.server),
            shutdown,
        )
        .await?;
        health_check.abort();
        for task in [metrics, http, reload].into_iter().flatten() {
            task.abort();
        }
        tracing::info!("router stopped");
        Ok(())
    })
}
