//! `wallet-jepsen run`: a workload against a cluster of real node and router processes (local or
//! in containers, see [`crate::backend`]), with seeded faults, a recorded history and the
//! checker's verdict.
//!
//! - Workload *bank*: `accounts` accounts funded with 1000 each; `concurrency` processes transfer
//!   random amounts between random accounts and read single balances; one more process audits
//!   every second. An operation whose outcome is unknown (timeout, unavailable) completes as `info`
//!   and its process is replaced by a new one, as in Jepsen. *exactly-once*: the same, but an
//!   unknown transfer is retried with the same id through a second router until its outcome is
//!   known. *hot-account*: every transfer pays 1 into the first account. *holds*: card payments
//!   between any two accounts (within a shard or across shards): a hold with an expiry of 0.3–3 s, captured whole or in part, voided, or left
//!   to expire (README § Holds); the checker also checks every hold's capture. *payments*: holds
//!   mixed with linked chains of 2–5 transfers across shards (README § Linked chains), each
//!   checked all or nothing.
//! - Faults come from [`crate::nemesis`] while the workload runs.
//! - After the faults heal: every process restarted, transfers settled, then one final read of
//!   every account's balance and whole history. Everything goes to
//!   `store/<workload>/<time>/`: `history.edn`, `history.jsonl`, `initial-total`, `nemesis.edn`
//!   (+ `.jsonl`), `results.edn`, `latency-raw.png`, `rate.png`, and the cluster's logs under
//!   `cluster/logs/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wallet_client::{ClientOptions, Reason, WalletClient, WalletError};
use wallet_cluster::playground::wait_ready;

use crate::backend::{Backend, Docker, Local};
use crate::nemesis::{self, Nemesis, Rng};
use crate::plots;

use crate::checker::{self, Report};
use crate::history::{Change, FinalAccount, History, Kind, Op, Value};

/// Where the cluster runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Local,
    Docker,
}

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Transfers between random accounts, single-balance reads, an audit every second.
    Bank,
    /// Like bank, but a transfer whose outcome is unknown is retried with the same id through the
    /// other router until it is known: it must apply exactly once.
    ExactlyOnce,
    /// Many payers into one merchant account (the first account).
    HotAccount,
    /// Card payments: holds between any two accounts (on one shard or two), authorized with a
    /// short expiry (0.3–3 s), then captured whole or in part, voided, or left to expire; reads;
    /// audits.
    Holds,
    /// Holds (half the processes, as in `holds`) mixed with linked chains of 2–5 transfers
    /// between any accounts (the other half), some of which cannot be paid and fail whole.
    Payments,
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub backend: BackendKind,
    pub workload: Workload,
    pub time: Duration,
    pub concurrency: usize,
    pub accounts: usize,
    pub nemeses: Vec<Nemesis>,
    /// Nodes in the cluster (as many shards, 3 replicas each).
    pub nodes: u64,
    pub seed: u64,
    pub store: PathBuf,
    /// Executable with `node` / `router` subcommands (this binary).
    pub exe: PathBuf,
    /// Credit limits of i64::MAX, funds of i64::MAX / 2, amounts up to i64::MAX.
    pub extremes: bool,
}

const FUNDS: i64 = 1000;

/// The history being recorded, shared by the processes.
struct Recorder {
    started: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn record(&self, process: u64, kind: Kind, value: Value) {
        let time = self.started.elapsed().as_nanos() as u64;
        if let Ok(mut ops) = self.ops.lock() {
            let index = ops.len() as u64;
            ops.push(Op {
                index,
                process,
                time,
                kind,
                value,
            });
        }
    }
}

/// fail when the store certainly did not apply it, info when it may have.
fn completion(error: &WalletError) -> Kind {
    if error.reason.is_retryable() || error.reason == Reason::Internal {
        Kind::Info
    } else {
        Kind::Fail
    }
}

