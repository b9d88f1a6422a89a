//! Durable storage of one shard replica: its Raft log, Raft state and state machine, in one sled tree.
//!
//! Keeping everything of a replica in one tree makes every change one atomic sled batch: appending
//! entries with the HardState, applying entries together with the applied index. sled recovers a
//! prefix of its batches after a crash, so a restart always sees a consistent replica.
//!
//! **Snapshots** are files ([`crate::snapshot_file`]), never held whole in memory. Installing one
//! takes many batches (a large shard does not fit one), so it is made restartable: a first batch
//! writes the marker `Mi` (the snapshot's metadata), the next ones drop the old state and log and
//! write the file's records, the last one writes the HardState, ConfState, truncation point and
//! applied index and removes the marker. A store opened with the marker still there finishes the
//! install from the received file (kept, fsynced, until then); without that file it is set aside
//! and rebuilt from its peers.
//!
//! Key layout (ids never contain a 0 byte, see `validate::id`):
//! - `L` + index (u64 BE)                → Raft entry (protobuf)
//! - `Mh` / `Mc` / `Mt` / `Ma`           → HardState, ConfState, truncation (index, term), applied index
//! - `Mi`                                → metadata of a snapshot being installed (see above)
//! - `Mk`, `Mk` + n (u32 BE)             → a checkpoint's redo record: header, chunks ([`crate::checkpoint`])
//! - `Sa` + account                      → Account
//! - `Sr` + account + 0 + request id     → RequestRecord (first outcome of a request)
//! - `Sh` + account + 0 + seq (u64 BE)   → HistoryEntry
//! - `Si` + to + 0 + from + 0 + transfer → Intent (credit side of a cross-shard transfer)
//! - `St`                                → timestamp oracle limit (meta group only)
//! - `Sc` / `Sx`                         → closed timestamp, highest commit timestamp applied
//! - `Sn` + currency                     → net deposits of the currency (i128 LE)
//!
//! Every value is a CRC32-framed record ([`crate::record`]), checked on every read: a corrupt record
//! stops the replica with an error instead of being served (G7).
//!
//! **Checkpoints.** What applied entries change is not written at once: the state machine serves it
//! from memory, and the Raft log, made durable before anything is applied, holds the entries that
//! made it. The changes are written atomically with their applied index ([`crate::checkpoint`]:
//! one batch, or a redo record and plain writes) every [`CHECKPOINT_WRITES`] records,
//! before a snapshot is built, before a history page is read and at shutdown. A crash loses nothing: a restart loads the last checkpoint and raft-rs re-delivers the
//! committed entries after its applied index. The log is never compacted past a checkpoint (the
//! snapshot that precedes compaction writes one first). One batch of many applies also lets sled
//! keep only the last version of a hot account instead of one per transfer.
//!
//! [`LogStore`] implements raft-rs's `Storage` over an in-memory copy of the uncompacted log (the
//! tree is the durable copy), so the Raft loop never reads sled on its hot path.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::checkpoint;
use crate::group_commit::GroupCommit;
use crate::record::{self, Corrupt};
use crate::snapshot_file::{self, Descriptor, Side, SnapshotDir};
use crate::state_machine::StateMachine;
use crate::writes::Write;
use wallet_proto::v1::{
    Account, HistoryEntry, Intent, ListTransfersRequest, ListTransfersResponse,
};
use wallet_proto::validate;

const LOG_PREFIX: u8 = b'L';
const KEY_HARD_STATE: &[u8] = b"Mh";
const KEY_CONF_STATE: &[u8] = b"Mc";
const KEY_TRUNCATED: &[u8] = b"Mt";
const KEY_APPLIED: &[u8] = b"Ma";
const KEY_INSTALLING: &[u8] = b"Mi";
const STATE_PREFIX: &[u8] = b"S";
const ACCOUNT_PREFIX: &[u8] = b"Sa";
const REQUEST_PREFIX: &[u8] = b"Sr";
const HISTORY_PREFIX: &[u8] = b"Sh";
const INTENT_PREFIX: &[u8] = b"Si";
const KEY_TSO_LIMIT: &[u8] = b"St";
const KEY_CLOSED_TS: &[u8] = b"Sc";
const KEY_MAX_TS: &[u8] = b"Sx";
const KEY_CLOCK: &[u8] = b"Sk";
const KEY_RETENTION: &[u8] = b"Sw";
const NET_DEPOSITS_PREFIX: &[u8] = b"Sn";

/// Unreadable records skipped while setting a store aside before the copy gives up.
const SET_ASIDE_UNREADABLE_MAX: u64 = 64;

/// Records (or removals) per sled batch while a snapshot replaces a replica's state: as few as
/// a checkpoint's, for the same reason (sled's memory per key of a large batch, see
/// [`crate::checkpoint`]).
const INSTALL_BATCH_RECORDS: usize = checkpoint::BATCH_KEYS;
/// Bytes per sled batch while a snapshot replaces a replica's state (few large records).
const INSTALL_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Applied records buffered in memory before they are written as one checkpoint batch.
pub const CHECKPOINT_WRITES: usize = 4096;
/// Applied records held in memory at most while the previous checkpoint is still being written:
/// up to here the Raft loop goes on and the next checkpoint starts once the writer is done;
/// beyond it the loop waits for the writer, so memory stays bounded when sled falls behind.
pub const CHECKPOINT_WRITES_MAX: usize = 4 * CHECKPOINT_WRITES;

/// Largest history page.
pub const HISTORY_PAGE_MAX: u32 = 1000;
const HISTORY_PAGE_DEFAULT: u32 = 50;
/// Entries a filtered history page examines at most (one read's bounded work).
pub const HISTORY_SCAN_MAX: usize = 10_000;

