//! `GET /metrics`: the process's registry in the OpenMetrics text format Prometheus scrapes, on a
//! listener of its own (`--metrics-listen`), so a scrape never queues behind gRPC traffic and the
//! port can be opened to a monitoring network only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;

/// Called before each scrape is encoded: sets gauges read from the process's state (a replica's
/// term, indexes, ...) so nothing on a hot path keeps them current.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `listen` (done first at start-up, so a port taken is a start-up error before anything
/// else started).
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves `/metrics` on `listener` until the returned task is aborted or the process ends, and
/// the probes of an orchestrator: `/livez` (200 while the process serves) and `/healthz` (200
/// `SERVING` while the gRPC health service says so, else 503 and why). Nothing else is served;
/// bind it to a monitoring network (it has no connection limit of its own).
pub fn spawn(
    listener: tokio::net::TcpListener,
    registry: Registry,
    refresh: Refresh,
    verdict: crate::grpc_meta::Verdict,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let registry = Arc::new(registry);
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                let refresh = refresh.clone();
                async move { scrape(&registry, &refresh) }
            }),
        )
        .route("/livez", axum::routing::get(|| async { "ALIVE\n" }))
        .route(
            "/healthz",
            axum::routing::get(move || {
                let verdict = verdict.get();
                async move {
                    match verdict {
                        Ok(()) => (axum::http::StatusCode::OK, "SERVING\n".to_string()),
                        Err(why) => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            format!("NOT_SERVING: {why}\n"),
                        ),
                    }
                }
            }),
        );
    serve(listener, app, "/metrics", None)
}

/// Serves `app` on `listener` (axum) until the returned task is aborted or the process ends,
/// logging what it serves (`what`) and a listener failure; over TLS (HTTP/1.1) when `tls` is
/// given. Returns the bound address.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    what: &'static str,
    tls: Option<&Arc<wallet_tls::ServerTls>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    let task = match tls {
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, what, "listener failed");
            }
        }),
        Some(tls) => {
            let https = Https(tls.listen(listener, wallet_tls::Alpn::Http1), bound);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(https, app).await {
                    tracing::error!(error = %e, what, "listener failed");
                }
            })
        }
    };
    tracing::info!(%bound, what, "serving");
    Ok((bound, task))
}

/// TLS connections, for axum.
struct Https(wallet_tls::TlsListener, SocketAddr);

impl axum::serve::Listener for Https {
    type Io = wallet_tls::ServerStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.0.accept().await
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.1)
    }
}

fn scrape(registry: &Registry, refresh: &Refresh) -> axum::response::Response {
    refresh();
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}"),
        )
            .into_response(),
    }
}
