//! Graceful shutdown under load, and data that outlives a restart.
//!
//! While clients keep requests in flight, SIGTERM must leave every request either completed or
//! refused before it started, never cut off mid-way, and the process must exit 0.
//!
//! A client cannot always tell a request the server never read from one it dropped: a connection
//! reset races the server's close. So the HTTP side is proved from both ends: every request the
//! gateway started it finished (its own trace log, at debug level), every response it finished
//! reached a client whole, and any request without an answer is therefore one it never started.
//!
//! The gRPC clients write: each creates a product with its own id. After a restart on the same
//! data directory, every create that succeeded must be there and every create that was refused must
//! not, which proves no write was half-done behind a failed answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::proto::product::v1 as pb;
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use tonic::Code;

use crate::{
    TestResult, admin_token, grpc_channel, install_crypto_provider, up, up_with, with_bearer,
};

/// Upper bound on how long the clients run after SIGTERM; they stop earlier, at their first refusal.
const CLIENT_PATIENCE: Duration = Duration::from_secs(30);
const HTTP_CLIENTS: usize = 4;
const GRPC_CLIENTS: usize = 4;

#[derive(Debug, Default)]
struct HttpTally {
    completed: usize,
    /// Requests that got no answer at all (refused, reset); the gateway's log proves it never
    /// started them.
    unanswered: usize,
    broken: Vec<String>,
}

#[derive(Debug, Default)]
struct GrpcTally {
    created: Vec<String>,
    refused: Vec<String>,
    broken: Vec<String>,
}

