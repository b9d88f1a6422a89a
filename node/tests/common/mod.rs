//! Helpers shared by the state machine's test files.
#![allow(dead_code)] // each test binary uses a different subset

use wallet_node::state_machine::rejection_of;
use wallet_node::state_machine::{StateMachine, Writes};
use wallet_proto::v1::{
    command::Op, Command, CreateAccountRequest, DepositRequest, Outcome, WithdrawRequest,
};

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

/// Opens `account` in `currency` at `ts` and, if `funds` > 0, deposits them (request id `fund`).
pub fn open(sm: &mut StateMachine, ts: u64, account: &str, currency: &str, funds: i64) {
    let create = Op::CreateAccount(CreateAccountRequest {
        account_id: account.into(),
        currency: currency.into(),
        credit_limit: 0,
        opening_balance: 0,
    });
    apply_at(sm, "", ts, create);
    if funds > 0 {
        let (o, _) = apply_at(sm, "fund", ts + 1, deposit(account, funds));
        assert!(rejection_of(&o).is_none(), "{o:?}");
    }
}

/// An account's (balance, reserved, pending_credit).
pub fn money(sm: &StateMachine, account: &str) -> (i64, i64, i64) {
    let a = sm.account(account).expect("account");
    (a.balance, a.reserved, a.pending_credit)
}
