//! The decision record of a linked chain (README § Linked chains): the state machine's side.
//!
//! A chain's items are prepared like cross-shard transfers (`PrepareDebit` naming the chain,
//! `PrepareCredit` flagged `linked`), on whatever shards their accounts live. Whether they commit
//! is decided once, here, by `ChainDecide` on the shard of the first item's debit account:
//! - the first `ChainDecide` for a chain writes its decision (COMMITTED at the command's
//!   timestamp, or ABORTED with the item that failed it and that item's refusal);
//! - every later one, whoever sends it (a retry, a second router, recovery asking on behalf of an
//!   item left PREPARED), answers that first decision and changes nothing.
//!
//! So an abort asked by recovery before the router's commit wins, and the router's commit then
//! hears ABORTED: the items follow the one record. The record is a request record keyed by
//! (first debit account, chain id + `CHAIN_SUFFIX` + length and digest, [`decision_key`]); ids
//! cannot contain the suffix's `#`, so it never meets a request's own record. It is forgotten a
//! retention window after the decision, like a decided transfer.

use wallet_proto::reason::Reason;
use wallet_proto::v1::{
    command::Op, outcome, ChainDecide, ChainDecision, ChainRef, Command, Outcome, SettlingChain,
    TransferStep,
};
use wallet_proto::validate;

use super::{Refusal, StateMachine, Writes};

/// Appended to a chain id to name its decision record.
pub const CHAIN_SUFFIX: &str = "#chain";

/// The request-record key of a chain's decision: its anchor account, and its id with its length
/// and digest, so two chains that share a first item (a reused id: the second is refused at that
/// item's prepare) each have their own decision, and neither can block the other's items.
pub fn decision_key(chain: &ChainRef) -> (String, String) {
    (
        chain.account_id.clone(),
        format!(
            "{}{CHAIN_SUFFIX}/{}/{:08x}",
            chain.chain_id, chain.legs, chain.digest
        ),
    )
}

/// Checks a chain reference's shape: ids, and 2..=TRANSFER_BATCH_MAX items.
pub fn check_chain_ref(chain: &ChainRef) -> Result<(), Refusal> {
    validate::id("chain account id", &chain.account_id)?;
    validate::id("chain id", &chain.chain_id)?;
    if chain.legs < 2 || chain.legs as usize > wallet_proto::TRANSFER_BATCH_MAX {
        return Err(Refusal::new(
            Reason::InvalidArgument,
            format!(
                "a chain has 2 to {} items, not {}",
                wallet_proto::TRANSFER_BATCH_MAX,
                chain.legs
            ),
        ));
    }
    Ok(())
}

impl StateMachine {
    pub(crate) fn chain_decide(
        &mut self,
        command: &Command,
        decide: &ChainDecide,
        writes: &mut Writes,
    ) -> Outcome {
        self.try_chain_decide(command, decide, writes)
            .unwrap_or_else(Outcome::from)
    }

    fn try_chain_decide(
        &mut self,
        command: &Command,
        decide: &ChainDecide,
        writes: &mut Writes,
    ) -> Result<Outcome, Refusal> {
        let chain = decide
            .chain
            .as_ref()
            .ok_or_else(|| Refusal::new(Reason::InvalidArgument, "decision without a chain"))?;
        check_chain_ref(chain)?;
        self.check_owned(&chain.account_id)?;
        if decide.failed_item > chain.legs {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!("item {} is not in the chain", decide.failed_item),
            ));
        }
        let key = decision_key(chain);
        if let Some(record) = self.requests.get(&key) {
            let first = record.outcome.clone().unwrap_or_default();
            return match &first.result {
                Some(outcome::Result::Chain(decision))
                    if decision.chain.as_ref() == Some(chain) =>
                {
                    Ok(first)
                }
                _ => Err(Refusal::new(
                    Reason::IdReused,
                    format!(
                        "chain id {} was used on account {} for another chain",
                        chain.chain_id, chain.account_id
                    ),
                )),
            };
        }
        if decide.commit && command.ts == 0 {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "a chain commits at a timestamp",
            ));
        }
        if decide.commit && decide.items.len() != chain.legs as usize {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "a chain's commit names its {} items, not {}",
                    chain.legs,
                    decide.items.len()
                ),
            ));
        }
        if !decide.commit && !decide.items.is_empty() {
            return Err(Refusal::new(
                Reason::InvalidArgument,
                "a chain's abort names no items",
            ));
        }
        for item in &decide.items {
            validate::id("item account id", &item.account_id)?;
            validate::id("item transfer id", &item.transfer_id)?;
        }
        let decision = if decide.commit {
            ChainDecision {
                chain: Some(chain.clone()),
                committed: true,
                commit_ts: command.ts,
                failed_item: 0,
                refusal: None,
            }
        } else {
            ChainDecision {
                chain: Some(chain.clone()),
                committed: false,
                commit_ts: 0,
                failed_item: decide.failed_item,
                refusal: decide.refusal.clone(),
            }
        };
        let outcome = Outcome {
            result: Some(outcome::Result::Chain(decision)),
        };
        // Kept a window after the decision (issued now).
        self.remember(key, command, outcome.clone(), 0, writes);
        Ok(outcome)
    }

    /// Committed chain decisions whose window passed, with their items: recovery forgets each
    /// once none of its items is still PREPARED (at most `limit` of them).
    pub(crate) fn settling_chains(&self, keys: &[&(String, String)]) -> Vec<SettlingChain> {
        keys.iter()
            .filter_map(|key| {
                let record = self.requests.get(*key)?;
                match record.command.as_ref()?.op.as_ref()? {
                    Op::ChainDecide(decide) => Some(SettlingChain {
                        decision: Some(TransferStep {
                            account_id: key.0.clone(),
                            transfer_id: key.1.clone(),
                            ..Default::default()
                        }),
                        items: decide.items.clone(),
                    }),
                    _ => None,
                }
            })
            .collect()
    }

    /// The chain's decision, if made and still kept.
    pub fn chain_decision(&self, chain: &ChainRef) -> Option<ChainDecision> {
        match self
            .requests
            .get(&decision_key(chain))?
            .outcome
            .as_ref()?
            .result
            .as_ref()?
        {
            outcome::Result::Chain(decision) => Some(decision.clone()),
            _ => None,
        }
    }
}
