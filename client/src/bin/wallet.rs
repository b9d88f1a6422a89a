//! `wallet`: the command-line client of the wallet store. Amounts are integers in minor units.
//! A failed command prints one line (`error: REASON: message`) and exits non-zero.

use clap::{Parser, Subcommand};
use serde_json::json;
use wallet_client::{
    fresh_id, Account, AccountState, AccountStateRequest, AuthorizeRequest, BalanceChange,
    BatchTransfer, ClientOptions, DepositRequest, EntryKind, Hold, HoldState, Lifecycle,
    ListHoldsRequest, ListTransfersRequest, Transfer, TransferRequest, TransferStatus,
    WalletClient, WalletError, WithdrawRequest,
};

#[derive(Parser, Debug)]
#[command(version, about = "Command-line client of the wallet store")]
struct Cli {
    /// Router endpoint(s), comma-separated host:port.
    #[arg(
        long,
        global = true,
        env = "WALLET_ENDPOINT",
        default_value = "127.0.0.1:7000"
    )]
    endpoint: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Keep retrying retryable failures (same request id) for this many seconds.
    #[arg(long, global = true, env = "WALLET_TIMEOUT", default_value_t = 15)]
    timeout: u64,
    /// TLS to the routers (`wallet-cluster up` prints these for its cluster).
    #[command(flatten)]
    tls: wallet_client::TlsArgs,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Open or read accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Holds: authorize now, capture, void or let expire later (README § Holds).
    #[command(subcommand)]
    Hold(HoldCommand),
    /// Put money into an account (a recharge).
    Deposit {
        account: String,
        amount: i64,
        /// Request id for exactly-once retries (generated if omitted).
        #[arg(long)]
        id: Option<String>,
        /// When the request was first issued (ms since the epoch; now if omitted). Give the
        /// first attempt's time when retrying: a retry issued longer ago than the retention
        /// window is refused with REQUEST_EXPIRED.
        #[arg(long, default_value_t = 0)]
        issued_at_ms: i64,
    },
    /// Take money out of an account (a payment out).
    Withdraw {
        account: String,
        amount: i64,
        /// Request id for exactly-once retries (generated if omitted).
        #[arg(long)]
        id: Option<String>,
        /// When the request was first issued (ms since the epoch; now if omitted). Give the
        /// first attempt's time when retrying: a retry issued longer ago than the retention
        /// window is refused with REQUEST_EXPIRED.
        #[arg(long, default_value_t = 0)]
        issued_at_ms: i64,
    },
    /// Move money between two accounts.
    Transfer {
        from: String,
        to: String,
        amount: i64,
        /// Transfer id for exactly-once retries (generated if omitted).
        #[arg(long)]
        id: Option<String>,
        /// When the transfer was first issued (see `deposit --help`).
        #[arg(long, default_value_t = 0)]
        issued_at_ms: i64,
    },
    /// Many transfers from a JSON-lines file, one `{"id","from","to","amount"}` per line, sent
    /// through the batch API (8 189 per call). A line with `"linked": true` is linked to the
    /// next: the chain commits or aborts as a unit (README § Linked chains). Prints one result
    /// per line; exits 4 if any line was refused.
    Batch {
        /// The file (`-` for standard input).
        file: std::path::PathBuf,
    },
    /// Snapshot read of every account at one timestamp: per-currency totals, checked against net
    /// deposits (exit 2 with AUDIT_MISMATCH if they differ).
    Audit,
    /// The state of a transfer (COMMITTED, PREPARED or ABORTED) and its oracle timestamps.
    TransferStatus {
        /// Transfer id.
        id: String,
        /// The debit account (transfer ids are scoped to it).
        #[arg(long)]
        from: String,
    },
    /// An account's history, newest first.
    History {
        account: String,
        /// Entries to show (1..=1000).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Continue from a previous page's next cursor.
        #[arg(long, default_value_t = 0)]
        cursor: u64,
        /// Only these kinds, comma-separated: deposit, withdraw, transfer_out, transfer_in.
        #[arg(long, default_value = "")]
        kinds: String,
        /// Only entries committed at or after this oracle timestamp.
        #[arg(long, default_value_t = 0)]
        from_ts: u64,
        /// Only entries committed at or before this oracle timestamp.
        #[arg(long, default_value_t = 0)]
        to_ts: u64,
        /// Only entries at or after this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        /// Only entries at or before this time (ms since the epoch).
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
    },
}

