//! What one durable append costs in sled and in the segment log: the measurement behind moving
//! the Raft log out of sled (README § Performance, "What is next" 1).
//!
//! `cargo run --release -p wallet-node --example segment_log_vs_sled -- [SYNCS] [RECORDS] [BYTES]
//! [SLED_KEYS]` appends SYNCS rounds of RECORDS records of BYTES bytes each (defaults 2 000, 8,
//! 200), making each round durable, once through sled (one insert per record under its index, then
//! `Db::flush`, as a replica's Raft append does) — alone, then with as many 100-byte keys more
//! per round (a checkpoint's writes riding in the same flush, as on a node, into a tree first
//! filled with SLED_KEYS keys, default 0) — and once through `SegmentLog` (`append`, then `sync`),
//! in a fresh directory under the current one. Prints wall time and process CPU per round.

use std::time::Instant;

use wallet_node::segment_log::SegmentLog;

/// User plus system CPU time of this process so far, in milliseconds.
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) * 10
}

fn report(what: &str, syncs: u64, started: Instant, cpu_before: u64) {
    let wall = started.elapsed();
    let cpu = cpu_ms().saturating_sub(cpu_before);
    println!(
        "{what:<40} {:>8.1} µs wall per round, {:>7.1} µs CPU per round",
        wall.as_micros() as f64 / syncs as f64,
        cpu as f64 * 1000.0 / syncs as f64,
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let syncs = args.next().transpose()?.unwrap_or(2_000).max(1);
    let records = args.next().transpose()?.unwrap_or(8);
    let bytes = args.next().transpose()?.unwrap_or(200) as usize;
    let sled_keys = args.next().transpose()?.unwrap_or(0);
    let dir = tempfile::tempdir_in(".")?;
    let payload = vec![0x5a_u8; bytes];

    for with_state in [false, true] {
        let db = sled::Config::new()
            .path(dir.path().join(format!("sled-{with_state}")))
            .cache_capacity(256 * 1024 * 1024)
            .open()?;
        let log_tree = db.open_tree("log")?;
        let state = db.open_tree("state")?;
        let key = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes();
        for i in 0..sled_keys {
            state.insert(key(i), &[1u8; 100][..])?;
        }
        db.flush()?;
        let (started, cpu) = (Instant::now(), cpu_ms());
        let mut index = 0u64;
        for _ in 0..syncs {
            for _ in 0..records {
                index += 1;
                log_tree.insert(index.to_be_bytes(), &payload[..])?;
                if with_state {
                    state.insert(key(sled_keys + index), &[1u8; 100][..])?;
                }
            }
            db.flush()?;
        }
        let what = if with_state {
            "sled: inserts + state inserts + flush"
        } else {
            "sled: inserts + Db::flush"
        };
        report(what, syncs, started, cpu);
    }

    let (mut log, _) = SegmentLog::open(&dir.path().join("segments"), 64 * 1024 * 1024)?;
    let (started, cpu) = (Instant::now(), cpu_ms());
    for _ in 0..syncs {
        for _ in 0..records {
            log.append(&payload)?;
        }
        log.sync()?;
    }
    report("segment log: append + sync", syncs, started, cpu);
    Ok(())
}
