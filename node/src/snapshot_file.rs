//! Snapshot files: one replica's state at one applied index, as a file on the node's disk.
//!
//! A snapshot can be far larger than memory or than one gRPC message (a shard of a million
//! accounts, their request records and history). So a snapshot never travels inside a Raft
//! message: the leader writes it to a file while it scans sled, raft-rs carries only a
//! [`Descriptor`] (length and CRC32 of the file) in `MsgSnapshot.data`, the transport streams the
//! file to the follower in chunks (`Raft/Snapshot`), the follower writes it to a file of its own and
//! checks it against the descriptor before raft-rs ever sees the message, and installing it reads
//! the file record by record.
//!
//! File format: records `u32 LE key length, key, u32 LE value length, value` in key order (each
//! value is a CRC-framed record, see [`crate::record`]). Descriptor: `WSNP`, version byte 1, the
//! length (u64 LE) and the CRC32 (u32 LE) of the whole file.
//!
//! Files live in `DATA_DIR/snapshots/`: `sent-S-I-T.snap` built here for followers of shard `S`
//! (index `I`, term `T`), `recv-S-I-T.snap` received from a leader, and `*.part` while one is
//! being written (renamed when complete, so a complete name is always a complete file).

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"WSNP";
const VERSION: u8 = 1;
/// Bytes of an encoded [`Descriptor`].
pub const DESCRIPTOR_LEN: usize = 4 + 1 + 8 + 4;
/// Longest key or value a snapshot file may hold (a corrupt length never allocates more).
const FIELD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a Raft message says about a snapshot file: its length and CRC32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub bytes: u64,
    pub crc: u32,
}

impl Descriptor {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DESCRIPTOR_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out
    }

    /// Reads a descriptor; anything else (a snapshot of an older release carried its data
    /// inline) is refused.
    pub fn decode(data: &[u8]) -> Result<Descriptor, String> {
        if data.len() != DESCRIPTOR_LEN || &data[..4] != MAGIC || data[4] != VERSION {
            return Err(format!(
                "not a snapshot file descriptor ({} bytes)",
                data.len()
            ));
        }
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&data[5..13]);
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&data[13..17]);
        Ok(Descriptor {
            bytes: u64::from_le_bytes(bytes),
            crc: u32::from_le_bytes(crc),
        })
    }
}

/// Which snapshot file: built here for followers, or received from a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Sent,
    Received,
}

impl Side {
    fn prefix(self) -> &'static str {
        match self {
            Side::Sent => "sent",
            Side::Received => "recv",
        }
    }
}

/// The node's snapshot directory.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// `DATA_DIR/snapshots`, created if missing; unfinished (`.part`) files are removed.
    pub fn open(data_dir: &Path) -> io::Result<SnapshotDir> {
        let dir = data_dir.join("snapshots");
        fs::create_dir_all(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "part") {
                let _ = fs::remove_file(path);
            }
        }
        Ok(SnapshotDir { dir })
    }

    /// The file of shard `shard`'s snapshot at (`index`, `term`).
    pub fn path(&self, side: Side, shard: u64, index: u64, term: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{shard}-{index}-{term}.snap", side.prefix()))
    }

    /// Removes shard `shard`'s files of one side whose index is at most `up_to`, except `keep`.
    pub fn remove(&self, side: Side, shard: u64, up_to: u64, keep: Option<(u64, u64)>) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((s, index, term)) = parse_name(&name.to_string_lossy(), side) else {
                continue;
            };
            if s == shard && index <= up_to && keep != Some((index, term)) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(shard, file = ?entry.path(), error = %e, "cannot remove a snapshot file");
                }
            }
        }
    }

    /// Starts writing the file `path` (under a temporary name until [`Writer::finish`]).
    pub fn create(&self, path: PathBuf) -> io::Result<Writer> {
        let part = path.with_extension(format!("{}.part", unique()));
        let file = File::create(&part)?;
        Ok(Writer {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
            part,
            path,
            dir: self.dir.clone(),
        })
    }
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `sent-S-I-T.snap` → (S, I, T).
fn parse_name(name: &str, side: Side) -> Option<(u64, u64, u64)> {
    let rest = name
        .strip_prefix(side.prefix())?
        .strip_prefix('-')?
        .strip_suffix(".snap")?;
    let mut parts = rest.split('-').map(|p| p.parse::<u64>().ok());
    let found = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(found)
}

