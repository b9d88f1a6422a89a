//! The demo payment workload: open accounts, fund them, then let `clients` concurrent clients pay,
//! recharge and transfer for a fixed time, printing a live progress line; afterwards resolve every
//! call whose outcome was unknown (by retrying it with the same id, G4), print a summary table and
//! check conservation: the money in the accounts equals deposits minus withdrawals (G1).
//!
//! Transfers pick their accounts by [`Pairs`]: any two accounts (mostly on different shards, so
//! two-phase), two accounts of one shard, many payers into one merchant account, or card
//! payments (a hold authorized, then captured whole or in part, voided, or left to expire). Cross-shard
//! transfers finish asynchronously on the credit side, so the final check first waits until no
//! account holds a reservation or a pending credit. Meanwhile an audit (a snapshot of every account
//! at one timestamp) runs every second and any mismatch is reported at once and fails the run.
//! The workload is bounded in time and count.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use wallet_client::{Reason, WalletClient, WalletError};
use wallet_proto::topology::Ring;

pub use crate::workload::Pairs;
use crate::workload::{take_p50_p99, Pairing, Rng};

/// Shape of a demo run.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    pub accounts: usize,
    pub clients: usize,
    pub seconds: u64,
    /// Money each account starts with (a deposit), in minor units.
    pub initial_balance: i64,
    /// Hard bound on operations per client.
    pub ops_per_client_max: u64,
    /// How transfers pick their two accounts.
    pub pairs: Pairs,
}

/// Kinds of operations in the mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    SameShardTransfer,
    CrossShardTransfer,
    Deposit,
    Withdraw,
    /// Card payments (`--pairs card`): authorize a hold, then capture all of it, capture half,
    /// void it, or let it expire (50 ms).
    CardCapture,
    CardPartial,
    CardVoid,
    CardExpire,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::SameShardTransfer => "transfer 1 shard",
            OpKind::CrossShardTransfer => "transfer 2 shards",
            OpKind::Deposit => "deposit",
            OpKind::Withdraw => "withdraw",
            OpKind::CardCapture => "hold+capture",
            OpKind::CardPartial => "hold+capture 1/2",
            OpKind::CardVoid => "hold+void",
            OpKind::CardExpire => "hold, expires",
        }
    }

    fn is_transfer(self) -> bool {
        !matches!(self, OpKind::Deposit | OpKind::Withdraw)
    }
}

/// Picks the accounts and the kind of each operation.
struct Picker {
    pairing: Pairing,
}

impl Picker {
    /// (kind, from, to) of the next operation.
    fn pick(&self, rng: &mut Rng) -> (OpKind, usize, usize) {
        let roll = rng.below(100);
        let (from, to) = self.pairing.pair(rng);
        let merchant = self.pairing.pairs == Pairs::Merchant;
        if self.pairing.pairs.is_card() {
            let kind = match roll {
                0..=39 => OpKind::CardCapture,
                40..=64 => OpKind::CardPartial,
                65..=84 => OpKind::CardVoid,
                85..=89 => OpKind::CardExpire,
                90..=94 => OpKind::Deposit,
                _ => OpKind::Withdraw,
            };
            return (kind, from, to);
        }
        let kind = match roll {
            90..=94 if !merchant => OpKind::Deposit,
            95.. if !merchant => OpKind::Withdraw,
            _ if self.pairing.same_shard(from, to) => OpKind::SameShardTransfer,
            _ => OpKind::CrossShardTransfer,
        };
        (kind, from, to)
    }
}

/// What a demo run measured.
#[derive(Debug)]
pub struct DemoReport {
    pub elapsed: Duration,
    pub ok: BTreeMap<OpKind, u64>,
    pub latency: BTreeMap<OpKind, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
    pub expected_total: i128,
    pub actual_total: i128,
    pub unknown_resolved: u64,
    /// Audits taken during the workload: (balanced, unavailable, mismatches with their message).
    pub audits: (u64, u64, Vec<String>),
}

impl DemoReport {
    /// Whether the money adds up.
    pub fn conserved(&self) -> bool {
        self.expected_total == self.actual_total && self.audits.2.is_empty()
    }

    /// Successful operations of a kind per second.
    pub fn rate(&self, kind: OpKind) -> f64 {
        *self.ok.get(&kind).unwrap_or(&0) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<18} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
            "operation", "ok", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        );
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut all = Histogram::<u64>::new(3).expect("valid histogram precision");
        for (kind, h) in &self.latency {
            let _ = all.add(h);
            out.push_str(&format!(
                "{:<18} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                kind.name(),
                self.ok.get(kind).unwrap_or(&0),
                self.rate(*kind),
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            ));
        }
        let total: u64 = self.ok.values().sum();
        out.push_str(&format!(
            "{:<18} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
            "all",
            total,
            total as f64 / self.elapsed.as_secs_f64().max(1e-9),
            ms(&all, 0.5),
            ms(&all, 0.9),
            ms(&all, 0.99),
            all.max() as f64 / 1000.0
        ));
        if self.errors.is_empty() {
            out.push_str("refusals: none\n");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            out.push_str(&format!("refusals: {}\n", list.join(" ")));
        }
        out.push_str(&format!(
            "unknown outcomes resolved by retrying the same id: {}\n",
            self.unknown_resolved
        ));
        let (balanced, unavailable, mismatches) = &self.audits;
        out.push_str(&format!(
            "audits during the run (snapshot of every account at one timestamp): {balanced} \
             balanced, {unavailable} unavailable, {} MISMATCHED\n",
            mismatches.len()
        ));
        for m in mismatches {
            out.push_str(&format!("  MISMATCH: {m}\n"));
        }
        out.push_str(&format!(
            "conservation: sum of balances {} vs deposits - withdrawals {} -> {}\n",
            self.actual_total,
            self.expected_total,
            if self.conserved() { "OK" } else { "MISMATCH" }
        ));
        out
    }
}