#[derive(Subcommand, Debug)]
enum HoldCommand {
    /// Reserve AMOUNT on FROM for TO until a capture, a void or the expiry.
    Authorize {
        from: String,
        to: String,
        amount: i64,
        /// Hold id (exactly-once; generated if omitted). Scoped to FROM.
        #[arg(long)]
        id: Option<String>,
        /// Expire this long after the authorization (1..=30 days in ms; 0: 7 days).
        #[arg(long, default_value_t = 0)]
        expires_in_ms: i64,
        /// When the authorization was first issued (see `deposit --help`).
        #[arg(long, default_value_t = 0)]
        issued_at_ms: i64,
    },
    /// Move the held money (all of it, or --amount) to its payee; release the rest.
    Capture {
        /// Hold id.
        id: String,
        /// The debit account (hold ids are scoped to it).
        #[arg(long)]
        from: String,
        /// Capture this much (≤ held); all of it if omitted.
        #[arg(long, default_value_t = 0)]
        amount: i64,
    },
    /// Release the whole hold.
    Void {
        id: String,
        #[arg(long)]
        from: String,
    },
    /// A hold's state (PENDING, CAPTURED, VOIDED, EXPIRED) and amounts.
    Status {
        id: String,
        #[arg(long)]
        from: String,
    },
    /// An account's pending holds as payer (or, with --payee, those promised to it).
    List {
        account: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this hold (a previous page's next_after).
        #[arg(long, default_value = "")]
        after: String,
        /// The holds promised to the account instead of those it pays.
        #[arg(long)]
        payee: bool,
    },
}

/// What `account freeze|unfreeze|close` take.
#[derive(clap::Args, Debug)]
struct StateChange {
    id: String,
    /// Request id for exactly-once retries (generated if omitted).
    #[arg(long = "request-id")]
    request_id: Option<String>,
    /// When the request was first issued (see `deposit --help`).
    #[arg(long, default_value_t = 0)]
    issued_at_ms: i64,
}

#[derive(Subcommand, Debug)]
enum AccountCommand {
    /// Open an account.
    Create {
        id: String,
        /// Three-letter currency code, e.g. USD.
        #[arg(long)]
        currency: String,
        /// Let the balance go down to minus this many minor units.
        #[arg(long, default_value_t = 0)]
        credit_limit: i64,
        /// Money it opens with, in minor units: a deposit, applied once (its first history entry).
        #[arg(long, default_value_t = 0)]
        opening_balance: i64,
    },
    /// Freeze an account: its deposits, withdrawals and transfers are refused with
    /// ACCOUNT_FROZEN until it is unfrozen; reads still work.
    Freeze(StateChange),
    /// Let a frozen account move money again.
    Unfreeze(StateChange),
    /// Close an account for good: only at balance 0 with nothing reserved or pending, and not
    /// while frozen. Later changes are refused with ACCOUNT_CLOSED.
    Close(StateChange),
    /// Show an account.
    Get {
        id: String,
        /// Balance as of this oracle timestamp (see `audit`, `transfer-status`); latest if omitted.
        #[arg(long, default_value_t = 0)]
        at: u64,
    },
}

fn state_name(state: i32) -> &'static str {
    match AccountState::try_from(state) {
        Ok(AccountState::Open) => "OPEN",
        Ok(AccountState::Frozen) => "FROZEN",
        Ok(AccountState::Closed) => "CLOSED",
        Err(_) => "UNKNOWN",
    }
}