/// Errors of the durable store: sled failed, or a record is corrupt.
#[derive(Debug)]
pub enum StoreError {
    Sled(sled::Error),
    Corrupt(String),
    /// raft-rs refused the stored state (a bug, not the disk).
    Raft(String),
    /// A snapshot file could not be written (the disk, not a record).
    Io(std::io::Error),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sled(e) => write!(f, "storage error: {e}"),
            StoreError::Corrupt(e) => write!(f, "corrupt record: {e}"),
            StoreError::Raft(e) => write!(f, "raft state: {e}"),
            StoreError::Io(e) => write!(f, "snapshot file: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Sled(e)
    }
}

impl From<checkpoint::RedoError> for StoreError {
    fn from(e: checkpoint::RedoError) -> Self {
        match e {
            checkpoint::RedoError::Sled(e) => StoreError::Sled(e),
            checkpoint::RedoError::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

impl From<Corrupt> for StoreError {
    fn from(e: Corrupt) -> Self {
        StoreError::Corrupt(e.0)
    }
}

fn log_key(index: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = LOG_PREFIX;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn account_key(account_id: &str) -> Vec<u8> {
    [ACCOUNT_PREFIX, account_id.as_bytes()].concat()
}

fn request_key(account_id: &str, request_id: &str) -> Vec<u8> {
    [
        REQUEST_PREFIX,
        account_id.as_bytes(),
        &[0],
        request_id.as_bytes(),
    ]
    .concat()
}

fn intent_key(intent: &Intent) -> Vec<u8> {
    intent_key_of(&crate::writes::intent_key(intent))
}

fn intent_key_of((to, from, id): &crate::writes::IntentKey) -> Vec<u8> {
    [
        INTENT_PREFIX,
        to.as_bytes(),
        &[0],
        from.as_bytes(),
        &[0],
        id.as_bytes(),
    ]
    .concat()
}

/// Splits `prefix + account + 0 + id` into (account, id).
fn split_pair_key(key: &[u8], prefix: &[u8]) -> Result<(String, String), StoreError> {
    let rest = &key[prefix.len()..];
    let split = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StoreError::Corrupt("state key without separator".into()))?;
    Ok((
        String::from_utf8_lossy(&rest[..split]).into_owned(),
        String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
    ))
}

fn history_prefix(account_id: &str) -> Vec<u8> {
    [HISTORY_PREFIX, account_id.as_bytes(), &[0]].concat()
}

fn history_key(account_id: &str, seq: u64) -> Vec<u8> {
    [&history_prefix(account_id)[..], &seq.to_be_bytes()].concat()
}

fn encode_pb<M: PbMessage>(message: &M) -> Vec<u8> {
    // Encoding a well-formed in-memory protobuf message cannot fail.
    record::frame(&message.write_to_bytes().unwrap_or_default())
}

fn decode_pb<M: PbMessage>(bytes: &[u8]) -> Result<M, StoreError> {
    let payload = record::unframe(bytes)?;
    M::parse_from_bytes(payload).map_err(|e| StoreError::Corrupt(format!("raft record: {e}")))
}

fn encode_u64s(values: &[u64]) -> Vec<u8> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    record::frame(&bytes)
}

fn decode_u64s<const N: usize>(bytes: &[u8]) -> Result<[u64; N], StoreError> {
    let payload = record::unframe(bytes)?;
    if payload.len() != N * 8 {
        return Err(StoreError::Corrupt(format!(
            "expected {} bytes, got {}",
            N * 8,
            payload.len()
        )));
    }
    let mut out = [0u64; N];
    for (i, chunk) in payload.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out[i] = u64::from_be_bytes(word);
    }
    Ok(out)
}

/// In-memory mirror of the durable Raft state, read by raft-rs through [`LogStore`].
#[derive(Default)]
struct LogCore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry dropped by compaction or a snapshot install.
    truncated: (u64, u64),
    /// Every entry after `truncated`, in order.
    entries: Vec<Entry>,
    /// Bytes of the entries' payloads (what compaction by size counts).
    entry_bytes: usize,
    /// The newest snapshot built for followers, at or after `truncated`.
    snapshot: Option<Snapshot>,
    /// Set when raft-rs asked for a snapshot that is not built yet.
    snapshot_wanted: bool,
}

impl LogCore {
    fn push(&mut self, entry: Entry) {
        self.entry_bytes += entry_size(&entry);
        self.entries.push(entry);
    }

    /// Keeps the first `keep` entries.
    fn truncate(&mut self, keep: usize) {
        let dropped: usize = self.entries.iter().skip(keep).map(entry_size).sum();
        self.entry_bytes -= dropped;
        self.entries.truncate(keep);
    }

    /// Drops the first `count` entries.
    fn drop_front(&mut self, count: usize) {
        let dropped: usize = self.entries.iter().take(count).map(entry_size).sum();
        self.entry_bytes -= dropped;
        self.entries.drain(..count);
    }

    fn first_index(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .unwrap_or(self.truncated.0)
    }
}

fn entry_size(entry: &Entry) -> usize {
    entry.data.len() + entry.context.len()
}

/// raft-rs `Storage` of one replica; cheap to clone (shared with the Raft loop).
#[derive(Clone)]
pub struct LogStore {
    core: Arc<RwLock<LogCore>>,
}

