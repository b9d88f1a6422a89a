//! The Raft logs of all replicas of a node as records of one [`SegmentLog`]: the second brick of
//! the engine that is to take the Raft log out of sled (README § Performance, "What is next" 1).
//! Not yet used by the write path; `ShardStore` still keeps the log in sled.
//!
//! A replica's log is already mirrored whole in memory (`shard_store::LogCore`), so the files
//! are only written while running and read once, at open: [`RaftWal::open`] replays them into
//! each replica's hard state, conf state, truncation point and entries. Records:
//! - `Entries`: entries from some index on, replacing any the log held from that index (raft-rs
//!   appends after truncating a conflicting tail);
//! - `HardState`, `ConfState`: the newest one counts;
//! - `Compact`: entries up to an index (with its term) are dropped;
//! - `Reset`: a snapshot was installed; no entries, truncated at its index and term.
//!
//! Retention: a segment may be removed once no replica needs any record in it. A replica needs
//! the segments of its newest hard state, conf state and truncation records, and those holding its
//! entries still in the log. The small records are written again at the start of every segment
//! ([`RaftWal::sync`] does so when the log rotates), so only entries pin old segments; the caller
//! compacts replicas whose entries do (see [`RaftWal::pinning`]). Removal syncs first: a record
//! that kills older ones must be on disk before they go.
//!
//! Checks: a write the replay would refuse (a hole, entries at or below the truncation point, a
//! compaction going back) is refused before anything is appended; the replay refuses a hole, and
//! a log short of its hard state's commit index — so a caller appends a Ready's entries before its
//! hard state. Not caught here: the loss of a whole tail (the newest segment, or damage in the
//! last segment read as a torn tail), which rolls back the hard state; the caller's durable marks
//! must catch a log that went back, as they do for sled's log today. Not yet here: forgetting a
//! replica moved off the node (its small records are written again at every new segment).

use std::collections::BTreeMap;
use std::path::Path;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState};

use crate::segment_log::{SegmentError, SegmentLog};

/// Bytes of entries per record, about: a Ready's entries beyond it go in several records (each a
/// valid append of its own, so a torn tail still leaves a valid log).
const RECORD_TARGET: usize = 8 * 1024 * 1024;

const ENTRIES: u8 = 1;
const HARD_STATE: u8 = 2;
const CONF_STATE: u8 = 3;
const COMPACT: u8 = 4;
const RESET: u8 = 5;

/// One replica's log as the files hold it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaLog {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// Index and term of the last entry dropped by compaction or a snapshot install.
    pub truncated: (u64, u64),
    /// Every entry after `truncated`, in order.
    pub entries: Vec<Entry>,
}

impl ReplicaLog {
    /// Index of its last entry (its truncation point when it has none).
    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.truncated.0, |e| e.index)
    }
}

/// Which segments a replica's live records are in.
#[derive(Clone, Debug, Default)]
struct Pins {
    hard_state: Option<u64>,
    conf_state: Option<u64>,
    truncated: Option<u64>,
    /// Runs of live entries: (first index of the run, segment), in index order; the last run
    /// ends at `last`.
    entries: Vec<(u64, u64)>,
    last: u64,
}

impl Pins {
    fn oldest(&self) -> Option<u64> {
        [self.hard_state, self.conf_state, self.truncated]
            .into_iter()
            .flatten()
            .chain(self.entries.iter().map(|&(_, segment)| segment))
            .min()
    }

    /// Entries `first..=last` replaced any from `first` on, in `segment`.
    fn replace_from(&mut self, first: u64, last: u64, segment: u64) {
        let keep = self.entries.partition_point(|&(start, _)| start < first);
        self.entries.truncate(keep);
        if self.entries.last().map(|&(_, s)| s) != Some(segment) {
            self.entries.push((first, segment));
        }
        self.last = last;
    }