#[derive(Default)]
struct Live {
    ops: AtomicU64,
    interval: Mutex<Option<Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// A call whose outcome the client could not learn (it ran out of retries).
struct Unknown {
    kind: OpKind,
    id: String,
    from: String,
    to: String,
    amount: i64,
}

async fn call(client: &WalletClient, u: &Unknown) -> Result<(), WalletError> {
    match u.kind {
        OpKind::SameShardTransfer | OpKind::CrossShardTransfer => client
            .transfer(&u.id, &u.from, &u.to, u.amount)
            .await
            .map(|_| ()),
        OpKind::Deposit => client.deposit(&u.id, &u.from, u.amount).await.map(|_| ()),
        OpKind::Withdraw => client.withdraw(&u.id, &u.from, u.amount).await.map(|_| ()),
        OpKind::CardExpire => client
            .authorize(&u.id, &u.from, &u.to, u.amount, 50)
            .await
            .map(|_| ()),
        OpKind::CardCapture | OpKind::CardPartial | OpKind::CardVoid => {
            // Sent again after an unknown outcome, each step answers its first outcome (G4).
            // A minute: a hold whose capture or void failed is released soon after the run.
            client
                .authorize(&u.id, &u.from, &u.to, u.amount, 60_000)
                .await?;
            match u.kind {
                OpKind::CardVoid => client.void(&u.id, &u.from).await.map(|_| ()),
                OpKind::CardPartial => client
                    .capture(&u.id, &u.from, (u.amount / 2).max(1))
                    .await
                    .map(|_| ()),
                _ => client.capture(&u.id, &u.from, 0).await.map(|_| ()),
            }
        }
    }
}

fn signed(kind: OpKind, amount: i64) -> i128 {
    match kind {
        OpKind::Deposit => i128::from(amount),
        OpKind::Withdraw => -i128::from(amount),
        _ => 0,
    }
}

/// Runs the demo against a router; `ring` tells which shard holds an account.
pub async fn run(
    client: WalletClient,
    ring: Ring,
    options: DemoOptions,
) -> Result<DemoReport, String> {
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ids: Vec<String> = (0..options.accounts)
        .map(|i| format!("demo{run_id}-{i:05}"))
        .collect();
    println!("opening and funding {} accounts ...", ids.len());
    let ids = Arc::new(ids);
    let mut setup = Vec::new();
    for chunk in 0..options.clients.max(1) {
        let client = client.clone();
        let ids = ids.clone();
        let clients = options.clients.max(1);
        let initial = options.initial_balance;
        setup.push(tokio::spawn(async move {
            for i in (chunk..ids.len()).step_by(clients) {
                client.create_account(&ids[i], "USD", 0).await?;
                client
                    .deposit(&format!("fund-{}", ids[i]), &ids[i], initial)
                    .await?;
            }
            Ok::<(), WalletError>(())
        }));
    }
    for task in setup {
        task.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("setup failed: {e}"))?;
    }
    let picker = Arc::new(Picker {
        pairing: Pairing::new(&ids, &ring, options.pairs)?,
    });