/// Runs the test; returns the directory of its store and the checker's report.
pub async fn run(options: RunOptions) -> Result<(PathBuf, Report), String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = match options.workload {
        Workload::Bank => "bank",
        Workload::ExactlyOnce => "exactly-once",
        Workload::HotAccount => "hot-account",
        Workload::Holds => "holds",
        Workload::Payments => "payments",
    };
    let dir = options.store.join(name).join(stamp.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if options.backend == BackendKind::Local && options.nemeses.contains(&Nemesis::Partition) {
        return Err("the partition nemesis needs --backend docker".into());
    }
    let mut cluster: Box<dyn Backend> = match options.backend {
        BackendKind::Local => Box::new(Local::start(
            &dir.join("cluster"),
            &options.exe,
            options.nodes,
        )?),
        BackendKind::Docker => Box::new(Docker::start(
            &dir.join("cluster"),
            "wallet:dev",
            options.nodes,
        )?),
    };
    let address = cluster.router_address();
    let admin_tls = cluster.admin_tls();
    wait_ready(
        cluster.topology(),
        admin_tls.as_ref(),
        Some(&address),
        Duration::from_secs(60),
    )
    .await?;
    let impatient = ClientOptions {
        retry_budget: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(3),
        tls: cluster.client_tls(),
    };
    let client = WalletClient::with_options(&[address.as_str()], impatient.clone())
        .map_err(|e| e.to_string())?;
    // A second router, which the router nemesis leaves alone: where exactly-once retries go.
    let second_address = cluster.start_second_router()?;
    let second = WalletClient::with_options(&[second_address.as_str()], impatient)
        .map_err(|e| e.to_string())?;
    let patient = WalletClient::with_options(
        &[address.as_str()],
        ClientOptions {
            tls: cluster.client_tls(),
            ..ClientOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let accounts: Vec<String> = (0..options.accounts).map(|i| format!("bank-{i}")).collect();
    let (credit_limit, funds) = if options.extremes {
        (i64::MAX, i64::MAX / 2)
    } else {
        (0, FUNDS)
    };
    for id in &accounts {
        patient
            .create_account(id, "USD", credit_limit)
            .await
            .map_err(|e| e.to_string())?;
        patient
            .deposit(&format!("fund-{id}"), id, funds)
            .await
            .map_err(|e| e.to_string())?;
    }
    let initial_total = i128::from(funds) * accounts.len() as i128;
    let floor = -i128::from(credit_limit);
    println!(
        "{:?}: {} accounts, {} processes, {:?}, nemeses {:?}, seed {}, store {}",
        options.workload,
        accounts.len(),
        options.concurrency,
        options.time,
        options.nemeses,
        options.seed,
        dir.display()
    );

    let recorder = Arc::new(Recorder {
        started: Instant::now(),
        ops: Mutex::new(Vec::new()),
    });
    let end = Instant::now() + options.time;
    let mut workers = Vec::new();
    let pairs = all_pairs(&accounts);
    for worker in 0..options.concurrency {
        if options.workload == Workload::Payments && worker % 2 == 1 {
            workers.push(tokio::spawn(chain_process(
                client.clone(),
                accounts.clone(),
                recorder.clone(),
                worker as u64,
                options.concurrency as u64,
                options.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                end,
            )));
            continue;
        }
        if matches!(options.workload, Workload::Holds | Workload::Payments) {
            workers.push(tokio::spawn(holds_process(
                client.clone(),
                pairs.clone(),
                recorder.clone(),
                worker as u64,
                options.concurrency as u64,
                options.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                end,
            )));
            continue;
        }
        workers.push(tokio::spawn(bank_process(
            [client.clone(), second.clone()],
            options.workload,
            accounts.clone(),
            recorder.clone(),
            worker as u64,
            options.concurrency as u64,
            options.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            end,
            options.extremes,
        )));
    }
    workers.push(tokio::spawn(audit_process(
        client.clone(),
        recorder.clone(),
        10_000,
        end,
    )));
    let events = nemesis::run(
        cluster.as_mut(),
        &options.nemeses,
        options.seed,
        recorder.started,
        end,
    )
    .await;
    for worker in workers {
        let _ = worker.await;
    }
    // Heal everything, then read the final state with a patient client. A step that fails (a
    // container Docker is restarting, say) is reported, not fatal: the final read judges the rest.
    let heal = |what: &str, result: Result<(), String>| {
        if let Err(e) = result {
            println!("heal: {what}: {e}");
        }
    };
    for id in cluster.node_ids() {
        cluster.pause_node(id, false);
        heal("start node", cluster.start_node(id));
        heal("clock", cluster.skew_clock(id, 0));
    }
    heal("network", cluster.heal_network());
    heal("router", cluster.start_router());
    // Invoked now: the final read's latency is how long the cluster took to serve again.
    recorder.record(0, Kind::Invoke, Value::Final { accounts: None });
    let final_value = final_read(cluster.as_ref(), &patient, &accounts).await;
    let final_kind = if final_value.is_some() {
        Kind::Ok
    } else {
        Kind::Info
    };
    recorder.record(
        0,
        final_kind,
        Value::Final {
            accounts: final_value,
        },
    );
    let history = History {
        ops: recorder.ops.lock().map(|o| o.clone()).unwrap_or_default(),
    };
    history.save(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("initial-total"), initial_total.to_string())
        .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("floor"), floor.to_string()).map_err(|e| e.to_string())?;
    nemesis::save(&dir, &events).map_err(|e| e.to_string())?;
    cluster.stop_all();
    // Judge what was stored, so `wallet-jepsen check DIR` gives the same verdict later.
    let stored = History::load(&dir)?;
    let report = checker::check(&stored, initial_total, floor);
    std::fs::write(dir.join("results.edn"), report.to_edn()).map_err(|e| e.to_string())?;
    match plots::draw(&dir, &stored, &events) {
        Ok(paths) => println!("pictures: {}", paths.join(", ")),
        Err(e) => println!("pictures skipped: {e}"),
    }
    Ok((dir, report))
}

#[allow(clippy::too_many_arguments)]
async fn bank_process(
    routers: [WalletClient; 2],
    workload: Workload,
    accounts: Vec<String>,
    recorder: Arc<Recorder>,
    first_process: u64,
    concurrency: u64,
    seed: u64,
    end: Instant,
    extremes: bool,
) {
    let mut rng = Rng(seed | 1);
    let mut process = first_process;
    let mut n = 0u64;
    while Instant::now() < end && n < 1_000_000 {
        n += 1;
        let n_accounts = accounts.len() as u64;
        let client = &routers[0];
        if rng.below(10) < 7 {
            let (from, to) = if workload == Workload::HotAccount {
                (1 + rng.below(n_accounts - 1) as usize, 0)
            } else {
                let from = rng.below(n_accounts) as usize;
                (
                    from,
                    (from + 1 + rng.below(n_accounts - 1) as usize) % accounts.len(),
                )
            };
            let value = Value::Transfer {
                id: format!("p{process}-{n}"),
                from: accounts[from].clone(),
                to: accounts[to].clone(),
                // Payers of the hot account pay 1 at a time so they last the whole run.
                amount: if workload == Workload::HotAccount {
                    1
                } else if extremes {
                    // Small, about half of i64::MAX, or near i64::MAX.
                    match rng.below(3) {
                        0 => 1 + rng.below(50) as i64,
                        1 => i64::MAX / 2 - rng.below(1000) as i64,
                        _ => i64::MAX - rng.below(1000) as i64,
                    }
                } else {
                    1 + rng.below(50) as i64
                },
            };
            recorder.record(process, Kind::Invoke, value.clone());
            let Value::Transfer {
                id,
                from,
                to,
                amount,
            } = &value
            else {
                unreachable!()
            };
            let mut attempt = 0usize;
            loop {
                let router = &routers[attempt % 2];
                let kind = match router.transfer(id, from, to, *amount).await {
                    Ok(_) => Kind::Ok,
                    Err(e) => completion(&e),
                };
                recorder.record(process, kind, value.clone());
                if kind != Kind::Info {
                    break;
                }
                process += concurrency;
                attempt += 1;
                let retry = workload == Workload::ExactlyOnce
                    && Instant::now() < end + Duration::from_secs(30);
                if !retry {
                    break;
                }
                // The same id again, as a new process, through the other router.
                recorder.record(process, Kind::Invoke, value.clone());
            }
        } else {
            let account = accounts[rng.below(n_accounts) as usize].clone();
            recorder.record(
                process,
                Kind::Invoke,
                Value::Read {
                    account: account.clone(),
                    balance: None,
                },
            );
            match client.get_account(&account).await {
                Ok(a) => recorder.record(
                    process,
                    Kind::Ok,
                    Value::Read {
                        account,
                        balance: Some(a.balance),
                    },
                ),
                Err(e) => recorder.record(
                    process,
                    completion(&e),
                    Value::Read {
                        account,
                        balance: None,
                    },
                ),
            }
        }
    }
}

/// A chains process: a linked chain of 2–5 transfers between random accounts (on any shards),
/// one in eight with a transfer too large to pay so that the whole chain fails; an unknown
/// outcome replaces the process. The checker holds every chain to all or nothing.
async fn chain_process(
    client: WalletClient,
    accounts: Vec<String>,
    recorder: Arc<Recorder>,
    first_process: u64,
    concurrency: u64,
    seed: u64,
    end: Instant,
) {
    let mut rng = Rng(seed | 1);
    let mut process = first_process;
    let mut n = 0u64;
    let n_accounts = accounts.len() as u64;
    if n_accounts < 2 {
        return;
    }
    while Instant::now() < end && n < 1_000_000 {
        n += 1;
        let len = 2 + rng.below(4) as usize;
        let doomed = rng.below(8) == 0;
        let legs: Vec<crate::history::Leg> = (0..len)
            .map(|k| {
                let from = rng.below(n_accounts) as usize;
                let to = (from + 1 + rng.below(n_accounts - 1) as usize) % accounts.len();
                crate::history::Leg {
                    id: format!("c{process}-{n}-{k}"),
                    from: accounts[from].clone(),
                    to: accounts[to].clone(),
                    amount: if doomed && k + 1 == len {
                        FUNDS * 1_000
                    } else {
                        1 + rng.below(30) as i64
                    },
                }
            })
            .collect();
        let items: Vec<wallet_client::BatchTransfer> = legs
            .iter()
            .enumerate()
            .map(|(k, l)| wallet_client::BatchTransfer {
                transfer: Some(wallet_client::TransferRequest {
                    transfer_id: l.id.clone(),
                    from_account_id: l.from.clone(),
                    to_account_id: l.to.clone(),
                    amount: l.amount,
                    issued_at_ms: 0,
                }),
                linked: k + 1 < legs.len(),
            })
            .collect();
        let value = Value::Chain { legs };
        recorder.record(process, Kind::Invoke, value.clone());
        let kind = match client.transfer_batch_linked(&items).await {
            Ok(results) if results.iter().all(Result::is_ok) => Kind::Ok,
            Ok(results) => {
                let errors: Vec<&WalletError> =
                    results.iter().filter_map(|r| r.as_ref().err()).collect();
                if errors.len() == results.len() {
                    // A decided abort fails every item; an unknown outcome leaves it open.
                    errors
                        .iter()
                        .map(|e| completion(e))
                        .max_by_key(|k| *k == Kind::Info)
                        .unwrap_or(Kind::Info)
                } else {
                    // Some items committed and others not: record it as unknown, and let the
                    // checker judge the final state (a partial chain is flagged there).
                    Kind::Info
                }
            }
            Err(e) => completion(&e),
        };
        recorder.record(process, kind, value);
        if kind == Kind::Info {
            process += concurrency;
        }
    }
}

/// Every (from, to) of two distinct accounts: holds within a shard and across shards.
fn all_pairs(accounts: &[String]) -> Arc<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for a in accounts {
        for b in accounts {
            if a != b {
                pairs.push((a.clone(), b.clone()));
            }
        }
    }
    Arc::new(pairs)
}