impl LogStore {
    fn read(&self) -> RwLockReadGuard<'_, LogCore> {
        // A poisoned lock means the Raft loop panicked mid-update: nothing sane can follow.
        self.core.read().expect("log store lock poisoned")
    }

    fn write(&self) -> RwLockWriteGuard<'_, LogCore> {
        self.core.write().expect("log store lock poisoned")
    }

    /// Whether raft-rs asked for a snapshot since the last one was built.
    pub fn snapshot_wanted(&self) -> bool {
        self.read().snapshot_wanted
    }

    /// First index still in the log.
    pub fn first_index_now(&self) -> u64 {
        self.read().first_index()
    }

    /// Payload bytes of the entries still in the log.
    pub fn entry_bytes(&self) -> usize {
        self.read().entry_bytes
    }

    /// The index up to which compaction may drop the log: `applied`, less a slack of at most
    /// `slack_entries` entries and `slack_bytes` bytes kept for followers a little behind.
    pub fn compaction_point(&self, applied: u64, slack_entries: u64, slack_bytes: usize) -> u64 {
        let core = self.read();
        let first = core.first_index();
        let mut point = applied.min(core.last_index());
        let mut bytes = 0;
        while point >= first && applied - point < slack_entries {
            bytes += entry_size(&core.entries[(point - first) as usize]);
            if bytes > slack_bytes {
                break;
            }
            point -= 1;
        }
        point
    }

    /// The HardState as last appended.
    pub fn hard_state(&self) -> HardState {
        self.read().hard_state.clone()
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.read();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.read();
        if low <= core.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut entries = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.read();
        if idx == core.truncated.0 {
            return Ok(core.truncated.1);
        }
        if idx < core.truncated.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut core = self.write();
        if let Some(snapshot) = &core.snapshot {
            let index = snapshot.get_metadata().index;
            if index >= request_index && index >= core.truncated.0 {
                return Ok(snapshot.clone());
            }
        }
        // The Raft loop builds one at its applied index and raft-rs asks again on the next append.
        core.snapshot_wanted = true;
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

/// Key, in the database's default tree, naming the tree of a shard's replica when it is not the
/// usual `shard-N` (after a damaged tree could not be dropped).
fn tree_key(shard_id: u64) -> String {
    format!("tree-of-shard-{shard_id}")
}

/// The tree holding a shard's replica.
fn tree_name(db: &sled::Db, shard_id: u64) -> Result<String, StoreError> {
    Ok(match db.get(tree_key(shard_id))? {
        Some(name) => String::from_utf8_lossy(&name).into_owned(),
        None => format!("shard-{shard_id}"),
    })
}

fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// What a checkpoint of `writes` changes, per key (the last change of a key wins).
fn checkpoint_changes(writes: Vec<Write>) -> checkpoint::Changes {
    let mut changes = checkpoint::Changes::new();
    for write in writes {
        let (key, value): (Vec<u8>, Option<Vec<u8>>) = match write {
            Write::Account(account) => (
                account_key(&account.account_id),
                Some(record::encode(&account)),
            ),
            Write::Request {
                account_id,
                request_id,
                record: r,
            } => (
                request_key(&account_id, &request_id),
                Some(record::encode(&*r)),
            ),
            Write::History { account_id, entry } => (
                history_key(&account_id, entry.seq),
                Some(record::encode(&entry)),
            ),
            Write::Intent(intent) => (intent_key(&intent), Some(record::encode(&*intent))),
            Write::TsoLimit(limit) => (KEY_TSO_LIMIT.to_vec(), Some(encode_u64s(&[limit]))),
            Write::ClosedTs(ts) => (KEY_CLOSED_TS.to_vec(), Some(encode_u64s(&[ts]))),
            Write::MaxTs(ts) => (KEY_MAX_TS.to_vec(), Some(encode_u64s(&[ts]))),
            // The clock is stored as its bits: it is never negative, but no value may fail here.
            Write::Clock(ms) => (KEY_CLOCK.to_vec(), Some(encode_u64s(&[ms as u64]))),
            Write::Retention(ms) => (KEY_RETENTION.to_vec(), Some(encode_u64s(&[ms as u64]))),
            Write::ForgetRequest((account_id, request_id)) => {
                (request_key(&account_id, &request_id), None)
            }
            Write::ForgetIntent(key) => (intent_key_of(&key), None),
            Write::NetDeposits(currency, total) => (
                [NET_DEPOSITS_PREFIX, currency.as_bytes()].concat(),
                Some(record::frame(&total.to_le_bytes())),
            ),
        };
        changes.insert(key, value);
    }
    changes
}

/// One replica's durable store: the sled tree and the in-memory log mirror.
pub struct ShardStore {
    shard_id: u64,
    tree: sled::Tree,
    snapshots: SnapshotDir,
    log: LogStore,
    group_commit: Arc<GroupCommit>,
    /// Applied changes not yet checkpointed, and the applied index they bring the store to.
    unwritten: Vec<Write>,
    unwritten_applied: Option<u64>,
    /// The checkpoint being written by its own thread (the Raft loop does not wait for it):
    /// the applied index it brings sled to, and its writer.
    writing: Option<(u64, std::thread::JoinHandle<Result<(), sled::Error>>)>,
    /// The applied index of the last checkpoint known to be in sled: the log may be compacted
    /// up to it.
    written_applied: u64,
}

/// What a replica recovers from disk when it opens.
pub struct Recovered {
    pub store: ShardStore,
    pub state_machine: StateMachine,
    pub applied: u64,
    /// Nothing was ever stored: a new replica, or one whose data was wiped.
    pub pristine: bool,
}

impl ShardStore {
    /// Opens (or creates) the replica of `shard_id` in `db`. A new replica starts with `voters` as
    /// its configuration, like every other replica of the shard.
    pub fn open(
        group_commit: &Arc<GroupCommit>,
        shard_id: u64,
        voters: &[u64],
        state_machine: StateMachine,
    ) -> Result<Recovered, StoreError> {
        let tree = group_commit
            .db()
            .open_tree(tree_name(group_commit.db(), shard_id)?)?;
        let snapshots = group_commit.snapshots().clone();
        if checkpoint::finish_interrupted(&tree)? {
            tracing::warn!(
                shard = shard_id,
                "finished a checkpoint a crash interrupted"
            );
        }
        if let Some(bytes) = tree.get(KEY_INSTALLING)? {
            let snapshot: Snapshot = decode_pb(&bytes)?;
            tracing::warn!(
                shard = shard_id,
                index = snapshot.get_metadata().index,
                "finishing a snapshot install a crash interrupted"
            );
            let (path, descriptor) = received_file(&snapshots, shard_id, &snapshot)?;
            replace_state(&tree, &path, descriptor, snapshot.get_metadata())?;
            // Durable before the file it came from may be removed below.
            tree.flush()?;
        }
        // Files built for followers before the restart are stale; received ones up to what is
        // applied were installed (or were never needed).
        snapshots.remove(Side::Sent, shard_id, u64::MAX, None);
        let mut core = LogCore::default();
        match tree.get(KEY_CONF_STATE)? {
            Some(bytes) => core.conf_state = decode_pb(&bytes)?,
            None => {
                core.conf_state.set_voters(voters.to_vec());
                tree.insert(KEY_CONF_STATE, encode_pb(&core.conf_state))?;
            }
        }
        if let Some(bytes) = tree.get(KEY_HARD_STATE)? {
            core.hard_state = decode_pb(&bytes)?;
        }
        if let Some(bytes) = tree.get(KEY_TRUNCATED)? {
            let [index, term] = decode_u64s::<2>(&bytes)?;
            core.truncated = (index, term);
        }
        for item in tree.scan_prefix([LOG_PREFIX]) {
            let (_, value) = item?;
            let entry: Entry = decode_pb(&value)?;
            let expected = core.last_index() + 1;
            if entry.index != expected {
                return Err(StoreError::Corrupt(format!(
                    "shard {shard_id}: log entry {} where {expected} was expected",
                    entry.index
                )));
            }
            core.push(entry);
        }
        let pristine = core.hard_state == HardState::default()
            && core.entries.is_empty()
            && core.truncated == (0, 0);
        let applied = match tree.get(KEY_APPLIED)? {
            Some(bytes) => decode_u64s::<1>(&bytes)?[0],
            None => core.truncated.0,
        };
        // Applied entries were committed; the HardState written before them may lag behind.
        if core.hard_state.commit < applied {
            core.hard_state.commit = applied;
        }
        snapshots.remove(Side::Received, shard_id, applied, None);
        let store = ShardStore {
            shard_id,
            tree,
            snapshots,
            log: LogStore {
                core: Arc::new(RwLock::new(core)),
            },
            group_commit: group_commit.clone(),
            unwritten: Vec::new(),
            unwritten_applied: None,
            writing: None,
            written_applied: applied,
        };
        let mut state_machine = state_machine;
        store.load_state(&mut state_machine)?;
        Ok(Recovered {
            store,
            state_machine,
            applied,
            pristine,
        })
    }

    /// Opens the replica like [`ShardStore::open`], but a store that cannot be trusted — a record
    /// that fails its check, or a state older than its durability `mark` (sled dropped writes it
    /// had made durable) — is **set aside** (moved to the tree `set-aside-shard-N`, replacing the
    /// one set aside before) and the replica opens empty, to be rebuilt from its peers (G7).
    /// Returns why it was set aside, if it was.
    pub fn open_checked(
        group_commit: &Arc<GroupCommit>,
        shard_id: u64,
        voters: &[u64],
        state_machine: StateMachine,
        mark: Option<crate::mark::Mark>,
    ) -> Result<(Recovered, Option<String>), StoreError> {
        // sled 0.34 panics on some damaged pages where it should return an error: that is a
        // corrupt store too, not a reason to crash-loop.
        let opened = wallet_proto::fail_stop::catch(|| {
            Self::open(group_commit, shard_id, voters, state_machine.clone())
        })
        .unwrap_or_else(|panic| Err(StoreError::Corrupt(format!("sled panicked: {panic}"))));
        let why = match opened {
            Ok(recovered) => {
                let log = recovered.store.log();
                match mark.and_then(|m| m.rolled_back(&log.hard_state(), &log)) {
                    None => return Ok((recovered, None)),
                    Some(why) => format!("its store is older than what it had made durable: {why}"),
                }
            }
            Err(StoreError::Corrupt(e)) => format!("corrupt record: {e}"),
            Err(StoreError::Sled(e @ sled::Error::Corruption { .. })) => {
                format!("corrupt store: {e}")
            }
            Err(e) => return Err(e),
        };
        let recovered = Self::set_aside(group_commit, shard_id, voters, state_machine, &why)?;
        Ok((recovered, Some(why)))
    }

    /// Moves the replica's records to the tree `set-aside-shard-N` (replacing the one set aside
    /// before: one is kept for inspection) and opens it empty, to be rebuilt from its peers.
    pub fn set_aside(
        group_commit: &Arc<GroupCommit>,
        shard_id: u64,
        voters: &[u64],
        state_machine: StateMachine,
        why: &str,
    ) -> Result<Recovered, StoreError> {
        tracing::error!(shard = shard_id, %why, "replica set aside; it is rebuilt from its peers");
        let db = group_commit.db();
        let name = tree_name(db, shard_id)?;
        let mut aside = format!("set-aside-shard-{shard_id}");
        if let Err(e) = db.drop_tree(&aside) {
            tracing::error!(shard = shard_id, error = %e, "cannot drop the previous set-aside tree");
            aside = format!("set-aside-shard-{shard_id}.{}", now_nanos());
        }
        let (from, to) = (db.open_tree(&name)?, db.open_tree(&aside)?);
        // Best effort: what sled can still read is kept for inspection; pages it cannot read or
        // write (an error, or one of sled 0.34's panics on a damaged page) end the copy, so a
        // corrupt page cannot stop the replica from being rebuilt.
        let copied = wallet_proto::fail_stop::catch(|| {
            let (mut kept, mut unreadable) = (0u64, 0u64);
            for item in from.iter() {
                match item.and_then(|(key, value)| to.insert(key, value)) {
                    Ok(_) => kept += 1,
                    Err(_) if unreadable < SET_ASIDE_UNREADABLE_MAX => unreadable += 1,
                    Err(_) => break,
                }
            }
            (kept, unreadable)
        });
        match copied {
            Ok((kept, unreadable)) => {
                tracing::warn!(shard = shard_id, kept, unreadable, "records set aside")
            }
            Err(panic) => {
                tracing::error!(shard = shard_id, %panic, "sled panicked while copying; the rest is not kept")
            }
        }
        if let Err(e) = db.drop_tree(&name) {
            // sled walks the tree's pages to drop it and can fail on a damaged one: the replica
            // moves to a tree of a new name instead, and the damaged one is left unused.
            let fresh = format!("shard-{shard_id}.{}", now_nanos());
            tracing::error!(shard = shard_id, error = %e, old = %name, new = %fresh, "cannot drop the damaged tree; the replica moves to a new one");
            db.insert(tree_key(shard_id), fresh.as_bytes())?;
            db.flush()?;
        }
        Self::open(group_commit, shard_id, voters, state_machine)
    }

    /// The node's database handle (group commit) this store writes through.
    pub fn group_commit(&self) -> &Arc<GroupCommit> {
        &self.group_commit
    }

    /// The raft-rs storage handle.
    pub fn log(&self) -> LogStore {
        self.log.clone()
    }

    fn load_state(&self, state_machine: &mut StateMachine) -> Result<(), StoreError> {
        state_machine.clear();
        for item in self.tree.scan_prefix(ACCOUNT_PREFIX) {
            let (_, value) = item?;
            state_machine.load_account(record::decode::<Account>(&value)?);
        }
        for item in self.tree.scan_prefix(REQUEST_PREFIX) {
            let (key, value) = item?;
            let (account_id, request_id) = split_pair_key(&key, REQUEST_PREFIX)?;
            state_machine.load_request(account_id, request_id, record::decode(&value)?);
        }
        if let Some(bytes) = self.tree.get(KEY_TSO_LIMIT)? {
            state_machine.load_tso_limit(decode_u64s::<1>(&bytes)?[0]);
        }
        let read_u64 = |key: &[u8]| -> Result<u64, StoreError> {
            match self.tree.get(key)? {
                Some(bytes) => Ok(decode_u64s::<1>(&bytes)?[0]),
                None => Ok(0),
            }
        };
        let mut net = std::collections::BTreeMap::new();
        for item in self.tree.scan_prefix(NET_DEPOSITS_PREFIX) {
            let (key, value) = item?;
            let payload = record::unframe(&value)?;
            let bytes: [u8; 16] = payload
                .try_into()
                .map_err(|_| StoreError::Corrupt("net deposits record of wrong size".into()))?;
            let currency = String::from_utf8_lossy(&key[NET_DEPOSITS_PREFIX.len()..]).into_owned();
            net.insert(currency, i128::from_le_bytes(bytes));
        }
        state_machine.load_snapshot_state(read_u64(KEY_CLOSED_TS)?, read_u64(KEY_MAX_TS)?, net);
        state_machine.load_clock(read_u64(KEY_CLOCK)? as i64);
        if self.tree.get(KEY_RETENTION)?.is_some() {
            state_machine.load_retention(read_u64(KEY_RETENTION)? as i64);
        }
        for item in self.tree.scan_prefix(INTENT_PREFIX) {
            let (_, value) = item?;
            state_machine.load_intent(record::decode(&value)?);
        }
        Ok(())
    }

    /// Appends entries received from raft-rs (dropping any conflicting tail) and the HardState, in
    /// one batch. Not yet durable: call [`ShardStore::flush`] before acting on it.
    pub fn append(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let mut core = self.log.write();
        // The common case — entries that extend the log, with at most a new commit index — is
        // written as plain inserts, entries first: any prefix of them that a crash leaves is a
        // valid log (the commit index may lag, see `open`). A sled batch costs two extra wake-ups
        // of sled's whole I/O pool (it seals the log buffer before and after itself), so it is
        // kept for what must be atomic: a conflicting tail dropped, or a new term or vote.
        let extends = entries
            .first()
            .is_none_or(|first| first.index == core.last_index() + 1);
        let same_term = hard_state
            .is_none_or(|hs| hs.term == core.hard_state.term && hs.vote == core.hard_state.vote);
        if extends && same_term {
            for entry in entries {
                self.tree.insert(log_key(entry.index), encode_pb(entry))?;
                core.push(entry.clone());
            }
            if let Some(hs) = hard_state {
                self.tree.insert(KEY_HARD_STATE, encode_pb(hs))?;
                core.hard_state = hs.clone();
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        if let Some(first) = entries.first() {
            assert!(
                first.index > core.truncated.0,
                "append of entry {} behind the truncation point {}",
                first.index,
                core.truncated.0
            );
            assert!(first.index <= core.last_index() + 1, "gap in the raft log");
            for stale in first.index..=core.last_index() {
                batch.remove(&log_key(stale));
            }
            let keep = (first.index - core.first_index()) as usize;
            core.truncate(keep);
            for entry in entries {
                batch.insert(&log_key(entry.index), encode_pb(entry));
                core.push(entry.clone());
            }
        }
        if let Some(hs) = hard_state {
            batch.insert(KEY_HARD_STATE, encode_pb(hs));
            core.hard_state = hs.clone();
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Records a new commit index (from a LightReady).
    pub fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut core = self.log.write();
        core.hard_state.commit = commit;
        self.tree
            .insert(KEY_HARD_STATE, encode_pb(&core.hard_state))?;
        Ok(())
    }

    /// Takes what a batch of applied entries changed, up to `applied`; it reaches sled with the
    /// next checkpoint.
    pub fn write_applied(&mut self, writes: Vec<Write>, applied: u64) -> Result<(), StoreError> {
        if self.unwritten.is_empty() {
            self.unwritten = writes;
        } else {
            self.unwritten.extend(writes);
        }
        self.unwritten_applied = Some(applied);
        if self.unwritten.len() >= CHECKPOINT_WRITES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Whether sled holds every applied change.
    pub fn checkpointed(&self) -> bool {
        self.unwritten_applied.is_none() && self.writing.is_none()
    }

    /// Starts writing the applied changes not yet written, with their applied index, as one
    /// batch (later versions of a record replace earlier ones), on a thread of its own: the Raft
    /// loop goes on while sled works. One checkpoint at a time, in order. Not fsynced: the log is.
    /// While the previous checkpoint is still being written, the changes wait in memory for the
    /// next call (the loop never blocks on sled for them) unless they reached
    /// [`CHECKPOINT_WRITES_MAX`].
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.poll_checkpoint()?;
        let Some(applied) = self.unwritten_applied else {
            return Ok(());
        };
        if self.writing.is_some() {
            if self.unwritten.len() < CHECKPOINT_WRITES_MAX {
                return Ok(());
            }
            self.wait_checkpoint()?;
        }
        self.unwritten_applied = None;
        let writes = std::mem::take(&mut self.unwritten);
        let tree = self.tree.clone();
        self.writing = Some((
            applied,
            std::thread::spawn(move || {
                checkpoint::write(
                    &tree,
                    &checkpoint_changes(writes),
                    KEY_APPLIED,
                    &encode_u64s(&[applied]),
                )
            }),
        ));
        Ok(())
    }

    /// Takes the result of the checkpoint being written if its writer is done, without waiting.
    fn poll_checkpoint(&mut self) -> Result<(), StoreError> {
        if self.writing.as_ref().is_some_and(|(_, w)| w.is_finished()) {
            self.wait_checkpoint()?;
        }
        Ok(())
    }

    /// Waits until the checkpoint being written (if any) is in sled.
    pub fn wait_checkpoint(&mut self) -> Result<(), StoreError> {
        match self.writing.take() {
            None => Ok(()),
            Some((applied, writer)) => match writer.join() {
                Ok(result) => {
                    result?;
                    self.written_applied = applied;
                    Ok(())
                }
                // A panic on the writer thread already ended the process (fail-stop hook).
                Err(_) => Err(StoreError::Corrupt("the checkpoint writer panicked".into())),
            },
        }
    }

    /// Writes every applied change and waits for it: what is applied is then in sled.
    pub fn checkpoint_now(&mut self) -> Result<(), StoreError> {
        self.wait_checkpoint()?;
        self.checkpoint()?;
        self.wait_checkpoint()
    }

    /// Whether the log may be compacted up to `index` now: a checkpoint at or past it is in
    /// sled. Starts the next checkpoint (without waiting) when it is not.
    pub fn compactable(&mut self, index: u64) -> Result<bool, StoreError> {
        self.poll_checkpoint()?;
        if self.written_applied >= index {
            return Ok(true);
        }
        self.checkpoint()?;
        Ok(false)
    }

    /// Stores a new configuration after a conf change applied.
    pub fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.log.write().conf_state = conf_state.clone();
        self.tree.insert(KEY_CONF_STATE, encode_pb(conf_state))?;
        Ok(())
    }

    /// Makes everything written so far durable (fsync, shared with the node's other replicas
    /// through group commit). One call per Raft Ready.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.group_commit.flush().await?;
        Ok(())
    }

    /// Builds a snapshot of the state machine at `applied` for followers that fell behind the log:
    /// every `S` record, checked, written to a file in key order (never held in memory); the
    /// snapshot raft-rs sends carries the file's descriptor.
    /// The scan runs on a blocking thread (the node's other replicas go on); nothing else
    /// writes this tree meanwhile, as the replica's task waits for it.
    pub async fn build_snapshot(&mut self, applied: u64) -> Result<(), StoreError> {
        self.checkpoint_now()?;
        let term = self
            .log
            .term(applied)
            .map_err(|e| StoreError::Corrupt(format!("term of applied index {applied}: {e}")))?;
        let path = self
            .snapshots
            .path(Side::Sent, self.shard_id, applied, term);
        let mut writer = self.snapshots.create(path).map_err(StoreError::Io)?;
        let tree = self.tree.clone();
        let descriptor = off_loop(move || {
            wallet_proto::fail_stop::catch(|| {
                for item in tree.scan_prefix(STATE_PREFIX) {
                    let (key, value) = item?;
                    // Checked before it leaves the node: a corrupt record is never shipped.
                    record::unframe(&value)?;
                    writer.record(&key, &value).map_err(StoreError::Io)?;
                }
                // Dropped on an error, the writer removes its unfinished file.
                writer.finish(false, None).map_err(StoreError::Io)
            })
            .unwrap_or_else(|panic| Err(StoreError::Corrupt(format!("sled panicked: {panic}"))))
        })
        .await?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(descriptor.encode().into());
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = term;
        let mut core = self.log.write();
        meta.set_conf_state(core.conf_state.clone());
        core.snapshot = Some(snapshot);
        core.snapshot_wanted = false;
        drop(core);
        self.snapshots
            .remove(Side::Sent, self.shard_id, u64::MAX, Some((applied, term)));
        crate::metrics::NODE
            .snapshot_bytes
            .get_or_create(&crate::metrics::SnapshotLabel { direction: "built" })
            .inc_by(descriptor.bytes);
        tracing::info!(
            shard = self.shard_id,
            index = applied,
            bytes = descriptor.bytes,
            "built a snapshot file"
        );
        Ok(())
    }

    /// Drops log entries up to and including `index` (already applied and, through a snapshot,
    /// recoverable by followers).
    pub fn compact(&mut self, index: u64) -> Result<(), StoreError> {
        // The checkpoint that makes the dropped entries unnecessary must be in sled first.
        if index > self.written_applied {
            self.checkpoint_now()?;
        }
        let mut core = self.log.write();
        if index <= core.truncated.0 || index > core.last_index() {
            return Ok(());
        }
        let term = core.entries[(index - core.first_index()) as usize].term;
        let mut batch = sled::Batch::default();
        for i in core.first_index()..=index {
            batch.remove(&log_key(i));
        }
        batch.insert(KEY_TRUNCATED, encode_u64s(&[index, term]));
        self.tree.apply_batch(batch)?;
        let dropped = (index - core.first_index() + 1) as usize;
        core.drop_front(dropped);
        core.truncated = (index, term);
        // A snapshot older than the log's start can no longer be sent; it is built afresh when a
        // follower needs one (and its memory is free until then).
        if core
            .snapshot
            .as_ref()
            .is_some_and(|snap| snap.get_metadata().index < index)
        {
            core.snapshot = None;
            drop(core);
            self.snapshots
                .remove(Side::Sent, self.shard_id, u64::MAX, None);
        }
        Ok(())
    }

    /// Whether the file of a snapshot from the leader is here, as long as its descriptor says:
    /// only then may raft-rs take the message. A file takes its name only once it checked out
    /// whole on receipt (CRC and every record, [`verify_received`]), so an install never meets a
    /// file it cannot use; this check stays cheap, on the replica's task.
    pub fn has_received(&self, snapshot: &Snapshot) -> Result<(), String> {
        let descriptor = Descriptor::decode(snapshot.get_data())?;
        let meta = snapshot.get_metadata();
        let path = self
            .snapshots
            .path(Side::Received, self.shard_id, meta.index, meta.term);
        // Opening checks the length; nothing is read.
        snapshot_file::Reader::open(&path, descriptor).map(|_| ())
    }

    /// Replaces this replica's log and state by a snapshot from the leader (read from the file
    /// it was received into, checked when raft-rs took the message, and again as it is read) and
    /// reloads the state machine from it. The file is kept until a later compaction: the install
    /// is durable only after the Ready's flush, and a crash before it finishes from the file.
    pub async fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        state_machine: &mut StateMachine,
    ) -> Result<(), StoreError> {
        // Older than the snapshot, which replaces all of it (a checkpoint being written must land
        // before the snapshot's batches, never after them).
        self.wait_checkpoint()?;
        self.unwritten.clear();
        self.unwritten_applied = None;
        self.written_applied = snapshot.get_metadata().index;
        let descriptor = Descriptor::decode(snapshot.get_data()).map_err(StoreError::Corrupt)?;
        let meta = snapshot.get_metadata();
        let path = self
            .snapshots
            .path(Side::Received, self.shard_id, meta.index, meta.term);
        // From here on a crash leaves the marker, and the next open finishes the install.
        self.tree.insert(KEY_INSTALLING, encode_pb(snapshot))?;
        // On a blocking thread: the node's other replicas go on while this one installs.
        let (tree, owned_meta) = (self.tree.clone(), meta.clone());
        let hard_state =
            off_loop(move || replace_state(&tree, &path, descriptor, &owned_meta)).await?;
        let mut core = self.log.write();
        core.hard_state = hard_state;
        core.conf_state = meta.get_conf_state().clone();
        core.truncated = (meta.index, meta.term);
        core.entries.clear();
        core.entry_bytes = 0;
        core.snapshot = None;
        drop(core);
        // A file this replica built while it led is of no use now, nor older received ones (the
        // installed one stays until a compaction: a crash before the flush finishes from it).
        self.snapshots
            .remove(Side::Sent, self.shard_id, u64::MAX, None);
        self.snapshots.remove(
            Side::Received,
            self.shard_id,
            meta.index.saturating_sub(1),
            None,
        );
        self.load_state(state_machine)
    }

    /// Removes received snapshot files up to `applied` (installed, or never needed).
    pub fn remove_received_up_to(&self, applied: u64) {
        self.snapshots
            .remove(Side::Received, self.shard_id, applied, None);
    }

    /// One page of an account's history, newest first (a checkpoint first, so the page is
    /// read from sled with everything applied).
    /// With filters (`validate::history_filter`), only matching entries, examining at most
    /// [`HISTORY_SCAN_MAX`] entries: a page that stopped there says where to go on from.
    pub fn history(
        &mut self,
        list: &ListTransfersRequest,
    ) -> Result<ListTransfersResponse, StoreError> {
        self.checkpoint_now()?;
        let account_id = list.account_id.as_str();
        let limit = match list.limit {
            0 => HISTORY_PAGE_DEFAULT,
            n => n.min(HISTORY_PAGE_MAX),
        } as usize;
        let start = history_prefix(account_id);
        let end = if list.cursor == 0 {
            history_key(account_id, u64::MAX)
        } else {
            history_key(account_id, list.cursor)
        };
        // sled 0.34 panics on some damaged pages: a corrupt record, not a crashed node.
        wallet_proto::fail_stop::catch(|| {
            let mut entries = Vec::with_capacity(limit);
            let mut next_cursor = 0;
            for (examined, item) in self.tree.range(start..end).rev().enumerate() {
                let (_, value) = item?;
                let entry: HistoryEntry = record::decode(&value)?;
                if entries.len() == limit {
                    next_cursor = entries.last().map(|e: &HistoryEntry| e.seq).unwrap_or(0);
                    break;
                }
                if examined == HISTORY_SCAN_MAX {
                    // The previous entry was the last one examined: go on below it.
                    next_cursor = entry.seq.saturating_add(1);
                    break;
                }
                if validate::history_matches(list, &entry) {
                    entries.push(entry);
                }
            }
            Ok(ListTransfersResponse {
                entries,
                next_cursor,
            })
        })
        .unwrap_or_else(|panic| Err(StoreError::Corrupt(format!("sled panicked: {panic}"))))
    }

    /// Reads one account straight from disk, checking its CRC (used to verify what memory holds).
    pub fn stored_account(&self, account_id: &str) -> Result<Option<Account>, StoreError> {
        match self.tree.get(account_key(account_id))? {
            Some(bytes) => Ok(Some(record::decode(&bytes)?)),
            None => Ok(None),
        }
    }
}

/// Runs `work` on a blocking thread and waits for it without holding up the node's runtime.
async fn off_loop<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Raft(format!("storage thread failed: {e}")))?
}

