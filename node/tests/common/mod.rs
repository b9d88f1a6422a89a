//! Helpers shared by the state machine's test files.
#![allow(dead_code)] // each test binary uses a different subset

use wallet_node::state_machine::{StateMachine, Writes};
use wallet_proto::v1::{command::Op, Command, DepositRequest, Outcome, WithdrawRequest};

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

/// A deposit of `amount` into `id` (the request id is the command's).
pub fn deposit(id: &str, amount: i64) -> Op {
    Op::Deposit(DepositRequest {
        request_id: String::new(),
        account_id: id.into(),
        amount,
        issued_at_ms: 0,
    })
}

/// A withdrawal of `amount` from `id` (the request id is the command's).
pub fn withdraw(id: &str, amount: i64) -> Op {
    Op::Withdraw(WithdrawRequest {
        request_id: String::new(),
        account_id: id.into(),
        amount,
        issued_at_ms: 0,
    })
}
