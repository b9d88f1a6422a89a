//! Durability marks: what a replica last made durable, kept outside sled, to catch a store that
//! came back older than it was (G7, G9).
//!
//! sled checks its own log on start and, at a record that fails its checksum (a flipped bit on
//! disk), treats the rest as a torn write and drops it: the replica comes back silently older,
//! having forgotten a vote, a term or entries it had acknowledged — exactly the lost disk that Raft
//! cannot survive unnoticed. So after each fsync the replica writes a small mark (its HardState's
//! term and vote, its last log index and that entry's term) to `marks/shard-N` in the data
//! directory: one in-place write, no fsync (it survives any process crash; after a power loss it
//! may be older than the store, which only weakens the check). On start, a store behind its mark is
//! **set aside** and rebuilt from the peers like a wiped one (`probe.rs`).
//!
//! A mark is 40 bytes plus a CRC32; one that fails its CRC (torn) is ignored.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use raft::eraftpb::HardState;

use raft::Storage;

/// What a replica had made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
    pub last_index: u64,
    pub last_term: u64,
}

impl Mark {
    /// The mark of a replica's current durable state.
    pub fn of(hard_state: &HardState, log: &impl Storage) -> Mark {
        let last_index = log.last_index().unwrap_or(0);
        Mark {
            term: hard_state.term,
            vote: hard_state.vote,
            commit: hard_state.commit,
            last_index,
            last_term: log.term(last_index).unwrap_or(0),
        }
    }

    fn encode(&self) -> [u8; 44] {
        let mut out = [0u8; 44];
        for (i, v) in [
            self.term,
            self.vote,
            self.commit,
            self.last_index,
            self.last_term,
        ]
        .iter()
        .enumerate()
        {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[..40]);
        out[40..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<Mark> {
        if bytes.len() != 44 || crc32fast::hash(&bytes[..40]).to_le_bytes() != bytes[40..] {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Some(Mark {
            term: word(0),
            vote: word(1),
            commit: word(2),
            last_index: word(3),
            last_term: word(4),
        })
    }

    /// Why a store whose durable state is `hard_state` + `log` is older than this mark, if it is.
    pub fn rolled_back(&self, hard_state: &HardState, log: &impl Storage) -> Option<String> {
        if hard_state.term < self.term {
            return Some(format!(
                "term went back from {} to {}",
                self.term, hard_state.term
            ));
        }
        if hard_state.term == self.term && self.vote != 0 && hard_state.vote != self.vote {
            return Some(format!("the vote of term {} was forgotten", self.term));
        }
        if hard_state.commit < self.commit {
            return Some(format!(
                "commit went back from {} to {}",
                self.commit, hard_state.commit
            ));
        }
        let first = log.first_index().unwrap_or(1);
        if self.last_index >= first {
            match log.term(self.last_index) {
                Ok(term) if term == self.last_term => {}
                Ok(term) => {
                    return Some(format!(
                        "entry {} has term {term}, was {}",
                        self.last_index, self.last_term
                    ))
                }
                Err(_) => {
                    return Some(format!(
                        "entry {} (term {}) is gone; the log ends at {}",
                        self.last_index,
                        self.last_term,
                        log.last_index().unwrap_or(0)
                    ))
                }
            }
        }
        None
    }
}

/// The marks of a node's replicas, one small file each (kept open).
pub struct Marks {
    dir: PathBuf,
    files: std::sync::Mutex<std::collections::HashMap<u64, std::fs::File>>,
}

impl Marks {
    /// Marks under `data_dir/marks/` (created if missing).
    pub fn open(data_dir: &std::path::Path) -> std::io::Result<Marks> {
        let dir = data_dir.join("marks");
        std::fs::create_dir_all(&dir)?;
        Ok(Marks {
            dir,
            files: Default::default(),
        })
    }

    fn path(&self, shard_id: u64) -> PathBuf {
        self.dir.join(format!("shard-{shard_id}"))
    }

    /// The mark of a shard's replica (None if there is none, or it is torn).
    pub fn read(&self, shard_id: u64) -> Option<Mark> {
        let mut bytes = Vec::new();
        std::fs::File::open(self.path(shard_id))
            .ok()?
            .read_to_end(&mut bytes)
            .ok()?;
        Mark::decode(&bytes)
    }

    /// Overwrites a shard's mark in place (no fsync: see the module doc).
    pub fn write(&self, shard_id: u64, mark: &Mark) -> std::io::Result<()> {
        let mut files = self
            .files
            .lock()
            .map_err(|_| std::io::Error::other("marks lock poisoned"))?;
        let file = match files.entry(shard_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(self.path(shard_id))?,
            ),
        };
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&mark.encode())
    }

    /// Forgets a shard's mark (its replica was set aside and starts empty).
    pub fn clear(&self, shard_id: u64) -> std::io::Result<()> {
        if let Ok(mut files) = self.files.lock() {
            files.remove(&shard_id);
        }
        match std::fs::remove_file(self.path(shard_id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let marks = Marks::open(dir.path()).unwrap();
        let mark = Mark {
            term: 7,
            vote: 2,
            commit: 40,
            last_index: 42,
            last_term: 7,
        };
        marks.write(3, &mark).unwrap();
        assert_eq!(marks.read(3), Some(mark));
        assert_eq!(marks.read(4), None);
        let mut bytes = std::fs::read(marks.path(3)).unwrap();
        bytes[5] ^= 1;
        std::fs::write(marks.path(3), bytes).unwrap();
        assert_eq!(marks.read(3), None);
        marks.clear(3).unwrap();
        marks.clear(3).unwrap();
    }
}
