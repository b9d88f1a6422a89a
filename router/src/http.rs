//! The HTTP/JSON API (README § HTTP API): the `/v1` resources that payment apps expect, served by
//! the router next to gRPC, on `--http-listen`. Each route calls the same `WalletService` method
//! as its gRPC twin, so validation, idempotency, retries and refusals are the same; only the
//! envelope differs.
//!
//! - Bodies and answers are the proto's messages in JSON with its snake_case field names
//!   (`wallet_proto::json`); amounts are JSON integers. A body with an unknown field, a wrong type
//!   or a number beyond i64 is refused as `INVALID_ARGUMENT` before anything is asked.
//! - Idempotency: the id in the body (`request_id`, `transfer_id`), or the `Idempotency-Key`
//!   header; both given and different is `INVALID_ARGUMENT`.
//! - Errors are `{"reason", "message"}` with the HTTP status of the reason ([`http_status`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::{Deserialize, Serialize};
use tonic::Request;
use wallet_proto::reason::{Reason, Refusal};
use wallet_proto::v1::wallet_server::Wallet;
use wallet_proto::v1::{
    transfer_result, AccountStateRequest, AuditRequest, AuthorizeRequest, BatchTransfer,
    CaptureRequest, CreateAccountRequest, DepositRequest, GetAccountRequest, GetHoldRequest,
    GetTransferRequest, ListHoldsRequest, ListTransfersRequest, TransferBatchRequest,
    TransferRequest, VoidRequest, WithdrawRequest,
};

use crate::service::WalletService;

/// The OpenAPI 3 document of these routes, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The HTTP status a refusal travels with.
pub fn http_status(reason: Reason) -> StatusCode {
    match reason {
        Reason::InvalidAmount
        | Reason::InvalidId
        | Reason::InvalidCurrency
        | Reason::InvalidArgument
        | Reason::SameAccount
        | Reason::CurrencyMismatch
        | Reason::CrossShardNotSupported => StatusCode::BAD_REQUEST,
        Reason::AccountNotFound | Reason::TransferNotFound | Reason::HoldNotFound => {
            StatusCode::NOT_FOUND
        }
        Reason::AccountExists | Reason::IdReused => StatusCode::CONFLICT,
        Reason::InsufficientFunds
        | Reason::BalanceOverflow
        | Reason::TransferAborted
        | Reason::RequestExpired
        | Reason::AccountFrozen
        | Reason::AccountClosed
        | Reason::AccountNotEmpty
        | Reason::HoldExpired
        | Reason::HoldNotPending
        | Reason::ChainFailed
        // The caller's `at_ts` is older than the shard keeps: asking again cannot help.
        | Reason::SnapshotTooOld => StatusCode::UNPROCESSABLE_ENTITY,
        Reason::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        Reason::Unauthenticated => StatusCode::UNAUTHORIZED,
        Reason::PermissionDenied => StatusCode::FORBIDDEN,
        // Retryable (`Reason::is_retryable`): the same request again may succeed.
        Reason::NotLeader
        | Reason::WrongShard
        | Reason::Unavailable
        | Reason::TimestampTooOld => StatusCode::SERVICE_UNAVAILABLE,
        Reason::AuditMismatch | Reason::CorruptRecord | Reason::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The JSON error body.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub reason: String,
    pub message: String,
}

/// A refusal as an HTTP answer.
#[derive(Debug)]
struct Refused(Refusal);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            reason: self.0.reason.as_str().to_string(),
            message: self.0.message,
        };
        (http_status(self.0.reason), Json(body)).into_response()
    }
}

impl From<tonic::Status> for Refused {
    fn from(status: tonic::Status) -> Refused {
        Refused(Refusal::of_status(&status))
    }
}

fn invalid(message: impl std::fmt::Display) -> Refused {
    Refused(Refusal::new(Reason::InvalidArgument, message.to_string()))
}

type Answer<T> = Result<Json<T>, Refused>;

/// The body, or `INVALID_ARGUMENT` saying what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, Refused> {
    parsed
        .map(|Json(t)| t)
        .map_err(|e| invalid(format!("bad JSON body: {}", e.body_text())))
}

/// The id in the path, or `INVALID_ARGUMENT` (e.g. bad percent-encoding).
fn path(parsed: Result<Path<String>, PathRejection>) -> Result<String, Refused> {
    parsed
        .map(|Path(id)| id)
        .map_err(|e| invalid(format!("bad path: {}", e.body_text())))
}

/// The request's id: the body's, or the `Idempotency-Key` header's (both: they must agree).
fn idempotency(headers: &HeaderMap, in_body: &mut String) -> Result<(), Refused> {
    let Some(key) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(());
    };
    let key = key
        .to_str()
        .map_err(|_| invalid("Idempotency-Key is not printable ASCII"))?;
    if in_body.is_empty() {
        *in_body = key.to_string();
        Ok(())
    } else if in_body == key {
        Ok(())
    } else {
        Err(invalid(format!(
            "Idempotency-Key {key:?} differs from the id in the body {in_body:?}"
        )))
    }
}

