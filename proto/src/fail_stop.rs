//! Fail-stop (G9): a panic anywhere in a process ends the whole process, loudly.
//!
//! Without this, a panic in one tokio task (a replica's Raft loop, say) kills only that task: the
//! process keeps answering its other calls while the replica is dead, nothing restarts it, and its
//! shard may lose its quorum for good. With the hook installed, the panic is reported on stderr
//! (the process's log) with a `FATAL` line naming the process, appended to a `panics.log` file when
//! the process has a data directory (so an operator, or `wallet-cluster status`, can tell a crash
//! loop from an outage), and the process exits with [`PANIC_EXIT_CODE`] so its supervisor
//! (`wallet-cluster up`, Docker's restart policy, Kubernetes) starts it again.

use std::cell::Cell;
use std::io::Write as _;
use std::path::PathBuf;

/// Held by the thread that reports a panic and ends the process.
static FIRST_PANIC: std::sync::Mutex<()> = std::sync::Mutex::new(());

thread_local! {
    /// Set while [`catch`] runs a call known to panic on bad input (in this thread only).
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it into an error instead of ending the process. Only for a
/// dependency that panics on bad data where it should return an error (sled 0.34 panics while
/// recovering some corrupt files); everything else stays fail-stop.
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// Exit code of a process that panicked (the code Rust itself uses for a panicking main).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Name of the file in a data directory that keeps the last panics.
pub const PANIC_FILE: &str = "panics.log";
/// The panic file is started afresh beyond this size, so a crash loop cannot fill the disk.
const PANIC_FILE_MAX: u64 = 64 * 1024;

/// Installs the hook for the process `name`; `data_dir`, if given, receives `panics.log`.
pub fn install(name: &'static str, data_dir: Option<PathBuf>) {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CATCHING.with(|c| c.get()) {
            eprintln!("caught a panic in a call known to panic on bad data: {info}");
            return;
        }
        // One panic reports and exits; a second thread panicking meanwhile (several replicas
        // applying the same bad entry, say) waits here until the process is gone, so the report
        // and the panic file hold the first panic whole, never lines interleaved.
        let _only_one = FIRST_PANIC.lock().unwrap_or_else(|e| e.into_inner());
        default_hook(info);
        let thread = std::thread::current();
        let line = format!(
            "FATAL: {name} panicked in thread {}: {info}; exiting with code {PANIC_EXIT_CODE} \
             (fail-stop) so that its supervisor restarts it",
            thread.name().unwrap_or("unnamed"),
        );
        eprintln!("{line}");
        if let Some(dir) = &data_dir {
            record(dir, &line);
        }
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

fn record(dir: &std::path::Path, line: &str) {
    let path = dir.join(PANIC_FILE);
    let too_big = std::fs::metadata(&path).is_ok_and(|m| m.len() > PANIC_FILE_MAX);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(!too_big)
        .write(true)
        .truncate(too_big)
        .open(&path);
    if let Ok(mut file) = file {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // One write call for the whole line, so that it lands whole.
        let _ = file.write_all(format!("{now} {line}\n").as_bytes());
        let _ = file.sync_all();
    }
}

/// The last line of a data directory's panic file, if it has one.
pub fn last_panic(data_dir: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(data_dir.join(PANIC_FILE)).ok()?;
    text.lines().last().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_turns_a_panic_into_an_error_and_only_inside_it() {
        assert_eq!(catch(|| 5), Ok(5));
        let caught: Result<(), String> = catch(|| panic!("bad data {}", 7));
        assert_eq!(caught, Err("bad data 7".to_string()));
        assert!(!CATCHING.with(|c| c.get()));
    }
}
