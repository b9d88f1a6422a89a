//! wallet-client: the async Rust client of the wallet store.
//!
//! Mirrors the `wallet.v1.Wallet` API with typed errors ([`WalletError`], carrying the stable
//! [`Reason`] code). Retryable failures (`NOT_LEADER`, `UNAVAILABLE`, `OVERLOADED`, a broken
//! connection) are retried automatically **with the same request id**, on the next router endpoint,
//! with backoff, for up to [`ClientOptions::retry_budget`]: the store applies each id once (G4), so a
//! retry can never pay twice. [`WalletClient::in_process`] calls a router embedded in the
//! application's own process instead (no router hop).
//!
//! ```no_run
//! # async fn demo() -> Result<(), wallet_client::WalletError> {
//! let client = wallet_client::WalletClient::connect(&["127.0.0.1:7000"])?;
//! client.create_account("alice", "USD", 0).await?;
//! client.deposit("recharge-1", "alice", 10_00).await?;
//! let account = client.get_account("alice").await?;
//! assert_eq!(account.balance, 10_00);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tonic::Status;
pub use wallet_proto::reason::Reason;
use wallet_proto::v1::wallet_client::WalletClient as GrpcClient;
pub use wallet_proto::v1::wallet_server::Wallet;
use wallet_proto::v1::{
    account_result, transfer_result, AuditRequest, CreateAccountBatchRequest,
    CreateAccountBatchResponse, GetAccountRequest, GetTransferRequest, TransferBatchRequest,
    TransferBatchResponse,
};
pub use wallet_proto::v1::{
    Account, AccountState, AccountStateRequest, AuditReport, AuthorizeRequest, BalanceChange,
    BatchTransfer, CaptureRequest, ChainRef, CreateAccountRequest, CurrencyTotals, DepositRequest,
    EntryKind, GetHoldRequest, HistoryEntry, Hold, HoldState, ListHoldsRequest, ListHoldsResponse,
    ListTransfersRequest, ListTransfersResponse, Transfer, TransferRequest, TransferStatus,
    VoidRequest, WithdrawRequest,
};
use wallet_tls::ClientTls;
pub use wallet_tls::{TlsArgs, TlsFiles};

/// A change of an account's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Freeze,
    Unfreeze,
    Close,
}

fn lifecycle(request_id: &str, account_id: &str) -> AccountStateRequest {
    AccountStateRequest {
        request_id: request_id.into(),
        account_id: account_id.into(),
        issued_at_ms: now_ms(),
    }
}

/// Milliseconds since the Unix epoch on this machine's clock: the issue time the client stamps on
/// a request that has none (`issued_at_ms`, README § Retention).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `issued_at_ms` as sent: the caller's, or now when it gave none.
fn stamped(issued_at_ms: i64) -> i64 {
    if issued_at_ms == 0 {
        now_ms()
    } else {
        issued_at_ms
    }
}

/// Most transfers in one [`WalletClient::transfer_batch`] call.
pub const TRANSFER_BATCH_MAX: usize = wallet_proto::TRANSFER_BATCH_MAX;

/// A failed call: the stable reason code and the store's message (the one refusal type of the
/// whole store, converted from the gRPC status or the batch item it arrived as).
pub use wallet_proto::reason::Refusal as WalletError;

/// The error of a batch item the store answered nothing for.
fn no_result() -> WalletError {
    Reason::Internal.refuse("no result for this item")
}

/// Client tunables.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one call keeps retrying retryable failures.
    pub retry_budget: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// TLS: the CA the routers' certificates chain to, and this client's certificate and key
    /// when the routers ask for one (`--client-auth required`). None: plaintext.
    pub tls: Option<TlsFiles>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            retry_budget: Duration::from_secs(15),
            attempt_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// Where a call goes: a router over gRPC, or a `Wallet` service in this process (the router's
