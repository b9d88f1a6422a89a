//! Helpers shared by the multi-process tests: a 3-node cluster in a temp dir, clients, workloads.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wallet_client::{ClientOptions, WalletClient};
use wallet_cluster::playground::{tail, Playground, PlaygroundOptions};

/// Held by each test for its whole run: one cluster at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wallet-cluster"))
}

/// The `wallet` CLI, built next to wallet-cluster by `cargo test --workspace`.
pub fn wallet_cli() -> PathBuf {
    let path = exe().with_file_name("wallet");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (README)",
        path.display()
    );
    path
}

pub struct Cluster {
    pub playground: Playground,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(shards: u64, compact_every: u64) -> Cluster {
        Cluster::start_with(shards, compact_every, |_| {}).await
    }

    /// A cluster whose cluster file `edit` changed before any process started.
    pub async fn start_with(
        shards: u64,
        compact_every: u64,
        edit: impl FnOnce(&mut wallet_proto::topology::Topology),
    ) -> Cluster {
        Cluster::start_full(shards, compact_every, true, edit).await
    }

    /// A cluster that runs TLS, as `wallet-cluster up` does: certificates in `DIR/certs`.
    pub async fn start_tls(shards: u64) -> Cluster {
        Cluster::start_full(shards, 10_000, false, |_| {}).await
    }

    async fn start_full(
        shards: u64,
        compact_every: u64,
        insecure: bool,
        edit: impl FnOnce(&mut wallet_proto::topology::Topology),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = PlaygroundOptions {
            dir: dir.path().to_path_buf(),
            nodes: 3,
            shards,
            replicas: 3,
            port: 0,
            compact_every,
            resolve_after_ms: 500,
            request_retention_secs: wallet_proto::topology::REQUEST_RETENTION_SECS_DEFAULT,
            exe: exe(),
            insecure,
        };
        let mut playground = Playground::create(&options).expect("playground");
        edit(&mut playground.topology);
        std::fs::write(
            dir.path().join("cluster.toml"),
            playground.topology.to_toml(),
        )
        .expect("cluster file");
        playground.start_all().expect("start");
        let cluster = Cluster {
            playground,
            _dir: dir,
        };
        cluster.ready().await;
        cluster
    }

    pub async fn ready(&self) -> BTreeMap<u64, u64> {
        match self.playground.wait_ready(Duration::from_secs(30)).await {
            Ok(leaders) => leaders,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["node-1", "node-2", "node-3", "router"] {
            let path = self.playground.dir.join("logs").join(format!("{name}.log"));
            out.push_str(&format!("--- {name}\n{}\n", tail(&path, 15)));
        }
        out
    }

    pub fn client(&self) -> WalletClient {
        self.client_with(Duration::from_secs(10))
    }

    /// A client whose every attempt may take `attempt_timeout` (a full batch in a debug build
    /// on a loaded 2-core machine takes several seconds).
    pub fn client_with(&self, attempt_timeout: Duration) -> WalletClient {
        WalletClient::with_options(
            &[self.playground.router_address.as_str()],
            ClientOptions {
                retry_budget: attempt_timeout * 2,
                attempt_timeout,
                tls: self.playground.client_tls(),
            },
        )
        .expect("client")
    }

    /// Commit index of every shard, from its leader.
    pub async fn commits(&self) -> BTreeMap<u64, u64> {
        let mut commits = BTreeMap::new();
        for id in self.playground.node_ids() {
            if let Some(status) = self.playground.status(id).await {
                for r in status.replicas.iter().filter(|r| r.is_leader) {
                    commits.insert(r.shard_id, r.commit_index);
                }
            }
        }
        commits
    }

    /// Waits until `node_id` applied everything the leaders had committed when asked (after every
    /// shard has a leader again: a shard in an election reports no commit index).
    pub async fn caught_up(&self, node_id: u64) {
        self.ready().await;
        let commits = self.commits().await;
        // Every data shard and the meta group.
        assert_eq!(commits.len(), self.playground.topology.shards.len() + 1);
        for (shard, commit) in commits {
            if let Err(e) = self
                .playground
                .wait_applied(node_id, shard, commit, Duration::from_secs(30))
                .await
            {
                panic!("{e}\n{}", self.logs());
            }
        }
    }
}

pub async fn open_accounts(client: &WalletClient, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("acct-{i:03}")).collect();
    for id in &ids {
        client.create_account(id, "USD", 0).await.expect("create");
    }
    ids
}

/// Acknowledged money per account from a deposit workload, after resolving unknown outcomes.
#[derive(Default)]
pub struct Acked {
    pub per_account: BTreeMap<String, i64>,
    pub count: u64,
    pub after: Option<(Instant, u64)>,
}

