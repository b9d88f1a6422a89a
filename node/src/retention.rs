//! Request retention (G10): how long a shard remembers a request id, and the shard's clock.
//!
//! A shard remembers every request's outcome so that a retry answers it again (G4), but not
//! forever: a record is forgotten once the cluster's retention window (`request_retention_secs`
//! in the cluster file, default 24 h) has passed since the request was issued. A request issued
//! longer ago than the window is refused with `REQUEST_EXPIRED` whether or not its record is
//! still there, so forgetting a record never lets a retry apply twice, as long as the retry
//! carries its first issue time (`issued_at_ms`; the client crate sets it). A request without
//! an issue time counts as issued when it applied.
//!
//! Time inside a state machine comes from the log (DESIGN §5): the shard's clock is the highest
//! leader proposal time (`at_ms`) or oracle timestamp (its physical milliseconds) of any command
//! applied so far. It never goes back, is stored with every checkpoint and travels in
//! snapshots, so every replica forgets the same records at the same log position.
//!
//! Forgotten today: deposits, withdrawals and same-shard transfers. Cross-shard transfer records
//! and intents are kept: the credit side's recovery asks the primary for the decision, and a
//! primary cannot yet tell a forgotten commit from none.

use std::collections::BTreeSet;

use wallet_proto::reason::Reason;
use wallet_proto::v1::Command;

use crate::state_machine::{Refusal, RequestKey, Write};

/// How far ahead of the shard's clock a request's issue time may be (client clocks differ).
pub const ISSUED_AHEAD_MAX_MS: i64 = 5 * 60 * 1000;

/// Most records one applied command forgets: the work per command stays small, and since a
/// command adds at most one record, a backlog still drains.
pub const FORGET_PER_COMMAND: usize = 8;

/// Default window, for state machines built without a cluster file (tests).
pub const WINDOW_DEFAULT_MS: i64 = 24 * 60 * 60 * 1000;

/// The shard's clock and the records waiting for their window to pass.
#[derive(Clone, Debug)]
pub struct Retention {
    window_ms: i64,
    clock_ms: i64,
    /// The clock as last handed out for storage.
    stored_clock_ms: i64,
    /// (issued at, record key), earliest first: with one window for all, also the order in
    /// which their windows pass.
    expiries: BTreeSet<(i64, RequestKey)>,
}

impl Retention {
    /// A retention window of `window_ms` (at least 1 ms).
    pub fn new(window_ms: i64) -> Retention {
        Retention {
            window_ms: window_ms.max(1),
            clock_ms: 0,
            stored_clock_ms: 0,
            expiries: BTreeSet::new(),
        }
    }

    /// The window, in milliseconds.
    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// The shard's clock: the latest time any applied command carried.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Records waiting to be forgotten.
    pub fn tracked(&self) -> usize {
        self.expiries.len()
    }

    /// Loads the stored clock (on start or snapshot install).
    pub(crate) fn load_clock(&mut self, clock_ms: i64) {
        self.clock_ms = clock_ms;
        self.stored_clock_ms = clock_ms;
    }

    /// Forgets the clock and every tracked record; keeps the window.
    pub(crate) fn clear(&mut self) {
        *self = Retention::new(self.window_ms);
    }

    /// Moves the clock forward to the command's time, never back.
    pub(crate) fn advance(&mut self, command: &Command) {
        // A timestamp's physical part is its top 46 bits: always within i64.
        let oracle_ms = i64::try_from(command.ts >> 18).unwrap_or(i64::MAX);
        self.clock_ms = self.clock_ms.max(command.at_ms).max(oracle_ms);
    }

    /// Checks a request's issue time (0: not given): not expired, not far ahead.
    pub(crate) fn check_issued(&self, issued_at_ms: i64) -> Result<(), Refusal> {
        if issued_at_ms == 0 {
            return Ok(());
        }
        if issued_at_ms < 0 {
            return Err((
                Reason::InvalidArgument,
                format!("issued_at_ms {issued_at_ms} is negative"),
            ));
        }
        if issued_at_ms > self.clock_ms.saturating_add(ISSUED_AHEAD_MAX_MS) {
            return Err((
                Reason::InvalidArgument,
                format!(
                    "issued_at_ms {issued_at_ms} is more than {ISSUED_AHEAD_MAX_MS} ms ahead of \
                     the shard's clock ({})",
                    self.clock_ms
                ),
            ));
        }
        if self.is_past(issued_at_ms) {
            return Err((
                Reason::RequestExpired,
                format!(
                    "the request was issued at {issued_at_ms} ms, more than the retention window \
                     ({} ms) before the shard's clock ({}); its outcome is no longer kept, so it \
                     cannot be retried",
                    self.window_ms, self.clock_ms
                ),
            ));
        }
        Ok(())
    }