/// logic embedded: the ring and the leader cache here, no router hop).
#[derive(Clone)]
enum Target {
    Router(GrpcClient<Channel>),
    InProcess(Arc<dyn Wallet>, Duration),
}

/// One method per RPC, the same on both targets. An in-process attempt gets the same deadline as
/// a router call (`DEADLINE_EXCEEDED`, retried like a lost connection).
macro_rules! rpcs {
    ($($name:ident($request:ty) -> $response:ty;)*) => {
        impl Target {
            $(async fn $name(self, request: $request) -> Result<tonic::Response<$response>, Status> {
                match self {
                    Target::Router(mut client) => client.$name(request).await,
                    Target::InProcess(service, timeout) => {
                        tokio::time::timeout(timeout, service.$name(tonic::Request::new(request)))
                            .await
                            .unwrap_or_else(|_| Err(Status::deadline_exceeded("attempt timed out")))
                    }
                }
            })*
        }
    };
}

rpcs! {
    create_account(CreateAccountRequest) -> Account;
    create_account_batch(CreateAccountBatchRequest) -> CreateAccountBatchResponse;
    get_account(GetAccountRequest) -> Account;
    deposit(DepositRequest) -> BalanceChange;
    withdraw(WithdrawRequest) -> BalanceChange;
    transfer(TransferRequest) -> Transfer;
    transfer_batch(TransferBatchRequest) -> TransferBatchResponse;
    get_transfer(GetTransferRequest) -> Transfer;
    list_transfers(ListTransfersRequest) -> ListTransfersResponse;
    audit(AuditRequest) -> AuditReport;
    close_account(AccountStateRequest) -> Account;
    freeze_account(AccountStateRequest) -> Account;
    unfreeze_account(AccountStateRequest) -> Account;
    authorize(AuthorizeRequest) -> Hold;
    capture(CaptureRequest) -> Hold;
    void(VoidRequest) -> Hold;
    get_hold(GetHoldRequest) -> Hold;
    list_holds(ListHoldsRequest) -> ListHoldsResponse;
}

/// A client of one or more routers, or of a router embedded in this process
/// ([`WalletClient::in_process`]). Cheap to clone; share one per process.
#[derive(Clone)]
pub struct WalletClient {
    targets: Arc<Vec<Target>>,
    next: Arc<AtomicUsize>,
    options: ClientOptions,
}

impl WalletClient {
    /// A client of these router endpoints (`host:port`), connected lazily.
    pub fn connect(endpoints: &[&str]) -> Result<WalletClient, WalletError> {
        WalletClient::with_options(endpoints, ClientOptions::default())
    }

    /// Same as [`WalletClient::connect`] with explicit options.
    pub fn with_options(
        endpoints: &[&str],
        options: ClientOptions,
    ) -> Result<WalletClient, WalletError> {
        if endpoints.is_empty() {
            return Err(WalletError {
                reason: Reason::InvalidArgument,
                message: "no router endpoint given".into(),
            });
        }
        let tls = match &options.tls {
            Some(files) => Some(ClientTls::load(files.clone()).map_err(|e| WalletError {
                reason: Reason::InvalidArgument,
                message: format!("TLS: {e}"),
            })?),
            None => None,
        };
        let mut routers = Vec::with_capacity(endpoints.len());
        for address in endpoints {
            // With TLS on, this crate's connector does the TLS: the channel itself is `http://`.
            let url = match address.split_once("://") {
                Some((_, rest)) if tls.is_some() => format!("http://{rest}"),
                Some(_) => address.to_string(),
                None => format!("http://{address}"),
            };
            let endpoint = Endpoint::from_shared(url)
                .map_err(|e| WalletError {
                    reason: Reason::InvalidArgument,
                    message: format!("bad endpoint {address}: {e}"),
                })?
                .connect_timeout(Duration::from_secs(2))
                .timeout(options.attempt_timeout)
                .tcp_nodelay(true);
            // Over TLS, the router must present a certificate valid for the host dialled.
            let channel = match &tls {
                Some(tls) => tls.channel(&endpoint, None).map_err(|e| WalletError {
                    reason: Reason::InvalidArgument,
                    message: format!("TLS to {address}: {e}"),
                })?,
                None => endpoint.connect_lazy(),
            };
            routers.push(Target::Router(GrpcClient::new(channel)));
        }
        Ok(WalletClient {
            targets: Arc::new(routers),
            next: Arc::new(AtomicUsize::new(0)),
            options,
        })
    }