    /// Entries up to `index` were dropped.
    fn drop_through(&mut self, index: u64) {
        if self.last <= index {
            self.entries.clear();
            return;
        }
        // Every run before the one holding `index + 1` is gone.
        let holding = self
            .entries
            .partition_point(|&(start, _)| start <= index + 1)
            .saturating_sub(1);
        self.entries.drain(..holding);
    }
}

/// Why the log could not be read back.
#[derive(Debug)]
pub enum WalError {
    Segment(SegmentError),
    /// A record that does not decode, or entries that do not follow the log they extend.
    Corrupt(String),
    /// A write that would leave files the replay refuses (a hole in the log, entries at or
    /// below its truncation, a compaction going back): nothing was written.
    Refused(String),
}

impl std::fmt::Display for WalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalError::Segment(e) => write!(f, "{e}"),
            WalError::Corrupt(why) => write!(f, "raft log files corrupt: {why}"),
            WalError::Refused(why) => write!(f, "raft log write refused: {why}"),
        }
    }
}

impl std::error::Error for WalError {}

impl From<SegmentError> for WalError {
    fn from(e: SegmentError) -> Self {
        WalError::Segment(e)
    }
}

/// The node's Raft log files.
pub struct RaftWal {
    log: SegmentLog,
    pins: BTreeMap<u64, Pins>,
    /// The small records of each replica, written again at the start of every segment.
    state: BTreeMap<u64, (HardState, ConfState, (u64, u64))>,
}