/// `writers` concurrent clients deposit into random accounts until `stop_at`; every call that ran
/// out of retries is retried with the same id until its outcome is known.
pub async fn deposit_workload(
    client: WalletClient,
    accounts: Vec<String>,
    writers: usize,
    stop_at: Instant,
    mark: Arc<Mutex<Option<Instant>>>,
) -> Acked {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let accounts = accounts.clone();
        let mark = mark.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64, Instant)> = Vec::new();
            let mut n = 0u64;
            while Instant::now() < stop_at && n < 100_000 {
                n += 1;
                let account = &accounts[(n as usize * 7 + w) % accounts.len()];
                let id = format!("w{w}-{n}");
                let amount = (n % 50 + 1) as i64;
                loop {
                    match client.deposit(&id, account, amount).await {
                        Ok(_) => {
                            acked.push((account.clone(), amount, Instant::now()));
                            break;
                        }
                        Err(e) if e.reason.is_retryable() => continue,
                        Err(e) => panic!("deposit {id} refused: {e}"),
                    }
                }
            }
            let _ = mark;
            acked
        }));
    }
    let mut result = Acked::default();
    let marked = *mark.lock().unwrap();
    let mut after_mark = 0;
    for task in tasks {
        for (account, amount, at) in task.await.expect("writer") {
            *result.per_account.entry(account).or_default() += amount;
            result.count += 1;
            if marked.is_some_and(|m| at > m) || mark.lock().unwrap().is_some_and(|m| at > m) {
                after_mark += 1;
            }
        }
    }
    result.after = mark.lock().unwrap().map(|m| (m, after_mark));
    result
}

pub async fn assert_balances(client: &WalletClient, expected: &BTreeMap<String, i64>) {
    for (account, amount) in expected {
        let got = client.get_account(account).await.expect("read").balance;
        assert_eq!(got, *amount, "balance of {account}");
    }
}

/// Accounts `per_shard` on each of the two shards, funded with `funds` each.
pub async fn accounts(
    cluster: &Cluster,
    client: &WalletClient,
    per_shard: usize,
    funds: i64,
) -> [Vec<String>; 2] {
    let ring = cluster.playground.topology.ring();
    let mut by_shard: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..1000 {
        let id = format!("x{i}");
        let shard = ring.shard_of(&id) as usize - 1;
        if by_shard[shard].len() < per_shard {
            by_shard[shard].push(id);
        }
    }
    for id in by_shard.iter().flatten() {
        client.create_account(id, "USD", 0).await.unwrap();
        if funds > 0 {
            client
                .deposit(&format!("fund-{id}"), id, funds)
                .await
                .unwrap();
        }
    }
    by_shard
}

/// Waits until no account has a reservation or a pending credit left; returns the balances.
/// (Generous: a debug build's recovery may have thousands of a full batch's transfers to settle on
/// a loaded 2-core machine.)
pub async fn settled(client: &WalletClient, ids: &[String]) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut balances = BTreeMap::new();
        let mut open = Vec::new();
        for id in ids {
            let a = client.get_account(id).await.unwrap();
            assert!(a.balance - a.reserved >= a.floor, "{a:?}");
            balances.insert(id.clone(), a.balance);
            if a.reserved != 0 || a.pending_credit != 0 {
                open.push(a);
            }
        }
        if open.is_empty() {
            return balances;
        }
        assert!(
            Instant::now() < deadline,
            "transfers still undecided: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// xorshift64*: a small seeded generator for randomized multi-process tests (a failure reproduces
/// from the printed seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// `curl` a request (`body`, if any, as JSON), sent again as it is while the answer is 503 or 429
/// (a leader change on a loaded machine; the same id makes that safe): the status and the JSON
/// body.
pub fn curl(
    method: &str,
    url: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut answer = curl_once(method, url, headers, body);
    for _ in 0..40 {
        if answer.0 != 503 && answer.0 != 429 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        answer = curl_once(method, url, headers, body);
    }
    answer
}

/// One `curl` request: the status and the JSON body.
fn curl_once(
    method: &str,
    url: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut command = std::process::Command::new("curl");
    command.args(["-s", "-S", "-X", method, "-w", "\n%{http_code}", url]);
    for header in headers {
        command.args(["-H", header]);
    }
    if let Some(body) = body {
        command.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let output = command.output().expect("curl (README § Tests)");
    assert!(output.status.success(), "curl: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (json_text, code) = text.rsplit_once('\n').expect("status line");
    let value =
        serde_json::from_str(json_text).unwrap_or_else(|e| panic!("{url}: {e}: {json_text}"));
    (code.trim().parse().expect("status"), value)
}

/// Runs the `wallet` CLI against `endpoint` with `--json`: whether it succeeded, its stdout as
/// JSON (null if not JSON), and its stderr.
pub fn wallet_json(endpoint: &str, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(wallet_cli())
        .args(["--endpoint", endpoint, "--json"])
        .args(args)
        .output()
        .expect("wallet CLI");
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The reason a call was refused with; a call that succeeds fails the test.
pub async fn refusal<T: std::fmt::Debug>(
    call: impl std::future::Future<Output = Result<T, wallet_client::WalletError>>,
) -> wallet_client::Reason {
    match call.await {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.reason,
    }
}

/// The `nth` id of the form `PREFIX-i` (i below 200) that the cluster places on `shard`.
pub fn id_on(cluster: &Cluster, prefix: &str, shard: u64, nth: usize) -> String {
    let ring = cluster.playground.topology.ring();
    (0..200)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| ring.shard_of(id) == shard)
        .nth(nth)
        .expect("an id on the shard")
}
