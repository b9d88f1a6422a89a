//! Request retention (G10): how long a shard remembers a request id, and the shard's clock.
//!
//! A shard remembers every request's outcome so that a retry answers it again (G4), but not
//! forever: a record is forgotten once the retention window has passed since the request was
//! issued. A request issued longer ago than the window is refused with `REQUEST_EXPIRED` whether
//! or not its record is still there, so forgetting a record never lets a retry apply twice, as
//! long as the retry carries its first issue time (`issued_at_ms`; the client crate sets it). A
//! request without an issue time counts as issued when it applied.
//!
//! Everything that decides what is forgotten comes from the log (DESIGN §5), so every replica
//! forgets the same records at the same log position, whatever its own configuration:
//! - the window is replicated state, set by a `SetRetention` entry that the leader proposes when
//!   its cluster file (`request_retention_secs`, default 24 h) says otherwise; until the first one
//!   applies, nothing is forgotten or refused as expired;
//! - the shard's clock is the highest oracle timestamp (its physical milliseconds) of any
//!   command applied so far: the one clock the cluster already trusts to never go back, rather
//!   than each leader's own. It is stored with every checkpoint and travels in snapshots.
//!
//! What is forgotten, and when (the window counts from the request's issue time):
//! - deposits, withdrawals, same-shard transfers, and cross-shard transfers that did not happen
//!   (refused or aborted on their primary): once the window passed. A credit side that asks about
//!   a forgotten transfer that did not happen hears "not found", which means abort: right.
//! - a COMMITTED cross-shard transfer on its primary: once the window passed **and** its credit
//!   side confirmed that it holds no PENDING intent for it (recovery asks, then proposes
//!   `ForgetTransfers`). Forgetting it sooner would let a credit side still waiting for the
//!   decision hear "not found" and abort a transfer whose debit happened.
//! - a CREDITED or ABORTED intent on a credit shard: two windows after (a margin for the shards'
//!   clocks; nothing asks for a decided intent but a late retry, which the primary answers first).
//!   PENDING intents and PREPARED transfers are never forgotten.

use std::collections::BTreeSet;

use wallet_proto::reason::Reason;
use wallet_proto::v1::Command;

use wallet_proto::reason::Refusal;

use crate::writes::{IntentKey, RequestKey, Write};

/// How far ahead of the shard's clock a request's issue time may be (client clocks differ).
pub const ISSUED_AHEAD_MAX_MS: i64 = 5 * 60 * 1000;

/// Most records one applied command forgets: the work per command stays small, and since a
/// command adds at most one record, a backlog still drains.
pub const FORGET_PER_COMMAND: usize = 8;

/// Longest window a `SetRetention` may set (ten years, as the cluster file).
pub const WINDOW_MAX_MS: i64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// The shard's clock and the records waiting for their window to pass.
#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// The replicated window; `None` until the first `SetRetention` applied.
    window_ms: Option<i64>,
    clock_ms: i64,
    /// The clock as last handed out for storage.
    stored_clock_ms: i64,
    /// (issued at, record key), earliest first: with one window for all, also the order in
    /// which their windows pass. Records forgotten once it passed.
    expiries: BTreeSet<(i64, RequestKey)>,
    /// COMMITTED cross-shard records: forgotten once it passed and the credit side confirmed.
    committed: BTreeSet<(i64, RequestKey)>,
    /// Decided intents: forgotten two windows after their issue time.
    intents: BTreeSet<(i64, IntentKey)>,
}

/// What happens to a record once its window passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still needed (a PREPARED transfer, a PENDING intent, an internal record).
    Keep,
    /// Forgotten once the window passed.
    Forget,
    /// A COMMITTED cross-shard transfer: forgotten once the window passed and its credit side
    /// confirmed it holds no PENDING intent.
    Confirm,
}

impl Retention {
    /// The replicated window, in milliseconds (`None`: not set yet, nothing is forgotten).
    pub fn window_ms(&self) -> Option<i64> {
        self.window_ms
    }

    /// Sets the window (1 ms ..= [`WINDOW_MAX_MS`]); on start, snapshot install or `SetRetention`.
    pub(crate) fn set_window(&mut self, window_ms: i64) {
        self.window_ms = Some(window_ms.clamp(1, WINDOW_MAX_MS));
    }

    /// The shard's clock: the latest time any applied command carried.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Records and intents waiting to be forgotten.
    pub fn tracked(&self) -> usize {
        self.expiries.len() + self.committed.len() + self.intents.len()
    }

    /// Loads the stored clock (on start or snapshot install).
    pub(crate) fn load_clock(&mut self, clock_ms: i64) {
        self.clock_ms = clock_ms;
        self.stored_clock_ms = clock_ms;
    }

    /// Forgets the window, the clock and every tracked record.
    pub(crate) fn clear(&mut self) {
        *self = Retention::default();
    }