/// A holds process: authorize a hold with a short expiry, then (after a pause that sometimes
/// outlasts it) capture all or part of it, void it, or leave it to expire; now and then a read.
/// An unknown outcome ends the flow and replaces the process, as in the bank workload.
async fn holds_process(
    client: WalletClient,
    pairs: Arc<Vec<(String, String)>>,
    recorder: Arc<Recorder>,
    first_process: u64,
    concurrency: u64,
    seed: u64,
    end: Instant,
) {
    let mut rng = Rng(seed | 1);
    let mut process = first_process;
    let mut n = 0u64;
    if pairs.is_empty() {
        return;
    }
    while Instant::now() < end && n < 1_000_000 {
        n += 1;
        let (from, to) = pairs[rng.below(pairs.len() as u64) as usize].clone();
        if rng.below(10) < 2 {
            let read = |balance| Value::Read {
                account: from.clone(),
                balance,
            };
            recorder.record(process, Kind::Invoke, read(None));
            let (kind, balance) = match client.get_account(&from).await {
                Ok(a) => (Kind::Ok, Some(a.balance)),
                Err(e) => (completion(&e), None),
            };
            recorder.record(process, kind, read(balance));
            if kind == Kind::Info {
                process += concurrency;
            }
            continue;
        }
        let id = format!("h{process}-{n}");
        let amount = 1 + rng.below(300) as i64;
        let expires_in_ms = 300 + rng.below(2700) as i64;
        let authorize = |expires_at_ts| Value::Authorize {
            id: id.clone(),
            from: from.clone(),
            to: to.clone(),
            amount,
            expires_in_ms,
            expires_at_ts,
        };
        recorder.record(process, Kind::Invoke, authorize(None));
        let (kind, expires_at_ts) = match client
            .authorize(&id, &from, &to, amount, expires_in_ms)
            .await
        {
            Ok(hold) => (Kind::Ok, Some(hold.expires_at_ts)),
            Err(e) => (completion(&e), None),
        };
        recorder.record(process, kind, authorize(expires_at_ts));
        if kind != Kind::Ok {
            if kind == Kind::Info {
                process += concurrency;
            }
            continue;
        }
        // Sometimes long enough for the hold to expire first.
        tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
        let hold = (id.as_str(), from.as_str(), to.as_str());
        let roll = rng.below(100);
        if roll >= 85 {
            continue; // left to expire
        }
        if roll >= 65 {
            let voided = void_step(&client, &recorder, &mut process, concurrency, hold).await;
            if voided && rng.below(3) == 0 {
                // A capture after the void: it must be refused.
                capture_step(&client, &recorder, &mut process, concurrency, hold, 0).await;
            }
            continue;
        }
        let asked = if roll < 40 {
            0
        } else {
            1 + rng.below(amount as u64) as i64
        };
        let captured =
            capture_step(&client, &recorder, &mut process, concurrency, hold, asked).await;
        if let Some(captured) = captured {
            // Now and then a second decision: another capture, or a void; both must be refused.
            match rng.below(6) {
                0 => {
                    let again = captured + 1;
                    capture_step(&client, &recorder, &mut process, concurrency, hold, again).await;
                }
                1 => {
                    void_step(&client, &recorder, &mut process, concurrency, hold).await;
                }
                _ => {}
            }
        }
    }
}

