//! The public `wallet.v1.Wallet` API as the router serves it.
//!
//! Every request is checked here first (ids, amounts, currencies, DESIGN §10) so bad input is
//! refused before it costs a Raft entry; the node's state machine checks again. Requests beyond
//! `max_in_flight` are refused with `OVERLOADED` rather than queued without bound.

use std::sync::Arc;

use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use wallet_proto::reason::{Reason, Refusal};

use wallet_proto::topology::Topology;
use wallet_proto::v1::{
    account_result, command::Op, outcome, read_result, shard_read::Query, transfer_result, Account,
    AccountResult, AccountStateRequest, AccountsAt, AccountsPage, AuditReport, AuditRequest,
    AuthorizeRequest, BalanceChange, BatchError, CaptureRequest, CloseTs, Command,
    CreateAccountBatchRequest, CreateAccountBatchResponse, CreateAccountRequest, CreateAccounts,
    DepositRequest, GetAccountRequest, GetHoldRequest, GetTransferRequest, Hold, ListHoldsRequest,
    ListHoldsResponse, ListTransfersRequest, ListTransfersResponse, Outcome, ReadResult, Rejection,
    SnapshotAt, Stuck, Transfer, TransferBatchRequest, TransferBatchResponse, TransferRequest,
    TransferResult, VoidRequest, WithdrawRequest,
};
use wallet_proto::validate;

use wallet_shard_client::shards::Shards;
use wallet_shard_client::timestamps::Timestamps;

/// How long an audit waits for transfers started before its timestamp to be decided.
const AUDIT_WAIT_MAX: Duration = Duration::from_secs(20);

/// Default bound on requests in flight through one router.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 65_536;

/// The router's Wallet service.
#[derive(Clone)]
pub struct WalletService {
    shards: Arc<Shards>,
    timestamps: Timestamps,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

/// What the router checks of an account to create (the state machine checks it again).
fn validate_create(create: &CreateAccountRequest) -> Result<(), Refusal> {
    validate::id("account id", &create.account_id)?;
    validate::currency(&create.currency)?;
    validate::credit_limit(create.credit_limit)?;
    validate::opening_balance(create.opening_balance)
}

/// A batch item's refusal from the status its call ended with.
fn batch_error(status: &Status) -> BatchError {
    Refusal::of_status(status).into()
}

/// A batch item whose shard answered something other than its outcome.
fn unexpected_item(what: &str) -> BatchError {
    Reason::Internal
        .refuse(format!("unexpected outcome of {what}"))
        .into()
}

/// The status of a shard's refusal.
fn refused(rejection: &Rejection) -> Status {
    Refusal::of_rejection(rejection).into()
}

fn unexpected(what: &str) -> Status {
    Reason::Internal.status(format!("unexpected answer from shard: {what}"))
}

impl WalletService {
    /// A router's service for the cluster `topology`: its shard client and timestamp batcher.
    /// What a router process serves, and what an application embeds (`WalletClient::in_process`).
    /// Must run inside a tokio runtime. Over TLS to the nodes when `tls` (a member's
    /// certificate: a router's) is given.
    pub fn for_topology(
        topology: Topology,
        max_in_flight: usize,
        tls: Option<Arc<wallet_tls::ClientTls>>,
    ) -> Result<WalletService, String> {
        Ok(WalletService::new(
            Arc::new(Shards::with_tls(topology, tls)?),
            max_in_flight,
        ))
    }