type Service = State<Arc<WalletService>>;

async fn create_account(
    State(service): Service,
    parsed: Result<Json<CreateAccountRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Account> {
    let create = body(parsed)?;
    Ok(Json(
        service
            .create_account(Request::new(create))
            .await?
            .into_inner(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct AccountQuery {
    at_ts: u64,
}

async fn get_account(
    State(service): Service,
    account_id: Result<Path<String>, PathRejection>,
    query: Result<Query<AccountQuery>, QueryRejection>,
) -> Answer<wallet_proto::v1::Account> {
    let account_id = path(account_id)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let get = GetAccountRequest {
        account_id,
        at_ts: query.at_ts,
    };
    Ok(Json(
        service.get_account(Request::new(get)).await?.into_inner(),
    ))
}

async fn deposit(
    State(service): Service,
    headers: HeaderMap,
    parsed: Result<Json<DepositRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::BalanceChange> {
    let mut deposit = body(parsed)?;
    idempotency(&headers, &mut deposit.request_id)?;
    Ok(Json(
        service.deposit(Request::new(deposit)).await?.into_inner(),
    ))
}

async fn withdraw(
    State(service): Service,
    headers: HeaderMap,
    parsed: Result<Json<WithdrawRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::BalanceChange> {
    let mut withdraw = body(parsed)?;
    idempotency(&headers, &mut withdraw.request_id)?;
    Ok(Json(
        service.withdraw(Request::new(withdraw)).await?.into_inner(),
    ))
}

async fn transfer(
    State(service): Service,
    headers: HeaderMap,
    parsed: Result<Json<TransferRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Transfer> {
    let mut transfer = body(parsed)?;
    idempotency(&headers, &mut transfer.transfer_id)?;
    Ok(Json(
        service.transfer(Request::new(transfer)).await?.into_inner(),
    ))
}

/// A `TransferBatch` body: items with their `linked` flag (README § Linked chains).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    transfers: Vec<BatchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    transfer: TransferRequest,
    #[serde(default)]
    linked: bool,
}

/// One answer per item, in order: its transfer or its error.
#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<BatchItemAnswer>,
}

#[derive(Serialize)]
struct BatchItemAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer: Option<wallet_proto::v1::Transfer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody>,
}

async fn transfer_batch(
    State(service): Service,
    parsed: Result<Json<BatchBody>, JsonRejection>,
) -> Answer<BatchAnswer> {
    let batch = body(parsed)?;
    let request = TransferBatchRequest {
        transfers: batch
            .transfers
            .into_iter()
            .map(|item| BatchTransfer {
                transfer: Some(item.transfer),
                linked: item.linked,
            })
            .collect(),
    };
    let response = service
        .transfer_batch(Request::new(request))
        .await?
        .into_inner();
    let results = response
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(transfer_result::Result::Transfer(t)) => BatchItemAnswer {
                transfer: Some(t),
                error: None,
            },
            Some(transfer_result::Result::Error(e)) => BatchItemAnswer {
                transfer: None,
                error: Some(ErrorBody {
                    reason: e.reason,
                    message: e.message,
                }),
            },
            None => BatchItemAnswer {
                transfer: None,
                error: Some(ErrorBody {
                    reason: Reason::Internal.as_str().into(),
                    message: "no result for this item".into(),
                }),
            },
        })
        .collect();
    Ok(Json(BatchAnswer { results }))
}

/// Closes, freezes or unfreezes the account in the path; the body (`{}` at least) carries the
/// request id (or the `Idempotency-Key` header) and may repeat the account id.
async fn lifecycle(
    service: &WalletService,
    headers: &HeaderMap,
    account_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<AccountStateRequest>, JsonRejection>,
    change: Lifecycle,
) -> Answer<wallet_proto::v1::Account> {
    let account_id = path(account_id)?;
    let mut request = body(parsed)?;
    if !request.account_id.is_empty() && request.account_id != account_id {
        return Err(invalid(format!(
            "the body names account {:?}, the path {account_id:?}",
            request.account_id
        )));
    }
    request.account_id = account_id;
    idempotency(headers, &mut request.request_id)?;
    let request = Request::new(request);
    let answer = match change {
        Lifecycle::Close => service.close_account(request).await,
        Lifecycle::Freeze => service.freeze_account(request).await,
        Lifecycle::Unfreeze => service.unfreeze_account(request).await,
    };
    Ok(Json(answer?.into_inner()))
}

#[derive(Clone, Copy)]
enum Lifecycle {
    Close,
    Freeze,
    Unfreeze,
}

async fn close_account(
    State(service): Service,
    headers: HeaderMap,
    account_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<AccountStateRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Account> {
    lifecycle(&service, &headers, account_id, parsed, Lifecycle::Close).await
}

async fn freeze_account(
    State(service): Service,
    headers: HeaderMap,
    account_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<AccountStateRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Account> {
    lifecycle(&service, &headers, account_id, parsed, Lifecycle::Freeze).await
}

async fn unfreeze_account(
    State(service): Service,
    headers: HeaderMap,
    account_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<AccountStateRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Account> {
    lifecycle(&service, &headers, account_id, parsed, Lifecycle::Unfreeze).await
}

async fn authorize(
    State(service): Service,
    headers: HeaderMap,
    parsed: Result<Json<AuthorizeRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Hold> {
    let mut request = body(parsed)?;
    idempotency(&headers, &mut request.hold_id)?;
    Ok(Json(
        service.authorize(Request::new(request)).await?.into_inner(),
    ))
}

/// The hold id of the path into a body that may repeat it (then they must agree).
fn hold_in_path(
    hold_id: Result<Path<String>, PathRejection>,
    in_body: &mut String,
) -> Result<(), Refused> {
    let hold_id = path(hold_id)?;
    if !in_body.is_empty() && *in_body != hold_id {
        return Err(invalid(format!(
            "the body names hold {in_body:?}, the path {hold_id:?}"
        )));
    }
    *in_body = hold_id;
    Ok(())
}

async fn capture(
    State(service): Service,
    hold_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<CaptureRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Hold> {
    let mut request = body(parsed)?;
    hold_in_path(hold_id, &mut request.hold_id)?;
    Ok(Json(
        service.capture(Request::new(request)).await?.into_inner(),
    ))
}

async fn void(
    State(service): Service,
    hold_id: Result<Path<String>, PathRejection>,
    parsed: Result<Json<VoidRequest>, JsonRejection>,
) -> Answer<wallet_proto::v1::Hold> {
    let mut request = body(parsed)?;
    hold_in_path(hold_id, &mut request.hold_id)?;
    Ok(Json(
        service.void(Request::new(request)).await?.into_inner(),
    ))
}

async fn get_hold(
    State(service): Service,
    hold_id: Result<Path<String>, PathRejection>,
    query: Result<Query<TransferQuery>, QueryRejection>,
) -> Answer<wallet_proto::v1::Hold> {
    let hold_id = path(hold_id)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    if query.from.is_empty() {
        return Err(invalid(
            "?from=ACCOUNT is required: hold ids are scoped to their debit account",
        ));
    }
    let get = GetHoldRequest {
        hold_id,
        from_account_id: query.from,
    };
    Ok(Json(
        service.get_hold(Request::new(get)).await?.into_inner(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct HoldsQuery {
    limit: u32,
    after: String,
    as_payee: bool,
}

async fn list_holds(
    State(service): Service,
    account_id: Result<Path<String>, PathRejection>,
    query: Result<Query<HoldsQuery>, QueryRejection>,
) -> Answer<wallet_proto::v1::ListHoldsResponse> {
    let account_id = path(account_id)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let list = ListHoldsRequest {
        account_id,
        limit: query.limit,
        after: query.after,
        as_payee: query.as_payee,
    };
    Ok(Json(
        service.list_holds(Request::new(list)).await?.into_inner(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct TransferQuery {
    from: String,
}

async fn get_transfer(
    State(service): Service,
    transfer_id: Result<Path<String>, PathRejection>,
    query: Result<Query<TransferQuery>, QueryRejection>,
) -> Answer<wallet_proto::v1::Transfer> {
    let transfer_id = path(transfer_id)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    if query.from.is_empty() {
        return Err(invalid(
            "?from=ACCOUNT is required: transfer ids are scoped to their debit account",
        ));
    }
    let get = GetTransferRequest {
        transfer_id,
        from_account_id: query.from,
    };
    Ok(Json(
        service.get_transfer(Request::new(get)).await?.into_inner(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct HistoryQuery {
    limit: u32,
    cursor: u64,
    /// Comma-separated entry kinds (`DEPOSIT,TRANSFER_IN`).
    kinds: String,
    from_ts: u64,
    to_ts: u64,
    from_ms: i64,
    to_ms: i64,
}

async fn history(
    State(service): Service,
    account_id: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Answer<wallet_proto::v1::ListTransfersResponse> {
    let account_id = path(account_id)?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let list = ListTransfersRequest {
        account_id,
        limit: query.limit,
        cursor: query.cursor,
        kinds: wallet_proto::validate::entry_kinds(&query.kinds).map_err(Refused)?,
        from_ts: query.from_ts,
        to_ts: query.to_ts,
        from_ms: query.from_ms,
        to_ms: query.to_ms,
    };
    Ok(Json(
        service
            .list_transfers(Request::new(list))
            .await?
            .into_inner(),
    ))
}

async fn audit(State(service): Service) -> Answer<wallet_proto::v1::AuditReport> {
    Ok(Json(
        service
            .audit(Request::new(AuditRequest {}))
            .await?
            .into_inner(),
    ))
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn wrong_method() -> Response {
    let body = ErrorBody {
        reason: Reason::InvalidArgument.as_str().to_string(),
        message: "this resource does not take that method: see /v1/openapi.json".to_string(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

async fn not_found() -> Refused {
    Refused(Refusal::new(
        Reason::InvalidArgument,
        "no such resource: see /v1/openapi.json",
    ))
}

/// The routes, over `service`.
pub fn app(service: WalletService) -> axum::Router {
    axum::Router::new()
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/history", get(history))
        .route("/v1/accounts/{id}/close", post(close_account))
        .route("/v1/accounts/{id}/freeze", post(freeze_account))
        .route("/v1/accounts/{id}/unfreeze", post(unfreeze_account))
        .route("/v1/accounts/{id}/holds", get(list_holds))
        .route("/v1/holds", post(authorize))
        .route("/v1/holds/{id}", get(get_hold))
        .route("/v1/holds/{id}/capture", post(capture))
        .route("/v1/holds/{id}/void", post(void))
        .route("/v1/deposits", post(deposit))
        .route("/v1/withdrawals", post(withdraw))
        .route("/v1/transfers", post(transfer))
        .route("/v1/transfers/{id}", get(get_transfer))
        // Up to 8 189 items: the batch's own body limit (as gRPC's request limit).
        .route(
            "/v1/transfer-batches",
            post(transfer_batch).layer(axum::extract::DefaultBodyLimit::max(4 * 1024 * 1024)),
        )
        .route("/v1/audit", get(audit))
        .route("/v1/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        // Bodies beyond this are refused before they are read whole (one transfer is < 1 KiB).
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(Arc::new(service))
}

/// Serves the API on `listener` until the returned task is aborted.
pub fn spawn(
    listener: tokio::net::TcpListener,
    service: WalletService,
    tls: Option<&std::sync::Arc<wallet_tls::ServerTls>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    wallet_ops::metrics_http::serve(listener, app(service), "the HTTP API", tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_an_http_status_of_its_kind() {
        for reason in Reason::ALL {
            let status = http_status(reason);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{reason}: {status}"
            );
            // Retryable reasons are the ones a client may send again as they are (a snapshot
            // too old is retryable for the router's own fresh timestamps, not for a caller's).
            if reason.is_retryable() && reason != Reason::SnapshotTooOld {
                assert!(
                    matches!(
                        status,
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                    ),
                    "{reason}: {status}"
                );
            }
        }
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("OpenAPI is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
        for (path, method) in [
            ("/v1/accounts", "post"),
            ("/v1/accounts/{id}", "get"),
            ("/v1/accounts/{id}/history", "get"),
            ("/v1/accounts/{id}/close", "post"),
            ("/v1/accounts/{id}/freeze", "post"),
            ("/v1/accounts/{id}/unfreeze", "post"),
            ("/v1/accounts/{id}/holds", "get"),
            ("/v1/holds", "post"),
            ("/v1/holds/{id}", "get"),
            ("/v1/holds/{id}/capture", "post"),
            ("/v1/holds/{id}/void", "post"),
            ("/v1/deposits", "post"),
            ("/v1/withdrawals", "post"),
            ("/v1/transfers", "post"),
            ("/v1/transfers/{id}", "get"),
            ("/v1/transfer-batches", "post"),
            ("/v1/audit", "get"),
        ] {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} missing from openapi.json"
            );
        }
        for reason in Reason::ALL {
            let listed = doc["components"]["schemas"]["Error"]["properties"]["reason"]["enum"]
                .as_array()
                .expect("reason enum");
            assert!(
                listed.iter().any(|r| r.as_str() == Some(reason.as_str())),
                "{reason} missing from the Error schema"
            );
        }
    }

    #[test]
    fn an_idempotency_key_fills_or_must_match_the_body_id() {
        let mut headers = HeaderMap::new();
        let mut id = String::new();
        idempotency(&headers, &mut id).expect("no header");
        assert_eq!(id, "");
        headers.insert(IDEMPOTENCY_KEY, "k-1".parse().expect("header"));
        idempotency(&headers, &mut id).expect("fills");
        assert_eq!(id, "k-1");
        idempotency(&headers, &mut id).expect("agrees");
        let mut other = "k-2".to_string();
        let refused = idempotency(&headers, &mut other).expect_err("differs");
        assert_eq!(refused.0.reason, Reason::InvalidArgument);
    }
}