/// A snapshot file being written: counts and checksums what it writes. Dropped unfinished (an
/// error, a stream cut off), its temporary file is removed.
pub struct Writer {
    /// `None` once finished.
    file: Option<BufWriter<File>>,
    hasher: crc32fast::Hasher,
    bytes: u64,
    part: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl Writer {
    /// Appends one record.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        for field in [key, value] {
            let len = u32::try_from(field.len())
                .ok()
                .filter(|len| *len as usize <= FIELD_BYTES_MAX)
                .ok_or_else(|| io::Error::other("snapshot record field too long"))?;
            self.raw(&len.to_le_bytes())?;
            self.raw(field)?;
        }
        Ok(())
    }

    /// Appends bytes as they are (a chunk received from a leader).
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("snapshot file already finished"))?;
        file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Completes the file under its name and returns its descriptor. `expected`: the descriptor
    /// it must match, else it is removed and never takes the name (a file under a complete name
    /// is always one that checked out). `durable`: fsync the file and the directory first (a
    /// received file must survive a crash during its install; a file built for followers is
    /// built afresh after a restart).
    pub fn finish(mut self, durable: bool, expected: Option<Descriptor>) -> io::Result<Descriptor> {
        let descriptor = Descriptor {
            bytes: self.bytes,
            crc: self.hasher.clone().finalize(),
        };
        if expected.is_some_and(|e| e != descriptor) {
            return Err(io::Error::other(format!(
                "snapshot file is {descriptor:?}, its descriptor says {expected:?}"
            )));
        }
        let Some(file) = self.file.take() else {
            return Err(io::Error::other("snapshot file already finished"));
        };
        let file = file.into_inner().map_err(|e| e.into_error())?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&self.part, &self.path)?;
        if durable {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(descriptor)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Not finished, or finishing failed before the rename: the temporary file goes.
        let _ = fs::remove_file(&self.part);
    }
}

/// Reads a snapshot file record by record.
pub struct Reader {
    file: BufReader<File>,
    /// Bytes left before the end the descriptor gave.
    left: u64,
    hasher: crc32fast::Hasher,
}

/// A snapshot record: key and (framed) value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

