//! The timestamp oracle served by the meta group's leader (DESIGN §7).
//!
//! A timestamp is `physical_ms << 18 | logical`. The leader hands out timestamps from memory, but
//! only below a **limit that is committed in the meta group's Raft log** (`ExtendTso`), a few
//! seconds ahead of its clock. A new leader (or the same node after a restart) first commits a new
//! limit of its own; the entry's outcome tells the limit before it, and the new leader starts at or
//! above that. Since every timestamp ever handed out is below some committed limit, and every new
//! leader starts at or above the highest committed limit, timestamps strictly increase across
//! leader changes, restarts and clocks that go backwards (a node's clock can be shifted with
//! `WALLET_CLOCK_SKEW_MS` to test exactly that).
//!
//! Real time order across routers needs one more rule: a request is served only after a quorum
//! confirmed, after its arrival, that this replica still leads (the replica runs every batch of
//! timestamp requests through a ReadIndex). A leader cut off from its majority, or resumed after
//! a pause while a newer leader served, gets no confirmation and steps down, instead of handing
//! out timestamps below those the newer leader already gave.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tonic::Status;
use wallet_proto::reason::Reason;
use wallet_proto::v1::TsoResponse;

/// Bits of a timestamp holding the logical counter.
pub const LOGICAL_BITS: u32 = 18;
/// How far ahead of the clock a leader commits its limit.
pub const WINDOW_MS: u64 = 3_000;
/// Extend the window when less than this is left.
const REFILL_BELOW_MS: u64 = 1_000;
/// Retry an extension that did not commit within this time.
const EXTEND_RETRY: Duration = Duration::from_secs(1);
/// Most timestamps one request may take.
pub const BATCH_MAX: u32 = 100_000;

type Reply = oneshot::Sender<Result<TsoResponse, Status>>;

fn clock_skew_ms() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("WALLET_CLOCK_SKEW_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// This node's clock as a timestamp with logical part 0.
pub fn physical_now() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .saturating_add(clock_skew_ms())
        .max(0) as u64;
    ms << LOGICAL_BITS
}

/// Refuses a request for no timestamps or more than [`BATCH_MAX`].
pub fn check_count(count: u32) -> Result<(), Status> {
    if count == 0 || count > BATCH_MAX {
        return Err(Reason::InvalidArgument.status(format!("count must be 1..={BATCH_MAX}")));
    }
    Ok(())
}

/// The leader-side state of the oracle.
#[derive(Default)]
pub struct Oracle {
    /// Next timestamp to hand out.
    next: u64,
    /// Timestamps below this are ours to hand out (0: none yet in this term).
    limit: u64,
    extending_since: Option<Instant>,
    waiting: VecDeque<(u32, Reply)>,
}

impl Oracle {
    /// Queues a request for `count` timestamps. The replica calls it only once a quorum confirmed
    /// its leadership after the request arrived (a read index), so no newer leader can have served
    /// timestamps before this one is answered.
    pub fn request(&mut self, count: u32, reply: Reply) {
        if let Err(status) = check_count(count) {
            let _ = reply.send(Err(status));
            return;
        }
        self.waiting.push_back((count, reply));
    }

    /// Lost leadership: the window is no longer ours; waiting callers try elsewhere.
    pub fn step_down(&mut self, not_leader: impl Fn() -> Status) {
        self.limit = 0;
        self.extending_since = None;
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(not_leader()));
        }
    }

    /// Our `ExtendTso` committed in our term: we may hand out up to `limit`, starting at or above
    /// `previous_limit` (everything earlier leaders may have handed out is below it).
    pub fn on_window(&mut self, previous_limit: u64, limit: u64) {
        self.next = self.next.max(previous_limit);
        self.limit = limit;
        self.extending_since = None;
    }

    /// Answers what the window allows; returns a limit to commit when the window needs to grow.
    pub fn serve(&mut self, now: Instant) -> Option<u64> {
        let physical = physical_now();
        while let Some((count, _)) = self.waiting.front() {
            let first = self.next.max(physical);
            let end = first + u64::from(*count);
            if self.limit == 0 || end > self.limit {
                break;
            }
            let (count, reply) = self.waiting.pop_front().expect("front exists");
            self.next = end;
            let _ = reply.send(Ok(TsoResponse {
                first,
                count,
                limit: self.limit,
            }));
        }
        let low = self.limit < physical.max(self.next) + (REFILL_BELOW_MS << LOGICAL_BITS);
        let stalled = self
            .extending_since
            .is_some_and(|since| now.duration_since(since) > EXTEND_RETRY);
        if (low || !self.waiting.is_empty()) && (self.extending_since.is_none() || stalled) {
            self.extending_since = Some(now);
            let base = physical.max(self.next).max(self.limit);
            return Some(base + (WINDOW_MS << LOGICAL_BITS));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(oracle: &mut Oracle, count: u32) -> oneshot::Receiver<Result<TsoResponse, Status>> {
        let (tx, rx) = oneshot::channel();
        oracle.request(count, tx);
        rx
    }

    #[test]
    fn nothing_is_served_before_a_window_commits() {
        let mut oracle = Oracle::default();
        let mut rx = ask(&mut oracle, 5);
        let limit = oracle.serve(Instant::now()).expect("asks for a window");
        assert!(rx.try_recv().is_err());
        assert!(
            oracle.serve(Instant::now()).is_none(),
            "one extension at a time"
        );
        oracle.on_window(0, limit);
        assert!(oracle.serve(Instant::now()).is_none());
        let got = rx.try_recv().unwrap().unwrap();
        assert_eq!(got.count, 5);
        assert!(got.first + 5 <= limit);
    }

    #[test]
    fn a_new_leader_starts_above_the_previous_limit_even_if_its_clock_is_behind() {
        let mut oracle = Oracle::default();
        // The previous leader's limit is an hour ahead of our clock.
        let previous = physical_now() + ((3_600_000u64) << LOGICAL_BITS);
        let mut rx = ask(&mut oracle, 1);
        let limit = oracle.serve(Instant::now()).unwrap();
        oracle.on_window(previous, limit.max(previous + (WINDOW_MS << LOGICAL_BITS)));
        oracle.serve(Instant::now());
        let got = rx.try_recv().unwrap().unwrap();
        assert!(got.first >= previous);
    }

    #[test]
    fn timestamps_strictly_increase_within_a_term() {
        let mut oracle = Oracle::default();
        let mut last = 0;
        let _warm_up = ask(&mut oracle, 1);
        let limit = oracle.serve(Instant::now()).unwrap();
        oracle.on_window(0, limit);
        oracle.serve(Instant::now());
        for _ in 0..1000 {
            let mut rx = ask(&mut oracle, 3);
            if let Some(limit) = oracle.serve(Instant::now()) {
                oracle.on_window(0, limit);
                oracle.serve(Instant::now());
            }
            let got = rx.try_recv().unwrap().unwrap();
            assert!(got.first > last);
            last = got.first + 2;
        }
    }

    #[test]
    fn stepping_down_fails_the_waiting_callers() {
        let mut oracle = Oracle::default();
        let mut rx = ask(&mut oracle, 1);
        oracle.step_down(|| Reason::NotLeader.status("gone"));
        assert!(rx.try_recv().unwrap().is_err());
    }
}
