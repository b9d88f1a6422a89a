//! What an operator reaches on every wallet process besides its API, shared by nodes and routers:
//! - `/metrics` in Prometheus' text format on a listener of its own ([`metrics_http`]);
//! - per-RPC request counts by reason, latencies and in-flight calls, measured by a tower layer on
//!   the gRPC server ([`rpc_metrics`]);
//! - the `grpc.health.v1` service, kept up to date by a periodic check of the process's own
//!   ability to do its job, and gRPC server reflection ([`grpc_meta`]).
//!
//! The metrics themselves are `prometheus-client` types; each process registers its own in one
//! `Registry` and this crate serves it.

pub mod grpc_meta;
pub mod metrics_http;
pub mod rpc_metrics;

pub use prometheus_client;
