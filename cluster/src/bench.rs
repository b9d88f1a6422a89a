//! The benchmark behind `wallet-bench`: the transfer workload of `../shared/bench/pg-transfer.sh`
//! (N funded accounts, transfers of 1..=100 between two accounts, each with a unique id) run by
//! concurrent clients for a fixed time, while a sampler reads what the cluster's processes cost
//! from `/proc` once a second.
//!
//! It reports throughput, latency quantiles, CPU milliseconds per 1 000 transfers of all the
//! cluster's processes, each node's largest RSS, and data-directory growth per transfer, both as
//! text and as one JSON object. Runs of two minutes or more also get a per-minute table (does
//! memory, throughput or disk drift over a long run?). The workload is bounded in time and count,
//! and ends with an audit: the benchmark refuses to report figures from a run that lost money.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wallet_client::{CreateAccountRequest, TransferRequest, WalletClient, WalletError};
use wallet_proto::topology::Ring;

use crate::procstat::{self, ClusterProcess};
use crate::workload::{take_p50_p99, Pairing, Pairs, Rng};

/// Shape of a benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub accounts: usize,
    pub clients: usize,
    pub seconds: u64,
    pub pairs: Pairs,
    /// Transfers per request through the batch API (0: one `Transfer` call each).
    pub batch: usize,
    /// Items per linked chain (README § Linked chains): each call is one chain of this many
    /// transfers that commit or abort together (0: no chains).
    pub chain: usize,
    /// Money each account starts with.
    pub initial_balance: i64,
    /// Concurrent calls while opening and funding the accounts.
    pub setup_concurrency: usize,
    /// Replicas per shard (to give disk growth per replica).
    pub replicas: u64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Account ids are `PREFIX-N`.
    pub prefix: String,
    /// Open and fund the accounts first (off: they exist from an earlier run with this prefix).
    pub setup: bool,
    /// The router runs inside this process (the client routes by itself): this process's CPU and
    /// memory are then counted with the cluster's.
    pub in_process: bool,
}

/// One second of the run, as the sampler saw it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub second: u64,
    pub transfers: u64,
    pub p99_ms: f64,
    /// Largest RSS among the nodes.
    pub rss_max: u64,
    /// Bytes in all nodes' data directories.
    pub disk: u64,
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub elapsed: Duration,
    pub transfers: u64,
    /// Requests that were refused (reason → count); a batch counts each refused item.
    pub refusals: BTreeMap<String, u64>,
    pub latency: Histogram<u64>,
    /// CPU of all the cluster's processes during the run (None if none was found).
    pub cpu_ms: Option<u64>,
    /// Largest RSS per process seen during the run.
    pub rss_max: BTreeMap<String, u64>,
    /// Data-directory bytes of all nodes before and after the run.
    pub disk_before: u64,
    pub disk_after: u64,
    pub samples: Vec<Sample>,
    pub audit: String,
}