    println!(
        "running {} clients for {}s, transfers between {:?} accounts",
        options.clients, options.seconds, options.pairs
    );
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let end = started + Duration::from_secs(options.seconds);
    let progress = tokio::spawn(progress_printer(live.clone(), started, end));
    let auditor = tokio::spawn(audit_every_second(client.clone(), end));
    let mut workers = Vec::new();
    for worker in 0..options.clients {
        let client = client.clone();
        let ids = ids.clone();
        let picker = picker.clone();
        let live = live.clone();
        let max_ops = options.ops_per_client_max;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::for_worker(worker);
            let mut ok: BTreeMap<OpKind, u64> = BTreeMap::new();
            let mut latency: BTreeMap<OpKind, Histogram<u64>> = BTreeMap::new();
            let mut net: i128 = 0;
            let mut unknown = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end && n < max_ops {
                n += 1;
                let (kind, from, to) = picker.pick(&mut rng);
                let op = Unknown {
                    kind,
                    id: format!("w{worker}-{n}"),
                    from: ids[from].clone(),
                    to: ids[to].clone(),
                    amount: 1 + rng.below(if kind.is_transfer() { 100 } else { 1000 }) as i64,
                };
                let t0 = Instant::now();
                let result = call(&client, &op).await;
                let micros = t0.elapsed().as_micros() as u64;
                match result {
                    Ok(()) => {
                        *ok.entry(kind).or_default() += 1;
                        net += signed(kind, op.amount);
                        let h = latency
                            .entry(kind)
                            .or_insert_with(|| Histogram::new(3).expect("valid precision"));
                        let _ = h.record(micros.max(1));
                        live.ops.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut interval) = live.interval.lock() {
                            let h = interval
                                .get_or_insert_with(|| Histogram::new(3).expect("valid precision"));
                            let _ = h.record(micros.max(1));
                        }
                    }
                    Err(e) if e.reason.is_retryable() => unknown.push(op),
                    Err(e) => {
                        if let Ok(mut errors) = live.errors.lock() {
                            *errors.entry(e.reason.as_str().to_string()).or_default() += 1;
                        }
                    }
                }
            }
            (ok, latency, net, unknown)
        }));
    }
    let mut report = DemoReport {
        elapsed: Duration::ZERO,
        ok: BTreeMap::new(),
        latency: BTreeMap::new(),
        errors: BTreeMap::new(),
        expected_total: i128::from(options.initial_balance) * ids.len() as i128,
        actual_total: 0,
        unknown_resolved: 0,
        audits: (0, 0, Vec::new()),
    };
    let mut unknown = Vec::new();
    for worker in workers {
        let (ok, latency, net, more) = worker.await.map_err(|e| e.to_string())?;
        for (k, v) in ok {
            *report.ok.entry(k).or_default() += v;
        }
        for (k, h) in latency {
            let _ = report
                .latency
                .entry(k)
                .or_insert_with(|| Histogram::new(3).expect("valid precision"))
                .add(&h);
        }
        report.expected_total += net;
        unknown.extend(more);
    }
    report.elapsed = started.elapsed();
    progress.abort();
    report.audits = auditor.await.map_err(|e| e.to_string())?;
    println!();
    // Calls that ran out of retries may or may not have applied: ask again with the same id.
    for op in &unknown {
        let mut attempts = 0;
        loop {
            match call(&client, op).await {
                Ok(()) => {
                    report.expected_total += signed(op.kind, op.amount);
                    break;
                }
                Err(e) if e.reason.is_retryable() && attempts < 10 => attempts += 1,
                Err(e) if e.reason.is_retryable() => {
                    return Err(format!("could not resolve request {}: {e}", op.id))
                }
                Err(_) => break,
            }
        }
        report.unknown_resolved += 1;
    }
    report.errors = live.errors.lock().map(|e| e.clone()).unwrap_or_default();
    report.actual_total = settled_total(&client, &ids).await?;
    Ok(report)
}

/// Sum of balances once no account holds a reservation or a pending credit (cross-shard
/// transfers whose credit is still on its way), waiting up to [`SETTLE_TIMEOUT`].
async fn settled_total(client: &WalletClient, ids: &[String]) -> Result<i128, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut total = 0i128;
        let mut open = 0;
        for id in ids {
            let account = client
                .get_account(id)
                .await
                .map_err(|e| format!("audit read of {id}: {e}"))?;
            if account.balance - account.reserved < account.floor {
                return Err(format!("account {id} is below its floor: {account:?}"));
            }
            if account.reserved != 0 || account.pending_credit != 0 {
                open += 1;
            }
            total += i128::from(account.balance);
        }
        if open == 0 {
            return Ok(total);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{open} accounts still hold reservations or pending credits after {SETTLE_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Takes an audit every second until `end`; a mismatch is printed at once, loudly.
async fn audit_every_second(client: WalletClient, end: Instant) -> (u64, u64, Vec<String>) {
    let (mut balanced, mut unavailable, mut mismatches) = (0, 0, Vec::new());
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < end {
        ticker.tick().await;
        match client.audit().await {
            Ok(_) => balanced += 1,
            Err(e) if e.reason == Reason::AuditMismatch => {
                eprintln!("\n!!! AUDIT MISMATCH: {e}");
                mismatches.push(e.to_string());
            }
            Err(_) => unavailable += 1,
        }
    }
    (balanced, unavailable, mismatches)
}

/// How long the final check waits for cross-shard transfers to settle.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

async fn progress_printer(live: Arc<Live>, started: Instant, end: Instant) {
    let terminal = std::io::stdout().is_terminal();
    let mut last_ops = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let ops = live.ops.load(Ordering::Relaxed);
        let (p50, p99) = take_p50_p99(&live.interval);
        let errors = live
            .errors
            .lock()
            .map(|e| {
                e.iter()
                    .map(|(r, n)| format!("{r}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let line = format!(
            "[{:>4}s/{}s] {:>7} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  refusals: {}",
            started.elapsed().as_secs(),
            (end - started).as_secs(),
            ops - last_ops,
            p50,
            p99,
            if errors.is_empty() {
                "none".into()
            } else {
                errors
            }
        );
        last_ops = ops;
        if terminal {
            print!("\r{line}\x1b[K");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
    }
}
