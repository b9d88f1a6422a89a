//! Measures what sled 0.34 keeps in memory per key written through `apply_batch`, by batch size:
//! why the node writes checkpoints and snapshot installs in small batches.
//!
//! `cargo run --release -p wallet-node --example sled_batch_memory -- [KEYS] [BATCH]...`
//! writes KEYS new keys (default 1 000 000, spread over the key space, 60-byte values) into a
//! fresh database (BATCH 0: one plain insert each, as a large checkpoint writes them) (cache capacity 256 MiB, as a node's) once per batch size, and prints the
//! process's RSS and the time taken. On the 2-core CI machine (2026-11-29): batches of 256 →
//! 285 MB, 15 s; of 4 096 → 2 816 MB, 17 s (the RSS stays after a flush). 2026-11-30: one
//! insert each → 273 MB, 19.6 s; batches of 256 → 273 MB, 21.5 s.

fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let sizes: Vec<u64> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() { vec![256] } else { sizes };
    for batch_size in sizes {
        // One child process per size, so each starts from a clean heap.
        if std::env::var_os("SLED_BATCH_CHILD").is_none() {
            let status = std::process::Command::new(std::env::current_exe()?)
                .arg(keys.to_string())
                .arg(batch_size.to_string())
                .env("SLED_BATCH_CHILD", "1")
                .status()?;
            if !status.success() {
                return Err(format!("batch size {batch_size} failed").into());
            }
            continue;
        }
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(256 << 20)
            .open()?;
        let tree = db.open_tree("t")?;
        let started = std::time::Instant::now();
        let mut batch = sled::Batch::default();
        for i in 0..keys {
            let spread = i.wrapping_mul(2_654_435_761) % keys.max(1);
            let key = format!("Sh-account-{spread:08}-{i}");
            if batch_size == 0 {
                tree.insert(key.as_bytes(), vec![7u8; 60])?;
                continue;
            }
            batch.insert(key.as_bytes(), vec![7u8; 60]);
            if (i + 1) % batch_size == 0 {
                tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        tree.apply_batch(batch)?;
        db.flush()?;
        println!(
            "{keys} new keys {}: RSS {} MB, {:.1} s",
            if batch_size == 0 {
                "one insert each".to_string()
            } else {
                format!("in batches of {batch_size}")
            },
            rss_mb(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
