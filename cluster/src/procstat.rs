//! What a cluster's processes cost, read from `/proc`: CPU time, resident memory, and the bytes
//! their data directories hold. The benchmark samples these once a second.
//!
//! Processes are found by their command line: every node and router of a cluster is started with
//! `--cluster FILE`, so any process naming that file belongs to it (a playground started by the
//! benchmark itself, or one started by `wallet-cluster up`). A node's data directory is the
//! argument of its `--data-dir`.

use std::fs;
use std::path::{Path, PathBuf};

/// One process of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterProcess {
    pub pid: u32,
    /// `node-N` or `router`.
    pub name: String,
    pub data_dir: Option<PathBuf>,
}

/// Processes whose command line names `cluster_file` after `--cluster`, other than this one (a
/// benchmark given `--cluster` is a client of the cluster, not part of it).
pub fn discover(cluster_file: &Path) -> Vec<ClusterProcess> {
    let wanted = fs::canonicalize(cluster_file).unwrap_or_else(|_| cluster_file.to_path_buf());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        found.extend(member(pid, &args, &wanted));
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// The cluster process `pid` with command line `args` is, if it names the cluster file `wanted`
/// and is not this process.
fn member(pid: u32, args: &[String], wanted: &Path) -> Option<ClusterProcess> {
    if pid == std::process::id() {
        return None;
    }
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let cluster = value_of("--cluster")?;
    let cluster = fs::canonicalize(&cluster).unwrap_or_else(|_| PathBuf::from(&cluster));
    if cluster != wanted {
        return None;
    }
    let name = match value_of("--id") {
        Some(id) => format!("node-{id}"),
        None => "router".to_string(),
    };
    Some(ClusterProcess {
        pid,
        name,
        data_dir: value_of("--data-dir").map(PathBuf::from),
    })
}

/// User + system CPU time of a process so far, in milliseconds (None once it has gone).
pub fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    Some((utime + stime) * 1000 / ticks)
}

/// Resident set size of a process in bytes (None once it has gone).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes of all regular files under a directory (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ms(pid).is_some());
        assert!(rss_bytes(pid).unwrap_or(0) > 1024 * 1024);
    }

    #[test]
    fn members_name_the_cluster_file_and_this_process_is_never_one() {
        let file = Path::new("/nonexistent/cluster.toml");
        let args = |extra: &[&str]| -> Vec<String> {
            ["wallet-bench", "--cluster", "/nonexistent/cluster.toml"]
                .iter()
                .chain(extra)
                .map(|a| a.to_string())
                .collect()
        };
        let other = std::process::id().wrapping_add(1);
        assert_eq!(
            member(other, &args(&[]), file).map(|p| p.name),
            Some("router".into())
        );
        let node = member(other, &args(&["--id", "2", "--data-dir", "/d"]), file).unwrap();
        assert_eq!(
            (node.name.as_str(), node.data_dir),
            ("node-2", Some(PathBuf::from("/d")))
        );
        assert_eq!(member(std::process::id(), &args(&[]), file), None);
        assert_eq!(member(other, &args(&[]), Path::new("/other.toml")), None);
        assert_eq!(member(other, &["wallet-bench".to_string()], file), None);
    }

    #[test]
    fn directory_sizes_add_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        fs::write(dir.path().join("a/b/f"), [0u8; 1000]).expect("write");
        fs::write(dir.path().join("g"), [0u8; 24]).expect("write");
        assert_eq!(dir_bytes(dir.path()), 1024);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
    }
}