    /// A client that calls `service` in this process: for an application that embeds the router
    /// (`wallet_router::service::WalletService`), so each call skips the hop to a router process.
    /// Retries, deadlines and errors are those of a remote client.
    pub fn in_process(service: Arc<dyn Wallet>, options: ClientOptions) -> WalletClient {
        WalletClient {
            targets: Arc::new(vec![Target::InProcess(service, options.attempt_timeout)]),
            next: Arc::new(AtomicUsize::new(0)),
            options,
        }
    }

    /// Runs `call` on a router, retrying retryable failures on the next router with backoff.
    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, WalletError>
    where
        F: Fn(Target) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let index = self.next.load(Ordering::Relaxed) % self.targets.len();
            let target = self.targets[index].clone();
            match call(target).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let error = WalletError::from(status);
                    if !error.reason.is_retryable()
                        || started.elapsed() + backoff > self.options.retry_budget
                    {
                        return Err(error);
                    }
                    self.next.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Opens an account (idempotent by account id).
    pub async fn create_account(
        &self,
        account_id: &str,
        currency: &str,
        credit_limit: i64,
    ) -> Result<Account, WalletError> {
        self.create_account_request(CreateAccountRequest {
            account_id: account_id.into(),
            currency: currency.into(),
            credit_limit,
            opening_balance: 0,
        })
        .await
    }

    /// Opens an account as `request` says, with its opening balance if it has one (idempotent
    /// by account id: the balance comes in once).
    pub async fn create_account_request(
        &self,
        request: CreateAccountRequest,
    ) -> Result<Account, WalletError> {
        self.retrying(|c| {
            let r = request.clone();
            async move { c.create_account(r).await }
        })
        .await
    }

    /// A linearizable read of one account.
    pub async fn get_account(&self, account_id: &str) -> Result<Account, WalletError> {
        self.get_account_at(account_id, 0).await
    }

    /// An account as of an oracle timestamp (a snapshot read; 0 = the latest state). The balance
    /// is the one at `at_ts`; the other fields are current.
    pub async fn get_account_at(
        &self,
        account_id: &str,
        at_ts: u64,
    ) -> Result<Account, WalletError> {
        let request = GetAccountRequest {
            account_id: account_id.into(),
            at_ts,
        };
        self.retrying(|c| {
            let r = request.clone();
            async move { c.get_account(r).await }
        })
        .await
    }

    /// Money in. `request_id` makes it exactly-once; the request is stamped as issued now, so a
    /// retry more than the retention window later counts as a new request (keep a
    /// [`DepositRequest`] and send it with [`WalletClient::deposit_request`] to avoid that).
    pub async fn deposit(
        &self,
        request_id: &str,
        account_id: &str,
        amount: i64,
    ) -> Result<BalanceChange, WalletError> {
        self.deposit_request(DepositRequest {
            request_id: request_id.into(),
            account_id: account_id.into(),
            amount,
            issued_at_ms: now_ms(),
        })
        .await
    }

    /// Money in, as built by the caller: send the same request (with its `issued_at_ms`, stamped
    /// now when 0) for every retry, and a retry after the retention window is refused with
    /// `REQUEST_EXPIRED` instead of paying twice.
    pub async fn deposit_request(
        &self,
        mut request: DepositRequest,
    ) -> Result<BalanceChange, WalletError> {
        request.issued_at_ms = stamped(request.issued_at_ms);
        self.retrying(|c| {
            let r = request.clone();
            async move { c.deposit(r).await }
        })
        .await
    }

