//! Online backup and restore of a cluster's accounts.
//!
//! A backup reads every shard at **one oracle timestamp**, as an audit does (DESIGN §7): each
//! shard is closed at the timestamp and its transfers started before it are decided first, so a
//! transfer committed at or below the timestamp has both legs in the backup, and one committed
//! after it has neither. The cluster serves writes throughout; they are stamped above the
//! timestamp. The backup is refused unless an audit at the same timestamp balances, and unless
//! the balances it wrote add up to that audit's figures.
//!
//! Layout of a backup directory: one `shard-N.jsonl` per shard (one account per line: id,
//! currency, balance at the timestamp, floor), then `manifest.json` (written last, so a
//! directory without one is no backup) with the timestamp, each file's size, account count and
//! CRC32, and the per-currency totals. Restoring checks every file against the manifest before it
//! opens a single account.
//!
//! A restore opens the accounts in a new cluster through the bulk path (opening balance = the
//! balance at the timestamp; a negative balance is opened at 0 and withdrawn down to it, within
//! its floor), then audits the new cluster against the manifest's totals. History, request ids
//! and transfer records are not in a backup: the restored cluster starts its history with each
//! account's opening entry.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wallet_client::{
    AccountState, AccountStateRequest, CreateAccountRequest, Lifecycle, WalletClient,
};
use wallet_router::service::WalletService;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// This release's backup format.
pub const FORMAT: u32 = 1;
/// Accounts per page read from a shard.
const PAGE: u32 = wallet_proto::ACCOUNTS_PAGE_MAX;
/// Accounts per bulk call of a restore.
const RESTORE_BATCH: usize = 4096;
/// Fresh timestamps a backup tries before it gives up (see [`backup`]).
const ATTEMPTS: u32 = 5;

/// What a backup holds, written last.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The oracle timestamp every shard was read at.
    pub ts: u64,
    /// Wall clock (ms) when the backup started, for people.
    pub taken_at_ms: i64,
    pub files: Vec<ShardFile>,
    /// Per currency: accounts and the sum of their balances (= net deposits at `ts`).
    pub totals: Vec<Total>,
}

/// One shard's file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardFile {
    pub shard_id: u64,
    pub file: String,
    pub accounts: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// One currency's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Total {
    pub currency: String,
    pub accounts: u64,
    /// Decimal (an i128: the sum may leave i64).
    pub balances: String,
}

/// One account, one line of a shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub id: String,
    pub currency: String,
    /// Balance at the backup's timestamp.
    pub balance: i64,
    /// Lowest balance allowed (0, or minus the credit limit).
    pub floor: i64,
    /// `FROZEN` or `CLOSED` as the account was when its page was read (after the timestamp);
    /// absent for an open account. A restore freezes or closes the account again, except an
    /// account closed after the timestamp whose balance then was not 0: it is restored open, as
    /// it was at the timestamp.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
}

/// Per currency: accounts and the sum of their balances (in i128: the sum may leave i64).
#[derive(Default)]
struct Sums(BTreeMap<String, (u64, i128)>);

impl Sums {
    fn add(&mut self, currency: &str, balance: i64) {
        let sum = self.0.entry(currency.to_string()).or_default();
        sum.0 += 1;
        sum.1 += i128::from(balance);
    }

    fn totals(self) -> Vec<Total> {
        self.0
            .into_iter()
            .map(|(currency, (accounts, balances))| Total {
                currency,
                accounts,
                balances: balances.to_string(),
            })
            .collect()
    }
}

/// Totals keyed by currency, to compare two sets whatever their order.
fn keyed<'a>(
    totals: impl IntoIterator<Item = (&'a str, u64, &'a str)>,
) -> BTreeMap<String, (u64, String)> {
    totals
        .into_iter()
        .map(|(currency, accounts, balances)| {
            (currency.to_string(), (accounts, balances.to_string()))
        })
        .collect()
}

fn keyed_manifest(totals: &[Total]) -> BTreeMap<String, (u64, String)> {
    keyed(
        totals
            .iter()
            .map(|t| (t.currency.as_str(), t.accounts, t.balances.as_str())),
    )
}

