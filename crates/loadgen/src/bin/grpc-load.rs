//! `grpc-load ADDR CONCURRENCY WARMUP_SECONDS SECONDS`: GetProduct calls from CONCURRENCY
//! concurrent streams on one HTTP/2 connection to the product service at ADDR, for WARMUP_SECONDS
//! unmeasured and then SECONDS measured; prints one JSON line with the measured calls, failed
//! calls (any status but OK), calls per second and latency percentiles in microseconds, and every
//! call made, warm-up included (for CPU time per call).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use platform::proto::product::v1::product_service_client::ProductServiceClient;
use platform::proto::product::v1::{GetProductRequest, ListProductsRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, concurrency, warmup, seconds] = args.as_slice() else {
        anyhow::bail!("usage: grpc-load ADDR CONCURRENCY WARMUP_SECONDS SECONDS");
    };
    let concurrency: usize = concurrency.parse().context("CONCURRENCY")?;
    let warmup = Duration::from_secs(warmup.parse().context("WARMUP_SECONDS")?);
    let measured = Duration::from_secs(seconds.parse().context("SECONDS")?);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut client = ProductServiceClient::new(channel);
    let page = client
        .list_products(ListProductsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    let id = page
        .products
        .first()
        .map(|product| product.id.clone())
        .context("the service lists no product")?;

    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + measured;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0_u64;
                let mut made = 0_u64;
                loop {
                    let sent = Instant::now();
                    if sent >= end {
                        break;
                    }
                    made += 1;
                    let outcome = client
                        .get_product(GetProductRequest { id: id.clone() })
                        .await;
                    if sent >= measure_from {
                        match outcome {
                            Ok(_) => latencies.push(sent.elapsed()),
                            Err(_) => failed += 1,
                        }
                    }
                }
                (latencies, failed, made)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut made = 0;
    for worker in workers {
        let (mine, my_failed, my_made) = worker.await?;
        latencies.extend(mine);
        failed += my_failed;
        made += my_made;
    }
    latencies.sort_unstable();
    let percentile = |share: f64| -> u128 {
        let index =
            ((latencies.len() as f64 * share) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).map_or(0, Duration::as_micros)
    };
    let report = serde_json::json!({
        "concurrency": concurrency,
        "seconds": measured.as_secs(),
        "calls": latencies.len(),
        "failed": failed,
        "all_calls": made,
        "calls_per_second": latencies.len() as f64 / measured.as_secs_f64(),
        "p50_us": percentile(0.50),
        "p99_us": percentile(0.99),
    });
    println!("{report}");
    Ok(())
}
