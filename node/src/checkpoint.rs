//! How a checkpoint reaches sled: atomically, in small batches.
//!
//! A checkpoint (see [`crate::shard_store`]) writes what many applied entries changed together
//! with the applied index they bring the store to, and must land whole or not at all: a restart
//! re-applies the entries after the stored applied index, so a state holding part of a later
//! checkpoint would apply some of them twice. One sled batch gives that, but sled 0.34 keeps about
//! 2.5 KB of memory, for good, per new key written through a large batch (1 M new keys in batches
//! of 4 096: 2.8 GB of RSS; in batches of 256: 285 MB; `examples/sled_batch_memory.rs`).
//!
//! So a checkpoint of [`BATCH_KEYS`] keys or more is written as a redo record first — every
//! change and the applied index, CRC-framed, in chunks of 4 KiB (`Mk` + n) under a header (`Mk`)
//! written last — then its keys one
//! plain write each, then the applied index, then the record's removal. sled recovers a prefix of
//! its writes, so a crash leaves either no record (nothing of the checkpoint is there) or the whole
//! record: [`finish_interrupted`], run when the store opens, writes it again (every change is a
//! whole value or a removal, so writing it twice is the same as once). A smaller checkpoint is one
//! batch, as before.
//!
//! Plain writes rather than batches, because every sled batch takes sled's process-wide write
//! lock (the node's other replicas cannot append to their Raft logs meanwhile) and seals sled's
//! log buffer before and after itself, each seal waking all of sled's I/O threads: a checkpoint of
//! 4 096 records in batches of 256 stalled the node's Raft loops 16 times.

use std::collections::BTreeMap;

use crate::record;

/// The header of the redo record of a checkpoint being written; its chunks follow it in key
/// order (`Mk` + chunk number, u32 BE).
pub const KEY_REDO: &[u8] = b"Mk";
/// Bytes per chunk of a redo record. sled 0.34 writes any log message over 128 KiB to a blob file
/// of its own that it never fsyncs — a value, or a whole leaf when it rewrites one, and a leaf
/// holds up to 17 keys — so a record (a checkpoint's 4 096 changes are ~1 MB) in larger pieces
/// could be lost in a power cut while the keys written after it survive. 17 chunks of 4 KiB stay
/// well under it.
const REDO_CHUNK: usize = 4 * 1024;
/// Most keys a checkpoint writes as one sled batch (larger ones go through a redo record); also
/// the keys per batch of a snapshot install.
pub const BATCH_KEYS: usize = 256;

/// What a checkpoint changes: per key, its new value or `None` for a removal (the last change
/// of a key wins), in key order.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Writes `changes` and `applied` (under `applied_key`, as `applied_value`) atomically.
pub fn write(
    tree: &sled::Tree,
    changes: &Changes,
    applied_key: &[u8],
    applied_value: &[u8],
) -> Result<(), sled::Error> {
    if changes.len() < BATCH_KEYS {
        let mut batch = batch_of(changes.iter());
        batch.insert(applied_key, applied_value);
        return tree.apply_batch(batch);
    }
    let chunks = write_redo(tree, &encode(changes, applied_key, applied_value))?;
    finish(tree, changes, applied_key, applied_value, chunks)
}

/// The key of the redo record's chunk `i`.
fn chunk_key(i: u32) -> Vec<u8> {
    [KEY_REDO, &i.to_be_bytes()].concat()
}

/// Writes a redo record as chunks of at most [`REDO_CHUNK`] bytes, then its header (`Mk`: the
/// number of chunks): the record counts only once the header is there. Returns the chunk count.
pub(crate) fn write_redo(tree: &sled::Tree, record: &[u8]) -> Result<u32, sled::Error> {
    let mut count = 0u32;
    for chunk in record.chunks(REDO_CHUNK) {
        tree.insert(chunk_key(count), chunk)?;
        count += 1;
    }
    tree.insert(KEY_REDO, record::frame(&count.to_be_bytes()))?;
    Ok(count)
}

/// The redo record whose header is `header`, from its chunks.
fn read_redo(tree: &sled::Tree, header: &[u8]) -> Result<(Vec<u8>, u32), RedoError> {
    let payload = record::unframe(header)
        .map_err(|e| RedoError::Corrupt(format!("checkpoint redo record header: {}", e.0)))?;
    let Ok(count) = <[u8; 4]>::try_from(payload).map(u32::from_be_bytes) else {
        // A whole record under `Mk`, as releases before 2026-11-30 wrote it (never 4 bytes: it
        // holds at least the applied key and value).
        return Ok((header.to_vec(), 0));
    };
    let mut bytes = Vec::new();
    for i in 0..count {
        let chunk = tree
            .get(chunk_key(i))
            .map_err(RedoError::Sled)?
            .ok_or_else(|| {
                RedoError::Corrupt(format!("checkpoint redo record: chunk {i} missing"))
            })?;
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, count))
}