fn io(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Writes `bytes` to `path` whole: through a temporary name, synced, renamed.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let partial = path.with_extension("partial");
    let mut file = std::fs::File::create(&partial).map_err(io(partial.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(partial.display()))?;
    std::fs::rename(&partial, path).map_err(io(path.display()))
}

/// Why one attempt at a timestamp failed.
enum Attempt {
    /// Worth another timestamp: the reads outlived the shards' memory of changes
    /// (`SNAPSHOT_TOO_OLD`), or a balance read below its floor (commands stamped out of order:
    /// a debit stamped before the timestamp applied after a credit stamped after it).
    Again(String),
    Failed(String),
}

/// Backs up every account of the cluster `service` reaches into `to` (created; one that holds
/// a manifest already is refused). `progress` gets a line per shard. An attempt that meets
/// `SNAPSHOT_TOO_OLD` or a balance below its floor at its timestamp starts again at a fresh one
/// (up to 5 times).
pub async fn backup(
    service: &WalletService,
    to: &Path,
    progress: impl Fn(String),
) -> Result<Manifest, String> {
    if to.join(MANIFEST).exists() {
        return Err(format!("{} already holds a backup", to.display()));
    }
    std::fs::create_dir_all(to).map_err(io(to.display()))?;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match backup_once(service, to, &progress).await {
            Ok(manifest) => return Ok(manifest),
            Err(Attempt::Failed(why)) => return Err(why),
            Err(Attempt::Again(why)) => {
                progress(format!(
                    "attempt {attempt}: {why}; again at a fresh timestamp"
                ));
                last = why;
            }
        }
    }
    Err(format!("{ATTEMPTS} attempts failed; the last: {last}"))
}