/// One capture of `hold` (id, payer, payee) asking `asked` (0: all), recorded; what it moved, if
/// acknowledged. An unknown outcome replaces the process.
async fn capture_step(
    client: &WalletClient,
    recorder: &Recorder,
    process: &mut u64,
    concurrency: u64,
    (id, from, to): (&str, &str, &str),
    asked: i64,
) -> Option<i64> {
    let capture = |captured, decided_ts| Value::Capture {
        id: id.into(),
        from: from.into(),
        to: to.into(),
        amount: asked,
        captured,
        decided_ts,
    };
    recorder.record(*process, Kind::Invoke, capture(None, None));
    match client.capture(id, from, asked).await {
        Ok(hold) => {
            let done = capture(Some(hold.captured), Some(hold.decided_ts));
            recorder.record(*process, Kind::Ok, done);
            Some(hold.captured)
        }
        Err(e) => {
            let kind = completion(&e);
            recorder.record(*process, kind, capture(None, None));
            if kind == Kind::Info {
                *process += concurrency;
            }
            None
        }
    }
}

/// One void of `hold`, recorded; whether it was acknowledged.
async fn void_step(
    client: &WalletClient,
    recorder: &Recorder,
    process: &mut u64,
    concurrency: u64,
    (id, from, _): (&str, &str, &str),
) -> bool {
    let void = Value::Void {
        id: id.into(),
        from: from.into(),
    };
    recorder.record(*process, Kind::Invoke, void.clone());
    let kind = match client.void(id, from).await {
        Ok(_) => Kind::Ok,
        Err(e) => completion(&e),
    };
    recorder.record(*process, kind, void);
    if kind == Kind::Info {
        *process += concurrency;
    }
    kind == Kind::Ok
}

