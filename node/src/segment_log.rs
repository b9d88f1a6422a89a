//! An append-only log of CRC-checked records in numbered segment files: the first brick of the
//! storage engine that is to take the append-only data (Raft log, history rows, request records)
//! out of sled (README § Performance, "What is next" 1). Not yet used by the write path.
//!
//! Why its own files: appending bytes to a file and `fdatasync`ing it is one write and one sync,
//! where sled inserts a key per record (~20 µs of CPU each), fsyncs whatever else it holds
//! (checkpoints) with it, and never fsyncs its blob files. Retention is the removal of whole
//! segments, so the disk is bounded by what the caller still needs.
//!
//! Layout: `<dir>/<id, 20 digits>.seg`, each starting with a header (`WSG1` + id, u64 LE), then
//! records `len (u32 LE) | crc32 of len and payload (u32 LE) | payload`. Only the last segment is
//! ever written; it is synced before the next one is created, so every earlier segment is whole.
//! What a crash leaves at the end of the last segment (a record cut short, or bytes that fail
//! their check) was never synced, hence never acknowledged: [`SegmentLog::open`] cuts it off. A
//! record failing its check in an earlier segment is corruption, reported, never skipped. (Damage
//! inside the last segment's synced part cannot be told from a torn tail: what follows it is cut
//! off too; the caller's own durable marks must catch a log that went back.)

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"WSG1";
const SEGMENT_HEADER: u64 = 12;
const RECORD_HEADER: usize = 8;
/// Largest record accepted: a length beyond it is damage, not a record.
pub const RECORD_MAX: usize = 256 * 1024 * 1024;

/// Where a record starts: its segment and its byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// The records of a log, oldest first, each with its position.
pub type Records = Vec<(Position, Vec<u8>)>;

/// Why the log could not be opened or read.
#[derive(Debug)]
pub enum SegmentError {
    Io(std::io::Error),
    /// A record or header that fails its check where no crash can have left one.
    Corrupt(String),
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Io(e) => write!(f, "segment log: {e}"),
            SegmentError::Corrupt(why) => write!(f, "segment log corrupt: {why}"),
        }
    }
}

impl std::error::Error for SegmentError {}

impl From<std::io::Error> for SegmentError {
    fn from(e: std::io::Error) -> Self {
        SegmentError::Io(e)
    }
}

/// The open log: its directory, its segments and the last one, being appended to.
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Ids of the segments on disk, oldest first; the last is `active`'s.
    segments: Vec<u64>,
    active: File,
    /// Bytes of the active segment already written to the file.
    written: u64,
    /// Records appended since the last sync, not yet written.
    pending: Vec<u8>,
    /// A write, sync or segment creation failed: what reached the disk is unknown (a failed
    /// fsync may have dropped dirty pages), so the log refuses all further appends and syncs.
    failed: bool,
}