impl BenchReport {
    pub fn transfers_per_s(&self) -> f64 {
        self.transfers as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn cpu_ms_per_1000(&self) -> Option<f64> {
        self.cpu_ms
            .map(|cpu| cpu as f64 * 1000.0 / self.transfers.max(1) as f64)
    }

    /// Largest RSS of any node.
    pub fn node_rss_max(&self) -> u64 {
        self.rss_max
            .iter()
            .filter(|(name, _)| name.starts_with("node"))
            .map(|(_, rss)| *rss)
            .max()
            .unwrap_or(0)
    }

    /// Data-directory growth per transfer, all replicas together.
    pub fn disk_bytes_per_op(&self) -> f64 {
        self.disk_after.saturating_sub(self.disk_before) as f64 / self.transfers.max(1) as f64
    }

    /// Per-minute figures: (minute, transfers/s, largest node RSS, disk bytes at its end).
    pub fn minutes(&self) -> Vec<(u64, f64, u64, u64)> {
        let mut out = Vec::new();
        for chunk in self.samples.chunks(60) {
            let Some(last) = chunk.last() else { continue };
            let transfers: u64 = chunk.iter().map(|s| s.transfers).sum();
            let rss = chunk.iter().map(|s| s.rss_max).max().unwrap_or(0);
            out.push((
                chunk[0].second / 60 + 1,
                transfers as f64 / chunk.len() as f64,
                rss,
                last.disk,
            ));
        }
        out
    }

    pub fn text(&self) -> String {
        let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut out = format!(
            "{} transfers in {:.1}s ({:?} pairs, {} clients, {}): {:.0} transfers/s\n",
            self.transfers,
            self.elapsed.as_secs_f64(),
            self.options.pairs,
            self.options.clients,
            if self.options.pairs.is_card() {
                "each an authorize then a capture of the whole hold".to_string()
            } else if self.options.chain > 0 {
                format!("linked chains of {} transfers", self.options.chain)
            } else if self.options.batch == 0 {
                "one transfer per call".to_string()
            } else {
                format!("batches of {}", self.options.batch)
            },
            self.transfers_per_s()
        );
        out.push_str(&format!(
            "latency per call: p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms\n",
            self.quantile_ms(0.5),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.latency.max() as f64 / 1000.0
        ));
        match self.cpu_ms_per_1000() {
            Some(cpu) => out.push_str(&format!(
                "cluster CPU: {cpu:.0} ms per 1000 transfers ({} ms in all)\n",
                self.cpu_ms.unwrap_or(0)
            )),
            None => out.push_str("cluster CPU: unknown (no cluster process found)\n"),
        }
        let rss: Vec<String> = self
            .rss_max
            .iter()
            .map(|(name, rss)| format!("{name} {:.0} MB", mb(*rss)))
            .collect();
        out.push_str(&format!("max RSS: {}\n", rss.join(", ")));
        out.push_str(&format!(
            "data dirs: {:.1} MB -> {:.1} MB, {:.0} bytes per transfer ({:.0} per replica)\n",
            mb(self.disk_before),
            mb(self.disk_after),
            self.disk_bytes_per_op(),
            self.disk_bytes_per_op() / self.options.replicas.max(1) as f64
        ));
        if self.refusals.is_empty() {
            out.push_str("refusals: none\n");
        } else {
            let list: Vec<String> = self
                .refusals
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            out.push_str(&format!("refusals: {}\n", list.join(" ")));
        }
        if self.samples.len() >= 120 {
            out.push_str("minute  transfers/s  max node RSS MB  data dirs MB\n");
            for (minute, rate, rss, disk) in self.minutes() {
                out.push_str(&format!(
                    "{minute:>6}  {rate:>11.0}  {:>15.0}  {:>12.1}\n",
                    mb(rss),
                    mb(disk)
                ));
            }
        }
        out.push_str(&format!("audit after the run: {}\n", self.audit));
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let minutes: Vec<serde_json::Value> = self
            .minutes()
            .into_iter()
            .map(|(minute, rate, rss, disk)| {
                serde_json::json!({
                    "minute": minute, "transfers_per_s": rate, "rss_bytes_max": rss,
                    "disk_bytes": disk,
                })
            })
            .collect();
        serde_json::json!({
            "pairs": format!("{:?}", self.options.pairs),
            "clients": self.options.clients,
            "batch": self.options.batch,
            "chain": self.options.chain,
            "accounts": self.options.accounts,
            "seconds": self.elapsed.as_secs_f64(),
            "transfers": self.transfers,
            "transfers_per_s": self.transfers_per_s(),
            "p50_ms": self.quantile_ms(0.5),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": self.latency.max() as f64 / 1000.0,
            "cpu_ms_per_1000_ops": self.cpu_ms_per_1000(),
            "rss_bytes_max": self.node_rss_max(),
            "rss_bytes_by_process": self.rss_max,
            "disk_bytes_per_op": self.disk_bytes_per_op(),
            "disk_bytes_per_op_per_replica":
                self.disk_bytes_per_op() / self.options.replicas.max(1) as f64,
            "refusals": self.refusals,
            "minutes": minutes,
            "audit": self.audit,
        })
    }
}

#[derive(Default)]
struct Live {
    transfers: AtomicU64,
    interval: Mutex<Option<Histogram<u64>>>,
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Live {
    fn refused(&self, reason: &str, count: u64) {
        if let Ok(mut refusals) = self.refusals.lock() {
            *refusals.entry(reason.to_string()).or_default() += count;
        }
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant digits: never fails for these bounds.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// Opens `ids` funded with `initial` each through the bulk path (`CreateAccountBatch`, batches
/// of 8 189 with their opening balance), `concurrency` batches in flight; prints progress.
async fn open_accounts(
    client: &WalletClient,
    ids: Arc<Vec<String>>,
    initial: i64,
    concurrency: usize,
    progress: bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let concurrency = concurrency.max(1);
    let batches = ids.len().div_ceil(wallet_client::TRANSFER_BATCH_MAX);
    for lane in 0..concurrency {
        let client = client.clone();
        let ids = ids.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            for batch in (lane..batches).step_by(concurrency) {
                let first = batch * wallet_client::TRANSFER_BATCH_MAX;
                let last = (first + wallet_client::TRANSFER_BATCH_MAX).min(ids.len());
                let accounts: Vec<CreateAccountRequest> = ids[first..last]
                    .iter()
                    .map(|id| CreateAccountRequest {
                        account_id: id.clone(),
                        currency: "USD".into(),
                        credit_limit: 0,
                        opening_balance: initial,
                    })
                    .collect();
                for result in client.create_account_batch(&accounts).await? {
                    result?;
                }
                done.fetch_add((last - first) as u64, Ordering::Relaxed);
            }
            Ok::<(), WalletError>(())
        }));
    }
    let total = ids.len();
    let reporter = tokio::spawn({
        let done = done.clone();
        async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(2));
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if progress {
                    println!(
                        "  funded {} of {total} accounts",
                        done.load(Ordering::Relaxed)
                    );
                }
            }
        }
    });
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(format!("setup failed: {e}")),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    reporter.abort();
    match failure {
        Some(e) => Err(e),
        None => Ok(started.elapsed()),
    }
}