impl Reader {
    /// Opens `path`, which must be as long as `descriptor` says.
    pub fn open(path: &Path, descriptor: Descriptor) -> Result<Reader, String> {
        let file = File::open(path).map_err(|e| format!("snapshot file {path:?}: {e}"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("snapshot file {path:?}: {e}"))?
            .len();
        if len != descriptor.bytes {
            return Err(format!(
                "snapshot file {path:?} holds {len} bytes, its descriptor says {}",
                descriptor.bytes
            ));
        }
        Ok(Reader {
            file: BufReader::with_capacity(1 << 20, file),
            left: len,
            hasher: crc32fast::Hasher::new(),
        })
    }

    fn field(&mut self) -> Result<Vec<u8>, String> {
        let mut len = [0u8; 4];
        self.exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > FIELD_BYTES_MAX || len as u64 > self.left {
            return Err("snapshot record longer than its file".into());
        }
        let mut field = vec![0u8; len];
        self.exact(&mut field)?;
        Ok(field)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        if (buf.len() as u64) > self.left {
            return Err("truncated snapshot record".into());
        }
        self.file
            .read_exact(buf)
            .map_err(|e| format!("reading a snapshot file: {e}"))?;
        self.hasher.update(buf);
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// The next record, or `None` at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<KeyValue>, String> {
        if self.left == 0 {
            return Ok(None);
        }
        let key = self.field()?;
        let value = self.field()?;
        Ok(Some((key, value)))
    }

    /// The CRC32 of everything read so far (the whole file once `next_record` returned `None`).
    pub fn crc(&self) -> u32 {
        self.hasher.clone().finalize()
    }
}

/// Reads the whole file, checks its CRC against `descriptor` and each record with `check`.
pub fn verify(
    path: &Path,
    descriptor: Descriptor,
    mut check: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let mut reader = Reader::open(path, descriptor)?;
    let mut records = 0u64;
    while let Some((key, value)) = reader.next_record()? {
        check(&key, &value)?;
        records += 1;
    }
    if reader.crc() != descriptor.crc {
        return Err(format!("snapshot file {path:?} fails its checksum"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &SnapshotDir, records: &[(&[u8], &[u8])]) -> (PathBuf, Descriptor) {
        let path = dir.path(Side::Sent, 3, 7, 2);
        let mut writer = dir.create(path.clone()).unwrap();
        for (k, v) in records {
            writer.record(k, v).unwrap();
        }
        (path, writer.finish(true, None).unwrap())
    }

    #[test]
    fn a_file_reads_back_record_by_record_and_checks_out() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let records: Vec<(&[u8], &[u8])> =
            vec![(b"Sa1", b"x"), (b"Sa2", b""), (b"Sb", &[0u8; 5000])];
        let (path, descriptor) = write(&dir, &records);
        assert_eq!(Descriptor::decode(&descriptor.encode()), Ok(descriptor));
        let mut reader = Reader::open(&path, descriptor).unwrap();
        for (k, v) in &records {
            assert_eq!(
                reader.next_record().unwrap(),
                Some((k.to_vec(), v.to_vec()))
            );
        }
        assert_eq!(reader.next_record().unwrap(), None);
        assert_eq!(reader.crc(), descriptor.crc);
        assert_eq!(verify(&path, descriptor, |_, _| Ok(())), Ok(3));
    }

    #[test]
    fn a_damaged_truncated_or_mislabelled_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        let (path, descriptor) = write(&dir, &[(b"Sa1", b"value"), (b"Sa2", b"other")]);
        let good = fs::read(&path).unwrap();
        // Every single flipped byte is caught (by a length, or the checksum).
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(
                verify(&path, descriptor, |_, _| Ok(())).is_err(),
                "byte {i}"
            );
        }
        // Shorter or longer than the descriptor says.
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(verify(&path, descriptor, |_, _| Ok(())).is_err());
        fs::write(&path, [&good[..], b"x"].concat()).unwrap();
        assert!(verify(&path, descriptor, |_, _| Ok(())).is_err());
        // A record the caller refuses.
        fs::write(&path, &good).unwrap();
        assert!(verify(&path, descriptor, |k, _| if k == b"Sa2" {
            Err("no".into())
        } else {
            Ok(())
        })
        .is_err());
        // A length field claiming more than the file holds never allocates it.
        let mut huge = good.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        fs::write(&path, &huge).unwrap();
        assert!(verify(&path, descriptor, |_, _| Ok(())).is_err());
        // Not a descriptor: the inline data of an older release, or garbage.
        assert!(Descriptor::decode(b"").is_err());
        assert!(Descriptor::decode(&[0u8; DESCRIPTOR_LEN]).is_err());
        let mut other_version = descriptor.encode();
        other_version[4] = 2;
        assert!(Descriptor::decode(&other_version).is_err());
    }

    #[test]
    fn files_are_removed_by_shard_and_index_and_unfinished_ones_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::open(tmp.path()).unwrap();
        for (shard, index) in [(1, 5), (1, 9), (1, 12), (2, 5)] {
            let path = dir.path(Side::Received, shard, index, 1);
            dir.create(path).unwrap().finish(false, None).unwrap();
        }
        // A process that died while writing leaves its temporary file (removed at the next open);
        // a writer dropped unfinished, or finished against a descriptor it does not match, none.
        let part = tmp.path().join("snapshots").join("recv-1-20-1.5.part");
        fs::write(&part, b"cut off").unwrap();
        drop(dir.create(dir.path(Side::Received, 1, 21, 1)).unwrap());
        let mut mismatched = dir.create(dir.path(Side::Received, 1, 22, 1)).unwrap();
        mismatched.raw(b"abc").unwrap();
        let wrong = Descriptor { bytes: 3, crc: 0 };
        assert!(mismatched.finish(true, Some(wrong)).is_err());
        assert!(!dir.path(Side::Received, 1, 22, 1).exists());
        dir.remove(Side::Received, 1, 10, Some((5, 1)));
        let names = |dir: &Path| {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        let snapshots = tmp.path().join("snapshots");
        let left = names(&snapshots);
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(left.contains(&"recv-1-5-1.snap".to_string()));
        assert!(left.contains(&"recv-1-12-1.snap".to_string()));
        assert!(left.contains(&"recv-2-5-1.snap".to_string()));
        SnapshotDir::open(tmp.path()).unwrap();
        assert_eq!(names(&snapshots).len(), 3, "the .part file is gone");
        assert_eq!(
            parse_name("recv-1-2-3.snap", Side::Received),
            Some((1, 2, 3))
        );
        assert_eq!(parse_name("recv-1-2-3.snap", Side::Sent), None);
        assert_eq!(parse_name("recv-1-2-3-4.snap", Side::Received), None);
        assert_eq!(parse_name("recv-1-x-3.snap", Side::Received), None);
    }
}