impl RaftWal {
    /// Opens the files in `dir` and replays them: every replica's log, by shard id.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(RaftWal, BTreeMap<u64, ReplicaLog>), WalError> {
        let (log, records) = SegmentLog::open(dir, segment_bytes)?;
        let mut logs: BTreeMap<u64, ReplicaLog> = BTreeMap::new();
        let mut replays: BTreeMap<u64, Replay> = BTreeMap::new();
        for (position, payload) in records {
            let (shard, record) = decode(&payload)?;
            let replica = logs.entry(shard).or_default();
            let replay = replays.entry(shard).or_default();
            replay
                .apply(replica, record, position.segment)
                .map_err(|why| WalError::Corrupt(format!("shard {shard}: {why}")))?;
        }
        let mut pins = BTreeMap::new();
        for (shard, replay) in replays {
            let log = logs.entry(shard).or_default();
            let pin = replay
                .finish(log)
                .map_err(|why| WalError::Corrupt(format!("shard {shard}: {why}")))?;
            pins.insert(shard, pin);
        }
        let state = logs
            .iter()
            .map(|(&shard, l)| {
                (
                    shard,
                    (l.hard_state.clone(), l.conf_state.clone(), l.truncated),
                )
            })
            .collect();
        Ok((RaftWal { log, pins, state }, logs))
    }

    /// Appends `entries` (consecutive, non-empty) to `shard`'s log, replacing any it held from
    /// the first one's index on.
    pub fn append(&mut self, shard: u64, entries: &[Entry]) -> Result<(), WalError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let last = entries.last().map_or(first.index, |e| e.index);
        let truncated = self.state.get(&shard).map_or(0, |s| s.2 .0);
        let end = self.pins.get(&shard).map_or(0, |p| p.last).max(truncated);
        if first.index <= truncated || first.index > end.saturating_add(1) {
            return Err(WalError::Refused(format!(
                "shard {shard}: entries from {} on a log truncated at {truncated} ending at {end}",
                first.index
            )));
        }
        if !consecutive(entries) {
            return Err(WalError::Refused(format!(
                "shard {shard}: entries from {} not consecutive",
                first.index
            )));
        }
        // In records of about RECORD_TARGET bytes: a catch-up can hand over many large entries.
        let mut rest = entries;
        while let Some(head) = rest.first() {
            let mut bytes = 0usize;
            let take = rest
                .iter()
                .position(|e| {
                    bytes = bytes.saturating_add(e.compute_size() as usize);
                    bytes > RECORD_TARGET
                })
                .unwrap_or(rest.len())
                .max(1);
            let (group, after) = rest.split_at(take);
            let group_last = group.last().map_or(head.index, |e| e.index);
            let at = self.log.append(&entries_record(shard, group)?)?;
            self.pins
                .entry(shard)
                .or_default()
                .replace_from(head.index, group_last, at.segment);
            rest = after;
        }
        debug_assert_eq!(self.pins.get(&shard).map(|p| p.last), Some(last));
        Ok(())
    }

    /// Records `shard`'s hard state.
    pub fn set_hard_state(&mut self, shard: u64, state: &HardState) -> Result<(), WalError> {
        let at = self.append_message(HARD_STATE, shard, state)?;
        self.pins.entry(shard).or_default().hard_state = Some(at);
        self.state.entry(shard).or_default().0 = state.clone();
        Ok(())
    }

    /// Records `shard`'s conf state.
    pub fn set_conf_state(&mut self, shard: u64, state: &ConfState) -> Result<(), WalError> {
        let at = self.append_message(CONF_STATE, shard, state)?;
        self.pins.entry(shard).or_default().conf_state = Some(at);
        self.state.entry(shard).or_default().1 = state.clone();
        Ok(())
    }

    /// Records that `shard`'s entries up to `index` (of `term`) were compacted away.
    pub fn compact(&mut self, shard: u64, index: u64, term: u64) -> Result<(), WalError> {
        let truncated = self.state.get(&shard).map_or(0, |s| s.2 .0);
        if index < truncated {
            return Err(WalError::Refused(format!(
                "shard {shard}: compaction to {index} below its truncation at {truncated}"
            )));
        }
        self.append_point(COMPACT, shard, index, term)?;
        self.pins.entry(shard).or_default().drop_through(index);
        Ok(())
    }

    /// Records that a snapshot at `index` (of `term`) replaced `shard`'s whole log.
    pub fn reset(&mut self, shard: u64, index: u64, term: u64) -> Result<(), WalError> {
        self.append_point(RESET, shard, index, term)?;
        let pins = self.pins.entry(shard).or_default();
        pins.entries.clear();
        pins.last = index;
        Ok(())
    }

    /// Makes everything appended durable. When that fills the segment, every replica's small
    /// records are written again at the start of the next one (and synced), so that only
    /// entries keep old segments.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let before = self.log.active_id();
        self.log.sync()?;
        if self.log.active_id() != before {
            let state: Vec<_> = self
                .state
                .iter()
                .map(|(&shard, s)| (shard, s.clone()))
                .collect();
            for (shard, (hard, conf, (index, term))) in state {
                self.set_hard_state(shard, &hard)?;
                self.set_conf_state(shard, &conf)?;
                self.append_point(COMPACT, shard, index, term)?;
            }
            self.log.sync()?;
        }
        Ok(())
    }

    /// Removes the segments no replica needs any more. Returns how many. Syncs first: which
    /// records are needed follows from every record appended, and a record that kills older ones
    /// (a compaction, a conflicting append) must be on disk before they go.
    pub fn remove_unneeded(&mut self) -> Result<usize, WalError> {
        self.sync()?;
        let oldest = self
            .pins
            .values()
            .filter_map(Pins::oldest)
            .min()
            .unwrap_or(u64::MAX);
        Ok(self.log.remove_before(oldest)?)
    }

    /// The replicas whose entries keep the oldest segment: they should compact.
    pub fn pinning(&self) -> Vec<u64> {
        let Some(&oldest) = self.log.segments().first() else {
            return Vec::new();
        };
        if self.log.segments().len() < 2 {
            return Vec::new();
        }
        self.pins
            .iter()
            .filter(|(_, p)| p.entries.first().is_some_and(|&(_, s)| s == oldest))
            .map(|(&shard, _)| shard)
            .collect()
    }

    /// Segment ids on disk, oldest first.
    pub fn segments(&self) -> &[u64] {
        self.log.segments()
    }

    fn append_message<M: PbMessage>(
        &mut self,
        kind: u8,
        shard: u64,
        message: &M,
    ) -> Result<u64, WalError> {
        let mut payload = header(kind, shard);
        message
            .write_to_vec(&mut payload)
            .map_err(|e| WalError::Corrupt(format!("record does not encode: {e}")))?;
        Ok(self.log.append(&payload)?.segment)
    }

    fn append_point(
        &mut self,
        kind: u8,
        shard: u64,
        index: u64,
        term: u64,
    ) -> Result<u64, WalError> {
        let mut payload = header(kind, shard);
        payload.extend_from_slice(&index.to_le_bytes());
        payload.extend_from_slice(&term.to_le_bytes());
        let at = self.log.append(&payload)?.segment;
        let pin = self.pins.entry(shard).or_default();
        pin.truncated = Some(at);
        let state = self.state.entry(shard).or_default();
        state.2 = (index, term);
        Ok(at)
    }
}

