//! A minimal external-IMS receiver for measurements: accepts every webhook POST,
//! verifies its signature, and prints how many events arrived and how fast.
//!
//!     cargo run --release -p invsync --example webhook_receiver -- 127.0.0.1:9900 SECRET

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Clone)]
struct Counter {
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    secret: Arc<String>,
}

async fn receive(State(c): State<Counter>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(c.secret.as_bytes()) else {
        return StatusCode::INTERNAL_SERVER_ERROR;
    };
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    if headers
        .get("x-invsync-signature")
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str())
    {
        c.accepted.fetch_add(1, Ordering::Relaxed);
        StatusCode::OK
    } else {
        c.refused.fetch_add(1, Ordering::Relaxed);
        StatusCode::UNAUTHORIZED
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9900".into());
    let secret = args
        .next()
        .unwrap_or_else(|| "bench-secret-0123456789".into());
    let counter = Counter {
        accepted: Arc::default(),
        refused: Arc::default(),
        secret: Arc::new(secret),
    };
    let report = counter.clone();
    tokio::spawn(async move {
        let (mut first, mut last_count) = (None, 0);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let n = report.accepted.load(Ordering::Relaxed);
            if n > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if n != last_count {
                let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
                println!(
                    "accepted {n} refused {} after {secs:.2} s",
                    report.refused.load(Ordering::Relaxed)
                );
                last_count = n;
            }
        }
    });
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(counter);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("receiving on http://{addr}/hook");
    axum::serve(listener, app).await
}
