//! `meshfleet-receiver`: a local webhook receiver for trying alerting out. It checks each
//! delivery's Standard Webhooks signature with the `standardwebhooks` crate (not Meshfleet's own
//! signing code), answers 204 to a valid one and 401 to any other, and prints one line per
//! request: `verified <webhook-id> <type> <rule> <cluster>: <summary>` or `REJECTED ...`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "A local webhook receiver that verifies Meshfleet's signed deliveries and prints them")]
struct Args {
    /// Where to listen (POST any path).
    #[arg(long, env = "MESHFLEET_RECEIVER_LISTEN", default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The channel's signing secret (`whsec_...`).
    #[arg(long, env = "MESHFLEET_RECEIVER_SECRET", hide_env_values = true)]
    secret: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let webhook = match standardwebhooks::Webhook::new(&args.secret) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("meshfleet-receiver: --secret is not a Standard Webhooks secret: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meshfleet-receiver: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("listening on http://{}", listener.local_addr().map_or(args.listen, |a| a));
    let app = axum::Router::new().fallback(receive).with_state(webhook);
    match axum::serve(listener, app).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshfleet-receiver: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn receive(State(webhook): State<Arc<standardwebhooks::Webhook>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
    if let Err(e) = webhook.verify(&body, &headers) {
        println!("REJECTED {id}: {e}");
        return StatusCode::UNAUTHORIZED;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "verified {id} {} {} {}: {}",
        text(&event["type"]),
        text(&event["alert"]["rule"]),
        text(&event["cluster"]["name"]),
        text(&event["alert"]["summary"])
    );
    StatusCode::NO_CONTENT
}