fn hold_state_name(state: i32) -> &'static str {
    match HoldState::try_from(state) {
        Ok(HoldState::Pending) => "PENDING",
        Ok(HoldState::Captured) => "CAPTURED",
        Ok(HoldState::Voided) => "VOIDED",
        Ok(HoldState::Expired) => "EXPIRED",
        _ => "UNKNOWN",
    }
}

fn hold_json(h: &Hold) -> serde_json::Value {
    json!({"hold_id": h.hold_id, "from_account_id": h.from_account_id,
           "to_account_id": h.to_account_id, "amount": h.amount, "captured": h.captured,
           "state": hold_state_name(h.state), "currency": h.currency,
           "created_at_ms": h.created_at_ms, "start_ts": h.start_ts,
           "expires_at_ts": h.expires_at_ts, "decided_ts": h.decided_ts,
           "cross_shard": h.cross_shard, "promised": h.promised,
           "promised_ts": h.promised_ts})
}

fn hold_text(h: &Hold) -> String {
    format!(
        "hold {} {} -> {}  {} {}  captured {}  {}  expires at ts {}",
        h.hold_id,
        h.from_account_id,
        h.to_account_id,
        h.amount,
        h.currency,
        h.captured,
        hold_state_name(h.state),
        h.expires_at_ts
    )
}

fn hold_answer(h: &Hold) -> (serde_json::Value, String) {
    (hold_json(h), hold_text(h))
}

fn account_json(a: &Account) -> serde_json::Value {
    json!({"account_id": a.account_id, "currency": a.currency, "balance": a.balance,
           "floor": a.floor, "reserved": a.reserved, "created_at_ms": a.created_at_ms,
           "version": a.version, "pending_credit": a.pending_credit,
           "state": state_name(a.state)})
}

fn account_text(a: &Account) -> String {
    format!(
        "account {}  currency {}  balance {}  floor {}  reserved {}  version {}  {}",
        a.account_id,
        a.currency,
        a.balance,
        a.floor,
        a.reserved,
        a.version,
        state_name(a.state)
    )
}

fn change_json(c: &BalanceChange) -> serde_json::Value {
    json!({"request_id": c.request_id, "account_id": c.account_id, "delta": c.delta,
           "balance_after": c.balance_after, "seq": c.seq})
}

fn change_text(c: &BalanceChange) -> String {
    format!(
        "{} {:+} -> balance {} (request {}, seq {})",
        c.account_id, c.delta, c.balance_after, c.request_id, c.seq
    )
}

fn status_name(status: i32) -> &'static str {
    match TransferStatus::try_from(status).unwrap_or(TransferStatus::Unspecified) {
        TransferStatus::Committed => "COMMITTED",
        TransferStatus::Prepared => "PREPARED",
        TransferStatus::Aborted => "ABORTED",
        TransferStatus::Unspecified => "UNKNOWN",
    }
}

fn transfer_json(t: &Transfer) -> serde_json::Value {
    let mut value = json!({"transfer_id": t.transfer_id, "from_account_id": t.from_account_id,
           "to_account_id": t.to_account_id, "amount": t.amount,
           "status": status_name(t.status), "currency": t.currency,
           "created_at_ms": t.created_at_ms, "from_balance_after": t.from_balance_after,
           "start_ts": t.start_ts, "commit_ts": t.commit_ts});
    if let Some(chain) = &t.chain {
        value["chain"] = json!({"account_id": chain.account_id, "chain_id": chain.chain_id,
                                "legs": chain.legs});
    }
    value
}