    /// Money out. `request_id` makes it exactly-once (issued now, as for
    /// [`WalletClient::deposit`]).
    pub async fn withdraw(
        &self,
        request_id: &str,
        account_id: &str,
        amount: i64,
    ) -> Result<BalanceChange, WalletError> {
        self.withdraw_request(WithdrawRequest {
            request_id: request_id.into(),
            account_id: account_id.into(),
            amount,
            issued_at_ms: now_ms(),
        })
        .await
    }

    /// Money out, as built by the caller (see [`WalletClient::deposit_request`]).
    pub async fn withdraw_request(
        &self,
        mut request: WithdrawRequest,
    ) -> Result<BalanceChange, WalletError> {
        request.issued_at_ms = stamped(request.issued_at_ms);
        self.retrying(|c| {
            let r = request.clone();
            async move { c.withdraw(r).await }
        })
        .await
    }

    /// Moves money between two accounts. `transfer_id` makes it exactly-once (issued now, as
    /// for [`WalletClient::deposit`]).
    pub async fn transfer(
        &self,
        transfer_id: &str,
        from_account_id: &str,
        to_account_id: &str,
        amount: i64,
    ) -> Result<Transfer, WalletError> {
        self.transfer_request(TransferRequest {
            transfer_id: transfer_id.into(),
            from_account_id: from_account_id.into(),
            to_account_id: to_account_id.into(),
            amount,
            issued_at_ms: now_ms(),
        })
        .await
    }

    /// Freezes an account: its deposits, withdrawals and transfers are refused with
    /// `ACCOUNT_FROZEN` until it is unfrozen. Exactly-once by `request_id`, like a deposit.
    pub async fn freeze_account(
        &self,
        request_id: &str,
        account_id: &str,
    ) -> Result<Account, WalletError> {
        self.change_account_state(Lifecycle::Freeze, lifecycle(request_id, account_id))
            .await
    }

    /// Lets a frozen account move money again.
    pub async fn unfreeze_account(
        &self,
        request_id: &str,
        account_id: &str,
    ) -> Result<Account, WalletError> {
        self.change_account_state(Lifecycle::Unfreeze, lifecycle(request_id, account_id))
            .await
    }

    /// Closes an account for good (balance 0, nothing reserved or pending, not frozen; else
    /// `ACCOUNT_NOT_EMPTY` or `ACCOUNT_FROZEN`). Later changes are refused with `ACCOUNT_CLOSED`.
    pub async fn close_account(
        &self,
        request_id: &str,
        account_id: &str,
    ) -> Result<Account, WalletError> {
        self.change_account_state(Lifecycle::Close, lifecycle(request_id, account_id))
            .await
    }

    /// A lifecycle change as built by the caller (see [`WalletClient::deposit_request`]).
    pub async fn change_account_state(
        &self,
        change: Lifecycle,
        mut request: AccountStateRequest,
    ) -> Result<Account, WalletError> {
        request.issued_at_ms = stamped(request.issued_at_ms);
        self.retrying(|c| {
            let r = request.clone();
            async move {
                match change {
                    Lifecycle::Freeze => c.freeze_account(r).await,
                    Lifecycle::Unfreeze => c.unfreeze_account(r).await,
                    Lifecycle::Close => c.close_account(r).await,
                }
            }
        })
        .await
    }

    /// Reserves `amount` on `from` for `to` until a capture, a void or the expiry
    /// (`expires_in_ms`, 0: 7 days). Exactly-once by `hold_id`, scoped to `from`; issued now.
    pub async fn authorize(
        &self,
        hold_id: &str,
        from_account_id: &str,
        to_account_id: &str,
        amount: i64,
        expires_in_ms: i64,
    ) -> Result<Hold, WalletError> {
        self.authorize_request(AuthorizeRequest {
            hold_id: hold_id.into(),
            from_account_id: from_account_id.into(),
            to_account_id: to_account_id.into(),
            amount,
            expires_in_ms,
            issued_at_ms: now_ms(),
        })
        .await
    }