async fn audit_process(client: WalletClient, recorder: Arc<Recorder>, process: u64, end: Instant) {
    while Instant::now() < end {
        recorder.record(process, Kind::Invoke, Value::Audit { ts: 0, total: None });
        match client.audit().await {
            Ok(report) => {
                let total = report
                    .totals
                    .iter()
                    .filter_map(|t| t.balances.parse::<i128>().ok())
                    .sum();
                recorder.record(
                    process,
                    Kind::Ok,
                    Value::Audit {
                        ts: report.ts,
                        total: Some(total),
                    },
                );
            }
            Err(e) => recorder.record(process, completion(&e), Value::Audit { ts: 0, total: None }),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// After healing: every account's balance and whole history, once no transfer is undecided.
async fn final_read(
    cluster: &dyn Backend,
    client: &WalletClient,
    accounts: &[String],
) -> Option<BTreeMap<String, FinalAccount>> {
    let router = cluster.router_address();
    wait_ready(
        cluster.topology(),
        cluster.admin_tls().as_ref(),
        Some(&router),
        Duration::from_secs(60),
    )
    .await
    .ok()?;
    // Transfers decided, holds captured, voided or expired: what is still held after a minute is
    // read as it is, and the checker calls it `unreleased`.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut settled = true;
        for id in accounts {
            let a = client.get_account(id).await.ok()?;
            settled &= a.reserved == 0 && a.pending_credit == 0;
        }
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut out = BTreeMap::new();
    for id in accounts {
        let account = client.get_account(id).await.ok()?;
        let balance = account.balance;
        let mut changes = Vec::new();
        let mut cursor = 0;
        loop {
            let page = client.list_transfers(id, 1000, cursor).await.ok()?;
            changes.extend(page.entries.iter().map(|e| Change {
                seq: e.seq,
                id: e.request_id.clone(),
                delta: e.delta,
                balance_after: e.balance_after,
            }));
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
        changes.reverse();
        out.insert(
            id.clone(),
            FinalAccount {
                balance,
                changes,
                reserved: account.reserved,
                pending_credit: account.pending_credit,
            },
        );
    }
    Some(out)
}