async fn backup_once(
    service: &WalletService,
    to: &Path,
    progress: &impl Fn(String),
) -> Result<Manifest, Attempt> {
    let failed = Attempt::Failed;
    let status = |what: String, e: tonic::Status| {
        let why = format!("{what}: {}", e.message());
        if wallet_proto::reason::of_status(&e) == wallet_proto::reason::Reason::SnapshotTooOld {
            Attempt::Again(why)
        } else {
            Attempt::Failed(why)
        }
    };
    let taken_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ts = service
        .fresh_ts()
        .await
        .map_err(|e| status("a timestamp".into(), e))?;
    // Closes every shard at `ts`, decides what started before it, and checks conservation there.
    let audit = service
        .audit_at(ts)
        .await
        .map_err(|e| status(format!("audit at {ts}"), e))?;
    let mut files = Vec::new();
    let mut sums = Sums::default();
    for shard_id in service.shard_ids() {
        let mut text = Vec::new();
        let mut after = String::new();
        let mut count = 0u64;
        loop {
            let page = service
                .accounts_at(shard_id, ts, after.clone(), PAGE)
                .await
                .map_err(|e| status(format!("shard {shard_id} at {ts}"), e))?;
            if page
                .accounts
                .first()
                .is_some_and(|first| first.account_id <= after)
            {
                return Err(failed(format!(
                    "shard {shard_id} answered a page that does not follow {after:?}"
                )));
            }
            for account in &page.accounts {
                if account.balance < account.floor {
                    return Err(Attempt::Again(format!(
                        "{} read {} at {ts}, below its floor {}",
                        account.account_id, account.balance, account.floor
                    )));
                }
                let line = Line {
                    id: account.account_id.clone(),
                    currency: account.currency.clone(),
                    balance: account.balance,
                    floor: account.floor,
                    state: match AccountState::try_from(account.state) {
                        Ok(AccountState::Frozen) => "FROZEN".into(),
                        Ok(AccountState::Closed) => "CLOSED".into(),
                        _ => String::new(),
                    },
                };
                serde_json::to_writer(&mut text, &line).map_err(|e| failed(e.to_string()))?;
                text.push(b'\n');
                sums.add(&line.currency, line.balance);
                count += 1;
            }
            match page.accounts.last() {
                Some(last) if page.more => after = last.account_id.clone(),
                _ => break,
            }
        }
        let file = format!("shard-{shard_id}.jsonl");
        write_whole(&to.join(&file), &text).map_err(failed)?;
        progress(format!("shard {shard_id}: {count} accounts at ts {ts}"));
        files.push(ShardFile {
            shard_id,
            file,
            accounts: count,
            bytes: text.len() as u64,
            crc32: crc32fast::hash(&text),
        });
    }
    // The pages must add up to the audit at the same timestamp. (They may hold more accounts:
    // those opened since the audit, at 0 as of `ts`.)
    for t in &audit.totals {
        let (accounts, balances) = sums.0.get(&t.currency).copied().unwrap_or_default();
        if balances.to_string() != t.balances || accounts < t.accounts {
            return Err(failed(format!(
                "{}: the pages hold {accounts} accounts and {balances}, the audit at {ts} {} and {}",
                t.currency, t.accounts, t.balances
            )));
        }
    }
    let manifest = Manifest {
        format: FORMAT,
        ts,
        taken_at_ms,
        files,
        totals: sums.totals(),
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    write_whole(&to.join(MANIFEST), &text).map_err(failed)?;
    if let Ok(dir) = std::fs::File::open(to) {
        let _ = dir.sync_all();
    }
    Ok(manifest)
}

/// Reads a backup and checks it whole: the manifest, every file's size and CRC32, every line,
/// and the totals. Returns the manifest and every account.
pub fn verify(from: &Path) -> Result<(Manifest, Vec<Line>), String> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(io(path.display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "backup format {} (this release reads {FORMAT})",
            manifest.format
        ));
    }
    let mut lines = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut shards = std::collections::HashSet::new();
    let mut sums = Sums::default();
    for file in &manifest.files {
        if !shards.insert(file.file.clone()) {
            return Err(format!("the manifest names {} twice", file.file));
        }
        if file.file.contains('/') || file.file.contains("..") {
            return Err(format!(
                "manifest names a file outside the backup: {:?}",
                file.file
            ));
        }
        let path: PathBuf = from.join(&file.file);
        let size = std::fs::metadata(&path).map_err(io(path.display()))?.len();
        if size != file.bytes {
            return Err(format!(
                "{}: {size} bytes; the manifest says {}",
                path.display(),
                file.bytes
            ));
        }
        let bytes = std::fs::read(&path).map_err(io(path.display()))?;
        if bytes.len() as u64 != file.bytes || crc32fast::hash(&bytes) != file.crc32 {
            return Err(format!(
                "{}: {} bytes, CRC32 {:08x}; the manifest says {} bytes, {:08x}",
                path.display(),
                bytes.len(),
                crc32fast::hash(&bytes),
                file.bytes,
                file.crc32
            ));
        }
        let mut count = 0;
        for (n, text) in bytes.split(|b| *b == b'\n').enumerate() {
            if text.is_empty() {
                continue;
            }
            let line: Line = serde_json::from_slice(text)
                .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?;
            let bad = |why: String| format!("{} line {}: {why}", path.display(), n + 1);
            wallet_proto::validate::id("account id", &line.id).map_err(|e| bad(e.message))?;
            wallet_proto::validate::currency(&line.currency).map_err(|e| bad(e.message))?;
            if line.floor > 0 || line.floor < -i64::MAX {
                return Err(bad(format!("floor {} out of range", line.floor)));
            }
            if !matches!(line.state.as_str(), "" | "FROZEN" | "CLOSED") {
                return Err(bad(format!(
                    "{} has unknown state {:?}",
                    line.id, line.state
                )));
            }
            if line.balance < line.floor {
                return Err(bad(format!("{} is below its floor", line.id)));
            }
            if !ids.insert(line.id.clone()) {
                return Err(bad(format!("{} appears twice", line.id)));
            }
            sums.add(&line.currency, line.balance);
            lines.push(line);
            count += 1;
        }
        if count != file.accounts {
            return Err(format!(
                "{}: {count} accounts, the manifest says {}",
                path.display(),
                file.accounts
            ));
        }
    }
    let want = keyed_manifest(&manifest.totals);
    let got = keyed_manifest(&sums.totals());
    if want != got {
        return Err(format!(
            "the files add up to {got:?}, the manifest says {want:?}"
        ));
    }
    Ok((manifest, lines))
}

