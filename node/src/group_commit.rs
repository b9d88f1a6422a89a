//! Node-wide group commit: one fsync covers every replica that asked for one meanwhile.
//!
//! All replicas of a node share one sled database, and a sled flush makes everything written
//! before it durable. So when several replicas finish a Ready at about the same time they need not
//! fsync one after another: each takes a ticket after writing, and one flush started after the
//! ticket was taken covers it. Under load this turns one fsync per replica per Ready into one per
//! node per round.

use std::sync::atomic::{AtomicU64, Ordering};

/// The node's database, its flush tickets, and the directory of its snapshot files.
pub struct GroupCommit {
    db: sled::Db,
    /// sled's blob files, synced before each flush (see [`crate::blob_sync`]).
    blobs: std::sync::Arc<crate::blob_sync::BlobSync>,
    snapshots: crate::snapshot_file::SnapshotDir,
    /// Tickets handed out (each after its owner's writes reached sled's memory).
    requested: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
    /// One flush at a time; waiters behind it usually find their ticket already covered.
    flushing: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// `sled_dir` is the directory `db` was opened at.
    pub fn new(
        db: sled::Db,
        sled_dir: &std::path::Path,
        snapshots: crate::snapshot_file::SnapshotDir,
    ) -> GroupCommit {
        GroupCommit {
            db,
            blobs: std::sync::Arc::new(crate::blob_sync::BlobSync::new(sled_dir)),
            snapshots,
            requested: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// The database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Where the replicas of this node keep snapshot files.
    pub fn snapshots(&self) -> &crate::snapshot_file::SnapshotDir {
        &self.snapshots
    }

    /// Returns once everything the caller wrote before calling is durable.
    pub async fn flush(&self) -> sled::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.flushing.lock().await;
        if self.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        // Every ticket handed out so far belongs to writes already in sled: this flush covers them.
        let covers = self.requested.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        // A blocking flush on one of tokio's blocking threads, not sled's `flush_async`: that one
        // hands the flush to sled's thread pool, whose every task wakes all seven of its idle
        // threads (a condvar `notify_all`), on top of the pool task that writes the buffer.
        // Then sled's blob files, before the tickets count: only once the flush has returned is
        // every blob it points at whole (see `blob_sync`).
        let db = self.db.clone();
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            db.flush()?;
            blobs.sync_new().map_err(sled::Error::Io)
        })
        .await
        .map_err(|e| sled::Error::ReportableBug(format!("flush thread: {e}")))??;
        crate::metrics::NODE
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.durable.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn concurrent_flushes_share_fsyncs_and_all_complete() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = crate::snapshot_file::SnapshotDir::open(dir.path()).unwrap();
        let gc = Arc::new(GroupCommit::new(
            sled::open(dir.path().join("sled")).unwrap(),
            &dir.path().join("sled"),
            snapshots,
        ));
        let tree = gc.db().open_tree("t").unwrap();
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let gc = gc.clone();
            let tree = tree.clone();
            tasks.push(tokio::spawn(async move {
                tree.insert(i.to_be_bytes(), vec![1]).unwrap();
                gc.flush().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(gc.durable.load(Ordering::SeqCst), 32);
        assert_eq!(tree.len(), 32);
    }

    #[tokio::test]
    async fn a_flush_syncs_the_blob_files_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = crate::snapshot_file::SnapshotDir::open(dir.path()).unwrap();
        let sled_dir = dir.path().join("sled");
        let gc = GroupCommit::new(sled::open(&sled_dir).unwrap(), &sled_dir, snapshots);
        gc.db().insert(b"large", vec![7u8; 300 * 1024]).unwrap();
        gc.flush().await.unwrap();
        assert_eq!(
            std::fs::read_dir(sled_dir.join("blobs")).unwrap().count(),
            1
        );
        assert_eq!(
            gc.blobs.sync_new().unwrap(),
            0,
            "the flush synced it already"
        );
    }
}