fn kind_name(kind: i32) -> &'static str {
    match EntryKind::try_from(kind).unwrap_or(EntryKind::Unspecified) {
        EntryKind::Deposit => "DEPOSIT",
        EntryKind::Withdraw => "WITHDRAW",
        EntryKind::TransferOut => "TRANSFER_OUT",
        EntryKind::TransferIn => "TRANSFER_IN",
        EntryKind::Unspecified => "UNKNOWN",
    }
}

fn connect(cli: &Cli) -> Result<WalletClient, WalletError> {
    let endpoints: Vec<&str> = cli.endpoint.split(',').map(str::trim).collect();
    let options = ClientOptions {
        retry_budget: std::time::Duration::from_secs(cli.timeout),
        tls: cli.tls.files().map_err(|e| WalletError {
            reason: wallet_client::Reason::InvalidArgument,
            message: e.to_string(),
        })?,
        ..ClientOptions::default()
    };
    WalletClient::with_options(&endpoints, options)
}

/// Freezes, unfreezes or closes an account; prints it after the change.
async fn change_state(
    client: &WalletClient,
    change: Lifecycle,
    args: StateChange,
) -> Result<(serde_json::Value, String), WalletError> {
    let request = AccountStateRequest {
        request_id: args.request_id.unwrap_or_else(|| fresh_id("state")),
        account_id: args.id,
        issued_at_ms: args.issued_at_ms,
    };
    let a = client.change_account_state(change, request).await?;
    Ok((account_json(&a), account_text(&a)))
}