/// What the sampler reads from the cluster's processes.
struct Probe {
    processes: Vec<ClusterProcess>,
}

impl Probe {
    fn cpu_ms(&self) -> Option<u64> {
        if self.processes.is_empty() {
            return None;
        }
        Some(
            self.processes
                .iter()
                .filter_map(|p| procstat::cpu_ms(p.pid))
                .sum(),
        )
    }

    fn disk(&self) -> u64 {
        self.processes
            .iter()
            .filter_map(|p| p.data_dir.as_ref())
            .map(|d| procstat::dir_bytes(d))
            .sum()
    }

    fn rss(&self) -> Vec<(String, u64)> {
        self.processes
            .iter()
            .filter_map(|p| procstat::rss_bytes(p.pid).map(|rss| (p.name.clone(), rss)))
            .collect()
    }
}

/// Runs the benchmark against a router; `cluster_file` names the cluster whose processes are
/// measured (found through `/proc`).
pub async fn run(
    client: WalletClient,
    ring: Ring,
    cluster_file: Option<PathBuf>,
    options: BenchOptions,
) -> Result<BenchReport, String> {
    let ids: Vec<String> = (0..options.accounts)
        .map(|i| format!("{}-{i}", options.prefix))
        .collect();
    if options.pairs.is_card() && (options.batch > 0 || options.chain > 0) {
        return Err("--pairs card has no batch API: leave --batch and --chain out".into());
    }
    if options.chain > 0 && options.batch > 0 {
        return Err("--chain sends one chain per call: leave --batch out".into());
    }
    if options.chain == 1 || options.chain > wallet_client::TRANSFER_BATCH_MAX {
        return Err(format!(
            "--chain takes 2 to {} items",
            wallet_client::TRANSFER_BATCH_MAX
        ));
    }
    let pairing = Arc::new(Pairing::new(&ids, &ring, options.pairs)?);
    let ids = Arc::new(ids);
    if options.setup {
        println!("opening and funding {} accounts ...", ids.len());
        let took = open_accounts(
            &client,
            ids.clone(),
            options.initial_balance,
            options.setup_concurrency,
            options.progress,
        )
        .await?;
        println!(
            "opened {} accounts in {:.1}s ({:.0}/s)",
            ids.len(),
            took.as_secs_f64(),
            ids.len() as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    // Transfer ids are unique across runs that share accounts.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut probe = Probe {
        processes: cluster_file
            .as_deref()
            .map(procstat::discover)
            .unwrap_or_default(),
    };
    if options.in_process && !probe.processes.is_empty() {
        probe.processes.push(ClusterProcess {
            pid: std::process::id(),
            name: "bench+router".into(),
            data_dir: None,
        });
    }
    if probe.processes.is_empty() {
        println!("no cluster process found: CPU, memory and disk are not measured");
    }

    let live = Arc::new(Live::default());
    let cpu_before = probe.cpu_ms();
    let disk_before = probe.disk();
    let started = Instant::now();
    let end = started + Duration::from_secs(options.seconds);
    let mut workers = Vec::new();
    for worker in 0..options.clients {
        let client = client.clone();
        let ids = ids.clone();
        let pairing = pairing.clone();
        let live = live.clone();
        let options_batch = options.batch.min(wallet_client::TRANSFER_BATCH_MAX);
        let chain = options.chain;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::for_worker(worker);
            let mut latency = histogram();
            let mut n = 0u64;
            // Bounded in count as well as in time.
            let batch = options_batch;
            let card = pairing.pairs.is_card();
            while Instant::now() < end && n < 100_000_000 {
                let size = if chain > 0 { chain } else { batch.max(1) };
                let mut items = Vec::with_capacity(size);
                for _ in 0..size {
                    n += 1;
                    let (from, to) = pairing.pair(&mut rng);
                    items.push(TransferRequest {
                        transfer_id: format!("t{run_id}-{worker}-{n}"),
                        from_account_id: ids[from].clone(),
                        to_account_id: ids[to].clone(),
                        amount: 1 + rng.below(100) as i64,
                        issued_at_ms: 0,
                    });
                }
                let t0 = Instant::now();
                let (ok, refused) = if card {
                    // A card payment: authorize a hold, then capture all of it (two Raft
                    // entries on the payer's shard).
                    let t = &items[0];
                    let hold = client
                        .authorize(
                            &t.transfer_id,
                            &t.from_account_id,
                            &t.to_account_id,
                            t.amount,
                            // A hold whose capture failed is released a minute later.
                            60_000,
                        )
                        .await;
                    match hold {
                        Ok(_) => {
                            match client.capture(&t.transfer_id, &t.from_account_id, 0).await {
                                Ok(_) => (1, Vec::new()),
                                Err(e) => (0, vec![e]),
                            }
                        }
                        Err(e) => (0, vec![e]),
                    }
                } else if chain > 0 {
                    let linked: Vec<wallet_client::BatchTransfer> = items
                        .iter()
                        .enumerate()
                        .map(|(i, t)| wallet_client::BatchTransfer {
                            transfer: Some(t.clone()),
                            linked: i + 1 < items.len(),
                        })
                        .collect();
                    match client.transfer_batch_linked(&linked).await {
                        Ok(results) => {
                            let refused: Vec<WalletError> =
                                results.into_iter().filter_map(Result::err).collect();
                            (items.len() - refused.len(), refused)
                        }
                        Err(e) => (0, vec![e]),
                    }
                } else if batch == 0 {
                    let t = &items[0];
                    match client
                        .transfer(
                            &t.transfer_id,
                            &t.from_account_id,
                            &t.to_account_id,
                            t.amount,
                        )
                        .await
                    {
                        Ok(_) => (1, Vec::new()),
                        Err(e) => (0, vec![e]),
                    }
                } else {
                    match client.transfer_batch(&items).await {
                        Ok(results) => {
                            let refused: Vec<WalletError> =
                                results.into_iter().filter_map(Result::err).collect();
                            (items.len() - refused.len(), refused)
                        }
                        Err(e) => (0, vec![e]),
                    }
                };
                let micros = (t0.elapsed().as_micros() as u64).max(1);
                for e in refused {
                    live.refused(e.reason.as_str(), 1);
                }
                if ok > 0 {
                    let _ = latency.record(micros);
                    live.transfers.fetch_add(ok as u64, Ordering::Relaxed);
                    if let Ok(mut interval) = live.interval.lock() {
                        let _ = interval.get_or_insert_with(histogram).record(micros);
                    }
                }
            }
            latency
        }));
    }

    // The sampler: one line and one sample per second.
    let mut samples = Vec::new();
    let mut rss_max: BTreeMap<String, u64> = BTreeMap::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last = 0;
    let terminal = std::io::stdout().is_terminal();
    while Instant::now() < end {
        ticker.tick().await;
        let total = live.transfers.load(Ordering::Relaxed);
        let (p50, p99) = take_p50_p99(&live.interval);
        let mut node_rss = 0;
        for (name, rss) in probe.rss() {
            if name.starts_with("node") {
                node_rss = node_rss.max(rss);
            }
            let max = rss_max.entry(name).or_default();
            *max = (*max).max(rss);
        }
        let disk = probe.disk();
        let sample = Sample {
            second: samples.len() as u64,
            transfers: total - last,
            p99_ms: p99,
            rss_max: node_rss,
            disk,
        };
        last = total;
        if options.progress {
            let line = format!(
                "[{:>4}s/{}s] {:>7} transfers/s  p50 {:>7.2} ms  p99 {:>7.2} ms  node RSS {:>5} MB  data {:>6} MB",
                started.elapsed().as_secs(),
                options.seconds,
                sample.transfers,
                p50,
                sample.p99_ms,
                node_rss / (1024 * 1024),
                disk / (1024 * 1024)
            );
            if terminal {
                print!("\r{line}\x1b[K");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
        }
        samples.push(sample);
    }
    let mut latency = histogram();
    for worker in workers {
        let h = worker.await.map_err(|e| e.to_string())?;
        let _ = latency.add(&h);
    }
    let elapsed = started.elapsed();
    if terminal && options.progress {
        println!();
    }
    let cpu_ms = match (cpu_before, probe.cpu_ms()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let disk_after = probe.disk();
    // A loaded cluster may still be working through calls its clients gave up on: retry.
    let audit_deadline = Instant::now() + Duration::from_secs(120);
    let audit = loop {
        match client.audit().await {
            Ok(report) => break format!("balanced at ts {}", report.ts),
            Err(e) if e.reason.is_retryable() && Instant::now() < audit_deadline => {
                tokio::time::sleep(Duration::from_secs(1)).await
            }
            Err(e) => return Err(format!("the audit after the run failed: {e}")),
        }
    };
    let refusals = live.refusals.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(BenchReport {
        transfers: live.transfers.load(Ordering::Relaxed),
        options,
        elapsed,
        refusals,
        latency,
        cpu_ms,
        rss_max,
        disk_before,
        disk_after,
        samples,
        audit,
    })
}