    /// An authorization as built by the caller (see [`WalletClient::deposit_request`]).
    pub async fn authorize_request(
        &self,
        mut request: AuthorizeRequest,
    ) -> Result<Hold, WalletError> {
        request.issued_at_ms = stamped(request.issued_at_ms);
        self.retrying(|c| {
            let r = request.clone();
            async move { c.authorize(r).await }
        })
        .await
    }

    /// Moves `amount` of the hold (0: all of it) and releases the rest. At most once per hold:
    /// the same capture again answers the hold; another is `HOLD_NOT_PENDING`.
    pub async fn capture(
        &self,
        hold_id: &str,
        from_account_id: &str,
        amount: i64,
    ) -> Result<Hold, WalletError> {
        let request = CaptureRequest {
            hold_id: hold_id.into(),
            from_account_id: from_account_id.into(),
            amount,
            issued_at_ms: now_ms(),
        };
        self.retrying(|c| {
            let r = request.clone();
            async move { c.capture(r).await }
        })
        .await
    }

    /// Releases the whole hold.
    pub async fn void(&self, hold_id: &str, from_account_id: &str) -> Result<Hold, WalletError> {
        let request = VoidRequest {
            hold_id: hold_id.into(),
            from_account_id: from_account_id.into(),
            issued_at_ms: now_ms(),
        };
        self.retrying(|c| {
            let r = request.clone();
            async move { c.void(r).await }
        })
        .await
    }

    /// A hold by its id and debit account.
    pub async fn get_hold(
        &self,
        hold_id: &str,
        from_account_id: &str,
    ) -> Result<Hold, WalletError> {
        let request = GetHoldRequest {
            hold_id: hold_id.into(),
            from_account_id: from_account_id.into(),
        };
        self.retrying(|c| {
            let r = request.clone();
            async move { c.get_hold(r).await }
        })
        .await
    }

    /// A page of an account's pending holds as payer, in hold id order, after `after` (see
    /// [`WalletClient::list_holds_request`] for those it is promised, as payee).
    pub async fn list_holds(
        &self,
        account_id: &str,
        limit: u32,
        after: &str,
    ) -> Result<ListHoldsResponse, WalletError> {
        self.list_holds_request(ListHoldsRequest {
            account_id: account_id.into(),
            limit,
            after: after.into(),
            as_payee: false,
        })
        .await
    }

    /// A page of holds as built by the caller: with `as_payee`, the holds promised to the
    /// account, in (payer, hold id) order, `after` being a page's `next_after` (`PAYER/HOLD_ID`).
    pub async fn list_holds_request(
        &self,
        request: ListHoldsRequest,
    ) -> Result<ListHoldsResponse, WalletError> {
        self.retrying(|c| {
            let r = request.clone();
            async move { c.list_holds(r).await }
        })
        .await
    }

    /// A transfer as built by the caller (see [`WalletClient::deposit_request`]).
    pub async fn transfer_request(
        &self,
        mut request: TransferRequest,
    ) -> Result<Transfer, WalletError> {
        request.issued_at_ms = stamped(request.issued_at_ms);
        self.retrying(|c| {
            let r = request.clone();
            async move { c.transfer(r).await }
        })
        .await
    }

    /// Up to [`TRANSFER_BATCH_MAX`] independent transfers in one call: one result per item, in
    /// order. Items refused for a passing reason (`UNAVAILABLE`, `NOT_LEADER`, `OVERLOADED`, ...)
    /// are sent again, with the same ids (G4), until the retry budget is spent; the outer error is
    /// for the call as a whole (too many items, no router reachable).
    pub async fn transfer_batch(
        &self,
        items: &[TransferRequest],
    ) -> Result<Vec<Result<Transfer, WalletError>>, WalletError> {
        let items: Vec<BatchTransfer> = items
            .iter()
            .map(|t| BatchTransfer {
                transfer: Some(t.clone()),
                linked: false,
            })
            .collect();
        self.transfer_batch_linked(&items).await
    }

