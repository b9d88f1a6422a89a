//! wallet-jepsen: the chaos harness's history and checker (issue 4, first part).
//!
//! - [`history`]: every operation of a test as `invoke` → `ok` / `fail` / `info`, with process, time
//!   in ns and value; written as Jepsen-format EDN (`history.edn`, readable by Elle/Knossos) and as
//!   JSONL (`history.jsonl`, what `wallet-jepsen check` reads back).
//! - [`checker`]: reads a whole bank-workload history and names every anomaly it finds: lost or
//!   double-applied transfers, traces of failed ones, wrong audit totals, negative balances, stale
//!   reads. Its verdict goes to `results.edn`.
//! - [`run`]: workloads under seeded faults; [`backend`]: where the cluster runs (local processes
//!   or Docker containers) and how faults reach it.
pub mod backend;
pub mod checker;
pub mod history;
pub mod run;