/// Removes the chunks of a redo record whose header is gone (a crash while they were written,
/// before any key of their checkpoint, or while they were removed after it).
fn remove_stray_chunks(tree: &sled::Tree) -> Result<(), sled::Error> {
    for item in tree.scan_prefix(KEY_REDO) {
        let (key, _) = item?;
        if key.len() == KEY_REDO.len() + 4 {
            tree.remove(key)?;
        }
    }
    Ok(())
}

/// Why an interrupted checkpoint could not be finished.
#[derive(Debug)]
pub enum RedoError {
    /// sled failed (the disk): the store is not known to be bad, the start fails.
    Sled(sled::Error),
    /// The redo record fails its check: the store cannot be trusted (it is set aside).
    Corrupt(String),
}

/// Finishes a checkpoint a crash interrupted, if there is one: its redo record is written again.
/// Returns whether there was one.
pub fn finish_interrupted(tree: &sled::Tree) -> Result<bool, RedoError> {
    let Some(header) = tree.get(KEY_REDO).map_err(RedoError::Sled)? else {
        remove_stray_chunks(tree).map_err(RedoError::Sled)?;
        return Ok(false);
    };
    let (bytes, chunks) = read_redo(tree, &header)?;
    let (changes, applied_key, applied_value) = decode(&bytes).map_err(RedoError::Corrupt)?;
    finish(tree, &changes, &applied_key, &applied_value, chunks).map_err(RedoError::Sled)?;
    Ok(true)
}

/// The keys, then the applied index, then the record's removal (header first).
fn finish(
    tree: &sled::Tree,
    changes: &Changes,
    applied_key: &[u8],
    applied_value: &[u8],
    chunks: u32,
) -> Result<(), sled::Error> {
    write_plain(tree, changes.iter())?;
    tree.insert(applied_key, applied_value)?;
    tree.remove(KEY_REDO)?;
    for i in 0..chunks {
        tree.remove(chunk_key(i))?;
    }
    Ok(())
}

/// Writes each change as one plain insert or removal, in order.
fn write_plain<'a>(
    tree: &sled::Tree,
    changes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
) -> Result<(), sled::Error> {
    for (key, value) in changes {
        match value {
            Some(value) => tree.insert(key.as_slice(), value.as_slice())?,
            None => tree.remove(key.as_slice())?,
        };
    }
    Ok(())
}

fn batch_of<'a>(changes: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in changes {
        match value {
            Some(value) => batch.insert(key.as_slice(), value.as_slice()),
            None => batch.remove(key.as_slice()),
        }
    }
    batch
}

fn push_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

/// `applied key, applied value, then per change: key, tag (1 value, 0 removal), value`, each
/// field length-prefixed (u32 LE), the whole CRC-framed.
pub(crate) fn encode(changes: &Changes, applied_key: &[u8], applied_value: &[u8]) -> Vec<u8> {
    let size: usize = changes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(size + 16 + applied_key.len() + applied_value.len());
    push_field(&mut out, applied_key);
    push_field(&mut out, applied_value);
    for (key, value) in changes {
        push_field(&mut out, key);
        out.push(u8::from(value.is_some()));
        push_field(&mut out, value.as_deref().unwrap_or_default());
    }
    record::frame(&out)
}

type Decoded = (Changes, Vec<u8>, Vec<u8>);

fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let mut rest =
        record::unframe(bytes).map_err(|e| format!("checkpoint redo record: {}", e.0))?;
    let field = |rest: &mut &[u8]| -> Result<Vec<u8>, String> {
        let len = rest
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("checkpoint redo record truncated")?;
        let value = rest
            .get(4..4 + len)
            .ok_or("checkpoint redo record truncated")?
            .to_vec();
        *rest = &rest[4 + len..];
        Ok(value)
    };
    let applied_key = field(&mut rest)?;
    let applied_value = field(&mut rest)?;
    let mut changes = Changes::new();
    while !rest.is_empty() {
        let key = field(&mut rest)?;
        let tag = *rest.first().ok_or("checkpoint redo record truncated")?;
        rest = &rest[1..];
        let value = field(&mut rest)?;
        changes.insert(key, (tag == 1).then_some(value));
    }
    Ok((changes, applied_key, applied_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(n: usize) -> Changes {
        (0..n)
            .map(|i| {
                let key = format!("Sa{i:06}").into_bytes();
                let value = (i % 7 != 3).then(|| vec![i as u8; i % 50]);
                (key, value)
            })
            .collect()
    }

    fn state(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter()
            .map(|item| {
                let (k, v) = item.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn the_redo_record_reads_back_exactly_and_refuses_damage() {
        let c = changes(600);
        let bytes = encode(&c, b"Ma", b"applied");
        assert_eq!(decode(&bytes), Ok((c, b"Ma".to_vec(), b"applied".to_vec())));
        for at in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A redo record larger than sled's blob threshold is written in chunks below it; its
    /// chunks count only under their header: chunks without one (a crash before it) are removed
    /// and change nothing, a header whose chunk is missing is refused, and an interrupted record
    /// is finished with every chunk removed.
    #[test]
    fn a_large_redo_record_goes_in_chunks_that_count_only_under_their_header() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let update: Changes = (0..4096)
            .map(|i| (format!("Sh{i:06}").into_bytes(), Some(vec![i as u8; 250])))
            .collect();
        let record = encode(&update, b"Ma", b"2");
        assert!(record.len() > 1 << 20, "{} bytes", record.len());
        let redo_keys = |tree: &sled::Tree| tree.scan_prefix(KEY_REDO).count();

        let tree = db.open_tree("headless").unwrap();
        let chunks = write_redo(&tree, &record).unwrap();
        assert_eq!(chunks as usize, record.len().div_ceil(REDO_CHUNK));
        for i in 0..chunks {
            assert!(tree.get(chunk_key(i)).unwrap().unwrap().len() <= REDO_CHUNK);
        }
        tree.remove(KEY_REDO).unwrap();
        assert!(matches!(finish_interrupted(&tree), Ok(false)));
        assert_eq!(redo_keys(&tree), 0, "stray chunks removed");
        assert!(tree.get(b"Ma").unwrap().is_none(), "nothing applied");

        let tree = db.open_tree("gap").unwrap();
        write_redo(&tree, &record).unwrap();
        tree.remove(chunk_key(1)).unwrap();
        assert!(matches!(
            finish_interrupted(&tree),
            Err(RedoError::Corrupt(_))
        ));

        let tree = db.open_tree("whole").unwrap();
        write_redo(&tree, &record).unwrap();
        assert!(matches!(finish_interrupted(&tree), Ok(true)));
        assert_eq!(redo_keys(&tree), 0);
        assert_eq!(tree.get(b"Ma").unwrap().unwrap().as_ref(), b"2");
        assert_eq!(tree.len(), update.len() + 1);

        let tree = db.open_tree("written").unwrap();
        write(&tree, &update, b"Ma", b"2").unwrap();
        assert_eq!(redo_keys(&tree), 0);
        assert_eq!(tree.len(), update.len() + 1);

        // A whole record under `Mk`, as an earlier release wrote it, is still finished.
        let tree = db.open_tree("earlier").unwrap();
        tree.insert(KEY_REDO, record.clone()).unwrap();
        assert!(matches!(finish_interrupted(&tree), Ok(true)));
        assert_eq!(redo_keys(&tree), 0);
        assert_eq!(tree.get(b"Ma").unwrap().unwrap().as_ref(), b"2");

        // None of it went to a blob file, which sled never fsyncs (the old record above did).
        db.flush().unwrap();
        let blobs = |path: &std::path::Path| std::fs::read_dir(path).map_or(0, |d| d.count());
        let fresh = tempfile::tempdir().unwrap();
        let db = sled::open(fresh.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        for _ in 0..3 {
            let chunks = write_redo(&tree, &record).unwrap();
            assert!(chunks > 256, "{chunks} chunks");
            assert!(matches!(finish_interrupted(&tree), Ok(true)));
        }
        db.flush().unwrap();
        assert_eq!(blobs(&fresh.path().join("blobs")), 0, "no blob file");
    }

    /// Small and large checkpoints land whole; a large one cut off after any number of its
    /// writes is finished from its redo record and ends exactly as if it had not been cut off.
    #[test]
    fn a_checkpoint_cut_off_anywhere_is_finished_to_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let before: Changes = (0..300)
            .map(|i| (format!("Sa{i:06}").into_bytes(), Some(b"old".to_vec())))
            .collect();
        let update = changes(3 * BATCH_KEYS + 17);
        let expected = {
            let tree = db.open_tree("expected").unwrap();
            write(&tree, &before, b"Ma", b"1").unwrap();
            write(&tree, &update, b"Ma", b"2").unwrap();
            assert!(tree.get(KEY_REDO).unwrap().is_none());
            state(&tree)
        };
        assert!(expected.contains(&(b"Ma".to_vec(), b"2".to_vec())));
        assert!(
            !expected.iter().any(|(k, _)| k == b"Sa000003"),
            "a removal is written"
        );
        for cut in [0, 1, 3, BATCH_KEYS, 2 * BATCH_KEYS + 5, update.len()] {
            let tree = db.open_tree(format!("cut-{cut}")).unwrap();
            write(&tree, &before, b"Ma", b"1").unwrap();
            // What a crash after `cut` of its writes leaves: the record and part of the keys.
            write_redo(&tree, &encode(&update, b"Ma", b"2")).unwrap();
            write_plain(&tree, update.iter().take(cut)).unwrap();
            assert_eq!(tree.get(b"Ma").unwrap().unwrap().as_ref(), b"1");
            assert!(matches!(finish_interrupted(&tree), Ok(true)));
            assert_eq!(state(&tree), expected, "cut after {cut} writes");
            assert!(matches!(finish_interrupted(&tree), Ok(false)));
        }
        let damaged = db.open_tree("damaged").unwrap();
        let mut bytes = encode(&update, b"Ma", b"2");
        bytes[7] ^= 1;
        write_redo(&damaged, &bytes).unwrap();
        assert!(matches!(
            finish_interrupted(&damaged),
            Err(RedoError::Corrupt(_))
        ));
    }
}