    /// A batch whose items may form linked chains (README § Linked chains): an item with
    /// `linked` set is linked to the next, and a chain (the linked items plus the first unlinked
    /// one after them) commits or aborts as a unit, across shards. One result per item: a failed
    /// chain answers its failed item's refusal and `CHAIN_FAILED` for the others. A chain whose
    /// outcome is not known yet (a retryable error) is sent again whole, with the same ids.
    pub async fn transfer_batch_linked(
        &self,
        items: &[BatchTransfer],
    ) -> Result<Vec<Result<Transfer, WalletError>>, WalletError> {
        if items.len() > TRANSFER_BATCH_MAX {
            return Err(WalletError {
                reason: Reason::InvalidArgument,
                message: format!("{} transfers; at most {TRANSFER_BATCH_MAX}", items.len()),
            });
        }
        // One issue time for the items without one, kept for every resend; items grouped into
        // their chains (a lone item is a group of one), which are resent whole.
        let now = now_ms();
        let mut groups: Vec<Vec<BatchTransfer>> = Vec::new();
        let mut open = false;
        for item in items {
            let mut item = item.clone();
            if let Some(t) = item.transfer.as_mut() {
                if t.issued_at_ms == 0 {
                    t.issued_at_ms = now;
                }
            }
            let linked = item.linked;
            match groups.last_mut() {
                Some(group) if open => group.push(item),
                _ => groups.push(vec![item]),
            }
            open = linked;
        }
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        let answers = self
            .batch_with_retries(&groups, |todo| async move {
                let sizes: Vec<usize> = todo.iter().map(Vec::len).collect();
                let request = TransferBatchRequest {
                    transfers: todo.into_iter().flatten().collect(),
                };
                let response = self
                    .retrying(|c| {
                        let r = request.clone();
                        async move { c.transfer_batch(r).await }
                    })
                    .await?;
                let mut results = response
                    .results
                    .into_iter()
                    .map(|result| match result.result {
                        Some(transfer_result::Result::Transfer(t)) => Ok(t),
                        Some(transfer_result::Result::Error(e)) => Err(WalletError::from(e)),
                        None => Err(no_result()),
                    });
                // A group whose outcome is not known yet comes back as its retryable error.
                Ok(sizes
                    .into_iter()
                    .map(|size| {
                        let group: Vec<_> = results.by_ref().take(size).collect();
                        if group.len() != size {
                            return Err(no_result());
                        }
                        match group
                            .iter()
                            .find_map(|r| r.as_ref().err().filter(|e| e.reason.is_retryable()))
                        {
                            Some(e) => Err(e.clone()),
                            None => Ok(group),
                        }
                    })
                    .collect())
            })
            .await?;
        Ok(answers
            .into_iter()
            .zip(sizes)
            .flat_map(|(answer, size)| match answer {
                Ok(group) => group,
                Err(e) => vec![Err(e); size],
            })
            .collect())
    }

    /// The bulk path: opens up to 8 189 accounts (each may bring an `opening_balance`) in one
    /// call; one result per account, in order. Idempotent by account id, so items whose result is
    /// a retryable error are sent again, within the retry budget.
    pub async fn create_account_batch(
        &self,
        accounts: &[CreateAccountRequest],
    ) -> Result<Vec<Result<Account, WalletError>>, WalletError> {
        if accounts.len() > TRANSFER_BATCH_MAX {
            return Err(WalletError {
                reason: Reason::InvalidArgument,
                message: format!("{} accounts; at most {TRANSFER_BATCH_MAX}", accounts.len()),
            });
        }
        self.batch_with_retries(accounts, |todo| async move {
            let request = CreateAccountBatchRequest { accounts: todo };
            let response = self
                .retrying(|c| {
                    let r = request.clone();
                    async move { c.create_account_batch(r).await }
                })
                .await?;
            Ok(response
                .results
                .into_iter()
                .map(|result| match result.result {
                    Some(account_result::Result::Account(a)) => Ok(a),
                    Some(account_result::Result::Error(e)) => Err(WalletError::from(e)),
                    None => Err(no_result()),
                })
                .collect())
        })
        .await
    }