async fn run(cli: Cli) -> Result<(serde_json::Value, String), WalletError> {
    let client = connect(&cli)?;
    Ok(match cli.command {
        Commands::Batch { .. } => {
            return Err(WalletError {
                reason: wallet_client::Reason::Internal,
                message: "batch files are sent by run_batch".into(),
            })
        }
        Commands::Account(AccountCommand::Create {
            id,
            currency,
            credit_limit,
            opening_balance,
        }) => {
            let a = client
                .create_account_request(wallet_client::CreateAccountRequest {
                    account_id: id,
                    currency,
                    credit_limit,
                    opening_balance,
                })
                .await?;
            (account_json(&a), account_text(&a))
        }
        Commands::Account(AccountCommand::Freeze(change)) => {
            change_state(&client, Lifecycle::Freeze, change).await?
        }
        Commands::Account(AccountCommand::Unfreeze(change)) => {
            change_state(&client, Lifecycle::Unfreeze, change).await?
        }
        Commands::Account(AccountCommand::Close(change)) => {
            change_state(&client, Lifecycle::Close, change).await?
        }
        Commands::Hold(HoldCommand::Authorize {
            from,
            to,
            amount,
            id,
            expires_in_ms,
            issued_at_ms,
        }) => hold_answer(
            &client
                .authorize_request(AuthorizeRequest {
                    hold_id: id.unwrap_or_else(|| fresh_id("hold")),
                    from_account_id: from,
                    to_account_id: to,
                    amount,
                    expires_in_ms,
                    issued_at_ms,
                })
                .await?,
        ),
        Commands::Hold(HoldCommand::Capture { id, from, amount }) => {
            hold_answer(&client.capture(&id, &from, amount).await?)
        }
        Commands::Hold(HoldCommand::Void { id, from }) => {
            hold_answer(&client.void(&id, &from).await?)
        }
        Commands::Hold(HoldCommand::Status { id, from }) => {
            hold_answer(&client.get_hold(&id, &from).await?)
        }
        Commands::Hold(HoldCommand::List {
            account,
            limit,
            after,
            payee,
        }) => {
            let page = client
                .list_holds_request(ListHoldsRequest {
                    account_id: account,
                    limit,
                    after,
                    as_payee: payee,
                })
                .await?;
            let text: Vec<String> = page.holds.iter().map(hold_text).collect();
            let holds: Vec<serde_json::Value> = page.holds.iter().map(hold_json).collect();
            (
                json!({"holds": holds, "next_after": page.next_after}),
                text.join("\n"),
            )
        }
        Commands::Account(AccountCommand::Get { id, at }) => {
            let a = client.get_account_at(&id, at).await?;
            (account_json(&a), account_text(&a))
        }
        Commands::Deposit {
            account,
            amount,
            id,
            issued_at_ms,
        } => {
            let request_id = id.unwrap_or_else(|| fresh_id("dep"));
            let c = client
                .deposit_request(DepositRequest {
                    request_id,
                    account_id: account,
                    amount,
                    issued_at_ms,
                })
                .await?;
            (change_json(&c), change_text(&c))
        }
        Commands::Withdraw {
            account,
            amount,
            id,
            issued_at_ms,
        } => {
            let request_id = id.unwrap_or_else(|| fresh_id("wd"));
            let c = client
                .withdraw_request(WithdrawRequest {
                    request_id,
                    account_id: account,
                    amount,
                    issued_at_ms,
                })
                .await?;
            (change_json(&c), change_text(&c))
        }
        Commands::Transfer {
            from,
            to,
            amount,
            id,
            issued_at_ms,
        } => {
            let transfer_id = id.unwrap_or_else(|| fresh_id("tr"));
            let t = client
                .transfer_request(TransferRequest {
                    transfer_id,
                    from_account_id: from,
                    to_account_id: to,
                    amount,
                    issued_at_ms,
                })
                .await?;
            let text = format!(
                "transfer {} committed: {} -> {} amount {} ({} balance now {})",
                t.transfer_id,
                t.from_account_id,
                t.to_account_id,
                t.amount,
                t.from_account_id,
                t.from_balance_after
            );
            (transfer_json(&t), text)
        }
        Commands::Audit => {
            let report = client.audit().await?;
            let mut text =
                format!(
                "audit at ts {}: every currency balances\n{:<8} {:>9} {:>22} {:>22} {:>14} {:>14} {:>14}",
                report.ts, "currency", "accounts", "balances", "net deposits", "reserved", "pending", "held"
            );
            let totals: Vec<_> = report
                .totals
                .iter()
                .map(|t| {
                    text.push_str(&format!(
                        "\n{:<8} {:>9} {:>22} {:>22} {:>14} {:>14} {:>14}",
                        t.currency,
                        t.accounts,
                        t.balances,
                        t.net_deposits,
                        t.reserved,
                        t.pending_credit,
                        t.held
                    ));
                    json!({"currency": t.currency, "accounts": t.accounts, "balances": t.balances,
                           "net_deposits": t.net_deposits, "reserved": t.reserved,
                           "pending_credit": t.pending_credit, "held": t.held})
                })
                .collect();
            (json!({"ts": report.ts, "ok": true, "totals": totals}), text)
        }
        Commands::TransferStatus { id, from } => {
            let t = client.get_transfer(&id, &from).await?;
            let text = format!(
                "transfer {} {}: {} -> {} amount {} (start_ts {}, commit_ts {})",
                t.transfer_id,
                status_name(t.status),
                t.from_account_id,
                t.to_account_id,
                t.amount,
                t.start_ts,
                t.commit_ts
            );
            (transfer_json(&t), text)
        }
        Commands::History {
            account,
            limit,
            cursor,
            kinds,
            from_ts,
            to_ts,
            from_ms,
            to_ms,
        } => {
            let kinds = wallet_proto::validate::entry_kinds(&kinds).map_err(|r| WalletError {
                reason: r.reason,
                message: r.message,
            })?;
            let page = client
                .list_transfers_request(ListTransfersRequest {
                    account_id: account,
                    limit,
                    cursor,
                    kinds,
                    from_ts,
                    to_ts,
                    from_ms,
                    to_ms,
                })
                .await?;
            let mut text = format!(
                "{:>6}  {:<13} {:>14} {:>14}  {:<24} request\n",
                "seq", "kind", "delta", "balance", "counterparty"
            );
            let entries: Vec<_> = page
                .entries
                .iter()
                .map(|e| {
                    text.push_str(&format!(
                        "{:>6}  {:<13} {:>+14} {:>14}  {:<24} {}\n",
                        e.seq,
                        kind_name(e.kind),
                        e.delta,
                        e.balance_after,
                        e.counterparty,
                        e.request_id
                    ));
                    json!({"seq": e.seq, "kind": kind_name(e.kind), "delta": e.delta,
                           "balance_after": e.balance_after, "counterparty": e.counterparty,
                           "request_id": e.request_id, "at_ms": e.at_ms,
                           "commit_ts": e.commit_ts})
                })
                .collect();
            if page.next_cursor != 0 {
                text.push_str(&format!("more: --cursor {}", page.next_cursor));
            }
            (
                json!({"entries": entries, "next_cursor": page.next_cursor}),
                text.trim_end().to_string(),
            )
        }
    })
}