    /// Why this router cannot do its job right now (health NOT_SERVING), if it cannot: every
    /// shard must answer a linearizable read through its leader, and the oracle a timestamp,
    /// each within `timeout`.
    pub async fn unreachable(&self, timeout: Duration) -> Option<String> {
        for shard_id in self.shards.shard_ids() {
            // Transfers stuck since before the epoch: none, so a cheap linearizable read that
            // names no account (an account read would be WRONG_SHARD on all shards but one).
            let probe = Query::Stuck(Stuck::default());
            match tokio::time::timeout(timeout, self.shards.read(shard_id, probe)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Some(format!("shard {shard_id}: {}", e.message())),
                Err(_) => return Some(format!("shard {shard_id}: no answer within {timeout:?}")),
            }
        }
        match tokio::time::timeout(timeout, self.shards.tso(1)).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("timestamp oracle: {}", e.message())),
            Err(_) => Some(format!("timestamp oracle: no answer within {timeout:?}")),
        }
    }

    /// Must run inside a tokio runtime (it starts the timestamp batcher).
    pub fn new(shards: Arc<Shards>, max_in_flight: usize) -> WalletService {
        WalletService {
            timestamps: Timestamps::start(shards.clone()),
            shards,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
        }
    }

    /// Admits a batch of `items` (`what` they are): more than a batch may hold is
    /// `INVALID_ARGUMENT` for the whole call; every item counts as a request in flight, but a
    /// batch larger than the bound takes the whole bound (else it could never be admitted).
    fn admit_batch(
        &self,
        what: &str,
        items: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        if items > wallet_proto::TRANSFER_BATCH_MAX {
            return Err(Reason::InvalidArgument.status(format!(
                "{items} {what} in one batch; at most {}",
                wallet_proto::TRANSFER_BATCH_MAX
            )));
        }
        let permits = u32::try_from(items.clamp(1, self.max_in_flight.max(1))).unwrap_or(u32::MAX);
        self.in_flight
            .clone()
            .try_acquire_many_owned(permits)
            .map_err(|_| Reason::Overloaded.status("too many requests in flight; retry later"))
    }

    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Reason::Overloaded.status("too many requests in flight; retry later"))
    }

    async fn execute(
        &self,
        account_id: &str,
        request_id: &str,
        op: Op,
    ) -> Result<outcome::Result, Status> {
        let _permit = self.admit()?;
        self.execute_admitted(account_id, request_id, op).await
    }

    /// [`WalletService::execute`] for a request already counted in flight.
    async fn execute_admitted(
        &self,
        account_id: &str,
        request_id: &str,
        op: Op,
    ) -> Result<outcome::Result, Status> {
        let shard_id = self.shards.shard_of(account_id);
        let stamped = !matches!(&op, Op::CreateAccount(c) if c.opening_balance == 0);
        let command = Command {
            request_id: request_id.to_string(),
            at_ms: 0,
            ts: 0,
            op: Some(op),
        };
        // Account creation without money changes no balance: it needs no timestamp.
        let outcome = if stamped {
            self.timestamps
                .execute_fresh(&self.shards, shard_id, command)
                .await?
        } else {
            self.shards.execute(shard_id, command).await?
        };
        match outcome {
            Outcome {
                result: Some(outcome::Result::Rejected(r)),
            } => Err(refused(&r)),
            Outcome {
                result: Some(result),
            } => Ok(result),
            Outcome { result: None } => Err(unexpected("empty outcome")),
        }
    }

    /// Snapshot read on one shard: close it at `ts`, wait until no transfer started before `ts`
    /// is undecided, then read at `ts` (the shard's totals, one account, or a page of accounts).
    async fn read_at(
        shards: Arc<Shards>,
        shard_id: u64,
        ts: u64,
        query: Query,
    ) -> Result<read_result::Result, Status> {
        let close = Command {
            request_id: String::new(),
            at_ms: 0,
            ts: 0,
            op: Some(Op::CloseTs(CloseTs { ts })),
        };
        shards.execute(shard_id, close).await?;
        let deadline = Instant::now() + AUDIT_WAIT_MAX;
        // Holds' shards closed at `ts` by this read.
        let mut closed = std::collections::BTreeSet::new();
        // Where this round's pages of promises have got to, and whether anything undecided was
        // met in this round (then it is looked at again after a pause).
        let mut promises_after = None;
        let mut waiting = false;
        loop {
            let stuck = Query::Stuck(Stuck {
                start_ts_before: ts,
                before_ms: 0,
                promises_after: promises_after.clone(),
            });
            let Some(read_result::Result::Stuck(s)) = shards.read(shard_id, stuck).await?.result
            else {
                return Err(unexpected("not a stuck list"));
            };
            // Intents whose primary decided are settled now rather than at recovery's timeout;
            // undecided transfers are waited for.
            waiting |= !s.prepared.is_empty() || !s.pending.is_empty() || s.more;
            for intent in &s.pending {
                wallet_shard_client::two_phase::settle_intent(&shards, shard_id, intent).await?;
            }
            // A cross-shard hold's promise is not waited for while its hold is pending, once the
            // hold's shard is closed at `ts` too (it can then be captured only after `ts`).
            for intent in &s.promises {
                if closed.insert(intent.primary_shard_id) {
                    wallet_shard_client::holds::close(&shards, intent.primary_shard_id, ts).await?;
                }
                let promise =
                    wallet_shard_client::holds::settle_promise(&shards, shard_id, intent).await?;
                waiting |= promise != wallet_shard_client::holds::Promise::Pending;
            }
            if let Some(next) = wallet_shard_client::holds::next_promises_page(&s) {
                promises_after = Some(next);
                if Instant::now() > deadline {
                    return Err(Reason::Unavailable.status(format!(
                        "shard {shard_id}: holds' promises not all looked at by {ts}"
                    )));
                }
                continue;
            }
            waiting |= s.more_promises;
            if !waiting {
                break;
            }
            // A new round from the first promise.
            promises_after = None;
            waiting = false;
            if Instant::now() > deadline {
                return Err(Reason::Unavailable.status(format!(
                    "shard {shard_id} still has transfers undecided at {ts}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match shards.read(shard_id, query).await?.result {
            Some(read_result::Result::Rejected(r)) => Err(refused(&r)),
            Some(result) => Ok(result),
            None => Err(unexpected("empty snapshot read")),
        }
    }

    /// The data shards' ids.
    pub fn shard_ids(&self) -> Vec<u64> {
        self.shards.shard_ids()
    }

    /// A fresh timestamp of the oracle: every change committed before this call is at or below
    /// it (a backup's, an audit's).
    pub async fn fresh_ts(&self) -> Result<u64, Status> {
        self.timestamps.next().await
    }

    /// Every shard's totals at `ts`, added up and checked (conservation).
    pub async fn audit_at(&self, ts: u64) -> Result<AuditReport, Status> {
        let tasks: Vec<_> = self
            .shards
            .shard_ids()
            .into_iter()
            .map(|id| tokio::spawn(Self::audit_shard(self.shards.clone(), id, ts)))
            .collect();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(
                task.await
                    .map_err(|e| Reason::Internal.status(e.to_string()))??,
            );
        }
        let report = crate::audit::merge(ts, reports)?;
        crate::audit::check(&report)?;
        Ok(report)
    }

    /// A page of shard `shard_id`'s accounts as of `ts` (a snapshot read: the shard is closed at
    /// `ts` and its transfers started before it decided first): up to `limit` accounts whose id
    /// follows `after`, in id order, and whether more follow.
    pub async fn accounts_at(
        &self,
        shard_id: u64,
        ts: u64,
        after: String,
        limit: u32,
    ) -> Result<AccountsPage, Status> {
        let query = Query::AccountsAt(AccountsAt { ts, after, limit });
        match Self::read_at(self.shards.clone(), shard_id, ts, query).await? {
            read_result::Result::AccountsPage(page) => Ok(page),
            _ => Err(unexpected("not a page of accounts")),
        }
    }

    /// Every shard's totals at one fresh timestamp, added up and checked (conservation).
    async fn audit_now(&self) -> Result<AuditReport, Status> {
        let ts = self.timestamps.next().await?;
        self.audit_at(ts).await
    }

    async fn audit_shard(
        shards: Arc<Shards>,
        shard_id: u64,
        ts: u64,
    ) -> Result<AuditReport, Status> {
        let totals = Query::SnapshotAt(SnapshotAt {
            ts,
            account_id: String::new(),
        });
        match Self::read_at(shards, shard_id, ts, totals).await? {
            read_result::Result::Snapshot(report) => Ok(report),
            _ => Err(unexpected("not a snapshot")),
        }
    }

    /// One transfer, already counted in flight: checked, then one Raft entry on its shard, or the
    /// two-phase protocol across two shards.
    async fn transfer_admitted(&self, transfer: TransferRequest) -> Result<Transfer, Status> {
        validate::id("transfer id", &transfer.transfer_id)?;
        validate::id("from account id", &transfer.from_account_id)?;
        validate::id("to account id", &transfer.to_account_id)?;
        validate::amount(transfer.amount)?;
        if transfer.from_account_id == transfer.to_account_id {
            return Err(Reason::SameAccount.status("cannot transfer from an account to itself"));
        }
        let from_shard = self.shards.shard_of(&transfer.from_account_id);
        let to_shard = self.shards.shard_of(&transfer.to_account_id);
        if from_shard != to_shard {
            return wallet_shard_client::two_phase::transfer(
                &self.shards,
                &self.timestamps,
                transfer,
                from_shard,
                to_shard,
            )
            .await;
        }
        let (from, id) = (
            transfer.from_account_id.clone(),
            transfer.transfer_id.clone(),
        );
        match self
            .execute_admitted(&from, &id, Op::Transfer(transfer))
            .await?
        {
            outcome::Result::Transfer(t) => Ok(t),
            _ => Err(unexpected("not a transfer")),
        }
    }

    /// Freezes, unfreezes or closes an account (`op` builds the command from the request).
    async fn lifecycle(
        &self,
        request: AccountStateRequest,
        op: fn(AccountStateRequest) -> Op,
    ) -> Result<Response<Account>, Status> {
        validate::id("request id", &request.request_id)?;
        validate::id("account id", &request.account_id)?;
        let (account_id, request_id) = (request.account_id.clone(), request.request_id.clone());
        match self.execute(&account_id, &request_id, op(request)).await? {
            outcome::Result::Account(account) => Ok(Response::new(account)),
            _ => Err(unexpected("not an account")),
        }
    }

    /// Authorize, capture or void on the debit account's shard; answers the hold.
    async fn hold_step(&self, from: &str, hold_id: &str, op: Op) -> Result<Response<Hold>, Status> {
        match self.execute(from, hold_id, op).await? {
            outcome::Result::Hold(hold) => Ok(Response::new(hold)),
            _ => Err(unexpected("not a hold")),
        }
    }

    async fn read(&self, account_id: &str, query: Query) -> Result<read_result::Result, Status> {
        let _permit = self.admit()?;
        let shard_id = self.shards.shard_of(account_id);
        match self.shards.read(shard_id, query).await? {
            ReadResult {
                result: Some(read_result::Result::Rejected(r)),
            } => Err(refused(&r)),
            ReadResult {
                result: Some(result),
            } => Ok(result),
            ReadResult { result: None } => Err(unexpected("empty read")),
        }
    }
}

#[tonic::async_trait]
impl wallet_proto::v1::wallet_server::Wallet for WalletService {
    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let create = request.into_inner();
        validate_create(&create)?;
        let account_id = create.account_id.clone();
        match self
            .execute(&account_id, "", Op::CreateAccount(create))
            .await?
        {
            outcome::Result::Account(account) => Ok(Response::new(account)),
            _ => Err(unexpected("not an account")),
        }
    }

    async fn create_account_batch(
        &self,
        request: Request<CreateAccountBatchRequest>,
    ) -> Result<Response<CreateAccountBatchResponse>, Status> {
        let accounts = request.into_inner().accounts;
        let _permits = self.admit_batch("accounts", accounts.len())?;
        let error = |error: BatchError| AccountResult {
            result: Some(account_result::Result::Error(error)),
        };
        // Bad input is refused per item here and goes nowhere; the rest is one command per shard.
        let mut results = vec![AccountResult::default(); accounts.len()];
        let mut per_shard: std::collections::BTreeMap<
            u64,
            (Vec<usize>, Vec<CreateAccountRequest>),
        > = Default::default();
        for (position, create) in accounts.into_iter().enumerate() {
            match validate_create(&create) {
                Err(refusal) => results[position] = error(refusal.into()),
                Ok(()) => {
                    let shard = per_shard
                        .entry(self.shards.shard_of(&create.account_id))
                        .or_default();
                    shard.0.push(position);
                    shard.1.push(create);
                }
            }
        }
        let tasks: Vec<_> = per_shard
            .into_iter()
            .map(|(shard_id, (positions, accounts))| {
                let service = self.clone();
                tokio::spawn(async move {
                    let command = Command {
                        request_id: String::new(),
                        at_ms: 0,
                        ts: 0,
                        op: Some(Op::CreateAccounts(CreateAccounts { accounts })),
                    };
                    let outcome = service
                        .timestamps
                        .execute_fresh(&service.shards, shard_id, command)
                        .await;
                    (positions, outcome)
                })
            })
            .collect();
        for task in tasks {
            let (positions, outcome) = task
                .await
                .map_err(|e| Reason::Internal.status(e.to_string()))?;
            let items = match outcome {
                Ok(Outcome {
                    result: Some(outcome::Result::Outcomes(outcomes)),
                }) if outcomes.items.len() == positions.len() => Ok(outcomes.items),
                // The whole command refused, or it failed on its way: every item says so.
                Ok(Outcome {
                    result: Some(outcome::Result::Rejected(r)),
                }) => Err(Refusal::of_rejection(&r).into()),
                Err(status) => Err(batch_error(&status)),
                Ok(_) => Err(unexpected_item("a batch of accounts")),
            };
            let items = match items {
                Ok(items) => items,
                Err(refusal) => {
                    for position in positions {
                        results[position] = error(refusal.clone());
                    }
                    continue;
                }
            };
            for (position, item) in positions.into_iter().zip(items) {
                results[position] = match item.result {
                    Some(outcome::Result::Account(account)) => AccountResult {
                        result: Some(account_result::Result::Account(account)),
                    },
                    Some(outcome::Result::Rejected(r)) => error(Refusal::of_rejection(&r).into()),
                    _ => error(unexpected_item("an account")),
                };
            }
        }
        Ok(Response::new(CreateAccountBatchResponse { results }))
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<Account>, Status> {
        let get = request.into_inner();
        validate::id("account id", &get.account_id)?;
        if get.at_ts != 0 {
            let _permit = self.admit()?;
            let now = self.timestamps.next().await?;
            if get.at_ts > now {
                return Err(Reason::InvalidArgument.status(format!(
                    "timestamp {} is in the future (now {now})",
                    get.at_ts
                )));
            }
            let shard_id = self.shards.shard_of(&get.account_id);
            let query = Query::SnapshotAt(SnapshotAt {
                ts: get.at_ts,
                account_id: get.account_id,
            });
            return match Self::read_at(self.shards.clone(), shard_id, get.at_ts, query).await? {
                read_result::Result::AccountAt(account) => Ok(Response::new(account)),
                _ => Err(unexpected("not an account")),
            };
        }
        let account_id = get.account_id.clone();
        match self.read(&account_id, Query::Account(get)).await? {
            read_result::Result::Account(account) => Ok(Response::new(account)),
            _ => Err(unexpected("not an account")),
        }
    }

    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<BalanceChange>, Status> {
        let deposit = request.into_inner();
        validate::id("request id", &deposit.request_id)?;
        validate::id("account id", &deposit.account_id)?;
        validate::amount(deposit.amount)?;
        let (account_id, request_id) = (deposit.account_id.clone(), deposit.request_id.clone());
        match self
            .execute(&account_id, &request_id, Op::Deposit(deposit))
            .await?
        {
            outcome::Result::Change(change) => Ok(Response::new(change)),
            _ => Err(unexpected("not a balance change")),
        }
    }

    async fn withdraw(
        &self,
        request: Request<WithdrawRequest>,
    ) -> Result<Response<BalanceChange>, Status> {
        let withdraw = request.into_inner();
        validate::id("request id", &withdraw.request_id)?;
        validate::id("account id", &withdraw.account_id)?;
        validate::amount(withdraw.amount)?;
        let (account_id, request_id) = (withdraw.account_id.clone(), withdraw.request_id.clone());
        match self
            .execute(&account_id, &request_id, Op::Withdraw(withdraw))
            .await?
        {
            outcome::Result::Change(change) => Ok(Response::new(change)),
            _ => Err(unexpected("not a balance change")),
        }
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<Transfer>, Status> {
        let _permit = self.admit()?;
        Ok(Response::new(
            self.transfer_admitted(request.into_inner()).await?,
        ))
    }

    async fn transfer_batch(
        &self,
        request: Request<TransferBatchRequest>,
    ) -> Result<Response<TransferBatchResponse>, Status> {
        let items = request.into_inner().transfers;
        let _permits = self.admit_batch("transfers", items.len())?;
        // Independent items run one task each; each linked chain runs as one task that answers
        // for all its items (README § Linked chains).
        let mut tasks = Vec::new();
        let mut chain: Vec<TransferRequest> = Vec::new();
        for item in items {
            let linked = item.linked;
            if !linked && chain.is_empty() {
                let service = self.clone();
                tasks.push((
                    1,
                    tokio::spawn(async move {
                        vec![match item.transfer {
                            None => {
                                Err(Reason::InvalidArgument.status("batch item without a transfer"))
                            }
                            Some(transfer) => service.transfer_admitted(transfer).await,
                        }]
                    }),
                ));
                continue;
            }
            // An item without a transfer fails the chain's checks (its ids are empty).
            chain.push(item.transfer.unwrap_or_default());
            if !linked {
                let items = std::mem::take(&mut chain);
                let (shards, timestamps) = (self.shards.clone(), self.timestamps.clone());
                tasks.push((
                    items.len(),
                    tokio::spawn(async move {
                        match wallet_shard_client::chain::check(&items) {
                            Err((i, refusal)) => {
                                wallet_shard_client::chain::failed(items.len(), Some(i), &refusal)
                            }
                            Ok(()) => {
                                wallet_shard_client::chain::run(shards, timestamps, items).await
                            }
                        }
                    }),
                ));
            }
        }
        if !chain.is_empty() {
            // The batch ends inside a chain: refused in its items' slots, nothing sent.
            let len = chain.len();
            tasks.push((
                len,
                tokio::spawn(async move {
                    let refusal = Reason::InvalidArgument
                        .refuse("the batch ends inside a chain: its last item must not be linked");
                    wallet_shard_client::chain::failed(len, Some(len - 1), &refusal)
                }),
            ));
        }
        let mut results = Vec::new();
        for (len, task) in tasks {
            // One answer per item whatever happens, so that answers stay in their items' slots.
            let answers = task.await.unwrap_or_else(|e| {
                let status = Reason::Internal.status(e.to_string());
                (0..len).map(|_| Err(status.clone())).collect()
            });
            for answer in answers {
                let result = match answer {
                    Ok(transfer) => transfer_result::Result::Transfer(transfer),
                    Err(status) => transfer_result::Result::Error(batch_error(&status)),
                };
                results.push(TransferResult {
                    result: Some(result),
                });
            }
        }
        Ok(Response::new(TransferBatchResponse { results }))
    }

    async fn get_transfer(
        &self,
        request: Request<GetTransferRequest>,
    ) -> Result<Response<Transfer>, Status> {
        let get = request.into_inner();
        validate::id("transfer id", &get.transfer_id)?;
        validate::id("from account id", &get.from_account_id)?;
        let from = get.from_account_id.clone();
        match self.read(&from, Query::Transfer(get)).await? {
            read_result::Result::Transfer(t) => Ok(Response::new(t)),
            _ => Err(unexpected("not a transfer")),
        }
    }

    async fn audit(
        &self,
        _request: Request<AuditRequest>,
    ) -> Result<Response<AuditReport>, Status> {
        let _permit = self.admit()?;
        let checked = self.audit_now().await;
        crate::metrics::count_audit(checked.as_ref().map(|_| ()));
        Ok(Response::new(checked?))
    }

    async fn close_account(
        &self,
        request: Request<AccountStateRequest>,
    ) -> Result<Response<Account>, Status> {
        self.lifecycle(request.into_inner(), Op::CloseAccount).await
    }

    async fn freeze_account(
        &self,
        request: Request<AccountStateRequest>,
    ) -> Result<Response<Account>, Status> {
        self.lifecycle(request.into_inner(), Op::FreezeAccount)
            .await
    }

    async fn unfreeze_account(
        &self,
        request: Request<AccountStateRequest>,
    ) -> Result<Response<Account>, Status> {
        self.lifecycle(request.into_inner(), Op::UnfreezeAccount)
            .await
    }

    async fn authorize(
        &self,
        request: Request<AuthorizeRequest>,
    ) -> Result<Response<Hold>, Status> {
        let a = request.into_inner();
        validate::id("hold id", &a.hold_id)?;
        validate::id("from account id", &a.from_account_id)?;
        validate::id("to account id", &a.to_account_id)?;
        validate::amount(a.amount)?;
        validate::hold_expires_in(a.expires_in_ms)?;
        if a.from_account_id == a.to_account_id {
            return Err(
                Reason::SameAccount.status("cannot hold money for the account it is held on")
            );
        }
        if self.shards.shard_of(&a.from_account_id) != self.shards.shard_of(&a.to_account_id) {
            let _permit = self.admit()?;
            let hold =
                wallet_shard_client::holds::authorize(&self.shards, &self.timestamps, a).await?;
            return Ok(Response::new(hold));
        }
        let (from, id) = (a.from_account_id.clone(), a.hold_id.clone());
        self.hold_step(&from, &id, Op::Authorize(a)).await
    }

    async fn capture(&self, request: Request<CaptureRequest>) -> Result<Response<Hold>, Status> {
        let c = request.into_inner();
        validate::id("hold id", &c.hold_id)?;
        validate::id("from account id", &c.from_account_id)?;
        if c.amount < 0 {
            return Err(Reason::InvalidAmount.status(format!(
                "capture amount must be 0 (all) or positive, got {}",
                c.amount
            )));
        }
        // The hold says whether its payee lives on another shard: then its promise is made
        // first if need be, and credited after (shard-client/src/holds.rs).
        let _permit = self.admit()?;
        let hold = wallet_shard_client::holds::capture(&self.shards, &self.timestamps, c).await?;
        Ok(Response::new(hold))
    }

    async fn void(&self, request: Request<VoidRequest>) -> Result<Response<Hold>, Status> {
        let v = request.into_inner();
        validate::id("hold id", &v.hold_id)?;
        validate::id("from account id", &v.from_account_id)?;
        let _permit = self.admit()?;
        let hold = wallet_shard_client::holds::void(&self.shards, &self.timestamps, v).await?;
        Ok(Response::new(hold))
    }

    async fn get_hold(&self, request: Request<GetHoldRequest>) -> Result<Response<Hold>, Status> {
        let get = request.into_inner();
        validate::id("hold id", &get.hold_id)?;
        validate::id("from account id", &get.from_account_id)?;
        let from = get.from_account_id.clone();
        match self.read(&from, Query::Hold(get)).await? {
            read_result::Result::Hold(hold) => Ok(Response::new(hold)),
            _ => Err(unexpected("not a hold")),
        }
    }

    async fn list_holds(
        &self,
        request: Request<ListHoldsRequest>,
    ) -> Result<Response<ListHoldsResponse>, Status> {
        let list = request.into_inner();
        validate::id("account id", &list.account_id)?;
        let account_id = list.account_id.clone();
        match self.read(&account_id, Query::Holds(list)).await? {
            read_result::Result::Holds(page) => Ok(Response::new(page)),
            _ => Err(unexpected("not a page of holds")),
        }
    }

    async fn list_transfers(
        &self,
        request: Request<ListTransfersRequest>,
    ) -> Result<Response<ListTransfersResponse>, Status> {
        let list = request.into_inner();
        validate::id("account id", &list.account_id)?;
        validate::history_filter(&list)?;
        let account_id = list.account_id.clone();
        match self.read(&account_id, Query::History(list)).await? {
            read_result::Result::History(page) => Ok(Response::new(page)),
            _ => Err(unexpected("not a history page")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_proto::topology::Topology;

    /// A batch counts its items against the bound, but one larger than the bound takes the whole
    /// bound instead of being refused for ever; while it runs, nothing else is admitted.
    #[tokio::test]
    async fn a_batch_larger_than_the_bound_takes_the_whole_bound() {
        let shards = Arc::new(Shards::new(Topology::local(3, 3, 3, 47_000)).unwrap());
        let service = WalletService::new(shards, 4);
        let whole = service
            .admit_batch("items", wallet_proto::TRANSFER_BATCH_MAX)
            .unwrap();
        assert_eq!(
            wallet_proto::reason::of_status(&service.admit().unwrap_err()),
            Reason::Overloaded
        );
        drop(whole);
        let two = service.admit_batch("items", 2).unwrap();
        let _also_two = service.admit_batch("items", 2).unwrap();
        assert!(service.admit_batch("items", 1).is_err());
        drop(two);
        assert!(
            service.admit_batch("items", 0).is_ok(),
            "an empty batch counts as one"
        );
    }
}
