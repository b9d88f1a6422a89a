//! The HTTP/JSON API end to end on real processes (README § HTTP API): curl, and Python's urllib
//! as a generic client; idempotency by body id and by header; amounts to i64::MAX; bad input
//! refused with a JSON reason and the matching status, changing nothing; the OpenAPI document.

mod common;

use std::process::Command;

use common::{curl, Cluster, SERIAL};
use serde_json::{json, Value};
use wallet_cluster::endpoints::Endpoints;

fn refused(answer: (u16, Value), status: u16, reason: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["reason"], reason, "{answer:?}");
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_payments_with_json_and_refuses_bad_input() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(2, 10_000).await;
    let endpoints = Endpoints::load(&cluster.playground.dir).expect("endpoints.json");
    let base = format!("http://{}", endpoints.router.http);
    let url = |path: &str| format!("{base}{path}");
    let max = i64::MAX;

    for id in ["h-a", "h-b"] {
        let (status, account) = curl(
            "POST",
            &url("/v1/accounts"),
            &[],
            Some(&json!({"account_id": id, "currency": "USD"}).to_string()),
        );
        assert_eq!(status, 200, "{account}");
        assert_eq!(account["account_id"], id);
        assert_eq!(account["balance"], 0);
    }
    // A deposit of i64::MAX by header id, twice: one change.
    let deposit = json!({"account_id": "h-a", "amount": max}).to_string();
    let first = curl(
        "POST",
        &url("/v1/deposits"),
        &["Idempotency-Key: dep-1"],
        Some(&deposit),
    );
    assert_eq!(first.0, 200, "{first:?}");
    assert_eq!(first.1["balance_after"], max);
    assert_eq!(first.1["request_id"], "dep-1");
    let again = curl(
        "POST",
        &url("/v1/deposits"),
        &["Idempotency-Key: dep-1"],
        Some(&deposit),
    );
    assert_eq!(again, first);
    // The same id with other content.
    refused(
        curl(
            "POST",
            &url("/v1/deposits"),
            &["Idempotency-Key: dep-1"],
            Some(&json!({"account_id": "h-a", "amount": 1}).to_string()),
        ),
        409,
        "ID_REUSED",
    );
    // All of it across, by body id.
    let transfer = json!({"transfer_id": "t-1", "from_account_id": "h-a", "to_account_id": "h-b", "amount": max});
    let (status, moved) = curl(
        "POST",
        &url("/v1/transfers"),
        &[],
        Some(&transfer.to_string()),
    );
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["status"], "COMMITTED");
    assert_eq!(moved["amount"], max);
    assert_eq!(moved["from_balance_after"], 0);
    let (status, fetched) = curl("GET", &url("/v1/transfers/t-1?from=h-a"), &[], None);
    assert_eq!(status, 200);
    assert_eq!(fetched["status"], "COMMITTED");
    let (status, account) = curl("GET", &url("/v1/accounts/h-b"), &[], None);
    assert_eq!((status, account["balance"].as_i64()), (200, Some(max)));
    let (status, history) = curl("GET", &url("/v1/accounts/h-b/history?limit=10"), &[], None);
    assert_eq!(status, 200);
    assert_eq!(history["entries"][0]["kind"], "TRANSFER_IN");
    assert_eq!(history["entries"][0]["delta"], max);
    assert_eq!(history["next_cursor"], 0);

    // Refusals: the store's reasons with their statuses, and nothing changes.
    refused(
        curl(
            "POST",
            &url("/v1/deposits"),
            &[],
            Some(&json!({"request_id": "dep-2", "account_id": "h-b", "amount": 1}).to_string()),
        ),
        422,
        "BALANCE_OVERFLOW",
    );
    refused(
        curl(
            "POST",
            &url("/v1/withdrawals"),
            &[],
            Some(&json!({"request_id": "w-1", "account_id": "h-a", "amount": 1}).to_string()),
        ),
        422,
        "INSUFFICIENT_FUNDS",
    );
    refused(
        curl("GET", &url("/v1/accounts/nobody"), &[], None),
        404,
        "ACCOUNT_NOT_FOUND",
    );
    refused(
        curl("GET", &url("/v1/transfers/t-1"), &[], None),
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        curl("GET", &url("/v1/transfers/t-9?from=h-a"), &[], None),
        404,
        "TRANSFER_NOT_FOUND",
    );
    refused(
        curl("GET", &url("/v1/accounts/h-a?at_ts=x"), &[], None),
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        curl("GET", &url("/v1/nowhere"), &[], None),
        400,
        "INVALID_ARGUMENT",
    );
    refused(
        curl("GET", &url("/v1/deposits"), &[], None),
        405,
        "INVALID_ARGUMENT",
    );
    refused(
        curl("GET", &url("/v1/accounts/%FF%FE"), &[], None),
        400,
        "INVALID_ARGUMENT",
    );
    for (bad, reason) in [
        ("not json".to_string(), "INVALID_ARGUMENT"),
        (
            json!({"request_id": "b-1", "account_id": "h-a", "amount": 1, "extra": 1}).to_string(),
            "INVALID_ARGUMENT",
        ),
        (
            json!({"request_id": "b-2", "account_id": "h-a", "amount": "5"}).to_string(),
            "INVALID_ARGUMENT",
        ),
        (
            r#"{"request_id": "b-3", "account_id": "h-a", "amount": 9223372036854775808}"#
                .to_string(),
            "INVALID_ARGUMENT",
        ),
        (
            json!({"request_id": "b-4", "account_id": "h-a", "amount": -1}).to_string(),
            "INVALID_AMOUNT",
        ),
        (
            json!({"request_id": "b-5", "account_id": "h-a", "amount": 0}).to_string(),
            "INVALID_AMOUNT",
        ),
        (
            json!({"request_id": "", "account_id": "h-a", "amount": 5}).to_string(),
            "INVALID_ID",
        ),
    ] {
        refused(
            curl("POST", &url("/v1/deposits"), &[], Some(&bad)),
            400,
            reason,
        );
    }
    refused(
        curl("POST", &url("/v1/transfers"), &["Idempotency-Key: t-2"], Some(&json!({"transfer_id": "t-3", "from_account_id": "h-b", "to_account_id": "h-a", "amount": 1}).to_string())),
        400,
        "INVALID_ARGUMENT",
    );
    let (_, a) = curl("GET", &url("/v1/accounts/h-a"), &[], None);
    let (_, b) = curl("GET", &url("/v1/accounts/h-b"), &[], None);
    assert_eq!(
        (a["balance"].as_i64(), b["balance"].as_i64()),
        (Some(0), Some(max))
    );
    let (status, audit) = curl("GET", &url("/v1/audit"), &[], None);
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["totals"][0]["balances"], max.to_string());
    assert_eq!(audit["totals"][0]["net_deposits"], max.to_string());

    // The OpenAPI document.
    let (status, doc) = curl("GET", &url("/v1/openapi.json"), &[], None);
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/transfers"]["post"].is_object());

    // A generic HTTP client not written for this API: Python's urllib moves money back.
    let script = r#"
import json, sys, urllib.request, urllib.error
base = sys.argv[1]
def call(method, path, body=None, headers={}):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
        headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
status, t = call("POST", "/v1/transfers", {"from_account_id": "h-b", "to_account_id": "h-a", "amount": 5}, {"Idempotency-Key": "py-1"})
assert status == 200 and t["status"] == "COMMITTED" and t["transfer_id"] == "py-1", (status, t)
status, again = call("POST", "/v1/transfers", {"from_account_id": "h-b", "to_account_id": "h-a", "amount": 5}, {"Idempotency-Key": "py-1"})
assert (status, again) == (200, t), (status, again)
status, e = call("POST", "/v1/withdrawals", {"request_id": "py-w", "account_id": "h-a", "amount": 6})
assert status == 422 and e["reason"] == "INSUFFICIENT_FUNDS", (status, e)
status, a = call("GET", "/v1/accounts/h-a")
print(a["balance"])
"#;
    let output = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .args(["-c", script, &base])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "5");
    cluster.client().audit().await.expect("audit balanced");
}
