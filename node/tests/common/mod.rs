//! Helpers shared by the state machine's test files.

use wallet_node::state_machine::{StateMachine, Writes};
use wallet_proto::v1::{command::Op, Command, Outcome};

/// Applies one command stamped at `ts`, then checks every account's invariants.
pub fn apply_at(sm: &mut StateMachine, request_id: &str, ts: u64, op: Op) -> (Outcome, Writes) {
    let mut writes = Vec::new();
    let command = Command {
        request_id: request_id.into(),
        at_ms: 1_000,
        ts,
        op: Some(op),
    };
    let outcome = sm.apply(&command, &mut writes);
    sm.assert_invariants();
    (outcome, writes)
}
