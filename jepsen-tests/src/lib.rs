//! wallet-jepsen: the chaos harness: workloads under faults, histories, the checker, pictures.
//!
//! - [`history`]: every operation of a test as `invoke` → `ok` / `fail` / `info`, with process, time
//!   in ns and value; written as Jepsen-format EDN (`history.edn`, readable by Elle/Knossos) and as
//!   JSONL (`history.jsonl`, what `wallet-jepsen check` reads back).
//! - [`checker`]: reads a whole bank-workload history and names every anomaly it finds: lost or
//!   double-applied transfers, traces of failed ones, wrong audit totals, negative balances,
//!   non-linearizable reads. Its verdict goes to `results.edn`.
//! - [`plots`]: `latency-raw.png` and `rate.png` with the fault windows shaded.
//! - [`run`]: workloads; [`nemesis`]: the seeded fault schedule, drawn from [`rng`]; [`backend`]: where the cluster
//!   runs (local processes or Docker containers) and how faults reach it.
pub mod backend;
pub mod checker;
pub mod history;
pub mod nemesis;
pub mod plots;
pub mod rng;
pub mod run;