impl SegmentLog {
    /// Opens the log in `dir` (created when missing) and returns every record in it, oldest
    /// first, with its position. A new segment is started once the active one holds
    /// `segment_bytes`. A torn tail of the last segment is cut off (and that cut synced).
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(SegmentLog, Records), SegmentError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(id) = segment_id(&entry?.file_name()) {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        // Segments are removed oldest first, one synced unlink at a time, so what is left is
        // always a run of consecutive ids: a hole is damage.
        if let Some(pair) = segments.windows(2).find(|p| p[1] != p[0] + 1) {
            return Err(SegmentError::Corrupt(format!(
                "segments {} and {} with none between",
                pair[0], pair[1]
            )));
        }
        let mut records = Vec::new();
        let mut end_of_last = SEGMENT_HEADER;
        for (i, &id) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            end_of_last = read_segment(&segment_path(dir, id), id, last, &mut records)?;
        }
        let (active, written) = match segments.last() {
            Some(&id) => {
                let path = segment_path(dir, id);
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if file.metadata()?.len() != end_of_last {
                    // What a crash left after the last whole record: never synced, never
                    // acknowledged.
                    file.set_len(end_of_last)?;
                }
                if end_of_last == SEGMENT_HEADER {
                    // Possibly created without its header reaching the disk.
                    file.set_len(0)?;
                    write_header(&file, id)?;
                }
                // What a process crash left unsynced is in the page cache and was just read:
                // synced now, so that everything `open` returns is durable (a power cut can no
                // longer take it from under records appended later).
                file.sync_all()?;
                // Its directory entry too (a crash may have come before `create_segment`'s).
                File::open(dir)?.sync_all()?;
                (file, end_of_last)
            }
            None => {
                segments.push(1);
                (create_segment(dir, 1)?, SEGMENT_HEADER)
            }
        };
        let log = SegmentLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            active,
            written,
            pending: Vec::new(),
            failed: false,
        };
        Ok((log, records))
    }

    /// Appends a record (written at the next [`sync`](Self::sync)) and returns its position.
    /// A record over [`RECORD_MAX`] is refused.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, SegmentError> {
        self.check_usable()?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l as usize <= RECORD_MAX)
            .ok_or_else(|| {
                SegmentError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("record of {} bytes", payload.len()),
                ))
            })?;
        let position = Position {
            segment: self.active_id(),
            offset: self.written + self.pending.len() as u64,
        };
        let len_bytes = len.to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len_bytes);
        crc.update(payload);
        self.pending.extend_from_slice(&len_bytes);
        self.pending
            .extend_from_slice(&crc.finalize().to_le_bytes());
        self.pending.extend_from_slice(payload);
        Ok(position)
    }

    /// Writes what was appended and makes it durable; then starts a new segment if the active
    /// one is full (the full one is synced first, so only the last segment can have a torn tail).
    pub fn sync(&mut self) -> Result<(), SegmentError> {
        self.check_usable()?;
        let synced = self.write_and_sync();
        self.failed = synced.is_err();
        synced
    }

    fn write_and_sync(&mut self) -> Result<(), SegmentError> {
        use std::os::unix::fs::FileExt;
        if !self.pending.is_empty() {
            self.active.write_all_at(&self.pending, self.written)?;
            self.active.sync_data()?;
            self.written += self.pending.len() as u64;
            self.pending.clear();
        }
        if self.written >= self.segment_bytes && self.written > SEGMENT_HEADER {
            let id = self
                .active_id()
                .checked_add(1)
                .ok_or_else(|| SegmentError::Corrupt("segment ids exhausted".into()))?;
            self.active = create_segment(&self.dir, id)?;
            self.segments.push(id);
            self.written = SEGMENT_HEADER;
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), SegmentError> {
        if self.failed {
            return Err(SegmentError::Io(std::io::Error::other(
                "segment log failed earlier: reopen it",
            )));
        }
        Ok(())
    }

    /// The segment records are appended to now.
    pub fn active_id(&self) -> u64 {
        self.segments.last().copied().unwrap_or(1)
    }

    /// Ids of the segments on disk, oldest first.
    pub fn segments(&self) -> &[u64] {
        &self.segments
    }

    /// Removes every segment older than `segment` (never the active one): retention. Returns
    /// how many it removed.
    pub fn remove_before(&mut self, segment: u64) -> Result<usize, SegmentError> {
        let segment = segment.min(self.active_id());
        let mut removed = 0;
        // Oldest first, each unlink synced before the next: a crash leaves consecutive ids.
        while self.segments.first().is_some_and(|&id| id < segment) {
            match std::fs::remove_file(segment_path(&self.dir, self.segments[0])) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            File::open(&self.dir)?.sync_all()?;
            self.segments.remove(0);
            removed += 1;
        }
        Ok(removed)
    }

    /// Reads back the record at `position` (written and synced before), checking it.
    pub fn read(&self, position: Position) -> Result<Vec<u8>, SegmentError> {
        let mut file = File::open(segment_path(&self.dir, position.segment))?;
        let size = file.metadata()?.len();
        let out_of_range =
            || SegmentError::Corrupt(format!("record at {position:?}: out of its segment"));
        if position.offset < SEGMENT_HEADER {
            return Err(out_of_range());
        }
        file.seek(SeekFrom::Start(position.offset))?;
        let mut header = [0u8; RECORD_HEADER];
        file.read_exact(&mut header)?;
        let len = record_len(&header)
            .filter(|&len| {
                position
                    .offset
                    .checked_add((RECORD_HEADER + len) as u64)
                    .is_some_and(|end| end <= size)
            })
            .ok_or_else(out_of_range)?;
        let mut payload = vec![0u8; len];
        file.read_exact(&mut payload)?;
        if !crc_matches(&header, &payload) {
            return Err(SegmentError::Corrupt(format!(
                "record at {position:?} fails its check"
            )));
        }
        Ok(payload)
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The id of a segment file's name, written exactly as [`segment_path`] writes it.
fn segment_id(name: &std::ffi::OsStr) -> Option<u64> {
    let digits = name.to_str()?.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn write_header(mut file: &File, id: u64) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(MAGIC)?;
    file.write_all(&id.to_le_bytes())
}

/// Creates segment `id` with its header, durable with its directory entry.
fn create_segment(dir: &Path, id: u64) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, id))?;
    write_header(&file, id)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

fn record_len(header: &[u8; RECORD_HEADER]) -> Option<usize> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    (len <= RECORD_MAX).then_some(len)
}