/// The received file of `snapshot`, checked whole (CRC, every record framed and in the state).
fn received_file(
    snapshots: &SnapshotDir,
    shard_id: u64,
    snapshot: &Snapshot,
) -> Result<(std::path::PathBuf, Descriptor), StoreError> {
    let descriptor = Descriptor::decode(snapshot.get_data()).map_err(StoreError::Corrupt)?;
    let meta = snapshot.get_metadata();
    let path = snapshots.path(Side::Received, shard_id, meta.index, meta.term);
    snapshot_file::verify(&path, descriptor, check_state_record).map_err(StoreError::Corrupt)?;
    Ok((path, descriptor))
}

/// Checks a snapshot file whole against its descriptor: its CRC, and every record framed and in
/// the state (run on receipt, on a blocking thread, before the file is handed on).
pub fn verify_received(path: &std::path::Path, descriptor: Descriptor) -> Result<u64, String> {
    snapshot_file::verify(path, descriptor, check_state_record)
}

/// A snapshot holds state records only, each CRC-framed.
fn check_state_record(key: &[u8], value: &[u8]) -> Result<(), String> {
    if !key.starts_with(STATE_PREFIX) {
        return Err("snapshot record outside the state".into());
    }
    record::unframe(value).map(|_| ()).map_err(|e| e.0)
}

