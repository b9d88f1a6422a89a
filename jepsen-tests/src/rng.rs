//! The harness's seeded random numbers: a run's workload, faults and their targets all come from
//! here, so one seed replays one run's choices.

/// xorshift64*: the harness's only source of randomness, so a seed replays a run's choices.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    /// `nodes` in a random order.
    pub fn shuffle(&mut self, nodes: &[u64]) -> Vec<u64> {
        let mut out = nodes.to_vec();
        for i in (1..out.len()).rev() {
            out.swap(i, self.below(i as u64 + 1) as usize);
        }
        out
    }
}