/// Opens the accounts of a verified backup through `client` (a new, empty cluster's router),
/// then audits the cluster against the manifest. Safe to call again on the same cluster within
/// its request-retention window (the bulk path answers an account opened with the same content
/// as it is; the withdrawals carry a fixed request id per account).
pub async fn restore(
    manifest: &Manifest,
    lines: &[Line],
    client: &WalletClient,
    progress: impl Fn(String),
) -> Result<(), String> {
    let mut opened = 0usize;
    for chunk in lines.chunks(RESTORE_BATCH) {
        let requests: Vec<CreateAccountRequest> = chunk
            .iter()
            .map(|line| CreateAccountRequest {
                account_id: line.id.clone(),
                currency: line.currency.clone(),
                // `verify` checked -i64::MAX <= floor <= 0.
                credit_limit: line.floor.saturating_neg(),
                opening_balance: line.balance.max(0),
            })
            .collect();
        let results = client
            .create_account_batch(&requests)
            .await
            .map_err(|e| e.to_string())?;
        for (line, result) in chunk.iter().zip(results) {
            result.map_err(|e| format!("account {}: {e}", line.id))?;
            // (A floor is at least -i64::MAX, so the negation fits.) Request ids are per account.
            if let Some(owed) = line.balance.checked_neg().filter(|owed| *owed > 0) {
                client
                    .withdraw("restore-negative-balance", &line.id, owed)
                    .await
                    .map_err(|e| format!("account {} (negative balance): {e}", line.id))?;
            }
            let change = match line.state.as_str() {
                "FROZEN" => Some(Lifecycle::Freeze),
                "CLOSED" if line.balance == 0 => Some(Lifecycle::Close),
                _ => None,
            };
            if let Some(change) = change {
                client
                    .change_account_state(
                        change,
                        AccountStateRequest {
                            request_id: "restore-state".into(),
                            account_id: line.id.clone(),
                            issued_at_ms: 0,
                        },
                    )
                    .await
                    .map_err(|e| format!("account {} ({}): {e}", line.id, line.state))?;
            }
        }
        opened += chunk.len();
        progress(format!("{opened} of {} accounts opened", lines.len()));
    }
    let audit = client.audit().await.map_err(|e| e.to_string())?;
    let got = keyed(
        audit
            .totals
            .iter()
            .map(|t| (t.currency.as_str(), t.accounts, t.balances.as_str())),
    );
    let want = keyed_manifest(&manifest.totals);
    if got != want {
        return Err(format!(
            "the restored cluster holds {got:?}; the backup {want:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup directory written by hand: `lines` as shard 1's file, with a manifest that
    /// matches it (so only the lines themselves can be wrong).
    fn written(lines: &str, file: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shard-1.jsonl"), lines).unwrap();
        let mut sums = Sums::default();
        for text in lines.lines() {
            if let Ok(line) = serde_json::from_str::<Line>(text) {
                sums.add(&line.currency, line.balance);
            }
        }
        let manifest = Manifest {
            format: FORMAT,
            ts: 7,
            taken_at_ms: 0,
            files: vec![ShardFile {
                shard_id: 1,
                file: file.into(),
                accounts: lines.lines().count() as u64,
                bytes: lines.len() as u64,
                crc32: crc32fast::hash(lines.as_bytes()),
            }],
            totals: sums.totals(),
        };
        std::fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        dir
    }

    fn line(id: &str, balance: i64, floor: i64) -> String {
        format!(r#"{{"id":"{id}","currency":"USD","balance":{balance},"floor":{floor}}}"#) + "\n"
    }

    #[test]
    fn verify_takes_a_sound_backup_over_the_whole_range() {
        let text = line("a", i64::MAX, 0)
            + &line("b", -i64::MAX, -i64::MAX)
            + &line("c", 0, 0).replace('}', r#","state":"CLOSED"}"#);
        let dir = written(&text, "shard-1.jsonl");
        let (manifest, lines) = verify(dir.path()).expect("sound");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].state, "CLOSED");
        assert_eq!(manifest.totals[0].balances, "0");
    }

    #[test]
    fn verify_refuses_what_restore_could_not_open_before_anything_starts() {
        for (text, why) in [
            (line("a", 5, 0) + &line("a", 6, 0), "twice"),
            (line("a", 5, i64::MIN), "out of range"),
            (line("a", 5, 3), "out of range"),
            (line("a", -2, -1), "below its floor"),
            (line("bad id", 5, 0), "account id"),
            (
                line("a", 5, 0).replace('}', r#","state":"GONE"}"#),
                "unknown state",
            ),
            ("not json\n".to_string(), "line 1"),
        ] {
            let dir = written(&text, "shard-1.jsonl");
            let e = verify(dir.path()).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        // A file outside the backup, and bytes that do not match the manifest.
        let dir = written(&line("a", 5, 0), "../shard-1.jsonl");
        assert!(verify(dir.path()).unwrap_err().contains("outside"));
        let dir = written(&line("a", 5, 0), "shard-1.jsonl");
        std::fs::write(dir.path().join("shard-1.jsonl"), line("a", 6, 0)).unwrap();
        assert!(verify(dir.path()).unwrap_err().contains("CRC32"));
        std::fs::write(dir.path().join("shard-1.jsonl"), line("a", 50, 0)).unwrap();
        assert!(verify(dir.path()).unwrap_err().contains("bytes"));
    }
}