/// Loops GETs until the gateway refuses a connection.
async fn http_client_loop(gateway: SocketAddr, successes: Arc<AtomicUsize>) -> HttpTally {
    install_crypto_provider();
    let mut tally = HttpTally::default();
    let client = match reqwest::Client::builder().http2_prior_knowledge().build() {
        Ok(client) => client,
        Err(error) => {
            tally.broken.push(format!("client: {error}"));
            return tally;
        }
    };
    let deadline = tokio::time::Instant::now() + CLIENT_PATIENCE * 2;
    while tokio::time::Instant::now() < deadline {
        let result = client
            .get(format!("http://{gateway}/v1/products?page_size=200"))
            .send()
            .await;
        match result {
            Ok(response) if response.status() == 200 => {
                match response.json::<serde_json::Value>().await {
                    Ok(page) if page["products"].as_array().is_some_and(|p| !p.is_empty()) => {
                        tally.completed += 1;
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(page) => tally.broken.push(format!("unexpected page {page}")),
                    Err(error) => tally.broken.push(format!("body cut off: {error:?}")),
                }
            }
            Ok(response) => tally.broken.push(format!("status {}", response.status())),
            Err(error) => {
                tally.unanswered += 1;
                // A refused connection means the listener is closed: this client is done.
                if error.is_connect() {
                    break;
                }
            }
        }
    }
    tally
}

/// How many requests the gateway's trace layer started and finished, from its debug log lines
/// (the gRPC services log their calls the same way; only the gateway's paths start `/v1/`).
fn gateway_requests(log: &str) -> (usize, usize) {
    let count = |message: &str| {
        log.lines()
            .filter(|line| {
                line.contains(message)
                    && line.contains("tower_http::trace")
                    && line.contains("/v1/")
            })
            .count()
    };
    (
        count("started processing request"),
        count("finished processing request"),
    )
}

/// A call that never reached the server: the connection was refused, the server's GOAWAY refused
/// the stream, or the client's connection closed before the request was written (hyper's "canceled",
/// which hands the unsent request back).
fn grpc_refused_before_start(status: &tonic::Status) -> bool {
    if !matches!(status.code(), Code::Unavailable | Code::Cancelled) {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(current) = source {
        if current
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        let text = current.to_string();
        if text.contains("REFUSED_STREAM") || text.contains("Connection refused") {
            return true;
        }
        source = current.source();
    }
    false
}

/// Loops creates with fresh ids until the product service refuses one.
async fn grpc_client_loop(
    product: SocketAddr,
    admin: String,
    client_index: usize,
    successes: Arc<AtomicUsize>,
) -> GrpcTally {
    let mut tally = GrpcTally::default();
    let channel = match grpc_channel(product).await {
        Ok(channel) => channel,
        Err(error) => {
            tally.broken.push(format!("connect: {error}"));
            return tally;
        }
    };
    let mut client = ProductServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + CLIENT_PATIENCE * 2;
    for sequence in 0.. {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let id = format!("drain-{client_index}-{sequence}");
        let request = pb::CreateProductRequest {
            product: Some(pb::Product {
                name: format!("Drain test {id}"),
                price_cents: 100,
                currency: "EUR".into(),
                stock: 1,
                ..Default::default()
            }),
            product_id: id.clone(),
        };
        match client.create_product(with_bearer(request, &admin)).await {
            Ok(_) => {
                tally.created.push(id);
                successes.fetch_add(1, Ordering::SeqCst);
            }
            Err(status) if grpc_refused_before_start(&status) => {
                tally.refused.push(id);
                break;
            }
            Err(status) => {
                tally.broken.push(format!("{id}: {status:?}"));
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_or_refuses_every_request_and_keeps_every_write() -> TestResult
{
    let dir = tempfile::tempdir()?;
    // The gateway's trace layer logs every request it starts and finishes at debug level.
    let flotilla = up_with(dir.path(), &[("RUST_LOG", "info,tower_http=debug")]).await;
    let gateway = flotilla.addr("gateway", "http");
    let product = flotilla.addr("product", "grpc");
    // Creating products needs an administrator's token (the product service checks it).
    let admin = admin_token(&crate::http_client(), gateway).await?;

    let successes = Arc::new(AtomicUsize::new(0));
    let http_clients: Vec<_> = (0..HTTP_CLIENTS)
        .map(|_| tokio::spawn(http_client_loop(gateway, successes.clone())))
        .collect();
    let grpc_clients: Vec<_> = (0..GRPC_CLIENTS)
        .map(|index| {
            tokio::spawn(grpc_client_loop(
                product,
                admin.clone(),
                index,
                successes.clone(),
            ))
        })
        .collect();

    // Polling across processes: wait until the system is visibly under load (patience 30 s).
    let loaded = tokio::time::Instant::now() + CLIENT_PATIENCE;
    while successes.load(Ordering::SeqCst) < 100 {
        assert!(
            tokio::time::Instant::now() < loaded,
            "the clients made no progress; log:\n{}",
            flotilla.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flotilla.terminate();
    let log_dir = dir.path().to_path_buf();
    let status = flotilla.wait(CLIENT_PATIENCE).await;
    let log = std::fs::read_to_string(log_dir.join("flotilla.log")).unwrap_or_default();
    assert!(
        status.success(),
        "flotilla exited with {status}; log:\n{log}"
    );

    let mut http = HttpTally::default();
    for client in http_clients {
        let tally = client.await?;
        http.completed += tally.completed;
        http.unanswered += tally.unanswered;
        http.broken.extend(tally.broken);
    }
    let mut grpc = GrpcTally::default();
    for client in grpc_clients {
        let tally = client.await?;
        grpc.created.extend(tally.created);
        grpc.refused.extend(tally.refused);
        grpc.broken.extend(tally.broken);
    }
    eprintln!(
        "HTTP: {} completed, {} unanswered; gRPC: {} created, {} refused",
        http.completed,
        http.unanswered,
        grpc.created.len(),
        grpc.refused.len()
    );
    assert!(
        http.broken.is_empty(),
        "HTTP requests cut off mid-way: {:?}",
        http.broken
    );
    assert!(
        grpc.broken.is_empty(),
        "gRPC calls cut off mid-way: {:?}",
        grpc.broken
    );
    assert!(http.completed > 0 && !grpc.created.is_empty(), "{http:?}");
    // From the gateway's side: every request it started, it finished, and every response it
    // finished reached a client whole (plus the one login made before the load).
    let (started, finished) = gateway_requests(&log);
    assert_eq!(
        started, finished,
        "a request the gateway started was never finished"
    );
    assert_eq!(
        finished,
        http.completed + 1,
        "a response the gateway finished did not reach its client ({} unanswered)",
        http.unanswered
    );
    assert!(
        http.unanswered >= HTTP_CLIENTS,
        "every HTTP client ended without an answer: {http:?}"
    );
    assert_eq!(
        grpc.refused.len(),
        GRPC_CLIENTS,
        "every gRPC client ended on a refusal"
    );

    // Restart on the same data directory: every acknowledged write is there, no refused one is.
    let flotilla = up(dir.path()).await;
    let mut client =
        ProductServiceClient::new(grpc_channel(flotilla.addr("product", "grpc")).await?);
    for id in &grpc.created {
        let found = client
            .get_product(pb::GetProductRequest { id: id.clone() })
            .await;
        assert!(
            found.is_ok(),
            "acknowledged product {id} was lost: {found:?}"
        );
    }
    for id in &grpc.refused {
        let found = client
            .get_product(pb::GetProductRequest { id: id.clone() })
            .await;
        assert_eq!(
            found.err().map(|s| s.code()),
            Some(Code::NotFound),
            "refused create {id} was stored"
        );
    }
    // The demo catalogue was not seeded a second time: count every page.
    let mut stored = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list_products(pb::ListProductsRequest {
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        stored += page.products.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(stored, 30 + grpc.created.len());
    flotilla.stop().await;
    Ok(())
}
