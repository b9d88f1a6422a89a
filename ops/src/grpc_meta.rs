//! The gRPC services about a process rather than the store: `grpc.health.v1` (for Kubernetes
//! probes, load balancers and operators) and server reflection (so grpcurl and other generic
//! clients can list and call the services without the protos).
//!
//! Health is not "the process is up": [`keep_health`] runs the process's own check every period
//! and reports `SERVING` only while it passes (a node: each of its replicas knows a leader and is
//! caught up; a router: it reaches every shard).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub use tonic_health::server::health_reporter;

/// Encoded descriptors of every service a wallet process serves: the store's, health and
/// reflection (v1 and v1alpha).
pub const DESCRIPTORS: &[&[u8]] = &[
    wallet_proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// Reflection services (v1, and v1alpha, which many clients still ask for) over the store's
/// descriptors and the health service's.
#[allow(clippy::type_complexity)]
pub fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let configure = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(wallet_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((configure().build_v1()?, configure().build_v1alpha()?))
}

/// The health [`keep_health`] last reported, for the HTTP probes of the metrics listener
/// (`/healthz`): Kubernetes' gRPC probes cannot speak TLS, so an orchestrator of a TLS cluster
/// probes over plain HTTP what the gRPC health service says.
#[derive(Clone, Debug)]
pub struct Verdict(Arc<Mutex<Result<(), String>>>);

impl Default for Verdict {
    fn default() -> Verdict {
        Verdict(Arc::new(Mutex::new(Err("starting".into()))))
    }
}

impl Verdict {
    /// `Ok` while SERVING, else why not.
    pub fn get(&self) -> Result<(), String> {
        match self.0.lock() {
            Ok(verdict) => verdict.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, verdict: Result<(), String>) {
        match self.0.lock() {
            Ok(mut current) => *current = verdict,
            Err(poisoned) => *poisoned.into_inner() = verdict,
        }
    }
}

/// Runs `check` every `period` and sets the health of the whole server (`""`) and of each of
/// `services` to SERVING once it returns `Ok`, and to NOT_SERVING (logging why, once per change)
/// once it returned `Err` `misses` times in a row (one slow answer on a loaded machine need not
/// take a process out of its load balancer). Reports NOT_SERVING from the moment it is called
/// (tonic-health starts at SERVING) until the first check passed. Runs until the returned task is
/// aborted. `verdict` follows the same status.
pub async fn keep_health<F, Fut>(
    reporter: HealthReporter,
    verdict: Verdict,
    services: &[&str],
    period: Duration,
    misses: u32,
    mut check: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let mut names: Vec<String> = vec![String::new()];
    names.extend(services.iter().map(|s| s.to_string()));
    for name in &names {
        reporter
            .set_service_status(name.as_str(), ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(async move {
        let mut serving = None;
        let mut failed_in_a_row = 0u32;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let checked = check().await;
            failed_in_a_row = if checked.is_ok() {
                0
            } else {
                failed_in_a_row.saturating_add(1)
            };
            let now = match serving {
                // Still SERVING until enough checks in a row failed.
                Some(true) if checked.is_err() => failed_in_a_row < misses.max(1),
                _ => checked.is_ok(),
            };
            match (&checked, now) {
                (_, true) => verdict.set(Ok(())),
                (Err(why), false) => verdict.set(Err(why.clone())),
                (Ok(()), false) => {}
            }
            if serving != Some(now) {
                match &checked {
                    Ok(()) => tracing::info!("health: SERVING"),
                    Err(why) => tracing::warn!(why = %why, "health: NOT_SERVING"),
                }
                let status = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for name in &names {
                    reporter.set_service_status(name.as_str(), status).await;
                }
                serving = Some(now);
            }
        }
    })
}
