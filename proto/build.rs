//! Compiles the protos with a vendored protoc, so a fresh machine needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("wallet_descriptor.bin");
    // The HTTP/JSON API (router/src/http.rs) speaks the public messages with the proto's own field
    // names: answers serialize, requests deserialize strictly (an unknown field is refused).
    let mut builder = tonic_prost_build::configure().file_descriptor_set_path(descriptors);
    for answer in [
        "Account",
        "BalanceChange",
        "Transfer",
        "ChainRef",
        "HistoryEntry",
        "ListTransfersResponse",
        "AuditReport",
        "CurrencyTotals",
        "Hold",
        "ListHoldsResponse",
    ] {
        builder = builder.message_attribute(
            format!(".wallet.v1.{answer}"),
            "#[derive(serde::Serialize)]",
        );
    }
    for request in [
        "CreateAccountRequest",
        "DepositRequest",
        "WithdrawRequest",
        "TransferRequest",
        "AccountStateRequest",
        "AuthorizeRequest",
        "CaptureRequest",
        "VoidRequest",
    ] {
        builder = builder.message_attribute(
            format!(".wallet.v1.{request}"),
            "#[derive(serde::Deserialize)] #[serde(default, deny_unknown_fields)]",
        );
    }
    builder
        .field_attribute(
            ".wallet.v1.Transfer.status",
            "#[serde(serialize_with = \"crate::json::transfer_status\")]",
        )
        .field_attribute(
            ".wallet.v1.Transfer.chain",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".wallet.v1.Account.state",
            "#[serde(serialize_with = \"crate::json::account_state\")]",
        )
        .field_attribute(
            ".wallet.v1.Hold.state",
            "#[serde(serialize_with = \"crate::json::hold_state\")]",
        )
        .field_attribute(
            ".wallet.v1.HistoryEntry.kind",
            "#[serde(serialize_with = \"crate::json::entry_kind\")]",
        )
        .compile_protos(
            &[
                "proto/wallet.proto",
                "proto/shard.proto",
                "proto/raft.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