    /// Moves the clock forward to the command's oracle timestamp, never back.
    pub(crate) fn advance(&mut self, command: &Command) {
        // A timestamp's physical part is its top 46 bits: always within i64.
        let oracle_ms = i64::try_from(command.ts >> 18).unwrap_or(i64::MAX);
        self.clock_ms = self.clock_ms.max(oracle_ms);
    }

    /// Checks a request's issue time (0: not given): not expired, not far ahead.
    pub(crate) fn check_issued(&self, issued_at_ms: i64) -> Result<(), Refusal> {
        if issued_at_ms == 0 {
            return Ok(());
        }
        if issued_at_ms < 0 {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!("issued_at_ms {issued_at_ms} is negative"),
            ));
        }
        // (A shard that saw no timestamp yet knows no time to compare with.)
        if self.clock_ms > 0 && issued_at_ms > self.clock_ms.saturating_add(ISSUED_AHEAD_MAX_MS) {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "issued_at_ms {issued_at_ms} is more than {ISSUED_AHEAD_MAX_MS} ms ahead of \
                     the shard's clock ({})",
                    self.clock_ms
                ),
            ));
        }
        if let (true, Some(window_ms)) = (self.is_past(issued_at_ms), self.window_ms) {
            return Err(Refusal::new(
                Reason::RequestExpired,
                format!(
                    "the request was issued at {issued_at_ms} ms, more than the retention window \
                     ({window_ms} ms) before the shard's clock ({}); its outcome is no longer \
                     kept, so it cannot be retried",
                    self.clock_ms
                ),
            ));
        }
        Ok(())
    }

    /// Whether the window (once set) has passed since `issued_ms`.
    pub(crate) fn is_past(&self, issued_ms: i64) -> bool {
        self.windows_past(issued_ms, 1)
    }

    fn windows_past(&self, issued_ms: i64, windows: i128) -> bool {
        self.cutoff(windows)
            .is_some_and(|cutoff| i128::from(issued_ms) <= cutoff)
    }

    /// The latest issue time `windows` windows have passed since (none until a window is set).
    fn cutoff(&self, windows: i128) -> Option<i128> {
        self.window_ms
            .map(|window_ms| i128::from(self.clock_ms) - i128::from(window_ms) * windows)
    }

    /// The issue time a new record keeps: the request's own, else the shard's clock.
    pub(crate) fn issued(&self, issued_at_ms: i64) -> i64 {
        if issued_at_ms > 0 {
            issued_at_ms
        } else {
            self.clock_ms
        }
    }

    /// Starts the window of a record issued at `issued_ms` (0: stored before retention
    /// existed, kept until the first window is set) with the given fate.
    pub(crate) fn track(&mut self, key: RequestKey, issued_ms: i64, fate: Fate) {
        if issued_ms <= 0 {
            return;
        }
        match fate {
            Fate::Forget => {
                self.expiries.insert((issued_ms, key));
            }
            Fate::Confirm => {
                self.committed.insert((issued_ms, key));
            }
            Fate::Keep => {}
        }
    }

    /// Starts the two windows of a decided intent.
    pub(crate) fn track_intent(&mut self, key: IntentKey, issued_ms: i64) {
        if issued_ms > 0 {
            self.intents.insert((issued_ms, key));
        }
    }

    /// A confirmed record leaves the set of those awaiting confirmation.
    pub(crate) fn confirmed(&mut self, key: RequestKey, issued_ms: i64) {
        self.committed.remove(&(issued_ms, key));
    }

    /// Records whose window has passed, at most [`FORGET_PER_COMMAND`], earliest first.
    pub(crate) fn due(&mut self) -> Vec<RequestKey> {
        let cutoff = self.cutoff(1);
        pop_due(&mut self.expiries, cutoff)
    }

    /// Decided intents two windows old, at most [`FORGET_PER_COMMAND`], earliest first.
    pub(crate) fn due_intents(&mut self) -> Vec<IntentKey> {
        let cutoff = self.cutoff(2);
        pop_due(&mut self.intents, cutoff)
    }

    /// COMMITTED cross-shard records whose window passed (at most `limit`, earliest first),
    /// and whether more are waiting.
    pub(crate) fn awaiting_confirmation(&self, limit: usize) -> (Vec<&RequestKey>, bool) {
        let mut past = self
            .committed
            .iter()
            .take_while(|(issued, _)| self.is_past(*issued))
            .map(|(_, key)| key);
        let keys: Vec<&RequestKey> = past.by_ref().take(limit).collect();
        (keys, past.next().is_some())
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

/// Takes the keys issued at or before `cutoff` (none without one), at most
/// [`FORGET_PER_COMMAND`], earliest first.
fn pop_due<K: Ord>(set: &mut BTreeSet<(i64, K)>, cutoff: Option<i128>) -> Vec<K> {
    let mut due = Vec::new();
    let Some(cutoff) = cutoff else {
        return due;
    };
    while due.len() < FORGET_PER_COMMAND {
        match set.first() {
            Some((issued, _)) if i128::from(*issued) <= cutoff => {}
            _ => break,
        }
        if let Some((_, key)) = set.pop_first() {
            due.push(key);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command stamped at `ms` by the oracle (and at a wild leader clock, which is ignored).
    fn at(ms: i64) -> Command {
        Command {
            ts: (ms as u64) << 18 | 7,
            at_ms: i64::MAX,
            ..Default::default()
        }
    }

    fn with_window(window_ms: i64) -> Retention {
        let mut r = Retention::default();
        r.set_window(window_ms);
        r
    }

    #[test]
    fn the_clock_follows_the_oracle_and_never_goes_back() {
        let mut r = with_window(1000);
        r.advance(&at(500));
        r.advance(&at(100));
        assert_eq!(
            r.clock_ms(),
            500,
            "a leader's own clock (at_ms) never counts"
        );
        r.advance(&Command {
            ts: u64::MAX,
            at_ms: i64::MIN,
            ..Default::default()
        });
        assert_eq!(r.clock_ms(), (u64::MAX >> 18) as i64);
    }

    #[test]
    fn issue_times_are_checked_over_the_whole_range() {
        let mut r = with_window(1000);
        r.advance(&at(10_000));
        assert!(r.check_issued(0).is_ok());
        assert!(r.check_issued(9_001).is_ok());
        assert_eq!(
            r.check_issued(9_000).unwrap_err().reason,
            Reason::RequestExpired
        );
        assert_eq!(
            r.check_issued(1).unwrap_err().reason,
            Reason::RequestExpired
        );
        assert!(r.check_issued(10_000 + ISSUED_AHEAD_MAX_MS).is_ok());
        assert_eq!(
            r.check_issued(10_001 + ISSUED_AHEAD_MAX_MS)
                .unwrap_err()
                .reason,
            Reason::InvalidArgument
        );
        assert_eq!(
            r.check_issued(i64::MAX).unwrap_err().reason,
            Reason::InvalidArgument
        );
        assert_eq!(
            r.check_issued(-1).unwrap_err().reason,
            Reason::InvalidArgument
        );
        assert_eq!(
            r.check_issued(i64::MIN).unwrap_err().reason,
            Reason::InvalidArgument
        );
        // The longest window at the end of time: never expires anything, never overflows.
        let mut long = with_window(i64::MAX);
        assert_eq!(long.window_ms(), Some(WINDOW_MAX_MS));
        long.advance(&at(1));
        long.clock_ms = i64::MAX;
        assert!(long.check_issued(i64::MAX - WINDOW_MAX_MS + 1).is_ok());
        long.track(("a".into(), "r".into()), i64::MAX - 1, Fate::Forget);
        assert!(long.due().is_empty());
    }

    #[test]
    fn without_a_window_nothing_expires_but_records_are_tracked() {
        let mut r = Retention::default();
        r.advance(&at(1_000_000));
        assert!(r.check_issued(1).is_ok());
        r.track(("a".into(), "r".into()), 1, Fate::Forget);
        assert!(r.due().is_empty());
        assert_eq!(r.tracked(), 1);
        r.set_window(10);
        assert_eq!(
            r.check_issued(1).unwrap_err().reason,
            Reason::RequestExpired
        );
        assert_eq!(r.due().len(), 1);
    }

    #[test]
    fn records_are_due_once_their_window_passed_a_few_at_a_time() {
        let mut r = with_window(1000);
        for i in 0..20 {
            r.track(("a".into(), format!("r{i:02}")), 100 + i, Fate::Forget);
        }
        r.track(("a".into(), "old".into()), 0, Fate::Forget);
        assert_eq!(
            r.tracked(),
            20,
            "a record without an issue time is not tracked"
        );
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

    #[test]
    fn committed_transfers_wait_for_confirmation_and_intents_for_two_windows() {
        let mut r = with_window(1000);
        let key = |id: &str| ("a".to_string(), id.to_string());
        r.track(key("c1"), 100, Fate::Confirm);
        r.track(key("c2"), 200, Fate::Confirm);
        r.track(key("p"), 100, Fate::Keep);
        r.track_intent(("c".into(), "a".into(), "i".into()), 100);
        r.advance(&at(1150));
        assert!(r.due().is_empty(), "never forgotten on their own");
        assert_eq!(r.awaiting_confirmation(10), (vec![&key("c1")], false));
        r.advance(&at(1250));
        assert_eq!(r.awaiting_confirmation(1), (vec![&key("c1")], true));
        r.confirmed(key("c1"), 100);
        assert_eq!(r.awaiting_confirmation(10), (vec![&key("c2")], false));
        assert!(r.due_intents().is_empty());
        r.advance(&at(2100));
        assert_eq!(r.due_intents().len(), 1);
        assert_eq!(r.tracked(), 1);
    }
}
