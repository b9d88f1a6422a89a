//! Makes sled's blob files durable before anything that points at them is acknowledged.
//!
//! sled 0.34 writes any log message over 128 KiB (a large value, or a rewritten leaf holding
//! several) to a file of its own in `<sled>/blobs/`, inside the insert call, and never fsyncs it:
//! its flush fsyncs only the log, which then holds a pointer to a file that a power cut may empty
//! or remove — and sled's recovery ends the whole log (every replica of the node) at a blob that
//! is there but short. So after every group-commit flush, before its tickets count as durable,
//! every blob file not yet synced (or grown since) is fsynced, then the directory when a file was
//! new. After, not before: a flush waits for every log reservation below the point it makes
//! durable, and sled writes a blob inside its reservation, so only then is each such blob whole (a
//! blob still being written by another writer before the flush would be synced half-written).
//!
//! What remains (README § Known limits): a pointer made durable by the flush (or by sled's own
//! background flush, every 500 ms) before the blob sync that follows: a power cut in between ends
//! the node's log at that blob on recovery, which loses only what was not yet acknowledged — and
//! sled frees a segment whose pages it moved to a blob once the move is durable, so a reuse of that
//! segment written back before the blob sync could lose the moved page (a window of the flush's
//! own length, after a log fsync).
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The blob directory of one sled database and the files already synced in it.
pub struct BlobSync {
    dir: PathBuf,
    /// Whether the directory entry of `dir` itself was synced (sled creates it when it opens).
    dir_entry_synced: std::sync::atomic::AtomicBool,
    /// Name → length when synced. A blob is written once, by appends, so a file whose length
    /// changed was still being written when it was synced and is synced again. Replaced by each
    /// listing, so it never holds more than the directory does.
    synced: Mutex<HashMap<OsString, u64>>,
}

impl BlobSync {
    /// The blob directory of the sled database at `sled_dir` (sled creates it when it opens).
    pub fn new(sled_dir: &Path) -> BlobSync {
        BlobSync {
            dir: sled_dir.join("blobs"),
            dir_entry_synced: std::sync::atomic::AtomicBool::new(false),
            synced: Mutex::new(HashMap::new()),
        }
    }

    /// Fsyncs every blob file that is new or grew since the last call, then the directory if a
    /// file was new. Returns how many files it synced. A file removed meanwhile (sled frees blobs
    /// it no longer points to) is skipped. No blob directory is an error: sled makes one when it
    /// opens, so the path is wrong.
    pub fn sync_new(&self) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        let entries = std::fs::read_dir(&self.dir).map_err(|e| {
            std::io::Error::new(e.kind(), format!("sled blob directory {:?}: {e}", self.dir))
        })?;
        if !self.dir_entry_synced.load(Ordering::Relaxed) {
            if let Some(parent) = self.dir.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            self.dir_entry_synced.store(true, Ordering::Relaxed);
        }
        let mut listed = HashMap::with_capacity(synced.len());
        let mut files = 0;
        let mut new_name = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // The length before the fsync: bytes appended after it are synced too, and a length
            // that differs at the next listing only costs one more fsync.
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let known = synced.get(&name).copied();
            if known != Some(len) {
                match std::fs::File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                files += 1;
                new_name |= known.is_none();
            }
            listed.insert(name, len);
        }
        if new_name {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        *synced = listed;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn new_and_grown_files_are_synced_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let sync = BlobSync::new(dir.path());
        assert!(sync.sync_new().is_err(), "no blob directory: a wrong path");
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        assert_eq!(sync.sync_new().unwrap(), 0);
        let path = dir.path().join("blobs").join("17");
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        std::fs::write(dir.path().join("blobs").join("18"), b"whole").unwrap();
        assert_eq!(sync.sync_new().unwrap(), 2);
        assert_eq!(sync.sync_new().unwrap(), 0, "nothing changed");
        file.write_all(b" and the rest").unwrap();
        assert_eq!(sync.sync_new().unwrap(), 1, "the grown file again");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(sync.sync_new().unwrap(), 0);
        assert_eq!(
            sync.synced.lock().unwrap().len(),
            1,
            "forgets removed files"
        );
    }

    #[test]
    fn a_value_over_128_kib_is_a_blob_file_and_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("sled")).unwrap();
        let sync = BlobSync::new(&dir.path().join("sled"));
        db.insert(b"small", vec![1u8; 100]).unwrap();
        assert_eq!(
            sync.sync_new().unwrap(),
            0,
            "small values stay in sled's log"
        );
        db.insert(b"large", vec![7u8; 300 * 1024]).unwrap();
        assert_eq!(
            sync.sync_new().unwrap(),
            1,
            "a value over 128 KiB is a blob file"
        );
        db.flush().unwrap();
    }
}
