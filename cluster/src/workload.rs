//! Pieces shared by the demo and the benchmark: a tiny deterministic generator and the rule that
//! picks the two accounts of a transfer (any two, two of one shard, many payers to one merchant,
//! or card payments: holds between two accounts of one shard).

use std::collections::BTreeMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use wallet_proto::topology::Ring;

/// How a transfer picks its accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pairs {
    /// Any two accounts: with N shards, (N-1)/N of transfers cross shards.
    Random,
    /// Two accounts of the same shard: one Raft entry each.
    SameShard,
    /// Every payer pays the first account (a hot merchant account).
    Merchant,
    /// Card payments between two accounts of one shard (README § Holds): the demo authorizes
    /// holds and captures them whole or in part, voids them or lets them expire; wallet-bench
    /// authorizes and captures whole (two Raft entries per payment).
    Card,
    /// Card payments between any two accounts: with N shards, (N-1)/N of the holds cross shards
    /// (a promise on the payee's shard, README § Holds).
    CardRandom,
}

impl Pairs {
    /// Card payments (holds), within a shard or between any two accounts.
    pub fn is_card(self) -> bool {
        matches!(self, Pairs::Card | Pairs::CardRandom)
    }
}

/// xorshift64*: enough to pick accounts and amounts, and the same sequence for the same seed.
pub struct Rng(pub u64);

impl Rng {
    /// A distinct, non-zero seed per worker.
    pub fn for_worker(worker: usize) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Takes the histogram of the last interval (a progress line's) and gives its p50 and p99 in ms
/// (zeros when nothing completed).
pub fn take_p50_p99(interval: &Mutex<Option<Histogram<u64>>>) -> (f64, f64) {
    interval
        .lock()
        .ok()
        .and_then(|mut h| h.take())
        .map(|h| {
            (
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
            )
        })
        .unwrap_or((0.0, 0.0))
}

/// Picks the two accounts (indexes into the account list) of a transfer.
pub struct Pairing {
    pub pairs: Pairs,
    shard_of: Vec<u64>,
    /// Account indexes by shard, for shards holding at least two (same-shard mode).
    groups: Vec<Vec<usize>>,
}

impl Pairing {
    pub fn new(ids: &[String], ring: &Ring, pairs: Pairs) -> Result<Pairing, String> {
        let shard_of: Vec<u64> = ids.iter().map(|id| ring.shard_of(id)).collect();
        let mut by_shard: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, shard) in shard_of.iter().enumerate() {
            by_shard.entry(*shard).or_default().push(i);
        }
        let groups: Vec<Vec<usize>> = by_shard.into_values().filter(|g| g.len() > 1).collect();
        let one_shard = matches!(pairs, Pairs::SameShard | Pairs::Card);
        if ids.len() < 2 || (one_shard && groups.is_empty()) {
            return Err("need at least two accounts (on one shard for same-shard pairs)".into());
        }
        Ok(Pairing {
            pairs,
            shard_of,
            groups,
        })
    }

    /// (from, to), never the same account.
    pub fn pair(&self, rng: &mut Rng) -> (usize, usize) {
        let n = self.shard_of.len() as u64;
        match self.pairs {
            Pairs::Merchant => (1 + rng.below(n - 1) as usize, 0),
            Pairs::SameShard | Pairs::Card => {
                let g = &self.groups[rng.below(self.groups.len() as u64) as usize];
                let from = rng.below(g.len() as u64) as usize;
                let to = (from + 1 + rng.below(g.len() as u64 - 1) as usize) % g.len();
                (g[from], g[to])
            }
            Pairs::Random | Pairs::CardRandom => {
                let from = rng.below(n) as usize;
                let to = (from + 1 + rng.below(n - 1) as usize) % n as usize;
                (from, to)
            }
        }
    }

    /// Whether two accounts live on one shard.
    pub fn same_shard(&self, a: usize, b: usize) -> bool {
        self.shard_of[a] == self.shard_of[b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::topology::Topology;

    #[test]
    fn pairs_follow_their_rule() {
        let ring = Topology::local(3, 3, 3, 7001).ring();
        let ids: Vec<String> = (0..200).map(|i| format!("acct-{i}")).collect();
        for pairs in [
            Pairs::Random,
            Pairs::SameShard,
            Pairs::Merchant,
            Pairs::Card,
            Pairs::CardRandom,
        ] {
            let pairing = Pairing::new(&ids, &ring, pairs).expect("enough accounts");
            let mut rng = Rng::for_worker(3);
            let mut cross = 0;
            for _ in 0..3000 {
                let (from, to) = pairing.pair(&mut rng);
                assert_ne!(from, to);
                assert!(from < ids.len() && to < ids.len());
                match pairs {
                    Pairs::SameShard | Pairs::Card => assert!(pairing.same_shard(from, to)),
                    Pairs::Merchant => assert_eq!(to, 0),
                    Pairs::Random | Pairs::CardRandom => {
                        cross += usize::from(!pairing.same_shard(from, to))
                    }
                }
            }
            if matches!(pairs, Pairs::Random | Pairs::CardRandom) {
                // About two thirds of random pairs cross shards with three shards.
                assert!((1700..2300).contains(&cross), "{cross} of 3000 crossed");
            }
        }
    }
}