fn crc_matches(header: &[u8; RECORD_HEADER], payload: &[u8]) -> bool {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[..4]);
    crc.update(payload);
    crc.finalize().to_le_bytes() == header[4..]
}

/// Reads segment `id`'s records into `records`; returns where its last whole record ends. In the
/// last segment a record cut short or failing its check ends the log (a torn tail); in any other
/// it is corruption.
fn read_segment(
    path: &Path,
    id: u64,
    last: bool,
    records: &mut Records,
) -> Result<u64, SegmentError> {
    let bytes = std::fs::read(path)?;
    let corrupt = |why: String| -> Result<u64, SegmentError> {
        Err(SegmentError::Corrupt(format!("segment {id}: {why}")))
    };
    let header_ok = bytes.len() >= SEGMENT_HEADER as usize
        && &bytes[..4] == MAGIC
        && bytes[4..12] == id.to_le_bytes();
    if !header_ok && bytes.len() <= SEGMENT_HEADER as usize {
        // Created, header not (wholly) on disk yet: only the last segment can be caught so.
        return if last {
            Ok(SEGMENT_HEADER)
        } else {
            corrupt("header cut short".into())
        };
    }
    if !header_ok {
        return corrupt("bad header".into());
    }
    let mut at = SEGMENT_HEADER as usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = rest.get(..RECORD_HEADER).and_then(|h| {
            let header: [u8; RECORD_HEADER] = h.try_into().ok()?;
            let len = record_len(&header)?;
            let payload = rest.get(RECORD_HEADER..RECORD_HEADER + len)?;
            crc_matches(&header, payload).then_some(payload)
        });
        match whole {
            Some(payload) => {
                records.push((
                    Position {
                        segment: id,
                        offset: at as u64,
                    },
                    payload.to_vec(),
                ));
                at += RECORD_HEADER + payload.len();
            }
            None if last => break,
            None => {
                return corrupt(format!(
                    "record at offset {at} cut short or failing its check"
                ))
            }
        }
    }
    Ok(at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log in `dir` with 64-byte segments holding `count` records of 40 bytes, each synced
    /// (so two to a segment), and their positions.
    fn small_segments(dir: &Path, count: u8) -> (SegmentLog, Vec<Position>) {
        let (mut log, _) = SegmentLog::open(dir, 64).unwrap();
        let mut positions = Vec::new();
        for i in 0..count {
            positions.push(log.append(&[i; 40]).unwrap());
            log.sync().unwrap();
        }
        (log, positions)
    }

    /// Opening the log in `dir` must fail as corrupt, saying `what`.
    fn assert_corrupt(dir: &Path, what: &str) {
        match SegmentLog::open(dir, 64) {
            Err(SegmentError::Corrupt(why)) => assert!(why.contains(what), "{why}"),
            other => panic!("expected corruption, got {:?}", other.map(|(_, r)| r.len())),
        }
    }

    fn payloads(records: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
        records.iter().map(|(_, p)| p.clone()).collect()
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, records) = SegmentLog::open(dir.path(), 100).unwrap();
        assert!(records.is_empty());
        let mut written = Vec::new();
        for i in 0..20u8 {
            let payload = vec![i; i as usize * 7];
            let at = log.append(&payload).unwrap();
            written.push((at, payload));
            if i % 3 == 0 {
                log.sync().unwrap();
            }
        }
        log.sync().unwrap();
        assert!(log.segments().len() > 3, "{:?}", log.segments());
        for (at, payload) in &written {
            assert_eq!(&log.read(*at).unwrap(), payload);
        }
        drop(log);
        let (mut log, records) = SegmentLog::open(dir.path(), 100).unwrap();
        assert_eq!(records, written);
        let at = log.append(b"after the reopen").unwrap();
        log.sync().unwrap();
        let (_, records) = SegmentLog::open(dir.path(), 100).unwrap();
        assert_eq!(records.last().unwrap(), &(at, b"after the reopen".to_vec()));
    }

    #[test]
    fn what_was_not_synced_is_not_there_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(b"one").unwrap();
        log.append(b"two").unwrap();
        log.sync().unwrap();
        log.append(b"never synced").unwrap();
        let active = segment_path(dir.path(), log.active_id());
        drop(log);
        let (_, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&records), vec![b"one".to_vec(), b"two".to_vec()]);
        let whole = std::fs::metadata(&active).unwrap().len();
        // A crash in the middle of a write: every cut of a third record, and garbage after it.
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(b"three, cut short").unwrap();
        log.sync().unwrap();
        drop(log);
        let full = std::fs::read(&active).unwrap();
        for cut in whole as usize..full.len() {
            std::fs::write(&active, &full[..cut]).unwrap();
            let (mut log, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(payloads(&records).len(), 2, "cut at {cut}");
            assert_eq!(std::fs::metadata(&active).unwrap().len(), whole, "cut off");
            let at = log.append(b"four").unwrap();
            assert_eq!(at.offset, whole);
            log.sync().unwrap();
            drop(log);
            let (_, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(payloads(&records)[2], b"four");
            std::fs::write(&active, &full[..whole as usize]).unwrap();
        }
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&active, &flipped).unwrap();
        let (_, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            records.len(),
            2,
            "a last record failing its check is a torn tail"
        );
    }

    #[test]
    fn damage_before_the_last_segment_is_corruption_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = small_segments(dir.path(), 10);
        let first = log.segments()[0];
        drop(log);
        let path = segment_path(dir.path(), first);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SEGMENT_HEADER as usize + RECORD_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert_corrupt(dir.path(), "segment 1");
    }

    #[test]
    fn retention_removes_whole_old_segments_never_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, positions) = small_segments(dir.path(), 10);
        let active = log.active_id();
        let cut = positions[5].segment;
        let older = log.segments().iter().filter(|&&id| id < cut).count();
        assert!(older >= 2, "{:?}", log.segments());
        assert_eq!(log.remove_before(cut).unwrap(), older);
        assert_eq!(log.read(positions[5]).unwrap(), vec![5u8; 40]);
        assert!(log.read(positions[0]).is_err(), "its segment is gone");
        let all_but_active = log.segments().len() - 1;
        assert_eq!(log.remove_before(u64::MAX).unwrap(), all_but_active);
        assert_eq!(log.segments(), &[active]);
        drop(log);
        let (log, records) = SegmentLog::open(dir.path(), 64).unwrap();
        assert!(records.is_empty(), "the active segment was empty");
        assert_eq!(log.active_id(), active, "ids go on from the kept segment");
    }

    #[test]
    fn an_empty_or_headerless_last_segment_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        log.append(b"kept").unwrap();
        log.sync().unwrap();
        drop(log);
        // A crash between creating the next segment and writing its header.
        std::fs::write(segment_path(dir.path(), 2), b"WSG").unwrap();
        let (mut log, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&records), vec![b"kept".to_vec()]);
        let at = log.append(b"next").unwrap();
        assert_eq!(
            at,
            Position {
                segment: 2,
                offset: SEGMENT_HEADER
            }
        );
        log.sync().unwrap();
        drop(log);
        let (_, records) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(payloads(&records), vec![b"kept".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn a_missing_segment_between_two_is_corruption_and_stray_names_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = small_segments(dir.path(), 8);
        let second = log.segments()[1];
        drop(log);
        for stray in [
            "1.seg",
            "+0000000000000000001.seg",
            "00000000000000000001.seg.tmp",
        ] {
            std::fs::write(dir.path().join(stray), b"not a segment").unwrap();
        }
        let (_, records) = SegmentLog::open(dir.path(), 64).unwrap();
        assert_eq!(records.len(), 8, "stray files are not segments");
        std::fs::remove_file(segment_path(dir.path(), second)).unwrap();
        assert_corrupt(dir.path(), "none between");
    }

    #[test]
    fn reads_at_any_position_fail_cleanly_outside_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20).unwrap();
        let at = log.append(&[9u8; 100]).unwrap();
        log.sync().unwrap();
        let end = at.offset + (RECORD_HEADER + 100) as u64;
        for offset in [
            0,
            1,
            11,
            at.offset + 1,
            at.offset + 50,
            end,
            end + 1,
            u64::MAX - 3,
        ] {
            let position = Position {
                segment: at.segment,
                offset,
            };
            assert!(log.read(position).is_err(), "offset {offset}");
        }
        let elsewhere = Position {
            segment: at.segment + 1,
            offset: at.offset,
        };
        assert!(log.read(elsewhere).is_err(), "no such segment");
        assert_eq!(log.read(at).unwrap(), vec![9u8; 100]);
    }

    #[test]
    fn after_a_failed_sync_the_log_refuses_everything_until_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = SegmentLog::open(&path, 64).unwrap();
        log.append(&[1u8; 40]).unwrap();
        log.sync().unwrap();
        log.append(&[2u8; 40]).unwrap();
        // The next segment cannot be created: the sync fails after writing.
        std::fs::remove_dir_all(&path).unwrap();
        assert!(log.sync().is_err());
        assert!(log.append(b"more").is_err(), "no append after a failure");
        assert!(
            log.sync().is_err(),
            "nor a sync that would claim it durable"
        );
    }
}
