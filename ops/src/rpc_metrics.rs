//! Per-RPC metrics of a gRPC server, measured by a tower layer around it: calls by RPC and reason
//! code, a latency histogram and the calls in flight.
//!
//! Labels stay bounded whatever a client sends: the RPC label is a method the server's descriptors
//! name (anything else is `other`), and the reason is one of the store's codes (`OK`, or what
//! `wallet_proto::reason::of_status` reads from the status the server answered).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost::Message;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcReason {
    rpc: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    rpc: String,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s, doubling.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 21))
}

/// The layer (clone it into `Server::builder().layer(..)`).
#[derive(Clone)]
pub struct RpcMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    known: HashSet<String>,
    requests: Family<RpcReason, Counter>,
    latency: Family<Rpc, Histogram, fn() -> Histogram>,
    in_flight: Family<Rpc, Gauge>,
}

impl RpcMetrics {
    /// Registers `rpc_requests`, `rpc_latency_seconds` and `rpc_in_flight` in `registry`. The RPCs
    /// counted by name are the methods of every service a wallet process serves (the store's,
    /// health and reflection).
    pub fn new(registry: &mut Registry) -> RpcMetrics {
        let inner = Inner {
            known: method_paths(crate::grpc_meta::DESCRIPTORS),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            in_flight: Family::default(),
        };
        registry.register(
            "rpc_requests",
            "gRPC calls answered, by RPC and reason code (OK or the refusal's code)",
            inner.requests.clone(),
        );
        registry.register(
            "rpc_latency_seconds",
            "Time from a gRPC call's arrival to its answer, by RPC",
            inner.latency.clone(),
        );
        registry.register(
            "rpc_in_flight",
            "gRPC calls being served, by RPC",
            inner.in_flight.clone(),
        );
        RpcMetrics {
            inner: Arc::new(inner),
        }
    }

    fn rpc_of(&self, path: &str) -> Rpc {
        Rpc {
            rpc: if self.inner.known.contains(path) {
                path.trim_start_matches('/').to_string()
            } else {
                "other".to_string()
            },
        }
    }
}

/// `/package.Service/Method` of every method in the descriptor sets (undecodable sets add none).
fn method_paths(descriptor_sets: &[&[u8]]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for bytes in descriptor_sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let prefix = if package.is_empty() {
                        String::new()
                    } else {
                        format!("{package}.")
                    };
                    paths.insert(format!(
                        "/{prefix}{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    paths
}

/// The reason code of a gRPC answer from its headers. A tonic error answer is trailers-only, so
/// its status travels in the headers: its reason is the store's code (the `wallet-reason` entry,
/// else the message's `CODE:` prefix), or for a status that is not one of the store's refusals
/// (an unknown method, a health check of an unknown service) the gRPC code's name. No status in
/// the headers means it follows in the trailers, which for the store's unary answers is OK.
/// Reads the headers only as text: nothing a peer sends can make it fail.
fn reason_of(headers: &http::HeaderMap) -> &'static str {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let code = match text("grpc-status").map(|c| c.parse::<i32>()) {
        None | Some(Ok(0)) => return "OK",
        Some(Ok(code)) => code,
        Some(Err(_)) => return "UNKNOWN",
    };
    let store_reason = wallet_proto::reason::named(
        text(wallet_proto::reason::METADATA_KEY),
        text("grpc-message").unwrap_or(""),
    );
    match store_reason {
        Some(reason) => reason.as_str(),
        None => code_name(code),
    }
}

/// The name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

impl<S> tower::Layer<S> for RpcMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.clone(),
        }
    }
}

/// A gRPC server measured by [`RpcMetrics`].
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: RpcMetrics,
}

/// One call being served: counted in flight until dropped, and counted as answered with the
/// reason it was given, or as `CANCELLED` if the caller went away first (its future dropped).
struct Call {
    metrics: RpcMetrics,
    rpc: Rpc,
    started: Instant,
    in_flight: Gauge,
    reason: &'static str,
}

impl Drop for Call {
    fn drop(&mut self) {
        self.in_flight.dec();
        let inner = &self.metrics.inner;
        inner
            .latency
            .get_or_create(&self.rpc)
            .observe(self.started.elapsed().as_secs_f64());
        inner
            .requests
            .get_or_create(&RpcReason {
                rpc: self.rpc.rpc.clone(),
                reason: self.reason.to_string(),
            })
            .inc();
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let rpc = self.metrics.rpc_of(request.uri().path());
        let in_flight = self.metrics.inner.in_flight.get_or_create_owned(&rpc);
        in_flight.inc();
        let mut call = Call {
            metrics: self.metrics.clone(),
            rpc,
            started: Instant::now(),
            in_flight,
            reason: "CANCELLED",
        };
        // The clone that was polled ready serves this call (tower's contract).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(async move {
            let answer = inner.call(request).await;
            call.reason = match &answer {
                Ok(response) => reason_of(response.headers()),
                Err(_) => "UNAVAILABLE",
            };
            drop(call);
            answer
        })
    }
}

/// A gRPC server measured by [`RpcMetrics`], as nodes and routers build it.
pub type MeasuredRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<RpcMetrics, tower::layer::util::Identity>,
>;

/// Serves `router` on `listener` until `shutdown` resolves: over TLS (HTTP/2) when `tls` is
/// given, else plaintext with Nagle off.
pub async fn serve(
    router: MeasuredRouter,
    listener: tokio::net::TcpListener,
    tls: Option<&std::sync::Arc<wallet_tls::ServerTls>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    tls.listen(listener, wallet_tls::Alpn::Grpc),
                    shutdown,
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_methods_the_descriptors_name_get_their_own_label() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::new(&mut registry);
        assert_eq!(
            metrics.rpc_of("/wallet.v1.Wallet/Transfer").rpc,
            "wallet.v1.Wallet/Transfer"
        );
        assert_eq!(
            metrics.rpc_of("/wallet.v1.Shard/ExecuteBatch").rpc,
            "wallet.v1.Shard/ExecuteBatch"
        );
        assert_eq!(
            metrics.rpc_of("/grpc.health.v1.Health/Check").rpc,
            "grpc.health.v1.Health/Check"
        );
        for hostile in [
            "/wallet.v1.Wallet/Nope",
            "/x",
            "",
            "/wallet.v1.Wallet/Transfer/x",
        ] {
            assert_eq!(metrics.rpc_of(hostile).rpc, "other", "{hostile}");
        }
    }

    #[test]
    fn the_reason_comes_from_a_status_in_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(reason_of(&headers), "OK");
        let refused = wallet_proto::reason::Reason::InsufficientFunds.status("no money");
        refused.add_header(&mut headers).expect("headers");
        assert_eq!(reason_of(&headers), "INSUFFICIENT_FUNDS");
        let mut headers = http::HeaderMap::new();
        tonic::Status::unimplemented("what")
            .add_header(&mut headers)
            .expect("headers");
        assert_eq!(reason_of(&headers), "UNIMPLEMENTED");
        // A refusal whose message carries the code but no metadata entry.
        let mut headers = http::HeaderMap::new();
        tonic::Status::failed_precondition("ID_REUSED: again")
            .add_header(&mut headers)
            .expect("headers");
        assert_eq!(reason_of(&headers), "ID_REUSED");
        // Garbage a peer might send is read as text or not at all.
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("99"));
        headers.insert(
            "grpc-status-details-bin",
            http::HeaderValue::from_static("!!not base64!!"),
        );
        assert_eq!(reason_of(&headers), "UNKNOWN");
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static("x"));
        assert_eq!(reason_of(&headers), "UNKNOWN");
    }
}