/// Removes every key under `prefix`, a batch at a time.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<(), StoreError> {
    loop {
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for key in tree.scan_prefix(prefix).keys().take(INSTALL_BATCH_RECORDS) {
            batch.remove(key?);
            count += 1;
        }
        if count == 0 {
            return Ok(());
        }
        tree.apply_batch(batch)?;
    }
}

/// The steps of an install after its marker: drop the old state and log, write the file's
/// records, then (one batch) the Raft state of the snapshot and the marker's removal. Repeatable:
/// an open that finds the marker runs it again. Returns the HardState written.
fn replace_state(
    tree: &sled::Tree,
    path: &std::path::Path,
    descriptor: Descriptor,
    meta: &SnapshotMetadata,
) -> Result<HardState, StoreError> {
    remove_prefix(tree, STATE_PREFIX)?;
    remove_prefix(tree, &[LOG_PREFIX])?;
    let mut reader = snapshot_file::Reader::open(path, descriptor).map_err(StoreError::Corrupt)?;
    let mut batch = sled::Batch::default();
    let (mut count, mut bytes) = (0, 0);
    while let Some((key, value)) = reader.next_record().map_err(StoreError::Corrupt)? {
        // Checked when verified; checked again as it is read (the file could change meanwhile).
        check_state_record(&key, &value).map_err(StoreError::Corrupt)?;
        count += 1;
        bytes += key.len() + value.len();
        batch.insert(key, value);
        if count == INSTALL_BATCH_RECORDS || bytes >= INSTALL_BATCH_BYTES {
            tree.apply_batch(std::mem::take(&mut batch))?;
            (count, bytes) = (0, 0);
        }
    }
    if reader.crc() != descriptor.crc {
        return Err(StoreError::Corrupt(format!(
            "snapshot file {path:?} changed while it was installed"
        )));
    }
    let mut hard_state: HardState = match tree.get(KEY_HARD_STATE)? {
        Some(bytes) => decode_pb(&bytes)?,
        None => HardState::default(),
    };
    hard_state.term = hard_state.term.max(meta.term);
    hard_state.commit = meta.index;
    batch.insert(KEY_HARD_STATE, encode_pb(&hard_state));
    batch.insert(KEY_CONF_STATE, encode_pb(meta.get_conf_state()));
    batch.insert(KEY_TRUNCATED, encode_u64s(&[meta.index, meta.term]));
    batch.insert(KEY_APPLIED, encode_u64s(&[meta.index]));
    batch.remove(KEY_INSTALLING);
    tree.apply_batch(batch)?;
    Ok(hard_state)
}

#[cfg(test)]
#[path = "shard_store_tests.rs"]
mod tests;

impl Drop for ShardStore {
    /// A checkpoint still being written lands before the tree is reused (set aside, reopened).
    fn drop(&mut self) {
        if let Err(e) = self.wait_checkpoint() {
            tracing::error!(error = %e, "checkpoint failed while closing the store");
        }
    }
}