/// One line of a batch file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    id: String,
    from: String,
    to: String,
    amount: i64,
    #[serde(default)]
    linked: bool,
    /// When the transfer was first issued (ms since the epoch); now when absent.
    #[serde(default)]
    issued_at_ms: i64,
}

/// Reads a batch file: every line must parse, or nothing is sent.
fn read_batch(file: &std::path::Path) -> Result<Vec<(usize, BatchTransfer)>, WalletError> {
    let bad = |message: String| WalletError {
        reason: wallet_client::Reason::InvalidArgument,
        message,
    };
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| bad(format!("cannot read {}: {e}", file.display())))?;
    let mut items = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let parsed: BatchLine =
            serde_json::from_str(line).map_err(|e| bad(format!("line {line_no}: {e}")))?;
        items.push((
            line_no,
            BatchTransfer {
                transfer: Some(TransferRequest {
                    transfer_id: parsed.id,
                    from_account_id: parsed.from,
                    to_account_id: parsed.to,
                    amount: parsed.amount,
                    issued_at_ms: parsed.issued_at_ms,
                }),
                linked: parsed.linked,
            },
        ));
    }
    Ok(items)
}

/// Splits a batch file's items into calls of at most 8 189 items, never splitting a chain (a
/// chain is a group: linked items and the first unlinked one after them; a lone item is a group
/// of one). A group longer than that is a call of its own, which `run_batch` refuses line by line.
fn batch_calls(items: &[(usize, BatchTransfer)]) -> Vec<&[(usize, BatchTransfer)]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for (i, (_, item)) in items.iter().enumerate() {
        if !item.linked {
            groups.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < items.len() {
        groups.push(start..items.len());
    }
    let mut calls = Vec::new();
    let mut call: Option<std::ops::Range<usize>> = None;
    for group in groups {
        call = match call {
            Some(c) if group.end - c.start <= wallet_client::TRANSFER_BATCH_MAX => {
                Some(c.start..group.end)
            }
            Some(c) => {
                calls.push(&items[c]);
                Some(group)
            }
            None => Some(group),
        };
    }
    calls.extend(call.map(|c| &items[c]));
    calls
}

/// Sends a batch file; prints one result per line. Ok(true) if every line went through.
async fn run_batch(cli: &Cli, file: &std::path::Path) -> Result<bool, WalletError> {
    let items = read_batch(file)?;
    let client = connect(cli)?;
    let mut all_ok = true;
    let mut json_lines = Vec::new();
    let (mut ok, mut refused) = (0usize, 0usize);
    for chunk in batch_calls(&items) {
        let requests: Vec<BatchTransfer> = chunk.iter().map(|(_, r)| r.clone()).collect();
        let results = if requests.len() > wallet_client::TRANSFER_BATCH_MAX {
            let too_long = WalletError {
                reason: wallet_client::Reason::InvalidArgument,
                message: format!(
                    "a chain of {} items: at most {}",
                    requests.len(),
                    wallet_client::TRANSFER_BATCH_MAX
                ),
            };
            vec![Err(too_long); requests.len()]
        } else {
            client.transfer_batch_linked(&requests).await?
        };
        for ((line, item), result) in chunk.iter().zip(results) {
            let request = item.transfer.clone().unwrap_or_default();
            match result {
                Ok(t) => {
                    ok += 1;
                    if cli.json {
                        json_lines
                            .push(json!({"line": line, "id": request.transfer_id, "ok": true,
                            "transfer": transfer_json(&t)}));
                    } else {
                        println!(
                            "line {line}: transfer {} committed: {} -> {} amount {}",
                            t.transfer_id, t.from_account_id, t.to_account_id, t.amount
                        );
                    }
                }
                Err(e) => {
                    refused += 1;
                    all_ok = false;
                    if cli.json {
                        json_lines.push(json!({"line": line, "id": request.transfer_id,
                            "ok": false, "error": e.reason.as_str(), "message": e.message}));
                    } else {
                        println!("line {line}: transfer {} refused: {e}", request.transfer_id);
                    }
                }
            }
        }
    }
    if cli.json {
        println!("{}", serde_json::Value::Array(json_lines));
    } else {
        println!("{ok} committed, {refused} refused");
    }
    Ok(all_ok)
}

/// Reports a failed command (one JSON object with --json, one line on stderr) and exits with `code`.
fn fail(e: &WalletError, json: bool, code: i32) -> ! {
    if json {
        println!(
            "{}",
            json!({"error": e.reason.as_str(), "message": e.message})
        );
    }
    eprintln!("error: {e}");
    std::process::exit(code)
}

fn main() {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: INTERNAL: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Commands::Batch { file } = &cli.command {
        match runtime.block_on(run_batch(&cli, file)) {
            Ok(true) => std::process::exit(0),
            Ok(false) => std::process::exit(4),
            Err(e) => fail(&e, json, 2),
        }
    }
    match runtime.block_on(run(cli)) {
        Ok((value, text)) => {
            if json {
                println!("{value}");
            } else {
                println!("{text}");
            }
        }
        Err(e) => {
            let code = match e.reason {
                wallet_client::Reason::Unavailable | wallet_client::Reason::Overloaded => 3,
                _ => 2,
            };
            fail(&e, json, code)
        }
    }
}

#[cfg(test)]
mod batch_call_tests {
    use super::*;

    fn lines(linked: &[bool]) -> Vec<(usize, BatchTransfer)> {
        linked
            .iter()
            .enumerate()
            .map(|(i, &linked)| {
                (
                    i + 1,
                    BatchTransfer {
                        transfer: None,
                        linked,
                    },
                )
            })
            .collect()
    }

    fn sizes(items: &[(usize, BatchTransfer)]) -> Vec<usize> {
        batch_calls(items).iter().map(|c| c.len()).collect()
    }

    #[test]
    fn calls_hold_at_most_a_batch_and_never_split_a_chain() {
        let max = wallet_client::TRANSFER_BATCH_MAX;
        assert_eq!(sizes(&lines(&[false; 3])), vec![3]);
        // A batch of lone lines and one line more, linked and unterminated: two calls.
        let mut linked = vec![false; max];
        linked.push(true);
        assert_eq!(sizes(&lines(&linked)), vec![max, 1]);
        // A chain of 4 across the boundary moves whole to the next call.
        let mut linked = vec![false; max - 2];
        linked.extend([true, true, true, false]);
        assert_eq!(sizes(&lines(&linked)), vec![max - 2, 4]);
        // A chain longer than a batch is a call of its own (refused line by line).
        let mut linked = vec![false];
        linked.extend(vec![true; max + 1]);
        linked.push(false);
        linked.push(false);
        assert_eq!(sizes(&lines(&linked)), vec![1, max + 2, 1]);
        assert!(sizes(&lines(&[])).is_empty());
    }
}