/// Whether each entry's index follows the one before it (checked on write and on replay).
fn consecutive(entries: &[Entry]) -> bool {
    entries
        .windows(2)
        .all(|w| Some(w[1].index) == w[0].index.checked_add(1))
}

/// The record of `entries` appended to `shard`'s log.
fn entries_record(shard: u64, entries: &[Entry]) -> Result<Vec<u8>, WalError> {
    let count = u32::try_from(entries.len())
        .map_err(|_| WalError::Refused(format!("{} entries in one record", entries.len())))?;
    let mut payload = header(ENTRIES, shard);
    payload.extend_from_slice(&count.to_le_bytes());
    for entry in entries {
        // Encoded in place (the size is cached by `compute_size` for the write).
        let len = entry.compute_size();
        payload.extend_from_slice(&len.to_le_bytes());
        let before = payload.len();
        entry
            .write_to_vec(&mut payload)
            .map_err(|e| WalError::Refused(format!("entry does not encode: {e}")))?;
        debug_assert_eq!(payload.len() - before, len as usize);
    }
    Ok(payload)
}

fn header(kind: u8, shard: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    payload.push(kind);
    payload.extend_from_slice(&shard.to_le_bytes());
    payload
}

/// A decoded record.
enum Record {
    Entries(Vec<Entry>),
    HardState(HardState),
    ConfState(ConfState),
    Compact(u64, u64),
    Reset(u64, u64),
}

/// Reads `n` bytes at `*at` of `bytes`, moving `*at` past them.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], WalError> {
    let end = at
        .checked_add(n)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| WalError::Corrupt("record cut short".into()))?;
    let out = &bytes[*at..end];
    *at = end;
    Ok(out)
}