    /// Whether the window has passed since `issued_ms`.
    fn is_past(&self, issued_ms: i64) -> bool {
        i128::from(self.clock_ms) - i128::from(issued_ms) >= i128::from(self.window_ms)
    }

    /// The issue time a new record keeps: the request's own, else the shard's clock.
    pub(crate) fn issued(&self, issued_at_ms: i64) -> i64 {
        if issued_at_ms > 0 {
            issued_at_ms
        } else {
            self.clock_ms
        }
    }

    /// Starts the window of a record issued at `issued_ms` (0: an older record, kept).
    pub(crate) fn track(&mut self, key: RequestKey, issued_ms: i64) {
        if issued_ms > 0 {
            self.expiries.insert((issued_ms, key));
        }
    }

    /// Records whose window has passed, at most [`FORGET_PER_COMMAND`], earliest first.
    pub(crate) fn due(&mut self) -> Vec<RequestKey> {
        let mut due = Vec::new();
        while due.len() < FORGET_PER_COMMAND {
            match self.expiries.first() {
                Some((issued, _)) if self.is_past(*issued) => {}
                _ => break,
            }
            if let Some((_, key)) = self.expiries.pop_first() {
                due.push(key);
            }
        }
        due
    }

    /// The clock to store with the next checkpoint, if it moved since it was last handed out.
    pub(crate) fn clock_write(&mut self) -> Option<Write> {
        if self.clock_ms == self.stored_clock_ms {
            return None;
        }
        self.stored_clock_ms = self.clock_ms;
        Some(Write::Clock(self.clock_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: i64) -> Command {
        Command {
            at_ms,
            ..Default::default()
        }
    }

    #[test]
    fn the_clock_never_goes_back_and_follows_the_oracle_too() {
        let mut r = Retention::new(1000);
        r.advance(&at(500));
        r.advance(&at(100));
        assert_eq!(r.clock_ms(), 500);
        r.advance(&Command {
            ts: 700 << 18 | 5,
            ..Default::default()
        });
        assert_eq!(r.clock_ms(), 700);
        r.advance(&Command {
            ts: u64::MAX,
            at_ms: i64::MIN,
            ..Default::default()
        });
        assert_eq!(r.clock_ms(), (u64::MAX >> 18) as i64);
    }

    #[test]
    fn issue_times_are_checked_over_the_whole_range() {
        let mut r = Retention::new(1000);
        r.advance(&at(10_000));
        assert!(r.check_issued(0).is_ok());
        assert!(r.check_issued(9_001).is_ok());
        assert_eq!(r.check_issued(9_000).unwrap_err().0, Reason::RequestExpired);
        assert_eq!(r.check_issued(1).unwrap_err().0, Reason::RequestExpired);
        assert!(r.check_issued(10_000 + ISSUED_AHEAD_MAX_MS).is_ok());
        assert_eq!(
            r.check_issued(10_001 + ISSUED_AHEAD_MAX_MS).unwrap_err().0,
            Reason::InvalidArgument
        );
        assert_eq!(
            r.check_issued(i64::MAX).unwrap_err().0,
            Reason::InvalidArgument
        );
        assert_eq!(r.check_issued(-1).unwrap_err().0, Reason::InvalidArgument);
        assert_eq!(
            r.check_issued(i64::MIN).unwrap_err().0,
            Reason::InvalidArgument
        );
        // A window near i64::MAX never expires anything and never overflows.
        let mut long = Retention::new(i64::MAX);
        long.advance(&at(i64::MAX));
        assert!(long.check_issued(1).is_ok());
        long.track(("a".into(), "r".into()), 1);
        assert!(long.due().is_empty());
    }

    #[test]
    fn records_are_due_once_their_window_passed_a_few_at_a_time() {
        let mut r = Retention::new(1000);
        for i in 0..20 {
            r.track(("a".into(), format!("r{i:02}")), 100 + i);
        }
        r.track(("a".into(), "old".into()), 0);
        assert_eq!(r.tracked(), 20, "a record without an issue time is kept");
        r.advance(&at(1099));
        assert!(r.due().is_empty());
        r.advance(&at(1105));
        let first = r.due();
        assert_eq!(first.len(), 6, "forget at 1100..=1105");
        assert_eq!(first[0].1, "r00");
        assert!(r.due().is_empty());
        r.advance(&at(5000));
        assert_eq!(r.due().len(), FORGET_PER_COMMAND);
        assert_eq!(r.due().len(), 14 - FORGET_PER_COMMAND);
        assert!(r.due().is_empty());
        assert_eq!(r.tracked(), 0);
    }
}