    /// Sends `items` in one call through `send`, then again those whose result is a retryable
    /// error (each item carries its own id, so a resend is safe), until every item has its
    /// final result or the retry budget is spent.
    async fn batch_with_retries<I, O, F, Fut>(
        &self,
        items: &[I],
        send: F,
    ) -> Result<Vec<Result<O, WalletError>>, WalletError>
    where
        I: Clone,
        F: Fn(Vec<I>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Result<O, WalletError>>, WalletError>>,
    {
        let mut results: Vec<Option<Result<O, WalletError>>> =
            std::iter::repeat_with(|| None).take(items.len()).collect();
        let mut todo: Vec<usize> = (0..items.len()).collect();
        let started = Instant::now();
        let mut backoff = Duration::from_millis(20);
        while !todo.is_empty() {
            let outcomes = send(todo.iter().map(|&i| items[i].clone()).collect()).await?;
            if outcomes.len() != todo.len() {
                return Err(WalletError {
                    reason: Reason::Internal,
                    message: format!("{} results for {} items", outcomes.len(), todo.len()),
                });
            }
            let retry_more = started.elapsed() + backoff <= self.options.retry_budget;
            let mut again = Vec::new();
            for (i, outcome) in todo.into_iter().zip(outcomes) {
                match outcome {
                    Err(e) if e.reason.is_retryable() && retry_more => again.push(i),
                    outcome => results[i] = Some(outcome),
                }
            }
            todo = again;
            if !todo.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(no_result())))
            .collect())
    }

    /// The outcome of a transfer by its id and debit account.
    pub async fn get_transfer(
        &self,
        transfer_id: &str,
        from_account_id: &str,
    ) -> Result<Transfer, WalletError> {
        let request = GetTransferRequest {
            transfer_id: transfer_id.into(),
            from_account_id: from_account_id.into(),
        };
        self.retrying(|c| {
            let r = request.clone();
            async move { c.get_transfer(r).await }
        })
        .await
    }

    /// A snapshot read of every account at one timestamp, checked for conservation: per-currency
    /// totals, or the error `AUDIT_MISMATCH` with the figures.
    pub async fn audit(&self) -> Result<AuditReport, WalletError> {
        self.retrying(|c| async move { c.audit(AuditRequest {}).await })
            .await
    }

    /// One page of an account's history, newest first (`cursor` 0 for the newest).
    pub async fn list_transfers(
        &self,
        account_id: &str,
        limit: u32,
        cursor: u64,
    ) -> Result<ListTransfersResponse, WalletError> {
        self.list_transfers_request(ListTransfersRequest {
            account_id: account_id.into(),
            limit,
            cursor,
            ..Default::default()
        })
        .await
    }

    /// A history page with filters (kinds, commit-timestamp and time ranges): see
    /// `ListTransfersRequest` and README § History. A filtered page may hold fewer than `limit`
    /// entries and still have a `next_cursor`.
    pub async fn list_transfers_request(
        &self,
        request: ListTransfersRequest,
    ) -> Result<ListTransfersResponse, WalletError> {
        self.retrying(|c| {
            let r = request.clone();
            async move { c.list_transfers(r).await }
        })
        .await
    }
}

/// A fresh request id (time + counter + process id): unique enough for a CLI call or a demo.
pub fn fresh_id(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{nanos:x}-{}-{n}", std::process::id())
}