fn take_u32(bytes: &[u8], at: &mut usize) -> Result<u32, WalError> {
    let b = take(bytes, at, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn take_u64(bytes: &[u8], at: &mut usize) -> Result<u64, WalError> {
    let mut out = [0u8; 8];
    out.copy_from_slice(take(bytes, at, 8)?);
    Ok(u64::from_le_bytes(out))
}

fn decode(payload: &[u8]) -> Result<(u64, Record), WalError> {
    let mut at = 0;
    let kind = take(payload, &mut at, 1)?[0];
    let shard = take_u64(payload, &mut at)?;
    let rest = &payload[at..];
    let bad = |e: protobuf::ProtobufError| WalError::Corrupt(format!("record: {e}"));
    let record = match kind {
        ENTRIES => {
            let count = take_u32(payload, &mut at)?;
            let mut entries = Vec::new();
            for _ in 0..count {
                let len = take_u32(payload, &mut at)? as usize;
                entries.push(Entry::parse_from_bytes(take(payload, &mut at, len)?).map_err(bad)?);
            }
            if at != payload.len() {
                return Err(WalError::Corrupt("bytes after the entries".into()));
            }
            Record::Entries(entries)
        }
        HARD_STATE => Record::HardState(HardState::parse_from_bytes(rest).map_err(bad)?),
        CONF_STATE => Record::ConfState(ConfState::parse_from_bytes(rest).map_err(bad)?),
        COMPACT | RESET => {
            let index = take_u64(payload, &mut at)?;
            let term = take_u64(payload, &mut at)?;
            if kind == COMPACT {
                Record::Compact(index, term)
            } else {
                Record::Reset(index, term)
            }
        }
        other => return Err(WalError::Corrupt(format!("unknown record kind {other}"))),
    };
    Ok((shard, record))
}

/// One replica's records as they are replayed: the log as a map from index to entry, so that
/// records of entries that are dead — replaced by a later conflicting append or dropped by a later
/// compaction, and kept only because their segment also holds records still needed — fall away
/// when the record that killed them comes, as they did when they were written.
#[derive(Default)]
struct Replay {
    entries: BTreeMap<u64, Entry>,
    pins: Pins,
}

impl Replay {
    /// Replays one record.
    fn apply(&mut self, log: &mut ReplicaLog, record: Record, segment: u64) -> Result<(), String> {
        match record {
            Record::Entries(entries) => {
                let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                    return Ok(());
                };
                let (first, last) = (first.index, last.index);
                if !consecutive(&entries) {
                    return Err(format!("entries from {first} not consecutive"));
                }
                if first <= log.truncated.0 {
                    return Err(format!(
                        "entries from {first} at or below the log's truncation at {}",
                        log.truncated.0
                    ));
                }
                self.entries.split_off(&first);
                self.entries
                    .extend(entries.into_iter().map(|e| (e.index, e)));
                self.pins.replace_from(first, last, segment);
            }
            Record::HardState(state) => {
                log.hard_state = state;
                self.pins.hard_state = Some(segment);
            }
            Record::ConfState(state) => {
                log.conf_state = state;
                self.pins.conf_state = Some(segment);
            }
            Record::Compact(index, term) => {
                // At the same index (a record written again at a new segment), the same term.
                if index >= log.truncated.0 {
                    self.entries = match index.checked_add(1) {
                        Some(next) => self.entries.split_off(&next),
                        None => BTreeMap::new(),
                    };
                    log.truncated = (index, term);
                }
                self.pins.drop_through(index);
                self.pins.truncated = Some(segment);
            }
            Record::Reset(index, term) => {
                self.entries.clear();
                log.truncated = (index, term);
                self.pins.entries.clear();
                self.pins.last = index;
                self.pins.truncated = Some(segment);
            }
        }
        Ok(())
    }

    /// Moves the replayed entries into the log; they must follow its truncation point without a
    /// hole, and reach the hard state's commit index (entries are written before the hard state
    /// that commits them, so a log short of its commit lost records).
    fn finish(self, log: &mut ReplicaLog) -> Result<Pins, String> {
        let mut expected = log.truncated.0;
        for (index, entry) in self.entries {
            expected = expected
                .checked_add(1)
                .ok_or_else(|| "entries beyond the last index".to_string())?;
            if index != expected {
                return Err(format!(
                    "entries missing from index {expected} to {}",
                    index - 1
                ));
            }
            log.entries.push(entry);
        }
        if log.hard_state.commit > log.last_index() {
            return Err(format!(
                "commit index {} beyond the last entry {}",
                log.hard_state.commit,
                log.last_index()
            ));
        }
        Ok(self.pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(index: u64, term: u64, data: u8) -> Entry {
        Entry {
            index,
            term,
            data: vec![data; 20 + (index % 50) as usize].into(),
            ..Default::default()
        }
    }

    /// Opening the files in `dir` must fail as corrupt, saying `what`.
    fn assert_corrupt(dir: &Path, what: &str) {
        match RaftWal::open(dir, 1 << 20) {
            Err(WalError::Corrupt(why)) => assert!(why.contains(what), "{why}"),
            other => panic!("expected corruption, got {:?}", other.map(|(_, l)| l)),
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn conf_state(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_conflicting_tail_compaction_and_reset_replay_as_raft_did_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, logs) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        assert!(logs.is_empty());
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, 1)).collect();
        wal.append(7, &entries).unwrap();
        wal.set_hard_state(7, &hard_state(1, 1, 7)).unwrap();
        wal.set_conf_state(7, &conf_state(&[1, 2, 3])).unwrap();
        // A new leader's entries from 8 replace 8..=10.
        let tail: Vec<Entry> = (8..=9).map(|i| entry(i, 2, 2)).collect();
        wal.append(7, &tail).unwrap();
        wal.compact(7, 5, 1).unwrap();
        wal.append(9, &[entry(1, 1, 9)]).unwrap();
        wal.reset(9, 100, 4).unwrap();
        wal.append(9, &[entry(101, 4, 9)]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, logs) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        let seven = &logs[&7];
        assert_eq!(seven.truncated, (5, 1));
        let indexes: Vec<(u64, u64)> = seven.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(indexes, vec![(6, 1), (7, 1), (8, 2), (9, 2)]);
        assert_eq!(seven.hard_state, hard_state(1, 1, 7));
        assert_eq!(seven.conf_state, conf_state(&[1, 2, 3]));
        let nine = &logs[&9];
        assert_eq!(nine.truncated, (100, 4));
        assert_eq!(nine.entries, vec![entry(101, 4, 9)]);
    }

    #[test]
    fn a_hole_in_a_log_is_refused_when_written_and_corruption_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        wal.append(1, &[entry(1, 1, 0), entry(2, 1, 0)]).unwrap();
        let refused = wal.append(1, &[entry(4, 1, 0)]);
        assert!(matches!(refused, Err(WalError::Refused(_))), "{refused:?}");
        wal.sync().unwrap();
        drop(wal);
        // The same hole written past the check (as damage would leave it).
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(&entries_record(1, &[entry(4, 1, 0)]).unwrap())
            .unwrap();
        log.sync().unwrap();
        drop(log);
        assert_corrupt(dir.path(), "shard 1");
    }

    #[test]
    fn large_appends_go_in_several_records_that_replay_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        let big = |index: u64| Entry {
            index,
            term: 1,
            data: vec![index as u8; 3 * 1024 * 1024].into(),
            ..Default::default()
        };
        let entries: Vec<Entry> = (1..=6).map(big).collect();
        wal.append(4, &entries).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            records.len(),
            3,
            "two entries of 3 MiB per record of about 8 MiB"
        );
        let (_, logs) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(logs[&4].entries, entries);
    }

    #[test]
    fn a_log_short_of_its_commit_index_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = RaftWal::open(dir.path(), 1 << 20).unwrap();
        wal.append(3, &[entry(1, 1, 0), entry(2, 1, 0)]).unwrap();
        // The hard state reached the disk, the entries it commits did not (written in the wrong
        // order, or lost).
        wal.set_hard_state(3, &hard_state(1, 1, 5)).unwrap();
        wal.sync().unwrap();
        drop(wal);
        assert_corrupt(dir.path(), "commit index 5");
    }

    #[test]
    fn compacted_logs_keep_only_a_few_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = RaftWal::open(dir.path(), 400).unwrap();
        wal.set_hard_state(1, &hard_state(1, 1, 0)).unwrap();
        wal.set_hard_state(2, &hard_state(1, 1, 0)).unwrap();
        let mut most = 0;
        for i in 1..=300u64 {
            wal.append(1, &[entry(i, 1, 1)]).unwrap();
            if i % 10 == 0 {
                wal.compact(1, i - 5, 1).unwrap();
            }
            wal.sync().unwrap();
            wal.remove_unneeded().unwrap();
            most = most.max(wal.segments().len());
        }
        // Shard 2 never writes again: its records are carried forward, never pinning.
        assert!(wal.segments()[0] > 50, "{:?}", wal.segments());
        // Live entries (5 to 15 of about 70 bytes) span a few 400-byte segments, not 70.
        assert!(most <= 8, "at most {most} segments");
        drop(wal);
        let (_, logs) = RaftWal::open(dir.path(), 400).unwrap();
        assert_eq!(logs[&1].truncated, (295, 1));
        assert_eq!(logs[&1].entries.len(), 5);
        assert_eq!(logs[&2].hard_state, hard_state(1, 1, 0));
    }

    /// What the files must give back: each replica's log as last synced.
    #[derive(Clone, Debug, Default)]
    struct Model {
        logs: BTreeMap<u64, ReplicaLog>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Append {
            shard: u8,
            back: u8,
            count: u8,
            term: u8,
        },
        HardState {
            shard: u8,
            commit: u16,
        },
        ConfState {
            shard: u8,
            voters: u8,
        },
        Compact {
            shard: u8,
            keep: u8,
        },
        Reset {
            shard: u8,
            ahead: u16,
        },
        Sync,
        Retain,
        /// `remove_unneeded` right after unsynced writes.
        Remove,
        /// A write the replay would refuse: refused, nothing changes.
        Illegal {
            shard: u8,
            kind: u8,
        },
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..8u8, 0..4u8, 1..6u8, 0..3u8)
                .prop_map(|(shard, back, count, term)| Op::Append { shard, back, count, term }),
            2 => (0..8u8, any::<u16>()).prop_map(|(shard, commit)| Op::HardState { shard, commit }),
            1 => (0..8u8, 1..5u8).prop_map(|(shard, voters)| Op::ConfState { shard, voters }),
            2 => (0..8u8, 0..8u8).prop_map(|(shard, keep)| Op::Compact { shard, keep }),
            1 => (0..8u8, any::<u16>()).prop_map(|(shard, ahead)| Op::Reset { shard, ahead }),
            3 => Just(Op::Sync),
            2 => Just(Op::Retain),
            2 => Just(Op::Remove),
            1 => (0..8u8, 0..3u8).prop_map(|(shard, kind)| Op::Illegal { shard, kind }),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// Any sequence of appends (with conflicting tails), state changes, compactions,
        /// snapshot resets, syncs, rotations, retention and reopens replays to exactly what was
        /// last synced, and retention never removes a record still needed.
        #[test]
        fn replay_gives_back_what_was_synced(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().unwrap();
            let segment_bytes = 400;
            let (mut wal, _) = RaftWal::open(dir.path(), segment_bytes).unwrap();
            let mut model = Model::default();
            let mut synced = Model::default();
            let mut data = 0u8;
            for op in ops {
                match op {
                    Op::Append { shard, back, count, term } => {
                        let log = model.logs.entry(shard as u64).or_default();
                        let last = log.last_index();
                        // Never below the commit index: committed entries are never replaced.
                        let first = last
                            .saturating_sub(back as u64)
                            .max(log.truncated.0)
                            .max(log.hard_state.commit)
                            + 1;
                        let base_term = log.entries.last().map_or(log.truncated.1, |e| e.term);
                        data = data.wrapping_add(1);
                        let new: Vec<Entry> = (first..first + count as u64)
                            .map(|i| entry(i, base_term + term as u64, data))
                            .collect();
                        wal.append(shard as u64, &new).unwrap();
                        let keep = (first - log.truncated.0 - 1) as usize;
                        log.entries.truncate(keep);
                        log.entries.extend(new);
                    }
                    Op::HardState { shard, commit } => {
                        let log = model.logs.entry(shard as u64).or_default();
                        // Commits only what the log holds, and never goes back.
                        let commit = (commit as u64)
                            .min(log.last_index())
                            .max(log.hard_state.commit);
                        let state = hard_state(3, 1, commit);
                        wal.set_hard_state(shard as u64, &state).unwrap();
                        model.logs.entry(shard as u64).or_default().hard_state = state;
                    }
                    Op::ConfState { shard, voters } => {
                        let state = conf_state(&(1..=voters as u64).collect::<Vec<_>>());
                        wal.set_conf_state(shard as u64, &state).unwrap();
                        model.logs.entry(shard as u64).or_default().conf_state = state;
                    }
                    Op::Compact { shard, keep } => {
                        let log = model.logs.entry(shard as u64).or_default();
                        let drop = log.entries.len().saturating_sub(keep as usize);
                        if drop > 0 {
                            let last_dropped = log.entries[drop - 1].clone();
                            wal.compact(shard as u64, last_dropped.index, last_dropped.term).unwrap();
                            log.entries.drain(..drop);
                            log.truncated = (last_dropped.index, last_dropped.term);
                        }
                    }
                    Op::Reset { shard, ahead } => {
                        let log = model.logs.entry(shard as u64).or_default();
                        let index = log.last_index() + ahead as u64 % 40;
                        let term = log.entries.last().map_or(log.truncated.1, |e| e.term) + 1;
                        wal.reset(shard as u64, index, term).unwrap();
                        log.entries.clear();
                        log.truncated = (index, term);
                    }
                    Op::Sync => {
                        wal.sync().unwrap();
                        synced = model.clone();
                    }
                    Op::Retain => {
                        // As a node would: compact what pins the oldest segment, then remove.
                        for shard in wal.pinning() {
                            let log = model.logs.entry(shard).or_default();
                            if let Some(last) = log.entries.last().cloned() {
                                wal.compact(shard, last.index, last.term).unwrap();
                                log.entries.clear();
                                log.truncated = (last.index, last.term);
                            }
                        }
                        wal.sync().unwrap();
                        synced = model.clone();
                        wal.remove_unneeded().unwrap();
                    }
                    Op::Remove => {
                        wal.remove_unneeded().unwrap();
                        synced = model.clone();
                    }
                    Op::Illegal { shard, kind } => {
                        let log = model.logs.entry(shard as u64).or_default();
                        let refused = match kind {
                            0 => wal.append(shard as u64, &[entry(log.last_index() + 2, 9, 0)]),
                            1 if log.truncated.0 > 0 => {
                                wal.append(shard as u64, &[entry(log.truncated.0, 9, 0)])
                            }
                            2 if log.truncated.0 > 0 => {
                                wal.compact(shard as u64, log.truncated.0 - 1, 1)
                            }
                            _ => Err(WalError::Refused("nothing to try".into())),
                        };
                        prop_assert!(matches!(refused, Err(WalError::Refused(_))), "{:?}", refused);
                    }
                    Op::Reopen => {
                        drop(wal);
                        let (reopened, logs) = RaftWal::open(dir.path(), segment_bytes).unwrap();
                        wal = reopened;
                        let expected: BTreeMap<u64, ReplicaLog> = synced
                            .logs
                            .iter()
                            .filter(|(_, l)| **l != ReplicaLog::default())
                            .map(|(&s, l)| (s, l.clone()))
                            .collect();
                        let got: BTreeMap<u64, ReplicaLog> = logs
                            .into_iter()
                            .filter(|(_, l)| *l != ReplicaLog::default())
                            .collect();
                        prop_assert_eq!(got, expected);
                        model = synced.clone();
                    }
                }
            }
            wal.sync().unwrap();
            wal.remove_unneeded().unwrap();
            drop(wal);
            let (_, logs) = RaftWal::open(dir.path(), segment_bytes).unwrap();
            let got: BTreeMap<u64, ReplicaLog> =
                logs.into_iter().filter(|(_, l)| *l != ReplicaLog::default()).collect();
            let expected: BTreeMap<u64, ReplicaLog> = model
                .logs
                .into_iter()
                .filter(|(_, l)| *l != ReplicaLog::default())
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
